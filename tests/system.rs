//! System tests: the whole server in-process on port 0 with a temporary
//! data directory, real UDP sockets, a real SQLite file, simulated devices,
//! the real `flownexus` binary for CLI paths, and Debian's libcoap client
//! as an independent peer.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flownexus::app::{self, Running};
use flownexus::config::{Config, Overrides};
use flownexus::lwm2m::Models;
use flownexus::lwm2m::operation::{OperationKind, OperationState, WriteValue};
use flownexus::sim::{DeviceConfig, Fleet};
use flownexus::store::{Store, now_ms};

#[path = "system/admission.rs"]
mod admission;
#[path = "system/advanced_fota.rs"]
mod advanced_fota;
#[path = "system/backup.rs"]
mod backup;
#[path = "system/browser.rs"]
mod browser;
#[path = "system/campaigns.rs"]
mod campaigns;
#[path = "system/celery.rs"]
mod celery;
#[path = "system/deploy.rs"]
mod deploy;
#[path = "system/dtls.rs"]
mod dtls;
#[path = "system/firmware.rs"]
mod firmware;
#[path = "system/fota.rs"]
mod fota;
#[path = "system/metrics.rs"]
mod metrics;
#[path = "system/nginx.rs"]
mod nginx;
#[path = "system/profiles.rs"]
mod profiles;
#[path = "system/quadlet.rs"]
mod quadlet;
#[path = "system/setup_host.rs"]
mod setup_host;
#[path = "system/systemd.rs"]
mod systemd;
#[path = "system/wakaama.rs"]
mod wakaama;
#[path = "system/web.rs"]
mod web;

