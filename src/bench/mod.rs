//! `flownexus bench`: the figures of docs/benchmarks.md, measured on
//! loopback with the server in its own process (so its RSS is its own) and
//! the simulator or load generator in this one.
//!
//! - `register`: Register + Update throughput of N simulated devices.
//! - `memory`: peak server RSS per registered device.
//! - `read`: Read round-trips/s queued through the store, as the CLI does.
//! - `coap`: raw CoAP GET handling, flownexus beside Debian's libcoap
//!   `coap-server` driven by the same load generator in the same run.
//! - `fw`: the firmware server beside nginx as the old deployment ([`fw`]).
//! - `dtls`: CoAP over DTLS beside libcoap's `coap-server-openssl` ([`dtls`]).
//! - `web`: dashboard latency and store ingest at 1,000,000 devices ([`web`]).
//! - `fota`: a campaign over N devices beside the download server alone ([`fota`]).
//! - `events`: Celery over Redis: events delivered, ingest with the sink on
//!   and off, a Python producer's round trip ([`events`]).

pub mod dtls;
pub mod events;
pub mod fota;
pub mod fw;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::UdpSocket;

use crate::coap::{Message, Method, Request, Type};
use crate::config::Config;
use crate::lwm2m::Models;
use crate::lwm2m::operation::OperationKind;
use crate::sim::{DeviceConfig, Fleet};
use crate::store::{Store, now_ms};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// register, memory, read, coap, fw, dtls, dtls-memory, web, fota, events or all.
    pub which: String,
    /// Simulated devices (default: 10,000; 100,000 for `memory`).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// `fw`: idle keep-alive TLS connections for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// `dtls`: established idle DTLS sessions for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// `web`: stored values (default 50,000,000; devices default 1,000,000).
    #[arg(long)]
    pub values: Option<u64>,
    /// `web`: keep the generated store in this directory and reuse it.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// `web`: timed requests per page.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// `fota`: the image's size in KiB.
    #[arg(long, default_value_t = 512)]
    pub image_kib: usize,
    /// `fota`: devices downloading at once (the campaign's limit, and the
    /// download-only run's).
    #[arg(long, default_value_t = 1000)]
    pub concurrent: u32,
    /// `events`: each device Sends a value this often (ms).
    #[arg(long, default_value_t = 200)]
    pub send_ms: u64,
}

/// A `flownexus serve` child, on a temporary data directory unless given one.
struct ServerProcess {
    child: Child,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    coap: SocketAddr,
    coaps: Option<SocketAddr>,
    fw: Option<SocketAddr>,
    http: Option<SocketAddr>,
    /// Lines the server logged at WARN or ERROR (they are passed on to our
    /// standard error as they come): an operator's journal should have none
    /// under load alone.
    warnings: Arc<std::sync::atomic::AtomicU64>,
}

impl ServerProcess {
    fn start(extra_env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        Self::start_with(extra_env, |_| Ok(()))
    }

    /// Start after `prepare` has set up the data directory (e.g. added firmware).
    fn start_with(
        extra_env: &[(&str, &str)],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<ServerProcess> {
        let temp = tempfile::tempdir()?;
        prepare(temp.path())?;
        let mut server = Self::start_in(temp.path(), extra_env)?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Start on the data directory `dir`, which outlives the server.
    fn start_in(dir: &Path, extra_env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let _ = std::fs::remove_file(dir.join("runtime.json"));
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FLOWNEXUS_DATA_DIR", dir)
            .env("FLOWNEXUS_COAP_LISTEN", "127.0.0.1:0")
            .env("FLOWNEXUS_COAPS_LISTEN", "127.0.0.1:0")
            .env("FLOWNEXUS_FW_LISTEN", "127.0.0.1:0")
            .env("FLOWNEXUS_HTTP_LISTEN", "127.0.0.1:0")
            .env("FLOWNEXUS_METRICS_LISTEN", "127.0.0.1:0")
            .env("FLOWNEXUS_LOG_LEVEL", "warn")
            // The benchmarks' fleets are unprovisioned and all come from
            // 127.0.0.1: the per-source bounds would measure themselves.
            .env("FLOWNEXUS_LWM2M_UNPROVISIONED_PER_SOURCE", "4000000000")
            .env("FLOWNEXUS_LWM2M_UNPROVISIONED_PER_SOURCE_PER_MIN", "4000000000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting flownexus serve")?;
        let warnings = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(err) = child.stderr.take() {
            let counted = warnings.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if line.starts_with("WARN") || line.starts_with("ERROR") {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    eprintln!("{line}");
                }
            });
        }
        let runtime = dir.join("runtime.json");
        let until = Instant::now() + Duration::from_secs(20);
        let (coap, coaps, fw, http) = loop {
            let rt = std::fs::read_to_string(&runtime)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            if let Some(v) = rt
                && let Some(a) = v["coap"].as_str().and_then(|a| a.parse().ok())
            {
                let addr = |k: &str| v[k].as_str().and_then(|a| a.parse().ok());
                break (a, addr("coaps"), addr("fw"), addr("http"));
            }
            if Instant::now() > until {
                bail!("server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(ServerProcess {
            child,
            dir: dir.to_path_buf(),
            _temp: None,
            coap,
            coaps,
            fw,
            http,
            warnings,
        })
    }

    /// How many WARN and ERROR lines the server has logged so far.
    fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.child.id(), field)
    }

    fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM lets it commit and exit cleanly.
        // SAFETY: sending a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
