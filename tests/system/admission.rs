//! One host floods the registration interface with invented endpoint
//! names while real (provisioned) devices from the same address keep
//! registering and answering: the device table grows by at most the
//! per-source bound, the flood is told when to come back (4.29 with
//! Max-Age, RFC 8516), and the metrics count it.

use std::time::{Duration, Instant};

use flownexus::coap::{Code, Message, Method, Request, Type};
use flownexus::config::{Config, Mode, UnknownEndpoints};
use flownexus::lwm2m::operation::{OperationKind, OperationState};
use flownexus::store::tags::Tags;

use super::{config, device, fleet, run_op, store, web::http};

const FLOOD: u16 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invented_endpoints_fills_no_table_and_real_devices_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // An operator who turned `accept` on in production keeps production's
    // per-source bounds.
    let production = Config::defaults(Mode::Production).lwm2m;
    c.lwm2m.unknown_endpoints = UnknownEndpoints::Accept;
    c.lwm2m.unprovisioned_per_source = production.unprovisioned_per_source;
    c.lwm2m.unprovisioned_per_source_per_min = production.unprovisioned_per_source_per_min;
    let running = flownexus::app::start(c).await.unwrap();
    let coap = running.coap_addr.unwrap();
    let real: Vec<String> = (0..20).map(|i| format!("urn:imei:35000000000{i:04}")).collect();
    {
        let s = store(dir.path());
        for ep in &real {
            s.add_device(ep, None, &Tags::default()).unwrap();
        }
    }
    // The server reads new device rows within its poll.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let devices_before = store(dir.path()).endpoints().unwrap().len();

    // The flood: one socket on the same address as the real devices,
    // 10,000 Registers of distinct invented names over about five seconds.
    let flood = tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(coap).await.unwrap();
        let mut answers: Vec<Message> = Vec::new();
        let mut buf = vec![0u8; 2048];
        for i in 0..FLOOD {
            let mut req = Request::new(Method::Post, "/rd");
            req.options.uri_query = vec![format!("ep=invented-{i}"), "lt=300".into()];
            req.options.content_format = Some(40);
            req.payload = b"</3/0>".to_vec();
            let bytes = Message::request(Type::Con, i, i.to_be_bytes().to_vec(), &req).encode();
            sock.send(&bytes).await.unwrap();
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while let Ok(n) = sock.try_recv(&mut buf) {
                answers.extend(Message::decode(&buf[..n]).ok());
            }
        }
        let until = Instant::now() + Duration::from_secs(3);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), sock.recv(&mut buf)).await {
            answers.extend(Message::decode(&buf[..n]).ok());
        }
        answers
    });

    // Meanwhile the real devices register, from 127.0.0.1 too, and answer.
    let f = fleet(&running, real.iter().map(|ep| device(ep)).collect()).await;
    for ep in real.iter().step_by(4) {
        let read = run_op(
            dir.path(),
            ep,
            OperationKind::Read {
                path: "/3/0/0".parse().unwrap(),
            },
        )
        .await;
        assert_eq!(read.state, OperationState::Succeeded, "{ep} answers during the flood");
    }
    assert!(!flood.is_finished(), "the reads ran while the flood went on");
    let answers = flood.await.unwrap();
    running.flush().await;

    let created = answers.iter().filter(|m| Code(m.code) == Code::CREATED).count();
    let too_fast: Vec<&Message> = answers
        .iter()
        .filter(|m| Code(m.code) == Code::TOO_MANY_REQUESTS)
        .collect();
    eprintln!(
        "flood of {FLOOD}: {} answered, {created} registered, {} 4.29, {} 4.03",
        answers.len(),
        too_fast.len(),
        answers.iter().filter(|m| Code(m.code) == Code::FORBIDDEN).count()
    );
    assert!(
        answers.len() > usize::from(FLOOD) / 2,
        "most of the flood was answered: {}",
        answers.len()
    );
    assert!(
        (1..=production.unprovisioned_per_source as usize).contains(&created),
        "{created} invented endpoints registered"
    );
    assert!(!too_fast.is_empty());
    assert!(
        too_fast.iter().all(|m| m.options.max_age.is_some_and(|s| s >= 1)),
        "4.29 says when to come back"
    );
    let invented = store(dir.path())
        .endpoints()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with("invented-"))
        .count();
    assert_eq!(invented, created, "every admitted name, and only those, is a device");
    assert!(
        invented <= production.unprovisioned_per_source as usize,
        "the table grew by {invented}, not by the flood"
    );
    assert_eq!(store(dir.path()).endpoints().unwrap().len(), devices_before + invented);
    // Every real device is still registered and answers after the flood.
    let regs = store(dir.path()).registrations().unwrap();
    for ep in &real {
        assert!(regs.iter().any(|r| &r.endpoint == ep), "{ep} registered");
    }
    let read = run_op(
        dir.path(),
        &real[19],
        OperationKind::Read {
            path: "/3/0/0".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(read.state, OperationState::Succeeded);

    let metrics = http(running.metrics_addr.unwrap(), "GET", "/metrics", &[], b"")
        .await
        .text();
    let sample = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}:\n{metrics}"))
    };
    assert_eq!(
        sample("flownexus_lwm2m_unprovisioned_registrations_total{outcome=\"admitted\"}"),
        created as u64
    );
    assert!(
        sample("flownexus_lwm2m_unprovisioned_registrations_total{outcome=\"refused_too_fast\"}")
            >= too_fast.len() as u64
    );
    f.stop().await;
    running.stop().await;
}