fn config(dir: &Path) -> Config {
    let flags = Overrides {
        data_dir: Some(dir.to_path_buf()),
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let mut c = Config::load(None, &Default::default(), &flags).unwrap();
    c.fw.listen = "127.0.0.1:0".parse().unwrap();
    c.coaps.listen = "127.0.0.1:0".parse().unwrap();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.coap.ack_timeout_ms = 500;
    c.coap.max_retransmit = 2;
    c.lwm2m.queue_awake_window_s = 3;
    c
}

fn device(name: &str) -> DeviceConfig {
    let mut d = DeviceConfig::new(name);
    d.lifetime = 120;
    d.update_interval = Duration::from_secs(100);
    d.notify_interval = Duration::from_millis(300);
    d.params.ack_timeout = Duration::from_millis(500);
    d
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queue a Read for a device that cannot be reached now (asleep, or its
/// DTLS session gone) and check that it is held, not sent.
async fn queue_read_and_see_it_held(s: &Store, endpoint: &str, path: &str) -> flownexus::lwm2m::operation::OperationId {
    let id = s
        .queue_operation(
            endpoint,
            &OperationKind::Read {
                path: path.parse().unwrap(),
            },
            now_ms() + 60_000,
            3,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.operation(id).unwrap().state,
        OperationState::Queued,
        "not sent to an unreachable device"
    );
    id
}

/// Run `cmd` with `stdin` written to its standard input.
fn output_with_stdin(cmd: &mut Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Whether a finished command succeeded, and all it printed (stdout, then stderr).
fn outcome(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The real `flownexus` binary on data directory `data`: success, stdout,
/// stderr.
fn flownexus_cli(data: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_flownexus"))
            .args(["--data-dir", data])
            .args(args),
        stdin,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every listener `serve` has, by the name its runtime file and socket
/// activation (`LISTEN_FDNAMES`) give it.
const LISTENERS: [&str; 5] = ["coap", "coaps", "fw", "http", "metrics"];

/// The real binary's `serve` on data directory `data` with every listener
/// on 127.0.0.1:0, or on a socket the test holds (`handed`: name and
/// descriptor, passed by systemd's socket activation protocol, so a test
/// that restarts the server keeps its ports without ever letting them go).
/// Tests run in parallel: two servers on a default port (5683, 5684, 8000,
/// 8443, 9464) would collide. This is the only way tests start the binary's
/// server (`no_test_starts_a_server_on_a_default_port` checks); the
/// addresses it bound are in its runtime file ([`bound`]).
fn serve_command(data: &Path, handed: &[(&str, std::os::fd::RawFd)]) -> Command {
    let bin = env!("CARGO_BIN_EXE_flownexus");
    let mut cmd = if handed.is_empty() {
        Command::new(bin)
    } else {
        // LISTEN_PID must be the server's own pid, known only in the child:
        // the shell's `$$` is it once `exec` replaces the shell.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#, bin]);
        let names: Vec<&str> = handed.iter().map(|(n, _)| *n).collect();
        cmd.env("LISTEN_FDS", handed.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let fds: Vec<i32> = handed.iter().map(|(_, fd)| *fd).collect();
        // SAFETY: dup2 is async-signal-safe; the copies at 3.. have no
        // close-on-exec flag, so the server inherits exactly these. The
        // originals are above 3 + fds.len() (the harness opened them after
        // its own standard descriptors), so no copy overwrites one unread.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    };
    cmd.arg("serve").env("FLOWNEXUS_DATA_DIR", data);
    for name in LISTENERS {
        cmd.env(format!("FLOWNEXUS_{}_LISTEN", name.to_uppercase()), "127.0.0.1:0");
    }
    cmd
}

/// The address a running server bound for `listener`, from its runtime
/// file, once it has written it.
fn bound(data: &Path, listener: &str) -> Option<std::net::SocketAddr> {
    let rt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("runtime.json")).ok()?).ok()?;
    rt[listener].as_str()?.parse().ok()
}

/// Waits until the server on `data` has written its runtime file, and
/// returns the address of `listener`.
async fn bound_when_up(data: &Path, listener: &str) -> std::net::SocketAddr {
    let mut addr = None;
    wait_for("the server's runtime file", Duration::from_secs(30), || {
        addr = bound(data, listener);
        addr.is_some()
    })
    .await;
    addr.unwrap()
}

/// No test starts the binary's server any other way than [`serve_command`]:
/// one that did, with a listener left at its default port, collides with
/// every other such test running at once (`coaps.listen 0.0.0.0:5684:
/// Address already in use` was seen in CI).
#[test]
fn no_test_starts_a_server_on_a_default_port() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = vec![root.join("system.rs")];
    for e in std::fs::read_dir(root.join("system")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut starts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("\"serve\"") {
                starts.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    let own = std::fs::read_to_string(&files[0]).unwrap();
    let helper = own
        .split("fn serve_command(")
        .nth(1)
        .unwrap()
        .split("\n}\n")
        .next()
        .unwrap();
    assert!(
        starts.len() == 1 && helper.contains("\"serve\""),
        "only serve_command names the `serve` command: {starts:#?}"
    );
    // Nor does a test move a listener off port 0 after serve_command: the
    // only place that names the listeners' variables is serve_command's loop.
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for name in LISTENERS {
            let var = format!("FLOWNEXUS_{}_LISTEN", name.to_uppercase());
            assert!(!text.contains(&var), "{} sets {var}", f.display());
        }
    }
}

/// A server process, SIGKILLed when dropped: on purpose (`kill -9` in a
/// test), or when an assertion fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `script` with `sh -e` in `dir`; it must succeed.
fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A `flownexus serve` process that keeps its addresses across restarts
/// (so devices find it again), plain CoAP and the firmware server only, to
/// be killed and started again. The test binds both sockets once, on port
/// 0, and holds them for its whole run; each server start inherits them
/// (socket activation), so no other test can take a port between two starts.
struct Restartable {
    dir: std::path::PathBuf,
    coap: std::net::SocketAddr,
    coap_socket: std::net::UdpSocket,
    fw_socket: std::net::TcpListener,
}

impl Restartable {
    fn new(dir: &Path) -> Restartable {
        let coap_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Restartable {
            dir: dir.to_path_buf(),
            coap: coap_socket.local_addr().unwrap(),
            coap_socket,
            fw_socket: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn serve(&self) -> Killed {
        self.serve_with(&[])
    }

    /// Serve with more settings in the environment.
    fn serve_with(&self, env: &[(&str, &str)]) -> Killed {
        use std::os::fd::AsRawFd;
        let handed = [
            ("coap", self.coap_socket.as_raw_fd()),
            ("fw", self.fw_socket.as_raw_fd()),
        ];
        Killed(
            serve_command(&self.dir, &handed)
                .env("FLOWNEXUS_COAPS_ENABLED", "false")
                .env("FLOWNEXUS_HTTP_ENABLED", "false")
                .env("FLOWNEXUS_COAP_ACK_TIMEOUT_MS", "500")
                .env("FLOWNEXUS_LOG_LEVEL", "warn")
                .envs(env.iter().copied())
                .spawn()
                .unwrap(),
        )
    }

    /// Serve, and wait until the first start made its CA and runtime file.
    async fn serve_up(&self) -> Killed {
        self.serve_up_with(&[]).await
    }

    async fn serve_up_with(&self, env: &[(&str, &str)]) -> Killed {
        let child = self.serve_with(env);
        wait_for("the server", Duration::from_secs(20), || {
            self.dir.join("fw-tls/ca.pem").exists() && self.dir.join("runtime.json").exists()
        })
        .await;
        child
    }
}

fn store(dir: &Path) -> Store {
    Store::open(&dir.join("flownexus.sqlite3")).unwrap()
}

/// Remove the onboarding profile every installation starts with (store
/// migration 20), for tests that count a device's operations or need it
/// asleep: the profile's Read and its Observe of /3/0/3 are traffic of
/// their own, and the notifications keep a queue-mode device awake.
fn without_onboarding(dir: &Path) {
    let s = store(dir);
    let onboarding = s.profiles().unwrap().into_iter().find(|p| p.name == "onboarding");
    s.remove_profile(onboarding.expect("the onboarding profile").id)
        .unwrap();
}

async fn fleet(running: &Running, devices: Vec<DeviceConfig>) -> Fleet {
    fleet_at(running, running.coap_addr.unwrap(), devices).await
}

/// Devices against `server` (the CoAP or the CoAPS address), all registered
/// and committed when this returns.
async fn fleet_at(running: &Running, server: std::net::SocketAddr, devices: Vec<DeviceConfig>) -> Fleet {
    let n = devices.len() as i64;
    let f = Fleet::spawn(devices, server, Arc::new(Models::embedded()), false)
        .await
        .unwrap();
    let stats = f.stats.clone();
    wait_for("registrations", Duration::from_secs(10), || {
        stats.registered.load(Ordering::Relaxed) == n
    })
    .await;
    // The devices' rows are committed within the writer's commit window;
    // operations can be queued for them once they are.
    running.flush().await;
    f
}

/// Queue through the store, as the CLI and API do, and wait for the end.
async fn run_op(dir: &Path, endpoint: &str, kind: OperationKind) -> flownexus::store::OperationRow {
    let s = store(dir);
    let id = s.queue_operation(endpoint, &kind, now_ms() + 60_000, 3).unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let row = s.operation(id).unwrap();
        if row.state.is_final() {
            return row;
        }
        assert!(Instant::now() < until, "operation {id} stuck in {:?}", row.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_life_cycle_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let f = fleet(&running, vec![device("sys-a"), device("sys-b")]).await;
    running.flush().await;
    let regs = store(dir.path()).registrations().unwrap();
    let mut names: Vec<_> = regs.iter().map(|r| r.endpoint.as_str()).collect();
    names.sort();
    assert_eq!(names, ["sys-a", "sys-b"]);
    assert!(
        regs.iter()
            .all(|r| r.version == "1.1" && r.object_links.contains("</3303/0>"))
    );
    // The device list sorts by the device's own copy of "last seen".
    for r in &regs {
        let d = store(dir.path()).device(&r.endpoint).unwrap();
        assert_eq!(d.last_seen, Some(r.last_seen), "{}", r.endpoint);
    }

    f.stop().await; // de-registers
    let s = store(dir.path());
    wait_for("de-registration", Duration::from_secs(5), || {
        s.registrations().unwrap().is_empty()
    })
    .await;
    let events = s.events(Some("sys-a"), 10).unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"registered") && kinds.contains(&"deregistered"),
        "{kinds:?}"
    );
    // De-registered, it is still shown when it was last seen.
    assert!(s.device("sys-a").unwrap().last_seen.is_some());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_against_simulated_devices() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let f = fleet(&running, vec![device("sys-ops")]).await;
    let p = |s: &str| s.parse().unwrap();

    let read = run_op(dir.path(), "sys-ops", OperationKind::Read { path: p("/3/0") }).await;
    assert_eq!(read.state, OperationState::Succeeded);
    assert_eq!(read.coap_code.as_deref(), Some("2.05"));
    let write = OperationKind::Write {
        path: p("/1/0/1"),
        values: vec![WriteValue {
            path: p("/1/0/1"),
            value: "300".into(),
        }],
        replace: None,
    };
    assert_eq!(
        run_op(dir.path(), "sys-ops", write).await.state,
        OperationState::Succeeded
    );
    let check = run_op(dir.path(), "sys-ops", OperationKind::Read { path: p("/1/0/1") }).await;
    assert!(serde_json::to_string(&check.result).unwrap().contains("300"));

    let denied = OperationKind::Write {
        path: p("/3/0/0"),
        values: vec![WriteValue {
            path: p("/3/0/0"),
            value: "x".into(),
        }],
        replace: None,
    };
    let denied = run_op(dir.path(), "sys-ops", denied).await;
    assert_eq!(
        (denied.state, denied.coap_code.as_deref()),
        (OperationState::Failed, Some("4.05"))
    );

    let exec = run_op(
        dir.path(),
        "sys-ops",
        OperationKind::Execute {
            path: p("/3303/0/5605"),
            args: None,
        },
    )
    .await;
    assert_eq!(exec.state, OperationState::Succeeded);
    let disc = run_op(dir.path(), "sys-ops", OperationKind::Discover { path: p("/3") }).await;
    assert!(serde_json::to_string(&disc.result).unwrap().contains("</3/0/9>"));

    let create = OperationKind::Create {
        path: p("/3303"),
        values: vec![WriteValue {
            path: p("/3303/1/5700"),
            value: "-4.5".into(),
        }],
    };
    let create = run_op(dir.path(), "sys-ops", create).await;
    assert_eq!(
        (create.state, create.coap_code.as_deref()),
        (OperationState::Succeeded, Some("2.01"))
    );
    let attrs = OperationKind::WriteAttributes {
        path: p("/3303/1/5700"),
        attributes: vec!["pmin=1".into(), "pmax=5".into()],
    };
    assert_eq!(
        run_op(dir.path(), "sys-ops", attrs).await.state,
        OperationState::Succeeded
    );
    let comp = run_op(
        dir.path(),
        "sys-ops",
        OperationKind::ReadComposite {
            paths: vec![p("/3303/1/5700"), p("/3/0/9")],
        },
    )
    .await;
    let text = serde_json::to_string(&comp.result).unwrap();
    assert!(text.contains("-4.5") && text.contains("87"), "{text}");
    let delete = run_op(dir.path(), "sys-ops", OperationKind::Delete { path: p("/3303/1") }).await;
    assert_eq!(
        (delete.state, delete.coap_code.as_deref()),
        (OperationState::Succeeded, Some("2.02"))
    );
    let gone = run_op(dir.path(), "sys-ops", OperationKind::Read { path: p("/3303/1") }).await;
    assert_eq!(
        (gone.state, gone.coap_code.as_deref()),
        (OperationState::Failed, Some("4.04"))
    );
    let comp_obs = OperationKind::ObserveComposite {
        paths: vec![p("/3304/0/5700")],
    };
    assert_eq!(
        run_op(dir.path(), "sys-ops", comp_obs).await.state,
        OperationState::Succeeded
    );

    // Observe: notifications land in history and latest values.
    let obs = run_op(
        dir.path(),
        "sys-ops",
        OperationKind::Observe {
            path: p("/3303/0/5700"),
        },
    )
    .await;
    assert_eq!(obs.state, OperationState::Succeeded);
    let s = store(dir.path());
    let path = p("/3303/0/5700");
    let humidity = p("/3304/0/5700");
    wait_for("composite notifications in history", Duration::from_secs(10), || {
        s.history_page("sys-ops", &humidity, (0, i64::MAX), None, 100)
            .unwrap()
            .0
            .len()
            >= 4
    })
    .await;
    wait_for("notifications in history", Duration::from_secs(10), || {
        s.history_page("sys-ops", &path, (0, i64::MAX), None, 100)
            .unwrap()
            .0
            .len()
            >= 4
    })
    .await;
    let latest = s.latest_values("sys-ops").unwrap();
    assert!(latest.iter().any(|v| v.path == path));
    assert!(
        latest.iter().any(|v| v.path == p("/3/0/3")),
        "the read of /3/0 filled latest values"
    );

    f.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_registrations_and_queued_operations() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = device("sys-q");
    d.queue_mode = true;
    d.awake_window = Duration::from_secs(3);
    d.update_interval = Duration::from_secs(6);
    let running = app::start(config(dir.path())).await.unwrap();
    without_onboarding(dir.path());
    let f = fleet(&running, vec![d]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await; // device asleep now

    // Queued while asleep, then the server restarts before the device wakes.
    let s = store(dir.path());
    let id = queue_read_and_see_it_held(&s, "sys-q", "/3/0/9").await;
    let addr = running.coap_addr.unwrap();
    running.stop().await;

    let mut c = config(dir.path());
    c.coap.listen = addr; // same address: the device keeps talking to it
    let running = app::start(c).await.unwrap();
    // The device's next Update finds its registration (2.04, not 4.04) and
    // wakes it; the queued read goes out exactly once.
    wait_for("queued read delivered after restart", Duration::from_secs(15), || {
        s.operation(id).unwrap().state.is_final()
    })
    .await;
    let row = s.operation(id).unwrap();
    assert_eq!((row.state, row.attempts), (OperationState::Succeeded, 1));
    assert_eq!(
        f.stats.registrations.load(Ordering::Relaxed),
        1,
        "no re-registration was needed"
    );
    assert!(f.stats.updates.load(Ordering::Relaxed) >= 1);
    f.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    without_onboarding(dir.path());
    let f = fleet(&running, vec![device("sys-obs")]).await;
    let path: flownexus::lwm2m::ResourcePath = "/3304/0/5700".parse().unwrap();
    let obs = run_op(dir.path(), "sys-obs", OperationKind::Observe { path }).await;
    assert_eq!(obs.state, OperationState::Succeeded);
    running.flush().await;
    assert_eq!(store(dir.path()).observations().unwrap().len(), 1);
    let addr = running.coap_addr.unwrap();
    running.stop().await;

    let mut c = config(dir.path());
    c.coap.listen = addr;
    let running = app::start(c).await.unwrap();
    let restarted = now_ms();
    let s = store(dir.path());
    // The device kept notifying on its token; the new process accepts them.
    wait_for("notifications after the restart", Duration::from_secs(10), || {
        s.history_page("sys-obs", &path, (restarted, i64::MAX), None, 100)
            .unwrap()
            .0
            .len()
            >= 3
    })
    .await;
    f.stop().await;
    // De-registration ends the observation, in memory and in the store.
    wait_for("observation removed", Duration::from_secs(5), || {
        s.observations().unwrap().is_empty()
    })
    .await;
    running.stop().await;
}

/// The real binary, killed with SIGKILL while notified values wait in the
/// value journal: none is lost, and the next start moves each into the
/// history once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_in_the_journal_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |flush_age_s: &str| {
        let _ = std::fs::remove_file(dir.path().join("runtime.json"));
        Killed(
            serve_command(dir.path(), &[])
                .env("FLOWNEXUS_COAPS_ENABLED", "false")
                .env("FLOWNEXUS_FW_ENABLED", "false")
                .env("FLOWNEXUS_HTTP_ENABLED", "false")
                .env("FLOWNEXUS_STORE_HISTORY_FLUSH_AGE_S", flush_age_s)
                .env("FLOWNEXUS_LOG_LEVEL", "warn")
                .spawn()
                .unwrap(),
        )
    };
    let child = serve("3600");
    let coap = bound_when_up(dir.path(), "coap").await;
    let f = Fleet::spawn(vec![device("sys-kill")], coap, Arc::new(Models::embedded()), false)
        .await
        .unwrap();
    let s = store(dir.path());
    wait_for("the registration", Duration::from_secs(10), || {
        s.registration_of("sys-kill").unwrap().is_some()
    })
    .await;
    let path: flownexus::lwm2m::ResourcePath = "/3303/0/5700".parse().unwrap();
    let obs = run_op(dir.path(), "sys-kill", OperationKind::Observe { path }).await;
    assert_eq!(obs.state, OperationState::Succeeded);
    let history = |s: &Store| {
        s.history_page("sys-kill", &path, (0, i64::MAX), None, 500)
            .unwrap()
            .0
            .into_iter()
            .map(|(seq, v)| (seq, v.ts))
            .collect::<Vec<_>>()
    };
    wait_for("notified values", Duration::from_secs(15), || history(&s).len() >= 4).await;
    drop(child);
    f.stop().await;
    let before = history(&s);
    let rows = |s: &Store, table: &str| -> i64 {
        s.connection()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    // The Observe's first answer moves at once (as a Read's); the
    // notifications wait.
    assert!(rows(&s, "value_journal") >= 3, "notifications wait in the journal");

    // The next start moves them (a flush age of 0: with its first commit).
    let child = serve("0");
    wait_for("the journal moved into the history", Duration::from_secs(20), || {
        rows(&s, "value_journal") == 0
    })
    .await;
    let after = history(&s);
    drop(child);
    assert!(
        before.iter().all(|v| after.contains(v)),
        "every value seen before the kill is there after it"
    );
    let mut seqs: Vec<i64> = after.iter().map(|(seq, _)| *seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), after.len(), "each value once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queues_and_waits_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let f = fleet(&running, vec![device("sys-cli")]).await;
    let cli = |args: &[&str]| {
        let mut all = vec!["--data-dir".to_string(), dir.path().to_str().unwrap().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_flownexus"))
                .args(all)
                .output()
                .unwrap()
        })
    };
    let out = cli(&["device", "read", "sys-cli", "/3/0/3", "--wait", "--timeout", "10"])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sim-1.0.0"), "{stdout}");

    let list = cli(&["device", "list"]).await.unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text.lines().find(|l| l.starts_with("sys-cli")).unwrap_or_default();
    assert!(line.contains("online") && line.contains("sim-1.0.0"), "{text}");

    // A failing operation exits non-zero.
    let bad = cli(&["device", "write", "sys-cli", "/3/0/0", "x", "--wait", "--timeout", "10"])
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("4.05"));

    // The server's own probes, through its /healthz.
    let health = cli(&["healthcheck"]).await.unwrap();
    let report = String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success(), "{report}");
    for part in [
        "store: ok",
        "writer: ok",
        "lwm2m: ok",
        "coap: ok",
        "coaps: ok",
        "firmware: ok",
        "http: ok",
        "flownexus: ok",
    ] {
        assert!(report.lines().any(|l| l == part), "{part}: {report}");
    }
    f.stop().await;
    running.stop().await;
    // Stopped: nothing answers, and the check says so in its exit code.
    let health = cli(&["healthcheck"]).await.unwrap();
    let report = String::from_utf8_lossy(&health.stdout);
    assert!(!health.status.success(), "{report}");
    assert!(report.contains("http: down"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    for i in 0..2000 {
        let len = rng.usize(0..300);
        let mut d: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 2 == 0 && d.len() >= 4 {
            d[0] = 0x40 | (d[0] & 0x0F); // version 1, CON: gets past the first check
        }
        sock.send_to(&d, running.coap_addr.unwrap()).await.unwrap();
    }
    let f = fleet(&running, vec![device("sys-after-garbage")]).await;
    assert_eq!(f.stats.registered.load(Ordering::Relaxed), 1);
    f.stop().await;
    running.stop().await;
}

fn coap_client() -> &'static str {
    for c in [
        "coap-client-notls",
        "coap-client-openssl",
        "coap-client-gnutls",
        "coap-client",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("libcoap's coap-client is not installed (Debian package libcoap3-bin; `make test` installs it)");
}

fn libcoap(args: &[&str]) -> String {
    let out = Command::new(coap_client())
        .args(["-v", "6", "-B", "5"])
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_registers_updates_and_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let base = format!("coap://{}", running.coap_addr.unwrap());
    let reg_url = format!("{base}/rd?ep=libcoap-dev&lt=300&lwm2m=1.1&b=U");
    let out = tokio::task::spawn_blocking(move || {
        libcoap(&["-m", "post", "-t", "40", "-e", "</1/0>,</3/0>,</3303/0>", &reg_url])
    })
    .await
    .unwrap();
    assert!(out.contains("2.01"), "{out}");
    let location = out
        .split("Location-Path:")
        .nth(2)
        .map(|s| s.split([',', ' ', ']']).next().unwrap().trim().to_string())
        .unwrap_or_else(|| panic!("no second Location-Path in {out}"));
    running.flush().await;
    let regs = store(dir.path()).registrations().unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].id.to_string(), location);

    let upd = format!("{base}/rd/{location}?lt=600");
    let out = tokio::task::spawn_blocking(move || libcoap(&["-m", "post", &upd]))
        .await
        .unwrap();
    assert!(out.contains("2.04"), "{out}");
    let bogus = format!("{base}/rd/000000000000");
    let out = tokio::task::spawn_blocking(move || libcoap(&["-m", "post", &bogus]))
        .await
        .unwrap();
    assert!(out.contains("4.04"), "{out}");
    let del = format!("{base}/rd/{location}");
    let out = tokio::task::spawn_blocking(move || libcoap(&["-m", "delete", &del]))
        .await
        .unwrap();
    assert!(out.contains("2.02"), "{out}");
    running.flush().await;
    assert!(store(dir.path()).registrations().unwrap().is_empty());
    running.stop().await;
}

/// Each command's help lists its own options first and the six every
/// command takes under a heading of their own, not interleaved.
#[test]
fn command_help_puts_its_own_options_before_the_global_ones() {
    for args in [
        &["device", "add", "--help"][..],
        &["firmware", "add", "--help"],
        &["campaign", "create", "--help"],
        &["user", "add", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flownexus"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let (own, global) = help
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{args:?}: no global heading: {help}"));
        for flag in [
            "--config",
            "--data-dir",
            "--coap-listen",
            "--coaps-listen",
            "--http-listen",
            "--fw-listen",
        ] {
            assert!(
                global.contains(flag) && !own.contains(flag),
                "{args:?}: {flag} in {help}"
            );
        }
        assert!(own.contains("Options:") && own.contains("--help"), "{args:?}: {help}");
    }
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let bin = env!("CARGO_BIN_EXE_flownexus");
    let out = Command::new(bin)
        .env("FLOWNEXUS_COAP_BLOCK_SIZE", "1000")
        .args(["print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("coap.block_size"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[lwm2m]\nqueue_awake_window = 3\n").unwrap();
    let out = Command::new(bin)
        .args(["--config", file.to_str().unwrap(), "print-config"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("lwm2m.queue_awake_window"));
    // Issue 31: FLOWNEXUS_LOG is checked like a key; a file that is not
    // TOML is named as a file, not as a key.
    let out = Command::new(bin)
        .env("FLOWNEXUS_LOG", "verbose")
        .args(["print-config"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("FLOWNEXUS_LOG: `verbose` is not a log level"), "{said}");
    std::fs::write(&file, "[lwm2m\n").unwrap();
    let out = Command::new(bin)
        .args(["--config", file.to_str().unwrap(), "print-config"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("malformed configuration file") && said.contains("bad.toml"),
        "{said}"
    );
    assert!(!said.contains("config key"), "{said}");
    // Every problem at once, in words; print-config shows the merged rest
    // with each problem beside its key, and exits 2.
    std::fs::write(
        &file,
        "[coap]\nack_timout_ms = 5\nnstart = \"one\"\n[http]\nlisten = \"localhost:8000\"\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["--config", file.to_str().unwrap(), "print-config"])
        .output()
        .unwrap();
    let (text, said) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.starts_with("flownexus: 3 configuration problems:"), "{said}");
    assert!(said.contains("did you mean `coap.ack_timeout_ms`?"), "{said}");
    assert!(
        text.contains("\nnstart = 1  # ERROR: expected a whole number, 0 or more, got text \"one\""),
        "{text}"
    );
    assert!(text.contains("a host name such as localhost is not accepted"), "{text}");
    let ok = Command::new(bin)
        .args([
            "--data-dir",
            "/var/lib/fx",
            "--coap-listen",
            "127.0.0.1:9999",
            "print-config",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains("data_dir = \"/var/lib/fx\"") && text.contains("127.0.0.1:9999"),
        "{text}"
    );
}

/// Every file of tests/data/manifest.json decodes as its manifest says;
/// captured Register datagrams register through the server core.
#[test]
fn captured_bytes_decode() {
    use flownexus::coap::{Code, Exchanges, Message, Params};
    use flownexus::lwm2m::content;
    use flownexus::lwm2m::server::{Now, Server, ServerConfig};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let models = Arc::new(Models::embedded());
    let mut checked = 0;
    for entry in manifest.as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        match entry["kind"].as_str().unwrap() {
            "coap-register" => {
                let blocks = entry["blocks"].as_u64().unwrap_or(1) as usize;
                let files: Vec<Vec<u8>> = if blocks == 1 {
                    vec![std::fs::read(dir.join(file)).unwrap()]
                } else {
                    (0..blocks)
                        .map(|i| std::fs::read(dir.join(file.replace("{0..6}", &i.to_string()))).unwrap())
                        .collect()
                };
                let config = Config::default();
                let mut server: Server<u8> = Server::new(
                    Exchanges::new(Params::default(), 1),
                    ServerConfig::from_config(&config.lwm2m),
                    models.clone(),
                    2,
                );
                let now = Now {
                    mono: Instant::now(),
                    unix_ms: now_ms(),
                };
                for (i, bytes) in files.iter().enumerate() {
                    server.handle_datagram(now, 1, bytes);
                    let reply = Message::decode(&server.poll_transmit().unwrap().bytes).unwrap();
                    let want = if i + 1 < files.len() {
                        Code::CONTINUE
                    } else {
                        Code::CREATED
                    };
                    assert_eq!(Code(reply.code), want, "{file} block {i}");
                }
                let endpoint = entry["endpoint"].as_str().unwrap();
                let reg = server
                    .registration(endpoint)
                    .unwrap_or_else(|| panic!("{file}: {endpoint} not registered"));
                assert_eq!(reg.objects().len() as u64, entry["objects"].as_u64().unwrap(), "{file}");
            }
            "payload" => {
                let bytes = std::fs::read(dir.join(file)).unwrap();
                let format = entry["format"].as_u64().unwrap() as u16;
                let base = entry["base"].as_str().unwrap().parse().unwrap();
                let records = content::decode(format, &base, &bytes, &models).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(
                    records.len() as u64,
                    entry["count"].as_u64().unwrap(),
                    "{file}: {records:?}"
                );
                for (path, text) in entry["expect"].as_object().unwrap() {
                    let r = records
                        .iter()
                        .find(|r| r.path.to_string() == *path)
                        .unwrap_or_else(|| panic!("{file}: no {path}"));
                    assert_eq!(r.value.to_text(), text.as_str().unwrap(), "{file} {path}");
                }
            }
            k => panic!("unknown kind {k}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}

/// Tags from the CLI: given at `device add`, replaced by `device tag`,
/// stored trimmed and sorted; a bad list or an unknown device is an error
/// that names it and changes nothing.
#[test]
fn cli_tags_devices() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str]| flownexus_cli(&data, args, "");
    let tags = || store(dir.path()).device("urn:imei:7").unwrap().tags;
    // A data directory without a database: adding refuses (a command run
    // in the wrong directory must not start a new store) until --create.
    let (ok, _, err) = run(&["device", "add", "urn:imei:7", "--generate-psk"]);
    assert!(
        !ok && err.contains("no database at") && err.contains("--create"),
        "{err}"
    );
    assert!(!dir.path().join("flownexus.sqlite3").exists(), "nothing was created");
    let (ok, _, err) = run(&["--create", "device", "add", "urn:imei:7", "--tags", " west, pilot,west"]);
    assert!(ok, "{err}");
    assert_eq!(tags(), "pilot,west");
    let (ok, out, err) = run(&["device", "tag", "urn:imei:7", "north , east"]);
    assert!(ok && out.contains("east,north"), "{out} {err}");
    assert_eq!(tags(), "east,north");
    let long = "y".repeat(65);
    let (ok, _, err) = run(&["device", "tag", "urn:imei:7", &long]);
    assert!(!ok && err.contains("invalid tags"), "{err}");
    let (ok, _, err) = run(&["device", "tag", "urn:imei:404", "a"]);
    assert!(!ok && err.contains("urn:imei:404"), "{err}");
    assert_eq!(tags(), "east,north");
    let (ok, _, err) = run(&["device", "tag", "urn:imei:7", ""]);
    assert!(ok, "{err}");
    assert_eq!(tags(), "");
}

/// PSK provisioning through the CLI: a generated key is printed once and
/// never again (not by list or show); rotation replaces it; identities are
/// unique; a CSV import with any bad line adds nothing and names the lines.
#[test]
fn psk_provisioning_keeps_keys_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str]| flownexus_cli(&data, args, "");
    let (ok, out, err) = run(&[
        "--create",
        "device",
        "add",
        "urn:imei:1",
        "--psk-identity",
        "id-1",
        "--generate-psk",
    ]);
    assert!(ok, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("psk key (hex, shown once): "))
        .unwrap()
        .to_string();
    assert_eq!(key.len(), 32);
    // Stored sealed (issue 32): the row holds no clear key; the DTLS key
    // table opens the one shown.
    let s = store(dir.path());
    let stored: Vec<u8> = s
        .connection()
        .query_row("SELECT psk_key FROM devices WHERE endpoint = 'urn:imei:1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(flownexus::store::sealing::KeySeal::is_sealed(&stored));
    assert!(!flownexus::lwm2m::path::hex_bytes::encode(&stored).contains(&key));
    let opened = s.device_keys().unwrap();
    assert_eq!(flownexus::lwm2m::path::hex_bytes::encode(opened[0].1.key()), key);
    for args in [
        &["device", "list", "--json"][..],
        &["device", "list"],
        &["device", "show", "urn:imei:1"],
    ] {
        let (ok, out, _) = run(args);
        assert!(
            ok && out.contains("urn:imei:1") && !out.contains(&key),
            "{args:?} shows the key: {out}"
        );
    }
    assert!(
        run(&["device", "show", "urn:imei:1"]).1.contains("id-1"),
        "the identity is shown"
    );

    // Identities are unique; rotation gives a new key.
    let (ok, _, err) = run(&[
        "device",
        "add",
        "urn:imei:2",
        "--psk-identity",
        "id-1",
        "--psk-key-hex",
        "0011",
    ]);
    assert!(!ok && err.contains("id-1"), "{err}");
    let (ok, out, _) = run(&["device", "rotate-psk", "urn:imei:1", "--generate-psk"]);
    let rotated = out
        .lines()
        .find_map(|l| l.strip_prefix("psk key (hex, shown once): "))
        .unwrap();
    assert!(ok && rotated != key);
    assert!(out.contains("psk identity: id-1"), "rotation keeps the identity: {out}");
    assert!(!run(&["device", "rotate-psk", "urn:imei:404", "--generate-psk"]).0);

    // Factory import: all or nothing, every bad line reported.
    let csv = dir.path().join("factory.csv");
    std::fs::write(
        &csv,
        "endpoint,identity,key\nurn:imei:10,id-10,00112233\nurn:imei:11,id-11\nurn:imei:12,id-1,0011\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert!(
        !ok && err.contains("line 3") && err.contains("nothing imported"),
        "{err}"
    );
    std::fs::write(&csv, "urn:imei:10,id-10,00112233\nurn:imei:12,id-1,0011\n").unwrap();
    let (ok, _, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert!(
        !ok && err.contains("line 2") && err.contains("id-1"),
        "clash with the store: {err}"
    );
    assert!(
        !run(&["device", "list"]).1.contains("urn:imei:10"),
        "nothing half-imported"
    );
    std::fs::write(&csv, "urn:imei:10,id-10,00112233\nurn:imei:12,id-12,0011\n").unwrap();
    let (ok, out, err) = run(&["device", "import", csv.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2"), "{err}");
}

/// `flownexus user …` through the real binary, passwords on stdin: no
/// default user, argon2id hashes only, clear errors, nothing half-done.
#[test]
fn users_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str], stdin: &str| flownexus_cli(&data, args, stdin);
    // Nothing is created by listing or adding in a directory without a
    // database; --create starts one.
    let (ok, _, err) = run(&["user", "list"], "");
    assert!(!ok && err.contains("no database at"), "{err}");
    let (ok, _, err) = run(&["user", "add", "alice", "--role", "admin"], "a long enough password\n");
    assert!(!ok && err.contains("--create to start a new one"), "{err}");
    assert!(!dir.path().join("flownexus.sqlite3").exists());

    let (ok, _, err) = run(&["--create", "user", "add", "alice", "--role", "admin"], "short\n");
    assert!(!ok && err.contains("at least 12 characters"), "{err}");
    let (ok, _, err) = run(
        &["user", "add", "<script>", "--role", "admin"],
        "a long enough password\n",
    );
    assert!(!ok && err.contains("user name"), "{err}");
    let (ok, _, err) = run(&["user", "add", "alice", "--role", "root"], "a long enough password\n");
    assert!(!ok && err.contains("role"), "{err}");
    assert!(
        store(dir.path()).users().unwrap().is_empty(),
        "nothing stored by failures"
    );

    let (ok, out, err) = run(&["user", "add", "alice", "--role", "admin"], "a long enough password\n");
    assert!(ok, "{err}");
    assert!(out.contains("added alice (admin)"), "{out}");
    let (ok, _, err) = run(&["user", "add", "alice", "--role", "viewer"], "another long password\n");
    assert!(!ok && err.contains("already exists"), "{err}");

    let (user, hash) = store(dir.path()).user_credentials("alice").unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(flownexus::users::verify_password("a long enough password", &hash));
    assert_eq!((user.role, user.disabled), (flownexus::users::Role::Admin, false));

    assert!(run(&["user", "set-role", "alice", "operator"], "").0);
    assert!(run(&["user", "disable", "alice"], "").0);
    let (_, out, _) = run(&["user", "list", "--json"], "");
    assert!(!out.contains("argon2"), "listing never shows a hash: {out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["role"], "operator");
    assert_eq!(listed[0]["disabled"], true);

    assert!(run(&["user", "passwd", "alice"], "a different password\n").0);
    let (_, hash) = store(dir.path()).user_credentials("alice").unwrap().unwrap();
    assert!(flownexus::users::verify_password("a different password", &hash));
    assert!(!flownexus::users::verify_password("a long enough password", &hash));
    let (ok, _, err) = run(&["user", "disable", "bob"], "");
    assert!(!ok && err.contains("not found"), "{err}");
}
