//! Live events as Server-Sent Events (WHATWG HTML §9.2): registrations,
//! values, operation results, as the LwM2M server reports them. The
//! dashboard's script refreshes pages on them; API clients may listen too.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::Body;
use crate::lwm2m::server::ServerEvent;
use crate::transport::Peer;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How often a polled stream (a campaign's report) is read again.
const POLL: Duration = Duration::from_secs(1);

/// How often an open stream asks again whether its credential still
/// grants it: a revoked token, an ended session or a disabled user loses
/// the stream within this (issue 32: authorisation checked only at
/// connect let a revoked token's stream run on).
pub const RECHECK: Duration = Duration::from_secs(5);

/// Whether the stream's credential still grants it.
pub trait StillAllowed: FnMut() -> Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static {}
impl<F> StillAllowed for F where F: FnMut() -> Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static {}

/// The SSE event name and JSON data of a server event; `None` for events
/// that are not news to an operator.
pub fn describe(ev: &ServerEvent<Peer>) -> Option<(&'static str, Value)> {
    Some(match ev {
        ServerEvent::Registered { registration: r, .. } => (
            "registered",
            json!({ "endpoint": r.endpoint, "lifetime": r.lifetime, "binding": r.binding, "version": r.version }),
        ),
        ServerEvent::Updated { registration: r, .. } => ("updated", json!({ "endpoint": r.endpoint })),
        ServerEvent::Deregistered { endpoint, .. } => ("deregistered", json!({ "endpoint": endpoint })),
        ServerEvent::Expired { endpoint, .. } => ("expired", json!({ "endpoint": endpoint })),
        ServerEvent::ValuesReported { endpoint, records, .. } => {
            ("values", json!({ "endpoint": endpoint, "records": records }))
        }
        ServerEvent::OperationSent { id, endpoint, attempt } => (
            "operation",
            json!({ "endpoint": endpoint, "operation": id, "state": "sent", "attempt": attempt }),
        ),
        ServerEvent::OperationRequeued { id, endpoint, .. } => (
            "operation",
            json!({ "endpoint": endpoint, "operation": id, "state": "queued" }),
        ),
        ServerEvent::OperationFinished { id, endpoint, outcome } => (
            "operation",
            json!({ "endpoint": endpoint, "operation": id, "state": outcome.state().as_str() }),
        ),
        ServerEvent::ObservationStarted { .. } | ServerEvent::ObservationEnded { .. } => return None,
        ServerEvent::Rejected { endpoint, code, reason } => (
            "rejected",
            json!({ "endpoint": endpoint, "code": code.to_string(), "reason": reason }),
        ),
    })
}

fn endpoint_of(data: &Value) -> Option<&str> {
    data.get("endpoint").and_then(Value::as_str)
}

/// One SSE frame. JSON never contains a raw newline, so `data:` is one line.
pub fn frame(event: &str, data: &Value) -> Bytes {
    format!("event: {event}\ndata: {data}\n\n").into()
}

struct Stream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// The response: events (of one endpoint, if given) until the client goes
/// or the server stops. A client too slow to keep up is told it missed
/// events (`event: lagged`) rather than holding the server back.
pub fn stream(
    mut events: broadcast::Receiver<ServerEvent<Peer>>,
    endpoint: Option<String>,
    mut stop: watch::Receiver<bool>,
    mut allowed: impl StillAllowed,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 3000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            let out = tokio::select! {
                _ = crate::download::connection::raised(&mut stop) => return,
                _ = tx.closed() => return,
                _ = recheck.tick() => {
                    if !allowed().await {
                        return;
                    }
                    continue;
                }
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                ev = events.recv() => match ev {
                    Ok(ev) => match describe(&ev) {
                        Some((name, data)) if endpoint.as_deref().is_none_or(|e| endpoint_of(&data) == Some(e)) => {
                            frame(name, &data)
                        }
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => frame("lagged", &json!({ "missed": n })),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    respond(rx)
}

/// A stream of `event` frames: `first` at once, then what `poll` reads
/// each second whenever it differs from the last frame sent; it ends when
/// `poll` fails (the thing was deleted) or the server stops. For news no
/// broadcast carries (a campaign's counts change in the store).
pub fn polled<F, Fut>(
    event: &'static str,
    first: Value,
    mut poll: F,
    mut stop: watch::Receiver<bool>,
    mut allowed: impl StillAllowed,
) -> Response<Body>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Value>> + Send,
{
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut hello = b"retry: 3000\n: connected\n\n".to_vec();
        hello.extend_from_slice(&frame(event, &first));
        if tx.send(hello.into()).await.is_err() {
            return;
        }
        let mut last = first;
        let mut tick = tokio::time::interval(POLL);
        tick.tick().await;
        let mut quiet = 0u32;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            tokio::select! {
                _ = crate::download::connection::raised(&mut stop) => return,
                _ = tx.closed() => return,
                _ = recheck.tick() => {
                    if !allowed().await {
                        return;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            let Some(now) = poll().await else { return };
            let out = if now != last {
                quiet = 0;
                let f = frame(event, &now);
                last = now;
                f
            } else {
                quiet += 1;
                if POLL * quiet < KEEPALIVE {
                    continue;
                }
                quiet = 0;
                Bytes::from_static(b": keepalive\n\n")
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    respond(rx)
}

fn respond(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(Stream(rx).boxed());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    // nginx buffers proxied responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::secure(h, false);
    r
}
