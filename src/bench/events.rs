//! `flownexus bench events` (issue 26): Celery over Redis under load.
//!
//! - Events delivered to Redis per second as Celery task messages while
//!   N simulated devices (default 10,000) Send values, and the server's
//!   value ingest in the same run with the Celery sink on and off (the
//!   baseline: the same server and fleet without a broker).
//! - The round trip of a Python `send_task("flownexus.read")` to its
//!   `AsyncResult.get()` against a simulated device, p50 and p99, with the
//!   producer of `tests/celery/producer.py` (needs the test venv).
//!
//! Redis is Debian's `redis-server` on a Unix socket in a temporary
//! directory, with the append-only file synced every second, as the
//! Quadlet unit runs it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ServerProcess, device_configs, registered};
use crate::lwm2m::Models;
use crate::sim::Fleet;

pub struct EventsBench {
    pub devices: usize,
    pub seconds: u64,
    /// Each device Sends a value this often.
    pub send_ms: u64,
}

struct RedisServer {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> anyhow::Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("redis-server (Debian's redis-server package)")?;
        let r = RedisServer {
            child,
            socket,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while r.connection().is_err() {
            if Instant::now() > until {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    fn queued(&self) -> anyhow::Result<u64> {
        Ok(redis::Commands::llen(&mut self.connection()?, "celery")?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter of the server's Prometheus scrape.
async fn counter(server: &ServerProcess, name: &str) -> anyhow::Result<f64> {
    let rt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server.data_dir().join("runtime.json"))?)?;
    let addr: std::net::SocketAddr = rt["metrics"].as_str().context("no metrics listener")?.parse()?;
    let (status, body) = crate::shell::health::get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "metrics answered {status}");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no {name} in the scrape"))
}

fn without_onboarding(dir: &Path) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&dir.join("flownexus.sqlite3"))?;
    for p in store.profiles()? {
        store.remove_profile(p.id)?;
    }
    Ok(())
}

/// Values ingested per second (and, with a broker, events delivered per
/// second) over `seconds` with `devices` Sending.
async fn run_once(b: &EventsBench, models: &Arc<Models>, redis: Option<&RedisServer>) -> anyhow::Result<(f64, f64)> {
    let url = redis.map(RedisServer::url);
    let env: Vec<(&str, &str)> = url
        .as_deref()
        .map(|u| vec![("FLOWNEXUS_EVENTS_CELERY_BROKER", u)])
        .unwrap_or_default();
    // Without the onboarding profile: its reads at every registration
    // would be counted as ingested values in the window.
    let server = ServerProcess::start_with(&env, without_onboarding)?;
    let mut configs = device_configs(b.devices, "bench:ev:", 86_400);
    for c in &mut configs {
        c.send_interval = Some(Duration::from_millis(b.send_ms));
    }
    let fleet = Fleet::spawn(configs, server.coap, models.clone(), true).await?;
    registered(&fleet, b.devices, Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (v0, q0, t0) = (
        counter(&server, "flownexus_lwm2m_values_total").await?,
        redis.map_or(Ok(0), RedisServer::queued)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(b.seconds)).await;
    let (v1, q1) = (
        counter(&server, "flownexus_lwm2m_values_total").await?,
        redis.map_or(Ok(0), RedisServer::queued)?,
    );
    let s = t0.elapsed().as_secs_f64();
    if redis.is_some() {
        let backlog = counter(&server, "flownexus_outbox_backlog{sink=\"celery\"}").await?;
        println!("events: {backlog:.0} events waiting in the outbox at the end of the window");
    }
    fleet.stop().await;
    drop(server);
    if let Some(r) = redis {
        // The next run starts on an empty queue.
        redis::cmd("FLUSHALL").exec(&mut r.connection()?)?;
    }
    Ok(((v1 - v0) / s, (q1 - q0) as f64 / s))
}

/// p50 and p99 of a Python producer's `send_task` → `get()`, one at a time.
async fn round_trips(models: &Arc<Models>, redis: &RedisServer, n: usize) -> anyhow::Result<Option<(f64, f64)>> {
    let python = Path::new(".venv/bin/python");
    let producer = Path::new("tests/celery/producer.py");
    if !python.exists() || !producer.exists() {
        println!("events: round trip skipped: run from the checkout after `make deps` (.venv with Celery)");
        return Ok(None);
    }
    let url = redis.url();
    let server = ServerProcess::start_with(&[("FLOWNEXUS_EVENTS_CELERY_BROKER", &url)], without_onboarding)?;
    let fleet = Fleet::spawn(
        device_configs(1, "bench:rt:", 86_400),
        server.coap,
        models.clone(),
        true,
    )
    .await?;
    registered(&fleet, 1, Duration::from_secs(30)).await?;
    let tasks: Vec<serde_json::Value> = (0..n)
        .map(|_| serde_json::json!({ "name": "flownexus.read", "args": ["bench:rt:0", "/3/0/9"] }))
        .collect();
    let socket = redis.socket.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python)
            .arg(producer)
            .env("FNX_BROKER", format!("redis+socket://{socket}"))
            .env("FNX_SEQUENTIAL", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(serde_json::Value::Array(tasks).to_string().as_bytes())?;
        anyhow::Ok(child.wait_with_output()?)
    })
    .await??;
    fleet.stop().await;
    drop(server);
    let mut seconds: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["ok"] == true)
        .filter_map(|v| v["seconds"].as_f64())
        .collect();
    if seconds.len() < n {
        bail!("only {} of {n} round trips succeeded", seconds.len());
    }
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| seconds[((seconds.len() as f64 * q) as usize).min(seconds.len() - 1)] * 1000.0;
    Ok(Some((at(0.5), at(0.99))))
}

pub async fn run(b: EventsBench, models: &Arc<Models>) -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let offered = b.devices as f64 * 1000.0 / b.send_ms as f64;
    println!(
        "events: {} devices each Sending a value every {} ms ({offered:.0} values/s offered), {} s windows",
        b.devices, b.send_ms, b.seconds
    );
    let (off, _) = run_once(&b, models, None).await?;
    println!("events: celery off: {off:.0} values/s ingested");
    let (on, delivered) = run_once(&b, models, Some(&redis)).await?;
    println!(
        "events: celery on:  {on:.0} values/s ingested, {delivered:.0} events/s delivered to Redis (goal ≥ 50,000)"
    );
    println!(
        "events: ingest with celery on / off: {:.2} (goal ≥ 0.90)",
        on / off.max(1.0)
    );
    if let Some((p50, p99)) = round_trips(models, &redis, 200).await? {
        println!(
            "events: Python send_task(\"flownexus.read\") to get(): p50 {p50:.1} ms, p99 {p99:.1} ms (200, one at a time)"
        );
    }
    Ok(())
}
