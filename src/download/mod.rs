//! The firmware download server for nRF91 devices: HTTPS with every TLS
//! record ≤ `fw.max_record_bytes`, HTTP/1.1 only (hyper's http1 server; h2
//! is not compiled in), single byte ranges, tiny response heads.
//!
//! URLs: `/binaries/NAME` (what devices with a hard-coded host prepend) and
//! `/fw/SHA256/NAME`; an optional `?t=TOKEN` binds a download to a device.
//! Every request is recorded for FOTA and the dashboard.

pub mod blockwise;
pub mod connection;
pub mod proxy_protocol;
pub mod range;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::firmware::Catalogue;
use crate::store::{DownloadRecord, FirmwareRow, Store, now_ms};
use range::{Plan, Representation};
use token::TokenKey;

/// A servable image: its record, bytes and validators.
struct Image {
    row: FirmwareRow,
    bytes: Bytes,
    rep: Representation,
}

struct CacheEntry {
    image: Arc<Image>,
    checked: Instant,
}

/// Catalogue records are re-read at most this often per URL, so a removal
/// by the CLI stops downloads within this time.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Server {
    catalogue: Catalogue,
    store: Mutex<Store>,
    key: Option<TokenKey>,
    require_token: bool,
    cache: Mutex<HashMap<String, CacheEntry>>,
    cache_budget: u64,
    record: Box<dyn Fn(DownloadRecord) + Send + Sync>,
}

/// Timeouts and limits of the connection handling.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake: Duration,
    pub idle: Duration,
    pub shutdown_grace: Duration,
    /// Every connection opens with a PROXY protocol v1 header (behind
    /// nginx's SNI pass-through, `fw.proxy_protocol`).
    pub proxy_protocol: bool,
}

