//! Multi-component updates over nRF Connect SDK's Advanced Firmware Update
//! object (33629) through the real binary: simulated devices with an
//! application and a modem instance get an application image and a
//! modem delta in one update (`flownexus device update EP APP MODEM`);
//! a delta for another modem version is refused with the versions named;
//! a device with only Object 5 is told it takes one image at a time.

use flownexus::app;
use flownexus::lwm2m::operation::OperationKind;
use flownexus::sim::FotaBehaviour;

use super::fota::{add_catalogue_image, fota_device, mcuboot_image};
use super::{config, fleet, flownexus_cli, store};

const DELTA: &str = "mfw_nrf9160_update_from_1.3.4_to_1.3.5.bin";

/// Bytes a modem delta starts with (nRF Connect SDK's
/// `dfu_target_img_type`: magic 0x7544656d at offset 4), then noise.
fn modem_delta(size: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(13);
    let mut img: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    img[4..8].copy_from_slice(&0x7544_656d_u32.to_le_bytes());
    img
}

fn cli(data: &str, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = flownexus_cli(data, args, "");
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_and_modem_move_together_over_object_33629() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    add_catalogue_image(dir.path(), "app-2.bin", "v2.0.0", &mcuboot_image(48 * 1024, 2));
    add_catalogue_image(dir.path(), DELTA, "mfw_nrf9160_1.3.5", &modem_delta(40 * 1024));
    let s = store(dir.path());
    let delta = s.firmware(DELTA).unwrap();
    assert_eq!(
        (delta.image_type.as_str(), delta.base_version.as_deref()),
        ("modem-delta", Some("1.3.4")),
        "the base comes from Nordic's file name"
    );
    let advanced = |name: &str, modem: &str| {
        let mut d = fota_device(dir.path(), name, FotaBehaviour::default());
        d.modem_version = Some(modem.into());
        d
    };
    let f = fleet(
        &running,
        vec![
            advanced("adv-both", "mfw_nrf9160_1.3.4"),
            advanced("adv-old-modem", "mfw_nrf9160_1.3.3"),
            fota_device(dir.path(), "object-5", FotaBehaviour::default()),
        ],
    )
    .await;
    let data = dir.path().to_str().unwrap().to_string();

    let (ok, out) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            cli(
                &data,
                &[
                    "device",
                    "update",
                    "adv-both",
                    "app-2.bin",
                    DELTA,
                    "--wait",
                    "--timeout",
                    "60",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    // The update's end is committed by the update task; the values that
    // ended it reach the store through the writer's own commit window.
    running.flush().await;
    let latest = s.latest_values("adv-both").unwrap();
    let value = |p: &str| {
        latest
            .iter()
            .find(|v| v.path.to_string() == p)
            .map(|v| v.value.to_text())
            .unwrap_or_default()
    };
    assert_eq!(value("/33629/0/15"), "2.0.0");
    assert_eq!(value("/33629/1/15"), "mfw_nrf9160_1.3.5");
    // Both Package URIs went to their instances, and one Execute installed
    // both (argument 0 linking the modem's instance).
    let ops = s.operations_of("adv-both", 50).unwrap();
    let wrote = |p: &str, name: &str| {
        ops.iter().any(|o| {
            matches!(&o.kind, OperationKind::Write { path, values, .. }
            if path.to_string() == p && values[0].value.contains(name))
        })
    };
    assert!(wrote("/33629/0/1", "/app-2.bin?t="), "{ops:?}");
    assert!(wrote("/33629/1/1", DELTA), "{ops:?}");
    let executes: Vec<_> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            OperationKind::Execute { path, args } => Some((path.to_string(), args.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        executes,
        [("/33629/0/2".to_string(), Some("0='</33629/1>'".to_string()))]
    );

    // A delta for another modem version: refused once the device's Current
    // Version is read, before anything is written.
    let (ok, out) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            cli(
                &data,
                &["device", "update", "adv-old-modem", DELTA, "--wait", "--timeout", "60"],
            )
        }
    })
    .await
    .unwrap();
    assert!(!ok, "{out}");
    let row = &s.updates_of("adv-old-modem", 1).unwrap()[0];
    assert_eq!(
        row.reason.as_deref(),
        Some("the modem runs \"mfw_nrf9160_1.3.3\"; this delta applies to \"1.3.4\" only"),
        "{out}"
    );
    let ops = s.operations_of("adv-old-modem", 50).unwrap();
    assert!(
        !ops.iter()
            .any(|o| matches!(o.kind, OperationKind::Write { .. } | OperationKind::Execute { .. })),
        "{ops:?}"
    );

    // Two images for a device with Object 5 only: refused at once.
    let (ok, out) = cli(&data, &["device", "update", "object-5", "app-2.bin", DELTA]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("object-5 has no Advanced Firmware Update object (/33629): Object 5 installs one image at a time"),
        "{out}"
    );
    f.stop().await;
    running.stop().await;
}
