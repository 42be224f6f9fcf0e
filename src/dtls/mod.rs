//! CoAP over DTLS 1.2 with pre-shared keys (RFC 7252 §9.1, RFC 6347,
//! RFC 4279): a sans-I/O session table over rtc-dtls. Datagrams and the
//! time go in; datagrams to send and decrypted CoAP come out.
//!
//! Protection before state (RFC 6347 §4.2.1): a ClientHello without a
//! valid cookie gets a HelloVerifyRequest built here, statelessly, from an
//! HMAC of the client's address and ClientHello. Only a ClientHello that
//! returns our cookie creates a session, and then only within a per-source
//! rate and a cap on half-open handshakes (the oldest is evicted); a
//! handshake must finish within a deadline; established sessions are
//! evicted when idle.
//!
//! rtc-dtls always runs its own cookie exchange and generates the cookie
//! from its provider's random source. So that the client sees one exchange,
//! not two, the session is created by replaying the verified ClientHello
//! as its first one (message_seq 0) while our random source hands rtc-dtls
//! the very cookie the client already holds ([`provider`]); rtc-dtls' own
//! HelloVerifyRequest is discarded and the real ClientHello then matches.
//! The transcript is unaffected: the first ClientHello and the
//! HelloVerifyRequest are not part of it (RFC 6347 §4.2.6).
//!
//! Sessions are keyed by a [`SessionId`]; the peer address is an attribute,
//! so RFC 9146 Connection IDs can move a session once a DTLS library offers
//! them. Without CID, a device behind a rebinding NAT handshakes again and
//! its next Register or Update moves its registration to the new session.

pub mod client;
pub mod handshake;
pub mod keys;
pub mod protection;
pub mod provider;
pub mod record;
pub mod suites;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto_provider::RTCCryptoProvider;
use rtc_dtls::endpoint::EndpointEvent;

use crate::error::{Error, Result};
use handshake::Handshake;
use keys::{Binding, PskKeys};
use protection::{CLOSE_NOTIFY, CONTENT_ALERT, CONTENT_APPLICATION_DATA, Opened, Protection};
use record::CookieJar;
pub use suites::{CIPHER_SUITES, cipher_suites};

/// Each rtc-dtls endpoint here holds exactly one association, always under
/// this address: the real one is ours to track.
const ASSOCIATION: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 1);
/// How often deadlines are swept (all sessions).
const SWEEP: Duration = Duration::from_secs(1);
/// How often handshake retransmissions are checked (only while some
/// handshake is in progress).
const TICK: Duration = Duration::from_millis(100);
/// A half-open handshake this old has stalled: a real client answers our
/// flight within a round trip, or retransmits its own after 1, 2 and 4 s
/// (RFC 6347 §4.2.4.1).
const STALLED: Duration = Duration::from_secs(5);
/// Datagram payload limit for handshake flights (RFC 6347 §4.1.1.1); PSK
/// flights are far smaller.
const MTU: usize = 1200;
const RATE_BUCKETS: usize = 4096;

/// A session, unique within the process (the shard is in the top byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    /// A stand-in for the `n`th session remembered from before a restart:
    /// distinct, and never issued (shards are < 64, so issued ids stay
    /// below 2^62).
    pub fn restored(n: u64) -> SessionId {
        SessionId(u64::MAX - n)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// ClientHellos answered per source address and second (burst: twice
    /// that); 0: unlimited.
    pub hellos_per_source_per_s: u32,
    pub cookie_rotation: Duration,
    pub cipher_suites: Vec<CipherSuiteId>,
}

impl Limits {
    pub fn from_config(c: &crate::config::CoapsConfig) -> Limits {
        Limits {
            max_sessions: c.max_sessions,
            max_handshakes: c.max_handshakes,
            handshake_timeout: Duration::from_secs(c.handshake_timeout_s),
            idle_timeout: Duration::from_secs(c.session_idle_timeout_s),
            hellos_per_source_per_s: c.hellos_per_source_per_s,
            cookie_rotation: Duration::from_secs(60),
            // Checked by config validation.
            cipher_suites: cipher_suites(&c.cipher_suites).unwrap_or_else(|_| CIPHER_SUITES.to_vec()),
        }
    }
}

