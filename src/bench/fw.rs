//! `flownexus bench fw`: the firmware server beside Debian's nginx set up
//! as the old deployment (`ssl_buffer_size 1370`, no http2, no gzip), same
//! certificate, same 512 KiB image, same load generator, one run.
//!
//! The load generator is a TLS keep-alive HTTP/1.1 client with Range
//! support ([`HttpConn`]), also used by the wire-level tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ServerProcess, proc_status_kib};
pub use crate::sim::https::{HttpConn, RecordCounting, Reply, client_config};

/// Debian's nginx as the old deployment served firmware.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(cert: &Path, key: &Path, image: &Path) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let www = dir.path().join("www/binaries");
        std::fs::create_dir_all(&www)?;
        std::fs::copy(image, www.join("app.bin"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.path().display();
        let conf = format!(
            "user root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n access_log off;\n gzip off;\n keepalive_timeout 120s;\n keepalive_requests 1000000;\n\
             client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
             default_type application/octet-stream;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
               ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_buffer_size 1370;\n  root {d}/www;\n }}\n}}\n",
            cert.display(),
            key.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = std::process::Command::new("nginx")
            .args(["-c", conf_path.to_str().expect("utf-8 path"), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx (Debian package nginx)")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > until {
                bail!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx { child, addr, _dir: dir })
    }

    /// RSS of the master and its workers, KiB.
    fn rss_kib(&self) -> u64 {
        let master = self.child.id();
        let mut total = proc_status_kib(master, "VmRSS:");
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")) {
            total += children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(|p| proc_status_kib(p, "VmRSS:"))
                .sum::<u64>();
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGQUIT);
        }
        let _ = self.child.wait();
    }
}

/// Reads a server's resident memory, KiB.
type RssProbe<'a> = Box<dyn Fn() -> u64 + 'a>;

const IMAGE: usize = 512 * 1024;
const RANGE: usize = 2048;

fn range_request(offset: usize) -> String {
    let end = (offset + RANGE - 1).min(IMAGE - 1);
    format!(
        "GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes={offset}-{end}\r\nConnection: keep-alive\r\n\r\n"
    )
}

