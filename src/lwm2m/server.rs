//! The LwM2M server core, sans-I/O: the Registration interface (Core §6.2),
//! device management and observe (§6.3, §6.4), Send (§6.4.7), and queue
//! mode (Transport §6.5) with a per-device operation queue.
//!
//! It drives an [`Exchanges`] and is driven the same way: datagrams and the
//! time ([`Now`]) go in; datagrams, [`ServerEvent`]s and the next deadline
//! come out. Persistence is the caller's: every change worth keeping is an
//! event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coap::amplification;
use crate::coap::{self, Code, Event, Exchanges, Failure, InboundId, Method, Request, RequestId, Response, Transmit};
use crate::config::{Lwm2mConfig, UnknownEndpoints};
use crate::lwm2m::admission::{self, Admission, Refusal, SourceAddress};
use crate::lwm2m::content;
use crate::lwm2m::model::Models;
use crate::lwm2m::operation::{Operation, OperationId, OperationKind, OperationResult, Outcome};
use crate::lwm2m::path::{Record, ResourcePath};
use crate::lwm2m::registration::{RegisterParams, Registration, RegistrationId, Rejection, parse_object_links};

/// The time, as the shell reads it: a monotonic instant for CoAP timers and
/// Unix milliseconds for what is stored.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: i64,
}

/// Where reported values came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Notification,
    Send,
    Read,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent<P> {
    Registered {
        registration: Registration<P>,
        replaced: Option<RegistrationId>,
    },
    /// `persist` is false for updates that only refresh the lifetime, when
    /// the last persisted copy is recent (see [`Server::persist_interval`]).
    Updated {
        registration: Registration<P>,
        persist: bool,
    },
    Deregistered {
        endpoint: String,
        id: RegistrationId,
    },
    Expired {
        endpoint: String,
        id: RegistrationId,
    },
    ValuesReported {
        endpoint: String,
        source: Source,
        records: Vec<Record>,
        /// When the server received them (ms since the epoch): a record's
        /// `time` may be the device's clock, this is ours.
        received_ms: i64,
    },
    OperationSent {
        id: OperationId,
        endpoint: String,
        attempt: u32,
    },
    /// A sent operation got no answer and waits for the device's next wake.
    OperationRequeued {
        id: OperationId,
        endpoint: String,
        attempts: u32,
        reason: String,
    },
    OperationFinished {
        id: OperationId,
        endpoint: String,
        outcome: Outcome,
    },
    /// An observation was established; persisted so a restarted server
    /// still accepts its notifications (the device keeps the token).
    ObservationStarted {
        endpoint: String,
        token: RequestId,
        kind: OperationKind,
    },
    ObservationEnded {
        endpoint: String,
        token: RequestId,
    },
    /// A request we refused, for the event log (bad input is visible).
    Rejected {
        endpoint: Option<String>,
        code: Code,
        reason: String,
    },
}

/// A device's GET of a firmware image on the LwM2M port (a `coap(s)://`
/// Package URI, Block2 by RFC 7959): answered by the firmware server
/// through [`Server::respond`], piggybacked when it is quick.
#[derive(Debug)]
pub struct FirmwareRequest<P> {
    pub inbound: InboundId,
    pub peer: P,
    pub request: Request,
}

#[derive(Debug)]
struct InFlight {
    op: Operation,
}

#[derive(Debug)]
struct Observation {
    endpoint: String,
    /// `Observe` or `ObserveComposite`: what to re-issue after a restart.
    kind: OperationKind,
}

#[derive(Debug)]
struct Device<P> {
    reg: Registration<P>,
    /// When the registration was last persisted (Unix ms).
    persisted_at: i64,
    /// Queue mode: the device listens until then (monotonic).
    awake_until: Instant,
}

/// Settings the core needs, from the `[lwm2m]` config section.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub awake_window: Duration,
    pub lifetime_grace_s: u64,
    pub min_lifetime_s: u64,
    pub max_lifetime_s: u64,
    pub unknown_endpoints: UnknownEndpoints,
    /// Bounds on registrations of endpoints that were never provisioned.
    pub unprovisioned: admission::Limits,
    /// Firmware answers a second to one unverified source.
    pub unverified_firmware_gets_per_s: u32,
}

impl ServerConfig {
    pub fn from_config(c: &Lwm2mConfig) -> ServerConfig {
        ServerConfig {
            awake_window: Duration::from_secs(c.queue_awake_window_s),
            lifetime_grace_s: c.lifetime_grace_s,
            min_lifetime_s: c.min_lifetime_s,
            max_lifetime_s: c.max_lifetime_s,
            unknown_endpoints: c.unknown_endpoints,
            unprovisioned: admission::Limits {
                per_source: c.unprovisioned_per_source,
                per_source_per_min: c.unprovisioned_per_source_per_min,
            },
            unverified_firmware_gets_per_s: c.unverified_firmware_gets_per_s,
        }
    }
}

