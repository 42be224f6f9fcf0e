//! Wiring for `flownexus serve`: open the store, restore state, bind the
//! listeners, start the shells and background tasks, report readiness.
//!
//! [`start`] takes a config whose listeners may use port 0 and returns the
//! bound addresses, so integration tests run the whole server in-process.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{broadcast, mpsc, watch};

use crate::coap::{Exchanges, Params};
use crate::config::{Config, UnknownEndpoints};
use crate::dtls::keys::PskKeys;
use crate::dtls::{Limits, Sessions};
use crate::lwm2m::model::Models;
use crate::lwm2m::server::{Server, ServerConfig};
use crate::metrics::Metrics;
use crate::shell::activation::Inherited;
use crate::shell::health::{Prober, SharedBoard, Targets};
use crate::shell::lwm2m::{self, Command, DtlsLink, Events, Transports};
use crate::shell::{dtls as dtls_shell, now, udp};
use crate::store::Store;
use crate::store::writer::{Command as StoreCommand, WriterHandle, WriterSettings};
use crate::transport::Peer;

/// How often operations queued by other processes (CLI, API) are picked up.
pub const OPERATION_POLL: Duration = Duration::from_millis(250);

pub struct Running {
    /// Plain CoAP, when `coap.enabled`.
    pub coap_addr: Option<SocketAddr>,
    /// CoAP over DTLS, when `coaps.enabled`.
    pub coaps_addr: Option<SocketAddr>,
    /// The firmware HTTPS server, when `fw.enabled`.
    pub fw_addr: Option<SocketAddr>,
    /// The dashboard and REST API, when `http.enabled`.
    pub http_addr: Option<SocketAddr>,
    /// Prometheus metrics, when `metrics.enabled`.
    pub metrics_addr: Option<SocketAddr>,
    pub events: Events,
    pub commands: mpsc::Sender<Command>,
    /// Components that did not answer their probe within
    /// `health.ready_timeout_s` of start-up, with why: `serve` reports
    /// ready only when there are none.
    pub unwell: Vec<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writer: WriterHandle<Peer>,
    /// Keeps the certificate watcher alive.
    _cert_watcher: Option<notify::RecommendedWatcher>,
    /// Declared last so it is dropped last, after the writer's final commit.
    _serve_lock: ServeLock,
}

/// Resolves once `stop` has been signalled.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Running {
    /// Stop accepting, let running downloads finish (up to
    /// `fw.shutdown_grace_s`), commit everything pending, and return.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let writer = self.writer;
        tokio::task::spawn_blocking(move || writer.close()).await.ok();
    }

    /// Wait until every event so far is committed to the store.
    pub async fn flush(&self) {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || w.flush()).await.ok();
    }
}

pub fn load_models(config: &Config) -> anyhow::Result<Models> {
    Ok(match &config.lwm2m.models_dir {
        Some(dir) => Models::with_dir(dir).with_context(|| format!("lwm2m.models_dir {}", dir.display()))?,
        None => Models::embedded(),
    })
}

/// Create the data directory, owner-only.
pub fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("data_dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The store holds device keys from the DTLS issue on: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

/// An exclusive `flock(2)` on `serve.lock` in the data directory, held
/// while a server runs on it: a second `serve` and a `restore` are refused
/// while it is held. The kernel drops it when the process ends, however it
/// ends, so a crash leaves nothing stale.
#[derive(Debug)]
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    pub fn acquire(data_dir: &Path) -> anyhow::Result<ServeLock> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let path = data_dir.join("serve.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "a flownexus server (pid {}) is running on {}; stop it first",
                pid.trim(),
                data_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(ServeLock { _file: file })
    }
}

/// Start every part of the server; returns once the listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Inherited::none()).await
}

