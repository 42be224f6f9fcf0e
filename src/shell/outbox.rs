//! The outbox's delivery task: moves committed events to each sink in id
//! order, a batch at a time, and moves the sink's cursor only once the
//! sink took the batch (at-least-once; receivers de-duplicate on
//! `event_id`). A failing sink waits out its backoff
//! (`outbox::delivery`) while the others go on; its events stay in the
//! outbox, bounded by `events.outbox_max_rows`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::outbox::delivery::{Backoff, SinkHealth, SinkState};
use crate::shell::celery::CelerySink;
use crate::store::Store;
use crate::store::writer::{Command as StoreCommand, WriterHandle};
use crate::transport::Peer;

/// Events handed to a sink at once.
const BATCH: usize = 1000;
/// How often an idle task looks for new events: one indexed look-up, and
/// the wait a Celery producer's result adds at most.
const POLL: Duration = Duration::from_millis(10);
/// How often each sink's cursor is handed to the store writer (which also
/// removes the rows every sink took). Between two writes the cursor lives
/// here, and a crash before the next write only delivers the last half
/// second's events again, which at-least-once allows.
const PERSIST: Duration = Duration::from_millis(500);

/// A sink's state as the health probe and the metrics read it.
#[derive(Debug, Clone)]
pub struct SinkReport {
    pub health: SinkHealth,
    pub backlog: u64,
    pub delivered: u64,
    /// Whether the task has looked at the sink yet.
    pub started: bool,
}

pub type SharedReport = Arc<Mutex<SinkReport>>;

pub enum Sink {
    Celery(CelerySink),
    Webhook(crate::shell::webhook::WebhookSink),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Celery(_) => "celery",
            Sink::Webhook(w) => w.name(),
        }
    }

    /// How many of `events` the sink took (in order), and why it stopped
    /// short if it did.
    async fn deliver(&mut self, events: &[crate::outbox::OutboxEvent]) -> (usize, Option<String>) {
        match self {
            // A batch is one MULTI/EXEC: all or nothing.
            Sink::Celery(s) => match s.deliver(events).await {
                Ok(()) => (events.len(), None),
                Err(e) => (0, Some(e)),
            },
            Sink::Webhook(w) => w.deliver(events).await,
        }
    }
}

struct Lane {
    sink: Sink,
    state: SinkState,
    report: SharedReport,
    /// The last event the sink took, and the last one written to the store.
    cursor: i64,
    persisted: i64,
}

pub struct OutboxTask {
    store: Store,
    lanes: Vec<Lane>,
    max_rows: u64,
    metrics: Option<Arc<Metrics>>,
    /// The store writer, which writes the cursors (the one writer never
    /// waits for its own lock).
    writer: WriterHandle<Peer>,
}

impl OutboxTask {
    /// Registers the sinks with the store (a sink no longer configured
    /// stops holding rows) and returns the task and each sink's report.
    pub fn new(
        store: Store,
        writer: WriterHandle<Peer>,
        sinks: Vec<Sink>,
        max_rows: u64,
        metrics: Option<Arc<Metrics>>,
    ) -> crate::Result<(OutboxTask, Vec<(&'static str, SharedReport)>)> {
        let names: Vec<&str> = sinks.iter().map(Sink::name).collect();
        store.outbox_configure(&names)?;
        let mut lanes = Vec::new();
        for sink in sinks {
            let cursor = store.outbox_cursor(sink.name())?.unwrap_or(0);
            lanes.push(Lane {
                sink,
                state: SinkState::new(Backoff::DEFAULT),
                report: Arc::new(Mutex::new(SinkReport {
                    health: SinkHealth::Ok,
                    backlog: 0,
                    delivered: 0,
                    started: false,
                })),
                cursor,
                persisted: cursor,
            });
        }
        let reports = lanes.iter().map(|l| (l.sink.name(), l.report.clone())).collect();
        Ok((
            OutboxTask {
                store,
                lanes,
                max_rows,
                metrics,
                writer,
            },
            reports,
        ))
    }

    /// Runs until `stop` resolves; the cursors are written at the end.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        self.deliver_until(stop).await;
        self.persist();
    }

