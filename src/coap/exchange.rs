//! The CoAP exchange layer as a sans-I/O state machine (RFC 7252 §4–5,
//! RFC 7959 block-wise transfers, RFC 7641 observe as client).
//!
//! Inputs: [`Exchanges::handle_datagram`], [`Exchanges::handle_timeout`],
//! [`Exchanges::request`], [`Exchanges::respond`]. Outputs:
//! [`Exchanges::poll_transmit`], [`Exchanges::poll_event`],
//! [`Exchanges::poll_timeout`]. Time is always a parameter; this module owns
//! no socket and reads no clock, so every retransmission path is unit-tested
//! by passing instants in.
//!
//! `P` identifies a peer: a `SocketAddr` for plain UDP, a session id for DTLS.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::coap::block::BlockValue;
use crate::coap::message::{Code, Message, Method, Request, Response, Type};
use crate::config::CoapConfig;

/// Transmission parameters (RFC 7252 §4.8) and our block-wise limits.
#[derive(Debug, Clone)]
pub struct Params {
    pub ack_timeout: Duration,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    pub nstart: usize,
    pub block_szx: u8,
    pub max_body_size: usize,
    pub response_timeout: Duration,
    /// Most peers with dedup state at once. Any datagram from a new address
    /// would otherwise create state that lives for EXCHANGE_LIFETIME, so a
    /// spoofed-source flood could exhaust memory.
    pub max_peers: usize,
}

impl Params {
    pub fn from_config(c: &CoapConfig) -> Params {
        Params {
            ack_timeout: Duration::from_millis(c.ack_timeout_ms),
            ack_random_factor: c.ack_random_factor,
            max_retransmit: c.max_retransmit,
            nstart: c.nstart,
            block_szx: BlockValue::szx_for(c.block_size),
            max_body_size: c.max_body_size,
            response_timeout: Duration::from_millis(c.response_timeout_ms),
            max_peers: c.max_peers,
        }
    }

    /// MAX_TRANSMIT_SPAN (RFC 7252 §4.8.2).
    pub fn max_transmit_span(&self) -> Duration {
        self.ack_timeout
            .mul_f64(f64::from((1u32 << self.max_retransmit) - 1) * self.ack_random_factor)
    }

    /// EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + Duration::from_secs(200) + self.ack_timeout
    }
}

impl Default for Params {
    fn default() -> Self {
        Params::from_config(&crate::config::Config::default().coap)
    }
}

/// Handle for a request we sent (it is also its token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Handle for a request we received and must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId(u64);

#[derive(Debug, Clone, PartialEq)]
pub struct Transmit<P> {
    pub peer: P,
    pub bytes: Vec<u8>,
}

/// Why a request of ours ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No ACK after MAX_RETRANSMIT retransmissions, or no separate response.
    Timeout,
    /// The peer answered with RST (RFC 7252 §4.2).
    Reset,
    /// A block-wise response exceeded `max_body_size` or skipped a block.
    BadBlocks,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event<P> {
    /// A complete (Block1-reassembled) request; answer with [`Exchanges::respond`].
    Request {
        id: InboundId,
        peer: P,
        token: Vec<u8>,
        request: Request,
        /// Bytes of the datagram that completed it: what an answer to an
        /// unverified source is measured against (`coap::amplification`).
        received: usize,
    },
    /// The final (Block2-reassembled) response to a request of ours, or the
    /// first response of an observation.
    Response {
        id: RequestId,
        peer: P,
        response: Response,
    },
    /// A fresh notification for an observation of ours (RFC 7641 §3.2).
    Notification {
        id: RequestId,
        peer: P,
        response: Response,
    },
    Failed {
        id: RequestId,
        peer: P,
        failure: Failure,
    },
    /// The peer rejected a notification of ours with RST, or never
    /// acknowledged it: stop notifying that token (RFC 7641 §3.6, §4.5).
    ObserverGone {
        peer: P,
        token: Vec<u8>,
    },
}

/// How many recent message ids per peer are remembered for deduplication.
/// RFC 7252 §4.5 asks for EXCHANGE_LIFETIME; a constrained client with
/// NSTART 1 has at most a handful of exchanges in that window, and bounding
/// the ring bounds memory per device.
const RECENT_PER_PEER: usize = 4;

