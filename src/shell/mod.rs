//! Thin tokio shells around the sans-I/O cores: they own sockets, timers and
//! the clock, and move bytes and events between the world and a core.

pub mod campaign;
pub mod dtls;
pub mod fota;
pub mod lwm2m;
pub mod udp;

use crate::lwm2m::server::Now;

/// The one place the LwM2M path reads the clock.
pub fn now() -> Now {
    Now {
        mono: std::time::Instant::now(),
        unix_ms: crate::store::now_ms(),
    }
}