enum Lookup<'a> {
    Name(&'a str),
    Sha(&'a str),
}

impl<'a> Lookup<'a> {
    /// `binaries/NAME` or `fw/SHA256/NAME`; anything else, dotfiles and
    /// traversal included, is not here.
    fn of(segments: &[&'a str]) -> Option<Lookup<'a>> {
        match segments {
            ["binaries", name] if crate::firmware::valid_name(name) => Some(Lookup::Name(name)),
            ["fw", sha, name]
                if sha.len() == 64
                    && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    && crate::firmware::valid_name(name) =>
            {
                Some(Lookup::Sha(sha))
            }
            _ => None,
        }
    }
}

fn response(status: u16, headers: Vec<(&'static str, String)>, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).expect("valid status");
    let h = r.headers_mut();
    for (k, v) in headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
            h.append(k, v);
        }
    }
    r
}

fn status_only(status: u16) -> Response<Full<Bytes>> {
    response(status, vec![("content-length", "0".into())], Bytes::new())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

impl Server {
    pub fn new(
        catalogue: Catalogue,
        store: Store,
        key: Option<TokenKey>,
        require_token: bool,
        cache_budget: u64,
        record: Box<dyn Fn(DownloadRecord) + Send + Sync>,
    ) -> Server {
        Server {
            catalogue,
            store: Mutex::new(store),
            key,
            require_token,
            cache: Mutex::new(HashMap::new()),
            cache_budget,
            record,
        }
    }

    /// Find a live image, from the cache while it is fresh.
    async fn image(self: &Arc<Self>, lookup: Lookup<'_>) -> Option<Arc<Image>> {
        let key = match lookup {
            Lookup::Name(n) => format!("n:{n}"),
            Lookup::Sha(s) => format!("s:{s}"),
        };
        if let Some(e) = self.cache.lock().expect("cache").get(&key)
            && e.checked.elapsed() < RECHECK
        {
            return Some(e.image.clone());
        }
        let this = self.clone();
        let k = key.clone();
        let found = tokio::task::spawn_blocking(move || -> Option<(FirmwareRow, Bytes)> {
            let store = this.store.lock().expect("store");
            let row = match k.split_at(2) {
                ("n:", name) => store.live_firmware_by_name(name).ok()??,
                (_, sha) => store.live_firmware_by_sha(sha).ok()??,
            };
            drop(store);
            // Reuse bytes already in memory for the same content.
            let cached = this
                .cache
                .lock()
                .expect("cache")
                .values()
                .find(|e| e.image.row.sha256 == row.sha256)
                .map(|e| e.image.bytes.clone());
            let bytes = match cached {
                Some(b) => b,
                None => Bytes::from(std::fs::read(this.catalogue.image_path(&row.sha256)).ok()?),
            };
            Some((row, bytes))
        })
        .await
        .ok()
        .flatten();
        let mut cache = self.cache.lock().expect("cache");
        let Some((row, bytes)) = found else {
            cache.remove(&key);
            return None;
        };
        let rep = Representation::new(row.size, &row.sha256, row.uploaded_at / 1000);
        let image = Arc::new(Image { row, bytes, rep });
        // Make room by dropping the least recently checked other images
        // (entries of the same content share its bytes and cost nothing
        // more). Start-up guarantees one image always fits the budget.
        cache.remove(&key);
        let cost = |c: &HashMap<String, CacheEntry>| {
            let mut seen = std::collections::HashSet::new();
            c.values()
                .filter(|e| seen.insert(e.image.row.sha256.clone()))
                .map(|e| e.image.row.size)
                .sum::<u64>()
        };
        while cost(&cache) + image.row.size > self.cache_budget {
            let oldest = cache
                .iter()
                .filter(|(_, e)| e.image.row.sha256 != image.row.sha256)
                .min_by_key(|(_, e)| e.checked)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    cache.remove(&k);
                }
                None => break,
            }
        }
        cache.insert(
            key,
            CacheEntry {
                image: image.clone(),
                checked: Instant::now(),
            },
        );
        Some(image)
    }

    /// The device a download `token` was issued to, if it opens `image`
    /// now; `Ok(None)` without a token where none is required.
    fn authorise(&self, image: &Image, token: Option<&str>) -> Result<Option<String>, ()> {
        match (token, &self.key) {
            (Some(t), Some(key)) => key
                .verify(t, &image.row.sha256, now_ms() / 1000)
                .map(Some)
                .map_err(|_| ()),
            (Some(_), None) => Err(()),
            (None, _) if self.require_token => Err(()),
            (None, _) => Ok(None),
        }
    }

    /// A device's CoAP GET of an image on the LwM2M port: the same paths,
    /// tokens and accounting as over HTTPS, one Block2 block an answer
    /// (`blockwise`). 4.04 for no such image, 4.03 for a bad token.
    pub async fn coap_get(self: Arc<Self>, req: &crate::coap::Request, peer: SocketAddr) -> crate::coap::Response {
        use crate::coap::{Code, Response as CoapResponse};
        let started = Instant::now();
        let segments: Vec<&str> = req.options.uri_path.iter().map(String::as_str).collect();
        let Some(lookup) = Lookup::of(&segments) else {
            return CoapResponse::new(Code::NOT_FOUND);
        };
        let Some(image) = self.image(lookup).await else {
            return CoapResponse::new(Code::NOT_FOUND);
        };
        let token = req.options.uri_query.iter().find_map(|q| q.strip_prefix("t="));
        let Ok(device) = self.authorise(&image, token) else {
            return CoapResponse::new(Code::FORBIDDEN);
        };
        // The ETag: the first 8 bytes of the SHA-256, as the hex names it.
        let etag: Vec<u8> = (0..8)
            .filter_map(|i| u8::from_str_radix(image.row.sha256.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let (response, range) = blockwise::answer(&image.bytes, &etag, req.options.block2);
        (self.record)(DownloadRecord {
            ts: now_ms(),
            firmware_id: image.row.id,
            range,
            status: u16::from(response.code.class()) * 100 + u16::from(response.code.0 & 0x1f),
            bytes: response.payload.len() as u64,
            duration_us: started.elapsed().as_micros() as u64,
            peer,
            device,
            doom_loop: false,
            coap: true,
        });
        response
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let is_get = req.method() == Method::GET;
        if !is_get && req.method() != Method::HEAD {
            return response(
                405,
                vec![("allow", "GET, HEAD".into()), ("content-length", "0".into())],
                Bytes::new(),
            );
        }
        // Old clients send `//binaries/x.bin`: leading slashes collapse.
        let path = req.uri().path().trim_start_matches('/');
        let segments: Vec<&str> = path.split('/').collect();
        let Some(lookup) = Lookup::of(&segments) else {
            return status_only(404);
        };
        let Some(image) = self.image(lookup).await else {
            return status_only(404);
        };
        let Ok(device) = self.authorise(&image, query_param(req.uri().query(), "t")) else {
            return status_only(403);
        };
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let plan = range::plan(
            is_get,
            header(hyper::header::RANGE),
            header(hyper::header::IF_RANGE),
            &image.rep,
        );
        let (status, headers) = range::head(plan, &image.rep);
        let (body, range) = match plan {
            Plan::Full => (image.bytes.clone(), None),
            Plan::Partial { start, end } => (image.bytes.slice(start as usize..=end as usize), Some((start, end))),
            Plan::Unsatisfiable { .. } => (Bytes::new(), None),
        };
        let sent = if is_get { body.len() as u64 } else { 0 };
        (self.record)(DownloadRecord {
            ts: now_ms(),
            firmware_id: image.row.id,
            range,
            status,
            bytes: sent,
            duration_us: started.elapsed().as_micros() as u64,
            peer,
            device,
            doom_loop: matches!(plan, Plan::Unsatisfiable { doom_loop: true }),
            coap: false,
        });
        response(status, headers, if is_get { body } else { Bytes::new() })
    }
}

/// Accept TLS connections until `stop` is raised, then let running
/// downloads finish for up to `limits.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<Server>,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    let mut stopped = stop.clone();
    loop {
        // Reap finished connections so the set stays the size of the live ones.
        while connections.try_join_next().is_some() {}
        let (mut tcp, mut peer) = tokio::select! {
            _ = connection::raised(&mut stopped) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    log::warn!("firmware server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            if limits.proxy_protocol {
                match tokio::time::timeout(limits.handshake, proxy_protocol::read_v1(&mut tcp)).await {
                    Ok(Ok(source)) => peer = source.unwrap_or(peer),
                    Ok(Err(e)) => return log::debug!("firmware server: from {peer}: {e}"),
                    Err(_) => return log::debug!("firmware server: no PROXY header from {peer} in time"),
                }
            }
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log::debug!("firmware server: TLS handshake with {peer}: {e}");
                    return;
                }
                Err(_) => {
                    log::debug!("firmware server: TLS handshake with {peer} timed out");
                    return;
                }
            };
            let handle = move |req| server.clone().handle(req, peer);
            connection::serve(tls, handle, limits.idle, stop).await;
        });
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drain).await.is_err() {
        log::warn!(
            "firmware server: downloads still running after {:?}; closing them",
            limits.shutdown_grace
        );
        connections.abort_all();
    }
}
