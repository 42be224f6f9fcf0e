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
use rtc_dtls::config::HandshakeConfig;
use tokio::net::UdpSocket;

use super::{ServerProcess, proc_status_kib};
use crate::coap::{Message, Method, Request, Type};
use crate::dtls::client::{Client, client_config};
use crate::dtls::CIPHER_SUITES;
use crate::psk::Psk;
use crate::store::Store;

/// The key every benchmark identity shares; text, because libcoap's `-k`
/// takes text.
const KEY: &str = "flownexus-bench!";
/// Load-generator sockets, each on its own loopback address.
const CLIENTS: usize = 64;
/// libcoap has no per-source ClientHello limit; for a like-for-like
/// capacity figure ours is off too (`coaps.hellos_per_source_per_s = 0`).
const NO_HELLO_LIMIT: (&str, &str) = ("FLOWNEXUS_COAPS_HELLOS_PER_SOURCE_PER_S", "0");

fn identity(i: usize) -> String {
    format!("bench-{i}")
}

fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 2, (i / 250) as u8, (i % 250 + 1) as u8], 0))
}

fn config_for(i: usize) -> anyhow::Result<Arc<HandshakeConfig>> {
    Ok(client_config(&identity(i), KEY.as_bytes(), &CIPHER_SUITES[..1])?)
}

/// Provision identities 0..n with [`KEY`] for the flownexus server.
fn provision(dir: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut store = Store::open(&dir.join("flownexus.sqlite3"))?;
    let rows: Vec<crate::psk::Provisioned> = (0..n)
        .map(|i| crate::psk::Provisioned {
            line: i + 1,
            endpoint: format!("urn:bench:{i}"),
            psk: Psk::from_parts(identity(i), KEY.as_bytes().to_vec()),
        })
        .collect();
    if let Err(errors) = store.import_devices(&rows)? {
        bail!("provisioning: {}", errors.join("; "));
    }
    Ok(())
}

/// Drive one client's handshake on `sock` to the end; true if established.
async fn handshake(sock: &UdpSocket, target: SocketAddr, config: Arc<HandshakeConfig>) -> anyhow::Result<Option<Client>> {
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
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                while let Some(d) = c.poll_transmit() {
                    let _ = sock.send(&d).await;
                }
                match tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        c.handle_datagram(Instant::now(), &buf[..n]);
                        while c.poll_received().is_some() {
                            answered.fetch_add(1, Ordering::Relaxed);
                            get(&mut c);
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

/// libcoap's DTLS server on a free port pair (it serves DTLS on port+1).
fn libcoap_server() -> anyhow::Result<(std::process::Child, SocketAddr)> {
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
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-k", KEY])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((child, SocketAddr::from(([127, 0, 0, 1], port + 1))))
}

pub async fn run(seconds: u64, idle: usize) -> anyhow::Result<()> {
    let server = ServerProcess::start_with(&[NO_HELLO_LIMIT], |dir| provision(dir, CLIENTS))?;
    let ours = server.coaps.context("flownexus reported no coaps listener")?;
    let (hs_ours, n_ours, f_ours) = handshakes(ours, seconds).await?;
    println!("dtls: flownexus {hs_ours:.0} handshakes/s ({n_ours} in {seconds} s, {f_ours} failed)");
    let (get_ours, g_ours) = gets(ours, 8, seconds).await?;
    println!("dtls: flownexus {get_ours:.0} GET/s over {CLIENTS} sessions ({g_ours} in {seconds} s; 4.04: the LwM2M server has no such resource)");
    drop(server);

    let (mut child, theirs) = libcoap_server()?;
    let result = async {
        let (hs, n, f) = handshakes(theirs, seconds).await?;
        println!("dtls: libcoap coap-server-openssl {hs:.0} handshakes/s ({n} in {seconds} s, {f} failed)");
        let (get, g) = gets(theirs, 8, seconds).await?;
        println!("dtls: libcoap coap-server-openssl {get:.0} GET/s over {CLIENTS} sessions ({g} in {seconds} s; 2.05 with its link-format)");
        anyhow::Ok((hs, get))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (hs_theirs, get_theirs) = result?;
    println!(
        "dtls: ratio flownexus / libcoap: handshakes {:.2}, GET round-trips {:.2}; goal 2 on both",
        hs_ours / hs_theirs.max(1.0),
        get_ours / get_theirs.max(1.0)
    );
    memory(idle).await
}

/// RSS of the server with `n` established, idle sessions. Each session is
/// made from its own source address and port; the generator's socket is
/// closed after the handshake (the server keeps the session until it has
/// been idle for `coaps.session_idle_timeout_s`).
async fn memory(n: usize) -> anyhow::Result<()> {
    let server = ServerProcess::start_with(&[NO_HELLO_LIMIT], |dir| provision(dir, n))?;
    let target = server.coaps.context("no coaps listener")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let base = proc_status_kib(pid, "VmRSS:");
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, failed) = (next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return anyhow::Ok(());
                }
                // 20,000 ports on each of 127.3.x.y: unique 4-tuples.
                let local = SocketAddr::from(([127, 3, (i / 20_000 / 250) as u8, (i / 20_000 % 250 + 1) as u8], 20_000 + (i % 20_000) as u16));
                let sock = UdpSocket::bind(local).await?;
                sock.connect(target).await?;
                if handshake(&sock, target, config_for(i)?).await?.is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");
    let made = n as u64 - failed.load(Ordering::Relaxed);
    println!(
        "dtls: {made} idle sessions established in {:.1} s ({:.0}/s); server RSS {base} KiB before, {rss} KiB after, peak {hwm} KiB",
        took.as_secs_f64(),
        made as f64 / took.as_secs_f64()
    );
    println!(
        "dtls: {:.0} bytes per established idle session (RSS), {:.0} (peak); goal 2048",
        (rss.saturating_sub(base) * 1024) as f64 / made.max(1) as f64,
        (hwm.saturating_sub(base) * 1024) as f64 / made.max(1) as f64
    );
    Ok(())
}