/// What the session table reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A handshake completed; the session speaks for `binding.endpoint`.
    Established {
        session: SessionId,
        addr: SocketAddr,
        binding: Binding,
    },
    /// Decrypted application data (a CoAP message).
    Data {
        session: SessionId,
        addr: SocketAddr,
        payload: Vec<u8>,
    },
    /// An established session ended (close_notify, idle, replaced, key
    /// rotated, evicted).
    Closed { session: SessionId },
    /// A handshake failed after the client named a provisioned device's
    /// PSK identity: most likely that device with a wrong key. Strangers'
    /// identities make no event (they are counted), so a flood of them
    /// cannot fill the event log.
    KeyRefused {
        addr: SocketAddr,
        endpoint: Arc<str>,
        identity: Box<[u8]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Counters for logs, metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub hello_verify_requests: u64,
    pub handshakes_started: u64,
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    pub handshakes_evicted: u64,
    pub rate_limited: u64,
    pub dropped: u64,
}

enum Phase {
    Handshaking {
        started: Instant,
        handshake: Box<Handshake>,
    },
    Established {
        binding: Binding,
        protection: Protection,
        /// Our last flight (ChangeCipherSpec, Finished) until the peer
        /// shows it has it by sending under the new keys: if its own last
        /// flight is repeated, ours was lost and goes again (RFC 6347
        /// §4.2.4). Dropped after [`STALLED`] of silence.
        last_flight: Option<Box<[Box<[u8]>]>>,
    },
}

struct Session {
    addr: SocketAddr,
    phase: Phase,
    last_seen: Instant,
}

/// Token buckets for ClientHellos, a fixed table indexed by a keyed hash of
/// the source address: bounded memory whatever the number of sources.
struct SourceRate {
    per_s: f64,
    hasher: RandomState,
    buckets: Vec<(f32, Option<Instant>)>,
}