/// [`start`], with listening sockets handed over already bound (socket
/// activation) used instead of binding the configured addresses.
pub async fn start_with(config: Config, mut inherited: Inherited) -> anyhow::Result<Running> {
    inherited.refuse_disabled(&[
        ("coap", config.coap.enabled),
        ("coaps", config.coaps.enabled),
        ("fw", config.fw.enabled),
        ("http", config.http.enabled),
        ("metrics", config.metrics.enabled),
    ])?;
    create_data_dir(&config.data_dir)?;
    let serve_lock = ServeLock::acquire(&config.data_dir)?;
    let db_path = config.database_path();
    log::info!("data directory {}", config.data_dir.display());
    log::info!("database {}", db_path.display());
    let models = Arc::new(load_models(&config)?);
    log::info!("object model: {} objects", models.len());

    let store = Store::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
    let t = now();
    let params = Params::from_config(&config.coap);
    let seed = fastrand::u64(..);
    let mut server = Server::new(
        Exchanges::new(params, seed),
        ServerConfig::from_config(&config.lwm2m),
        models.clone(),
        seed ^ 1,
    );
    let mut restored = 0;
    for reg in store.registrations()? {
        match reg.peer.parse::<Peer>() {
            Ok(mut peer) => {
                // Sessions do not survive a restart; each device's old one
                // gets a distinct id nobody will use again.
                if let Peer::Dtls { addr, .. } = peer {
                    peer = Peer::Dtls {
                        session: crate::dtls::SessionId::restored(restored),
                        addr,
                    };
                }
                let reg = reg.with_peer(peer);
                server.restore_registration(t, reg);
                restored += 1;
            }
            Err(_) => log::warn!(
                "registration of {} has an unreadable peer `{}`; dropped",
                reg.endpoint,
                reg.peer
            ),
        }
    }
    let observations = store.observations()?;
    let restored_observations = observations.len();
    for (token, endpoint, kind) in observations {
        server.restore_observation(t, &endpoint, crate::coap::RequestId(token), kind);
    }
    // Every endpoint in the device table: the reject policy admits only
    // these, the accept policy counts the others against their source.
    let mut known_deleted = store.devices_deleted()?;
    let known_rows = store.endpoints_after(0)?;
    let mut known_last = known_rows.last().map_or(0, |(id, _)| *id);
    server.set_known_endpoints(known_rows.into_iter().map(|(_, ep)| ep).collect());
    match config.lwm2m.unknown_endpoints {
        UnknownEndpoints::Reject => log::info!(
            "lwm2m.unknown_endpoints = reject{}: only provisioned endpoints may register",
            if config.mode == crate::config::Mode::Production {
                " (the production default)"
            } else {
                ""
            }
        ),
        UnknownEndpoints::Accept => log::info!(
            "lwm2m.unknown_endpoints = accept: any endpoint may register over plain CoAP, at most {} at once and {} new a minute per source address",
            config.lwm2m.unprovisioned_per_source,
            config.lwm2m.unprovisioned_per_source_per_min
        ),
    }
    let mut keys_generation = store.keys_generation()?;
    let keys = PskKeys::new(store.device_keys()?);
    server.set_keyed_endpoints(keys.endpoints());
    log::info!("{} devices have a PSK", keys.len());
    let pending = store.pending_operations(0)?;
    let mut last_op = store.max_operation_id()?;
    log::info!(
        "restored {restored} registrations, {restored_observations} observations and {} pending operations",
        pending.len()
    );
    for op in pending {
        server.enqueue(t, op);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let metrics = Arc::new(Metrics::default());
    let udp_socket = if config.coap.enabled {
        let socket = match inherited.udp("coap")? {
            Some(s) => tokio::net::UdpSocket::from_std(udp::sized(s, config.coap.socket_buffer_bytes))?,
            None => udp::bind(config.coap.listen, config.coap.socket_buffer_bytes)
                .with_context(|| format!("coap.listen {}", config.coap.listen))?,
        };
        log::info!("CoAP (LwM2M) listening on udp {}", socket.local_addr()?);
        Some(socket)
    } else {
        log::info!("plain CoAP is disabled (coap.enabled = false)");
        None
    };
    let coap_addr = udp_socket.as_ref().map(|s| s.local_addr()).transpose()?;
    let (keys_changed, keys_rx) = watch::channel(0u64);
    let (dtls, coaps_addr) = if config.coaps.enabled {
        let handed = inherited.udp("coaps")?;
        let (link, addr, shards) = start_dtls(&config, handed, keys.clone(), keys_rx, &metrics, &stop_rx, &mut tasks)?;
        log::info!("CoAP over DTLS (PSK) listening on udp {addr} ({shards} shards)");
        (Some(link), Some(addr))
    } else {
        log::info!("CoAP over DTLS is disabled (coaps.enabled = false)");
        (None, None)
    };

    let writer = WriterHandle::start_counted(
        Store::open(&db_path)?,
        WriterSettings::of(&config.store),
        Some(metrics.clone()),
    );
    // Room for the bursts of a campaign start (a thousand operations
    // answered in a second, each with its values); a subscriber that lags
    // behind even so reads what it missed from the store.
    let (events, _) = broadcast::channel(16_384);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let shell_writer = writer.clone();
    let shell_events = events.clone();
    // The download server tells the update task of FOTA doom loops.
    let (doom_tx, doom_rx) = mpsc::channel(1024);
    let (fw_addr, cert_watcher, firmware) = match start_firmware_server(
        &config,
        &mut inherited,
        &writer,
        doom_tx,
        metrics.clone(),
        stop_rx.clone(),
    )
    .await?
    {
        Some((addr, task, watcher, fw)) => {
            tasks.push(task);
            (Some(addr), Some(watcher), Some(fw))
        }
        None => (None, None, None),
    };
    tasks.push(tokio::spawn(lwm2m::run(
        Transports {
            udp: udp_socket,
            dtls,
            firmware,
        },
        server,
        shell_writer,
        shell_events,
        metrics.clone(),
        cmd_rx,
        stopped(stop_rx.clone()),
    )));

    // Made before the listeners so the web shell holds it from its start;
    // the prober fills it once every address is known.
    let health: SharedBoard = Arc::new(std::sync::Mutex::new(crate::health::Board::new(1, &[])));
    let http_addr = if config.http.enabled {
        let updates = match fw_addr {
            Some(addr) => {
                Some(crate::shell::fota::Starter::new(&config, Some(addr), coap_addr).context("fw.token_secret_file")?)
            }
            None => None,
        };
        let (addr, task) = start_web(
            &config,
            tcp_listener(&mut inherited, "http", config.http.listen).await?,
            events.clone(),
            models.clone(),
            writer.pending(),
            updates,
            Watchers {
                health: health.clone(),
                metrics: metrics.clone(),
                stop: stop_rx.clone(),
            },
        )
        .await?;
        tasks.push(task);
        Some(addr)
    } else {
        log::info!("the dashboard and REST API are disabled (http.enabled = false)");
        None
    };

    let fota_settings = crate::shell::fota::Settings {
        limits: crate::fota::Limits::from_config(&config.fota, config.lwm2m.queue_awake_window_s),
        operation_deadline_ms: config.lwm2m.operation_deadline_s as i64 * 1000,
        operation_max_attempts: config.lwm2m.operation_max_attempts,
    };
    let nudges = crate::shell::Nudges::default();
    tasks.push(tokio::spawn(crate::shell::fota::run(
        // The writer's books of journalled values: reading a device's
        // latest values back after a lag is then an indexed lookup, not a
        // scan of the journal per device.
        Store::open(&db_path)?.with_pending(writer.pending()),
        fota_settings,
        nudges.clone(),
        events.subscribe(),
        doom_rx,
        stopped(stop_rx.clone()),
    )));
    if let Some(addr) = fw_addr {
        let starter =
            crate::shell::fota::Starter::new(&config, Some(addr), coap_addr).context("fw.token_secret_file")?;
        tasks.push(tokio::spawn(crate::shell::campaign::run(
            // The writer's books: a modem delta's start reads the device's
            // reported version without a scan of the value journal.
            Store::open(&db_path)?.with_pending(writer.pending()),
            starter,
            nudges.clone(),
            stopped(stop_rx.clone()),
        )));
    }

    // Poll the store for operations queued or cancelled by other processes.
    let poll_cmd = cmd_tx.clone();
    let retention_ms = config.store.value_retention_days as i64 * 86_400_000;
    let prune_writer = writer.clone();
    let poll_stop = stop_rx.clone();
    let ops_queued = nudges.operations.clone();
    let poll_keys = keys.clone();
    let poll_keys_changed = keys_changed;
    let session_idle_ms = config.http.session_idle_timeout_s as i64 * 1000;
    let session_max_ms = config.http.session_max_age_s as i64 * 1000;
    tokio::spawn(async move {
        let stop = stopped(poll_stop);
        tokio::pin!(stop);
        let mut cancelled_since = crate::store::now_ms();
        let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
        let poller = match Store::open(&db_path) {
            Ok(s) => Arc::new(std::sync::Mutex::new(s)),
            Err(e) => {
                log::error!("operation poller cannot open the store: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(OPERATION_POLL) => {}
                _ = ops_queued.notified() => {}
            }
            let store = poller.clone();
            let since = cancelled_since;
            let polled = tokio::task::spawn_blocking(move || -> crate::Result<_> {
                let s = store.lock().expect("poller store");
                let ops = s.pending_operations(last_op)?;
                let cancelled = s.cancelled_since(since)?;
                // New device rows by id; the whole list again only after a removal.
                let deleted = s.devices_deleted()?;
                let endpoints = if deleted != known_deleted {
                    (deleted, true, s.endpoints_after(0)?)
                } else {
                    (deleted, false, s.endpoints_after(known_last)?)
                };
                let generation = s.keys_generation()?;
                let device_keys = if generation != keys_generation {
                    Some((generation, s.device_keys()?))
                } else {
                    None
                };
                Ok((ops, cancelled, endpoints, device_keys))
            })
            .await;
            let Ok(Ok((ops, cancelled, endpoints, device_keys))) = polled else {
                log::warn!("operation poll failed; retrying");
                continue;
            };
            cancelled_since = crate::store::now_ms() - OPERATION_POLL.as_millis() as i64 * 4;
            for op in ops {
                last_op = last_op.max(op.id);
                let _ = poll_cmd.send(Command::Enqueue(op)).await;
            }
            for id in cancelled {
                let _ = poll_cmd.send(Command::Cancel(id)).await;
            }
            if let Some((generation, device_keys)) = device_keys {
                keys_generation = generation;
                poll_keys.replace(device_keys);
                log::info!("device keys changed: {} devices have a PSK", poll_keys.len());
                poll_keys_changed.send_modify(|g| *g += 1);
                let _ = poll_cmd.send(Command::KeyedEndpoints(poll_keys.endpoints())).await;
            }
            let (deleted, whole, rows) = endpoints;
            known_deleted = deleted;
            if whole || !rows.is_empty() {
                known_last = rows.last().map_or(if whole { 0 } else { known_last }, |(id, _)| *id);
                let endpoints = rows.into_iter().map(|(_, ep)| ep);
                let cmd = if whole {
                    Command::KnownEndpoints(endpoints.collect::<HashSet<_>>())
                } else {
                    Command::KnownEndpointsAdded(endpoints.collect())
                };
                let _ = poll_cmd.send(cmd).await;
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = std::time::Instant::now();
                if retention_ms > 0 {
                    prune_writer.send(StoreCommand::Prune(crate::store::now_ms() - retention_ms));
                }
                let store = poller.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    store
                        .lock()
                        .expect("poller store")
                        .prune_sessions(session_idle_ms, session_max_ms)
                })
                .await;
            }
        }
    });

    // Events out (issue 26): the outbox's sinks. A broker that is down
    // leaves the server running, the sink degraded.
    let mut sinks = Vec::new();
    if config.events.celery.broker.is_some() {
        sinks.push(crate::shell::outbox::Sink::Celery(
            crate::shell::celery::CelerySink::new(&config.events.celery, models.clone())?,
        ));
    }
    if !config.events.webhooks.is_empty() {
        let secret_file = config
            .events
            .webhook_secret_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("webhook-secret.key"));
        let secret = crate::secret::load_or_create(&secret_file, "events.webhook_secret_file")?;
        for (i, w) in config.events.webhooks.iter().enumerate() {
            sinks.push(crate::shell::outbox::Sink::Webhook(
                crate::shell::webhook::WebhookSink::new(i, w, &secret, models.clone())?,
            ));
        }
    }
    let (outbox, sink_reports) = crate::shell::outbox::OutboxTask::new(
        Store::open(&config.database_path())?,
        writer.clone(),
        sinks,
        config.events.outbox_max_rows,
        Some(metrics.clone()),
    )?;
    if !sink_reports.is_empty() {
        // A thread and runtime of its own: on the shared workers, a busy
        // LwM2M task left it too little time to keep up (bench events).
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::task::spawn_blocking(
            move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(outbox.run(stop)),
                Err(e) => log::error!("outbox: no runtime for the delivery task: {e}"),
            },
        ));
    }
    // Tasks in from Python (issue 26): operations and firmware updates,
    // their ends going back as Celery results through the outbox.
    if config.events.celery.broker.is_some() {
        let updates = match fw_addr {
            Some(addr) => {
                Some(crate::shell::fota::Starter::new(&config, Some(addr), coap_addr).context("fw.token_secret_file")?)
            }
            None => None,
        };
        let runner = crate::shell::celery::TaskRunner {
            store: Store::open(&config.database_path())?,
            models: models.clone(),
            updates,
            nudges: nudges.clone(),
            operation_deadline_s: config.lwm2m.operation_deadline_s,
            operation_max_attempts: config.lwm2m.operation_max_attempts,
        };
        let consumer = crate::shell::celery::Consumer::new(&config.events.celery, runner)?;
        tasks.push(tokio::spawn(consumer.run(stopped(stop_rx.clone()))));
    }

    // systemd's watchdog (WATCHDOG_USEC, sd_watchdog_enabled(3)): pinged
    // at half its interval while the vital loops answer their probes.
    let watchdog = sd_notify::watchdog_enabled();
    let interval_ms = crate::health::probe_interval_ms(
        config.health.probe_interval_s as i64 * 1000,
        watchdog.map(|w| w.as_millis() as i64),
    );
    let prober = Prober::new(
        Targets {
            coap: coap_addr,
            coaps: coaps_addr,
            fw: fw_addr,
            fw_proxy_protocol: config.fw.proxy_protocol,
            http: http_addr,
            db_path: config.database_path(),
            writer: writer.clone(),
            lwm2m: cmd_tx.clone(),
            sinks: sink_reports,
        },
        health.clone(),
        Duration::from_millis(interval_ms as u64),
    )?;
    let unwell = prober
        .first_round(Duration::from_secs(config.health.ready_timeout_s))
        .await;
    let board = prober.board();
    tasks.push(tokio::spawn(prober.run(watchdog, stopped(stop_rx.clone()))));
    let metrics_addr = if config.metrics.enabled {
        let listener = tcp_listener(&mut inherited, "metrics", config.metrics.listen).await?;
        let addr = listener.local_addr()?;
        log::info!("Prometheus metrics on http://{addr}/metrics");
        let scrape = crate::shell::metrics::Scrape {
            metrics: metrics.clone(),
            store: Arc::new(std::sync::Mutex::new(Store::open(&config.database_path())?)),
            board,
            awake_window_s: config.lwm2m.queue_awake_window_s,
            grace_s: config.lwm2m.lifetime_grace_s,
        };
        tasks.push(tokio::spawn(crate::shell::metrics::run(
            listener,
            scrape,
            stop_rx.clone(),
        )));
        Some(addr)
    } else {
        log::info!("metrics are disabled (metrics.enabled = false)");
        None
    };

    let runtime = serde_json::json!({
        "pid": std::process::id(),
        "coap": coap_addr.map(|a| a.to_string()),
        "coaps": coaps_addr.map(|a| a.to_string()),
        "fw": fw_addr.map(|a| a.to_string()),
        "http": http_addr.map(|a| a.to_string()),
        "metrics": metrics_addr.map(|a| a.to_string()),
    });
    let runtime_path = config.runtime_path();
    std::fs::write(&runtime_path, runtime.to_string())
        .with_context(|| format!("writing {}", runtime_path.display()))?;

    Ok(Running {
        coap_addr,
        coaps_addr,
        fw_addr,
        http_addr,
        metrics_addr,
        events,
        commands: cmd_tx,
        unwell,
        shutdown: stop_tx,
        tasks,
        writer,
        _cert_watcher: cert_watcher,
        _serve_lock: serve_lock,
    })
}

