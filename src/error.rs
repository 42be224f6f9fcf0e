//! The one error enum that callers branch on.
//!
//! Transports map it once: the CoAP shell to a response code, the CLI to an
//! exit status. `anyhow` is used only at the edges (main, CLI, wiring).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key has an invalid value; `key` is the dotted path.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// Everything wrong with a configuration, found in one reading.
    #[error("{}", configuration_problems(.0))]
    Configuration(Vec<crate::config::Problem>),

    /// Bytes from the network or a file that do not decode.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// A content format we do not speak (CoAP 4.15).
    #[error("unsupported content format {0}")]
    UnsupportedContentFormat(u16),

    /// A path such as `/3/0/1` that does not parse or is not allowed here.
    #[error("invalid LwM2M path `{0}`")]
    InvalidPath(String),

    #[error("unknown endpoint `{0}`")]
    UnknownEndpoint(String),

    #[error("unknown registration `{0}`")]
    UnknownRegistration(String),

    #[error("not found: {0}")]
    NotFound(String),

    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// A firmware image (or other upload) over its size limit.
    #[error("too large: {what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },

    /// A name, version or other operator input that is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),

    /// Said once: the message carries the I/O error, so it is not also a
    /// `source` (anyhow's `{:#}` would print it twice).
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
}

impl Error {
    pub fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            reason: reason.into(),
        }
    }

    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// One problem as one line, as before; several as a list.
fn configuration_problems(problems: &[crate::config::Problem]) -> String {
    match problems {
        [one] => format!("config key `{}`: {}", one.key, one.reason),
        many => {
            let mut out = format!("{} configuration problems:", many.len());
            for p in many {
                out.push_str(&format!("\n  {}: {}", p.key, p.reason));
            }
            out
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