impl SourceRate {
    fn new(per_s: u32) -> SourceRate {
        SourceRate {
            per_s: per_s as f64,
            hasher: RandomState::new(),
            buckets: vec![(0.0, None); if per_s == 0 { 0 } else { RATE_BUCKETS }],
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.is_empty() {
            return true;
        }
        let burst = 2.0 * self.per_s;
        let i = (self.hasher.hash_one(ip) % RATE_BUCKETS as u64) as usize;
        let (tokens, last) = &mut self.buckets[i];
        let refill = last.map_or(burst, |l| now.saturating_duration_since(l).as_secs_f64() * self.per_s);
        let available = (*tokens as f64 + refill).min(burst);
        *last = Some(now);
        if available >= 1.0 {
            *tokens = (available - 1.0) as f32;
            true
        } else {
            *tokens = available as f32;
            false
        }
    }
}

/// The DTLS sessions of one socket (or one shard of a socket).
pub struct Sessions {
    config: Arc<HandshakeConfig>,
    keys: Arc<PskKeys>,
    limits: Limits,
    cookies: CookieJar,
    rate: SourceRate,
    shard: u64,
    next_id: u64,
    sessions: HashMap<SessionId, Session>,
    by_addr: HashMap<SocketAddr, SessionId>,
    handshaking: HashSet<SessionId>,
    /// Half-open handshakes per source address.
    half_open: HashMap<IpAddr, u32>,
    next_sweep: Instant,
    last_now: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent>,
    pub counters: Counters,
}

/// The server's handshake configuration: PSK from `keys`, our suites.
pub fn server_config(
    keys: Arc<PskKeys>,
    suites: &[CipherSuiteId],
    provider: Arc<dyn RTCCryptoProvider>,
) -> Result<Arc<HandshakeConfig>> {
    let callback = Arc::new(move |identity: &[u8]| Ok(keys.key_or_decoy(identity)));
    ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_psk(Some(callback))
        .with_cipher_suites(suites.to_vec())
        .with_extended_master_secret(ExtendedMasterSecretType::Request)
        .with_mtu(MTU)
        .build(false, None)
        .map(Arc::new)
        .map_err(|e| Error::Invalid {
            what: "DTLS configuration",
            reason: e.to_string(),
        })
}

impl Sessions {
    pub fn new(now: Instant, shard: u8, keys: Arc<PskKeys>, limits: Limits) -> Result<Sessions> {
        Ok(Sessions {
            config: server_config(keys.clone(), &limits.cipher_suites, provider::provider())?,
            keys,
            cookies: CookieJar::new(now, limits.cookie_rotation),
            rate: SourceRate::new(limits.hellos_per_source_per_s),
            limits,
            shard: (shard as u64) << 56,
            next_id: 1,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            handshaking: HashSet::new(),
            half_open: HashMap::new(),
            next_sweep: now + SWEEP,
            last_now: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn handshakes(&self) -> usize {
        self.handshaking.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        if self.handshaking.is_empty() {
            self.next_sweep
        } else {
            self.next_sweep.min(self.last_now + TICK)
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.last_now = now;
        if let Some(&id) = self.by_addr.get(&from) {
            let restarted = matches!(self.sessions[&id].phase, Phase::Established { .. })
                && record::client_hello(datagram).is_some();
            if !restarted {
                self.feed(now, id, datagram);
                return;
            }
            // A ClientHello on an established session: the client lost its
            // state (rebooted) and starts over (RFC 6347 §4.2.8). It goes
            // through the cookie exchange like any newcomer; the old session
            // ends once the new ClientHello proves the address.
        }
        let Some(hello) = record::client_hello(datagram) else {
            // Application data or a later flight for a session we do not
            // have (expired, or lost in a restart): the client will time out
            // and handshake again.
            self.counters.dropped += 1;
            return;
        };
        if !self.rate.allow(from.ip(), now) {
            self.counters.rate_limited += 1;
            return;
        }
        self.cookies.maybe_rotate(now);
        let Some(cookie) = self.cookies.verify(from, &hello) else {
            let cookie = self.cookies.issue(from, &hello);
            self.counters.hello_verify_requests += 1;
            self.transmits.push_back(Transmit {
                to: from,
                datagram: record::hello_verify_request(hello.record_sequence, &cookie),
            });
            return;
        };
        // The replayed first ClientHello takes the record number below the
        // real one; a client that sent its second ClientHello as record 0
        // (none we know does) cannot be served this way.
        let Some(first_seq) = hello.record_sequence.checked_sub(1) else {
            self.counters.dropped += 1;
            return;
        };
        if !self.make_room(now, from.ip()) {
            self.counters.dropped += 1;
            return;
        }
        if let Some(old) = self.by_addr.get(&from).copied() {
            self.remove(old);
        }
        let first = record::restamp(hello.record, first_seq, 0);
        let mut handshake = Handshake::new(self.config.clone());
        let primed = provider::with_cookie(cookie, || handshake.read(now, &first).is_ok());
        // rtc-dtls' own HelloVerifyRequest: the client already has ours.
        while handshake.poll_transmit().is_some() {}
        if !primed {
            log::warn!("DTLS: could not prime a session for {from}; is rtc-dtls' cookie generation unchanged?");
            self.counters.handshakes_failed += 1;
            return;
        }
        let id = SessionId(self.shard | self.next_id);
        self.next_id += 1;
        self.sessions.insert(
            id,
            Session {
                addr: from,
                phase: Phase::Handshaking {
                    started: now,
                    handshake,
                },
                last_seen: now,
            },
        );
        self.by_addr.insert(from, id);
        self.handshaking.insert(id);
        *self.half_open.entry(from.ip()).or_default() += 1;
        self.counters.handshakes_started += 1;
        self.feed(now, id, datagram);
    }

    /// Take `id` off the half-open books; true if it was half-open.
    fn end_handshake(&mut self, id: SessionId, ip: IpAddr) -> bool {
        if !self.handshaking.remove(&id) {
            return false;
        }
        if let Some(n) = self.half_open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.half_open.remove(&ip);
            }
        }
        true
    }

    /// Keep within the caps before a new handshake from `ip`; false: no
    /// room, drop the ClientHello (the client retransmits it). One source
    /// may hold at most an eighth of the half-open table: stalled
    /// handshakes need our cookie, so an attacker must use addresses it
    /// really owns, and cannot crowd out everyone else from a few. At the
    /// cap the oldest handshake goes if it has stalled (begun over 5 s
    /// ago); otherwise — real devices after an outage — the newcomer waits.
    /// At the session cap the session idle the longest is closed.
    fn make_room(&mut self, now: Instant, ip: IpAddr) -> bool {
        let quota = (self.limits.max_handshakes / 8).max(1) as u32;
        if self.half_open.get(&ip).is_some_and(|n| *n >= quota) {
            return false;
        }
        if self.handshaking.len() >= self.limits.max_handshakes {
            let oldest = self
                .handshaking
                .iter()
                .map(|id| match &self.sessions[id].phase {
                    Phase::Handshaking { started, .. } => (*started, *id),
                    Phase::Established { .. } => (now, *id),
                })
                .min();
            match oldest {
                Some((started, id)) if now.saturating_duration_since(started) >= STALLED => {
                    self.counters.handshakes_evicted += 1;
                    self.remove(id);
                }
                _ => return false,
            }
        }
        if self.sessions.len() >= self.limits.max_sessions {
            let idlest = self.sessions.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| *id);
            if let Some(id) = idlest {
                log::warn!("DTLS: coaps.max_sessions reached; closing the session idle the longest");
                self.remove(id);
            }
        }
        true
    }

    fn feed(&mut self, now: Instant, id: SessionId, datagram: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let addr = s.addr;
        let (handshake, result) = match &mut s.phase {
            Phase::Established {
                protection,
                last_flight,
                ..
            } => {
                let outcome = open_records(protection, last_flight, datagram);
                self.counters.dropped += outcome.dropped;
                if outcome.authentic {
                    s.last_seen = now;
                }
                if outcome.resend_flight
                    && let Some(flight) = last_flight
                {
                    self.transmits.extend(flight.iter().map(|d| Transmit {
                        to: addr,
                        datagram: d.to_vec(),
                    }));
                }
                for payload in outcome.data {
                    self.events.push_back(SessionEvent::Data {
                        session: id,
                        addr,
                        payload,
                    });
                }
                if outcome.closed {
                    self.remove(id);
                }
                return;
            }
            Phase::Handshaking { handshake, .. } => {
                let result = handshake.read(now, datagram);
                (handshake, result)
            }
        };
        s.last_seen = now;
        let mut flight = Vec::new();
        while let Some(t) = handshake.poll_transmit() {
            flight.push(t.to_vec().into_boxed_slice());
        }
        self.transmits.extend(flight.iter().map(|d| Transmit {
            to: addr,
            datagram: d.to_vec(),
        }));
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                log::debug!("DTLS handshake with {addr} failed: {e}");
                self.counters.handshakes_failed += 1;
                let identity = handshake.identity();
                if let Some(binding) = self.keys.binding(&identity) {
                    self.events.push_back(SessionEvent::KeyRefused {
                        addr,
                        endpoint: binding.endpoint,
                        identity,
                    });
                }
                self.remove(id);
                return;
            }
        };
        for ev in events {
            match ev {
                EndpointEvent::HandshakeComplete => self.established(id, std::mem::take(&mut flight), datagram),
                // Data behind the client's Finished in the same datagram,
                // decrypted by rtc-dtls before it was dropped.
                EndpointEvent::ApplicationData(payload) => {
                    if let Some(Session {
                        phase: Phase::Established { last_flight, .. },
                        ..
                    }) = self.sessions.get_mut(&id)
                    {
                        *last_flight = None;
                        self.events.push_back(SessionEvent::Data {
                            session: id,
                            addr,
                            payload: payload.to_vec(),
                        });
                    }
                }
                EndpointEvent::PeerClosed => self.remove(id),
                _ => {}
            }
        }
    }

