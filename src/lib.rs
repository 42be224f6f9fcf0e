//! flownexus: an LwM2M server and firmware host for nRF9160 fleets.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod app;
pub mod bench;
pub mod campaign;
pub mod celery;
pub mod cli;
pub mod coap;
pub mod config;
pub mod datetime;
pub mod download;
pub mod dtls;
pub mod error;
pub mod firmware;
pub mod fota;
/// Fuzz targets (the `fuzz/` crate and the corpus replay in `make test`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod health;
pub mod logging;
pub mod lwm2m;
pub mod metrics;
pub mod outbox;
pub mod psk;
#[cfg(test)]
mod rendered_docs;
pub mod secret;
pub mod shell;
pub mod sim;
pub mod store;
pub mod transport;
pub mod users;
pub mod web;

pub use error::{Error, Result};
