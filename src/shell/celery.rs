//! The Celery sink: each outbox event becomes a Celery task message on the
//! broker's queue (a Redis list, as kombu's Redis transport keeps it), for
//! Python workers to run. A batch is pushed in one MULTI/EXEC, so Redis
//! takes it whole or not at all, and the outbox cursor moves only after
//! Redis said so.

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, IntoConnectionInfo};

use crate::celery::message::Task;
use crate::config::CeleryConfig;
use crate::lwm2m::model::Models;
use crate::outbox::OutboxEvent;

/// How long connecting and each command may take before the attempt
/// counts as failed (and the outbox keeps the batch).
const TIMEOUT: Duration = Duration::from_secs(5);

/// The connection of a sink or consumer: the broker's URL with the
/// password file applied.
fn client(config: &CeleryConfig) -> crate::Result<redis::Client> {
    let url = config.broker.as_deref().unwrap_or_default();
    let bad = |reason: String| crate::Error::config("events.celery.broker", reason);
    crate::celery::broker_problem(url).map_err(bad)?;
    let mut info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
    if let Some(file) = &config.password_file {
        let password = std::fs::read_to_string(file).map_err(|cause| crate::Error::Io {
            path: file.clone(),
            cause,
        })?;
        let redis = info.redis_settings().clone().set_password(password.trim_end());
        info = info.set_redis_settings(redis);
    }
    redis::Client::open(info).map_err(|e| bad(e.to_string()))
}

async fn connect(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot reach the broker: {e}"))
}

pub struct CelerySink {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    queue: String,
    prefix: String,
    origin: String,
    models: Arc<Models>,
}

impl CelerySink {
    /// A sink for `config` (a broker is set). Connecting happens on the
    /// first delivery: a broker that is down at start leaves the server
    /// running, with this sink degraded.
    pub fn new(config: &CeleryConfig, models: Arc<Models>) -> crate::Result<CelerySink> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(CelerySink {
            client: client(config)?,
            conn: None,
            queue: config.queue.clone(),
            prefix: config.task_prefix.clone(),
            origin: format!("flownexus@{}", host.trim()),
            models,
        })
    }

    async fn connection(&mut self) -> Result<redis::aio::MultiplexedConnection, String> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = connect(&self.client).await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// The events as task messages, in order, onto the queue.
    pub async fn deliver(&mut self, events: &[OutboxEvent]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in events {
            let name = format!("{}{}", self.prefix, e.kind.as_str());
            let task = Task {
                name: &name,
                id: &e.event_id,
                queue: &self.queue,
                args: Vec::new(),
                kwargs: e.readable(&self.models),
                origin: &self.origin,
                ignore_result: true,
            };
            // LPUSH with workers taking from the right: first in, first out.
            pipe.lpush(&self.queue, task.encode()).ignore();
            // The end of what a Celery task asked: its result, for the
            // producer's `AsyncResult.get()`.
            if let Some((task_id, ending)) = crate::celery::result::of_event(e) {
                store_result(&mut pipe, &task_id, &ending);
            }
        }
        let mut conn = self.connection().await?;
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // A new connection next time: this one may be broken.
                self.conn = None;
                Err(format!("the broker refused the batch: {e}"))
            }
        }
    }
}

/// A task's result as Celery's Redis backend keeps it: the entry under its
/// key for a day, and published on the key's channel for a producer
/// already waiting.
fn store_result(pipe: &mut redis::Pipeline, task_id: &str, ending: &crate::celery::result::Ending) {
    let key = crate::celery::result::key(task_id);
    let entry = crate::celery::result::entry(task_id, ending, crate::store::now_ms());
    pipe.set_ex(&key, &entry, crate::celery::result::EXPIRES_S).ignore();
    pipe.publish(&key, &entry).ignore();
}

/// Why a task was not taken.
enum Refusal {
    /// Answered with a failure result (and acknowledged).
    Answer(crate::celery::message::Undecodable),
    /// Left in the processing list, to be taken again.
    Later(String),
}

/// What a Celery task may ask of the server, and how.
pub struct TaskRunner {
    pub store: crate::store::Store,
    pub models: Arc<Models>,
    /// Firmware updates, when the firmware server runs.
    pub updates: Option<crate::shell::fota::Starter>,
    pub nudges: crate::shell::Nudges,
    pub operation_deadline_s: u64,
    pub operation_max_attempts: u32,
}

/// Takes the tasks Python producers send to `events.celery.task_queue`.
/// Each is moved to a processing list as it is taken (BLMOVE, Redis's
/// reliable-queue pattern) and removed from it only after what it asked
/// is committed to the store; the processing list is worked through
/// again at start. A task taken twice finds the operation it made the
/// first time (its id is unique in the store), so a kill between the two
/// loses nothing and duplicates nothing.
pub struct Consumer {
    client: redis::Client,
    queue: String,
    processing: String,
    prefix: String,
    runner: TaskRunner,
    limit: crate::coap::amplification::Guard<String>,
}

