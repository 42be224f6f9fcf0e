//! What handlers return, and the one mapping from errors to HTTP statuses.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderName;
use serde::Serialize;

use crate::error::Error;

/// A response before the shell adds the security headers.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, String)>,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).expect("serialises").into(),
            headers: Vec::new(),
        }
    }

    pub fn ok(value: &impl Serialize) -> Reply {
        Reply::json(StatusCode::OK, value)
    }

    pub fn html(body: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// 303 See Other: the answer to a form POST (post/redirect/get).
    pub fn redirect(location: &str) -> Reply {
        Reply {
            status: StatusCode::SEE_OTHER,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::new(),
            headers: vec![(hyper::header::LOCATION, location.to_string())],
        }
    }

    pub fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// An error as the client sees it: a status, a stable machine-readable
/// code, and a message meant for people. Store and I/O failures are logged
/// and shown as a bare 500, never with their details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

/// The JSON error body, `{"error": {...}}`, the same on every route.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub status: u16,
    /// Stable, e.g. `not_found`, `forbidden`, `invalid`.
    pub code: String,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> WebError {
        WebError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A request body that is not the JSON the route takes.
    pub fn malformed_json(message: impl std::fmt::Display) -> WebError {
        WebError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body: {message}"),
        )
    }

    pub fn unauthorized() -> WebError {
        WebError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in or send a bearer token",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal() -> WebError {
        WebError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<Error> for WebError {
    fn from(e: Error) -> WebError {
        let message = e.to_string();
        match e {
            Error::UnknownEndpoint(_) | Error::UnknownRegistration(_) | Error::NotFound(_) => {
                WebError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            Error::AlreadyExists(_) => WebError::new(StatusCode::CONFLICT, "conflict", message),
            Error::TooLarge { .. } => WebError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            Error::Invalid { .. }
            | Error::InvalidPath(_)
            | Error::Malformed { .. }
            | Error::Config { .. }
            | Error::Configuration(_) => WebError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message),
            Error::UnsupportedContentFormat(_) => {
                WebError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
            }
            Error::Store(_) | Error::Io { .. } => {
                log::error!("web: {message}");
                WebError::internal()
            }
        }
    }
}

pub type WebResult<T = Reply> = std::result::Result<T, WebError>;
