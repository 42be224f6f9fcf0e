//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! Playwright (`tests/browser/dashboard.mjs`, installed by `make deps`),
//! against the whole server with simulated devices. Screenshots of every
//! page land in `tests/output/browser/`.

use std::path::Path;
use std::process::Command;

use flownexus::lwm2m::operation::{OperationKind, OperationState};
use flownexus::lwm2m::path::Value;

use super::web::start;

const WAKAAMA: &str = "urn:wakaama:browser";
use super::{device, fleet, run_op, store};

/// Every string a device controls, each a different payload that would set
/// `window.__xss` if it ever became markup.
fn hostile_device() -> (flownexus::sim::DeviceConfig, Vec<String>) {
    let payload = |field: &str| format!("<img src=x onerror=\"window.__xss='{field}'\">");
    let mut d = device("<script>window.__xss='endpoint'</script>");
    d.firmware_version = payload("firmware");
    let strings: Vec<(&str, String)> = vec![
        ("/3/0/0", "<svg onload=\"window.__xss='manufacturer'\">".into()),
        ("/3/0/1", payload("model")),
        ("/3/0/2", "\"><script>window.__xss='serial'</script>".into()),
        ("/3/0/19", "javascript:window.__xss='software'".into()),
    ];
    d.resources = strings
        .iter()
        .map(|(p, s)| (p.parse().unwrap(), Value::String(s.clone())))
        .collect();
    let mut shown: Vec<String> = strings.into_iter().map(|(_, s)| s).collect();
    shown.push(d.firmware_version.clone());
    (d, shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "Playwright is not installed: run `make deps` (npm ci in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    // Wakaama's test object is typed by an operator's DDF (tests/data/ddf).
    let (running, addr) = start(dir.path(), |c| {
        c.lwm2m.models_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ddf"));
        c.coap.response_timeout_ms = 2_000;
    })
    .await;
    // A real LwM2M client for the object tree's actions; without its
    // sources (outside CI) the tree is exercised on the simulator only.
    let real = super::wakaama::wakaama("wakaama-udp").map(|bin| {
        super::wakaama::Client::start(
            &bin,
            running.coap_addr.unwrap(),
            WAKAAMA,
            None,
            dir.path().join("wakaama.log"),
        )
    });
    let (hostile, strings) = hostile_device();
    let hostile_endpoint = hostile.endpoint.clone();
    let mut sensor = device("sensor-1");
    sensor.fw_ca = Some(dir.path().join("fw-tls/ca.pem"));
    let _fleet = fleet(&running, vec![sensor, hostile]).await;
    // The hostile strings reach the store the way any value does: read.
    for path in ["/3/0", "/3303/0"] {
        let row = run_op(
            dir.path(),
            &hostile_endpoint,
            OperationKind::Read {
                path: path.parse().unwrap(),
            },
        )
        .await;
        assert_eq!(row.state, OperationState::Succeeded, "{path}");
    }
    // A hundred more devices for the bulk actions (after the others in
    // the list's order).
    {
        let s = store(dir.path());
        let tags = flownexus::store::tags::Tags::parse("fleet-b").unwrap();
        for i in 0..100 {
            s.add_device(&format!("zz-bulk-{i:03}"), None, &tags).unwrap();
        }
    }
    if real.is_some() {
        let s = store(dir.path());
        super::wait_for("Wakaama's registration", std::time::Duration::from_secs(20), || {
            s.registrations().unwrap().iter().any(|r| r.endpoint == WAKAAMA)
        })
        .await;
    }
    running.flush().await;

    // An MCUboot image header (version 2.0.0 at ih_ver), then arbitrary bytes.
    let mut image = 0x96f3_b83du32.to_le_bytes().to_vec();
    image.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
    image[20..28].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    let image_file = dir.path().join("app-update.bin");
    std::fs::write(&image_file, &image).unwrap();

    let out_dir = root.join("tests/output/browser");
    let _ = std::fs::remove_dir_all(&out_dir);
    let output = Command::new("node")
        .arg(&script)
        .env("FNX_URL", format!("http://{addr}"))
        .env("FNX_USER", "admin")
        .env("FNX_PASSWORD", "admin password 1")
        .env("FNX_DEVICE", "sensor-1")
        .env(
            "FNX_HOSTILE",
            serde_json::json!({ "endpoint": hostile_endpoint, "strings": strings }).to_string(),
        )
        .env("FNX_FIRMWARE", &image_file)
        .env(
            "FNX_FIRMWARE_SHA256",
            flownexus::firmware::sha256_hex(ring::digest::digest(&ring::digest::SHA256, &image).as_ref()),
        )
        .env("FNX_OUT", &out_dir)
        .env("FNX_WAKAAMA", if real.is_some() { WAKAAMA } else { "" })
        .output()
        .expect("node (Node.js) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser run failed:\n{stdout}\n{stderr}");

    // What the browser did, seen from the store.
    let s = store(dir.path());
    let ops = s.operations_of("sensor-1", 20).unwrap();
    for (kind, path) in [
        ("read", "/3/0"),
        ("write", "/3/0/15"),
        ("read", "/3/0/15"),
        ("execute", "/3303/0/5605"),
    ] {
        assert!(
            ops.iter().any(|o| o.kind.name() == kind
                && o.kind.path().to_string() == path
                && o.state == OperationState::Succeeded),
            "no successful {kind} {path} in {ops:?}"
        );
    }
    if real.is_some() {
        // The object tree's buttons, seen from the store: each a succeeded
        // operation of its kind on the real client.
        let ops = s.operations_of(WAKAAMA, 50).unwrap();
        for (kind, path) in [
            ("read", "/3/0/0"),
            ("write", "/1/0/1"),
            ("write", "/3/0/13"),
            ("execute", "/3/0/12"),
            ("observe", "/3/0/9"),
            ("cancel-observe", "/3/0/9"),
            ("write-attributes", "/3/0/9"),
            ("create", "/31024"),
            ("delete", "/31024/20"),
            ("read", "/3/0"),
        ] {
            assert!(
                ops.iter().any(|o| o.kind.name() == kind
                    && o.kind.path().to_string() == path
                    && o.state == OperationState::Succeeded),
                "no successful {kind} {path} from the object tree in {ops:?}"
            );
        }
        // The typed write reached the device as a number.
        let write = ops
            .iter()
            .find(|o| o.kind.name() == "write" && o.kind.path().to_string() == "/1/0/1")
            .unwrap();
        assert!(
            matches!(&write.kind, OperationKind::Write { values, .. } if values[0].value == "95"),
            "{write:?}"
        );
    }
    // The bulk actions: a tag on all 100 matching the filter, a Read
    // queued on the 25 ticked on the first page.
    let bulk: Vec<_> = (0..100)
        .map(|i| s.device(&format!("zz-bulk-{i:03}")).unwrap())
        .collect();
    assert!(
        bulk.iter().all(|d| d.tags == "fleet-b,wave-1"),
        "{:?}",
        bulk.iter().map(|d| &d.tags).collect::<Vec<_>>()
    );
    let read_on = |ep: &str| {
        s.operations_of(ep, 5)
            .unwrap()
            .iter()
            .filter(|o| matches!(&o.kind, OperationKind::Read { path } if path.to_string() == "/3/0"))
            .count()
    };
    let queued: Vec<usize> = (0..100).map(|i| read_on(&format!("zz-bulk-{i:03}"))).collect();
    assert_eq!(queued[..25], [1; 25], "the 25 ticked devices each got one Read");
    assert_eq!(queued[25..], [0; 75], "the others none");
    let profiles = s.profiles().unwrap();
    assert_eq!(
        profiles
            .iter()
            .map(|p| (p.name.as_str(), p.tag.as_deref(), p.steps.len()))
            .collect::<Vec<_>>(),
        [
            ("identity and temperature", Some("fleet-b"), 2),
            ("onboarding", None, 2)
        ]
    );
    // The onboarding profile as the browser edited it.
    assert_eq!(profiles[1].deadline_s, 900);
    let fw = s.firmware("app-update.bin").unwrap();
    assert_eq!((fw.version.as_str(), fw.size), ("2.0.0", image.len() as u64));
    assert_eq!(fw.uploader, "admin");
    for page in [
        "login",
        "overview",
        "devices",
        "device",
        "device-hostile",
        "events",
        "bulk-confirm",
        "device-history",
        "devices-prefs",
        "device-profiles",
        "firmware-uploaded",
        "users",
        "profile",
        "tokens",
        "logged-out",
    ] {
        let png = std::fs::read(out_dir.join(format!("{page}.png"))).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "no screenshot of {page}");
    }
    drop(real);
    running.stop().await;
}