impl Consumer {
    pub fn new(config: &CeleryConfig, runner: TaskRunner) -> crate::Result<Consumer> {
        Ok(Consumer {
            client: client(config)?,
            queue: config.task_queue.clone(),
            processing: format!("{}.processing", config.task_queue),
            prefix: config.task_prefix.clone(),
            runner,
            limit: crate::coap::amplification::Guard::new(config.tasks_per_producer_per_s),
        })
    }

    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wait = crate::outbox::delivery::SinkState::new(crate::outbox::delivery::Backoff::DEFAULT);
        loop {
            let err = tokio::select! {
                _ = &mut stop => return,
                e = self.session() => e,
            };
            let first = wait.health() == crate::outbox::delivery::SinkHealth::Ok;
            let pause = wait.failed(std::time::Instant::now(), err.clone());
            if first {
                log::warn!("celery tasks: {err}; trying again (next in {pause:?})");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One connection's life: the processing list first (tasks taken
    /// before a crash or a lost connection and not yet acknowledged,
    /// oldest first), then the queue.
    async fn session(&mut self) -> String {
        let mut conn = match connect(&self.client).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        loop {
            let left: Result<Option<Vec<u8>>, _> = conn.lindex(&self.processing, -1).await;
            match left {
                Ok(Some(message)) => {
                    if let Err(e) = self.take_and_acknowledge(&mut conn, &message).await {
                        return e;
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("reading {}: {e}", self.processing),
            }
        }
        loop {
            let moved: Result<Option<Vec<u8>>, _> = conn
                .blmove(
                    &self.queue,
                    &self.processing,
                    redis::Direction::Right,
                    redis::Direction::Left,
                    1.0,
                )
                .await;
            match moved {
                Ok(Some(message)) => {
                    if let Err(e) = self.take_and_acknowledge(&mut conn, &message).await {
                        return e;
                    }
                }
                Ok(None) => {}
                Err(e) => return format!("taking a task: {e}"),
            }
        }
    }

    /// [`Self::take`], then the task leaves the processing list.
    async fn take_and_acknowledge(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        message: &[u8],
    ) -> Result<(), String> {
        self.take(conn, message).await?;
        let removed: Result<i64, _> = conn.lrem(&self.processing, 1, message).await;
        removed.map(|_| ()).map_err(|e| format!("acknowledging a task: {e}"))
    }

    /// Commits what `message` asks, or answers it with a failure result.
    /// A store that cannot commit now is not the task's fault: the task
    /// stays in the processing list and is taken again after the backoff.
    async fn take(&mut self, conn: &mut redis::aio::MultiplexedConnection, message: &[u8]) -> Result<(), String> {
        let refused = match self.accept(message) {
            Ok(()) => return Ok(()),
            Err(Refusal::Later(reason)) => return Err(format!("the store cannot take a task now: {reason}")),
            Err(Refusal::Answer(r)) => r,
        };
        log::warn!(
            "celery task refused: {}",
            crate::lwm2m::display::printable(&refused.reason)
        );
        let Some(task_id) = refused.id else { return Ok(()) };
        let mut pipe = redis::pipe();
        store_result(
            &mut pipe,
            &task_id,
            &crate::celery::result::Ending::Failure(refused.reason),
        );
        pipe.query_async::<()>(conn)
            .await
            .map_err(|e| format!("writing a task's result: {e}"))
    }

    fn accept(&mut self, message: &[u8]) -> Result<(), Refusal> {
        use crate::celery::message::Undecodable;
        use crate::celery::tasks::{Request, parse};
        let task = crate::celery::message::decode(message).map_err(Refusal::Answer)?;
        let answer = |reason: String| {
            Refusal::Answer(Undecodable {
                id: Some(task.id.clone()),
                reason,
            })
        };
        // The store's own trouble (busy, a full disk) is tried again; what
        // it says of the request (no such device) is the answer.
        let refuse = |e: crate::Error| match e {
            crate::Error::Store(_) | crate::Error::Io { .. } => Refusal::Later(e.to_string()),
            e => answer(format!("{}: {e}", task.name)),
        };
        if !self.limit.admit(std::time::Instant::now(), task.origin.clone()) {
            return Err(answer(format!(
                "{} from {:?}: over this producer's limit (events.celery.tasks_per_producer_per_s)",
                task.name, task.origin
            )));
        }
        let r = &mut self.runner;
        match parse(&self.prefix, &task).map_err(answer)? {
            Request::Operation {
                endpoint,
                kind,
                deadline_s,
            } => {
                kind.validate(&r.models).map_err(refuse)?;
                let deadline = crate::store::now_ms() + deadline_s.unwrap_or(r.operation_deadline_s) as i64 * 1000;
                let (id, new) = r
                    .store
                    .queue_task_operation(&endpoint, &kind, deadline, r.operation_max_attempts, &task.id)
                    .map_err(refuse)?;
                if new {
                    log::info!(
                        "celery task {} queued {} {} on {endpoint:?} (operation {id})",
                        task.id,
                        kind.name(),
                        kind.path()
                    );
                    r.nudges.operations.notify_one();
                }
            }
            Request::UpdateFirmware { endpoint, image } => {
                let Some(updates) = &r.updates else {
                    return Err(answer(
                        "update_firmware: the firmware server is disabled (fw.enabled)".into(),
                    ));
                };
                let known = r.store.update_of_task(&task.id).map_err(refuse)?;
                if known.is_none() {
                    let by = format!("celery:{}", task.origin);
                    let id = updates
                        .create(&r.store, &endpoint, &[image.as_str()], &by, Some(&task.id))
                        .map_err(refuse)?;
                    log::info!(
                        "celery task {} started firmware update {id} of {endpoint:?} to {image}",
                        task.id
                    );
                    r.nudges.updates.notify_one();
                }
            }
        }
        Ok(())
    }
}
