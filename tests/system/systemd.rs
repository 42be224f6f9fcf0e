//! What systemd and a load balancer see: the real binary under a
//! `NOTIFY_SOCKET` this test owns (sd_notify(3): `READY=1` once every
//! listener answers, `STATUS=` lines, `WATCHDOG=1` under `WATCHDOG_USEC`,
//! `STOPPING=1` on SIGTERM), and the health endpoints.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flownexus::shell::health as probes;
use flownexus::users::Role;

use super::web::{Keys, http, start};

/// Every datagram the service sent, in order, until `until` says stop or
/// `timeout` passes.
fn receive(sock: &UnixDatagram, timeout: Duration, mut until: impl FnMut(&str) -> bool) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let stop = until(&text);
        got.push(text);
        if stop {
            break;
        }
    }
    got
}

fn bound(dir: &Path, key: &str) -> std::net::SocketAddr {
    super::bound(dir, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_it_is_ready_well_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let data = dir.path().join("data");
    let mut child = super::Killed(
        super::serve_command(&data, &[])
            .env("NOTIFY_SOCKET", &socket_path)
            // One second: probes every 250 ms, pings every 500 ms.
            .env("WATCHDOG_USEC", "1000000")
            .env("FLOWNEXUS_LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    );
    // sd_notify(3) messages are newline-separated assignments.
    let has = |m: &str, line: &str| m.lines().any(|l| l == line);
    let sock = tokio::task::spawn_blocking(move || {
        let before = receive(&sock, Duration::from_secs(60), |m| m.lines().any(|l| l == "READY=1"));
        (sock, before)
    });
    let (sock, before) = sock.await.unwrap();
    assert!(before.iter().any(|m| has(m, "READY=1")), "{before:?}");

    // Ready means every listener answers now (and the store is migrated).
    let schema = flownexus::store::Store::open(&data.join("flownexus.sqlite3"))
        .unwrap()
        .schema_version()
        .unwrap();
    assert!(schema >= 16, "schema {schema}");
    probes::coap_ping(bound(&data, "coap")).await.unwrap();
    probes::dtls_hello(bound(&data, "coaps")).await.unwrap();
    probes::tls_hello(bound(&data, "fw"), false).await.unwrap();
    let (code, body) = probes::get_healthz(bound(&data, "http")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let summary: flownexus::health::Summary = serde_json::from_str(&body).unwrap();
    assert_eq!(summary.status, flownexus::health::Status::Ok, "{body}");
    let names: Vec<&str> = summary.components.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["coap", "coaps", "firmware", "http", "lwm2m", "store", "writer"],
        "{body}"
    );
    assert!(!body.contains("detail"), "status names only: {body}");

    // Then STATUS= with the fleet's figures and watchdog pings.
    let (sock, after) = tokio::task::spawn_blocking(move || {
        let mut pings = 0;
        let got = receive(&sock, Duration::from_secs(20), |m| {
            pings += m.lines().filter(|l| *l == "WATCHDOG=1").count();
            pings >= 3
        });
        (sock, got)
    })
    .await
    .unwrap();
    let all: Vec<&str> = before.iter().chain(&after).flat_map(|m| m.lines()).collect();
    assert!(all.iter().filter(|l| **l == "WATCHDOG=1").count() >= 3, "{all:?}");
    assert!(
        all.contains(&"STATUS=0 devices, 0 registered, 0 firmware updates active; all components ok"),
        "{all:?}"
    );

    // SIGTERM: STOPPING=1, a clean exit, and no runtime file left behind.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let stopping = tokio::task::spawn_blocking(move || {
        receive(&sock, Duration::from_secs(60), |m| m.lines().any(|l| l == "STOPPING=1"))
    })
    .await
    .unwrap();
    assert!(stopping.iter().any(|m| has(m, "STOPPING=1")), "{stopping:?}");
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "still running 60 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!data.join("runtime.json").exists());
}

/// `/healthz` for anyone (names and statuses), `/api/v1/health` with
/// what each probe saw for signed-in users only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_give_names_to_anyone_and_details_to_users() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let r = http(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok", "{}", r.text());
    assert_eq!(r.json()["components"]["coap"], "ok", "{}", r.text());

    let anonymous = http(addr, "GET", "/api/v1/health", &[], b"").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let token = Keys::new(dir.path()).token("viewer", Role::Viewer);
    let bearer = format!("Bearer {token}");
    let r = http(
        addr,
        "GET",
        "/api/v1/health",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["status"], "ok", "{report}");
    let detail = |name: &str| {
        report["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert!(detail("coap").contains("answered a CoAP ping"), "{report}");
    assert!(detail("coaps").contains("HelloVerifyRequest"), "{report}");
    assert!(detail("firmware").contains("presented its certificate"), "{report}");
    assert!(detail("lwm2m").contains("command queue"), "{report}");
    assert!(detail("store").contains("schema"), "{report}");
    running.stop().await;
}

/// `systemd-analyze verify` on the bare-metal unit (with ExecStart at the
/// binary this build made): no error and no warning, since systemd only
/// warns about an unknown key. A misspelled copy shows the check can fail.
#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/flownexus.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/flownexus serve"));
    let unit = unit.replace("/usr/local/bin/flownexus", env!("CARGO_BIN_EXE_flownexus"));
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/flownexus",
        "PrivateTmp=true",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key}");
    }
    // No capability: every default port is above 1024.
    assert!(unit.lines().any(|l| l == "AmbientCapabilities="));
    let verify = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        systemd_analyze_verify(&path)
    };
    let (ok, said) = verify("flownexus.service", &unit);
    assert!(ok && said.trim().is_empty(), "{said}");
    let (_, said) = verify("misspelled.service", &unit.replace("ProtectSystem=", "ProtectSystm="));
    assert!(said.contains("Unknown key 'ProtectSystm'"), "{said}");
}