#[derive(Debug)]
struct Recent {
    mid: u16,
    at: Instant,
    /// What we answered (piggybacked response, ACK or RST), sent again on a duplicate.
    reply: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct PeerState {
    next_mid: u16,
    recent: VecDeque<Recent>,
    /// Our confirmable requests waiting for their ACK or response (NSTART).
    outstanding: usize,
    /// Requests held back by NSTART, in order.
    waiting: VecDeque<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// Not yet sent because of NSTART.
    Waiting,
    AwaitAck,
    /// Empty ACK received, waiting for the separate response.
    AwaitResponse,
    /// Observation established; notifications arrive with our token.
    Observing,
}

/// What an outgoing confirmable message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A request of the application's.
    Request,
    /// A block-wise GET completing a notification of observation `parent`
    /// (RFC 7959 §2.6); its result is delivered as that notification.
    NotificationFetch { parent: u64 },
    /// Our separate response to a peer's request (RFC 7252 §5.2.2): it only
    /// awaits its ACK.
    SeparateResponse,
    /// A confirmable notification we sent as an observed resource's server
    /// (RFC 7641 §4.5); an RST means the observer is gone.
    Notification { token: [u8; 8], len: u8 },
}

#[derive(Debug)]
struct Outgoing<P> {
    peer: P,
    request: Request,
    state: OutState,
    mid: u16,
    bytes: Vec<u8>,
    retransmits: u32,
    timeout: Duration,
    /// Bumped whenever a timer for this exchange becomes obsolete.
    generation: u32,
    /// Next Block1 offset to send when the payload is larger than a block.
    block1_sent: usize,
    block1_szx: u8,
    /// Body collected from Block2 responses so far.
    block2_body: Vec<u8>,
    /// Observe sequence and arrival of the freshest notification (RFC 7641 §3.4).
    last_observe: Option<(u32, Instant)>,
    role: Role,
    /// A cancel (GET, Observe=1) is in flight on this token.
    cancelling: bool,
}

impl<P> Outgoing<P> {
    fn new(peer: P, request: Request, state: OutState, role: Role, block1_szx: u8) -> Self {
        Outgoing {
            peer,
            request,
            state,
            mid: 0,
            bytes: Vec::new(),
            retransmits: 0,
            timeout: Duration::ZERO,
            generation: 0,
            block1_sent: 0,
            block1_szx,
            block2_body: Vec::new(),
            last_observe: None,
            role,
            cancelling: false,
        }
    }
}

#[derive(Debug)]
struct Inbound<P> {
    peer: P,
    mid: u16,
    token: Vec<u8>,
    confirmable: bool,
    separately_acked: bool,
    block1_echo: Option<BlockValue>,
    block2_szx: Option<u8>,
    /// Identifies the request for follow-up Block2 requests.
    key: String,
}

#[derive(Debug)]
struct Assembly {
    body: Vec<u8>,
    next_num: u32,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retransmit { token: u64, generation: u32 },
    ResponseTimeout { token: u64, generation: u32 },
    Sweep,
}

