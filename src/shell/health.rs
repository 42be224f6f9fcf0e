//! The health probes and what reports them: each component is exercised
//! as its users exercise it, every `health.probe_interval_s`, into the
//! [`Board`]; systemd hears `STATUS=` lines and, while the vital loops
//! answer, `WATCHDOG=1` (sd_notify(3)).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::health::{Board, Status, VITAL};
use crate::shell::lwm2m::Command;
use crate::store::Store;
use crate::store::writer::WriterHandle;
use crate::transport::Peer;

/// The board the web shell reads and the prober writes.
pub type SharedBoard = Arc<Mutex<Board>>;

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the LwM2M task says when probed through its command queue.
#[derive(Debug, Clone, Copy)]
pub struct Lwm2mFigures {
    pub registrations: usize,
}

/// What the probes reach: the bound listeners (loopback for a wildcard
/// address), the store, the writer and the LwM2M task.
pub struct Targets {
    pub coap: Option<SocketAddr>,
    pub coaps: Option<SocketAddr>,
    pub fw: Option<SocketAddr>,
    /// The firmware server expects a PROXY protocol header first.
    pub fw_proxy_protocol: bool,
    pub http: Option<SocketAddr>,
    pub db_path: std::path::PathBuf,
    pub writer: WriterHandle<Peer>,
    pub lwm2m: mpsc::Sender<Command>,
    /// The outbox's sinks (optional components: at worst degraded).
    pub sinks: Vec<(&'static str, crate::shell::outbox::SharedReport)>,
}

impl Targets {
    /// The components these targets have, in report order.
    pub fn components(&self) -> Vec<&'static str> {
        let mut c = vec!["store", "writer", "lwm2m"];
        for (name, addr) in [
            ("coap", self.coap),
            ("coaps", self.coaps),
            ("firmware", self.fw),
            ("http", self.http),
        ] {
            if addr.is_some() {
                c.push(name);
            }
        }
        c.extend(self.sinks.iter().map(|(name, _)| *name));
        c
    }
}

/// A wildcard listen address as a local client reaches it.
pub fn loopback(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

/// `probe` within [`PROBE_TIMEOUT`], as a result with the round trip.
async fn timed<F>(probe: F) -> Result<String, String>
where
    F: std::future::Future<Output = anyhow::Result<String>>,
{
    let start = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(what)) => Ok(format!("{what} in {} ms", start.elapsed().as_millis())),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// `f`'s output and how long it took (ms).
async fn clock<F: std::future::Future>(f: F) -> (F::Output, i64) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed().as_millis() as i64)
}

/// Send `request` from a fresh socket and wait for a datagram `accept`
/// takes.
async fn udp_round_trip(addr: SocketAddr, request: &[u8], accept: impl Fn(&[u8]) -> bool) -> anyhow::Result<()> {
    let sock = tokio::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    sock.send_to(request, addr).await?;
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = sock.recv_from(&mut buf).await?;
        if accept(&buf[..n]) {
            return Ok(());
        }
    }
}

/// An empty CON ("CoAP ping") must come back as RST (RFC 7252 §4.3).
pub async fn coap_ping(addr: SocketAddr) -> anyhow::Result<String> {
    let mid = fastrand::u16(..);
    let ping = crate::coap::Message::empty(crate::coap::Type::Con, mid).encode();
    udp_round_trip(addr, &ping, |d| {
        crate::coap::Message::decode(d).is_ok_and(|m| m.mtype == crate::coap::Type::Rst && m.message_id == mid)
    })
    .await?;
    Ok(format!("{addr} answered a CoAP ping"))
}

/// A ClientHello must come back as a HelloVerifyRequest: the stateless
/// cookie front answers without creating a session (RFC 6347 §4.2.1).
pub async fn dtls_hello(addr: SocketAddr) -> anyhow::Result<String> {
    let config = crate::dtls::client::client_config("healthcheck", b"-", &crate::dtls::CIPHER_SUITES)?;
    let mut client = crate::dtls::client::Client::connect(Instant::now(), addr, config)?;
    let hello = client
        .poll_transmit()
        .ok_or_else(|| anyhow::anyhow!("no ClientHello"))?;
    udp_round_trip(addr, &hello, crate::dtls::record::is_hello_verify_request).await?;
    Ok(format!("{addr} answered a ClientHello with a HelloVerifyRequest"))
}