    /// The handshake of `id` completed on `datagram`, with `flight` as our
    /// last flight.
    fn established(&mut self, id: SessionId, flight: Vec<Box<[u8]>>, datagram: &[u8]) {
        let Some(s) = self.sessions.get(&id) else { return };
        let Phase::Handshaking { handshake, .. } = &s.phase else {
            return;
        };
        let (identity, protection, ip) = (handshake.identity(), handshake.protection(), s.addr.ip());
        self.end_handshake(id, ip);
        // The key was found during the handshake; if it vanished since, the
        // device no longer has a key and the session must not live.
        let (Some(binding), Ok(mut protection)) = (
            self.keys.binding(&identity),
            protection
                .inspect_err(|e| log::warn!("DTLS: session {id}: the negotiated keys could not be taken over ({e})")),
        ) else {
            self.counters.handshakes_failed += 1;
            self.remove(id);
            return;
        };
        // rtc-dtls opened the records of this datagram under the new keys
        // (the client's Finished, maybe data behind it): a replay of them
        // must find them already seen.
        for (header, _) in record::records(datagram).unwrap_or_default() {
            if header.epoch > 0 {
                protection.mark_received(header.sequence);
            }
        }
        self.counters.handshakes_completed += 1;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.phase = Phase::Established {
            binding: binding.clone(),
            protection,
            last_flight: Some(flight.into_boxed_slice()),
        };
        self.events.push_back(SessionEvent::Established {
            session: id,
            addr: s.addr,
            binding,
        });
    }