/// The real binary in production mode, configured as the deploy's
/// environment file configures it: it says at start that only provisioned
/// endpoints may register, refuses an unprovisioned Register with 4.03,
/// and lets the same endpoint register once `flownexus device add` has
/// provisioned it.
#[test]
fn production_refuses_unprovisioned_endpoints_by_default() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = super::Killed(
        super::serve_command(&data, &[])
            .env("FLOWNEXUS_MODE", "production")
            .env("FLOWNEXUS_HTTP_PUBLIC_URL", "https://dashboard.example.test")
            .env("FLOWNEXUS_FW_PUBLIC_URL", "https://fw.example.test")
            .env("FLOWNEXUS_LOG_TARGET", "stderr")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    let coap: std::net::SocketAddr = loop {
        if let Some(a) = super::bound(&data, "coap") {
            break a;
        }
        assert!(Instant::now() < until, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let register = |mid: u16| -> Code {
        let mut req = Request::new(Method::Post, "/rd");
        req.options.uri_query = vec!["ep=urn:imei:350000000000001".into(), "lt=300".into()];
        req.options.content_format = Some(40);
        req.payload = b"</3/0>".to_vec();
        sock.send_to(&Message::request(Type::Con, mid, vec![1, 2], &req).encode(), coap)
            .unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).expect("an answer");
        Code(Message::decode(&buf[..n]).unwrap().code)
    };
    assert_eq!(register(1), Code::FORBIDDEN, "never provisioned");
    let data_s = data.to_str().unwrap();
    let (ok, out, err) = super::flownexus_cli(data_s, &["device", "add", "urn:imei:350000000000001"], "");
    assert!(ok, "{out}{err}");
    // The server reads new device rows within its poll (250 ms).
    let until = Instant::now() + Duration::from_secs(10);
    let mut mid = 2;
    while register(mid) != Code::CREATED {
        assert!(Instant::now() < until, "the provisioned endpoint was never admitted");
        std::thread::sleep(Duration::from_millis(200));
        mid += 1;
    }
    let _ = child.0.kill();
    let mut log = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(
        log.contains(
            "lwm2m.unknown_endpoints = reject (the production default): only provisioned endpoints may register"
        ),
        "{log}"
    );
}