/// A TLS handshake with the firmware server up to its certificate: the
/// probe trusts no certificate, so the server's arriving is the success
/// (rustls rejects it as of an unknown issuer). Nothing is downloaded.
/// `proxy_protocol`: the server expects a PROXY header first
/// (`fw.proxy_protocol`); the probe sends `PROXY UNKNOWN` (§2.1: the
/// server keeps the connection's own address).
pub async fn tls_hello(addr: SocketAddr, proxy_protocol: bool) -> anyhow::Result<String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    if proxy_protocol {
        tcp.write_all(b"PROXY UNKNOWN\r\n").await?;
    }
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Err(e)
            if e.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_))) =>
        {
            Ok(format!("{addr} presented its certificate"))
        }
        Err(e) => Err(anyhow::anyhow!("TLS handshake: {e}")),
        Ok(_) => Err(anyhow::anyhow!(
            "TLS handshake: a certificate nobody trusts was accepted"
        )),
    }
}

/// `GET /healthz` over HTTP/1.1: the status code and the body.
pub async fn get_healthz(addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    get(addr, "/healthz").await
}

/// `GET path` over HTTP/1.1 (an answer of at most 4 MiB): the status code
/// and the body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tcp.take(4 << 20).read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let code = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP/1.1 answer"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

/// The dashboard must answer an HTTP/1.1 request.
pub async fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    let (code, _) = get_healthz(addr).await?;
    Ok(format!("{addr} answered {code}"))
}