    /// Has the writer write each sink's cursor where it moved, and remove
    /// what every sink took.
    fn persist(&mut self) {
        for lane in &mut self.lanes {
            if lane.cursor > lane.persisted {
                self.writer.send(StoreCommand::OutboxDelivered {
                    sink: lane.sink.name(),
                    upto: lane.cursor,
                });
                lane.persisted = lane.cursor;
            }
        }
    }

    async fn deliver_until(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut persisted_at = Instant::now();
        loop {
            if persisted_at.elapsed() >= PERSIST {
                persisted_at = Instant::now();
                self.persist();
            }
            let worked = match self.round().await {
                Ok(w) => w,
                Err(e) => {
                    log::warn!("outbox: {e}");
                    false
                }
            };
            if worked {
                // More may be waiting: go again at once, but let the stop in.
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::task::yield_now() => continue,
                }
            }
            let now = Instant::now();
            let wake = self
                .lanes
                .iter()
                .filter_map(|l| l.state.retry_at())
                .filter(|t| *t > now)
                .fold(now + POLL, |a, b| a.min(b));
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// One batch to every sink that is due; whether any took one.
    async fn round(&mut self) -> crate::Result<bool> {
        let mut worked = false;
        // The newest event, once a round: each sink's backlog is measured
        // from it.
        let last = self.store.outbox_last()?;
        for lane in &mut self.lanes {
            let name = lane.sink.name();
            let now = Instant::now();
            if !lane.state.ready(now) {
                continue;
            }
            let batch = self.store.outbox_after(lane.cursor, BATCH)?;
            let mut delivered = 0;
            if !batch.is_empty() {
                let (taken, error) = lane.sink.deliver(&batch).await;
                if taken > 0 {
                    lane.cursor = batch[taken - 1].id;
                    delivered = taken as u64;
                    worked = true;
                }
                match error {
                    None => {
                        if lane.state.health() != SinkHealth::Ok {
                            log::info!("outbox: {name} takes events again");
                        }
                        lane.state.delivered();
                    }
                    Some(e) => {
                        let first = lane.state.health() == SinkHealth::Ok;
                        let wait = lane.state.failed(now, e.clone());
                        if first {
                            log::warn!("outbox: {name}: {e}; its events wait in the outbox (retry in {wait:?})");
                        }
                    }
                }
            }
            let backlog = (last - lane.cursor).max(0) as u64;
            let mut r = lane.report.lock().expect("outbox report");
            r.health = lane.state.health();
            r.backlog = backlog;
            r.delivered += delivered;
            r.started = true;
            if let Some(m) = &self.metrics {
                m.outbox(name, delivered, backlog);
            }
        }
        let dropped = self.store.outbox_bound(self.max_rows)?;
        if dropped > 0 {
            log::warn!(
                "outbox: full ({} rows): dropped the {dropped} oldest value reports",
                self.max_rows
            );
            if let Some(m) = &self.metrics {
                m.outbox_dropped(dropped);
            }
        }
        Ok(worked)
    }
}

/// A sink's state as a health probe result: a failing sink is an error
/// the board shows as degraded (never down: see `health::Board::optional`).
pub fn probe(report: &SharedReport) -> Result<String, String> {
    let r = report.lock().expect("outbox report");
    match &r.health {
        _ if !r.started => Err("not tried yet".into()),
        SinkHealth::Ok => Ok(format!("{} events delivered, {} waiting", r.delivered, r.backlog)),
        SinkHealth::Failing { failures, error } => Err(format!(
            "{error} ({failures} attempts in a row; {} events waiting in the outbox)",
            r.backlog
        )),
    }
}
