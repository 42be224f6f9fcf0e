//! `flownexus bench web`: the dashboard and the store at fleet scale.
//!
//! 1. A store with `--devices` devices (default 1,000,000), each registered
//!    and with latest values, and `--values` stored values (default
//!    50,000,000): most devices with a week of sparse history, a few busy
//!    ones reporting every minute for seven days. Built once with bulk SQL
//!    and kept in `--data` for later runs.
//! 2. Ingest: notifications through the server's own store writer into that
//!    store, as fast as it takes them, for `--seconds`.
//! 3. Latency: `flownexus serve` on that store, and a keep-alive HTTP/1.1
//!    client on loopback timing each page an operator opens: p50, p99, max;
//!    once while the server moves the values the ingest left in the
//!    journal, once after it has moved them all.
//!
//! The goals (≤ 30 ms p99 per page, ≥ 100,000 values/s) are printed
//! beside each figure. The bench user shows every device list column and
//! the store holds a device profile, so the pages do what an operator's do
//! (the device page draws its object tree from the registration's links).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::Config;
use crate::lwm2m::path::{Record, Value};
use crate::lwm2m::server::{ServerEvent, Source};
use crate::store::writer::{Command, WriterHandle, WriterSettings};
use crate::store::{Store, now_ms};
use crate::users::{Role, hash_password};

/// Devices whose `/3303/0/5700` reported every minute for seven days.
const BUSY_DEVICES: u64 = 100;
const WEEK_MS: i64 = 7 * 86_400_000;
const BUSY_VALUES: u64 = (WEEK_MS / 60_000) as u64;

pub struct WebBench {
    pub devices: u64,
    pub values: u64,
    pub data: Option<PathBuf>,
    pub seconds: u64,
    pub requests: usize,
}

