//! Firmware updates end to end through the real binary and real sockets:
//! `flownexus device update` queues an update; the server's update task
//! drives simulated devices through Object 5; they download the image
//! over HTTPS from the record-limited firmware server in 2 KB ranges on a
//! keep-alive connection, check its SHA-256, reboot and report the new
//! version. Failures end with the reason an operator reads.

use std::path::Path;
use std::time::Duration;

use flownexus::app;
use flownexus::firmware::{Catalogue, Upload};
use flownexus::fota::Phase;
use flownexus::sim::{DeviceConfig, FotaBehaviour};
use flownexus::users::Role;

use super::web::http as http_call;
use super::{config, device, fleet, flownexus_cli, store, wait_for};

/// The timeline of an update that goes well: each step once, in order.
const HAPPY_PATH: [Phase; 7] = [
    Phase::Checking,
    Phase::WritingUri,
    Phase::Downloading,
    Phase::Executing,
    Phase::Updating,
    Phase::Verifying,
    Phase::Succeeded,
];

/// An MCUboot-headed image whose header says version 2.0.0.
fn image() -> Vec<u8> {
    mcuboot_image(96 * 1024, 2)
}

/// `size` random bytes behind an MCUboot header saying version `major`.0.0.
pub(super) fn mcuboot_image(size: usize, major: u8) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut img: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    img[..4].copy_from_slice(&[0x3d, 0xb8, 0xf3, 0x96]); // ih_magic
    img[20..28].copy_from_slice(&[major, 0, 0, 0, 0, 0, 0, 0]); // ih_ver major.0.0+0
    img
}

fn add_image(dir: &Path) {
    add_catalogue_image(dir, "app.bin", "v2.0.0", &image());
}

pub(super) fn add_catalogue_image(dir: &Path, name: &str, version: &str, image: &[u8]) {
    let upload = Upload {
        name,
        version: Some(version),
        notes: "",
        uploader: "test",
    };
    Catalogue::new(dir, 1 << 30)
        .add(&mut store(dir), &mut &image[..], &upload, &mut |_| {})
        .unwrap();
}

pub(super) fn fota_device(dir: &Path, name: &str, behaviour: FotaBehaviour) -> DeviceConfig {
    let mut d = device(name);
    d.fw_ca = Some(dir.join("fw-tls/ca.pem"));
    d.fota = behaviour;
    d
}