/// One round of probes, recorded on `board`; the figures for `STATUS=`.
async fn round(targets: &Targets, store: &Arc<Mutex<Store>>, board: &SharedBoard) -> Figures {
    let store = store.clone();
    let store_probe = async move {
        tokio::task::spawn_blocking(move || -> anyhow::Result<(String, u64, u64)> {
            let s = store.lock().map_err(|_| anyhow::anyhow!("store poisoned"))?;
            let schema = s.schema_version()?;
            let devices = s.count_devices()?;
            let updates = s.count_active_updates()?;
            Ok((format!("schema {schema}, {devices} devices"), devices, updates))
        })
        .await?
    };
    let writer = targets.writer.clone();
    let writer_probe = async move {
        let answered = tokio::task::spawn_blocking(move || writer.ping(PROBE_TIMEOUT)).await?;
        anyhow::ensure!(
            answered,
            "the store writer did not commit within {} s",
            PROBE_TIMEOUT.as_secs()
        );
        Ok("committed a barrier".to_string())
    };
    let lwm2m = targets.lwm2m.clone();
    let lwm2m_probe = async move {
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        lwm2m
            .send(Command::Probe(tx))
            .await
            .map_err(|_| anyhow::anyhow!("the LwM2M task has ended"))?;
        let figures = rx
            .await
            .map_err(|_| anyhow::anyhow!("the LwM2M task dropped the probe"))?;
        anyhow::Ok((figures, start.elapsed().as_millis()))
    };
    let ((s, s_ms), (w, w_ms), (l, l_ms), (coap, coap_ms), (coaps, coaps_ms), (fw, fw_ms), (http, http_ms)) = tokio::join!(
        clock(tokio::time::timeout(PROBE_TIMEOUT, store_probe)),
        clock(timed(writer_probe)),
        clock(tokio::time::timeout(PROBE_TIMEOUT, lwm2m_probe)),
        clock(maybe(targets.coap, |a| Box::pin(coap_ping(a)))),
        clock(maybe(targets.coaps, |a| Box::pin(dtls_hello(a)))),
        clock(async {
            match targets.fw {
                Some(a) => Some(timed(tls_hello(loopback(a), targets.fw_proxy_protocol)).await),
                None => None,
            }
        }),
        clock(maybe(targets.http, |a| Box::pin(http_get(a)))),
    );
    let late = || format!("no answer within {} s", PROBE_TIMEOUT.as_secs());
    let mut figures = Figures::default();
    let store_result = match s {
        Ok(Ok((detail, devices, updates))) => {
            figures.devices = Some(devices);
            figures.updates = Some(updates);
            Ok(detail)
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(late()),
    };
    let lwm2m_result = match l {
        Ok(Ok((f, ms))) => {
            figures.registrations = Some(f.registrations);
            Ok(format!(
                "answered through its command queue in {ms} ms ({} registrations)",
                f.registrations
            ))
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(late()),
    };
    let now = crate::store::now_ms();
    let mut b = board.lock().expect("health board");
    b.record(now, "store", store_result);
    b.record(now, "writer", w);
    b.record(now, "lwm2m", lwm2m_result);
    for (name, ms) in [("store", s_ms), ("writer", w_ms), ("lwm2m", l_ms)] {
        b.took(name, ms);
    }
    for (name, r, ms) in [
        ("coap", coap, coap_ms),
        ("coaps", coaps, coaps_ms),
        ("firmware", fw, fw_ms),
        ("http", http, http_ms),
    ] {
        if let Some(r) = r {
            b.record(now, name, r);
            b.took(name, ms);
        }
    }
    for (name, report) in &targets.sinks {
        b.record(now, name, crate::shell::outbox::probe(report));
    }
    figures
}

type Probe = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send>>;

/// The probe of a listener that is configured, within [`PROBE_TIMEOUT`].
async fn maybe(addr: Option<SocketAddr>, probe: fn(SocketAddr) -> Probe) -> Option<Result<String, String>> {
    match addr {
        Some(a) => Some(timed(probe(loopback(a))).await),
        None => None,
    }
}

/// The fleet figures a round found, for systemd's `STATUS=` line.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    devices: Option<u64>,
    registrations: Option<usize>,
    updates: Option<u64>,
}

fn status_line(f: &Figures, board: &Board, now: i64) -> String {
    let report = board.report(now);
    let unwell: Vec<String> = report
        .iter()
        .filter(|c| c.status != Status::Ok)
        .map(|c| format!("{} {}", c.name, c.status.as_str()))
        .collect();
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    format!(
        "{} devices, {} registered, {} firmware updates active; {}",
        n(f.devices),
        n(f.registrations.map(|r| r as u64)),
        n(f.updates),
        if unwell.is_empty() {
            "all components ok".to_string()
        } else {
            unwell.join(", ")
        }
    )
}

/// A prober: the first round at once (its result gates `READY=1`, see
/// [`Prober::first_round`]), then one every `interval`.
pub struct Prober {
    targets: Targets,
    store: Arc<Mutex<Store>>,
    board: SharedBoard,
    interval: Duration,
}

impl Prober {
    /// A prober of `targets` that keeps its results on `board` (made
    /// before the listeners, so the web shell can hold it from its start).
    pub fn new(targets: Targets, board: SharedBoard, interval: Duration) -> crate::Result<Prober> {
        let store = Arc::new(Mutex::new(Store::open(&targets.db_path)?));
        let optional: Vec<&'static str> = targets.sinks.iter().map(|(name, _)| *name).collect();
        *board.lock().expect("health board") =
            Board::new(interval.as_millis() as i64, &targets.components()).with_optional(&optional);
        Ok(Prober {
            targets,
            store,
            board,
            interval,
        })
    }

    pub fn board(&self) -> SharedBoard {
        self.board.clone()
    }

    /// Probe until every component answered (or `deadline` passes): what
    /// `READY=1` waits for; optional ones (event sinks) are not waited for.
    /// The components still not ok, if any.
    pub async fn first_round(&self, deadline: Duration) -> Vec<String> {
        let until = Instant::now() + deadline;
        loop {
            round(&self.targets, &self.store, &self.board).await;
            let now = crate::store::now_ms();
            let unwell: Vec<String> = {
                let board = self.board.lock().expect("health board");
                board
                    .report(now)
                    .into_iter()
                    .filter(|c| c.status != Status::Ok && !board.is_optional(&c.name))
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect()
            };
            if unwell.is_empty() || Instant::now() >= until {
                return unwell;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Probe every interval until `stop`; tell systemd the figures, and
    /// ping its watchdog (every `watchdog / 2`) while the vital loops
    /// answer.
    pub async fn run(self, watchdog: Option<Duration>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut probe = tokio::time::interval(self.interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        let mut last_status = String::new();
        let mut starved = false;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = probe.tick() => {
                    let figures = round(&self.targets, &self.store, &self.board).await;
                    let now = crate::store::now_ms();
                    let line = status_line(&figures, &self.board.lock().expect("health board"), now);
                    if line != last_status {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
                        last_status = line;
                    }
                }
                _ = ping.tick(), if watchdog.is_some() => {
                    let w = watchdog.expect("guarded").as_millis() as i64;
                    let now = crate::store::now_ms();
                    if self.board.lock().expect("health board").alive(now, VITAL, w) {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        starved = false;
                    } else if !starved {
                        starved = true;
                        log::error!("a vital loop ({}) stopped answering: the watchdog is no longer pinged", VITAL.join(", "));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_the_fleet_and_names_what_is_unwell() {
        let mut b = Board::new(1000, &["store", "coap"]);
        b.record(0, "store", Ok("fine".into()));
        b.record(0, "coap", Err("no answer".into()));
        let f = Figures {
            devices: Some(12),
            registrations: Some(10),
            updates: None,
        };
        assert_eq!(
            status_line(&f, &b, 0),
            "12 devices, 10 registered, ? firmware updates active; coap degraded"
        );
        b.record(1, "coap", Ok("fine".into()));
        assert!(status_line(&f, &b, 1).ends_with("; all components ok"));
    }

    /// A loop that no longer reads its command queue (a stuck LwM2M task)
    /// fails its probe round after round: down, and the watchdog's test
    /// fails with it; the store and the writer still answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_lwm2m_task_goes_down_and_stops_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.sqlite3");
        let writer = WriterHandle::start(
            Store::open(&db).unwrap(),
            crate::store::writer::WriterSettings::of(&crate::config::Config::default().store),
        );
        let (lwm2m, _never_read) = mpsc::channel(8);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let targets = Targets {
            coap: Some(silent.local_addr().unwrap()),
            coaps: None,
            fw: None,
            fw_proxy_protocol: false,
            http: None,
            db_path: db,
            writer: writer.clone(),
            lwm2m,
            sinks: Vec::new(),
        };
        let board = Arc::new(Mutex::new(Board::new(1, &[])));
        let prober = Prober::new(targets, board.clone(), Duration::from_millis(100)).unwrap();
        for _ in 0..crate::health::DOWN_AFTER {
            round(&prober.targets, &prober.store, &board).await;
        }
        let now = crate::store::now_ms();
        let b = board.lock().unwrap();
        let status: Vec<(String, Status)> = b.report(now).into_iter().map(|c| (c.name, c.status)).collect();
        assert_eq!(
            status,
            [
                ("store".to_string(), Status::Ok),
                ("writer".to_string(), Status::Ok),
                ("lwm2m".to_string(), Status::Down),
                ("coap".to_string(), Status::Down),
            ]
        );
        assert!(!b.alive(now, VITAL, 10_000));
        drop(b);
        drop(prober); // its writer handle, which `close` waits for
        writer.close();
    }

    #[tokio::test]
    async fn a_silent_port_fails_its_probe() {
        // A bound socket nobody reads: no RST, no HelloVerifyRequest.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let r = timed(coap_ping(addr)).await;
        assert_eq!(r, Err("no answer within 2 s".to_string()));
    }
}
