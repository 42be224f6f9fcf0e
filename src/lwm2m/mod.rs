//! OMA LwM2M 1.0/1.1 server: paths and values, the object model, content
//! formats, and the sans-I/O server core.

pub mod admission;
pub mod content;
pub mod ddf;
pub mod display;
pub mod model;
pub mod path;
pub mod profile;

pub use model::Models;
pub use path::{ObjectId, Record, ResourcePath, Value};
pub mod operation;
pub mod registration;
pub mod server;

#[cfg(test)]
mod conformance_tests;
