//! The store's single writer: a thread that applies server events in
//! batched transactions, so a burst of notifications costs one commit, not
//! one per value. Whatever is queued when the process stops cleanly is
//! committed before [`WriterHandle::close`] returns.
//!
//! Reported values go to the value journal first and move into the history
//! per device ([`super::journal`] says why and keeps the books).

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, Transaction, params};

use crate::error::Result;
use crate::lwm2m::operation::Outcome;
use crate::lwm2m::registration::Registration;
use crate::lwm2m::registration::RegistrationId;
use crate::lwm2m::server::{ServerEvent, Source};
use crate::outbox::EventKind;
use crate::store::journal::{HistoryPolicy, PendingHistory, SeqRange, WaitingRanges};
use crate::store::{Store, now_ms, outcome_columns, sql_value};

/// Which journal rows each device still has outside the history, shared
/// with the readers of this process (the writer's books stay private).
pub type SharedPending = Arc<Mutex<WaitingRanges>>;

/// What the writer is told at start.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Largest number of changes committed in one transaction.
    pub batch_size: usize,
    /// Longest a change waits for others to share its commit.
    pub commit_interval: Duration,
    pub history: HistoryPolicy,
}

impl WriterSettings {
    pub fn of(config: &crate::config::StoreConfig) -> WriterSettings {
        WriterSettings {
            batch_size: config.batch_size,
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            history: HistoryPolicy {
                flush_values: config.history_flush_values,
                flush_age_ms: config.history_flush_age_s as i64 * 1000,
            },
        }
    }
}

pub enum Command<P> {
    Event(ServerEvent<P>),
    /// Delete value history older than this (Unix ms).
    Prune(i64),
    /// One firmware download request, for accounting.
    Download(crate::store::DownloadRecord),
    /// An outbox sink took every event up to `upto`: its cursor, and the
    /// rows every sink took removed. Written here, by the one writer: the
    /// delivery task waiting for the write lock stalled for seconds.
    OutboxDelivered {
        sink: &'static str,
        upto: i64,
    },
    /// Reply once everything sent before has been committed.
    Flush(SyncSender<()>),
}

/// Where the server sends what must be stored.
pub struct WriterHandle<P> {
    tx: Option<SyncSender<Command<P>>>,
    thread: Option<JoinHandle<()>>,
    pending: SharedPending,
}

impl<P> Clone for WriterHandle<P> {
    fn clone(&self) -> Self {
        WriterHandle {
            tx: self.tx.clone(),
            thread: None,
            pending: self.pending.clone(),
        }
    }
}

/// How many commands may wait for the writer before senders block: the
/// back-pressure that keeps memory bounded if the disk is slow.
const CAPACITY: usize = 65_536;

/// Retention deletes the history of this many device ids per commit, so a
/// prune of a large fleet never holds the writer for long.
const PRUNE_DEVICES_PER_COMMIT: i64 = 500;

/// How often an idle writer wakes to move old journalled values.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Devices whose journalled values move in one commit, at most: a burst
/// (after a restart, or a fleet reporting in step) spreads over commits
/// that stay short, with new reports committed between them.
const MOVES_PER_COMMIT: usize = 1000;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A WAL this long (pages) is restarted from its beginning: while writes
/// never pause, passive checkpoints never find it all copied, and SQLite
/// only reuses a WAL that is, so it would grow without end.
const WAL_RESTART_PAGES: i64 = 16_384;

/// The writer's page cache (KiB; allocated as used): moving a device's
/// values reads its journal rows and history pages, and a cache that holds
/// the journal's recent minutes and the indexes' inner pages saves a read
/// of the file for most of them.
const WRITER_CACHE_KIB: i64 = 1_048_576;

