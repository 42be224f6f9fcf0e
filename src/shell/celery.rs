//! The Celery sink: each outbox event becomes a Celery task message on the
//! broker's queue (a Redis list, as kombu's Redis transport keeps it), for
//! Python workers to run. A batch is pushed in one MULTI/EXEC, so Redis
//! takes it whole or not at all, and the outbox cursor moves only after
//! Redis said so.

use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;

use crate::celery::message::Task;
use crate::config::CeleryConfig;
use crate::lwm2m::model::Models;
use crate::outbox::OutboxEvent;

/// How long connecting and each command may take before the attempt
/// counts as failed (and the outbox keeps the batch).
const TIMEOUT: Duration = Duration::from_secs(5);

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
        let client = redis::Client::open(info).map_err(|e| bad(e.to_string()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(CelerySink {
            client,
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
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot reach the broker: {e}"))?;
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
