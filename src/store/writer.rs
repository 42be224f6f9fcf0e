//! The store's single writer: a thread that applies server events in
//! batched transactions, so a burst of notifications costs one commit, not
//! one per value. Whatever is queued when the process stops cleanly is
//! committed before [`WriterHandle::close`] returns.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Transaction, params};

use crate::error::Result;
use crate::lwm2m::operation::Outcome;
use crate::lwm2m::registration::Registration;
use crate::lwm2m::registration::RegistrationId;
use crate::lwm2m::server::ServerEvent;
use crate::store::{Store, now_ms, outcome_columns, sql_value};

pub enum Command<P> {
    Event(ServerEvent<P>),
    /// Delete value history older than this (Unix ms).
    Prune(i64),
    /// One firmware download request, for accounting.
    Download(crate::download::DownloadRecord),
    /// Reply once everything sent before has been committed.
    Flush(SyncSender<()>),
}

/// Where the server sends what must be stored.
pub struct WriterHandle<P> {
    tx: Option<SyncSender<Command<P>>>,
    thread: Option<JoinHandle<()>>,
}

impl<P> Clone for WriterHandle<P> {
    fn clone(&self) -> Self {
        WriterHandle {
            tx: self.tx.clone(),
            thread: None,
        }
    }
}

/// How many commands may wait for the writer before senders block: the
/// back-pressure that keeps memory bounded if the disk is slow.
const CAPACITY: usize = 65_536;

/// At most this many "rejected request" events are stored per second, so a
/// flood of bad packets cannot flood the events table.
const REJECTIONS_PER_SECOND: u32 = 20;

