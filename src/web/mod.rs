//! The operators' dashboard and REST API on `http.listen` (127.0.0.1:8000
//! behind nginx): hyper's HTTP/1.1 server, the route table in [`route`],
//! authentication ([`auth`]) and the one request pipeline below.
//!
//! Every request goes through the same steps: route lookup → principal
//! (bearer token or session cookie) → role check → origin and CSRF check
//! for state changes → bounded body read → handler on the blocking pool
//! (it may use SQLite) → security headers. Handlers never see a request
//! that failed a step.

pub mod api;
pub mod api_reference;
pub mod assets;
pub mod auth;
pub mod bulk;
pub mod campaigns;
pub mod chart;
pub mod device_page;
pub mod export;
pub mod form;
pub mod object_tree;
pub mod pages;
pub mod preferences;
pub mod profiles;
mod reply;
pub mod route;
pub mod sse;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use auth::Origin;
pub use reply::{Reply, WebError, WebResult};
use route::{Access, BodyKind, Found, Route, Run, Surface};

use crate::config::{HttpConfig, Lwm2mConfig};
use crate::firmware::Catalogue;
use crate::lwm2m::model::Models;
use crate::shell::lwm2m::Events;
use crate::store::Store;
use crate::store::writer::SharedPending;
use crate::users::Principal;

pub type Body = BoxBody<Bytes, Infallible>;

/// Everything the handlers share.
pub struct Web {
    pub http: HttpConfig,
    pub lwm2m: Lwm2mConfig,
    /// Where operators reach us; `None`: whatever `Host` says (development).
    pub origin: Option<Origin>,
    pub cookies: auth::Cookies,
    pub signer: auth::Signer,
    pub limiter: Mutex<auth::LoginLimiter>,
    pub events: Events,
    pub models: Arc<Models>,
    pub catalogue: Catalogue,
    pub max_upload: u64,
    /// Starting firmware updates; `None` with the firmware server off.
    pub updates: Option<crate::shell::fota::Starter>,
    /// The health probes' results (`/healthz`, `/api/v1/health`).
    pub health: Option<crate::shell::health::SharedBoard>,
    /// Requests by route and status, for `/metrics`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    db_path: PathBuf,
    /// The store writer's journal books: pages show values not yet moved
    /// into the history.
    pending: SharedPending,
    /// The overview's last fleet count.
    fleet: Mutex<Option<FleetSummary>>,
    pool: Mutex<Vec<Store>>,
    /// Password hashing (19 MiB each) admitted two at a time.
    costly: Semaphore,
    stop: watch::Receiver<bool>,
}

/// Reader connections kept for reuse.
const POOL: usize = 8;

/// How often the overview's fleet figures are counted again.
const FLEET_RECOUNT: Duration = Duration::from_secs(10);

/// The overview's fleet figures. Counting a fleet's registrations by status
/// scans them all (a quarter of a second at 1,000,000 devices), so a task
/// counts every [`FLEET_RECOUNT`] and the page shows the last count and
/// when it was made, instead of scanning on every visit.
#[derive(Debug, Clone)]
pub struct FleetSummary {
    pub counts: crate::store::dashboard::FleetCounts,
    pub versions: Vec<(String, u64)>,
    pub counted_at: i64,
}

/// What a handler gets: the request, decoded and checked.
pub struct Ctx<'a> {
    pub web: &'a Web,
    pub store: &'a mut Store,
    pub who: Option<Principal>,
    /// The session cookie's secret value, when signed in with one.
    pub session: Option<String>,
    /// The pre-login cookie (binds the login form's CSRF token).
    pub login_cookie: Option<String>,
    pub params: Vec<(&'static str, String)>,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    pub content_type: String,
    /// The parts of a multipart upload, parsed once (the CSRF check reads
    /// one of them); empty for other bodies.
    pub parts: Vec<form::Part>,
    pub peer: IpAddr,
    /// A GET request's path and query (`/` for other methods): where a
    /// settings form on the page returns to.
    pub target: String,
}

