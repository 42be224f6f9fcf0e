//! Every operation kind the server offers, against a real LwM2M client
//! written outside this project: Eclipse Wakaama's example client, built
//! from the sources in `../shared/peers/` (plain UDP and tinydtls DTLS-PSK
//! with CCM_8). Wakaama is lenient (it takes a POST with a payload on a
//! resource as a Write), so this proves interoperation; conformance is in
//! `src/lwm2m/conformance_tests.rs` and the strict simulator.
//!
//! Where `../shared/peers` is absent (a clone outside this setup) the tests
//! say so and pass without running; with `CI=true` a missing peer fails.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use flownexus::app;
use flownexus::lwm2m::operation::{OperationKind, OperationState, WriteValue};
use flownexus::psk::Psk;
use flownexus::store::tags::Tags;
use flownexus::store::{OperationRow, now_ms};

use super::{config, flownexus_cli, run_op, store, wait_for};

/// Build the clients once per test run (the script is a no-op when they
/// are built); `None` where the peer's sources are not here.
pub(super) fn wakaama(variant: &str) -> Option<PathBuf> {
    static BUILT: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("../shared/peers/build-wakaama.sh");
    if !script.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing: CI needs the Wakaama peer",
            script.display()
        );
        eprintln!("skipped: {} is absent (Wakaama peer not available)", script.display());
        return None;
    }
    let mut built = BUILT.lock().unwrap();
    let dir = built
        .get_or_insert_with(|| {
            let dest = root.join("target/peers/wakaama");
            let out = Command::new("bash")
                .arg(&script)
                .arg(&dest)
                .output()
                .map_err(|e| format!("{}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "building Wakaama failed (needs cmake autoconf automake libtool; `make test` installs them):\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(dest.join("bin"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"));
    Some(dir.join(variant))
}

/// A running Wakaama client; de-registers (`quit` on stdin) and is
/// killed when dropped.
pub(super) struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Client {
    pub(super) fn start(
        bin: &Path,
        server: SocketAddr,
        endpoint: &str,
        psk: Option<(&str, &str)>,
        log: PathBuf,
    ) -> Client {
        // A free local port for the client (its default, 56830, would
        // collide between tests running at once).
        let local = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(bin);
        cmd.args(["-4", "-h", "127.0.0.1", "-p", &server.port().to_string()])
            .args(["-n", endpoint, "-t", "60", "-l", &local.to_string()]);
        if let Some((identity, key_hex)) = psk {
            cmd.args(["-i", identity, "-s", key_hex]);
        }
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            // Its stdin must stay open: at end of file it spins.
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut c = Client {
            child,
            stdin: None,
            log,
        };
        c.stdin = c.child.stdin.take();
        c
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"quit\n");
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn p(s: &str) -> flownexus::lwm2m::ResourcePath {
    s.parse().unwrap()
}

fn wv(path: &str, value: &str) -> WriteValue {
    WriteValue {
        path: p(path),
        value: value.into(),
    }
}

fn result(row: &OperationRow) -> String {
    serde_json::to_string(&row.result).unwrap()
}

fn succeeded(row: &OperationRow, code: &str, what: &str) {
    assert_eq!(
        (row.state, row.coap_code.as_deref()),
        (OperationState::Succeeded, Some(code)),
        "{what}: {row:?}"
    );
}

/// The server's config for these tests: Wakaama's test object typed by a
/// DDF from `tests/data/ddf`.
fn wakaama_config(dir: &Path) -> flownexus::config::Config {
    let mut c = config(dir);
    // How long an empty ACK waits for its separate response (see below).
    c.coap.response_timeout_ms = 2_000;
    c.lwm2m.models_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ddf"));
    c
}

/// A Read of `path` succeeds and shows `want`.
async fn reads_back(dir: &Path, ep: &str, path: &str, want: &str) {
    let row = run_op(dir, ep, OperationKind::Read { path: p(path) }).await;
    succeeded(&row, "2.05", path);
    assert!(
        result(&row).contains(want),
        "{path} should read {want}: {}",
        result(&row)
    );
}

/// Every operation kind against one registered Wakaama client.
async fn every_operation(dir: &Path, ep: &str, client: &Client) {
    let op = |kind| run_op(dir, ep, kind);
    let read = op(OperationKind::Read { path: p("/3/0") }).await;
    succeeded(&read, "2.05", "Read /3/0");
    assert!(result(&read).contains("Open Mobile Alliance"), "{}", result(&read));

    let disc = op(OperationKind::Discover { path: p("/3/0") }).await;
    succeeded(&disc, "2.05", "Discover /3/0");
    assert!(result(&disc).contains("</3/0/0>"), "{}", result(&disc));

    // A resource write goes out as PUT (Write-Replace), the instance write
    // as POST (Partial Update); both are read back.
    let write = OperationKind::Write {
        path: p("/1/0/1"),
        values: vec![wv("/1/0/1", "120")],
        replace: None,
    };
    succeeded(&op(write).await, "2.04", "Write /1/0/1");
    reads_back(dir, ep, "/1/0/1", "120").await;
    let partial = OperationKind::Write {
        path: p("/1/0"),
        values: vec![wv("/1/0/1", "150")],
        replace: None,
    };
    succeeded(&op(partial).await, "2.04", "Partial Update /1/0");
    reads_back(dir, ep, "/1/0/1", "150").await;
    // Writing a read-only resource is the device's 4.05, recorded as failure.
    let denied = op(OperationKind::Write {
        path: p("/3/0/0"),
        values: vec![wv("/3/0/0", "x")],
        replace: None,
    })
    .await;
    assert_eq!(
        (denied.state, denied.coap_code.as_deref()),
        (OperationState::Failed, Some("4.05"))
    );

    let attrs = OperationKind::WriteAttributes {
        path: p("/3/0/9"),
        attributes: vec!["pmin=1".into(), "pmax=5".into()],
    };
    succeeded(&op(attrs).await, "2.04", "Write-Attributes /3/0/9");

    let observe = op(OperationKind::Observe { path: p("/3/0/13") }).await;
    succeeded(&observe, "2.05", "Observe /3/0/13");
    let cancel = op(OperationKind::CancelObserve { path: p("/3/0/13") }).await;
    succeeded(&cancel, "2.05", "Cancel Observe /3/0/13");

    succeeded(
        &op(OperationKind::Execute {
            path: p("/3/0/12"),
            args: None,
        })
        .await,
        "2.04",
        "Execute /3/0/12 (reset error code)",
    );

    succeeded(
        &op(OperationKind::Execute {
            path: p("/31024/10/2"),
            args: Some("0='go'".into()),
        })
        .await,
        "2.04",
        "Execute /31024/10/2 with arguments",
    );
    // The test object is typed by an operator's DDF (tests/data/ddf).
    let create = op(OperationKind::Create {
        path: p("/31024"),
        values: vec![wv("/31024/20/1", "42"), wv("/31024/20/3", "2.5")],
    })
    .await;
    succeeded(&create, "2.01", "Create /31024");
    assert_eq!(create.result.as_ref().and_then(|r| r["location"].as_str()), Some("20"));
    succeeded(
        &op(OperationKind::Delete { path: p("/31024/20") }).await,
        "2.02",
        "Delete /31024/20",
    );
    let gone = op(OperationKind::Read { path: p("/31024/20") }).await;
    assert_eq!(
        (gone.state, gone.coap_code.as_deref()),
        (OperationState::Failed, Some("4.04"))
    );

    // Wakaama's example client has no FETCH or iPATCH handler: it takes
    // those codes for responses and answers the CON with an empty ACK
    // (core/packet.c), then never with a response. The server waits
    // `coap.response_timeout_ms` for the separate response (RFC 7252
    // §5.2.2) and fails the operation: no success is ever recorded.
    let s = store(dir);
    for kind in [
        OperationKind::ReadComposite {
            paths: vec![p("/3/0/0"), p("/1/0/1")],
        },
        OperationKind::ObserveComposite {
            paths: vec![p("/3/0/13")],
        },
        OperationKind::WriteComposite {
            values: vec![wv("/1/0/1", "200")],
        },
    ] {
        let name = kind.name();
        let id = s.queue_operation(ep, &kind, now_ms() + 60_000, 1).unwrap();
        let mut row = s.operation(id).unwrap();
        wait_for(name, Duration::from_secs(15), || {
            row = s.operation(id).unwrap();
            row.state.is_final()
        })
        .await;
        assert_eq!(
            (row.state, row.coap_code.as_deref()),
            (OperationState::Failed, None),
            "{name}: {row:?}"
        );
        assert!(result(&row).contains("no answer"), "{name}: {row:?}");
    }
    // The composite write changed nothing.
    reads_back(dir, ep, "/1/0/1", "150").await;
    // Nothing composite is observed, so nothing is cancelled or sent.
    let cancel = op(OperationKind::CancelObserveComposite {
        paths: vec![p("/3/0/13")],
    })
    .await;
    assert_eq!(
        (cancel.state, cancel.coap_code.as_deref()),
        (OperationState::Failed, None)
    );
    let log = client.output();
    assert!(!log.contains("Segmentation"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakaama_over_plain_coap_takes_every_operation() {
    let Some(bin) = wakaama("wakaama-udp") else { return };
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(wakaama_config(dir.path())).await.unwrap();
    let client = Client::start(
        &bin,
        running.coap_addr.unwrap(),
        "urn:wakaama:udp",
        None,
        dir.path().join("wakaama.log"),
    );
    let s = store(dir.path());
    wait_for("Wakaama's registration", Duration::from_secs(20), || {
        s.registrations()
            .unwrap()
            .iter()
            .any(|r| r.endpoint == "urn:wakaama:udp")
    })
    .await;
    running.flush().await;
    every_operation(dir.path(), "urn:wakaama:udp", &client).await;
    // The command an operator types first: the real binary's default Write.
    let data = dir.path().to_str().unwrap().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        flownexus_cli(
            &data,
            &["device", "write", "urn:wakaama:udp", "/1/0/1", "90", "--wait"],
            "",
        )
    })
    .await
    .unwrap();
    assert!(
        ok && out.contains("\"succeeded\"") && out.contains("2.04"),
        "{out}{err}"
    );
    reads_back(dir.path(), "urn:wakaama:udp", "/1/0/1", "90").await;
    drop(client);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakaama_over_dtls_psk_takes_every_operation() {
    let Some(bin) = wakaama("wakaama-dtls") else { return };
    let dir = tempfile::tempdir().unwrap();
    let ep = "urn:wakaama:dtls";
    let key = "000102030405060708090a0b0c0d0e0f";
    let psk = Psk::from_hex(ep, key).unwrap();
    store(dir.path()).add_device(ep, Some(&psk), &Tags::default()).unwrap();
    let running = app::start(wakaama_config(dir.path())).await.unwrap();
    let client = Client::start(
        &bin,
        running.coaps_addr.unwrap(),
        ep,
        Some((ep, key)),
        dir.path().join("wakaama.log"),
    );
    let s = store(dir.path());
    wait_for("Wakaama's registration over DTLS", Duration::from_secs(20), || {
        s.registrations().unwrap().iter().any(|r| r.endpoint == ep)
    })
    .await;
    running.flush().await;
    every_operation(dir.path(), ep, &client).await;
    drop(client);
    running.stop().await;
}

/// With only the embedded definitions (the OMA registry), Wakaama's test
/// object 31024 is one no definition knows: the device page names it by
/// id and offers a Discover; once the client has answered one, the page
/// lists the resources the answer named (Core 1.1 §6.3.5). The objects it
/// does know are drawn at the version the client announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_no_definition_knows_shows_what_discover_finds() {
    let Some(bin) = wakaama("wakaama-udp") else { return };
    let dir = tempfile::tempdir().unwrap();
    let ep = "urn:wakaama:undefined";
    let (running, addr) = super::web::start(dir.path(), |c| c.coap.response_timeout_ms = 2_000).await;
    let _client = Client::start(
        &bin,
        running.coap_addr.unwrap(),
        ep,
        None,
        dir.path().join("wakaama.log"),
    );
    let s = store(dir.path());
    wait_for("Wakaama's registration", Duration::from_secs(20), || {
        s.registrations().unwrap().iter().any(|r| r.endpoint == ep)
    })
    .await;
    running.flush().await;
    let registration = s
        .registrations()
        .unwrap()
        .into_iter()
        .find(|r| r.endpoint == ep)
        .unwrap();
    let versions = registration.object_versions();
    let cookie = format!("flownexus={}", super::web::Keys::new(dir.path()).session("operator"));
    let page = async || {
        let r = super::web::http(addr, "GET", &format!("/devices/{ep}"), &[("Cookie", &cookie)], b"").await;
        assert_eq!(r.status, 200);
        r.text()
    };
    let html = page().await;
    let object = |html: &str, id: u16| {
        let start = html
            .find(&format!("id=\"o-{id}\""))
            .unwrap_or_else(|| panic!("no /{id} in {html}"));
        let end = html[start..]
            .find("</details>\n<details class=\"object\"")
            .map_or(html.len(), |e| start + e);
        html[start..end].to_string()
    };
    let test_object = object(&html, 31024);
    assert!(test_object.contains("<strong>Object 31024</strong>"), "{test_object}");
    assert!(
        test_object.contains(r#"data-op="discover" data-path="/31024""#),
        "no Discover offered: {test_object}"
    );
    assert!(
        !test_object.contains("r-31024-10-1"),
        "resources before any Discover: {test_object}"
    );
    // Device is drawn at the version Wakaama announced.
    let device = object(&html, 3);
    assert!(device.contains(&format!(">v{}", versions[&3])), "{versions:?} {device}");

    let disc = run_op(dir.path(), ep, OperationKind::Discover { path: p("/31024") }).await;
    succeeded(&disc, "2.05", "Discover /31024");
    let html = page().await;
    let test_object = object(&html, 31024);
    for id in ["r-31024-10-1", "r-31024-10-2", "r-31024-10-3"] {
        assert!(
            test_object.contains(&format!("id=\"{id}\"")),
            "{id} missing after Discover: {test_object}"
        );
    }
    running.stop().await;
}