impl<P: Display + Send + 'static> WriterHandle<P> {
    pub fn start(store: Store, batch_size: usize, commit_interval: std::time::Duration) -> WriterHandle<P> {
        let (tx, rx) = sync_channel(CAPACITY);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store, rx, batch_size, commit_interval))
            .expect("spawn store writer");
        WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn send(&self, cmd: Command<P>) {
        if let Some(tx) = &self.tx
            && tx.send(cmd).is_err()
        {
            log::error!("store writer has stopped; a change was not stored");
        }
    }

    /// Queue without blocking; false if the writer is that far behind.
    /// For paths that must never stall on the disk (download accounting).
    pub fn try_send(&self, cmd: Command<P>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(cmd).is_ok())
    }

    /// Wait until everything sent so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        self.send(Command::Flush(tx));
        let _ = rx.recv();
    }

    /// Commit what is queued and stop the thread.
    pub fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<P: Display>(
    mut store: Store,
    rx: Receiver<Command<P>>,
    batch_size: usize,
    commit_interval: std::time::Duration,
) {
    let mut devices: HashMap<String, i64> = HashMap::new();
    let mut rejections = (0i64, 0u32);
    while let Ok(first) = rx.recv() {
        // Gather for up to `commit_interval` (or `batch_size` changes): one
        // transaction then carries a burst, instead of a commit (and its WAL
        // writes) per notification or download request.
        let waiting = matches!(first, Command::Flush(_));
        let deadline = std::time::Instant::now()
            + if waiting {
                std::time::Duration::ZERO
            } else {
                commit_interval
            };
        let mut batch = vec![first];
        while batch.len() < batch_size {
            let now = std::time::Instant::now();
            let next = if now >= deadline {
                rx.try_recv().map_err(|_| ())
            } else {
                rx.recv_timeout(deadline - now).map_err(|_| ())
            };
            match next {
                Ok(Command::Flush(ack)) => {
                    // Someone waits: commit now.
                    batch.push(Command::Flush(ack));
                    break;
                }
                Ok(c) => batch.push(c),
                Err(()) => break,
            }
        }
        let mut acks = Vec::new();
        let result = (|| -> Result<()> {
            let tx = store.conn.transaction()?;
            let mut per_hour = HashMap::new();
            for cmd in batch {
                match cmd {
                    Command::Event(ev) => apply(&tx, &mut devices, &mut rejections, &mut per_hour, ev)?,
                    Command::Prune(cutoff) => {
                        let n = tx.execute("DELETE FROM resource_values WHERE ts < ?1", [cutoff])?;
                        // The cutoff's own hour keeps its count: some of it remains.
                        tx.execute("DELETE FROM values_per_hour WHERE hour < ?1", [super::hour_of(cutoff)])?;
                        if n > 0 {
                            log::info!("retention: deleted {n} values");
                        }
                    }
                    Command::Flush(ack) => acks.push(ack),
                    Command::Download(d) => record_download(&tx, &d)?,
                }
            }
            let mut count = tx.prepare_cached(
                "INSERT INTO values_per_hour (hour, count) VALUES (?1, ?2)
                 ON CONFLICT(hour) DO UPDATE SET count = count + excluded.count",
            )?;
            for (hour, n) in per_hour {
                count.execute(params![hour, n])?;
            }
            drop(count);
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            // The device ids cached may belong to the rolled-back transaction.
            devices.clear();
            log::error!("store write failed, batch lost: {e}");
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

fn device_id(tx: &Transaction<'_>, cache: &mut HashMap<String, i64>, endpoint: &str) -> Result<i64> {
    if let Some(id) = cache.get(endpoint) {
        return Ok(*id);
    }
    tx.execute(
        "INSERT INTO devices (endpoint, created_at) VALUES (?1, ?2) ON CONFLICT(endpoint) DO NOTHING",
        params![endpoint, now_ms()],
    )?;
    let id: i64 = tx.query_row("SELECT id FROM devices WHERE endpoint = ?1", [endpoint], |r| r.get(0))?;
    cache.insert(endpoint.to_string(), id);
    Ok(id)
}

fn event(tx: &Transaction<'_>, endpoint: Option<&str>, kind: &str, detail: serde_json::Value) -> Result<()> {
    tx.execute(
        "INSERT INTO events (ts, endpoint, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms(), endpoint, kind, detail.to_string()],
    )?;
    Ok(())
}

fn upsert_registration<P: Display>(tx: &Transaction<'_>, device: i64, r: &Registration<P>) -> Result<()> {
    tx.execute(
        "INSERT INTO registrations (device_id, reg_id, peer, lifetime, version, binding, queue_mode, sms, object_links, root_path,
                                    announced_format, registered_at, updated_at, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT(device_id) DO UPDATE SET reg_id = excluded.reg_id, peer = excluded.peer, lifetime = excluded.lifetime,
            version = excluded.version, binding = excluded.binding, queue_mode = excluded.queue_mode, sms = excluded.sms,
            object_links = excluded.object_links, root_path = excluded.root_path, announced_format = excluded.announced_format,
            registered_at = excluded.registered_at, updated_at = excluded.updated_at, last_seen = excluded.last_seen",
        params![
            device,
            r.id.to_string(),
            r.peer.to_string(),
            r.lifetime,
            r.version,
            r.binding,
            r.queue_mode,
            r.sms,
            r.object_links,
            r.root_path,
            r.announced_format,
            r.registered_at,
            r.updated_at,
            r.last_seen
        ],
    )?;
    // The device list sorts by this copy (migration 9).
    tx.execute(
        "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
        params![device, r.last_seen],
    )?;
    Ok(())
}

fn record_download(tx: &Transaction<'_>, d: &crate::download::DownloadRecord) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO downloads (ts, firmware_id, range_start, range_end, status, bytes, duration_us, peer, device, doom_loop)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.ts,
        d.firmware_id,
        d.range.map(|r| r.0 as i64),
        d.range.map(|r| r.1 as i64),
        d.status,
        d.bytes as i64,
        d.duration_us as i64,
        d.peer.to_string(),
        d.device,
        d.doom_loop
    ])?;
    if d.doom_loop {
        // Its own event: FOTA resets the device's job on it (DESIGN §2).
        event(
            tx,
            d.device.as_deref(),
            "fota-doom-loop",
            serde_json::json!({ "firmware": d.firmware_id, "peer": d.peer.to_string() }),
        )?;
    }
    Ok(())
}

fn end_registration(
    tx: &Transaction<'_>,
    devices: &mut HashMap<String, i64>,
    endpoint: &str,
    id: RegistrationId,
    kind: &str,
) -> Result<()> {
    let dev = device_id(tx, devices, endpoint)?;
    // Only the registration that ended is removed, not a newer one.
    tx.execute(
        "DELETE FROM registrations WHERE device_id = ?1 AND reg_id = ?2",
        params![dev, id.to_string()],
    )?;
    event(
        tx,
        Some(endpoint),
        kind,
        serde_json::json!({ "registration": id.to_string() }),
    )
}

fn apply<P: Display>(
    tx: &Transaction<'_>,
    devices: &mut HashMap<String, i64>,
    rejections: &mut (i64, u32),
    per_hour: &mut HashMap<i64, i64>,
    ev: ServerEvent<P>,
) -> Result<()> {
    use serde_json::json;
    match ev {
        ServerEvent::Registered {
            registration: r,
            replaced,
        } => {
            let id = device_id(tx, devices, &r.endpoint)?;
            upsert_registration(tx, id, &r)?;
            event(
                tx,
                Some(&r.endpoint),
                "registered",
                json!({ "registration": r.id.to_string(), "peer": r.peer.to_string(), "lifetime": r.lifetime,
                        "version": r.version, "binding": r.binding, "replaced": replaced.map(|x| x.to_string()) }),
            )?;
        }
        ServerEvent::Updated {
            registration: r,
            persist,
        } => {
            if persist {
                let id = device_id(tx, devices, &r.endpoint)?;
                upsert_registration(tx, id, &r)?;
            }
        }
        ServerEvent::Deregistered { endpoint, id } => end_registration(tx, devices, &endpoint, id, "deregistered")?,
        ServerEvent::Expired { endpoint, id } => end_registration(tx, devices, &endpoint, id, "expired")?,
        ServerEvent::ValuesReported { endpoint, records, .. } => {
            let dev = device_id(tx, devices, &endpoint)?;
            let mut hist = tx.prepare_cached(
                "INSERT INTO resource_values (device_id, path, ts, vtype, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut latest = tx.prepare_cached(
                "INSERT INTO latest_values (device_id, path, ts, vtype, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(device_id, path) DO UPDATE SET ts = excluded.ts, vtype = excluded.vtype, value = excluded.value
                 WHERE excluded.ts >= latest_values.ts",
            )?;
            for r in &records {
                let ts = r.time.map_or_else(now_ms, |t| (t * 1000.0) as i64);
                let path = r.path.to_string();
                let (vtype, value) = sql_value(&r.value);
                hist.execute(params![dev, path, ts, vtype, value])?;
                *per_hour.entry(super::hour_of(ts)).or_default() += 1;
                latest.execute(params![dev, path, ts, vtype, value])?;
            }
        }
        ServerEvent::OperationSent { id, attempt, .. } => {
            tx.execute(
                "UPDATE operations SET state = 'sent', attempts = ?2, updated_at = ?3 WHERE id = ?1 AND state IN ('queued', 'sent')",
                params![id, attempt, now_ms()],
            )?;
        }
        ServerEvent::OperationRequeued {
            id, attempts, reason, ..
        } => {
            tx.execute(
                "UPDATE operations SET state = 'queued', attempts = ?2, updated_at = ?3, result = ?4 WHERE id = ?1 AND state = 'sent'",
                params![id, attempts, now_ms(), json!({ "retry": reason }).to_string()],
            )?;
        }
        ServerEvent::OperationFinished { id, endpoint, outcome } => {
            let (code, result) = outcome_columns(&outcome);
            let state = outcome.state().as_str();
            // A cancellation requested through the store is already final there.
            tx.execute(
                "UPDATE operations SET state = ?2, coap_code = ?3, result = ?4, updated_at = ?5 WHERE id = ?1 AND state IN ('queued', 'sent')",
                params![id, state, code, result, now_ms()],
            )?;
            if !matches!(outcome, Outcome::Cancelled) {
                event(
                    tx,
                    Some(&endpoint),
                    "operation",
                    json!({ "operation": id, "state": state, "code": code }),
                )?;
            }
        }
        ServerEvent::ObservationStarted { endpoint, token, kind } => {
            tx.execute(
                "INSERT OR REPLACE INTO observations (token, endpoint, request, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    token.0 as i64,
                    endpoint,
                    serde_json::to_string(&kind).expect("serialises"),
                    now_ms()
                ],
            )?;
        }
        ServerEvent::ObservationEnded { token, .. } => {
            tx.execute("DELETE FROM observations WHERE token = ?1", [token.0 as i64])?;
        }
        ServerEvent::Rejected { endpoint, code, reason } => {
            let second = now_ms() / 1000;
            if rejections.0 != second {
                *rejections = (second, 0);
            }
            rejections.1 += 1;
            if rejections.1 <= REJECTIONS_PER_SECOND {
                event(
                    tx,
                    endpoint.as_deref(),
                    "rejected",
                    json!({ "code": code.to_string(), "reason": reason }),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::path::{Record, Value};
    use crate::lwm2m::server::Source;

    fn values(endpoint: &str, times_s: &[f64]) -> Command<String> {
        Command::Event(ServerEvent::ValuesReported {
            endpoint: endpoint.into(),
            source: Source::Notification,
            records: times_s
                .iter()
                .map(|&t| Record {
                    path: "/3303/0/5700".parse().unwrap(),
                    value: Value::Float(t),
                    time: Some(t),
                })
                .collect(),
        })
    }

    /// The overview's hourly counts follow every value written, and
    /// retention removes whole hours before the cutoff's.
    #[test]
    fn values_are_counted_per_hour_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let w: WriterHandle<String> =
            WriterHandle::start(Store::open(&path).unwrap(), 100, std::time::Duration::from_millis(5));
        // Hours 0 and 1 (Unix time), then hour 1 again in a later batch.
        w.send(values("a", &[10.0, 20.0, 3_700.0]));
        w.flush();
        w.send(values("b", &[3_800.0, 3_900.0]));
        w.flush();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.values_per_hour(0).unwrap(), vec![(0, 2), (3_600_000, 3)]);
        assert_eq!(s.values_per_hour(3_600_000).unwrap(), vec![(3_600_000, 3)]);
        w.send(Command::Prune(3_750_000));
        w.flush();
        assert_eq!(s.values_per_hour(0).unwrap(), vec![(3_600_000, 3)]);
        let left: i64 = s
            .connection()
            .query_row("SELECT COUNT(*) FROM resource_values", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 2);
        w.close();
    }
}
