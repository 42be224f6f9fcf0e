//! `flownexus bench dtls`: CoAP over DTLS, flownexus beside Debian's
//! libcoap `coap-server-openssl -k KEY`, driven by the same load generator
//! (the simulator's rtc-dtls client) in the same run:
//!
//! - full PSK handshakes per second (cookie exchange included), each
//!   followed by close_notify;
//! - CoAP GET round-trips per second over established sessions;
//! - server RSS with N established idle sessions.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::UdpSocket;

use super::{ServerProcess, proc_cpu_seconds};
use crate::coap::{Message, Method, Request, Type};
use crate::dtls::CIPHER_SUITES;
use crate::dtls::client::{Client, ClientConfig, client_config};
use crate::psk::Psk;
use crate::shell::udp;
use crate::store::Store;

/// The key every benchmark identity shares; text, because libcoap's `-k`
/// takes text.
const KEY: &str = "flownexus-bench!";
/// Load-generator sockets, each on its own loopback address.
const CLIENTS: usize = 64;
/// libcoap has no per-source ClientHello limit; for a like-for-like
/// capacity figure ours is off too (`coaps.hellos_per_source_per_s = 0`).
pub(crate) const NO_HELLO_LIMIT: (&str, &str) = ("FLOWNEXUS_COAPS_HELLOS_PER_SOURCE_PER_S", "0");

fn identity(i: usize) -> String {
    format!("bench-{i}")
}

fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 2, (i / 250) as u8, (i % 250 + 1) as u8], 0))
}

fn config_for(i: usize) -> anyhow::Result<Arc<ClientConfig>> {
    Ok(client_config(&identity(i), KEY.as_bytes(), &CIPHER_SUITES[..1])?)
}

/// Provision devices 0..n, identity `identity(i)`, with `key`.
pub(crate) fn provision(dir: &Path, n: usize, identity: impl Fn(usize) -> String, key: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut store = Store::open(&dir.join("flownexus.sqlite3"))?;
    let rows: Vec<crate::psk::Provisioned> = (0..n)
        .map(|i| crate::psk::Provisioned {
            line: i + 1,
            endpoint: identity(i),
            psk: Psk::from_parts(identity(i), key.to_vec()),
        })
        .collect();
    if let Err(errors) = store.import_devices(&rows)? {
        bail!("provisioning: {}", errors.join("; "));
    }
    Ok(())
}

/// Drive one client's handshake on `sock` (connected to `target`) to the
/// end: the established client, or `None` if it failed.
pub async fn handshake(
    sock: &UdpSocket,
    target: SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Option<Client>> {
    let mut c = Client::connect(Instant::now(), target, config)?;
    let mut buf = [0u8; 2048];
    loop {
        while let Some(d) = c.poll_transmit() {
            sock.send(&d).await?;
        }
        if c.is_established() {
            return Ok(Some(c));
        }
        if c.has_failed() {
            return Ok(None);
        }
        let wait = c
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => c.handle_datagram(Instant::now(), &buf[..n]),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                c.handle_timeout(Instant::now());
                if c.poll_timeout().is_none() && !c.is_established() {
                    return Ok(None);
                }
            }
        }
    }
}

async fn connected(i: usize, target: SocketAddr) -> anyhow::Result<UdpSocket> {
    let sock = UdpSocket::bind(source(i)).await?;
    sock.connect(target).await?;
    Ok(sock)
}

