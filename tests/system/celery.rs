//! Celery over Redis (issue 26) with the real parts: Debian's
//! `redis-server` on a Unix socket in the test's directory, a Python
//! Celery 5 worker from the test venv (`tests/celery/worker.py`), and
//! Eclipse Wakaama's client beside a simulated device.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flownexus::app;
use flownexus::lwm2m::operation::{OperationKind, OperationState, WriteValue};
use serde_json::Value;

use super::{config, device, fleet, run_op, store, wait_for};

/// A `redis-server` of the test's own, on a Unix socket (no port to
/// collide with another test), no persistence.
pub(super) struct Redis {
    child: Child,
    pub(super) socket: PathBuf,
}

impl Redis {
    pub(super) fn start(dir: &Path) -> Redis {
        Redis::launch(dir, "no")
    }

    /// With an append-only file synced on every write, so a kill -9 loses
    /// nothing Redis acknowledged (the Quadlet unit syncs every second).
    fn start_durable(dir: &Path) -> Redis {
        Redis::launch(dir, "yes")
    }

    fn launch(dir: &Path, aof: &str) -> Redis {
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocketperm", "700", "--save", ""])
            .args(["--appendonly", aof, "--appendfsync", "always"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server; `make test` installs it)");
        let r = Redis { child, socket };
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while !r.ping() {
            assert!(std::time::Instant::now() < until, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub(super) fn ping(&self) -> bool {
        Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .arg("ping")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    /// The URL flownexus takes.
    pub(super) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python Celery worker running `tests/celery/worker.py`, recording
/// every task it ran to `record`.
pub(super) struct Worker {
    child: Child,
    pub(super) record: PathBuf,
}

impl Worker {
    pub(super) fn start(redis: &Redis, dir: &Path) -> Worker {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let celery = root.join(".venv/bin/celery");
        assert!(
            celery.exists(),
            "Celery is not installed: run `make deps` (the venv from tests/requirements.txt)"
        );
        let record = dir.join("tasks.jsonl");
        let log = std::fs::File::create(dir.join("worker.log")).unwrap();
        let child = Command::new(celery)
            .args(["-A", "worker", "worker", "-P", "solo", "-Q", "celery", "-l", "info"])
            .args(["--without-gossip", "--without-mingle", "--without-heartbeat"])
            .current_dir(root.join("tests/celery"))
            .env("FNX_BROKER", format!("redis+socket://{}", redis.socket.display()))
            .env("FNX_RECORD", &record)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker { child, record }
    }

    /// The tasks run so far: (name, keyword arguments).
    pub(super) fn tasks(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| (v["task"].as_str().unwrap_or("").to_string(), v["kwargs"].clone()))
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event kind of a device's life reaches a Python worker as the
/// Celery task it names, with the event's fields as keyword arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_receives_the_fleets_events() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let worker = Worker::start(&redis, dir.path());
    let mut c = config(dir.path());
    c.events.celery.broker = Some(redis.url());
    let running = app::start(c).await.unwrap();
    super::without_onboarding(dir.path());

    // A real client registers, is read and written; a simulated one
    // updates often and notifies.
    let real = super::wakaama::wakaama("wakaama-udp").map(|bin| {
        super::wakaama::Client::start(
            &bin,
            running.coap_addr.unwrap(),
            "urn:wakaama:celery",
            None,
            dir.path().join("wakaama.log"),
        )
    });
    let mut sim = device("urn:sim:celery");
    sim.update_interval = Duration::from_secs(1);
    let f = fleet(&running, vec![sim]).await;
    let mut clients = vec!["urn:sim:celery"];
    if real.is_some() {
        clients.push("urn:wakaama:celery");
    }
    let s = store(dir.path());
    wait_for("the registrations", Duration::from_secs(20), || {
        let regs = s.registrations().unwrap();
        clients.iter().all(|c| regs.iter().any(|r| r.endpoint == *c))
    })
    .await;
    for ep in &clients {
        let read = run_op(
            dir.path(),
            ep,
            OperationKind::Read {
                path: "/3/0/0".parse().unwrap(),
            },
        )
        .await;
        assert_eq!(read.state, OperationState::Succeeded, "{ep}");
        // The server's lifetime (Core §5.1.2): a client updates its
        // registration after it changes.
        let write = run_op(
            dir.path(),
            ep,
            OperationKind::Write {
                path: "/1/0/1".parse().unwrap(),
                values: vec![WriteValue {
                    path: "/1/0/1".parse().unwrap(),
                    value: "90".into(),
                }],
                replace: None,
            },
        )
        .await;
        assert_eq!(write.state, OperationState::Succeeded, "{ep}: {:?}", write.result);
    }
    let observe = run_op(
        dir.path(),
        "urn:sim:celery",
        OperationKind::Observe {
            path: "/3303/0/5700".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(observe.state, OperationState::Succeeded);
    let seen = |task: &str, ep: &str, check: &dyn Fn(&Value) -> bool| {
        worker
            .tasks()
            .iter()
            .any(|(t, k)| t == task && k["endpoint"] == ep && check(k))
    };
    wait_for(
        "the simulated device's updates and notifications",
        Duration::from_secs(30),
        || {
            seen("flownexus.device_updated", "urn:sim:celery", &|k| {
                k["lifetime"].is_u64()
            }) && seen("flownexus.values_reported", "urn:sim:celery", &|k| {
                k["source"] == "notification" && k["values"][0]["display"].as_str().is_some_and(|d| d.ends_with("°C"))
            })
        },
    )
    .await;
    // The ends of registrations: a de-registration each.
    drop(real);
    f.stop().await;

    for ep in &clients {
        wait_for(&format!("{ep}'s events in the worker"), Duration::from_secs(30), || {
            seen("flownexus.device_registered", ep, &|k| {
                k["lifetime"].as_u64().is_some() && k["registration"].is_string()
            }) && seen("flownexus.operation_finished", ep, &|k| {
                k["kind"] == "read" && k["state"] == "succeeded" && k["code"] == "2.05"
            }) && seen("flownexus.operation_finished", ep, &|k| {
                k["kind"] == "write" && k["request"]["values"][0]["value"] == "90"
            }) && seen("flownexus.values_reported", ep, &|k| {
                k["source"] == "read" && k["values"][0]["path"] == "/3/0/0" && k["values"][0]["display"].is_string()
            }) && seen("flownexus.device_deregistered", ep, &|_| true)
        })
        .await;
    }
    // Every task carries an event id, unique, and the time.
    let tasks = worker.tasks();
    let ids: std::collections::HashSet<&str> = tasks.iter().filter_map(|(_, k)| k["event_id"].as_str()).collect();
    assert_eq!(ids.len(), tasks.len(), "one event id per event");
    assert!(tasks.iter().all(|(_, k)| k["time_ms"].as_i64().is_some_and(|t| t > 0)));
    // Once taken, nothing waits in the outbox.
    running.flush().await;
    wait_for("an empty outbox", Duration::from_secs(10), || {
        s.outbox_backlog("celery").unwrap() == 0
    })
    .await;
    running.stop().await;
}

/// A broker that is not there at start: the server starts (degraded, not
/// down), keeps the events in its outbox, and delivers them in order once
/// Redis comes; a bad broker URL stops start-up naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_outbox_until_the_broker_comes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = config(dir.path());
    bad.events.celery.broker = Some("amqp://guest@localhost//".into());
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.contains("events.celery.broker") && err.contains("redis://"),
        "{err}"
    );

    let socket_dir = dir.path().join("later");
    std::fs::create_dir_all(&socket_dir).unwrap();
    let mut c = config(dir.path());
    c.events.celery.broker = Some(format!("redis+unix://{}", socket_dir.join("redis.sock").display()));
    c.health.probe_interval_s = 1;
    let running = app::start(c).await.expect("starts without its broker");
    super::without_onboarding(dir.path());
    let health = |running: &app::Running| {
        let addr = running.http_addr.unwrap();
        async move {
            let r = super::web::http(addr, "GET", "/healthz", &[], b"").await;
            let v = r.json();
            (
                r.status,
                v["status"].as_str().unwrap_or("").to_string(),
                v["components"]["celery"].clone(),
            )
        }
    };
    let devices: Vec<_> = (0..5).map(|i| device(&format!("urn:sim:wait-{i}"))).collect();
    let f = fleet(&running, devices).await;
    let s = store(dir.path());
    wait_for("registrations kept in the outbox", Duration::from_secs(20), || {
        s.outbox_backlog("celery").unwrap() >= 5
    })
    .await;
    wait_for("celery degraded in /healthz", Duration::from_secs(20), || {
        let (status, overall, celery) = futures_now(health(&running));
        status == 200 && overall == "degraded" && celery == "degraded"
    })
    .await;

    // Redis comes; so does the worker: everything waiting arrives, each
    // device's events in the order they happened.
    let redis = Redis::start(&socket_dir);
    let worker = Worker::start(&redis, dir.path());
    wait_for(
        "the waiting registrations in the worker",
        Duration::from_secs(30),
        || {
            let tasks = worker.tasks();
            (0..5).all(|i| {
                tasks
                    .iter()
                    .any(|(t, k)| t == "flownexus.device_registered" && k["endpoint"] == format!("urn:sim:wait-{i}"))
            })
        },
    )
    .await;
    f.stop().await;
    wait_for("the de-registrations after them", Duration::from_secs(30), || {
        let tasks = worker.tasks();
        (0..5).all(|i| {
            let ep = format!("urn:sim:wait-{i}");
            let mine: Vec<&str> = tasks
                .iter()
                .filter(|(_, k)| k["endpoint"] == ep)
                .map(|(t, _)| t.as_str())
                .collect();
            mine.first() == Some(&"flownexus.device_registered")
                && mine.last() == Some(&"flownexus.device_deregistered")
        })
    })
    .await;
    wait_for("celery ok again", Duration::from_secs(20), || {
        let (_, overall, celery) = futures_now(health(&running));
        overall == "ok" && celery == "ok"
    })
    .await;
    running.stop().await;
}

/// Runs a future to completion from a synchronous `wait_for` check.
fn futures_now<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Runs `tests/celery/producer.py` with `tasks` (a JSON list of
/// `{name, args, kwargs}`); each task's outcome as `get()` gave it.
fn produce(socket: &Path, tasks: &Value) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/celery/producer.py"))
        .env("FNX_BROKER", format!("redis+socket://{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(tasks.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Python producer drives a device through read, write, execute,
/// observe, cancel-observe and a firmware update with `send_task`, and
/// `AsyncResult.get()` returns each value or raises naming what failed;
/// unknown tasks, bad arguments and unknown devices fail the same way,
/// and a task taken twice makes one operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_drives_a_device_and_reads_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut c = config(dir.path());
    c.events.celery.broker = Some(redis.url());
    let running = app::start(c).await.unwrap();
    super::without_onboarding(dir.path());
    let mut d = device("urn:sim:driven");
    d.fw_ca = Some(dir.path().join("fw-tls/ca.pem"));
    let _f = fleet(&running, vec![d]).await;
    let s = store(dir.path());
    wait_for("the registration", Duration::from_secs(20), || {
        s.registrations()
            .unwrap()
            .iter()
            .any(|r| r.endpoint == "urn:sim:driven")
    })
    .await;
    // An image for the update (MCUboot header, version 2.0.0).
    let mut image = 0x96f3_b83du32.to_le_bytes().to_vec();
    image.extend((0..8192u32).map(|i| (i % 251) as u8));
    image[20..28].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    let file = dir.path().join("app-2.bin");
    std::fs::write(&file, &image).unwrap();
    let (ok, _, err) = super::flownexus_cli(
        dir.path().to_str().unwrap(),
        &["firmware", "add", file.to_str().unwrap()],
        "",
    );
    assert!(ok, "{err}");

    let ep = "urn:sim:driven";
    let results = tokio::task::spawn_blocking({
        let tasks = serde_json::json!([
            { "name": "flownexus.read", "args": [ep, "/3/0/0"] },
            { "name": "flownexus.read", "args": [ep, "/3/0"] },
            { "name": "flownexus.write", "args": [ep, "/1/0/1"], "kwargs": { "value": 90 } },
            { "name": "flownexus.execute", "args": [ep, "/3303/0/5605"] },
            { "name": "flownexus.observe", "args": [ep, "/3303/0/5700"] },
            { "name": "flownexus.cancel_observe", "args": [ep, "/3303/0/5700"] },
            { "name": "flownexus.read", "args": [ep, "/9999/0/0"] },
            { "name": "flownexus.read", "args": ["urn:nobody", "/3/0/0"] },
            { "name": "flownexus.reboot", "args": [ep] },
            { "name": "flownexus.read", "args": [ep, "not a path"] },
            { "name": "flownexus.update_firmware", "args": [ep, "app-2.bin"] },
        ]);
        let socket = redis.socket.clone();
        move || produce(&socket, &tasks)
    })
    .await
    .unwrap();
    let said = serde_json::to_string_pretty(&results).unwrap();
    let ok = |i: usize| {
        assert_eq!(results[i]["ok"], true, "task {i}: {said}");
        results[i]["result"].clone()
    };
    let failed = |i: usize, words: &[&str]| {
        assert_eq!(results[i]["ok"], false, "task {i}: {said}");
        let e = results[i]["error"].as_str().unwrap();
        assert!(e.starts_with("RuntimeError: "), "{e}");
        for w in words {
            assert!(e.contains(w), "task {i}: {w} in {e}");
        }
    };
    assert!(ok(0).is_string(), "a resource's value: {said}");
    let object = ok(1);
    assert_eq!(object["code"], "2.05");
    assert!(object["values"]["/3/0/0"].is_string(), "{object}");
    assert_eq!(ok(2)["code"], "2.04");
    assert_eq!(ok(3)["code"], "2.04");
    assert_eq!(ok(4)["code"], "2.05");
    assert!(ok(5)["code"].is_string());
    failed(6, &["urn:sim:driven", "read /9999/0/0"]);
    failed(7, &["urn:nobody"]);
    failed(8, &["unknown task \"flownexus.reboot\""]);
    failed(9, &["\"not a path\" is not an LwM2M path"]);
    assert_eq!(ok(10)["phase"], "succeeded", "{said}");
    // One operation per task that asked for one, each under its task's id.
    let by_task = || -> i64 {
        s.connection()
            .query_row(
                "SELECT COUNT(*) FROM operations WHERE celery_task_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(by_task(), 7);

    // The same task delivered twice (as after a crash between committing
    // and acknowledging it): one operation, one result.
    let again = flownexus::celery::message::Task {
        name: "flownexus.read",
        id: "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3",
        queue: "flownexus",
        args: vec![serde_json::json!(ep), serde_json::json!("/3/0/1")],
        kwargs: serde_json::Map::new(),
        origin: "test@host",
        ignore_result: false,
    }
    .encode();
    for _ in 0..2 {
        let pushed = Command::new("redis-cli")
            .arg("-s")
            .arg(&redis.socket)
            .args(["LPUSH", "flownexus", &again])
            .output()
            .unwrap();
        assert!(pushed.status.success());
    }
    let result = |socket: &Path| {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(["GET", "celery-task-meta-0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()
    };
    wait_for("the twice-sent task's result", Duration::from_secs(20), || {
        result(&redis.socket)["status"] == "SUCCESS"
    })
    .await;
    assert_eq!(result(&redis.socket)["result"], "nRF9160-SIM");
    let waiting = |list: &str| {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&redis.socket)
            .args(["LLEN", list])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_for("both copies taken and acknowledged", Duration::from_secs(20), || {
        waiting("flownexus") == "0" && waiting("flownexus.processing") == "0"
    })
    .await;
    assert_eq!(by_task(), 8, "one operation for the task taken twice");
    running.stop().await;
}

/// A request's headers (names lower-cased) and body.
type Received = (std::collections::HashMap<String, String>, String);

/// A webhook receiver: answers each POST 200, or 503 while `refuse` is
/// set, and records the ones it took.
struct Receiver {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    async fn start() -> Receiver {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, r) = (seen.clone(), refuse.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = std::collections::HashMap::new();
                        loop {
                            let mut h = String::new();
                            read.read_line(&mut h).await.unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap();
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                        let n: usize = headers["content-length"].parse().unwrap();
                        let mut body = vec![0; n];
                        read.read_exact(&mut body).await.unwrap();
                        let refused = r.load(std::sync::atomic::Ordering::SeqCst);
                        let answer: &[u8] = if refused {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            s.lock().unwrap().push((headers, String::from_utf8(body).unwrap()));
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                        };
                        write.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        Receiver { addr, seen, refuse }
    }
}

/// Webhooks: one JSON POST per event, signed with the key generated on
/// first run (mode 0600), filtered per receiver; a receiver that answers
/// 503 gets the same events again, in order, once it takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_receive_signed_events_and_retries_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let all = Receiver::start().await;
    let registrations = Receiver::start().await;
    let mut c = config(dir.path());
    c.events.webhooks = vec![
        flownexus::config::WebhookConfig {
            url: format!("http://{}/hooks/fleet?x=1", all.addr),
            kinds: vec![],
        },
        flownexus::config::WebhookConfig {
            url: format!("http://{}/reg", registrations.addr),
            kinds: vec!["device_registered".into()],
        },
    ];
    all.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let running = app::start(c).await.unwrap();
    super::without_onboarding(dir.path());
    let secret_file = dir.path().join("webhook-secret.key");
    assert_eq!(super::deploy::mode(&secret_file), 0o600);
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &flownexus::secret::load_or_create(&secret_file, "events.webhook_secret_file").unwrap(),
    );
    let f = fleet(&running, (0..3).map(|i| device(&format!("urn:sim:hook-{i}"))).collect()).await;
    // The filtered receiver takes its kind at once; the refusing one none.
    wait_for(
        "three registrations at the filtered receiver",
        Duration::from_secs(20),
        || registrations.seen.lock().unwrap().len() == 3,
    )
    .await;
    assert!(all.seen.lock().unwrap().is_empty());
    let s = store(dir.path());
    assert!(
        s.outbox_backlog("webhook-1").unwrap() >= 3,
        "kept for the receiver that refused"
    );
    all.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    f.stop().await;
    wait_for(
        "every event at the receiver that refused",
        Duration::from_secs(30),
        || {
            let seen = all.seen.lock().unwrap();
            (0..3).all(|i| {
                let ep = format!("urn:sim:hook-{i}");
                let mine: Vec<String> = seen
                    .iter()
                    .filter_map(|(_, b)| serde_json::from_str::<Value>(b).ok())
                    .filter(|b| b["endpoint"] == ep)
                    .map(|b| b["kind"].as_str().unwrap_or("").to_string())
                    .collect();
                mine.first().map(String::as_str) == Some("device_registered")
                    && mine.last().map(String::as_str) == Some("device_deregistered")
            })
        },
    )
    .await;
    for (headers, body) in all
        .seen
        .lock()
        .unwrap()
        .iter()
        .chain(registrations.seen.lock().unwrap().iter())
    {
        let expected = {
            let tag = ring::hmac::sign(&key, body.as_bytes());
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256={hex}")
        };
        assert_eq!(headers["x-flownexus-signature"], expected, "{body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(headers["x-flownexus-event"], v["kind"].as_str().unwrap());
        assert_eq!(headers["x-flownexus-event-id"], v["event_id"].as_str().unwrap());
        assert_eq!(headers["content-type"], "application/json");
    }
    assert!(
        registrations
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|(_, b)| b.contains("\"kind\":\"device_registered\""))
    );
    running.stop().await;
}

/// flownexus killed with SIGKILL while it takes tasks, then started again:
/// every task pushed has exactly one operation and a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_taking_tasks_loses_none_and_doubles_none() {
    use redis::Commands;
    let dir = tempfile::tempdir().unwrap();
    let redis_server = Redis::start(dir.path());
    let url = redis_server.url();
    let server = super::Restartable::new(dir.path());
    // One producer sends them all at once: above the default limit.
    let env = [
        ("FLOWNEXUS_EVENTS_CELERY_BROKER", url.as_str()),
        ("FLOWNEXUS_EVENTS_CELERY_TASKS_PER_PRODUCER_PER_S", "100000"),
    ];
    let child = server.serve_up_with(&env).await;
    super::without_onboarding(dir.path());
    let devices: Vec<_> = (0..10).map(|i| device(&format!("urn:sim:kill-{i}"))).collect();
    let _f = flownexus::sim::Fleet::spawn(
        devices,
        server.coap,
        std::sync::Arc::new(flownexus::lwm2m::model::Models::embedded()),
        false,
    )
    .await
    .unwrap();
    let s = store(dir.path());
    wait_for("the registrations", Duration::from_secs(20), || {
        s.registrations().unwrap().len() == 10
    })
    .await;

    // 2,000 reads, pushed at once as a producer's send_task would: enough
    // that the kill, after the first 30 are taken, comes mid-way.
    let n = 2000;
    let ids: Vec<String> = (0..n).map(|i| format!("kill-task-{i:04}")).collect();
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let task = flownexus::celery::message::Task {
            name: "flownexus.read",
            id,
            queue: "flownexus",
            args: vec![
                serde_json::json!(format!("urn:sim:kill-{}", i % 10)),
                serde_json::json!("/3/0/9"),
            ],
            kwargs: serde_json::Map::new(),
            origin: "kill@test",
            ignore_result: false,
        };
        let _: i64 = redis.lpush("flownexus", task.encode()).unwrap();
    }
    // (Pushed before the kill; the restarted server finds the rest.)
    let by_task = |s: &flownexus::store::Store| -> i64 {
        s.connection()
            .query_row(
                "SELECT COUNT(*) FROM operations WHERE celery_task_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Killed in the middle of taking them.
    wait_for("some tasks taken", Duration::from_secs(30), || by_task(&s) >= 30).await;
    drop(child);
    let taken_before = by_task(&s);
    assert!(
        taken_before < n,
        "the kill came too late to mean anything ({taken_before} taken)"
    );
    let _child = server.serve_with(&env);
    let results = |redis: &mut redis::Connection| -> Vec<Value> {
        ids.iter()
            .map(|id| {
                let raw: Option<String> = redis.get(format!("celery-task-meta-{id}")).unwrap();
                raw.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or(Value::Null)
            })
            .collect()
    };
    wait_for("every task's result", Duration::from_secs(120), || {
        results(&mut redis).iter().all(|r| !r.is_null())
    })
    .await;
    let failed: Vec<Value> = results(&mut redis)
        .into_iter()
        .filter(|r| r["status"] != "SUCCESS")
        .collect();
    assert!(failed.is_empty(), "{} failed, e.g. {:?}", failed.len(), failed.first());
    assert!(
        results(&mut redis).iter().all(|r| r["result"] == 87),
        "the battery level each read"
    );
    let counts: Vec<(String, i64)> = s
        .connection()
        .prepare(
            "SELECT celery_task_id, COUNT(*) FROM operations WHERE celery_task_id IS NOT NULL GROUP BY celery_task_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(counts.len(), n as usize, "one operation per task");
    assert!(counts.iter().all(|(_, c)| *c == 1));
    let left: i64 = redis.llen("flownexus").unwrap();
    let processing: i64 = redis.llen("flownexus.processing").unwrap();
    assert_eq!((left, processing), (0, 0), "every task acknowledged");
}

/// One producer over `events.celery.tasks_per_producer_per_s` gets its
/// surplus refused, each with a failure saying so; another producer is
/// not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_rate_is_refused_and_told_why() {
    use redis::Commands;
    let dir = tempfile::tempdir().unwrap();
    let redis_server = Redis::start(dir.path());
    let mut c = config(dir.path());
    c.events.celery.broker = Some(redis_server.url());
    c.events.celery.tasks_per_producer_per_s = 5;
    let running = app::start(c).await.unwrap();
    super::without_onboarding(dir.path());
    let _f = fleet(&running, vec![device("urn:sim:rate")]).await;
    let s = store(dir.path());
    wait_for("the registration", Duration::from_secs(20), || {
        s.registrations().unwrap().len() == 1
    })
    .await;
    let mut redis = redis::Client::open(redis_server.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let push = |redis: &mut redis::Connection, origin: &str, id: &str| {
        let task = flownexus::celery::message::Task {
            name: "flownexus.read",
            id,
            queue: "flownexus",
            args: vec![serde_json::json!("urn:sim:rate"), serde_json::json!("/3/0/9")],
            kwargs: serde_json::Map::new(),
            origin,
            ignore_result: false,
        };
        let _: i64 = redis.lpush("flownexus", task.encode()).unwrap();
    };
    for i in 0..40 {
        push(&mut redis, "eager@host", &format!("eager-{i}"));
    }
    push(&mut redis, "calm@host", "calm-0");
    let status = |redis: &mut redis::Connection, id: &str| -> Value {
        let raw: Option<String> = redis.get(format!("celery-task-meta-{id}")).unwrap();
        raw.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or(Value::Null)
    };
    wait_for("every result", Duration::from_secs(30), || {
        (0..40).all(|i| !status(&mut redis, &format!("eager-{i}")).is_null()) && !status(&mut redis, "calm-0").is_null()
    })
    .await;
    let eager: Vec<Value> = (0..40).map(|i| status(&mut redis, &format!("eager-{i}"))).collect();
    let refused = eager
        .iter()
        .filter(|r| {
            r["status"] == "FAILURE"
                && r["result"]["exc_message"][0]
                    .as_str()
                    .is_some_and(|m| m.contains("over this producer's limit"))
        })
        .count();
    let answered = eager.iter().filter(|r| r["status"] == "SUCCESS").count();
    assert!(
        answered >= 5 && refused >= 1 && answered + refused == 40,
        "{answered} answered, {refused} refused"
    );
    assert_eq!(
        status(&mut redis, "calm-0")["status"],
        "SUCCESS",
        "another producer is not held back"
    );
    running.stop().await;
}

/// Redis killed with SIGKILL and started again while 1,000 simulated
/// devices report values: the health report shows `celery` degraded while
/// it is down and ok after; every registration and de-registration reaches
/// the queue, and each device's events are in the order they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_loses_no_state_event_and_reorders_none() {
    use redis::Commands;
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis_server = Redis::start_durable(&redis_dir);
    let url = redis_server.url();
    let mut c = config(dir.path());
    c.events.celery.broker = Some(url.clone());
    c.health.probe_interval_s = 1;
    let running = app::start(c).await.unwrap();
    super::without_onboarding(dir.path());
    let n = 1000;
    let devices: Vec<_> = (0..n)
        .map(|i| {
            let mut d = device(&format!("urn:sim:storm-{i:04}"));
            d.send_interval = Some(Duration::from_secs(1));
            d.update_interval = Duration::from_secs(3);
            d
        })
        .collect();
    let f = fleet(&running, devices).await;
    let s = store(dir.path());
    wait_for("1,000 registrations", Duration::from_secs(60), || {
        s.registrations().unwrap().len() == n
    })
    .await;
    let celery = |running: &app::Running| {
        let addr = running.http_addr.unwrap();
        async move { super::web::http(addr, "GET", "/healthz", &[], b"").await.json()["components"]["celery"].clone() }
    };
    let queued = |url: &str| -> i64 {
        let mut r = redis::Client::open(url).unwrap().get_connection().unwrap();
        r.llen("celery").unwrap()
    };
    wait_for("values flowing to Redis", Duration::from_secs(30), || {
        queued(&url) > 2 * n as i64
    })
    .await;

    // SIGKILL, a few seconds down, then back on the same data.
    drop(redis_server);
    wait_for("celery degraded", Duration::from_secs(20), || {
        futures_now(celery(&running)) == "degraded"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis_server = Redis::start_durable(&redis_dir);
    wait_for("celery ok again", Duration::from_secs(30), || {
        futures_now(celery(&running)) == "ok"
    })
    .await;
    f.stop().await;
    running.flush().await;
    wait_for("the outbox drained", Duration::from_secs(60), || {
        s.outbox_backlog("celery").unwrap() == 0
    })
    .await;

    // The queue, oldest first (LPUSH puts the newest at the head), each
    // event once (a batch Redis took just before it died may come again).
    let mut r = redis::Client::open(redis_server.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let raw: Vec<Vec<u8>> = r.lrange("celery", 0, -1).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut per_device: std::collections::HashMap<String, Vec<(String, i64)>> = Default::default();
    for m in raw.iter().rev() {
        let task = flownexus::celery::message::decode(m).unwrap();
        if !seen.insert(task.id.clone()) {
            continue;
        }
        let Some(ep) = task.kwargs["endpoint"].as_str() else {
            continue;
        };
        per_device
            .entry(ep.to_string())
            .or_default()
            .push((task.name.clone(), task.kwargs["time_ms"].as_i64().unwrap()));
    }
    let deregistrations = per_device
        .values()
        .flatten()
        .filter(|(t, _)| t == "flownexus.device_deregistered")
        .count();
    // The simulator's De-registers are not retried once it stops: most,
    // not all, arrive (910 of 1,000 in a run here); each that did is below.
    assert!(deregistrations > 0);
    for i in 0..n {
        let ep = format!("urn:sim:storm-{i:04}");
        let events = &per_device[&ep];
        // The registrations and de-registrations the store recorded, in
        // their order, are the ones in the queue, in the same order.
        let mut stored: Vec<String> = s
            .events(Some(&ep), 1000)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "registered" || e.kind == "deregistered")
            .map(|e| format!("flownexus.device_{}", e.kind))
            .collect();
        stored.reverse();
        let queued: Vec<String> = events
            .iter()
            .map(|(t, _)| t.clone())
            .filter(|t| t == "flownexus.device_registered" || t == "flownexus.device_deregistered")
            .collect();
        assert_eq!(queued, stored, "{ep}");
        assert_eq!(
            events.first().map(|e| e.0.as_str()),
            Some("flownexus.device_registered"),
            "{ep}"
        );
        assert!(events.windows(2).all(|w| w[0].1 <= w[1].1), "{ep}: out of order");
        assert!(events.iter().any(|(t, _)| t == "flownexus.values_reported"), "{ep}");
    }
    running.stop().await;
}