const FULL: &str = "GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// nRF pattern: `conns` keep-alive connections, each walking the image in
/// 2 KB ranges. Returns (requests/s, p50 µs, p99 µs).
async fn nrf_pattern(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    conns: usize,
    secs: u64,
) -> anyhow::Result<(f64, u64, u64)> {
    let stop = Instant::now() + Duration::from_secs(secs);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (cfg, latencies) = (cfg.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(addr, cfg).await?;
            let mut mine = Vec::new();
            let mut offset = (i * 37 * RANGE) % IMAGE;
            while Instant::now() < stop {
                let t = Instant::now();
                let r = conn.request(&range_request(offset)).await?;
                if r.status != 206 {
                    bail!("status {}", r.status);
                }
                mine.push(t.elapsed().as_micros() as u64);
                offset = (offset + RANGE) % IMAGE;
            }
            latencies.lock().expect("latencies").extend(mine);
            Ok(())
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut l = latencies.lock().expect("latencies").clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok((l.len() as f64 / elapsed, pct(0.50), pct(0.99)))
}

/// Whole-image downloads on `conns` keep-alive connections: MB/s.
async fn full_downloads(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    conns: usize,
    secs: u64,
) -> anyhow::Result<f64> {
    let stop = Instant::now() + Duration::from_secs(secs);
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (cfg, bytes) = (cfg.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(addr, cfg).await?;
            while Instant::now() < stop {
                let r = conn.request(FULL).await?;
                if r.status != 200 || r.body.len() != IMAGE {
                    bail!("status {} with {} bytes", r.status, r.body.len());
                }
                bytes.fetch_add(r.body.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(bytes.load(Ordering::Relaxed) as f64 / 1e6 / t0.elapsed().as_secs_f64())
}

/// Full TLS handshakes per second (no resumption), `conns` at a time,
/// each task from its own loopback source address. Returns (rate, failures).
async fn handshakes(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    conns: usize,
    secs: u64,
) -> anyhow::Result<(f64, u64)> {
    let stop = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (cfg, done, failed) = (cfg.clone(), done.clone(), failed.clone());
        let local = std::net::IpAddr::from([127, 0, 1, 1 + i as u8]);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                match HttpConn::connect_from(Some(local), addr, cfg.clone()).await {
                    Ok(conn) => {
                        drop(conn);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    ))
}

/// Open `n` keep-alive connections (one request each), hold them idle,
/// and read the server's RSS growth in KiB.
async fn idle_connections(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    n: usize,
    rss: impl Fn() -> u64,
) -> anyhow::Result<(u64, u64)> {
    let before = rss();
    let mut conns = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for _ in 0..n {
        let cfg = cfg.clone();
        pending.push(tokio::spawn(async move {
            let mut c = HttpConn::connect(addr, cfg).await?;
            c.request(&range_request(0)).await?;
            anyhow::Ok(c)
        }));
        if pending.len() == 200 {
            for p in pending.drain(..) {
                conns.push(p.await??);
            }
        }
    }
    for p in pending {
        conns.push(p.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    drop(conns);
    Ok((before, after))
}

/// Largest TLS record of a full download (TLS 1.2 and 1.3) and handshake.
async fn largest_record(addr: SocketAddr, ca: &Path) -> anyhow::Result<u64> {
    let mut largest = 0;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut c = HttpConn::connect(addr, client_config(ca, v)?).await?;
        c.request(FULL).await?;
        c.request(&range_request(0)).await?;
        largest = largest.max(c.largest_record.load(Ordering::Relaxed));
    }
    Ok(largest)
}

/// A server under test: its address and a probe of its resident memory.
struct UnderTest {
    addr: SocketAddr,
    rss: RssProbe<'static>,
    /// Keeps the server running until the figure is taken.
    _guard: Box<dyn std::any::Any>,
}

/// Start a fresh server of `kind` serving the image with the shared certificate.
fn start(kind: &str, img: &Path, cert: &Path, key: &Path) -> anyhow::Result<UnderTest> {
    if kind == "nginx" {
        let n = Nginx::start(cert, key, img)?;
        let addr = n.addr;
        let n = Arc::new(n);
        let probe = n.clone();
        return Ok(UnderTest {
            addr,
            rss: Box::new(move || probe.rss_kib()),
            _guard: Box::new(n),
        });
    }
    let env = [
        ("FLOWNEXUS_FW_CERT_FILE", cert.to_str().expect("utf-8")),
        ("FLOWNEXUS_FW_KEY_FILE", key.to_str().expect("utf-8")),
    ];
    let fx = ServerProcess::start_with(&env, |data_dir: &Path| {
        let ok = std::process::Command::new(std::env::current_exe()?)
            .args(["--data-dir", data_dir.to_str().expect("utf-8"), "firmware", "add"])
            .arg(img)
            .args(["--version", "bench"])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("firmware add failed");
        }
        Ok(())
    })?;
    let addr = fx.fw.context("flownexus reported no firmware listener")?;
    let pid = fx.child.id();
    Ok(UnderTest {
        addr,
        rss: Box::new(move || proc_status_kib(pid, "VmRSS:")),
        _guard: Box::new(fx),
    })
}

pub async fn run(seconds: u64, idle: usize) -> anyhow::Result<()> {
    let image: Vec<u8> = (0..IMAGE).map(|i| (i * 31 % 251) as u8).collect();
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("app.bin");
    std::fs::write(&img, &image)?;
    // One ECDSA P-256 certificate (and its CA) for both servers.
    let pair = crate::download::tls::development_certificates(&dir.path().join("tls"), &["localhost".to_string()])?;
    let ca = dir.path().join("tls/ca.pem");
    println!(
        "fw: same image ({IMAGE} bytes), same ECDSA P-256 certificate, same load generator, a fresh server per figure; {seconds} s per figure"
    );
    let tls12 = client_config(&ca, &rustls::version::TLS12)?;
    let tls13 = client_config(&ca, &rustls::version::TLS13)?;
    let mut results: Vec<[f64; 6]> = Vec::new();
    for name in ["flownexus", "nginx"] {
        let fresh = || start(name, &img, &pair.cert, &pair.key);
        let s = fresh()?;
        let (before, after) = idle_connections(s.addr, tls12.clone(), idle, &s.rss).await?;
        println!(
            "fw: {name}: RSS {before} KiB → {after} KiB with {idle} idle keep-alive TLS connections (+{} KiB)",
            after.saturating_sub(before)
        );
        drop(s);
        let s = fresh()?;
        let (rps, p50, p99) = nrf_pattern(s.addr, tls12.clone(), 200, seconds).await?;
        println!(
            "fw: {name}: nRF pattern, 200 keep-alive TLS 1.2 connections, 2 KB ranges: {rps:.0} requests/s, p50 {p50} µs, p99 {p99} µs"
        );
        drop(s);
        let s = fresh()?;
        let mbps = full_downloads(s.addr, tls13.clone(), 8, seconds).await?;
        println!("fw: {name}: full-image downloads, 8 connections: {mbps:.1} MB/s");
        drop(s);
        let s = fresh()?;
        let (hs, hs_failed) = handshakes(s.addr, tls13.clone(), 16, seconds).await?;
        println!("fw: {name}: new TLS 1.3 handshakes (ECDSA P-256, no resumption): {hs:.0}/s ({hs_failed} failed)");
        let largest = largest_record(s.addr, &ca).await?;
        println!("fw: {name}: largest TLS record received: {largest} bytes");
        results.push([rps, p99 as f64, mbps, hs, after as f64, largest as f64]);
    }
    let (f, n) = (results[0], results[1]);
    println!(
        "fw: ratios flownexus/nginx: nRF requests/s {:.2} (goal >= 1.2), p99 {:.2}, full-download MB/s {:.2} (goal >= 1.0), handshakes/s {:.2} (goal >= 1.0), RSS with idle connections {:.2} (goal <= 1.0)",
        f[0] / n[0],
        f[1] / n[1],
        f[2] / n[2],
        f[3] / n[3],
        f[4] / n[4]
    );
    println!(
        "fw: largest record: flownexus {} bytes, nginx {} bytes (device limit 2048; ours {})",
        f[5], n[5], 1370
    );
    Ok(())
}