/// `systemd-analyze verify` of the unit at `path`: whether it passed, and
/// everything it said (systemd only warns about an unknown key).
pub(crate) fn systemd_analyze_verify(path: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e} (Debian systemd; `make test` installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One native-protocol journal entry's fields (systemd's "Native Journal
/// Protocol": `NAME=value\n`, or `NAME\n` + 64-bit LE length + value + `\n`).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            d = d.get(nl + 1..).unwrap_or_default();
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            out.push((name, String::from_utf8_lossy(value).into_owned()));
            d = d.get(nl + 9 + len + 1..).unwrap_or_default();
        }
    }
    out
}

/// The real binary logging to a journal socket this test owns: a device's
/// registration and an operation on it carry `ENDPOINT=`, `PEER=` and
/// `OPERATION_ID=`, as `journalctl ENDPOINT=…` needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lines_reach_the_journal_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("journal.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    // Read from the start, as journald does: the kernel queues only a few
    // datagrams per socket (net.unix.max_dgram_qlen) and the server drops
    // lines rather than wait.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<(String, String)>>::new()));
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (received, reading) = (received.clone(), reading.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    received.lock().unwrap().push(journal_fields(&buf[..n]));
                }
            }
        })
    };
    let data = dir.path().join("data");
    let _child = super::Killed(
        super::serve_command(&data, &[])
            .env("FLOWNEXUS_COAPS_ENABLED", "false")
            .env("FLOWNEXUS_FW_ENABLED", "false")
            .env("FLOWNEXUS_HTTP_ENABLED", "false")
            .env("FLOWNEXUS_METRICS_ENABLED", "false")
            .env("FLOWNEXUS_LOG_TARGET", "journal")
            .env("FLOWNEXUS_LOG_JOURNAL_SOCKET", &socket_path)
            .env("FLOWNEXUS_LOG_LEVEL", "info")
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while !data.join("runtime.json").exists() {
        assert!(Instant::now() < until, "the server never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fleet = flownexus::sim::Fleet::spawn(
        vec![super::device("journal-1")],
        bound(&data, "coap"),
        std::sync::Arc::new(flownexus::lwm2m::Models::embedded()),
        false,
    )
    .await
    .unwrap();
    let store = flownexus::store::Store::open(&data.join("flownexus.sqlite3")).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while store.registration_of("journal-1").unwrap().is_none() {
        assert!(Instant::now() < until, "no registration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let op = super::run_op(
        &data,
        "journal-1",
        flownexus::lwm2m::operation::OperationKind::Read {
            path: "/3/0/0".parse().unwrap(),
        },
    )
    .await;
    let want_op = format!("operation {} on journal-1", op.id);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = received
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.iter().any(|(k, v)| k == "MESSAGE" && v.starts_with(&want_op)));
        if seen || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let entries = received.lock().unwrap().clone();
    let op_id = op.id;
    let field = |e: &[(String, String)], name: &str| e.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let registered = entries
        .iter()
        .find(|e| field(e, "MESSAGE").is_some_and(|m| m.starts_with("registered journal-1")))
        .unwrap_or_else(|| panic!("no registration line: {entries:?}"));
    assert_eq!(field(registered, "ENDPOINT").as_deref(), Some("journal-1"));
    assert!(
        field(registered, "PEER").is_some_and(|p| p.contains("127.0.0.1")),
        "{registered:?}"
    );
    assert_eq!(field(registered, "PRIORITY").as_deref(), Some("6"));
    assert_eq!(field(registered, "SYSLOG_IDENTIFIER").as_deref(), Some("flownexus"));
    let operation = entries
        .iter()
        .find(|e| field(e, "OPERATION_ID").as_deref() == Some(op_id.to_string().as_str()))
        .unwrap_or_else(|| panic!("no operation line: {entries:?}"));
    assert_eq!(field(operation, "ENDPOINT").as_deref(), Some("journal-1"));
    fleet.stop().await;
}

/// Sockets handed over by systemd's socket activation protocol
/// (sd_listen_fds(3)) are used as they are, and a hand-over the server
/// cannot use fails at start, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_sockets_handed_over_and_refuses_wrong_ones() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let http_socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // The kernel's receive buffer of one socket, seen through either
    // descriptor: the server sizes a handed-over socket as one it binds.
    let receive_buffer = |s: &std::net::UdpSocket| {
        use std::os::fd::AsRawFd;
        let (mut size, mut len) = (0 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
        // SAFETY: getsockopt on a socket we own, into a local int.
        let ok = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(ok, 0);
        size as usize
    };
    let buffer = 1 << 20;
    assert!(receive_buffer(&coap) < buffer, "the default is smaller");
    let child = super::Killed(
        super::serve_command(&data, &[("coap", coap.as_raw_fd()), ("http", http_socket.as_raw_fd())])
            .env("FLOWNEXUS_COAPS_ENABLED", "false")
            .env("FLOWNEXUS_FW_ENABLED", "false")
            .env("FLOWNEXUS_COAP_SOCKET_BUFFER_BYTES", buffer.to_string())
            .env("FLOWNEXUS_LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    );
    assert_eq!(super::bound_when_up(&data, "coap").await, coap.local_addr().unwrap());
    // Root (CI) passes net.core.rmem_max; anyone else is capped at it.
    let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(buffer);
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    let want = if root { buffer } else { buffer.min(cap) };
    assert!(
        receive_buffer(&coap) >= want,
        "the handed-over socket's buffer was sized"
    );
    assert_eq!(bound(&data, "http"), http_socket.local_addr().unwrap());
    probes::coap_ping(coap.local_addr().unwrap()).await.unwrap();
    let (code, _) = probes::get_healthz(http_socket.local_addr().unwrap()).await.unwrap();
    assert_eq!(code, 200);
    drop(child);

    // What is wrong, the sockets handed over, what the error says.
    type Case<'a> = (&'a str, &'a [(&'a str, i32)], &'a str);
    let wrong: [Case; 3] = [
        (
            "a name no listener has",
            &[("dns", coap.as_raw_fd())],
            "`dns` is no listener",
        ),
        (
            "a TCP socket for CoAP",
            &[("coap", http_socket.as_raw_fd())],
            "not SOCK_DGRAM",
        ),
        (
            "a socket for a disabled listener",
            &[("fw", http_socket.as_raw_fd())],
            "fw.enabled = false",
        ),
    ];
    for (what, handed, says) in wrong {
        let out = super::serve_command(&dir.path().join("wrong"), handed)
            .env("FLOWNEXUS_COAPS_ENABLED", "false")
            .env("FLOWNEXUS_FW_ENABLED", "false")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: started");
        assert!(err.contains("LISTEN_FD") && err.contains(says), "{what}: {err}");
    }
}