impl Ctx<'_> {
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        form::field(&self.query, name).filter(|v| !v.is_empty())
    }

    /// The signed-in principal; routes that reach a handler with
    /// `Access::Signed` always have one.
    pub fn who(&self) -> WebResult<&Principal> {
        self.who.as_ref().ok_or_else(WebError::unauthorized)
    }

    /// The body as the JSON object `T`. Every API body is an object; serde
    /// would also fill a struct from an array (`[null, null]`), which the
    /// OpenAPI document does not allow, so anything else is refused first.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> WebResult<T> {
        if self.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(WebError::malformed_json("a JSON object is expected"));
        }
        serde_json::from_slice(&self.body).map_err(WebError::malformed_json)
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form::urlencoded(&String::from_utf8_lossy(&self.body))
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self) -> String {
        match (&self.session, &self.login_cookie) {
            (Some(s), _) => self.web.signer.csrf("session", s),
            (None, Some(l)) => self.web.signer.csrf("login", l),
            (None, None) => String::new(),
        }
    }

    /// An integer path parameter.
    pub fn id(&self, name: &str) -> WebResult<i64> {
        self.param(name)
            .parse()
            .map_err(|_| WebError::not_found(format!("no {name} `{}`", self.param(name))))
    }
}

impl Web {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: HttpConfig,
        lwm2m: Lwm2mConfig,
        secret: &[u8],
        events: Events,
        models: Arc<Models>,
        catalogue: Catalogue,
        max_upload: u64,
        db_path: PathBuf,
        pending: SharedPending,
        stop: watch::Receiver<bool>,
    ) -> Web {
        let origin = http.public_url.as_deref().and_then(Origin::parse);
        let limiter = auth::LoginLimiter::new(
            http.login_failures_per_account,
            http.login_failures_per_address,
            http.login_window_s,
        );
        Web {
            cookies: auth::Cookies {
                secure: origin.as_ref().is_some_and(|o| o.https),
            },
            origin,
            signer: auth::Signer::new(secret),
            limiter: Mutex::new(limiter),
            http,
            lwm2m,
            events,
            models,
            catalogue,
            max_upload,
            updates: None,
            health: None,
            metrics: None,
            db_path,
            pending,
            fleet: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
            costly: Semaphore::new(2),
            stop,
        }
    }

    /// With firmware updates started through `starter`.
    pub fn with_updates(mut self, starter: Option<crate::shell::fota::Starter>) -> Web {
        self.updates = starter;
        self
    }

    pub fn with_health(mut self, board: crate::shell::health::SharedBoard) -> Web {
        self.health = Some(board);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Web {
        self.metrics = Some(metrics);
        self
    }

    /// Every component's health now; without a prober (a web shell built
    /// alone, as the web benchmark does), none.
    pub fn health(&self) -> Vec<crate::health::ComponentHealth> {
        self.health.as_ref().map_or_else(Vec::new, |b| {
            b.lock().expect("health board").report(crate::store::now_ms())
        })
    }

    /// The last fleet count, or a new one if there is none yet.
    pub fn fleet_summary(&self, store: &Store) -> WebResult<FleetSummary> {
        if let Some(s) = self.fleet.lock().expect("fleet summary").clone() {
            return Ok(s);
        }
        self.count_fleet(store)
    }

    fn count_fleet(&self, store: &Store) -> WebResult<FleetSummary> {
        let counts = store.fleet_counts(self.lwm2m.queue_awake_window_s, self.lwm2m.lifetime_grace_s)?;
        let s = FleetSummary {
            versions: store.firmware_versions(12, counts.total)?,
            counts,
            counted_at: crate::store::now_ms(),
        };
        *self.fleet.lock().expect("fleet summary") = Some(s.clone());
        Ok(s)
    }

    /// The principal behind a bearer token (which must be live) or a
    /// session cookie (which may be stale: the request is then anonymous),
    /// and the session that still stands.
    async fn principal(
        self: &Arc<Self>,
        bearer: Option<String>,
        session: Option<String>,
    ) -> WebResult<(Option<Principal>, Option<String>)> {
        let idle = self.http.session_idle_timeout_s as i64 * 1000;
        let max_age = self.http.session_max_age_s as i64 * 1000;
        self.with_store(move |_, store| {
            if let Some(t) = bearer {
                let p = store.token_principal(&auth::digest(&t))?;
                return p.map(|p| (Some(p), None)).ok_or_else(WebError::unauthorized);
            }
            if let Some(s) = session
                && let Some(p) = store.session_principal(&auth::digest(&s), idle, max_age)?
            {
                return Ok((Some(p), Some(s)));
            }
            Ok((None, None))
        })
        .await
    }

    /// For a stream that outlives its request: asks again whether the
    /// credential it was opened with still grants the route (a token
    /// revoked, a session ended, a user disabled or demoted closes it).
    fn still_allowed(
        self: &Arc<Self>,
        route: &'static Route,
        bearer: Option<String>,
        session: Option<String>,
    ) -> impl sse::StillAllowed {
        let web = self.clone();
        move || {
            let (web, bearer, session) = (web.clone(), bearer.clone(), session.clone());
            Box::pin(async move {
                let who = web.principal(bearer, session).await.ok().and_then(|(p, _)| p);
                match route.access {
                    Access::Public => true,
                    Access::Signed(required) => who.is_some_and(|p| p.role.allows(required)),
                }
            })
        }
    }

    /// Run `f` with a store connection on the blocking pool.
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Web, &mut Store) -> WebResult<T> + Send + 'static,
    ) -> WebResult<T> {
        let web = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = web.pool.lock().expect("pool").pop();
            let mut store = match pooled {
                Some(s) => s,
                None => Store::open(&web.db_path)
                    .map_err(WebError::from)?
                    .with_pending(web.pending.clone()),
            };
            let out = f(&web, &mut store);
            let mut pool = web.pool.lock().expect("pool");
            if pool.len() < POOL {
                pool.push(store);
            }
            out
        })
        .await
        .unwrap_or_else(|e| {
            log::error!("web handler panicked: {e}");
            Err(WebError::internal())
        })
    }

    /// The origin state-changing requests must come from.
    /// Whether a browser's `Origin` is our own page (RFC 6454 §7.3: the
    /// header names the origin of the page that made the request). Ours is
    /// the configured public URL, or without one the `Host` the browser
    /// connected to; and, whatever the public URL, a loopback origin equal
    /// to the `Host`: an operator on an SSH tunnel
    /// (`ssh -L 8000:127.0.0.1:8000 host`) browses `http://localhost:8000`.
    /// No page elsewhere can claim a loopback origin, and another local
    /// page (`http://localhost:3000`) does not match the `Host`.
    fn origin_allowed(&self, origin: &str, headers: &HeaderMap) -> bool {
        let origin = origin.to_ascii_lowercase();
        let host = header_str(headers, header::HOST).map(|h| format!("http://{}", h.to_ascii_lowercase()));
        match &self.origin {
            Some(o) if origin == o.url() => true,
            Some(_) => host.as_deref() == Some(origin.as_str()) && auth::Origin::is_loopback_url(&origin),
            None => host.as_deref() == Some(origin.as_str()),
        }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let api = parts.uri.path().starts_with("/api/");
        let (route, params) = match route::find(&parts.method, parts.uri.path()) {
            Found::Route(r, p) => (r, p),
            Found::MethodNotAllowed(allow) => {
                let allow = allow.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ");
                let e = WebError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed",
                );
                let mut r = self.error_response(&e, api);
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
                return r;
            }
            Found::NotFound => return self.error_response(&WebError::not_found("no such page"), api),
        };
        let head = parts.method == Method::HEAD;
        let mut response = match self.clone().pipeline(route, params, parts, body, peer).await {
            Ok(r) => r,
            Err(e) if e.status == StatusCode::UNAUTHORIZED && route.surface == Surface::Page => {
                // Pages send the anonymous to the login form and back.
                Reply::redirect("/login").into_response()
            }
            Err(e) => self.error_response(&e, route.surface == Surface::Api),
        };
        if head {
            *response.body_mut() = Full::new(Bytes::new()).boxed();
        }
        if let Some(m) = &self.metrics {
            m.http(route.path, response.status().as_u16());
        }
        response
    }

    async fn pipeline(
        self: Arc<Self>,
        route: &'static Route,
        params: Vec<(&'static str, String)>,
        parts: hyper::http::request::Parts,
        body: Incoming,
        peer: SocketAddr,
    ) -> WebResult<Response<Body>> {
        let headers = &parts.headers;
        let client = client_address(&self.http.trusted_proxies, peer.ip(), headers);
        let cookie_header = header_str(headers, header::COOKIE).unwrap_or("").to_string();
        let session = auth::cookie(&cookie_header, self.cookies.session_name()).map(str::to_string);
        let login_cookie = auth::cookie(&cookie_header, self.cookies.login_name()).map(str::to_string);
        let bearer = header_str(headers, header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        if bearer.is_some() && route.surface == Surface::Page {
            return Err(WebError::bad_request("pages take a session, not a bearer token"));
        }

        // Who is asking.
        let (who, session) = self.principal(bearer.clone(), session.clone()).await?;

        // May they?
        if let Access::Signed(required) = route.access {
            let Some(p) = &who else {
                return Err(WebError::unauthorized());
            };
            if !p.role.allows(required) {
                // A token may grant less than its user has: say which.
                let holder = if p.via_token {
                    format!("this API token of {} grants", p.name)
                } else {
                    format!("{} has", p.name)
                };
                return Err(WebError::forbidden(format!(
                    "this needs the {} role; {holder} {}",
                    required.as_str(),
                    p.role.as_str()
                )));
            }
        }

        // State changes from a browser must come from our own pages.
        let unsafe_method = !parts.method.is_safe();
        let by_cookie = !who.as_ref().is_some_and(|p| p.via_token);
        if unsafe_method && by_cookie {
            if let Some(origin) = header_str(headers, header::ORIGIN)
                && !self.origin_allowed(origin, headers)
            {
                return Err(WebError::forbidden("cross-origin request refused"));
            }
            if route.surface == Surface::Api && who.is_some() {
                let token = header_str(headers, "x-csrf-token").unwrap_or("");
                let ok = session
                    .as_deref()
                    .is_some_and(|s| self.signer.csrf_ok("session", s, token));
                if !ok {
                    return Err(WebError::forbidden(
                        "a session-authenticated API call needs the X-CSRF-Token header",
                    ));
                }
            }
        }

        // The body, bounded, of the type the route takes.
        let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or("").to_string();
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let (limit, wanted): (u64, &[&str]) = match (route.body, route.surface) {
            (BodyKind::None, _) => (0, &[]),
            (BodyKind::Json, _) => (self.http.max_body_bytes as u64, &["application/json"]),
            (BodyKind::Form, _) => (
                self.http.max_body_bytes as u64,
                &["application/x-www-form-urlencoded", "multipart/form-data"],
            ),
            (BodyKind::Upload, Surface::Api) => (self.max_upload, &["application/octet-stream"]),
            (BodyKind::Upload, Surface::Page) => (self.max_upload + 64 * 1024, &["multipart/form-data"]),
        };
        if route.body != BodyKind::None && !wanted.contains(&mime.as_str()) {
            return Err(WebError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected {}", wanted.join(" or ")),
            ));
        }
        if let Some(n) = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
            && n > limit
            && limit > 0
        {
            return Err(too_large(limit));
        }
        let body = if route.body == BodyKind::None {
            drop(body);
            Bytes::new()
        } else {
            Limited::new(body, limit as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        too_large(limit)
                    } else {
                        WebError::bad_request("the request body could not be read")
                    }
                })?
                .to_bytes()
        };

        // Forms carry a CSRF token bound to the session (or, before login,
        // to the login cookie).
        let uploaded = if route.body == BodyKind::Upload && route.surface == Surface::Page {
            form::boundary(&content_type)
                .and_then(|b| form::multipart(&body, b))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if unsafe_method && route.surface == Surface::Page {
            let token = if route.body == BodyKind::Upload {
                uploaded
                    .iter()
                    .find(|p| p.name == "csrf")
                    .map(|p| String::from_utf8_lossy(&p.data).into_owned())
            } else {
                form::field(&form::urlencoded(&String::from_utf8_lossy(&body)), "csrf").map(str::to_string)
            }
            .unwrap_or_default();
            let ok = match (&session, &login_cookie) {
                (Some(s), _) => self.signer.csrf_ok("session", s, &token),
                (None, Some(l)) => self.signer.csrf_ok("login", l, &token),
                (None, None) => false,
            };
            if !ok {
                return Err(WebError::forbidden(
                    "the form is out of date or was not sent from this site; reload the page and try again",
                ));
            }
        }

        if matches!(route.run, Run::EventStream) {
            let endpoint = form::urlencoded(parts.uri.query().unwrap_or(""))
                .into_iter()
                .find(|(k, _)| k == "endpoint")
                .map(|(_, v)| v);
            let allowed = self.still_allowed(route, bearer, session);
            return Ok(sse::stream(
                self.events.subscribe(),
                endpoint,
                self.stop.clone(),
                allowed,
            ));
        }
        if matches!(route.run, Run::CampaignStream) {
            let id: i64 = params
                .iter()
                .find(|(k, _)| *k == "id")
                .and_then(|(_, v)| v.parse().ok())
                .ok_or_else(|| WebError::not_found("no such campaign"))?;
            // An unknown campaign is a 404 now, not an empty stream.
            let first = self.with_store(move |_, s| Ok(campaigns::stream_news(s, id)?)).await?;
            let web = self.clone();
            let poll = move || {
                let web = web.clone();
                async move {
                    web.with_store(move |_, s| Ok(campaigns::stream_news(s, id)?))
                        .await
                        .ok()
                }
            };
            let allowed = self.still_allowed(route, bearer, session);
            return Ok(sse::polled("campaign", first, poll, self.stop.clone(), allowed));
        }
        let Run::Blocking(handler) = route.run else {
            unreachable!("event streams returned above")
        };
        let _permit = if route.costly {
            Some(self.costly.acquire().await.map_err(|_| WebError::internal())?)
        } else {
            None
        };
        // A page answered to a form post (a confirmation, an error) is not
        // a place to return to.
        let target = if parts.method == hyper::Method::GET {
            parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
        } else {
            "/".to_string()
        };
        let query = form::urlencoded(parts.uri.query().unwrap_or(""));
        // Pages show times in the signed-in user's zone; the API keeps UTC.
        let page_user = who
            .as_ref()
            .filter(|_| route.surface != route::Surface::Api)
            .map(|p| p.name.clone());
        let reply = self
            .with_store(move |web, store| {
                let _zone = preferences::Zone::enter(store, page_user.as_deref());
                let mut ctx = Ctx {
                    web,
                    store,
                    who,
                    session,
                    login_cookie,
                    params,
                    query,
                    body,
                    content_type,
                    parts: uploaded,
                    peer: client,
                    target,
                };
                handler(&mut ctx)
            })
            .await?;
        Ok(reply.into_response())
    }

    fn error_response(&self, e: &WebError, api: bool) -> Response<Body> {
        let mut reply = if api {
            Reply::json(e.status, &e.body())
        } else {
            Reply::html(pages::error_page(e)).with_status(e.status)
        };
        if let Some(s) = e.retry_after {
            reply = reply.with_header(header::RETRY_AFTER, s.to_string());
        }
        reply.into_response()
    }
}