fn proc_cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// A `VmRSS:`/`VmHWM:` style field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn device_configs(n: usize, prefix: &str, lifetime: u32) -> Vec<DeviceConfig> {
    (0..n)
        .map(|i| {
            let mut c = DeviceConfig::new(&format!("{prefix}{i}"));
            c.lifetime = lifetime;
            c.update_interval = Duration::from_secs(u64::from(lifetime) * 4 / 5);
            c.notify_interval = Duration::from_secs(3600);
            // Retransmission waits are long enough not to double the load
            // when the server is busy; a lost message costs its 4 s, as on a real network.
            c.params.ack_timeout = Duration::from_secs(4);
            c
        })
        .collect()
}

async fn registered(fleet: &Fleet, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while fleet.stats.registered.load(Ordering::Relaxed) < n as i64 {
        if start.elapsed() > timeout {
            bail!(
                "only {} of {n} devices registered in {timeout:?}",
                fleet.stats.registered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

pub async fn run(args: BenchArgs, config: Config) -> anyhow::Result<ExitCode> {
    let models = Arc::new(Models::embedded());
    let all = args.which == "all";
    if !all
        && ![
            "register",
            "memory",
            "read",
            "coap",
            "fw",
            "dtls",
            "dtls-memory",
            "web",
            "fota",
            "events",
        ]
        .contains(&args.which.as_str())
    {
        bail!(
            "bench {}: expected register, memory, read, coap, fw, dtls, dtls-memory, web, fota, events or all",
            args.which
        );
    }
    if all || args.which == "register" {
        register(args.devices.unwrap_or(10_000), args.seconds, &models).await?;
    }
    if all || args.which == "read" {
        read(args.devices.unwrap_or(10_000), args.seconds, &models).await?;
    }
    if all || args.which == "coap" {
        coap(args.seconds).await?;
    }
    if all || args.which == "fw" {
        fw::run(args.seconds, args.idle).await?;
    }
    if all || args.which == "dtls" {
        dtls::run(args.seconds).await?;
    }
    if all || args.which == "dtls-memory" {
        dtls::memory(args.sessions).await?;
    }
    if all || args.which == "memory" {
        memory(args.devices.unwrap_or(100_000)).await?;
    }
    if all || args.which == "web" {
        let b = web::WebBench {
            devices: args.devices.map_or(1_000_000, |d| d as u64),
            values: args.values.unwrap_or(50_000_000),
            data: args.data.clone(),
            seconds: args.seconds,
            requests: args.requests,
        };
        web::run(b, &config).await?;
    }
    if all || args.which == "fota" {
        let b = fota::FotaBench {
            devices: args.devices.unwrap_or(10_000),
            image_kib: args.image_kib,
            concurrent: args.concurrent,
        };
        fota::run(b, &models).await?;
    }
    if all || args.which == "events" {
        let b = events::EventsBench {
            devices: args.devices.unwrap_or(10_000),
            seconds: args.seconds,
            send_ms: args.send_ms,
        };
        events::run(b, &models).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Register N devices, then every device sends Updates back to back.
async fn register(n: usize, seconds: u64, models: &Arc<Models>) -> anyhow::Result<()> {
    let server = ServerProcess::start(&[])?;
    // Warnings at start-up (no admin yet, say) are the operator's to read;
    // what counts is what the load itself makes the server say.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warned_before = server.warnings();
    let fleet = Fleet::spawn(
        device_configs(n, "bench:reg:", 86_400),
        server.coap,
        models.clone(),
        true,
    )
    .await?;
    let took = registered(&fleet, n, Duration::from_secs(120)).await?;
    println!(
        "register: {n} devices registered in {:.2} s ({:.0} registrations/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    let count = || fleet.stats.registrations.load(Ordering::Relaxed) + fleet.stats.updates.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, t0) = (count(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, t1) = (count(), Instant::now());
    let rate = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    println!(
        "register: {:.0} register+update operations/s over {seconds} s with {n} devices ({} failures); goal 100000",
        rate,
        fleet.stats.failures.load(Ordering::Relaxed)
    );
    fleet.stop().await;
    println!(
        "register: the server logged {} warnings under the load (goal 0: load alone is no reason to warn)",
        server.warnings() - warned_before
    );
    Ok(())
}

/// Devices per simulator process: each process may hold at most
/// RLIMIT_NOFILE sockets (20,000 hard here, and raising it needs
/// CAP_SYS_RESOURCE), so large fleets run as several `flownexus sim` children.
const DEVICES_PER_SIM_PROCESS: usize = 15_000;

/// Server memory with `devices` registered devices.
pub(crate) struct MemoryFigure {
    pub devices: usize,
    pub base_kib: u64,
    pub rss_kib: u64,
    pub peak_kib: u64,
    pub took: Duration,
}

impl MemoryFigure {
    /// Peak RSS growth per device, in bytes.
    pub fn peak_per_device(&self) -> f64 {
        (self.peak_kib.saturating_sub(self.base_kib) * 1024) as f64 / self.devices as f64
    }
    /// RSS growth per device once settled, in bytes.
    pub fn rss_per_device(&self) -> f64 {
        (self.rss_kib.saturating_sub(self.base_kib) * 1024) as f64 / self.devices as f64
    }
}

/// Register `n` simulated devices (in `flownexus sim` children) and read
/// the server's RSS. With `psk_key`, each device has that key under its
/// endpoint name and speaks CoAP over DTLS.
pub(crate) async fn memory_of(n: usize, psk_key: Option<&[u8]>) -> anyhow::Result<MemoryFigure> {
    let prefix = "bench:mem:";
    let server = ServerProcess::start_with(&[dtls::NO_HELLO_LIMIT], |dir| match psk_key {
        Some(key) => dtls::provision(dir, n, |i| format!("{prefix}{i}"), key),
        None => Ok(()),
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = server.status_kib("VmRSS:");
    let store = Store::open(&server.data_dir().join("flownexus.sqlite3"))?;
    let target = match psk_key {
        Some(_) => server.coaps.context("no coaps listener")?,
        None => server.coap,
    };
    let start = Instant::now();
    let mut sims = Vec::new();
    for first in (0..n).step_by(DEVICES_PER_SIM_PROCESS) {
        let count = DEVICES_PER_SIM_PROCESS.min(n - first);
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["sim", "--server", &target.to_string(), "--count", &count.to_string()])
            .args(["--prefix", prefix, "--first-index", &first.to_string()])
            .args(["--lifetime", "86400", "--notify-interval-ms", "3600000"])
            .env("FLOWNEXUS_LOG_LEVEL", "warn")
            .stdout(Stdio::null());
        if let Some(key) = psk_key {
            cmd.args(["--psk-key-hex", &crate::lwm2m::path::hex_bytes::encode(key)]);
        }
        sims.push(KillOnDrop(cmd.spawn().context("starting flownexus sim")?));
    }
    let mut registered = 0;
    let mut reported = Instant::now();
    while registered < n {
        if start.elapsed() > Duration::from_secs(900) {
            bail!("only {registered} of {n} devices registered in 900 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        registered = store.count_registrations()? as usize;
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            eprintln!(
                "memory: {registered} of {n} registered after {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let took = start.elapsed();
    // Long enough for the last handshakes' flights to be dropped and the
    // freed memory trimmed.
    tokio::time::sleep(Duration::from_secs(8)).await;
    Ok(MemoryFigure {
        devices: n,
        base_kib: base,
        rss_kib: server.status_kib("VmRSS:"),
        peak_kib: server.status_kib("VmHWM:"),
        took,
    })
}

/// Peak server RSS per registered device.
async fn memory(n: usize) -> anyhow::Result<()> {
    let m = memory_of(n, None).await?;
    println!(
        "memory: {n} devices registered in {:.1} s; server RSS {} KiB at start, {} KiB now, peak {} KiB",
        m.took.as_secs_f64(),
        m.base_kib,
        m.rss_kib,
        m.peak_kib
    );
    println!(
        "memory: {:.0} bytes peak RSS per registered device (goal <= 4096)",
        m.peak_per_device()
    );
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Read round-trips: queue reads through the store and count completions.
async fn read(n: usize, seconds: u64, models: &Arc<Models>) -> anyhow::Result<()> {
    let server = ServerProcess::start(&[])?;
    let fleet = Fleet::spawn(
        device_configs(n, "bench:read:", 86_400),
        server.coap,
        models.clone(),
        false,
    )
    .await?;
    registered(&fleet, n, Duration::from_secs(120)).await?;
    let db = server.data_dir().join("flownexus.sqlite3");
    let mut store = Store::open(&db)?;
    let endpoints: Vec<String> = (0..n).map(|i| format!("bench:read:{i}")).collect();
    let kind = OperationKind::Read {
        path: "/3/0/9".parse().expect("path"),
    };
    // Enough reads that the queue never runs dry during the window.
    let per_device = (seconds as usize * 60_000 / n).clamp(2, 1000);
    let t = Instant::now();
    store.queue_operations(&endpoints, &kind, per_device, now_ms() + 3_600_000, 3)?;
    println!(
        "read: queued {} reads ({per_device} per device) in {:.2} s",
        n * per_device,
        t.elapsed().as_secs_f64()
    );
    let done = |s: &Store| s.count_operations("succeeded").unwrap_or(0);
    // Wait for the first completions, then measure a window.
    let start = Instant::now();
    while done(&store) == 0 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, t0) = (done(&store), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, t1) = (done(&store), Instant::now());
    let failed = store.count_operations("failed").unwrap_or(0);
    println!(
        "read: {:.0} Read round-trips/s against {n} devices over {seconds} s (queued via the store; {failed} failed)",
        (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
    );
    fleet.stop().await;
    Ok(())
}

/// Answered requests per second for a GET flood: `sockets` clients each
/// keeping `window` confirmable GETs outstanding.
async fn get_load(
    target: SocketAddr,
    path: &str,
    sockets: usize,
    window: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64)> {
    let answered = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(target).await?;
        let answered = answered.clone();
        let req = Request::new(Method::Get, path);
        tasks.push(tokio::spawn(async move {
            let mut mid: u16 = (s as u16).wrapping_mul(4099);
            let mut buf = [0u8; 2048];
            let send = |mid: u16| Message::request(Type::Con, mid, mid.to_be_bytes().to_vec(), &req).encode();
            for _ in 0..window {
                mid = mid.wrapping_add(1);
                let _ = sock.send(&send(mid)).await;
            }
            while Instant::now() < stop_at {
                match tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await {
                    Ok(Ok(_)) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        mid = mid.wrapping_add(1);
                        let _ = sock.send(&send(mid)).await;
                    }
                    // A lost datagram: refill the window.
                    _ => {
                        mid = mid.wrapping_add(1);
                        let _ = sock.send(&send(mid)).await;
                    }
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

fn libcoap_server() -> Option<PathBuf> {
    ["coap-server-notls", "coap-server-openssl", "coap-server"]
        .iter()
        .map(|n| Path::new("/usr/bin").join(n))
        .find(|p| p.exists())
}

/// Raw CoAP handling beside libcoap: the same GET flood at both.
async fn coap(seconds: u64) -> anyhow::Result<()> {
    let (sockets, window) = (32, 8);
    let server = ServerProcess::start(&[])?;
    let pid = server.child.id();
    let (ours, n) = get_load(server.coap, "/.well-known/core", sockets, window, seconds).await?;
    println!("coap: flownexus answered {ours:.0} GET/s ({n} in {seconds} s; LwM2M server answers 4.04 for this path)");
    println!(
        "coap: flownexus RSS after the flood {} KiB",
        proc_status_kib(pid, "VmRSS:")
    );
    drop(server);
    let Some(bin) = libcoap_server() else {
        bail!("libcoap's coap-server is not installed (Debian libcoap3-bin)");
    };
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?.port()
    };
    let mut child = std::process::Command::new(&bin)
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let (theirs, m) = get_load(target, "/.well-known/core", sockets, window, seconds).await?;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "coap: libcoap {} answered {theirs:.0} GET/s ({m} in {seconds} s; 2.05 with its link-format)",
        bin.display()
    );
    println!("coap: ratio flownexus / libcoap = {:.2}", ours / theirs.max(1.0));
    Ok(())
}