impl<P: Display + Send + 'static> WriterHandle<P> {
    pub fn start(store: Store, settings: WriterSettings) -> WriterHandle<P> {
        Self::start_counted(store, settings, None)
    }

    /// Start, counting each commit in `metrics` (batch sizes).
    pub fn start_counted(
        store: Store,
        settings: WriterSettings,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> WriterHandle<P> {
        let (tx, rx) = sync_channel(CAPACITY);
        let pending = Arc::new(Mutex::new(WaitingRanges::default()));
        let books = pending.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store, rx, settings, books, metrics))
            .expect("spawn store writer");
        WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
            pending,
        }
    }

    /// The journal's waiting ranges, for readers that show the newest values.
    pub fn pending(&self) -> SharedPending {
        self.pending.clone()
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

    /// Whether the writer commits a barrier within `timeout`: the health
    /// probe's test that its thread turns.
    pub fn ping(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        self.send(Command::Flush(tx));
        rx.recv_timeout(timeout).is_ok()
    }

    /// Commit what is queued and stop the thread.
    pub fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer's own state between batches.
struct Writer {
    store: Store,
    settings: WriterSettings,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The journal's books, the writer's alone.
    books: PendingHistory,
    /// The waiting journal ranges (what readers and moves read), changed
    /// beside `books`.
    pending: SharedPending,
    devices: HashMap<String, i64>,
    /// A retention run in progress: (cutoff, next device id, last device id, deleted).
    prune: Option<(i64, i64, i64, usize)>,
    /// More devices were due than the last commit moved.
    behind: bool,
    /// The journal's next sequence number as of the last commit.
    next_seq: i64,
    /// Journal rows below this are in the history (as of the last
    /// commit); below `cut`, they are deleted already.
    cut_to: i64,
    cut: i64,
    /// The last "last seen" written per device: a device heard again
    /// within `LAST_SEEN_STEP_MS` of it is not written again.
    seen_written: HashMap<i64, i64>,
}

/// "Last seen" is kept to this precision: a device notifying every second
/// costs one row update every 5 s, not one per notification.
const LAST_SEEN_STEP_MS: i64 = 5_000;

/// What one batch journalled, for the books once it is applied.
#[derive(Default)]
struct Journalled {
    reports: Vec<(i64, SeqRange, bool)>,
    per_hour: HashMap<i64, i64>,
    /// When each device was last heard in this batch (notifications, Send,
    /// answers to operations; Register and Update write it themselves).
    seen: HashMap<i64, i64>,
}

impl Journalled {
    fn heard(&mut self, device: i64, at_ms: i64) {
        let e = self.seen.entry(device).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }
}

/// The writer and the checkpointer run below the threads that answer
/// devices and operators: under a sustained ingest they would otherwise
/// take their share of the cores from a page being rendered. Each still
/// gets every cycle nobody else wants, and a writer that falls behind
/// holds its senders back through the bounded queue. On Linux the nice
/// value is per thread (setpriority(2), "Bugs"), so `who = 0` lowers only
/// the calling one.
fn yield_to_foreground() {
    const BACKGROUND_NICE: libc::c_int = 10;
    // SAFETY: setpriority has no memory effects; lowering one's own
    // priority needs no privilege.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) } != 0 {
        log::warn!(
            "store background thread keeps its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn run<P: Display>(
    store: Store,
    rx: Receiver<Command<P>>,
    settings: WriterSettings,
    pending: SharedPending,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    yield_to_foreground();
    if let Err(e) = store.conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB) {
        log::warn!("store writer keeps the default page cache: {e}");
    }
    let checkpointer = start_checkpointer(&store);
    let mut w = Writer {
        store,
        books: PendingHistory::new(settings.history),
        settings,
        metrics,
        pending,
        devices: HashMap::new(),
        prune: None,
        behind: false,
        next_seq: 0,
        cut_to: 0,
        cut: 0,
        seen_written: HashMap::new(),
    };
    if let Err(e) = w.recover() {
        log::error!("cannot read the value journal: {e}");
    }
    loop {
        // Wake now and then while values wait in the journal or a prune
        // runs, so they move without new traffic.
        let behind = w.prune.is_some() || w.behind || w.cut_to > w.cut;
        let busy = behind || w.books.waiting() > 0;
        let first = if busy {
            match rx.recv_timeout(if behind { Duration::ZERO } else { IDLE_TICK }) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let batch = match first {
            Some(first) => gather(&rx, first, &w.settings),
            None => Vec::new(),
        };
        w.commit(batch);
    }
    if let Some((stop, thread)) = checkpointer {
        drop(stop);
        let _ = thread.join();
    }
}

/// Checkpoints run on their own thread and connection, so the writer never
/// waits for them. A checkpoint copies the WAL into the database file and
/// syncs it (with `synchronous = NORMAL` the only sync WAL mode makes);
/// run by the committing writer (SQLite's default, every 1,000 pages), the
/// syncs held it most of the time at high ingest rates. PASSIVE never
/// blocks the writer or readers; the WAL is reused from its start once a
/// checkpoint has caught up.
fn start_checkpointer(store: &Store) -> Option<(SyncSender<()>, JoinHandle<()>)> {
    let path = store.conn.path().filter(|p| !p.is_empty())?.to_owned();
    let opened = rusqlite::Connection::open(&path).and_then(|c| {
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
    });
    let conn = match opened {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot open the store for checkpoints, the writer will run them: {e}");
            return None;
        }
    };
    if let Err(e) = store.conn.pragma_update(None, "wal_autocheckpoint", 0) {
        log::error!("cannot move checkpoints off the writer: {e}");
        return None;
    }
    let (stop, stopped) = sync_channel::<()>(0);
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            yield_to_foreground();
            loop {
                let last = matches!(
                    stopped.recv_timeout(CHECKPOINT_EVERY),
                    Err(RecvTimeoutError::Disconnected)
                );
                let checkpoint =
                    |mode: &str| conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1));
                // RESTART waits for the writer's current commit, then copies
                // what the passive run left (little) and has the next
                // commit start the WAL over.
                let done = checkpoint("PASSIVE").and_then(|pages| {
                    if pages >= WAL_RESTART_PAGES {
                        checkpoint("RESTART")?;
                    }
                    Ok(())
                });
                if let Err(e) = done {
                    log::warn!("checkpoint failed: {e}");
                }
                if last {
                    break;
                }
            }
        })
        .expect("spawn store checkpointer");
    Some((stop, thread))
}