/// Full handshakes per second: every client handshakes, closes, repeats.
async fn handshakes(target: SocketAddr, seconds: u64) -> anyhow::Result<(f64, u64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (done, failed) = (done.clone(), failed.clone());
        let config = config_for(i)?;
        tasks.push(tokio::spawn(async move {
            let sock = connected(i, target).await?;
            while Instant::now() < until {
                match handshake(&sock, target, config.clone()).await? {
                    Some(mut c) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        c.close(Instant::now());
                        while let Some(d) = c.poll_transmit() {
                            sock.send(&d).await?;
                        }
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await??;
    }
    let n = done.load(Ordering::Relaxed);
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n, failed.load(Ordering::Relaxed)))
}

/// GET round-trips per second over established sessions: each client
/// keeps `window` confirmable GETs outstanding.
async fn gets(target: SocketAddr, window: usize, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let answered = Arc::new(AtomicU64::new(0));
    let mut sessions = Vec::new();
    for i in 0..CLIENTS {
        let sock = connected(i, target).await?;
        let c = handshake(&sock, target, config_for(i)?)
            .await?
            .with_context(|| format!("client {i} could not handshake"))?;
        sessions.push((sock, c));
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (s, (sock, mut c)) in sessions.into_iter().enumerate() {
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::new(Method::Get, "/.well-known/core");
            let mut mid: u16 = (s as u16).wrapping_mul(4099);
            let mut get = |c: &mut Client| {
                mid = mid.wrapping_add(1);
                c.send(
                    Instant::now(),
                    &Message::request(Type::Con, mid, mid.to_be_bytes().to_vec(), &req).encode(),
                );
            };
            for _ in 0..window {
                get(&mut c);
            }
            // Answers are read and new requests sent in batches (recvmmsg,
            // sendmmsg), so that the generator leaves the servers as much
            // of the two cores as it can.
            let mut received = udp::Received::new(2048);
            while Instant::now() < until {
                let outgoing: Vec<Vec<u8>> = std::iter::from_fn(|| c.poll_transmit()).collect();
                let batch: Vec<_> = outgoing.iter().map(|d| (None, &d[..])).collect();
                udp::send_batch(&sock, &batch).await;
                match tokio::time::timeout(Duration::from_millis(200), sock.readable()).await {
                    Ok(Ok(())) => {
                        if udp::try_recv_batch(&sock, &mut received).is_ok() {
                            let now = Instant::now();
                            for (_, d) in received.datagrams() {
                                c.handle_datagram(now, d);
                            }
                            while c.poll_received().is_some() {
                                answered.fetch_add(1, Ordering::Relaxed);
                                get(&mut c);
                            }
                        }
                    }
                    // A lost datagram: refill the window.
                    _ => get(&mut c),
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let n = answered.load(Ordering::Relaxed);
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n))
}

/// libcoap's DTLS server with the PSK `key` (text) on a free port pair (it
/// serves DTLS on port+1); its DTLS address.
pub fn libcoap_server(key: &str) -> anyhow::Result<(std::process::Child, SocketAddr)> {
    let bin = Path::new("/usr/bin/coap-server-openssl");
    if !bin.exists() {
        bail!("coap-server-openssl is not installed (Debian libcoap3-bin)");
    }
    let port = loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if a < 65_000 && std::net::UdpSocket::bind(("127.0.0.1", a + 1)).is_ok() {
            break a;
        }
    };
    let child = std::process::Command::new(bin)
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-k", key])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((child, SocketAddr::from(([127, 0, 0, 1], port + 1))))
}

/// One server's figures: rates, and its own CPU time per operation (the
/// load generator shares the machine's two cores, so the CPU cost is the
/// figure that does not depend on how much of them it leaves).
struct Figures {
    handshakes: f64,
    handshake_cpu_us: f64,
    gets: f64,
    get_cpu_us: f64,
}

async fn measure(name: &str, pid: u32, target: SocketAddr, seconds: u64) -> anyhow::Result<Figures> {
    let me = std::process::id();
    let (cpu0, own0) = (proc_cpu_seconds(pid), proc_cpu_seconds(me));
    let (handshakes, n, failed) = self::handshakes(target, seconds).await?;
    let (cpu1, own1) = (proc_cpu_seconds(pid), proc_cpu_seconds(me));
    let per = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
    let handshake_cpu_us = per(cpu1 - cpu0, n);
    println!(
        "dtls: {name} {handshakes:.0} handshakes/s ({n} in {seconds} s, {failed} failed), {handshake_cpu_us:.1} µs server CPU each, {:.1} µs load generator CPU",
        per(own1 - own0, n)
    );
    let (gets, g) = self::gets(target, 8, seconds).await?;
    let get_cpu_us = per(proc_cpu_seconds(pid) - cpu1, g);
    println!(
        "dtls: {name} {gets:.0} GET/s over {CLIENTS} sessions ({g} in {seconds} s), {get_cpu_us:.1} µs server CPU each, {:.1} µs load generator CPU (session set-up included)",
        per(proc_cpu_seconds(me) - own1, g)
    );
    Ok(Figures {
        handshakes,
        handshake_cpu_us,
        gets,
        get_cpu_us,
    })
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let server = ServerProcess::start_with(&[NO_HELLO_LIMIT], |dir| {
        provision(dir, CLIENTS, identity, KEY.as_bytes())
    })?;
    let target = server.coaps.context("flownexus reported no coaps listener")?;
    println!(
        "dtls: flownexus answers GET /.well-known/core with 4.04 (no such LwM2M resource), libcoap with 2.05 and its link-format"
    );
    let ours = measure("flownexus", server.child.id(), target, seconds).await?;
    drop(server);

    let (mut child, target) = libcoap_server(KEY)?;
    let theirs = measure("libcoap coap-server-openssl", child.id(), target, seconds).await;
    let _ = child.kill();
    let _ = child.wait();
    let theirs = theirs?;
    println!(
        "dtls: ratio flownexus / libcoap: handshakes/s {:.2}, GET/s {:.2} (goal 2 on both); server CPU per handshake {:.2}×, per GET {:.2}× less",
        ours.handshakes / theirs.handshakes.max(1.0),
        ours.gets / theirs.gets.max(1.0),
        theirs.handshake_cpu_us / ours.handshake_cpu_us.max(0.001),
        theirs.get_cpu_us / ours.get_cpu_us.max(0.001)
    );
    Ok(())
}

/// Server memory per device with `n` devices registered over DTLS, beside
/// the same over plain CoAP: the difference is what a DTLS session costs
/// beyond the registration itself.
pub async fn memory(n: usize) -> anyhow::Result<()> {
    let plain = super::memory_of(n, None).await?;
    let secure = super::memory_of(n, Some(KEY.as_bytes())).await?;
    for (what, m) in [("plain CoAP", &plain), ("DTLS", &secure)] {
        println!(
            "dtls: {n} devices registered over {what} in {:.1} s; server RSS {} KiB at start, {} KiB settled, peak {} KiB: {:.0} B/device settled, {:.0} B/device peak",
            m.took.as_secs_f64(),
            m.base_kib,
            m.rss_kib,
            m.peak_kib,
            m.rss_per_device(),
            m.peak_per_device()
        );
    }
    println!(
        "dtls: an established idle DTLS session costs {:.0} B settled, {:.0} B at peak, beyond its registration (goal <= 2048)",
        secure.rss_per_device() - plain.rss_per_device(),
        secure.peak_per_device() - plain.peak_per_device()
    );
    Ok(())
}
