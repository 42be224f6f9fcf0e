//! Thin tokio shells around the sans-I/O cores: they own sockets, timers and
//! the clock, and move bytes and events between the world and a core.

pub mod activation;
pub mod campaign;
pub mod celery;
pub mod dtls;
pub mod fota;
pub mod health;
pub mod lwm2m;
pub mod metrics;
pub mod outbox;
pub mod record;
pub mod udp;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::lwm2m::server::Now;

/// Wake-ups between the server's own store pollers, so work one task
/// stored is taken by the next within milliseconds rather than at its next
/// poll (each poll stays, for work stored by other processes). A campaign
/// over a thousand devices at once waited out one poll per step per
/// device: about a quarter of its wall time beyond the downloads.
#[derive(Debug, Clone, Default)]
pub struct Nudges {
    /// An operation was queued in the store (for the operation poller).
    pub operations: Arc<Notify>,
    /// A firmware update was created (for the update task).
    pub updates: Arc<Notify>,
    /// An update left its download or ended: a campaign slot is free.
    pub campaigns: Arc<Notify>,
}

/// The one place the LwM2M path reads the clock.
pub fn now() -> Now {
    Now {
        mono: std::time::Instant::now(),
        unix_ms: crate::store::now_ms(),
    }
}