pub struct Server<P> {
    coap: Exchanges<P>,
    config: ServerConfig,
    models: Arc<Models>,
    rng: fastrand::Rng,
    devices: HashMap<RegistrationId, Device<P>>,
    by_endpoint: HashMap<String, RegistrationId>,
    by_peer: HashMap<P, RegistrationId>,
    /// Registrations per source address: an address a device registered
    /// from is verified for its firmware GETs from any port (Zephyr pulls
    /// firmware through a socket of its own).
    registered_sources: HashMap<std::net::IpAddr, u32>,
    /// Pending operations per endpoint, in order; kept across
    /// re-registrations and while the device is offline.
    queues: HashMap<String, VecDeque<Operation>>,
    /// At most one operation in flight per endpoint.
    in_flight: HashMap<RequestId, InFlight>,
    busy: HashSet<String>,
    observations: HashMap<RequestId, Observation>,
    /// Endpoints in the device table: provisioned, or admitted before. The
    /// reject policy refuses the others; the accept policy admits them
    /// within `admission`'s bounds.
    known_endpoints: HashSet<String>,
    admission: Admission,
    /// Endpoints that have a PSK: they may only speak over DTLS.
    keyed_endpoints: HashSet<String>,
    /// Secure peers (DTLS sessions) and the one endpoint each may speak
    /// for, from its PSK identity.
    sessions: HashMap<P, Arc<str>>,
    events: VecDeque<ServerEvent<P>>,
    firmware: VecDeque<FirmwareRequest<P>>,
    /// Firmware answers to sources neither registered nor in a DTLS
    /// session: within 3× what they sent, at a per-source rate.
    unverified: amplification::Guard,
    next_sweep: Option<Instant>,
    /// Rejected events let out in the current second: (its start, count).
    rejections: (Option<Instant>, u32),
}