fn too_large(limit: u64) -> WebError {
    WebError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body exceeds the limit of {limit} bytes"),
    )
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Scripts, styles and images only from us; no inline script or style, no
/// framing, forms only to us: an injected string can run nothing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every response carries.
pub fn secure(headers: &mut HeaderMap, cacheable: bool) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if !cacheable {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
}

impl Reply {
    pub fn into_response(self) -> Response<Body> {
        let cacheable = self.headers.iter().any(|(k, _)| k == header::CACHE_CONTROL);
        let mut r = Response::new(Full::new(self.body).boxed());
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(k, v);
            }
        }
        secure(h, cacheable);
        r
    }
}

/// The client's address: the connection's, or, when that is one of
/// `trusted` (the reverse proxy in front, `http.trusted_proxies`), the
/// last address of its `X-Forwarded-For` (the one that proxy added; any
/// earlier ones are the client's own claims). Login limits per address
/// count this one, so clients behind nginx do not share one budget.
pub fn client_address(trusted: &[IpAddr], peer: IpAddr, headers: &hyper::HeaderMap) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// Accept connections until `stop`; each is served by hyper's HTTP/1.1
/// server (h2 is not compiled in). Open connections get five seconds to
/// finish after `stop`.
pub async fn run(listener: TcpListener, web: Arc<Web>, mut stop: watch::Receiver<bool>) {
    let recount = web.clone();
    let mut recount_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = recount.with_store(|web, store| web.count_fleet(store)).await {
                log::warn!("counting the fleet for the overview failed: {}", e.message);
            }
            tokio::select! {
                _ = crate::download::connection::raised(&mut recount_stop) => break,
                _ = tokio::time::sleep(FLEET_RECOUNT) => {}
            }
        }
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            _ = crate::download::connection::raised(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("dashboard accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let web = web.clone();
        let mut conn_stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(web.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        log::debug!("dashboard connection from {peer}: {e}");
                    }
                }
                _ = crate::download::connection::raised(&mut conn_stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        connections.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_address_is_the_trusted_proxys_last_hop() {
        let nginx: IpAddr = "127.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let trusted = [nginx];
        // From the proxy: the address it added, not what the client claimed.
        let h = forwarded(&["10.9.9.9, 203.0.113.7"]);
        assert_eq!(client_address(&trusted, nginx, &h), client);
        let h = forwarded(&["10.9.9.9", "203.0.113.7"]);
        assert_eq!(client_address(&trusted, nginx, &h), client);
        // Not from the proxy: the header is the client's own word.
        let other: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(client_address(&trusted, other, &h), other);
        // No proxy configured, or nothing usable: the connection's address.
        assert_eq!(client_address(&[], nginx, &h), nginx);
        assert_eq!(client_address(&trusted, nginx, &forwarded(&["junk"])), nginx);
        assert_eq!(client_address(&trusted, nginx, &hyper::HeaderMap::new()), nginx);
    }
}