    /// Encrypt `payload` for `session`; false if it is not established.
    pub fn send(&mut self, _now: Instant, session: SessionId, payload: &[u8]) -> bool {
        self.seal(session, CONTENT_APPLICATION_DATA, payload)
    }

    fn seal(&mut self, session: SessionId, content_type: u8, payload: &[u8]) -> bool {
        let Some(Session {
            addr,
            phase: Phase::Established { protection, .. },
            ..
        }) = self.sessions.get_mut(&session)
        else {
            return false;
        };
        self.transmits.push_back(Transmit {
            to: *addr,
            datagram: protection.seal(content_type, payload),
        });
        true
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.remove(&id) {
            if self.by_addr.get(&s.addr) == Some(&id) {
                self.by_addr.remove(&s.addr);
            }
            if !self.end_handshake(id, s.addr.ip()) {
                self.events.push_back(SessionEvent::Closed { session: id });
            }
        }
    }

    /// Close a session, with close_notify if it is established.
    pub fn close(&mut self, _now: Instant, id: SessionId) {
        self.seal(id, CONTENT_ALERT, &CLOSE_NOTIFY);
        self.remove(id);
    }

    /// After the key table changed: end sessions whose identity lost its
    /// key or whose key was rotated.
    pub fn keys_changed(&mut self, now: Instant) {
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| match &s.phase {
                Phase::Established { binding, .. } => !self.keys.is_current(binding),
                Phase::Handshaking { .. } => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            log::info!("DTLS: closing session {id}: its key was rotated or removed");
            self.close(now, id);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let mut failed = Vec::new();
        for id in &self.handshaking {
            let s = self.sessions.get_mut(id).expect("handshaking sessions exist");
            let Phase::Handshaking { handshake, .. } = &mut s.phase else {
                continue;
            };
            if handshake.poll_timeout().is_some_and(|t| t <= now) {
                if !handshake.handle_timeout(now) {
                    failed.push(*id);
                }
                while let Some(t) = handshake.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        to: s.addr,
                        datagram: t.to_vec(),
                    });
                }
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP;
            let limits = &self.limits;
            for (id, s) in self.sessions.iter_mut() {
                let quiet = now.saturating_duration_since(s.last_seen);
                let expired = match &mut s.phase {
                    Phase::Handshaking { started, .. } => {
                        now.saturating_duration_since(*started) > limits.handshake_timeout
                    }
                    Phase::Established { last_flight, .. } => {
                        // A peer that needed our last flight again would have
                        // asked within its 1 and 2 s retransmissions.
                        if quiet >= STALLED {
                            *last_flight = None;
                        }
                        quiet > limits.idle_timeout
                    }
                };
                if expired {
                    failed.push(*id);
                }
            }
        }
        for id in failed {
            if self.handshaking.contains(&id) {
                self.counters.handshakes_failed += 1;
            }
            self.remove(id);
        }
    }
}

/// What the records of one datagram on an established session came to.
#[derive(Default)]
struct Opening {
    data: Vec<Vec<u8>>,
    /// Some record authenticated (it may still be late or a warning).
    authentic: bool,
    closed: bool,
    resend_flight: bool,
    dropped: u64,
}

/// Open each record of `datagram` (RFC 6347 §4.1.1: a datagram may carry
/// several). Records that do not authenticate are dropped, never answered
/// with an alert (§4.1.2.7): anyone can send from a spoofed address and
/// must not be able to close a device's session. Epoch-0 records are the
/// rest of a repeated final flight (ClientKeyExchange, ChangeCipherSpec);
/// its Finished, under the new keys, asks for our flight again.
fn open_records(protection: &mut Protection, last_flight: &mut Option<Box<[Box<[u8]>]>>, datagram: &[u8]) -> Opening {
    let mut out = Opening::default();
    let Some(records) = record::records(datagram) else {
        out.dropped += 1;
        return out;
    };
    for (header, range) in records {
        if header.epoch == 0 {
            continue;
        }
        match protection.open(&datagram[range]) {
            Ok(opened) => {
                out.authentic = true;
                match opened {
                    Opened::ApplicationData(payload) => {
                        *last_flight = None;
                        out.data.push(payload);
                    }
                    Opened::Closed => out.closed = true,
                    Opened::Warning => *last_flight = None,
                    Opened::Handshake(_) => out.resend_flight = true,
                }
            }
            Err(_) => out.dropped += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests;