/// The DTLS shards: a SO_REUSEPORT socket and a session table each.
fn start_dtls(
    config: &Config,
    mut handed: Option<std::net::UdpSocket>,
    keys: Arc<PskKeys>,
    keys_changed: watch::Receiver<u64>,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<(DtlsLink, SocketAddr, usize)> {
    let c = &config.coaps;
    let shards = if handed.is_some() {
        // One socket handed over: one shard (a SO_REUSEPORT group would
        // need sockets of our own on its port).
        1
    } else if c.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        c.shards
    };
    let mut limits = Limits::from_config(c);
    limits.max_sessions = c.max_sessions.div_ceil(shards);
    // In batches (see `shell::lwm2m::FromDtls`): up to 1024 batches from
    // the shards, 256 to each.
    let (inbound_tx, inbound) = mpsc::channel(1024);
    let mut outbound = Vec::new();
    let mut addr = c.listen;
    if shards > 1 && addr.port() != 0 {
        // Any process of the same user could join a SO_REUSEPORT group and
        // silently take half the traffic: make sure nobody holds the port
        // before we form the group (a second flownexus fails here).
        drop(std::net::UdpSocket::bind(addr).with_context(|| format!("coaps.listen {addr}"))?);
    }
    for shard in 0..shards {
        // With port 0 the first socket picks the port; the others join it.
        let socket = match handed.take() {
            Some(s) => udp::sized(s, config.coap.socket_buffer_bytes),
            None => udp::bind_std(addr, config.coap.socket_buffer_bytes, shards > 1)
                .with_context(|| format!("coaps.listen {addr}"))?,
        };
        addr = socket.local_addr()?;
        let sessions =
            Sessions::new(std::time::Instant::now(), shard as u8, keys.clone(), limits.clone()).context("coaps")?;
        let (tx, rx) = mpsc::channel(256);
        outbound.push(tx);
        let (to_server, keys_changed, stop) = (inbound_tx.clone(), keys_changed.clone(), stop.clone());
        let counted = (metrics.clone(), shard);
        // Each shard on a thread of its own: its sessions' memory then
        // comes from the thread's own malloc arena instead of being mixed
        // with long-lived registration data, so what parking frees can go
        // back to the kernel; and handshake crypto stays off the server's
        // workers.
        tasks.push(tokio::task::spawn_blocking(move || {
            name_this_thread(&format!("coaps-shard-{shard}"));
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return log::error!("coaps shard {shard}: no runtime: {e}"),
            };
            rt.block_on(async move {
                match tokio::net::UdpSocket::from_std(socket) {
                    Ok(socket) => {
                        dtls_shell::run(socket, sessions, to_server, rx, keys_changed, counted, stopped(stop)).await
                    }
                    Err(e) => log::error!("coaps shard {shard}: {e}"),
                }
            })
        }));
    }
    Ok((DtlsLink { inbound, outbound }, addr, shards))
}

