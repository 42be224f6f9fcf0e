//! CoAP over DTLS with per-device PSKs, seen from real peers: Debian's
//! libcoap clients (OpenSSL and GnuTLS builds), the simulator's Rust DTLS
//! client (itself checked against libcoap's OpenSSL server), a ClientHello
//! flood with stalled handshakes, and a NAT rebinding in the middle of a
//! queue-mode session.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flownexus::app;
use flownexus::dtls::record::client_hello;
use flownexus::lwm2m::Models;
use flownexus::lwm2m::operation::{OperationKind, OperationState};
use flownexus::psk::Psk;
use flownexus::sim::{DeviceConfig, Fleet};
use flownexus::store::tags::Tags;
use tokio::net::UdpSocket;

use super::{config, device, fleet_at, queue_read_and_see_it_held, run_op, store, wait_for};

/// libcoap 4.3's `-k` takes the key as text: these are the bytes of
/// "0123456789abcdef".
const KEY_TEXT: &str = "0123456789abcdef";
const KEY_HEX: &str = "30313233343536373839616263646566";

fn provision(dir: &Path, endpoint: &str, identity: &str, key_hex: &str) -> Psk {
    let psk = Psk::from_hex(identity, key_hex).unwrap();
    store(dir).add_device(endpoint, Some(&psk), &Tags::default()).unwrap();
    psk
}