/// `flownexus device update EP app.bin --wait` on its own thread: success,
/// and the output.
fn update(dir: &Path, endpoint: &str) -> tokio::task::JoinHandle<(bool, String)> {
    let data = dir.to_str().unwrap().to_string();
    let endpoint = endpoint.to_string();
    tokio::task::spawn_blocking(move || {
        let args = ["device", "update", &endpoint, "app.bin", "--wait", "--timeout", "60"];
        let (ok, out, err) = flownexus_cli(&data, &args, "");
        (ok, format!("{out}{err}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_updated_and_failures_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = super::web::start(dir.path(), |c| {
        c.fota.max_retries = 1;
        c.fota.retry_backoff_s = 1;
        c.fota.update_timeout_s = 4;
    })
    .await;
    add_image(dir.path());
    let f = fleet(
        &running,
        vec![
            fota_device(dir.path(), "fota-ok", FotaBehaviour::default()),
            fota_device(
                dir.path(),
                "fota-coap",
                FotaBehaviour {
                    coap_only: true,
                    ..Default::default()
                },
            ),
            fota_device(
                dir.path(),
                "fota-resume",
                FotaBehaviour {
                    drop_midway: true,
                    ..Default::default()
                },
            ),
            fota_device(
                dir.path(),
                "fota-corrupt",
                FotaBehaviour {
                    corrupt_downloads: u32::MAX,
                    ..Default::default()
                },
            ),
            fota_device(
                dir.path(),
                "fota-gone",
                FotaBehaviour {
                    never_returns: true,
                    ..Default::default()
                },
            ),
        ],
    )
    .await;

    let (ok, out) = update(dir.path(), "fota-ok").await.unwrap();
    assert!(ok, "{out}");
    let s = store(dir.path());
    let row = &s.updates_of("fota-ok", 1).unwrap()[0];
    assert_eq!(row.phase, Phase::Succeeded, "{out}");
    let steps: Vec<Phase> = s.update_steps(row.id).unwrap().iter().map(|s| s.phase).collect();
    assert_eq!(steps, HAPPY_PATH);
    // The device downloaded the whole image in 2 KB ranges, accounted.
    let dl = s.device_downloads("fota-ok").unwrap();
    assert_eq!(dl[0].bytes, image().len() as u64, "{dl:?}");
    assert_eq!(dl[0].requests, image().len().div_ceil(2048) as u64);
    // And now reports the image's version (Read after the reboot).
    let latest = s.latest_values("fota-ok").unwrap();
    let version = latest.iter().find(|v| v.path.to_string() == "/3/0/3").unwrap();
    assert_eq!(version.value, flownexus::lwm2m::Value::String("2.0.0".into()));
    // Updating it to the version it runs is refused, saying so, as a
    // campaign skips it (issue 31); no second update is made.
    running.flush().await;
    let (ok, out) = update(dir.path(), "fota-ok").await.unwrap();
    assert!(!ok && out.contains("already on 2.0.0"), "{out}");
    assert_eq!(s.updates_of("fota-ok", 10).unwrap().len(), 1);

    // A device that fetches only by CoAP gets the URI on the LwM2M port and
    // the image block-wise, 1 KiB a block (RFC 7959), accounted as 2.05s.
    let (ok, out) = update(dir.path(), "fota-coap").await.unwrap();
    assert!(ok, "{out}");
    let row = &s.updates_of("fota-coap", 1).unwrap()[0];
    assert!(
        row.machine.components[0].package_uri.starts_with("coap://"),
        "{}",
        row.machine.components[0].package_uri
    );
    let dl = s.device_downloads("fota-coap").unwrap();
    assert_eq!(
        (dl[0].requests, dl[0].bytes),
        (image().len().div_ceil(1024) as u64, image().len() as u64)
    );
    let statuses: Vec<i64> = {
        let mut st = s
            .connection()
            .prepare("SELECT DISTINCT status FROM downloads WHERE device = 'fota-coap'")
            .unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(statuses, [205]);

    // A device whose connection drops halfway resumes with bytes=N-.
    let (ok, out) = update(dir.path(), "fota-resume").await.unwrap();
    assert!(ok, "{out}");

    // An integrity failure is retried once, then fails with its reason.
    let (ok, out) = update(dir.path(), "fota-corrupt").await.unwrap();
    assert!(!ok, "{out}");
    let row = &s.updates_of("fota-corrupt", 1).unwrap()[0];
    if row.phase != Phase::Failed {
        let h = |p: &str| {
            s.history_page("fota-corrupt", &p.parse().unwrap(), (0, i64::MAX), None, 100)
                .unwrap()
                .0
        };
        panic!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            s.update_steps(row.id).unwrap(),
            h("/5/0/3"),
            h("/5/0/5"),
            s.device_downloads("fota-corrupt").unwrap()
        );
    }
    let reason = row.reason.as_deref().unwrap();
    assert!(
        reason.contains("Update Result 5") && reason.contains("integrity"),
        "{reason}"
    );
    assert!(reason.contains("after 1 retries"), "{reason}");

    // A device that never comes back after Execute fails after the timeout.
    let (ok, out) = update(dir.path(), "fota-gone").await.unwrap();
    assert!(!ok, "{out}");
    let row = &s.updates_of("fota-gone", 1).unwrap()[0];
    assert!(
        row.reason.as_deref().unwrap().contains("did not register again"),
        "{row:?}"
    );

    // fota-ok runs 2.0.0 now: the API section updates it to a 3.0.0.
    add_catalogue_image(dir.path(), "app-3.bin", "3.0.0", &mcuboot_image(96 * 1024, 3));
    // The API: an operator starts an update; one active update per device,
    // so a second is a 409 that says so (from the database's constraint);
    // a viewer may look but not start one.
    let keys = super::web::Keys::new(dir.path());
    let operator = format!("Bearer {}", keys.token("operator", Role::Operator));
    let viewer = format!("Bearer {}", keys.token("viewer", Role::Viewer));
    let post = |bearer: &str, target: String, body: &'static str| {
        let bearer = bearer.to_string();
        async move {
            let h = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
            http_call(http, "POST", &target, &h, body.as_bytes()).await
        }
    };
    let r = post(
        &viewer,
        "/api/v1/devices/fota-ok/updates".into(),
        r#"{"image":"app-3.bin"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = post(
        &operator,
        "/api/v1/devices/fota-ok/updates".into(),
        r#"{"image":"app-3.bin"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["steps"][0]["detail"], "queued by operator");
    let r = post(
        &operator,
        "/api/v1/devices/fota-ok/updates".into(),
        r#"{"image":"app-3.bin"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("an active firmware update of fota-ok"),
        "{}",
        r.text()
    );
    let data = dir.path().to_str().unwrap();
    let (ok, _, err) = flownexus_cli(data, &["device", "update", "fota-ok", "app-3.bin"], "");
    assert!(
        !ok && err.contains("already exists: an active firmware update of fota-ok"),
        "{err}"
    );
    let r = post(
        &operator,
        "/api/v1/devices/fota-ok/updates".into(),
        r#"{"image":"nope.bin"}"#,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Cancelled (or, the device being quick, already done).
    let r = post(&operator, format!("/api/v1/updates/{id}/cancel"), "").await;
    assert!(matches!(r.status, 202 | 409), "{}", r.text());
    wait_for("the update to end", Duration::from_secs(15), || {
        s.update(id).unwrap().phase.is_final()
    })
    .await;
    let phase = s.update(id).unwrap().phase;
    assert!(matches!(phase, Phase::Cancelled | Phase::Succeeded), "{phase:?}");
    let h = [("Authorization", viewer.as_str())];
    let r = http_call(http, "GET", "/api/v1/devices/fota-ok/updates", &h, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2, "{}", r.text());
    let r = http_call(http, "GET", &format!("/api/v1/updates/{id}"), &h, b"").await;
    assert_eq!(r.json()["phase"], phase.as_str());

    f.stop().await;
    running.stop().await;
}

/// The failures the issue names, each ending in its reason within its
/// phase timeout: a download that never reports Downloaded, a FOTA doom
/// loop seen by the download server, a Package URI write answered 4.04.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_looping_and_refusing_devices_fail_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.fota.max_retries = 1;
    c.fota.retry_backoff_s = 1;
    c.fota.download_timeout_s = 3;
    let running = app::start(c).await.unwrap();
    add_image(dir.path());
    let behaviours = [
        (
            "fota-stalls",
            FotaBehaviour {
                stalls: true,
                ..Default::default()
            },
            "no Downloaded state",
        ),
        (
            "fota-loops",
            FotaBehaviour {
                doom_loop: true,
                ..Default::default()
            },
            "FOTA doom loop",
        ),
        (
            "fota-refuses",
            FotaBehaviour {
                refuses_uri: true,
                ..Default::default()
            },
            "writing the Package URI (/5/0/1) failed: device answered 4.04",
        ),
    ];
    let f = fleet(
        &running,
        behaviours
            .iter()
            .map(|(name, b, _)| fota_device(dir.path(), name, b.clone()))
            .collect(),
    )
    .await;
    // All three at once, as a fleet would.
    let runs: Vec<_> = behaviours.iter().map(|(name, _, _)| update(dir.path(), name)).collect();
    let mut results = Vec::new();
    for r in runs {
        results.push(r.await.unwrap());
    }
    let s = store(dir.path());
    for ((name, _, reason), (ok, out)) in behaviours.iter().zip(results) {
        assert!(!ok && out.contains(&format!("of {name} queued")), "{name}: {out}");
        let row = &s.updates_of(name, 1).unwrap()[0];
        assert_eq!(row.phase, Phase::Failed, "{name}");
        let got = row.reason.as_deref().unwrap();
        assert!(got.contains(reason), "{name}: {got}");
    }
    // The doom loop was the download server's word: it answered 416 and
    // flagged the resume at the end.
    let loops: i64 = s
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM downloads WHERE device = 'fota-loops' AND doom_loop = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(loops >= 2, "{loops}");
    f.stop().await;
    running.stop().await;
}

/// `kill -9` of the server in the middle of an update, twice: right after
/// the update is made, and while the device reboots into the new image.
/// After each restart the update goes on from its saved step and ends
/// succeeded; no step is sent twice (one Package URI write, one Execute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_survives_kill_9_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = super::Restartable::new(dir.path());
    let serve = || server.serve();
    let coap = server.coap;
    let child = server.serve_up().await;
    add_image(dir.path());
    let mut d = fota_device(dir.path(), "fota-kill", FotaBehaviour::default());
    // Re-register soon when the server is away.
    d.params.max_retransmit = 1;
    let f = flownexus::sim::Fleet::spawn(
        vec![d],
        coap,
        std::sync::Arc::new(flownexus::lwm2m::Models::embedded()),
        false,
    )
    .await
    .unwrap();
    let s = store(dir.path());
    wait_for("the registration", Duration::from_secs(10), || {
        s.registration_of("fota-kill").unwrap().is_some()
    })
    .await;
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = flownexus_cli(data, &["device", "update", "fota-kill", "app.bin"], "");
    assert!(ok, "{out}{err}");
    let id = s.updates_of("fota-kill", 1).unwrap()[0].id;

    drop(child); // kill -9 with the update just made
    let child = serve();
    wait_for("the device rebooting into the image", Duration::from_secs(30), || {
        s.update(id).unwrap().phase == Phase::Updating
    })
    .await;
    drop(child); // kill -9 while the device reboots
    let _child = serve();
    wait_for("the update to end", Duration::from_secs(40), || {
        s.update(id).unwrap().phase.is_final()
    })
    .await;
    let row = s.update(id).unwrap();
    assert_eq!(row.phase, Phase::Succeeded, "{row:?}");
    let ops = s.operations_of("fota-kill", 100).unwrap();
    let count = |what: &dyn Fn(&flownexus::lwm2m::operation::OperationKind) -> bool| {
        ops.iter().filter(|o| what(&o.kind)).count()
    };
    use flownexus::lwm2m::operation::OperationKind as K;
    let uri_writes = count(
        &|k| matches!(k, K::Write { path, values, .. } if path.to_string() == "/5/0/1" && !values[0].value.is_empty()),
    );
    let executes = count(&|k| matches!(k, K::Execute { path, .. } if path.to_string() == "/5/0/2"));
    assert_eq!((uri_writes, executes), (1, 1), "{ops:#?}");
    // Each step once, in order, across both restarts.
    let steps: Vec<Phase> = s.update_steps(id).unwrap().iter().map(|s| s.phase).collect();
    assert_eq!(steps, HAPPY_PATH);
    f.stop().await;
}

/// Firmware over CoAP block-wise on the LwM2M ports (RFC 7959): Debian's
/// libcoap client fetches a 512 KiB image with `-b 1024` over plain CoAP
/// and over DTLS-PSK; the file's SHA-256 is the image's, every block is
/// accounted to the device named by the token, and a bad token is 4.03.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_downloads_firmware_block_wise_over_coap_and_coaps() {
    let dir = tempfile::tempdir().unwrap();
    // libcoap 4.3's `-k` takes the key as text.
    let key_text = "0123456789abcdef";
    let psk = flownexus::psk::Psk::from_hex("fw-coaps", &hex(key_text.as_bytes())).unwrap();
    store(dir.path())
        .add_device("fw-coaps", Some(&psk), &flownexus::store::tags::Tags::default())
        .unwrap();
    store(dir.path())
        .add_device("fw-coap", None, &flownexus::store::tags::Tags::default())
        .unwrap();
    let mut c = config(dir.path());
    // The per-source rate of answers to an unverified source is the
    // server tests' (`firmware_gets_from_unverified_sources_cannot_amplify`);
    // here libcoap's 2,048 small blocks must not wait on it.
    c.lwm2m.unverified_firmware_gets_per_s = 1_000_000;
    let running = app::start(c).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let image: Vec<u8> = (0..512 * 1024).map(|_| rng.u8(..)).collect();
    let upload = Upload {
        name: "app.bin",
        version: Some("3.0.0"),
        notes: "",
        uploader: "test",
    };
    let (row, _) = Catalogue::new(dir.path(), 1 << 30)
        .add(&mut store(dir.path()), &mut image.as_slice(), &upload, &mut |_| {})
        .unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let url = |device: &str, base: String| {
        let (ok, out, err) = flownexus_cli(
            &data,
            &["firmware", "url", "app.bin", "--device", device, "--base", &base],
            "",
        );
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let coap_url = url("fw-coap", format!("coap://{}", running.coap_addr.unwrap()));
    let coaps_url = url("fw-coaps", format!("coaps://{}", running.coaps_addr.unwrap()));
    let fetch = |client: &'static str, extra: Vec<String>, url: String, out: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let o = std::process::Command::new(client)
                .args(["-m", "get", "-b", "1024", "-B", "60", "-o"])
                .arg(&out)
                .args(&extra)
                .arg(&url)
                .output()
                .unwrap_or_else(|e| panic!("{client}: {e} (Debian libcoap3-bin; `make test` installs it)"));
            let got = std::fs::read(&out).unwrap_or_default();
            (got, String::from_utf8_lossy(&o.stderr).into_owned())
        })
    };
    let sha = |b: &[u8]| flownexus::firmware::sha256_hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref());

    let (got, log) = fetch(
        "coap-client-notls",
        vec![],
        coap_url.clone(),
        dir.path().join("plain.bin"),
    )
    .await
    .unwrap();
    assert_eq!((got.len(), sha(&got)), (image.len(), row.sha256.clone()), "{log}");
    let extra = vec!["-u".into(), "fw-coaps".into(), "-k".into(), key_text.into()];
    let (got, log) = fetch("coap-client-openssl", extra, coaps_url, dir.path().join("dtls.bin"))
        .await
        .unwrap();
    assert_eq!((got.len(), sha(&got)), (image.len(), row.sha256.clone()), "{log}");

    // Each block was one accounted request, to the token's device. Over
    // DTLS (a verified address) the 1 KiB blocks libcoap asked for; over
    // plain CoAP from a socket that never registered, smaller ones, so no
    // answer is over three times its request (issue 32), and libcoap
    // follows the server's smaller size (RFC 7959 §2.4).
    running.flush().await;
    let s = store(dir.path());
    let dl = s.device_downloads("fw-coaps").unwrap();
    assert_eq!((dl[0].requests, dl[0].bytes), (512, image.len() as u64), "{dl:?}");
    let dl = s.device_downloads("fw-coap").unwrap();
    assert_eq!(dl[0].bytes, image.len() as u64, "{dl:?}");
    let block = image.len() as u64 / dl[0].requests;
    assert!(
        block.is_power_of_two() && block * dl[0].requests == image.len() as u64 && block <= 256,
        "{} requests: blocks of {block} bytes to an unverified source",
        dl[0].requests
    );
    // A token for another image, or tampered with, opens nothing.
    let bad = coap_url.replace("?t=", "?t=x");
    let (got, log) = fetch("coap-client-notls", vec![], bad, dir.path().join("bad.bin"))
        .await
        .unwrap();
    assert!(got.is_empty() && log.contains("4.03"), "{log}");
    running.stop().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An image from `firmware/make-test-image.py` (the layout imgtool
/// writes: header, body, SHA-256 TLV), catalogued through the CLI, which
/// reads its kind and version, and installed on a simulated device that
/// boots into the header's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_the_firmware_script_is_catalogued_and_installed() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let img = dir.path().join("sample.bin");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware/make-test-image.py");
    let made = std::process::Command::new("python3")
        .arg(&script)
        .args(["--version", "3.1.4+15", "--size", "200000"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let data = dir.path().to_str().unwrap();
    let add = |extra: &[&str]| {
        let mut args = vec!["firmware", "add", img.to_str().unwrap(), "--name", "app.bin"];
        args.extend_from_slice(extra);
        flownexus_cli(data, &args, "")
    };
    // A version that disagrees with the header is refused, showing both,
    // and leaves nothing behind.
    let (ok, _, err) = add(&["--version", "3.1.5"]);
    assert!(!ok && err.contains("3.1.5") && err.contains("3.1.4+15"), "{err}");
    assert!(
        std::fs::read_dir(dir.path().join("firmware/images"))
            .unwrap()
            .next()
            .is_none()
    );
    // Without --version the header's is taken.
    let (ok, out, err) = add(&[]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = flownexus_cli(data, &["firmware", "list", "--json"], "");
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["version"], "3.1.4+15", "{list}");
    assert_eq!(list[0]["image_type"], "mcuboot-application", "{list}");
    assert_eq!(list[0]["size"], 200_000 + 0x200 + 4 + 4 + 32, "{list}");

    let f = fleet(
        &running,
        vec![fota_device(dir.path(), "fota-script", FotaBehaviour::default())],
    )
    .await;
    let (ok, out) = update(dir.path(), "fota-script").await.unwrap();
    assert!(ok, "{out}");
    let reported = store(dir.path())
        .latest_values("fota-script")
        .unwrap()
        .into_iter()
        .find(|v| v.path.to_string() == "/3/0/3")
        .map(|v| v.value);
    assert_eq!(
        reported,
        Some(flownexus::lwm2m::Value::String("3.1.4+15".into())),
        "the header's version runs"
    );
    f.stop().await;
    running.stop().await;
}