pub async fn run(b: WebBench, config: &Config) -> anyhow::Result<()> {
    let temp;
    let dir = match &b.data {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("flownexus.sqlite3");
    let wanted = (b.devices, b.values);
    let have = populated(&db)?;
    if have != Some(wanted) {
        if have.is_some() {
            bail!(
                "{} holds another population ({have:?}); use another --data",
                db.display()
            );
        }
        let t = Instant::now();
        populate(&db, b.devices, b.values)?;
        println!(
            "web: built {} devices and {} values in {:.0} s ({:.1} GB)",
            b.devices,
            b.values,
            t.elapsed().as_secs_f64(),
            std::fs::metadata(&db)?.len() as f64 / 1e9
        );
    }

    ingest(&db, config, b.devices, b.seconds)?;

    let sid = format!("bench-session-{}", fastrand::u64(..));
    {
        // The ingest's checkpointer may still be folding gigabytes of WAL
        // into the database, holding the write lock longer than the
        // server's busy timeout at its start: wait for it here.
        let c = rusqlite::Connection::open(&db)?;
        c.busy_timeout(Duration::from_secs(600))?;
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    {
        let s = Store::open(&db)?;
        if s.user_credentials("bench")?.is_none() {
            s.add_user("bench", &hash_password("bench password 1")?, Role::Admin)?;
        }
        s.create_session(&crate::web::auth::digest(&sid), "bench", "127.0.0.1")?;
        // The dashboard as an operator sets it up: every device list
        // column (model, signal and battery come from the latest values),
        // and a device profile for every registration.
        s.set_setting(
            "bench",
            "device_columns",
            "status,firmware,model,last_seen,lifetime,signal,battery,tags",
        )?;
        if !s.profiles()?.iter().any(|p| p.name == "identity and radio") {
            let steps =
                crate::lwm2m::profile::parse_steps("read /3/0\nread /4/0\nobserve /3303/0/5700 pmin=60 pmax=3600")
                    .map_err(anyhow::Error::msg)?;
            s.add_profile("identity and radio", None, &steps, 3600, "bench")?;
        }
    }
    let server = super::ServerProcess::start_in(&dir, &[])?;
    let http = server.http.context("no dashboard listener")?;
    let cookie = format!("flownexus={sid}");
    let busy = endpoint(1);
    let middle = endpoint(b.devices / 2);
    let deep = crate::web::api::encode_cursor(&serde_json::json!([middle, middle]));
    let pages: Vec<(&str, String)> = vec![
        ("devices, first page", "/devices".into()),
        (
            "devices, deep page (keyset, half-way)",
            format!("/devices?cursor={deep}"),
        ),
        ("devices, last seen first", "/devices?sort=last_seen&order=desc".into()),
        ("devices, offline only", "/devices?status=offline".into()),
        ("devices, firmware filter", "/devices?firmware=v1.3".into()),
        ("devices, tag filter", "/devices?tag=pilot".into()),
        (
            "devices, search (one match)",
            format!("/devices?q={}", endpoint(b.devices / 3)),
        ),
        ("device detail (24 h chart)", format!("/devices/{busy}")),
        (
            "device detail, 7-day history chart",
            format!("/devices/{busy}?chart=/3303/0/5700&range=7d"),
        ),
        (
            "device detail, 7-day chart of two resources",
            format!("/devices/{busy}?chart=/3303/0/5700&chart=/3304/0/5700&range=7d"),
        ),
        (
            "API history, 7 days, 500 values",
            format!("/api/v1/devices/{busy}/history?path=/3303/0/5700&limit=500"),
        ),
        ("overview", "/".into()),
    ];
    let mut client = Client::connect(http)?;
    // First while the new server rebuilds its books from the journal the
    // ingest left and moves those values into the history as they come of
    // age (a restart under load); then once it has moved them all.
    latency(
        &mut client,
        &pages,
        &cookie,
        b.requests,
        "while the server moves the ingest's journal",
    )?;
    let t = Instant::now();
    let waiting = || -> anyhow::Result<i64> {
        let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(c.query_row(
            "SELECT COALESCE((SELECT MAX(seq) FROM value_journal) - (SELECT MIN(seq) FROM value_journal) + 1, 0)",
            [],
            |r| r.get(0),
        )?)
    };
    let until = t + Duration::from_secs(config.store.history_flush_age_s + 900);
    while waiting()? > 0 {
        if Instant::now() > until {
            bail!("the server did not empty its value journal");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    println!(
        "web: the server emptied its value journal {:.0} s after the first round",
        t.elapsed().as_secs_f64()
    );
    // The server has closed the idle keep-alive connection meanwhile.
    let mut client = Client::connect(http)?;
    latency(&mut client, &pages, &cookie, b.requests, "with the journal empty")?;
    Ok(())
}

/// One round over the pages: p50, p99 and max of each, after a tenth as
/// many untimed warm-up requests.
fn latency(
    client: &mut Client,
    pages: &[(&str, String)],
    cookie: &str,
    requests: usize,
    when: &str,
) -> anyhow::Result<()> {
    println!("web: latency {when}, {requests} requests each, one keep-alive connection on loopback:");
    for (name, target) in pages {
        let mut times = Vec::with_capacity(requests);
        for i in 0..requests + requests / 10 {
            let t = Instant::now();
            let (status, len) = client.get(target, cookie)?;
            let took = t.elapsed();
            if status != 200 {
                bail!("{name}: GET {target} answered {status}");
            }
            if i >= requests / 10 {
                times.push(took);
            }
            if len == 0 {
                bail!("{name}: empty body");
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        let p99 = at(0.99);
        println!(
            "web: {name:<40} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  (goal p99 ≤ 30 ms: {})",
            ms(at(0.5)),
            ms(p99),
            ms(times[times.len() - 1]),
            if p99 <= Duration::from_millis(30) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn endpoint(i: u64) -> String {
    format!("bench-{i:07}")
}

/// (devices, values) of a store this benchmark built, if it is one.
fn populated(db: &Path) -> anyhow::Result<Option<(u64, u64)>> {
    if !db.exists() {
        return Ok(None);
    }
    let s = Store::open(db)?;
    let v: Option<String> = s
        .connection()
        .query_row("SELECT value FROM bench_population", [], |r| r.get(0))
        .ok();
    Ok(v.and_then(|v| {
        let (d, n) = v.split_once(' ')?;
        Some((d.parse().ok()?, n.parse().ok()?))
    }))
}

/// Bulk-load the fleet with SQL (the indexes of the history are built after
/// the rows, which is how a large import should run).
fn populate(db: &Path, devices: u64, values: u64) -> anyhow::Result<()> {
    let busy = BUSY_DEVICES.min(devices);
    let busy_total = busy * BUSY_VALUES;
    if values < busy_total + devices {
        bail!(
            "--values must be at least {} for {devices} devices",
            busy_total + devices
        );
    }
    // Everyone else shares the rest, alternating two sensors over the week.
    let per_device = (values - busy_total) / devices;
    let extra = (values - busy_total) % devices;
    let s = Store::open(db)?;
    let c = s.connection();
    c.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -2000000; PRAGMA temp_store = MEMORY;")?;
    let now = now_ms();
    let step = |label: &str, sql: &str| -> anyhow::Result<()> {
        let t = Instant::now();
        let all: [(&str, i64); 7] = [
            (":devices", devices as i64),
            (":now", now),
            (":week", WEEK_MS),
            (":busy_values", BUSY_VALUES as i64),
            (":busy", busy as i64),
            (":per", per_device as i64),
            (":extra", extra as i64),
        ];
        // Each statement binds only the names it uses (":busy" is a prefix
        // of ":busy_values", hence the word-boundary check).
        let used: Vec<(&str, &dyn rusqlite::ToSql)> = all
            .iter()
            .filter(|(name, _)| {
                sql.match_indices(name)
                    .any(|(at, _)| !sql[at + name.len()..].starts_with(|ch: char| ch == '_' || ch.is_alphanumeric()))
            })
            .map(|(name, v)| (*name, v as &dyn rusqlite::ToSql))
            .collect();
        let n = c.execute(sql, used.as_slice()).with_context(|| label.to_string())?;
        eprintln!("web: {label}: {n} rows in {:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    };
    c.execute_batch("BEGIN")?;
    step(
        "devices",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :devices)
         INSERT INTO devices (id, endpoint, psk_identity, tags, created_at, endpoint_order)
         SELECT i, printf('bench-%07d', i), printf('bench-%07d', i),
                CASE i % 4 WHEN 0 THEN 'north' WHEN 1 THEN 'south' WHEN 2 THEN 'east,pilot' ELSE 'west' END,
                :now - :week - (:devices - i) * 10,
                -- display::natural_key of the endpoint: its one run of digits
                printf('bench-%02d%d', length(i), i)
         FROM n",
    )?;
    // A third in queue mode; last seen spread over two hours with a one-hour
    // lifetime, so some are offline.
    step(
        "registrations",
        "INSERT INTO registrations (device_id, reg_id, peer, lifetime, version, binding, queue_mode, sms,
                                    object_links, root_path, announced_format, registered_at, updated_at, last_seen)
         SELECT id, printf('%016x', id), printf('10.%d.%d.%d:5683', (id >> 16) & 255, (id >> 8) & 255, id & 255),
                3600, '1.1', CASE WHEN id % 3 = 0 THEN 'UQ' ELSE 'U' END, id % 3 = 0, NULL,
                '</1/0>,</3/0>,</3303/0>,</3304/0>', '', 112, :now - 86400000,
                :now - (id * 7919 % 7200) * 1000, :now - (id * 7919 % 7200) * 1000
         FROM devices",
    )?;
    step(
        "last seen",
        "UPDATE devices SET last_seen = (SELECT last_seen FROM registrations WHERE device_id = devices.id)",
    )?;
    step(
        "latest values",
        "INSERT INTO latest_values (device_id, path, ts, vtype, value)
         SELECT id, '/3/0/3', :now - 3600000, 'string', 'v1.' || (id % 5) FROM devices
         UNION ALL SELECT id, '/3/0/9', :now - 3600000, 'integer', id % 101 FROM devices
         UNION ALL SELECT id, '/3303/0/5700', :now - 60000, 'float', 20.0 + (id % 100) / 10.0 FROM devices
         UNION ALL SELECT id, '/3304/0/5700', :now - 60000, 'float', 40.0 + (id % 200) / 10.0 FROM devices",
    )?;
    step(
        "history of the busy devices",
        "WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < :busy_values)
         INSERT INTO value_history (device_id, path, ts, seq, vtype, value)
         SELECT d.id, '/3303/0/5700', :now - :week + k.j * 60000, d.id * 20000 + k.j, 'float',
                20.0 + ((d.id * 31 + k.j) % 120) / 10.0
         FROM devices d, k WHERE d.id <= :busy",
    )?;
    step(
        "history of the fleet",
        "WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < :per + 1)
         INSERT INTO value_history (device_id, path, ts, seq, vtype, value)
         SELECT d.id, CASE k.j % 2 WHEN 0 THEN '/3303/0/5700' ELSE '/3304/0/5700' END,
                :now - :week + k.j * (:week / (:per + 1)) + d.id % 60000, d.id * 20000 + 10080 + k.j, 'float',
                20.0 + ((d.id * 17 + k.j * 7) % 200) / 10.0
         FROM devices d, k WHERE k.j < :per OR d.id <= :extra",
    )?;
    c.execute_batch("COMMIT")?;
    for (label, sql) in [
        (
            "journal numbering after the history's",
            format!(
                "UPDATE sqlite_sequence SET seq = {} WHERE name = 'value_journal'",
                (devices + 1) * 20_000
            )
            .as_str(),
        ),
        (
            "hourly counts",
            "INSERT INTO values_per_hour (hour, count) SELECT ts / 3600000 * 3600000, COUNT(*) FROM value_history GROUP BY 1",
        ),
        ("statistics", "ANALYZE"),
    ] {
        let t = Instant::now();
        c.execute_batch(sql).with_context(|| label.to_string())?;
        eprintln!("web: {label} in {:.1} s", t.elapsed().as_secs_f64());
    }
    c.execute_batch(&format!(
        "CREATE TABLE bench_population (value TEXT); INSERT INTO bench_population VALUES ('{devices} {values}');"
    ))?;
    Ok(())
}

/// Notifications of four values each from random devices, through the
/// server's store writer, for `seconds`, in windows of ten seconds that end
/// with everything sent committed. Values first go to the journal and move
/// into the history per device after `store.history_flush_age_s` at most,
/// so only the windows after that show the sustained rate; a shorter run
/// reports the journal's rate alone and says so.
fn ingest(db: &Path, config: &Config, devices: u64, seconds: u64) -> anyhow::Result<()> {
    let settings = WriterSettings::of(&config.store);
    let writer: WriterHandle<String> = WriterHandle::start(Store::open(db)?, settings);
    let books = writer.pending();
    let paths: Vec<_> = ["/3303/0/5700", "/3304/0/5700", "/3/0/9", "/3303/0/5601"]
        .iter()
        .map(|p| p.parse().expect("static path"))
        .collect();
    const WINDOW: Duration = Duration::from_secs(10);
    let start = Instant::now();
    let steady_after = Duration::from_millis(settings.history.flush_age_ms as u64);
    let (mut sent, mut steady) = (0u64, (0u64, Duration::ZERO));
    while start.elapsed() < Duration::from_secs(seconds) {
        let window = Instant::now();
        let mut n = 0u64;
        while window.elapsed() < WINDOW && start.elapsed() < Duration::from_secs(seconds) {
            for _ in 0..1000 {
                let i = fastrand::u64(1..=devices);
                writer.send(Command::Event(ServerEvent::ValuesReported {
                    endpoint: endpoint(i),
                    source: Source::Notification,
                    records: paths
                        .iter()
                        .map(|p| Record {
                            path: *p,
                            value: Value::Float(20.0 + (i % 100) as f64 / 10.0),
                            time: None,
                        })
                        .collect(),
                    received_ms: 0,
                }));
                n += paths.len() as u64;
            }
        }
        writer.flush();
        let took = window.elapsed();
        sent += n;
        let waiting = books.lock().expect("journal books").waiting();
        println!(
            "web: ingest at {:>4.0} s: {:>7.0} values/s, {waiting} values in the journal",
            start.elapsed().as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        if window.duration_since(start) >= steady_after {
            steady = (steady.0 + n, steady.1 + took);
        }
    }
    let took = start.elapsed();
    writer.close();
    println!(
        "web: ingest {sent} values from random devices of {devices} in {:.1} s: {:.0} values/s committed",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64()
    );
    if steady.0 == 0 {
        println!(
            "web: ingest sustained: not reached; run longer than store.history_flush_age_s ({} s) to include moving values into the history",
            steady_after.as_secs()
        );
    } else {
        let rate = steady.0 as f64 / steady.1.as_secs_f64();
        println!(
            "web: ingest sustained (after {} s, while values move into the history): {rate:.0} values/s (goal ≥ 100000: {})",
            steady_after.as_secs(),
            if rate >= 100_000.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 client: one request at a time, as a browser tab.
struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            addr,
            reader: BufReader::new(s),
        })
    }

    /// GET `target`: (status, body length). Bodies are read whole.
    fn get(&mut self, target: &str, cookie: &str) -> anyhow::Result<(u16, usize)> {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n",
            self.addr
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let n = length.context("no Content-Length")?;
        let mut body = vec![0; n];
        self.reader.read_exact(&mut body)?;
        Ok((status, n))
    }
}