/// Name the calling thread (as `top -H` and `/proc/PID/task/*/comm` show
/// it; at most 15 bytes).
fn name_this_thread(name: &str) {
    if let Ok(name) = std::ffi::CString::new(&name.as_bytes()[..name.len().min(15)]) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of up to 16 bytes.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
    }
}

/// The firmware download server: catalogue clean-up, certificates (and
/// their watcher), the token key, the listener.
async fn start_firmware_server(
    config: &Config,
    inherited: &mut Inherited,
    writer: &WriterHandle<Peer>,
    doom_loops: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<
    Option<(
        SocketAddr,
        tokio::task::JoinHandle<()>,
        notify::RecommendedWatcher,
        Arc<crate::download::Server>,
    )>,
> {
    use crate::download::{self, tls, token::TokenKey};
    let fw = &config.fw;
    if !fw.enabled {
        return Ok(None);
    }
    let store = Store::open(&config.database_path())?;
    let catalogue = crate::firmware::Catalogue::new(&config.data_dir, fw.max_image_bytes);
    let cleaned = catalogue.clean(&store)?;
    if cleaned > 0 {
        log::info!("firmware catalogue: removed {cleaned} partial or orphaned files");
    }
    let pairs = tls::configured_pairs(fw, &config.data_dir).context("fw.cert_file")?;
    for p in &pairs {
        log::info!(
            "firmware server certificate {} (key {})",
            p.cert.display(),
            p.key.display()
        );
    }
    let certs = tls::Certificates::load(pairs, tls::provider()).context("fw.cert_file")?;
    let watcher = tls::watch(certs.clone())?;
    let tls_config = tls::server_config(certs, fw.max_record_bytes)?;
    let key_path = fw
        .token_secret_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("fw-token.key"));
    let key = TokenKey::load_or_create(&key_path).context("fw.token_secret_file")?;
    let listener = tcp_listener(inherited, "fw", fw.listen).await?;
    let addr = listener.local_addr()?;
    log::info!(
        "firmware server listening on https://{addr} (TLS records ≤ {} bytes)",
        fw.max_record_bytes
    );
    let record_writer = writer.clone();
    // Accounting never stalls a download: if the writer is 65,536 records
    // behind, records are dropped and counted, and the count is logged.
    let dropped = std::sync::atomic::AtomicU64::new(0);
    let record = move |d: crate::store::DownloadRecord| {
        let transport = if d.coap { "coap" } else { "https" };
        metrics.download(transport, d.status, d.bytes, d.doom_loop);
        if d.doom_loop
            && let Some(device) = &d.device
        {
            let _ = doom_loops.try_send(device.clone());
        }
        if !record_writer.try_send(StoreCommand::Download(d)) {
            let n = dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("download accounting: the store writer is behind; {n} records dropped so far");
            }
        }
    };
    let server = Arc::new(download::Server::new(
        catalogue,
        store,
        Some(key),
        fw.require_token,
        fw.cache_bytes,
        Box::new(record),
    ));
    let limits = download::Limits {
        handshake: Duration::from_secs(fw.handshake_timeout_s),
        idle: Duration::from_secs(fw.idle_timeout_s),
        shutdown_grace: Duration::from_secs(fw.shutdown_grace_s),
        proxy_protocol: fw.proxy_protocol,
    };
    let task = tokio::spawn(download::run(listener, tls_config, server.clone(), limits, stop));
    Ok(Some((addr, task, watcher, server)))
}