/// Issue 31 blocker 8: a production server (https public URL, `__Host-`
/// Secure cookies) used through an SSH tunnel at `http://localhost:PORT`
/// in real Chromium: sign-in and a form work; the same form from another
/// local page's origin is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_through_an_ssh_tunnel() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "Playwright is not installed: run `make deps` (npm ci in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |c| {
        c.http.public_url = Some("https://dashboard.example.test".into());
    })
    .await;
    let tunnel = format!("localhost:{}", addr.port());
    let output = Command::new("node")
        .arg(root.join("tests/browser/tunnel.mjs"))
        .env("FNX_URL", format!("http://{tunnel}"))
        .env("FNX_USER", "admin")
        .env("FNX_PASSWORD", "admin password 1")
        .output()
        .expect("node (Node.js) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser run failed:\n{stdout}\n{stderr}");
    let tokens = store(dir.path()).tokens(None).unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].name, "through-the-tunnel");

    // The same session, a form posted from other origins: refused.
    let cookie = format!(
        "__Host-flownexus={}",
        super::web::sign_in(addr, "admin", "admin password 1")
            .await
            .cookie("__Host-flownexus")
            .expect("the https public URL gives the __Host- cookie")
    );
    let (_, csrf) = super::web::form_page(addr, "/tokens", &cookie).await;
    for (origin, host) in [
        ("http://localhost:3000", tunnel.as_str()),
        ("http://evil.test:8000", "evil.test:8000"),
        ("https://dashboard.example.test.evil.test", tunnel.as_str()),
    ] {
        let r = super::web::http(
            addr,
            "POST",
            "/tokens",
            &[
                ("Host", host),
                ("Cookie", &cookie),
                ("Origin", origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf={csrf}&name=other&role=viewer").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 403, "{origin} via {host}: {}", r.text());
        assert!(r.text().contains("cross-origin request refused"), "{}", r.text());
    }
    assert_eq!(store(dir.path()).tokens(None).unwrap().len(), 1);
    running.stop().await;
}
