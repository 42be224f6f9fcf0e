//! flownexus: an LwM2M server and firmware host for nRF9160 fleets.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod coap;
pub mod config;
pub mod error;
pub mod lwm2m;

pub use error::{Error, Result};