/// The exchange layer for all peers of one transport.
pub struct Exchanges<P> {
    params: Params,
    rng: fastrand::Rng,
    peers: HashMap<P, PeerState>,
    outgoing: HashMap<u64, Outgoing<P>>,
    /// (peer, message id) of our CONs → token, for ACK/RST matching.
    by_mid: HashMap<(P, u16), u64>,
    inbound: HashMap<u64, Inbound<P>>,
    next_inbound: u64,
    assemblies: HashMap<(P, String), Assembly>,
    /// Bodies of large responses we sent, for follow-up Block2 requests.
    block2_bodies: HashMap<(P, String), (Response, Instant)>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// When to send an empty ACK for a CON request not answered yet
    /// (RFC 7252 §5.2.2). Every deadline is `now + ack_timeout / 2`, so they
    /// come in order and a queue serves them in O(1); nearly all requests
    /// are answered before theirs, which then pops as a no-op. (On the timer
    /// heap these were most of its entries and most of its cost.)
    separate_acks: VecDeque<(Instant, u64)>,
    transmits: VecDeque<Transmit<P>>,
    events: VecDeque<Event<P>>,
    sweep_scheduled: bool,
}

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug> Exchanges<P> {
    pub fn new(params: Params, seed: u64) -> Self {
        Exchanges {
            params,
            rng: fastrand::Rng::with_seed(seed),
            peers: HashMap::new(),
            outgoing: HashMap::new(),
            by_mid: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 1,
            assemblies: HashMap::new(),
            block2_bodies: HashMap::new(),
            timers: BinaryHeap::new(),
            separate_acks: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            sweep_scheduled: false,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let ack = self.separate_acks.front().map(|(t, _)| *t);
        timer.into_iter().chain(ack).min()
    }

    /// Number of peers with state, for metrics and memory tests.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Requests of ours not yet finished (observations included).
    pub fn outgoing_count(&self) -> usize {
        self.outgoing.len()
    }

    fn peer(&mut self, peer: P) -> &mut PeerState {
        let rng = &mut self.rng;
        self.peers.entry(peer).or_insert_with(|| PeerState {
            // RFC 7252 §4.4: start message ids at a random value.
            next_mid: rng.u16(..),
            ..Default::default()
        })
    }

    fn next_mid(&mut self, peer: P) -> u16 {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.params.max_peers {
            return self.rng.u16(..);
        }
        let p = self.peer(peer);
        let mid = p.next_mid;
        p.next_mid = p.next_mid.wrapping_add(1);
        mid
    }

    fn schedule(&mut self, at: Instant, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }

    fn ensure_sweep(&mut self, now: Instant) {
        if !self.sweep_scheduled {
            self.sweep_scheduled = true;
            self.schedule(now + Duration::from_secs(10), Timer::Sweep);
        }
    }

    fn send(&mut self, peer: P, m: &Message) -> Vec<u8> {
        let bytes = m.encode();
        self.transmits.push_back(Transmit {
            peer,
            bytes: bytes.clone(),
        });
        bytes
    }

    fn send_empty(&mut self, peer: P, t: Type, mid: u16) -> Vec<u8> {
        self.send(peer, &Message::empty(t, mid))
    }

    /// Remember what we answered to (peer, mid) for duplicate detection.
    fn remember(&mut self, now: Instant, peer: P, mid: u16, reply: Option<Vec<u8>>) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.params.max_peers {
            // Over the cap (a flood from many source addresses): answer, but
            // keep no dedup state for newcomers; known peers are unaffected.
            return;
        }
        let p = self.peer(peer);
        if let Some(r) = p.recent.iter_mut().find(|r| r.mid == mid) {
            r.reply = reply;
            return;
        }
        if p.recent.len() == RECENT_PER_PEER {
            p.recent.pop_front();
        }
        p.recent.push_back(Recent { mid, at: now, reply });
    }

    /// RFC 7252 §4.5: a duplicate gets the same reply again and is not processed.
    fn is_duplicate(&mut self, now: Instant, peer: P, mid: u16) -> bool {
        let lifetime = self.params.exchange_lifetime();
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        let Some(r) = p.recent.iter().find(|r| r.mid == mid && now < r.at + lifetime) else {
            return false;
        };
        if let Some(reply) = r.reply.clone() {
            self.transmits.push_back(Transmit { peer, bytes: reply });
        }
        true
    }

    /// Feed one received datagram. Malformed input is answered with RST when
    /// it is a confirmable message whose header we could read (RFC 7252
    /// §4.2), and otherwise dropped.
    pub fn handle_datagram(&mut self, now: Instant, peer: P, bytes: &[u8]) {
        self.ensure_sweep(now);
        let m = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                log::debug!("{peer:?}: dropping datagram: {e}");
                // Message format errors on a CON are rejected with RST.
                if bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 3 == 0 {
                    let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
                    self.send_empty(peer, Type::Rst, mid);
                }
                return;
            }
        };
        let code = Code(m.code);
        match m.mtype {
            Type::Ack | Type::Rst => self.on_ack_or_rst(now, peer, m),
            Type::Con | Type::Non if code == Code::EMPTY => {
                // An empty CON is a "CoAP ping" (RFC 7252 §4.3): answer RST.
                if m.mtype == Type::Con {
                    self.send_empty(peer, Type::Rst, m.message_id);
                }
            }
            Type::Con | Type::Non if code.is_request() => self.on_request(now, peer, m, bytes.len()),
            Type::Con | Type::Non if code.is_response() => self.on_separate_response(now, peer, m),
            _ => {
                // Reserved code classes: reject CONs, ignore NONs.
                if m.mtype == Type::Con {
                    self.send_empty(peer, Type::Rst, m.message_id);
                }
            }
        }
    }

    // ---- server role: requests from the peer --------------------------------

    fn on_request(&mut self, now: Instant, peer: P, m: Message, received: usize) {
        if self.is_duplicate(now, peer, m.message_id) {
            return;
        }
        let confirmable = m.mtype == Type::Con;
        let mid = m.message_id;
        let token = m.token.clone();
        self.remember(now, peer, mid, None);
        let Some(mut request) = m.into_request() else {
            return;
        };
        let key = (peer, request_key(&request));

        // Block2 follow-up for a body we already produced (RFC 7959 §2.4).
        if let Some(b2) = request.options.block2.filter(|b| b.num > 0)
            && let Some((resp, _)) = self.block2_bodies.get(&key)
        {
            let resp = resp.clone();
            let reply = block2_reply(&resp, b2.num, b2.szx).unwrap_or_else(|| Response::new(Code::BAD_OPTION));
            self.reply(now, peer, mid, &token, confirmable, &reply);
            return;
        }

        let mut block1_echo = None;
        if let Some(b1) = request.options.block1 {
            let max = self.params.max_body_size;
            if b1.num == 0 {
                self.assemblies.remove(&key);
            }
            let offset_ok = match self.assemblies.get(&key) {
                None => b1.num == 0,
                Some(a) => a.next_num == b1.num,
            };
            if !offset_ok {
                self.assemblies.remove(&key);
                self.reply(
                    now,
                    peer,
                    mid,
                    &token,
                    confirmable,
                    &Response::new(Code::REQUEST_ENTITY_INCOMPLETE),
                );
                return;
            }
            let a = self.assemblies.entry(key.clone()).or_insert_with(|| Assembly {
                body: Vec::new(),
                next_num: 0,
                expires: now,
            });
            if a.body.len() + request.payload.len() > max || request.options.size1.is_some_and(|s| s as usize > max) {
                self.assemblies.remove(&key);
                let mut r = Response::new(Code::REQUEST_ENTITY_TOO_LARGE);
                r.options.size1 = Some(max as u32);
                self.reply(now, peer, mid, &token, confirmable, &r);
                return;
            }
            a.body.extend_from_slice(&request.payload);
            a.next_num = b1.num + 1;
            a.expires = now + self.params.exchange_lifetime();
            if b1.more {
                let mut r = Response::new(Code::CONTINUE);
                r.options.block1 = Some(BlockValue {
                    num: b1.num,
                    more: true,
                    szx: b1.szx,
                });
                self.reply(now, peer, mid, &token, confirmable, &r);
                return;
            }
            let a = self.assemblies.remove(&key).expect("assembly present");
            request.payload = a.body;
            request.options.block1 = None;
            block1_echo = Some(BlockValue {
                num: b1.num,
                more: false,
                szx: b1.szx,
            });
        }
        let block2_szx = request.options.block2.map(|b| b.szx);
        let id = self.next_inbound;
        self.next_inbound += 1;
        self.inbound.insert(
            id,
            Inbound {
                peer,
                mid,
                token,
                confirmable,
                separately_acked: false,
                block1_echo,
                block2_szx,
                key: key.1,
            },
        );
        if confirmable {
            // If the application does not answer within half an ACK timeout,
            // send an empty ACK so the peer stops retransmitting (§5.2.2).
            self.separate_acks.push_back((now + self.params.ack_timeout / 2, id));
        }
        self.events.push_back(Event::Request {
            id: InboundId(id),
            peer,
            token: self.inbound[&id].token.clone(),
            request,
            received,
        });
    }

    fn reply(&mut self, now: Instant, peer: P, mid: u16, token: &[u8], confirmable: bool, r: &Response) {
        let (t, reply_mid) = if confirmable {
            (Type::Ack, mid)
        } else {
            (Type::Non, self.next_mid(peer))
        };
        let bytes = self.send(peer, &Message::response(t, reply_mid, token.to_vec(), r));
        self.remember(now, peer, mid, Some(bytes));
    }

    /// Answer a request delivered as [`Event::Request`]. A body larger than
    /// one block is sent block-wise and kept for the follow-up requests.
    /// Leave a request unanswered, as if it had never arrived: no ACK, and
    /// its retransmission (RFC 7252 §4.2) is processed anew, not taken as
    /// a duplicate. For shedding load: the client's own back-off (its ACK
    /// timeout, doubling) paces it, where an error code would end its
    /// transfer.
    pub fn discard(&mut self, id: InboundId) {
        let Some(inb) = self.inbound.remove(&id.0) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&inb.peer) {
            p.recent.retain(|r| r.mid != inb.mid);
        }
    }

    pub fn respond(&mut self, now: Instant, id: InboundId, mut response: Response) {
        let Some(inb) = self.inbound.remove(&id.0) else {
            return;
        };
        if let Some(echo) = inb.block1_echo {
            response.options.block1 = Some(echo);
        }
        let szx = inb
            .block2_szx
            .unwrap_or(self.params.block_szx)
            .min(self.params.block_szx);
        if response.options.block2.is_none() && response.payload.len() > 1 << (szx + 4) {
            let body = response.clone();
            response = block2_reply(&body, 0, szx).expect("block 0 exists");
            // The follow-ups come with the same Uri; keep the body until then.
            // RFC 7959 §2.4 lets us resend it later; we do not rely on ETag.
            let expires = now + self.params.exchange_lifetime();
            self.block2_bodies.insert((inb.peer, inb.key.clone()), (body, expires));
        }
        if inb.separately_acked {
            // Separate response: a new CON exchange of its own (RFC 7252 §5.2.2).
            self.send_tracked(now, inb.peer, inb.token, &response, Role::SeparateResponse);
        } else {
            self.reply(now, inb.peer, inb.mid, &inb.token, inb.confirmable, &response);
        }
    }

    /// Send a notification for an observation a peer holds on us (RFC 7641
    /// §4.2). `response.options.observe` should carry the sequence number.
    /// A confirmable one is retransmitted until acknowledged.
    pub fn notify(&mut self, now: Instant, peer: P, token: &[u8], response: &Response, confirmable: bool) {
        if confirmable && token.len() <= 8 {
            let mut t = [0u8; 8];
            t[..token.len()].copy_from_slice(token);
            let role = Role::Notification {
                token: t,
                len: token.len() as u8,
            };
            self.send_tracked(now, peer, token.to_vec(), response, role);
        } else {
            let mid = self.next_mid(peer);
            self.send(peer, &Message::response(Type::Non, mid, token.to_vec(), response));
        }
    }

    /// A random token no exchange of ours uses (RFC 7252 §5.3.1: tokens
    /// of unsecured requests should be hard to guess).
    fn fresh_token(&mut self) -> u64 {
        loop {
            let t = self.rng.u64(..);
            if !self.outgoing.contains_key(&t) {
                return t;
            }
        }
    }

    /// Send a confirmable response-type message and retransmit it until its
    /// ACK; nothing awaits a response to it.
    fn send_tracked(&mut self, now: Instant, peer: P, token: Vec<u8>, response: &Response, role: Role) {
        let mid = self.next_mid(peer);
        let bytes = self.send(peer, &Message::response(Type::Con, mid, token, response));
        let key = self.fresh_token();
        let timeout = self.initial_timeout();
        let mut out = Outgoing::new(peer, Request::new(Method::Get, ""), OutState::AwaitAck, role, 0);
        (out.mid, out.bytes, out.timeout) = (mid, bytes, timeout);
        self.outgoing.insert(key, out);
        self.by_mid.insert((peer, mid), key);
        self.schedule(
            now + timeout,
            Timer::Retransmit {
                token: key,
                generation: 0,
            },
        );
    }

    // ---- client role: our requests ------------------------------------------

    fn initial_timeout(&mut self) -> Duration {
        // RFC 7252 §4.2: random between ACK_TIMEOUT and ACK_TIMEOUT × ACK_RANDOM_FACTOR.
        let f = 1.0 + self.rng.f64() * (self.params.ack_random_factor - 1.0);
        self.params.ack_timeout.mul_f64(f)
    }

    /// Send a request to `peer`. Large payloads go out block-wise (Block1);
    /// large responses are reassembled (Block2). An `Observe: 0` option makes
    /// this an observation whose notifications arrive with the same id.
    pub fn request(&mut self, now: Instant, peer: P, request: Request) -> RequestId {
        self.ensure_sweep(now);
        let token = self.fresh_token();
        let out = Outgoing::new(peer, request, OutState::Waiting, Role::Request, self.params.block_szx);
        self.outgoing.insert(token, out);
        let nstart = self.params.nstart;
        let p = self.peer(peer);
        if p.outstanding < nstart {
            p.outstanding += 1;
            self.transmit_request(now, token, None);
        } else {
            p.waiting.push_back(token);
        }
        RequestId(token)
    }

    /// Put the next message of exchange `token` on the wire: the first
    /// (Block1) block, or the Block2 block `block2`.
    fn transmit_request(&mut self, now: Instant, token: u64, block2: Option<BlockValue>) {
        let timeout = self.initial_timeout();
        let Some(o) = self.outgoing.get(&token) else {
            return;
        };
        let peer = o.peer;
        let mut req = o.request.clone();
        if let Some(b2) = block2 {
            // Follow-up block requests carry no Observe and no payload (RFC 7959 §2.6).
            req.options.observe = None;
            req.options.block2 = Some(b2);
            req.payload.clear();
            req.options.block1 = None;
        } else if req.payload.len() > 1 << (o.block1_szx + 4) {
            let (b1, chunk) =
                BlockValue::slice(&req.payload, (o.block1_sent >> (o.block1_szx + 4)) as u32, o.block1_szx)
                    .expect("offset within payload");
            req.options.block1 = Some(b1);
            if b1.num == 0 {
                req.options.size1 = Some(req.payload.len() as u32);
            }
            req.payload = chunk.to_vec();
        }
        let mid = self.next_mid(peer);
        let mtype = if req.non_confirmable { Type::Non } else { Type::Con };
        let bytes = self.send(peer, &Message::request(mtype, mid, token.to_be_bytes().to_vec(), &req));
        let o = self.outgoing.get_mut(&token).expect("exchange present");
        let old = std::mem::replace(&mut o.mid, mid);
        o.bytes = bytes;
        o.retransmits = 0;
        o.timeout = timeout;
        o.generation += 1;
        let generation = o.generation;
        if o.state != OutState::Observing {
            o.state = OutState::AwaitAck;
        }
        self.by_mid.remove(&(peer, old));
        if mtype == Type::Con {
            self.by_mid.insert((peer, mid), token);
            self.schedule(now + timeout, Timer::Retransmit { token, generation });
        } else {
            let at = now + self.params.response_timeout;
            self.schedule(at, Timer::ResponseTimeout { token, generation });
        }
    }

    /// Actively cancel an observation: GET with Observe 1 on the same token
    /// (RFC 7641 §3.6). Its response arrives as [`Event::Response`].
    pub fn cancel_observation(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(o) = self.outgoing.get_mut(&id.0) else {
            return false;
        };
        if o.state != OutState::Observing {
            return false;
        }
        o.request.options.observe = Some(1);
        o.request.options.block2 = None;
        o.cancelling = true;
        o.block2_body.clear();
        o.state = OutState::AwaitAck;
        let peer = o.peer;
        // The cancel occupies a slot like any request; it bypasses the NSTART
        // queue because it only ends traffic.
        self.peer(peer).outstanding += 1;
        self.transmit_request(now, id.0, None);
        true
    }

    /// Take up an observation established before a restart: notifications
    /// with token `id` from `peer` are accepted again. Freshness restarts
    /// from the first notification (RFC 7641 §3.4 allows it after 128 s).
    pub fn restore_observation(&mut self, now: Instant, peer: P, id: RequestId, mut request: Request) {
        self.ensure_sweep(now);
        // The payload stays: cancelling an Observe-Composite repeats its
        // FETCH with the same paths (RFC 7641 §3.6, RFC 8132 §2).
        request.options.observe = Some(0);
        let out = Outgoing::new(peer, request, OutState::Observing, Role::Request, self.params.block_szx);
        self.outgoing.insert(id.0, out);
    }

    /// A peer's transport address changed (NAT rebinding seen in an Update):
    /// its observations now arrive from `new`.
    pub fn rebind_peer(&mut self, old: P, new: P) {
        for o in self.outgoing.values_mut() {
            if o.peer == old && o.state == OutState::Observing {
                o.peer = new;
            }
        }
    }

    /// Forget a request or observation; a later notification gets RST
    /// (passive cancellation, RFC 7641 §3.6).
    pub fn forget(&mut self, id: RequestId) {
        self.finish(id.0);
    }

    /// Remove an exchange and release its NSTART slot.
    fn finish(&mut self, token: u64) -> Option<Outgoing<P>> {
        let o = self.outgoing.remove(&token)?;
        self.by_mid.remove(&(o.peer, o.mid));
        let counted = matches!(o.state, OutState::AwaitAck | OutState::AwaitResponse)
            && matches!(o.role, Role::Request | Role::NotificationFetch { .. });
        if (counted || o.state == OutState::Waiting)
            && let Some(p) = self.peers.get_mut(&o.peer)
        {
            if o.state == OutState::Waiting {
                p.waiting.retain(|t| *t != token);
            } else {
                p.outstanding = p.outstanding.saturating_sub(1);
            }
        }
        Some(o)
    }

    /// Start requests held back by NSTART once a slot is free.
    fn start_waiting(&mut self, now: Instant, peer: P) {
        let nstart = self.params.nstart;
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            if p.outstanding >= nstart {
                return;
            }
            let Some(token) = p.waiting.pop_front() else {
                return;
            };
            p.outstanding += 1;
            self.transmit_request(now, token, None);
        }
    }

    fn fail(&mut self, now: Instant, token: u64, failure: Failure) {
        if let Some(o) = self.finish(token) {
            match o.role {
                Role::Request => self.events.push_back(Event::Failed {
                    id: RequestId(token),
                    peer: o.peer,
                    failure,
                }),
                Role::NotificationFetch { parent } => self.events.push_back(Event::Failed {
                    id: RequestId(parent),
                    peer: o.peer,
                    failure,
                }),
                Role::SeparateResponse => {}
                Role::Notification { token, len } => {
                    let token = token[..usize::from(len)].to_vec();
                    self.events.push_back(Event::ObserverGone { peer: o.peer, token });
                }
            }
            self.start_waiting(now, o.peer);
        }
    }

    fn on_ack_or_rst(&mut self, now: Instant, peer: P, m: Message) {
        let Some(&token) = self.by_mid.get(&(peer, m.message_id)) else {
            return; // late or unrelated ACK/RST: ignore (RFC 7252 §4.2)
        };
        self.by_mid.remove(&(peer, m.message_id));
        if m.mtype == Type::Rst {
            self.fail(now, token, Failure::Reset);
            return;
        }
        let Some(o) = self.outgoing.get_mut(&token) else {
            return;
        };
        o.generation += 1; // stop retransmitting
        if matches!(o.role, Role::SeparateResponse | Role::Notification { .. }) {
            // ACK of a separate response or notification of ours: done.
            self.finish(token);
            return;
        }
        if m.code == 0 {
            // Empty ACK: the response will come separately (§5.2.2).
            if o.state == OutState::AwaitAck {
                o.state = OutState::AwaitResponse;
            }
            let generation = o.generation;
            let at = now + self.params.response_timeout;
            self.schedule(at, Timer::ResponseTimeout { token, generation });
            return;
        }
        if m.token != token.to_be_bytes() {
            return; // piggybacked response with a foreign token: not ours
        }
        self.on_response(now, token, m);
    }

    fn on_separate_response(&mut self, now: Instant, peer: P, m: Message) {
        if self.is_duplicate(now, peer, m.message_id) {
            return;
        }
        let token = <[u8; 8]>::try_from(m.token.as_slice()).ok().map(u64::from_be_bytes);
        let known = token.is_some_and(|t| self.outgoing.get(&t).is_some_and(|o| o.peer == peer));
        if !known {
            // Unknown token: reject so the peer stops notifying (RFC 7641 §3.6).
            let bytes = self.send_empty(peer, Type::Rst, m.message_id);
            self.remember(now, peer, m.message_id, Some(bytes));
            return;
        }
        if m.mtype == Type::Con {
            let bytes = self.send_empty(peer, Type::Ack, m.message_id);
            self.remember(now, peer, m.message_id, Some(bytes));
        }
        let token = token.expect("known token");
        if let Some(o) = self.outgoing.get_mut(&token)
            && o.state != OutState::Observing
        {
            o.generation += 1;
            self.by_mid.remove(&(peer, o.mid));
        }
        self.on_response(now, token, m);
    }

    fn on_response(&mut self, now: Instant, token: u64, mut m: Message) {
        let code = Code(m.code);
        let max_body = self.params.max_body_size;
        let Some(o) = self.outgoing.get_mut(&token) else {
            return;
        };
        let peer = o.peer;
        if o.state == OutState::Observing && !o.cancelling {
            self.on_notification(now, token, m);
            return;
        }

        // Block1: the server took a block and wants the next (RFC 7959 §2.3).
        if code == Code::CONTINUE {
            let sending_blocks = o.request.payload.len() > 1 << (o.block1_szx + 4);
            match m.options.block1 {
                Some(b1) if sending_blocks => {
                    o.block1_sent += 1 << (o.block1_szx + 4);
                    // Late negotiation: the server may ask for smaller blocks (§2.5).
                    o.block1_szx = o.block1_szx.min(b1.szx);
                    if o.block1_sent >= o.request.payload.len() {
                        self.fail(now, token, Failure::BadBlocks);
                    } else {
                        self.transmit_request(now, token, None);
                    }
                }
                _ => self.fail(now, token, Failure::BadBlocks),
            }
            return;
        }

        // Block2: collect, then ask for the next block (RFC 7959 §2.4).
        if let Some(b2) = m.options.block2.filter(|_| code.is_success()) {
            if b2.offset() != o.block2_body.len() || o.block2_body.len() + m.payload.len() > max_body {
                self.fail(now, token, Failure::BadBlocks);
                return;
            }
            o.block2_body.extend_from_slice(&m.payload);
            if b2.more {
                if b2.num == 0 && o.request.options.observe == Some(0) {
                    o.last_observe = m.options.observe.map(|s| (s, now));
                }
                let next = BlockValue {
                    num: b2.num + 1,
                    more: false,
                    szx: b2.szx,
                };
                self.transmit_request(now, token, Some(next));
                return;
            }
            m.payload = std::mem::take(&mut o.block2_body);
            m.options.block2 = None;
        }
        let response = m.into_response();

        if let Role::NotificationFetch { parent } = o.role {
            self.finish(token);
            self.start_waiting(now, peer);
            if self.outgoing.contains_key(&parent) {
                self.events.push_back(Event::Notification {
                    id: RequestId(parent),
                    peer,
                    response,
                });
            }
            return;
        }
        let establishes = o.request.options.observe == Some(0)
            && !o.cancelling
            && response.code.is_success()
            && response.options.observe.is_some();
        if establishes {
            // Keep the token for notifications; release the NSTART slot.
            o.state = OutState::Observing;
            o.generation += 1;
            // The request is kept whole: cancelling an Observe-Composite
            // repeats its FETCH, names and all (RFC 7641 §3.6, RFC 8132).
            if o.last_observe.is_none() {
                o.last_observe = response.options.observe.map(|s| (s, now));
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.outstanding = p.outstanding.saturating_sub(1);
            }
        } else {
            self.finish(token);
        }
        self.start_waiting(now, peer);
        self.events.push_back(Event::Response {
            id: RequestId(token),
            peer,
            response,
        });
    }

    /// A notification on an established observation (RFC 7641 §3.2–3.4).
    fn on_notification(&mut self, now: Instant, token: u64, mut m: Message) {
        let code = Code(m.code);
        if !self.observe_is_fresh(now, token, m.options.observe) {
            return;
        }
        let peer = self.outgoing[&token].peer;
        if let Some(b2) = m.options.block2.filter(|_| code.is_success()) {
            if b2.num != 0 {
                return; // stray block of an older transfer
            }
            if b2.more {
                // Fetch the rest with plain GETs on a new token (RFC 7959 §2.6).
                let mut req = self.outgoing[&token].request.clone();
                req.options.observe = None;
                req.options.block2 = Some(BlockValue {
                    num: 1,
                    more: false,
                    szx: b2.szx,
                });
                let child = self.request(now, peer, req);
                if let Some(c) = self.outgoing.get_mut(&child.0) {
                    c.role = Role::NotificationFetch { parent: token };
                    c.block2_body = m.payload;
                }
                return;
            }
            m.options.block2 = None;
        }
        let response = m.into_response();
        if !response.code.is_success() || response.options.observe.is_none() {
            // A notification without Observe or with an error code ends the
            // observation (RFC 7641 §3.2).
            self.finish(token);
        }
        self.events.push_back(Event::Notification {
            id: RequestId(token),
            peer,
            response,
        });
    }

    /// RFC 7641 §3.4: is this notification newer than the last one seen?
    fn observe_is_fresh(&mut self, now: Instant, token: u64, observe: Option<u32>) -> bool {
        let Some(o) = self.outgoing.get_mut(&token) else {
            return false;
        };
        let Some(v2) = observe else {
            return true;
        };
        let fresh = match o.last_observe {
            None => true,
            Some((v1, t1)) => {
                (v1 < v2 && v2 - v1 < 1 << 23) || (v1 > v2 && v1 - v2 > 1 << 23) || now > t1 + Duration::from_secs(128)
            }
        };
        if fresh {
            o.last_observe = Some((v2, now));
        }
        fresh
    }

    // ---- timers -------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Retransmit { token, generation } => self.on_retransmit(now, token, generation),
                Timer::ResponseTimeout { token, generation } => {
                    let current = self.outgoing.get(&token).is_some_and(|o| o.generation == generation);
                    if current {
                        self.fail(now, token, Failure::Timeout);
                    }
                }
                Timer::Sweep => self.sweep(now),
            }
        }
        while let Some(&(at, inbound)) = self.separate_acks.front() {
            if at > now {
                break;
            }
            self.separate_acks.pop_front();
            if let Some(inb) = self.inbound.get_mut(&inbound)
                && !inb.separately_acked
            {
                inb.separately_acked = true;
                let (peer, mid) = (inb.peer, inb.mid);
                let bytes = self.send_empty(peer, Type::Ack, mid);
                self.remember(now, peer, mid, Some(bytes));
            }
        }
    }

    fn on_retransmit(&mut self, now: Instant, token: u64, generation: u32) {
        let max = self.params.max_retransmit;
        let Some(o) = self.outgoing.get_mut(&token) else {
            return;
        };
        if o.generation != generation || o.state != OutState::AwaitAck {
            return;
        }
        if o.retransmits >= max {
            self.fail(now, token, Failure::Timeout);
            return;
        }
        o.retransmits += 1;
        o.timeout *= 2; // binary exponential back-off, RFC 7252 §4.2
        let (peer, bytes, at) = (o.peer, o.bytes.clone(), now + o.timeout);
        self.transmits.push_back(Transmit { peer, bytes });
        self.schedule(at, Timer::Retransmit { token, generation });
    }

    /// Drop expired dedup records, assemblies, cached bodies and idle peers.
    fn sweep(&mut self, now: Instant) {
        let lifetime = self.params.exchange_lifetime();
        self.assemblies.retain(|_, a| a.expires > now);
        self.block2_bodies.retain(|_, (_, exp)| *exp > now);
        self.peers.retain(|_, p| {
            while p.recent.front().is_some_and(|r| r.at + lifetime <= now) {
                p.recent.pop_front();
            }
            !(p.recent.is_empty() && p.outstanding == 0 && p.waiting.is_empty())
        });
        self.sweep_scheduled = false;
        if !self.peers.is_empty() || !self.outgoing.is_empty() {
            self.ensure_sweep(now);
        }
    }
}

/// Requests belonging to one block-wise transfer share method, path and query.
fn request_key(r: &Request) -> String {
    let mut k = format!("{:?}", r.method);
    for s in r.options.uri_path.iter().chain(&r.options.uri_query) {
        k.push('/');
        k.push_str(s);
    }
    k
}

fn block2_reply(body: &Response, num: u32, szx: u8) -> Option<Response> {
    let (b, chunk) = BlockValue::slice(&body.payload, num, szx)?;
    let mut r = body.clone();
    r.payload = chunk.to_vec();
    r.options.block2 = Some(b);
    if num == 0 {
        r.options.size2 = Some(body.payload.len() as u32);
    }
    Some(r)
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
