//! The Prometheus listener (`metrics.listen`, loopback by default): `GET
//! /metrics` renders the counters with gauges read from the store and the
//! health board at that moment. No authentication: keep it on loopback or
//! a private network (the default binds 127.0.0.1).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::Status;
use crate::metrics::{Gauges, Metrics};
use crate::shell::health::SharedBoard;
use crate::store::Store;

/// What a scrape reads besides the counters.
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Mutex<Store>>,
    pub board: SharedBoard,
    /// For online/sleeping/offline (`lwm2m.queue_awake_window_s`,
    /// `lwm2m.lifetime_grace_s`).
    pub awake_window_s: u64,
    pub grace_s: u64,
}

fn gauges(s: &Scrape) -> crate::Result<Gauges> {
    let store = s.store.lock().expect("metrics store");
    let fleet = store.fleet_counts(s.awake_window_s, s.grace_s)?;
    let health = s
        .board
        .lock()
        .expect("health board")
        .report(crate::store::now_ms())
        .into_iter()
        .map(|c| {
            let level = match c.status {
                Status::Ok => 0,
                Status::Degraded => 1,
                Status::Down => 2,
            };
            (c.name, level, c.took_ms.map(|ms| ms as f64 / 1000.0))
        })
        .collect();
    Ok(Gauges {
        devices: vec![
            ("online", fleet.online),
            ("sleeping", fleet.sleeping),
            ("offline", fleet.offline),
        ],
        operations: store.operation_counts()?,
        value_journal: store.value_journal_len()?,
        active_updates: store.count_active_updates()?,
        health,
    })
}

async fn answer(scrape: Arc<Scrape>, method: Method, path: String) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if path != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "only /metrics here\n".into());
    }
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    let s = scrape.clone();
    let text = tokio::task::spawn_blocking(move || gauges(&s).map(|g| crate::metrics::render(&s.metrics, &g))).await;
    match text {
        Ok(Ok(text)) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the store failed: {e}\n"),
        ),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Serve scrapes until `stop`.
pub async fn run(listener: TcpListener, scrape: Scrape, mut stop: watch::Receiver<bool>) {
    let scrape = Arc::new(scrape);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = crate::download::connection::raised(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let scrape = scrape.clone();
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                async move { Ok::<_, Infallible>(answer(scrape, method, path).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}