/// How often expired registrations and operation deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many [`ServerEvent::Rejected`] a second leave the server;
/// beyond that a refusal is still answered and logged at debug level, but a
/// flood of bad requests does not flood the live event stream, the store
/// writer's queue or the events table.
pub const REJECTIONS_PER_SECOND: u32 = 20;

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug + SourceAddress> Server<P> {
    pub fn new(coap: Exchanges<P>, config: ServerConfig, models: Arc<Models>, seed: u64) -> Self {
        let limits = config.unprovisioned;
        let unverified = amplification::Guard::new(config.unverified_firmware_gets_per_s);
        Server {
            coap,
            config,
            models,
            rng: fastrand::Rng::with_seed(seed),
            devices: HashMap::new(),
            by_endpoint: HashMap::new(),
            by_peer: HashMap::new(),
            queues: HashMap::new(),
            in_flight: HashMap::new(),
            busy: HashSet::new(),
            observations: HashMap::new(),
            known_endpoints: HashSet::new(),
            admission: Admission::new(limits),
            keyed_endpoints: HashSet::new(),
            sessions: HashMap::new(),
            events: VecDeque::new(),
            firmware: VecDeque::new(),
            unverified,
            registered_sources: HashMap::new(),
            next_sweep: None,
            rejections: (None, 0),
        }
    }

    /// Whether one more refusal may become a [`ServerEvent::Rejected`] now
    /// (see [`REJECTIONS_PER_SECOND`]).
    fn rejection_recorded(&mut self, now: Now) -> bool {
        let (start, count) = &mut self.rejections;
        if start.is_none_or(|s| now.mono >= s + Duration::from_secs(1)) {
            *start = Some(now.mono);
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count <= REJECTIONS_PER_SECOND
    }

    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// An Update that changes nothing but the lifetime is persisted at most
    /// this often; a registration lost to a crash inside the window is
    /// recovered by the client, which re-registers when its Update gets
    /// 4.04 (Core §6.2.2).
    pub fn persist_interval(&self, reg: &Registration<P>) -> i64 {
        (i64::from(reg.lifetime) * 1000 / 4).clamp(1000, 60_000)
    }

    pub fn registration_count(&self) -> usize {
        self.devices.len()
    }

    pub fn registration(&self, endpoint: &str) -> Option<&Registration<P>> {
        self.by_endpoint
            .get(endpoint)
            .and_then(|id| self.devices.get(id))
            .map(|d| &d.reg)
    }

    pub fn queued_count(&self, endpoint: &str) -> usize {
        self.queues.get(endpoint).map_or(0, VecDeque::len)
    }

    pub fn set_known_endpoints(&mut self, endpoints: HashSet<String>) {
        self.known_endpoints = endpoints;
    }

    /// Endpoints added to the device table since the last call.
    pub fn add_known_endpoints(&mut self, endpoints: impl IntoIterator<Item = String>) {
        self.known_endpoints.extend(endpoints);
    }

    /// Registrations of unprovisioned endpoints admitted and refused.
    pub fn admission_counters(&self) -> admission::Counters {
        self.admission.counters()
    }

    /// `peer` speaks for registration `id`; its address counts as
    /// verified while it does.
    fn bind_peer(&mut self, peer: P, id: RegistrationId) {
        if self.by_peer.insert(peer, id).is_none() {
            *self.registered_sources.entry(peer.source()).or_default() += 1;
        }
    }

    fn unbind_peer(&mut self, peer: P) {
        if self.by_peer.remove(&peer).is_some()
            && let std::collections::hash_map::Entry::Occupied(mut e) = self.registered_sources.entry(peer.source())
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// A provisioned device's DTLS handshake failed on its key (told by
    /// the DTLS layer): a refusal event naming it, within the same
    /// per-second allowance as other refusals.
    pub fn key_refused(&mut self, now: Now, endpoint: &str) {
        if self.rejection_recorded(now) {
            self.events.push_back(ServerEvent::Rejected {
                endpoint: Some(endpoint.to_string()),
                code: Code::UNAUTHORIZED,
                reason: "DTLS handshake failed: the key does not match its PSK identity".into(),
            });
        }
    }

    /// Firmware GETs from unverified sources answered, refused and limited.
    pub fn unverified_counters(&self) -> amplification::Counters {
        self.unverified.counters
    }

    /// A firmware GET on the LwM2M port, handed to the firmware server
    /// as asked for a source whose address something verified: a
    /// registration from that address, or a DTLS session (whose cookie
    /// exchange checked it, RFC 6347 §4.2.1). Another source must hold a
    /// download token (`t=`, the Package URI's), is answered at a
    /// per-source rate (beyond it not at all: its retransmissions pace
    /// it), and gets blocks small enough that no answer is over three
    /// times its request (`coap::amplification`; RFC 7959 §2.4 lets the
    /// server pick a smaller block than asked). A refusal is a bare 4.01,
    /// smaller than the request.
    fn firmware_get(&mut self, now: Now, id: InboundId, peer: P, token: &[u8], mut request: Request, received: usize) {
        let verified = self.sessions.contains_key(&peer) || self.registered_sources.contains_key(&peer.source());
        if !verified {
            let has_token = request.options.uri_query.iter().any(|q| q.starts_with("t="));
            if !self.unverified.admit(now.mono, peer.source()) {
                self.coap.discard(id);
                return;
            }
            let szx = amplification::block_szx_within(received, amplification::ANSWER_OVERHEAD + token.len());
            let Some(szx) = szx.filter(|_| has_token) else {
                self.unverified.counters.refused += 1;
                self.coap.respond(now.mono, id, Response::new(Code::UNAUTHORIZED));
                return;
            };
            self.unverified.counters.answered += 1;
            // The block the device asked for, in the smaller size: the
            // same offset (RFC 7959 §2.2: NUM counts blocks of its SZX).
            let asked = request.options.block2.unwrap_or(coap::block::BlockValue {
                num: 0,
                more: false,
                szx: 6,
            });
            if asked.szx > szx {
                let num = u64::from(asked.num) << (asked.szx - szx);
                if num > u64::from(coap::block::BlockValue::MAX_NUM) {
                    // That offset has no block number at the smaller size.
                    self.coap.respond(now.mono, id, Response::new(Code::BAD_OPTION));
                    return;
                }
                request.options.block2 = Some(coap::block::BlockValue {
                    num: num as u32,
                    more: false,
                    szx,
                });
            }
        }
        self.firmware.push_back(FirmwareRequest {
            inbound: id,
            peer,
            request,
        });
    }

    /// A plain-CoAP Register of an endpoint not in the device table takes
    /// a place of its source's (the accept policy; the reject policy
    /// refused it in `authorize`). 4.29 with Max-Age when the source adds
    /// names too fast (RFC 8516 §3), 4.03 when it holds too many.
    fn admit(&mut self, now: Now, peer: P, endpoint: &str) -> Result<(), Rejection> {
        if self.sessions.contains_key(&peer) || self.known_endpoints.contains(endpoint) {
            return Ok(());
        }
        let source = peer.source();
        match self.admission.admit(now.mono, source, endpoint) {
            Ok(()) => Ok(()),
            Err(Refusal::TooMany) => Err(Rejection::new(
                Code::FORBIDDEN,
                format!(
                    "{source} already holds {} registrations of unprovisioned endpoints (lwm2m.unprovisioned_per_source)",
                    self.config.unprovisioned.per_source
                ),
            )),
            Err(Refusal::TooFast { retry_after_s }) => Err(Rejection {
                retry_after_s: Some(retry_after_s),
                ..Rejection::new(
                    Code::TOO_MANY_REQUESTS,
                    format!(
                        "{source} registers unprovisioned endpoints faster than {} a minute (lwm2m.unprovisioned_per_source_per_min)",
                        self.config.unprovisioned.per_source_per_min
                    ),
                )
            }),
        }
    }

    pub fn set_keyed_endpoints(&mut self, endpoints: HashSet<String>) {
        self.keyed_endpoints = endpoints;
    }

    /// A DTLS session was established for `endpoint` (bound to its PSK
    /// identity): it may register and update that endpoint only.
    pub fn session_established(&mut self, peer: P, endpoint: Arc<str>) {
        self.sessions.insert(peer, endpoint);
    }

    /// The session ended. Its registration stays: the device's next
    /// session moves it with an Update (or registers anew).
    pub fn session_closed(&mut self, peer: P) {
        self.sessions.remove(&peer);
    }

    /// May `peer` speak for `endpoint`? A DTLS session only for the
    /// endpoint of its PSK identity; plain CoAP only for endpoints without
    /// a key (a key means the device is meant to be authenticated).
    fn authorize(&self, peer: P, endpoint: &str) -> Result<(), Rejection> {
        match self.sessions.get(&peer) {
            Some(bound) if **bound == *endpoint => Ok(()),
            Some(bound) => Err(Rejection::new(
                Code::FORBIDDEN,
                format!("this DTLS session's PSK identity belongs to {bound}, not {endpoint}"),
            )),
            None if self.keyed_endpoints.contains(endpoint) => Err(Rejection::new(
                Code::FORBIDDEN,
                format!("{endpoint} has a PSK and must use CoAP over DTLS"),
            )),
            None if self.config.unknown_endpoints == UnknownEndpoints::Reject
                && !self.known_endpoints.contains(endpoint) =>
            {
                Err(Rejection::new(
                    Code::FORBIDDEN,
                    format!("endpoint {endpoint} is not provisioned"),
                ))
            }
            None => Ok(()),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.coap.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent<P>> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.coap.poll_timeout(), self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Restore a persisted registration at start-up. Expired ones are
    /// reported as such on the first sweep.
    pub fn restore_registration(&mut self, now: Now, reg: Registration<P>) {
        let id = reg.id;
        self.by_endpoint.insert(reg.endpoint.clone(), id);
        self.bind_peer(reg.peer, id);
        self.devices.insert(
            id,
            Device {
                persisted_at: reg.updated_at,
                reg,
                awake_until: now.mono,
            },
        );
        self.schedule_sweep(now);
    }

    /// Queue an operation (from the store, the CLI or the API).
    pub fn enqueue(&mut self, now: Now, op: Operation) {
        let endpoint = op.endpoint.clone();
        self.queues.entry(endpoint.clone()).or_default().push_back(op);
        self.schedule_sweep(now);
        self.dispatch(now, &endpoint);
    }

    /// Cancel a queued operation; one already sent runs to its end.
    pub fn cancel(&mut self, id: OperationId) -> bool {
        for (endpoint, q) in self.queues.iter_mut() {
            if let Some(pos) = q.iter().position(|o| o.id == id) {
                q.remove(pos);
                self.events.push_back(ServerEvent::OperationFinished {
                    id,
                    endpoint: endpoint.clone(),
                    outcome: Outcome::Cancelled,
                });
                return true;
            }
        }
        false
    }

    fn schedule_sweep(&mut self, now: Now) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now.mono + SWEEP_INTERVAL);
        }
    }

    pub fn handle_datagram(&mut self, now: Now, peer: P, bytes: &[u8]) {
        self.coap.handle_datagram(now.mono, peer, bytes);
        self.drain_coap(now);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        self.coap.handle_timeout(now.mono);
        if self.next_sweep.is_some_and(|t| t <= now.mono) {
            self.next_sweep = None;
            self.sweep(now);
        }
        self.drain_coap(now);
    }

    fn drain_coap(&mut self, now: Now) {
        while let Some(ev) = self.coap.poll_event() {
            match ev {
                Event::Request {
                    id,
                    peer,
                    token,
                    request,
                    received,
                } if is_firmware_get(&request) => self.firmware_get(now, id, peer, &token, request, received),
                Event::Request { id, peer, request, .. } => {
                    let response = self.on_request(now, peer, request);
                    self.coap.respond(now.mono, id, response);
                }
                Event::Response { id, peer, response } => self.on_response(now, peer, id, response),
                Event::Notification { id, peer, response } => self.on_notification(now, peer, id, response),
                Event::Failed { id, failure, .. } => self.on_failure(now, id, failure),
                // We hold no observations of devices' servers' resources.
                Event::ObserverGone { .. } => {}
            }
        }
    }

    /// The next firmware GET to answer (see [`FirmwareRequest`]).
    pub fn poll_firmware_request(&mut self) -> Option<FirmwareRequest<P>> {
        self.firmware.pop_front()
    }

    /// Answer a request handed out by [`Server::poll_firmware_request`].
    pub fn respond(&mut self, now: Now, inbound: InboundId, response: Response) {
        self.coap.respond(now.mono, inbound, response);
    }

    // ---- Registration interface and Send: requests from devices -------------

    fn on_request(&mut self, now: Now, peer: P, req: Request) -> Response {
        let path = &req.options.uri_path;
        let result = match (req.method, path.first().map(String::as_str), path.len()) {
            (Method::Post, Some("rd"), 1) => self.register(now, peer, &req),
            (Method::Post, Some("rd"), 2) => self.update(now, peer, &req),
            (Method::Delete, Some("rd"), 2) => self.deregister(now, peer, &path[1]),
            (Method::Post, Some("dp"), 1) => self.send(now, peer, &req),
            (_, Some("rd" | "dp"), _) => Err(Rejection::new(Code::METHOD_NOT_ALLOWED, "method not allowed here")),
            _ => Err(Rejection::new(Code::NOT_FOUND, format!("no resource {}", req.path()))),
        };
        match result {
            Ok(r) => r,
            Err(rej) => {
                log::debug!("{peer:?}: {} {}: {}", rej.code, req.path(), rej.reason);
                if self.rejection_recorded(now) {
                    let endpoint = self
                        .by_peer
                        .get(&peer)
                        .and_then(|id| self.devices.get(id))
                        .map(|d| d.reg.endpoint.clone());
                    self.events.push_back(ServerEvent::Rejected {
                        endpoint,
                        code: rej.code,
                        reason: rej.reason.clone(),
                    });
                }
                let mut r = Response::new(rej.code);
                let max_age = rej.retry_after_s;
                // A diagnostic payload helps operators debugging a client (RFC 7252 §5.5.2).
                r.payload = rej.reason.into_bytes();
                r.options.content_format = Some(content::TEXT_PLAIN);
                r.options.max_age = max_age;
                r
            }
        }
    }

    fn new_registration_id(&mut self) -> RegistrationId {
        loop {
            let id = RegistrationId(self.rng.u64(..) & RegistrationId::MASK);
            if !self.devices.contains_key(&id) {
                return id;
            }
        }
    }

    fn register(&mut self, now: Now, peer: P, req: &Request) -> Result<Response, Rejection> {
        let params = RegisterParams::parse(&req.options.uri_query)?;
        let endpoint = params
            .endpoint
            .clone()
            .ok_or(Rejection::new(Code::BAD_REQUEST, "missing ep"))?;
        self.authorize(peer, &endpoint)?;
        let lifetime = self.check_lifetime(params.lifetime.unwrap_or(86400))?;
        let (object_links, root_path, announced_format) = parse_object_links(&req.payload, req.options.content_format)?;
        // Last, so a request refused for another reason takes no place.
        self.admit(now, peer, &endpoint)?;
        let replaced = self.by_endpoint.get(&endpoint).copied();
        if let Some(old) = replaced {
            // Re-registration replaces the old registration (Core §6.2.1);
            // its observations belong to the old session.
            self.remove_registration(old);
        }
        let id = self.new_registration_id();
        let reg = Registration {
            id,
            endpoint: endpoint.clone(),
            peer,
            lifetime,
            version: params.version.unwrap_or_else(|| "1.0".into()),
            binding: params.binding.unwrap_or_else(|| "U".into()),
            queue_mode: params.queue,
            sms: params.sms,
            object_links,
            root_path,
            announced_format,
            registered_at: now.unix_ms,
            updated_at: now.unix_ms,
            last_seen: now.unix_ms,
        };
        self.by_endpoint.insert(endpoint.clone(), id);
        self.bind_peer(peer, id);
        self.devices.insert(
            id,
            Device {
                reg: reg.clone(),
                persisted_at: now.unix_ms,
                awake_until: now.mono,
            },
        );
        self.events.push_back(ServerEvent::Registered {
            registration: reg,
            replaced,
        });
        self.schedule_sweep(now);
        self.woke(now, &endpoint);
        let mut r = Response::new(Code::CREATED);
        r.options.location_path = vec!["rd".into(), id.to_string()];
        Ok(r)
    }

    fn check_lifetime(&self, lt: u32) -> Result<u32, Rejection> {
        if u64::from(lt) < self.config.min_lifetime_s || u64::from(lt) > self.config.max_lifetime_s {
            return Err(Rejection::new(
                Code::BAD_REQUEST,
                format!(
                    "lt must be between {} and {}",
                    self.config.min_lifetime_s, self.config.max_lifetime_s
                ),
            ));
        }
        Ok(lt)
    }

    fn lookup(&self, id: &str) -> Result<RegistrationId, Rejection> {
        RegistrationId::parse(id)
            .filter(|id| self.devices.contains_key(id))
            .ok_or(Rejection::new(Code::NOT_FOUND, format!("no registration {id}")))
    }

    fn update(&mut self, now: Now, peer: P, req: &Request) -> Result<Response, Rejection> {
        let id = self.lookup(&req.options.uri_path[1])?;
        self.authorize(peer, &self.devices[&id].reg.endpoint)?;
        let params = RegisterParams::parse(&req.options.uri_query)?;
        let lifetime = params.lifetime.map(|l| self.check_lifetime(l)).transpose()?;
        let links = if req.payload.is_empty() {
            None
        } else {
            Some(parse_object_links(&req.payload, req.options.content_format)?)
        };
        let dev = self.devices.get_mut(&id).expect("looked up");
        let before = dev.reg.clone();
        let reg = &mut dev.reg;
        if let Some(l) = lifetime {
            reg.lifetime = l;
        }
        if let Some(b) = params.binding {
            reg.binding = b;
        }
        if params.queue || reg.binding.contains('Q') {
            reg.queue_mode = true;
        }
        if let Some(s) = params.sms {
            reg.sms = Some(s);
        }
        if let Some((links, root, ct)) = links {
            reg.object_links = links;
            reg.root_path = root;
            reg.announced_format = ct.or(reg.announced_format);
        }
        reg.updated_at = now.unix_ms;
        reg.last_seen = now.unix_ms;
        let old_peer = reg.peer;
        // The source address may change under NAT; the registration follows it.
        reg.peer = peer;
        let significant = reg.lifetime != before.lifetime
            || reg.binding != before.binding
            || reg.object_links != before.object_links
            || reg.sms != before.sms
            || reg.peer != before.peer;
        let reg = reg.clone();
        let persist = significant || now.unix_ms - dev.persisted_at >= self.persist_interval(&reg);
        if persist {
            self.devices.get_mut(&id).expect("present").persisted_at = now.unix_ms;
        }
        if old_peer != peer {
            if self.by_peer.get(&old_peer) == Some(&id) {
                self.unbind_peer(old_peer);
            }
            self.bind_peer(peer, id);
            // Its observations' notifications now come from the new address.
            self.coap.rebind_peer(old_peer, peer);
        }
        let endpoint = reg.endpoint.clone();
        self.events.push_back(ServerEvent::Updated {
            registration: reg,
            persist,
        });
        self.woke(now, &endpoint);
        Ok(Response::new(Code::CHANGED))
    }

    fn deregister(&mut self, _now: Now, peer: P, id: &str) -> Result<Response, Rejection> {
        let id = self.lookup(id)?;
        self.authorize(peer, &self.devices[&id].reg.endpoint)?;
        if let Some(reg) = self.remove_registration(id) {
            self.admission.release(&reg.endpoint);
            self.events.push_back(ServerEvent::Deregistered {
                endpoint: reg.endpoint,
                id,
            });
        }
        Ok(Response::new(Code::DELETED))
    }

    /// Drop a registration and everything tied to its session. Queued
    /// operations stay: they wait for the next registration.
    fn remove_registration(&mut self, id: RegistrationId) -> Option<Registration<P>> {
        let dev = self.devices.remove(&id)?;
        let reg = dev.reg;
        if self.by_endpoint.get(&reg.endpoint) == Some(&id) {
            self.by_endpoint.remove(&reg.endpoint);
        }
        if self.by_peer.get(&reg.peer) == Some(&id) {
            self.unbind_peer(reg.peer);
        }
        let gone: Vec<RequestId> = self
            .observations
            .iter()
            .filter(|(_, o)| o.endpoint == reg.endpoint)
            .map(|(id, _)| *id)
            .collect();
        for rid in gone {
            self.end_observation(rid, true);
        }
        Some(reg)
    }

    /// Send (Core §6.4.7): values pushed by a registered client.
    fn send(&mut self, now: Now, peer: P, req: &Request) -> Result<Response, Rejection> {
        let id = *self
            .by_peer
            .get(&peer)
            .ok_or(Rejection::new(Code::NOT_FOUND, "Send from an unregistered client"))?;
        let cf = req
            .options
            .content_format
            .ok_or(Rejection::new(Code::BAD_REQUEST, "Send without Content-Format"))?;
        if ![content::SENML_CBOR, content::SENML_JSON, content::LWM2M_CBOR].contains(&cf) {
            return Err(Rejection::new(
                Code::UNSUPPORTED_CONTENT_FORMAT,
                format!("Send in format {cf}"),
            ));
        }
        let records = content::decode(cf, &ResourcePath::ROOT, &req.payload, &self.models)
            .map_err(|e| Rejection::new(Code::BAD_REQUEST, e.to_string()))?;
        let endpoint = self.devices[&id].reg.endpoint.clone();
        self.report(now, &endpoint, Source::Send, records);
        self.woke(now, &endpoint);
        Ok(Response::new(Code::CHANGED))
    }

    /// Resolve device timestamps (SenML relative times, RFC 8428 §4.5.3) and emit.
    fn report(&mut self, now: Now, endpoint: &str, source: Source, mut records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let now_s = now.unix_ms as f64 / 1000.0;
        for r in &mut records {
            r.time = Some(match r.time {
                None => now_s,
                Some(t) if t < (1u64 << 28) as f64 => now_s + t,
                Some(t) => t,
            });
        }
        self.events.push_back(ServerEvent::ValuesReported {
            endpoint: endpoint.to_string(),
            source,
            records,
            received_ms: now.unix_ms,
        });
    }

    // ---- queue mode and dispatch ---------------------------------------------

    /// Any uplink: the device listens for a while (Transport §6.5).
    fn woke(&mut self, now: Now, endpoint: &str) {
        if let Some(id) = self.by_endpoint.get(endpoint)
            && let Some(dev) = self.devices.get_mut(id)
        {
            dev.awake_until = now.mono + self.config.awake_window;
            dev.reg.last_seen = now.unix_ms;
        }
        self.dispatch(now, endpoint);
    }

    fn reachable(&self, now: Now, endpoint: &str) -> Option<(P, &Registration<P>)> {
        let dev = self.devices.get(self.by_endpoint.get(endpoint)?)?;
        if dev.reg.queue_mode && now.mono >= dev.awake_until {
            return None;
        }
        // A device with a key is reached only through a live session; its
        // last one may be gone (idle expiry, a restart): then its queue
        // waits for the next session's Update.
        if self.keyed_endpoints.contains(endpoint) && !self.sessions.contains_key(&dev.reg.peer) {
            return None;
        }
        Some((dev.reg.peer, &dev.reg))
    }

    /// Send the next queued operation if the device is reachable and has none
    /// in flight: operations go out one at a time, in order, never twice at once.
    fn dispatch(&mut self, now: Now, endpoint: &str) {
        if self.busy.contains(endpoint) {
            return;
        }
        loop {
            let Some(q) = self.queues.get_mut(endpoint) else {
                return;
            };
            let Some(front) = q.front() else {
                self.queues.remove(endpoint);
                return;
            };
            if front.deadline <= now.unix_ms {
                let op = q.pop_front().expect("front exists");
                self.events.push_back(ServerEvent::OperationFinished {
                    id: op.id,
                    endpoint: op.endpoint,
                    outcome: Outcome::Expired,
                });
                continue;
            }
            let Some((peer, reg)) = self.reachable(now, endpoint) else {
                return;
            };
            let format = reg.preferred_format();
            let root: Vec<String> = coap::message::split_path(&reg.root_path);
            let mut op = self
                .queues
                .get_mut(endpoint)
                .and_then(VecDeque::pop_front)
                .expect("front exists");
            let sent = match &op.kind {
                OperationKind::CancelObserve { .. } | OperationKind::CancelObserveComposite { .. } => {
                    self.cancel_observation(now, endpoint, &op.kind)
                }
                kind => kind
                    .to_request(format, &root, &self.models)
                    .map(|request| self.coap.request(now.mono, peer, request))
                    .map_err(|e| e.to_string()),
            };
            let rid = match sent {
                Ok(rid) => rid,
                Err(reason) => {
                    let outcome = Outcome::Failed { code: None, reason };
                    self.events.push_back(ServerEvent::OperationFinished {
                        id: op.id,
                        endpoint: op.endpoint,
                        outcome,
                    });
                    continue;
                }
            };
            op.attempts += 1;
            self.events.push_back(ServerEvent::OperationSent {
                id: op.id,
                endpoint: op.endpoint.clone(),
                attempt: op.attempts,
            });
            self.busy.insert(endpoint.to_string());
            self.in_flight.insert(rid, InFlight { op });
            return;
        }
    }

    /// Active cancellation (RFC 7641 §3.6): the observation's own request
    /// (GET, or FETCH with the same paths for Observe-Composite) again with
    /// Observe 1 on the observation's token; its response completes the
    /// operation.
    fn cancel_observation(&mut self, now: Now, endpoint: &str, cancel: &OperationKind) -> Result<RequestId, String> {
        let observed = |o: &Observation| match (cancel, &o.kind) {
            (OperationKind::CancelObserve { path }, OperationKind::Observe { path: p }) => p == path,
            (OperationKind::CancelObserveComposite { paths }, OperationKind::ObserveComposite { paths: p }) => {
                same_paths(p, paths)
            }
            _ => false,
        };
        let what = match cancel {
            OperationKind::CancelObserveComposite { paths } => {
                let names: Vec<String> = paths.iter().map(ResourcePath::to_string).collect();
                format!("the composite {}", names.join(", "))
            }
            _ => cancel.path().to_string(),
        };
        let rid = self
            .observations
            .iter()
            .find(|(_, o)| o.endpoint == endpoint && observed(o))
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("no active observation of {what}"))?;
        self.end_observation(rid, false);
        if self.coap.cancel_observation(now.mono, rid) {
            Ok(rid)
        } else {
            Err(format!("observation of {what} already ended"))
        }
    }

    fn finish(&mut self, now: Now, op: Operation, outcome: Outcome) {
        self.busy.remove(&op.endpoint);
        let endpoint = op.endpoint.clone();
        self.events.push_back(ServerEvent::OperationFinished {
            id: op.id,
            endpoint: op.endpoint,
            outcome,
        });
        self.dispatch(now, &endpoint);
    }

    fn on_response(&mut self, now: Now, _peer: P, rid: RequestId, response: Response) {
        let Some(InFlight { op }) = self.in_flight.remove(&rid) else {
            return;
        };
        let outcome = op.kind.outcome(&response, &self.models);
        if let Outcome::Succeeded(OperationResult { records, .. }) = &outcome {
            let observes = matches!(
                op.kind,
                OperationKind::Observe { .. } | OperationKind::ObserveComposite { .. }
            );
            if observes && response.options.observe.is_some() {
                // A new observation of the same path replaces the old one.
                self.drop_observations(&op.endpoint, &op.kind);
                self.events.push_back(ServerEvent::ObservationStarted {
                    endpoint: op.endpoint.clone(),
                    token: rid,
                    kind: op.kind.clone(),
                });
                let observation = Observation {
                    endpoint: op.endpoint.clone(),
                    kind: op.kind.clone(),
                };
                self.observations.insert(rid, observation);
            }
            if !records.is_empty() {
                self.report(now, &op.endpoint, Source::Read, records.clone());
            }
        }
        self.finish(now, op, outcome);
    }

    fn drop_observations(&mut self, endpoint: &str, kind: &OperationKind) {
        let old: Vec<RequestId> = self
            .observations
            .iter()
            .filter(|(_, o)| o.endpoint == endpoint && o.kind == *kind)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.end_observation(id, true);
        }
    }

    /// Stop accepting an observation's notifications; `forget` also drops
    /// the token in the exchange layer (later notifications get RST).
    fn end_observation(&mut self, rid: RequestId, forget: bool) -> Option<Observation> {
        let obs = self.observations.remove(&rid)?;
        if forget {
            self.coap.forget(rid);
        }
        self.events.push_back(ServerEvent::ObservationEnded {
            endpoint: obs.endpoint.clone(),
            token: rid,
        });
        Some(obs)
    }

    /// Take up a persisted observation after a restart. One whose device is
    /// no longer registered is ended instead.
    pub fn restore_observation(&mut self, now: Now, endpoint: &str, token: RequestId, kind: OperationKind) {
        let request = self.registration(endpoint).and_then(|reg| {
            let root = coap::message::split_path(&reg.root_path);
            let req = kind.to_request(reg.preferred_format(), &root, &self.models).ok()?;
            Some((reg.peer, req))
        });
        match request {
            Some((peer, req)) => {
                self.coap.restore_observation(now.mono, peer, token, req);
                self.observations.insert(
                    token,
                    Observation {
                        endpoint: endpoint.to_string(),
                        kind,
                    },
                );
            }
            None => self.events.push_back(ServerEvent::ObservationEnded {
                endpoint: endpoint.to_string(),
                token,
            }),
        }
    }

    fn on_notification(&mut self, now: Now, _peer: P, rid: RequestId, response: Response) {
        let Some(obs) = self.observations.get(&rid) else {
            return;
        };
        let endpoint = obs.endpoint.clone();
        let path = obs.kind.path();
        if !response.code.is_success() || response.options.observe.is_none() {
            // The device ended the observation (RFC 7641 §3.2).
            self.end_observation(rid, false);
        }
        if response.code.is_success() {
            match crate::lwm2m::operation::decode_response(&path, &response, &self.models) {
                Ok(records) => self.report(now, &endpoint, Source::Notification, records),
                Err(e) => {
                    log::debug!("{endpoint}: undecodable notification for {path}: {e}");
                    if self.rejection_recorded(now) {
                        self.events.push_back(ServerEvent::Rejected {
                            endpoint: Some(endpoint.clone()),
                            code: Code::BAD_REQUEST,
                            reason: format!("undecodable notification for {path}: {e}"),
                        });
                    }
                }
            }
        }
        self.woke(now, &endpoint);
    }

    fn on_failure(&mut self, now: Now, rid: RequestId, failure: Failure) {
        if let Some(obs) = self.end_observation(rid, false) {
            log::debug!(
                "observation of {} on {} ended: {failure:?}",
                obs.kind.path(),
                obs.endpoint
            );
            return;
        }
        let Some(InFlight { op }) = self.in_flight.remove(&rid) else {
            return;
        };
        let retry = failure == Failure::Timeout && op.attempts < op.max_attempts && op.deadline > now.unix_ms;
        if retry {
            // The device went to sleep or lost the message: wait for its next
            // uplink before trying again, at the head of its queue.
            self.busy.remove(&op.endpoint);
            if let Some(id) = self.by_endpoint.get(&op.endpoint)
                && let Some(dev) = self.devices.get_mut(id)
                && dev.reg.queue_mode
            {
                dev.awake_until = now.mono;
            }
            let endpoint = op.endpoint.clone();
            self.events.push_back(ServerEvent::OperationRequeued {
                id: op.id,
                endpoint: endpoint.clone(),
                attempts: op.attempts,
                reason: "no answer (CoAP timeout)".into(),
            });
            self.queues.entry(endpoint.clone()).or_default().push_front(op);
            self.dispatch(now, &endpoint);
            return;
        }
        let reason = match failure {
            Failure::Timeout => format!("no answer after {} attempts", op.attempts),
            Failure::Reset => "device answered with RST".to_string(),
            Failure::BadBlocks => "block-wise transfer failed".to_string(),
        };
        self.finish(now, op, Outcome::Failed { code: None, reason });
    }

    // ---- timers -------------------------------------------------------------

    fn sweep(&mut self, now: Now) {
        let grace = self.config.lifetime_grace_s;
        let expired: Vec<RegistrationId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.reg.expired(now.unix_ms, grace))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(reg) = self.remove_registration(id) {
                self.admission.release(&reg.endpoint);
                self.events.push_back(ServerEvent::Expired {
                    endpoint: reg.endpoint,
                    id,
                });
            }
        }
        self.admission.sweep(now.mono);
        // Operation deadlines: queued operations past theirs expire now, not
        // only when their device next wakes.
        let mut finished = Vec::new();
        for q in self.queues.values_mut() {
            q.retain(|op| {
                let keep = op.deadline > now.unix_ms;
                if !keep {
                    finished.push((op.id, op.endpoint.clone()));
                }
                keep
            });
        }
        self.queues.retain(|_, q| !q.is_empty());
        for (id, endpoint) in finished {
            self.events.push_back(ServerEvent::OperationFinished {
                id,
                endpoint,
                outcome: Outcome::Expired,
            });
        }
        if !self.devices.is_empty() || !self.queues.is_empty() {
            self.schedule_sweep(now);
        }
    }
}

/// `GET /fw/...` or `GET /binaries/...`: the download server's paths.
fn is_firmware_get(r: &Request) -> bool {
    r.method == Method::Get && matches!(r.options.uri_path.first().map(String::as_str), Some("fw" | "binaries"))
}

/// The same set of paths, in any order (an operator names a composite
/// observation's paths again to cancel it).
fn same_paths(a: &[ResourcePath], b: &[ResourcePath]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