/// What the web shell reports into and from: the health board and the
/// request counters.
struct Watchers {
    health: SharedBoard,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

/// The listening TCP socket of listener `name` (`fw`, `http`, `metrics`):
/// the one handed over (socket activation), else its `addr` bound.
async fn tcp_listener(
    inherited: &mut Inherited,
    name: &str,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    match inherited.tcp(name)? {
        Some(listener) => Ok(listener),
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{name}.listen {addr}")),
    }
}

/// The dashboard and REST API: the signing secret, the listener, and the
/// first-run setup link when no admin exists yet.
async fn start_web(
    config: &Config,
    listener: tokio::net::TcpListener,
    events: lwm2m::Events,
    models: Arc<Models>,
    pending: crate::store::writer::SharedPending,
    updates: Option<crate::shell::fota::Starter>,
    watchers: Watchers,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let stop = watchers.stop;
    let h = &config.http;
    let secret_path = h
        .secret_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("http-secret.key"));
    let secret = crate::secret::load_or_create(&secret_path, "http.secret_file")?;
    let addr = listener.local_addr()?;
    let web = Arc::new(
        crate::web::Web::new(
            h.clone(),
            config.lwm2m.clone(),
            &secret,
            events,
            models,
            crate::firmware::Catalogue::new(&config.data_dir, config.fw.max_image_bytes),
            config.fw.max_image_bytes,
            config.database_path(),
            pending,
            stop.clone(),
        )
        .with_updates(updates)
        .with_health(watchers.health)
        .with_metrics(watchers.metrics),
    );
    let base = web
        .origin
        .as_ref()
        .map_or_else(|| format!("http://{addr}"), |o| o.url());
    log::info!("dashboard and REST API listening on http://{addr} (operators use {base})");
    if !Store::open(&config.database_path())?.has_admin()? {
        let expires = crate::store::now_ms() / 1000 + h.setup_link_ttl_s as i64;
        // The link is the one way in before any admin exists; it is logged
        // once, valid for `http.setup_link_ttl_s`, and dead once an admin is made.
        log::warn!(
            "no admin exists: create the first one at {base}/setup?token={} (valid {} min), or run `flownexus user add NAME --role admin`",
            web.signer.setup_token(expires),
            h.setup_link_ttl_s / 60
        );
    }
    Ok((addr, tokio::spawn(crate::web::run(listener, web, stop))))
}

/// `flownexus serve`: run until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let runtime_path = config.runtime_path();
    let running = start_with(config, Inherited::from_env()?).await?;
    if !running.unwell.is_empty() {
        let unwell = running.unwell.join("; ");
        running.stop().await;
        let _ = std::fs::remove_file(&runtime_path);
        anyhow::bail!("not ready: these components did not answer their health probe: {unwell}");
    }
    // Migrations ran in `start`, and every listener answered its probe.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    log::info!("flownexus ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    log::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.stop().await;
    // `healthcheck` reads this file; a stopped server must not look alive.
    let _ = std::fs::remove_file(&runtime_path);
    log::info!("stopped; all changes committed");
    Ok(())
}