/// Delete the history of these device ids older than `cutoff`. The
/// history is keyed (device, resource, time), so one seek per resource a
/// device has reported (`latest_values` names them all) reaches exactly
/// the old rows; a range over device ids alone would read every value
/// they have.
fn prune_history(tx: &Transaction<'_>, devices: std::ops::Range<i64>, cutoff: i64) -> Result<usize> {
    let resources: Vec<(i64, String)> = tx
        .prepare_cached("SELECT device_id, path FROM latest_values WHERE device_id >= ?1 AND device_id < ?2")?
        .query_map(params![devices.start, devices.end], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM value_history WHERE device_id = ?1 AND path = ?2 AND ts < ?3")?;
    let mut n = 0;
    for (device, path) in resources {
        n += delete.execute(params![device, path, cutoff])?;
    }
    Ok(n)
}

/// Gather for up to `commit_interval` (or `batch_size` changes): one
/// transaction then carries a burst, instead of a commit (and its WAL
/// writes) per notification or download request.
fn gather<P>(rx: &Receiver<Command<P>>, first: Command<P>, settings: &WriterSettings) -> Vec<Command<P>> {
    let waiting = matches!(first, Command::Flush(_));
    let deadline = Instant::now()
        + if waiting {
            Duration::ZERO
        } else {
            settings.commit_interval
        };
    let mut batch = vec![first];
    while batch.len() < settings.batch_size {
        let now = Instant::now();
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
    batch
}

impl Writer {
    /// Rebuild the journal's books from the table: everything in it counts
    /// as waiting (values a crash caught between moving and the journal's
    /// truncation move again; the history ignores them as duplicates).
    fn recover(&mut self) -> Result<()> {
        // Readers wait for the rebuilt ranges rather than miss a value:
        // seconds with tens of millions journalled, nothing usually.
        let mut shared = self.pending.lock().expect("journal books");
        *shared = WaitingRanges::default();
        let books = &mut self.books;
        books.clear();
        let now = now_ms();
        let mut st = self
            .store
            .conn
            .prepare("SELECT seq, device_id FROM value_journal ORDER BY seq")?;
        let mut rows = st.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let (device, range) = (r.get(1)?, SeqRange { first: seq, last: seq });
            books.journalled(device, range, now, false);
            shared.add(device, range);
            self.next_seq = seq + 1;
            n += 1;
        }
        self.cut_to = books.low_water(self.next_seq);
        self.cut = 0;
        if n > 0 {
            log::info!("value journal: {n} values wait to move into the history");
        }
        Ok(())
    }

    fn commit<P: Display>(&mut self, batch: Vec<Command<P>>) {
        let mut acks = Vec::new();
        let mut journalled = Journalled::default();
        let mut moving = Vec::new();
        let cutting = self.cut_to;
        let changes = batch.len();
        let result = self.transaction(batch, &mut acks, &mut journalled, &mut moving);
        match result {
            Ok(()) => {
                if let Some(m) = self.metrics.as_ref().filter(|_| changes > 0) {
                    m.writer_batch(changes);
                }
                // Only now may readers stop looking for these in the journal.
                let mut shared = self.pending.lock().expect("journal books");
                for &d in &moving {
                    shared.remove(d);
                }
                drop(shared);
                for d in moving {
                    self.books.moved(d);
                }
                self.cut = self.cut.max(cutting);
                if let Some(last) = journalled.reports.iter().map(|(_, r, _)| r.last).max() {
                    self.next_seq = self.next_seq.max(last + 1);
                }
                self.cut_to = self.books.low_water(self.next_seq);
            }
            Err(e) => {
                // The device ids cached and the books may describe the
                // rolled-back transaction.
                self.devices.clear();
                log::error!("store write failed, batch lost: {e}");
                if let Err(e) = self.recover() {
                    log::error!("cannot read the value journal: {e}");
                }
            }
        }
        for a in acks {
            let _ = a.send(());
        }
    }

    fn transaction<P: Display>(
        &mut self,
        batch: Vec<Command<P>>,
        acks: &mut Vec<SyncSender<()>>,
        journalled: &mut Journalled,
        moving: &mut Vec<i64>,
    ) -> Result<()> {
        let tx = self.store.write_tx()?;
        // Events for the outbox only while a sink takes them.
        let outbox = super::outbox::wanted(&tx)?;
        for cmd in batch {
            match cmd {
                Command::Event(ev) => apply(&tx, &mut self.devices, journalled, outbox, ev)?,
                Command::Prune(cutoff) => {
                    // Every stored value is counted in the hour of its
                    // timestamp, so without a whole hour before the
                    // cutoff's there is nothing to delete but part of that
                    // hour (left for the next run), and the history is
                    // not walked at all: the usual case at start-up. The
                    // counts go when the walk ends, so a walk a restart
                    // cut short runs again.
                    let old = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM values_per_hour WHERE hour < ?1)",
                        [super::hour_of(cutoff)],
                        |r| r.get::<_, bool>(0),
                    )?;
                    if old && self.prune.is_none() {
                        let last: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM devices", [], |r| r.get(0))?;
                        self.prune = Some((cutoff, 0, last, 0));
                    }
                }
                Command::Flush(ack) => acks.push(ack),
                Command::Download(d) => record_download(&tx, &d)?,
                Command::OutboxDelivered { sink, upto } => super::outbox::delivered(&tx, sink, upto)?,
            }
        }
        let mut count = tx.prepare_cached(
            "INSERT INTO values_per_hour (hour, count) VALUES (?1, ?2)
             ON CONFLICT(hour) DO UPDATE SET count = count + excluded.count",
        )?;
        for (&hour, &n) in &journalled.per_hour {
            count.execute(params![hour, n])?;
        }
        drop(count);
        // Every uplink counts as the device being seen, not only Register
        // and Update (a device that only notifies is not "last seen" at its
        // last Update).
        let mut seen_device =
            tx.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1 AND last_seen < ?2")?;
        let mut seen_registration =
            tx.prepare_cached("UPDATE registrations SET last_seen = ?2 WHERE device_id = ?1 AND last_seen < ?2")?;
        for (&device, &at) in &journalled.seen {
            if self
                .seen_written
                .get(&device)
                .is_some_and(|w| at - w < LAST_SEEN_STEP_MS)
            {
                continue;
            }
            seen_device.execute(params![device, at])?;
            seen_registration.execute(params![device, at])?;
            self.seen_written.insert(device, at);
        }
        drop((seen_device, seen_registration));
        if let Some((cutoff, from, last, deleted)) = self.prune {
            let n = prune_history(&tx, from..from + PRUNE_DEVICES_PER_COMMIT, cutoff)?;
            let next = from + PRUNE_DEVICES_PER_COMMIT;
            self.prune = (next <= last).then_some((cutoff, next, last, deleted + n));
            if self.prune.is_none() {
                // The cutoff's own hour keeps its count: some of it remains.
                tx.execute("DELETE FROM values_per_hour WHERE hour < ?1", [super::hour_of(cutoff)])?;
                log::info!("retention: deleted {} values", deleted + n);
            }
        }
        // Which devices move: decided with this batch's reports in the
        // books (readers that see those ranges before the commit find
        // nothing there yet, which is what they would see anyway).
        let mut shared = self.pending.lock().expect("journal books");
        for &(device, range, _) in &journalled.reports {
            shared.add(device, range);
        }
        drop(shared);
        let now = now_ms();
        for &(device, range, urgent) in &journalled.reports {
            self.books.journalled(device, range, now, urgent);
        }
        let (due, more) = self.books.due(now, MOVES_PER_COMMIT);
        self.behind = more;
        let due: Vec<(i64, Vec<SeqRange>)> = {
            let shared = self.pending.lock().expect("journal books");
            due.into_iter().map(|d| (d, shared.ranges(d))).collect()
        };
        move_to_history(&tx, &due)?;
        moving.extend(due.iter().map(|(d, _)| *d));
        // Rows every device had moved at the last commit go: the journal's
        // head, so its pages are freed in order.
        if self.cut_to > self.cut {
            tx.prepare_cached("DELETE FROM value_journal WHERE seq < ?1")?
                .execute([self.cut_to])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Copy each device's journalled values into the history and its latest
/// values. Duplicates (a move repeated after a crash) are ignored; the
/// latest value is the one with the newest time, the later report on ties.
fn move_to_history(tx: &Transaction<'_>, due: &[(i64, Vec<SeqRange>)]) -> Result<()> {
    let mut history = tx.prepare_cached(
        "INSERT OR IGNORE INTO value_history (device_id, path, ts, seq, vtype, value)
         SELECT device_id, path, ts, seq, vtype, value FROM value_journal WHERE seq IN rarray(?1) AND device_id = ?2
         ORDER BY path, ts, seq",
    )?;
    let mut latest = tx.prepare_cached(
        "INSERT INTO latest_values (device_id, path, ts, vtype, value)
         SELECT device_id, path, ts, vtype, value FROM value_journal WHERE seq IN rarray(?1) AND device_id = ?2 ORDER BY seq
         ON CONFLICT(device_id, path) DO UPDATE SET ts = excluded.ts, vtype = excluded.vtype, value = excluded.value
         WHERE excluded.ts >= latest_values.ts",
    )?;
    for (device, ranges) in due {
        let seqs = super::seq_array(ranges);
        history.execute(params![seqs, device])?;
        latest.execute(params![seqs, device])?;
    }
    Ok(())
}

fn device_id(tx: &Transaction<'_>, cache: &mut HashMap<String, i64>, endpoint: &str) -> Result<i64> {
    if let Some(id) = cache.get(endpoint) {
        return Ok(*id);
    }
    tx.execute(
        "INSERT INTO devices (endpoint, created_at, endpoint_order) VALUES (?1, ?2, ?3) ON CONFLICT(endpoint) DO NOTHING",
        params![endpoint, now_ms(), crate::lwm2m::display::natural_key(endpoint)],
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

fn record_download(tx: &Transaction<'_>, d: &crate::store::DownloadRecord) -> Result<()> {
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
        // Its own event: FOTA resets the device's job on it (`fota::Update::doom_loop`).
        event(
            tx,
            d.device.as_deref(),
            super::events::kind::DOOM_LOOP,
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
    outbox: Option<EventKind>,
) -> Result<()> {
    let dev = device_id(tx, devices, endpoint)?;
    // Only the registration that ended is removed, not a newer one.
    tx.execute(
        "DELETE FROM registrations WHERE device_id = ?1 AND reg_id = ?2",
        params![dev, id.to_string()],
    )?;
    let detail = serde_json::json!({ "registration": id.to_string() });
    if let Some(k) = outbox {
        super::outbox::emit(tx, k, Some(endpoint), &detail)?;
    }
    event(tx, Some(endpoint), kind, detail)
}

/// A registration as the outbox carries it (`device_registered`,
/// `device_updated`).
fn registration_payload<P: Display>(r: &Registration<P>) -> serde_json::Value {
    serde_json::json!({
        "registration": r.id.to_string(), "peer": r.peer.to_string(), "lifetime": r.lifetime,
        "lwm2m_version": r.version, "binding": r.binding, "queue_mode": r.queue_mode,
        "object_links": r.object_links,
    })
}

fn apply<P: Display>(
    tx: &Transaction<'_>,
    devices: &mut HashMap<String, i64>,
    journalled: &mut Journalled,
    outbox: bool,
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
            // What the operators' profiles ask of every registration (a
            // re-Register too: it follows a reboot or a lost registration,
            // after which the device's observations are gone).
            super::profiles::queue_profiles(tx, id, &r.endpoint)?;
            if outbox {
                let mut payload = registration_payload(&r);
                payload["replaced"] = json!(replaced.map(|x| x.to_string()));
                super::outbox::emit(tx, EventKind::DeviceRegistered, Some(&r.endpoint), &payload)?;
            }
            event(
                tx,
                Some(&r.endpoint),
                super::events::kind::REGISTERED,
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
            // Every Update is an event, also one that only refreshed the
            // lifetime and was not persisted: receivers see the device live.
            if outbox {
                super::outbox::emit(
                    tx,
                    EventKind::DeviceUpdated,
                    Some(&r.endpoint),
                    &registration_payload(&r),
                )?;
            }
        }
        ServerEvent::Deregistered { endpoint, id } => end_registration(
            tx,
            devices,
            &endpoint,
            id,
            super::events::kind::DEREGISTERED,
            outbox.then_some(EventKind::DeviceDeregistered),
        )?,
        ServerEvent::Expired { endpoint, id } => end_registration(
            tx,
            devices,
            &endpoint,
            id,
            super::events::kind::EXPIRED,
            outbox.then_some(EventKind::DeviceExpired),
        )?,
        ServerEvent::ValuesReported {
            endpoint,
            records,
            source,
            received_ms,
        } => {
            let dev = device_id(tx, devices, &endpoint)?;
            journalled.heard(dev, received_ms);
            let mut journal = tx.prepare_cached(
                "INSERT INTO value_journal (device_id, path, ts, vtype, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut first = None;
            let mut reported = Vec::new();
            for r in &records {
                let ts = r.time.map_or_else(now_ms, |t| (t * 1000.0).round() as i64);
                let (vtype, value) = sql_value(&r.value);
                journal.execute(params![dev, r.path.to_string(), ts, vtype, value])?;
                first.get_or_insert(tx.last_insert_rowid());
                *journalled.per_hour.entry(super::hour_of(ts)).or_default() += 1;
                if outbox {
                    reported.push(json!({ "path": r.path.to_string(), "ts": ts, "value": r.value }));
                }
            }
            if let Some(first) = first {
                let range = SeqRange {
                    first,
                    last: tx.last_insert_rowid(),
                };
                // An answer to a Read moves at once: the fleet's firmware
                // counts and filters read the latest values alone.
                journalled.reports.push((dev, range, source == Source::Read));
            }
            // After the journal's range is read: the outbox row is the
            // transaction's last insert from here on.
            if outbox && !reported.is_empty() {
                let source = match source {
                    Source::Notification => "notification",
                    Source::Send => "send",
                    Source::Read => "read",
                };
                super::outbox::emit(
                    tx,
                    EventKind::ValuesReported,
                    Some(&endpoint),
                    &json!({ "source": source, "values": reported }),
                )?;
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
            if matches!(outcome, Outcome::Succeeded(_) | Outcome::Failed { code: Some(_), .. }) {
                // It answered.
                let dev = device_id(tx, devices, &endpoint)?;
                journalled.heard(dev, now_ms());
            }
            let (code, result) = outcome_columns(&outcome);
            let state = outcome.state().as_str();
            let result_json = outbox.then(|| serde_json::to_value(&outcome).expect("an outcome serialises"));
            // A cancellation requested through the store is already final there.
            // What it was, for the event an operator reads ("read /3/0 …").
            let asked: Option<(String, String, Option<String>)> = tx
                .query_row(
                    "UPDATE operations SET state = ?2, coap_code = ?3, result = ?4, updated_at = ?5
                     WHERE id = ?1 AND state IN ('queued', 'sent') RETURNING kind, request, celery_task_id",
                    params![id, state, code, result, now_ms()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            // Only the change that made it final is an event (a repeat of a
            // final outcome updates no row).
            if let (Some(result), Some((kind, request, task))) = (result_json, &asked) {
                let request: serde_json::Value = serde_json::from_str(request).unwrap_or_default();
                let mut payload = json!({ "operation": id, "kind": kind, "request": request, "state": state,
                                          "code": code, "result": result });
                // Its end is the result of the Celery task that asked.
                if let Some(task) = task {
                    payload["celery_task_id"] = json!(task);
                }
                super::outbox::emit(tx, EventKind::OperationFinished, Some(&endpoint), &payload)?;
            }
            if !matches!(outcome, Outcome::Cancelled) {
                let (kind, path) = asked
                    .map(|(kind, request, _)| {
                        let path = serde_json::from_str::<crate::lwm2m::operation::OperationKind>(&request)
                            .map(|k| k.path().to_string())
                            .unwrap_or_default();
                        (kind, path)
                    })
                    .unwrap_or_default();
                event(
                    tx,
                    Some(&endpoint),
                    super::events::kind::OPERATION,
                    json!({ "operation": id, "kind": kind, "path": path, "state": state, "code": code }),
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
        // The server lets out a bounded number of these per second.
        ServerEvent::Rejected { endpoint, code, reason } => {
            event(
                tx,
                endpoint.as_deref(),
                super::events::kind::REJECTED,
                json!({ "code": code.to_string(), "reason": reason }),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::path::{Record, Value};

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
            received_ms: 0,
        })
    }

    fn settings(flush_values: u32, flush_age_ms: i64) -> WriterSettings {
        WriterSettings {
            batch_size: 100,
            commit_interval: Duration::from_millis(5),
            history: HistoryPolicy {
                flush_values,
                flush_age_ms,
            },
        }
    }

    fn count(s: &Store, table: &str) -> i64 {
        s.connection()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn history(s: &Store, endpoint: &str) -> Vec<(i64, f64)> {
        let path = "/3303/0/5700".parse().unwrap();
        let (rows, _) = s.history_page(endpoint, &path, (0, i64::MAX), None, 1000).unwrap();
        rows.into_iter()
            .map(|(_, v)| match v.value {
                Value::Float(f) => (v.ts, f),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// The overview's hourly counts follow every value written; retention
    /// runs once a whole hour is older than the cutoff's, and then removes
    /// every value older than the cutoff.
    #[test]
    fn values_are_counted_per_hour_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let w: WriterHandle<String> = WriterHandle::start(Store::open(&path).unwrap(), settings(1, 0));
        // Hours 0 and 1 (Unix time), then hour 1 again in a later batch.
        w.send(values("a", &[10.0, 20.0, 3_700.0]));
        w.flush();
        w.send(values("b", &[3_800.0, 3_900.0]));
        w.flush();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.values_per_hour(0).unwrap(), vec![(0, 2), (3_600_000, 3)]);
        assert_eq!(s.values_per_hour(3_600_000).unwrap(), vec![(3_600_000, 3)]);
        assert_eq!(count(&s, "value_history"), 5);
        w.send(Command::Prune(3_750_000));
        w.flush();
        w.flush();
        assert_eq!(s.values_per_hour(0).unwrap(), vec![(3_600_000, 3)]);
        assert_eq!(history(&s, "a"), vec![]);
        assert_eq!(history(&s, "b"), vec![(3_800_000, 3_800.0), (3_900_000, 3_900.0)]);
        // No whole hour before the cutoff's: the part of its hour that is
        // older waits for a later run, and the history is not walked.
        w.send(Command::Prune(3_850_000));
        w.flush();
        w.flush();
        assert_eq!(history(&s, "b"), vec![(3_800_000, 3_800.0), (3_900_000, 3_900.0)]);
        assert_eq!(s.values_per_hour(0).unwrap(), vec![(3_600_000, 3)]);
        w.close();
    }

    /// Values wait in the journal until their device has enough of them or
    /// they are old, and readers see them there all along: with the books
    /// (the server) and without (another process).
    #[test]
    fn journalled_values_move_by_count_and_age_and_are_read_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let w: WriterHandle<String> = WriterHandle::start(Store::open(&path).unwrap(), settings(4, 300));
        let with_books = Store::open(&path).unwrap().with_pending(w.pending());
        let without = Store::open(&path).unwrap();
        w.send(values("a", &[1.0, 2.0]));
        w.send(values("b", &[5.0]));
        w.flush();
        assert_eq!(count(&without, "value_history"), 0);
        for s in [&with_books, &without] {
            assert_eq!(history(s, "a"), vec![(1_000, 1.0), (2_000, 2.0)]);
            let latest = s.latest_values("a").unwrap();
            assert_eq!((latest.len(), latest[0].ts), (1, 2_000));
        }
        // A third and fourth value: "a" has four and moves with this commit.
        w.send(values("a", &[4.0, 3.0]));
        w.flush();
        assert_eq!(count(&without, "value_history"), 4);
        for s in [&with_books, &without] {
            assert_eq!(
                history(s, "a"),
                vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0), (4_000, 4.0)]
            );
            assert_eq!(s.latest_values("a").unwrap()[0].ts, 4_000);
            assert_eq!(history(s, "b"), vec![(5_000, 5.0)]);
        }
        // "b" moves by age; then the journal is empty.
        std::thread::sleep(Duration::from_millis(400));
        w.flush();
        w.flush();
        assert_eq!(count(&without, "value_history"), 5);
        assert_eq!(count(&without, "value_journal"), 0);
        assert_eq!(w.pending().lock().unwrap().waiting(), 0);
        assert_eq!(history(&with_books, "b"), vec![(5_000, 5.0)]);
        w.close();
    }

    /// A restart finds the journal's values, and a move repeated after a
    /// crash (values already in the history, not yet cut from the journal)
    /// stores each value once.
    #[test]
    fn a_restart_moves_what_the_journal_holds_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let w: WriterHandle<String> = WriterHandle::start(Store::open(&path).unwrap(), settings(100, 3_600_000));
        w.send(values("a", &[1.0, 2.0, 3.0]));
        w.flush();
        w.close();
        let s = Store::open(&path).unwrap();
        assert_eq!(count(&s, "value_journal"), 3);
        // As if a move of the first value committed before a crash.
        s.connection()
            .execute(
                "INSERT INTO value_history SELECT device_id, path, ts, seq, vtype, value FROM value_journal ORDER BY seq LIMIT 1",
                [],
            )
            .unwrap();
        assert_eq!(history(&s, "a").len(), 3, "read once while in both");
        let w: WriterHandle<String> = WriterHandle::start(Store::open(&path).unwrap(), settings(100, 0));
        w.flush();
        w.flush();
        assert_eq!(count(&s, "value_journal"), 0);
        assert_eq!(history(&s, "a"), vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]);
        assert_eq!(s.latest_values("a").unwrap()[0].ts, 3_000);
        w.close();
    }

    /// An answer to a Read is in the latest values with its commit.
    #[test]
    fn read_answers_move_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let w: WriterHandle<String> = WriterHandle::start(Store::open(&path).unwrap(), settings(100, 3_600_000));
        w.send(Command::Event(ServerEvent::ValuesReported {
            endpoint: "a".into(),
            source: Source::Read,
            records: vec![Record {
                path: "/3/0/3".parse().unwrap(),
                value: Value::String("v2.0".into()),
                time: None,
            }],
            received_ms: 0,
        }));
        w.flush();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.devices_on_version("v2.0").unwrap(), 1);
        w.close();
    }
}