/// Run a libcoap client build; stdout and stderr together.
fn libcoap(client: &str, args: Vec<String>) -> String {
    let out = Command::new(client)
        .args(["-v", "6", "-B", "4"])
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("{client}: {e} (Debian libcoap3-bin; `make test` installs it)"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn register(client: &'static str, coaps: SocketAddr, identity: &str, key: &str, endpoint: &str) -> String {
    let args = vec![
        "-m".into(),
        "post".into(),
        "-u".into(),
        identity.into(),
        "-k".into(),
        key.into(),
        "-e".into(),
        "</1/0>,</3/0>".into(),
        format!("coaps://{coaps}/rd?ep={endpoint}&lt=300&lwm2m=1.1"),
    ];
    tokio::task::spawn_blocking(move || libcoap(client, args))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_clients_register_over_dtls_with_ccm_8() {
    let dir = tempfile::tempdir().unwrap();
    for (i, _) in ["openssl", "gnutls"].iter().enumerate() {
        provision(dir.path(), &format!("urn:dev:{i}"), &format!("id-{i}"), KEY_HEX);
    }
    provision(
        dir.path(),
        "urn:dev:other",
        "id-other",
        "ffeeddccbbaa99887766554433221100",
    );
    let mut c = config(dir.path());
    // Only the suite the nRF9160 modem offers: a handshake that completes
    // proves it.
    c.coaps.cipher_suites = vec!["TLS_PSK_WITH_AES_128_CCM_8".into()];
    let running = app::start(c).await.unwrap();
    let coaps = running.coaps_addr.unwrap();

    for (i, client) in ["coap-client-openssl", "coap-client-gnutls"].into_iter().enumerate() {
        let (id, ep) = (format!("id-{i}"), format!("urn:dev:{i}"));
        let out = register(client, coaps, &id, KEY_TEXT, &ep).await;
        assert!(out.contains("2.01"), "{client}: {out}");
        // The identity is bound to its endpoint: registering another is 4.03.
        let out = register(client, coaps, &id, KEY_TEXT, "urn:dev:other").await;
        assert!(out.contains("4.03"), "{client}: {out}");
        assert!(out.contains("belongs to"), "{client}: {out}");
        // A wrong key and an unknown identity fail the handshake alike.
        for (id, key) in [(id.as_str(), "wrongwrongwrong!"), ("nobody", KEY_TEXT)] {
            let out = register(client, coaps, id, key, &ep).await;
            assert!(!out.contains("2.01") && !out.contains("4.03"), "{client} {id}: {out}");
            assert!(
                out.to_lowercase().contains("alert") || out.contains("failed"),
                "{client} {id}: {out}"
            );
        }
    }
    running.flush().await;
    // Issue 31: each provisioned device's wrong key left an event naming
    // it; the stranger's identity none.
    let s = store(dir.path());
    for ep in ["urn:dev:0", "urn:dev:1"] {
        let refused = s
            .events(Some(ep), 50)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "rejected" && e.detail.to_string().contains("key does not match"))
            .count();
        assert_eq!(refused, 1, "{ep}");
    }
    assert!(
        !s.events(None, 200)
            .unwrap()
            .iter()
            .any(|e| e.detail.to_string().contains("nobody"))
    );
    let regs = store(dir.path()).registrations().unwrap();
    let mut eps: Vec<_> = regs
        .iter()
        .map(|r| (r.endpoint.clone(), r.peer.starts_with("coaps://")))
        .collect();
    eps.sort();
    assert_eq!(eps, vec![("urn:dev:0".into(), true), ("urn:dev:1".into(), true)]);

    // A keyed endpoint may not use plain CoAP: anyone could claim it there.
    let plain = format!("coap://{}/rd?ep=urn:dev:0&lt=300", running.coap_addr.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        libcoap(
            "coap-client-notls",
            vec!["-m".into(), "post".into(), "-e".into(), "</1/0>".into(), plain],
        )
    })
    .await
    .unwrap();
    assert!(out.contains("4.03") && out.contains("must use CoAP over DTLS"), "{out}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_while_running_are_used_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path())).await.unwrap();
    let coaps = running.coaps_addr.unwrap();
    let out = register("coap-client-openssl", coaps, "late", KEY_TEXT, "urn:late").await;
    assert!(!out.contains("2.01"), "no key yet: {out}");
    // As `flownexus device add` in another process would.
    provision(dir.path(), "urn:late", "late", KEY_HEX);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let out = register("coap-client-openssl", coaps, "late", KEY_TEXT, "urn:late").await;
        if out.contains("2.01") {
            break;
        }
        assert!(Instant::now() < until, "the new key was not picked up: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
}

fn secure_device(dir: &Path, name: &str) -> DeviceConfig {
    let mut d = device(name);
    d.psk = Some(provision(dir, name, name, "00112233445566778899aabbccddeeff"));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_work_over_dtls_with_plain_coap_off() {
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<_> = (0..5).map(|i| secure_device(dir.path(), &format!("sec-{i}"))).collect();
    let mut c = config(dir.path());
    c.coap.enabled = false;
    let running = app::start(c).await.unwrap();
    assert!(running.coap_addr.is_none());
    let fleet = fleet_at(&running, running.coaps_addr.unwrap(), devices).await;
    let stats = fleet.stats.clone();
    assert_eq!(stats.handshakes.load(Ordering::Relaxed), 5);
    let row = run_op(
        dir.path(),
        "sec-3",
        OperationKind::Read {
            path: "/3/0/0".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(row.state, OperationState::Succeeded, "{row:?}");
    fleet.stop().await;
    running.stop().await;
}

/// Thousands of ClientHellos from spoofed-looking ports, and clients that
/// return the cookie and then stall, while real devices handshake and
/// register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_does_not_lock_out_devices() {
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<_> = (0..10)
        .map(|i| secure_device(dir.path(), &format!("flood-{i}")))
        .collect();
    let mut c = config(dir.path());
    c.coaps.max_handshakes = 64;
    // No per-source limit: every stalled handshake reaches the table, so
    // the cap and its eviction of the oldest are what protect the devices.
    c.coaps.hellos_per_source_per_s = 0;
    let running = app::start(c).await.unwrap();
    let coaps = running.coaps_addr.unwrap();

    let hello = {
        // A real client's ClientHello, captured from the simulator's client.
        let cfg = flownexus::dtls::client::client_config("x", b"k", &flownexus::dtls::CIPHER_SUITES).unwrap();
        let mut c = flownexus::dtls::client::Client::connect(Instant::now(), coaps, cfg).unwrap();
        c.poll_transmit().unwrap()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for a in 0..4u8 {
        let stop = stop.clone();
        let hello = hello.clone();
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut sockets = Vec::new();
            for _ in 0..64 {
                // Loopback addresses other than the devices' 127.0.0.1.
                let s = UdpSocket::bind(SocketAddr::from(([127, 0, 1, 1 + a], 0)))
                    .await
                    .unwrap();
                sockets.push(s);
            }
            let mut buf = [0u8; 512];
            // At least 5,000 each, and on until the devices are in.
            while sent < 5000 || !stop.load(Ordering::Relaxed) {
                for s in &sockets {
                    let _ = s.send_to(&hello, coaps).await;
                    sent += 1;
                    // Half of them stall after returning the cookie.
                    if sent.is_multiple_of(2)
                        && let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.recv(&mut buf)).await
                        && n > 20
                    {
                        // The HelloVerifyRequest ends with the cookie.
                        let _ = s.send_to(&with_cookie(&hello, &buf[n - 20..n]), coaps).await;
                    }
                }
                tokio::task::yield_now().await;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let fleet = Fleet::spawn(devices, coaps, Arc::new(Models::embedded()), false)
        .await
        .unwrap();
    let stats = fleet.stats.clone();
    wait_for("registrations during the flood", Duration::from_secs(30), || {
        stats.registered.load(Ordering::Relaxed) == 10
    })
    .await;
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for a in attackers {
        sent += a.await.unwrap();
    }
    eprintln!("10 devices registered over DTLS in {took:?} during a flood of {sent} ClientHellos");
    fleet.stop().await;
    running.stop().await;
}

/// `hello` (a ClientHello record with an empty cookie) with `cookie` in it.
fn with_cookie(hello: &[u8], cookie: &[u8]) -> Vec<u8> {
    let h = client_hello(hello).unwrap();
    assert!(h.cookie.is_empty());
    // Record header 13, handshake header 12, then version, random,
    // session id (length-prefixed), the cookie length byte.
    let cookie_len_at = 13 + 12 + 34 + 1 + hello[13 + 12 + 34] as usize;
    let mut out = hello[..cookie_len_at].to_vec();
    out.push(cookie.len() as u8);
    out.extend_from_slice(cookie);
    out.extend_from_slice(&hello[cookie_len_at + 1..]);
    let grow = |at: usize, width: usize, out: &mut Vec<u8>| {
        let mut v = 0usize;
        for b in &out[at..at + width] {
            v = v << 8 | *b as usize;
        }
        v += cookie.len();
        for i in 0..width {
            out[at + width - 1 - i] = (v >> (8 * i)) as u8;
        }
    };
    grow(11, 2, &mut out); // record length
    grow(13 + 1, 3, &mut out); // handshake length
    grow(13 + 9, 3, &mut out); // fragment length
    // Record sequence 1, message_seq 1, as a client's second ClientHello.
    out[10] = 1;
    out[13 + 5] = 1;
    assert_eq!(client_hello(&out).unwrap().cookie, cookie);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_re_handshakes_and_the_queued_operation_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = secure_device(dir.path(), "rebinder");
    d.queue_mode = true;
    d.awake_window = Duration::from_secs(5);
    let running = app::start(config(dir.path())).await.unwrap();
    // The device must sleep: no onboarding observation to keep it awake.
    super::without_onboarding(dir.path());
    let fleet = fleet_at(&running, running.coaps_addr.unwrap(), vec![d]).await;
    let stats = fleet.stats.clone();
    let first_peer = store(dir.path()).registrations().unwrap()[0].peer.clone();
    // The server's awake window (3 s in tests) passes: the device sleeps.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let s = store(dir.path());
    let id = queue_read_and_see_it_held(&s, "rebinder", "/3/0/0").await;
    let served_before = stats.requests_served.load(Ordering::Relaxed);

    fleet.rebind(0);
    wait_for("the operation after the rebinding", Duration::from_secs(10), || {
        s.operation(id).unwrap().state.is_final()
    })
    .await;
    let row = s.operation(id).unwrap();
    assert_eq!(row.state, OperationState::Succeeded, "{row:?}");
    assert_eq!(row.attempts, 1, "{row:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stats.requests_served.load(Ordering::Relaxed) - served_before,
        1,
        "delivered once"
    );
    assert_eq!(stats.handshakes.load(Ordering::Relaxed), 2);
    running.flush().await;
    let reg = &store(dir.path()).registrations().unwrap()[0];
    assert!(
        reg.peer.starts_with("coaps://") && reg.peer != first_peer,
        "{} → {}",
        first_peer,
        reg.peer
    );
    fleet.stop().await;
    running.stop().await;
}

/// Sessions do not survive a restart, registrations and queued operations
/// do: an operation for an always-online (binding U) device waits for the
/// device's next session instead of being sent into the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_operations_wait_for_the_devices_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = secure_device(dir.path(), "restarted");
    d.update_interval = Duration::from_secs(2);
    d.params.max_retransmit = 1;
    let running = app::start(config(dir.path())).await.unwrap();
    let coaps = running.coaps_addr.unwrap();
    let fleet = fleet_at(&running, coaps, vec![d]).await;
    running.stop().await;

    let mut c = config(dir.path());
    c.coaps.listen = coaps;
    c.coaps.shards = 1;
    let running = app::start(c).await.unwrap();
    // Held, not sent into the dead session: it would fail its attempts there.
    let s = store(dir.path());
    let id = queue_read_and_see_it_held(&s, "restarted", "/3/0/0").await;
    // The device's Update times out in the dead session; it handshakes
    // again, updates, and the read goes out once, over the new session.
    wait_for("the read after the restart", Duration::from_secs(20), || {
        s.operation(id).unwrap().state.is_final()
    })
    .await;
    let row = s.operation(id).unwrap();
    assert_eq!((row.state, row.attempts), (OperationState::Succeeded, 1), "{row:?}");
    assert_eq!(fleet.stats.handshakes.load(Ordering::Relaxed), 2);
    assert_eq!(
        fleet.stats.registrations.load(Ordering::Relaxed),
        1,
        "no re-registration"
    );
    fleet.stop().await;
    running.stop().await;
}

/// The simulator's and benchmarks' own DTLS client against another
/// implementation, OpenSSL in libcoap's `coap-server-openssl`: a handshake
/// in each suite we offer, a confirmable GET answered 2.05 with libcoap's
/// resource list, and close_notify.
#[tokio::test]
async fn our_dtls_client_interoperates_with_libcoap_openssl_server() {
    use flownexus::bench::dtls::{handshake, libcoap_server};
    use flownexus::coap::{Message, Method, Request, Type};
    use flownexus::dtls::client::client_config;

    let (mut server, target) = libcoap_server(KEY_TEXT).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(target).await.unwrap();
    for suite in flownexus::dtls::CIPHER_SUITES {
        let cfg = client_config("anyone", KEY_TEXT.as_bytes(), &[suite]).unwrap();
        let mut c = handshake(&sock, target, cfg)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{suite}: no handshake with OpenSSL"));
        let get = Message::request(
            Type::Con,
            0x1234,
            vec![7],
            &Request::new(Method::Get, "/.well-known/core"),
        );
        assert!(c.send(Instant::now(), &get.encode()));
        while let Some(d) = c.poll_transmit() {
            sock.send(&d).await.unwrap();
        }
        let mut buf = [0u8; 2048];
        let answer = loop {
            let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{suite}: no answer"))
                .unwrap();
            c.handle_datagram(Instant::now(), &buf[..n]);
            if let Some(m) = c.poll_received() {
                break Message::decode(&m).unwrap();
            }
        };
        assert_eq!((answer.message_id, answer.code), (0x1234, 0x45), "{suite}: 2.05");
        assert!(String::from_utf8_lossy(&answer.payload).contains("</>"), "{suite}");
        c.close(Instant::now());
        while let Some(d) = c.poll_transmit() {
            sock.send(&d).await.unwrap();
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Issue 31: `flownexus sim` with the wrong key counts the refused
/// handshakes, says what to check and exits non-zero; with the right key
/// the same devices register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_counts_handshakes_a_wrong_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        provision(dir.path(), &format!("urn:sim:{i}"), &format!("urn:sim:{i}"), KEY_HEX);
    }
    let running = app::start(config(dir.path())).await.unwrap();
    let coaps = running.coaps_addr.unwrap().to_string();
    let sim = |key: &'static str| {
        let coaps = coaps.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_flownexus"))
                .args(["sim", "--server", &coaps, "--count", "2", "--duration-s", "6"])
                .args(["--psk-key-hex", key])
                .output()
                .unwrap()
        })
    };
    let out = sim("ffeeddccbbaa99887766554433221100").await.unwrap();
    let (ok, said) = super::outcome(&out);
    assert!(!ok, "{said}");
    assert!(
        said.contains("no device registered") && said.contains("check the PSK"),
        "{said}"
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let failed: u64 = last
        .rsplit("failed ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert!(failed >= 2 && last.contains("registrations 0"), "{last}");

    let out = sim(KEY_HEX).await.unwrap();
    let (ok, said) = super::outcome(&out);
    assert!(ok, "{said}");
    assert!(
        said.contains("registrations 2") && said.contains("DTLS handshakes 2 failed 0"),
        "{said}"
    );
    running.stop().await;
}
