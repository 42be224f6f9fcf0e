//! A DTLS 1.2 PSK client for the device simulator and the benchmarks:
//! one session with one server, sans-I/O like the server side. It does
//! what a constrained device does and no more: the cookie exchange
//! (RFC 6347 §4.2.1), a plain-PSK handshake (RFC 4279 §2) with the
//! extended master secret offered (RFC 7627), flights retransmitted on a
//! doubling timer (RFC 6347 §4.2.4), then AEAD records
//! ([`super::protection`]).
//!
//! Handshake messages must arrive unfragmented, as every server sends
//! these few small ones; a fragment fails the handshake.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rtc_dtls::cipher_suite::CipherSuiteId;

use super::protection::{
    Aead, CLOSE_NOTIFY, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE,
    DTLS_1_2, Negotiated, Opened, Protection, prf,
};
use super::record::{self, RECORD_HEADER};
use crate::error::{Error, Result};

// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2).
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const HELLO_VERIFY_REQUEST: u8 = 3;
const SERVER_KEY_EXCHANGE: u8 = 12;
const SERVER_HELLO_DONE: u8 = 14;
const CLIENT_KEY_EXCHANGE: u8 = 16;
const FINISHED: u8 = 20;
const HANDSHAKE_HEADER: usize = 12;
/// RFC 7627 §5.1.
const EXTENDED_MASTER_SECRET: u16 = 0x0017;
const VERIFY_DATA: usize = 12;
/// RFC 6347 §4.2.4.1: 1 s first, doubled up to 60 s.
const FIRST_RETRANSMIT: Duration = Duration::from_secs(1);
const MAX_RETRANSMIT: Duration = Duration::from_secs(60);
/// Retransmissions before the handshake is given up (1+2+4+8+16 s).
const RETRANSMISSIONS: u32 = 5;

/// One identity, its key and the suites to offer, most preferred first.
pub struct ClientConfig {
    identity: Vec<u8>,
    key: Vec<u8>,
    suites: Vec<Aead>,
}

/// A client's configuration: `identity` and `key`, `suites` offered in
/// order (only the AEAD suites of [`super::CIPHER_SUITES`]).
pub fn client_config(identity: &str, key: &[u8], suites: &[CipherSuiteId]) -> Result<Arc<ClientConfig>> {
    let invalid = |reason: String| Error::Invalid {
        what: "DTLS client configuration",
        reason,
    };
    let suites = suites
        .iter()
        .map(|s| Aead::from_suite(*s as u16).ok_or_else(|| invalid(format!("unsupported suite {s}"))))
        .collect::<Result<Vec<_>>>()?;
    if suites.is_empty() || key.is_empty() || identity.len() > u16::MAX as usize || key.len() > u16::MAX as usize {
        return Err(invalid("a suite, a key and an identity under 64 KiB are needed".into()));
    }
    Ok(Arc::new(ClientConfig {
        identity: identity.as_bytes().to_vec(),
        key: key.to_vec(),
        suites,
    }))
}

enum State {
    /// ClientHello sent; a HelloVerifyRequest or a ServerHello may come.
    Hello,
    /// ServerHello taken; its ServerKeyExchange (the identity hint, which
    /// we do not use) may come, then ServerHelloDone.
    ServerHello {
        aead: Aead,
        server_random: [u8; 32],
        extended_master_secret: bool,
    },
    /// Our Finished sent; the server's ChangeCipherSpec and Finished due.
    Finished {
        protection: Protection,
        expected: [u8; VERIFY_DATA],
    },
    Established {
        protection: Protection,
    },
    Failed,
}

pub struct Client {
    config: Arc<ClientConfig>,
    client_random: [u8; 32],
    state: State,
    /// The running hash of the handshake messages (RFC 5246 §7.4.9, with
    /// DTLS headers as if unfragmented, RFC 6347 §4.2.6).
    transcript: digest::Context,
    /// Our next handshake message_seq and epoch-0 record number.
    message_seq: u16,
    record_seq: u64,
    /// Our last flight, for retransmission: (content type, fragment,
    /// under the new keys?).
    flight: Vec<(u8, Vec<u8>, bool)>,
    retransmit_at: Option<Instant>,
    retransmit_every: Duration,
    retransmissions: u32,
    transmits: VecDeque<Vec<u8>>,
    received: VecDeque<Vec<u8>>,
}

fn u24(n: usize) -> [u8; 3] {
    let b = (n as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

/// A plaintext record of epoch 0.
fn plaintext_record(content_type: u8, seq: u64, fragment: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + fragment.len());
    r.push(content_type);
    r.extend_from_slice(&DTLS_1_2);
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&seq.to_be_bytes()[2..]);
    r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    r.extend_from_slice(fragment);
    r
}

/// A whole handshake message with its DTLS header (RFC 6347 §4.2.2).
fn handshake_message(msg_type: u8, message_seq: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HANDSHAKE_HEADER + body.len());
    m.push(msg_type);
    m.extend_from_slice(&u24(body.len()));
    m.extend_from_slice(&message_seq.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0]);
    m.extend_from_slice(&u24(body.len()));
    m.extend_from_slice(body);
    m
}

/// The handshake messages of one record's fragment: (type, whole message).
/// `None` if one is fragmented or truncated.
fn handshake_messages(fragment: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < fragment.len() {
        let h = fragment.get(at..at + HANDSHAKE_HEADER)?;
        let len = (h[1] as usize) << 16 | (h[2] as usize) << 8 | h[3] as usize;
        if h[6..9] != [0, 0, 0] || h[9..12] != h[1..4] {
            return None;
        }
        let end = at + HANDSHAKE_HEADER + len;
        out.push((h[0], fragment.get(at..end)?));
        at = end;
    }
    Some(out)
}

/// ServerHello body (RFC 5246 §7.4.1.3): random, suite, and whether the
/// extended_master_secret extension came back.
fn parse_server_hello(body: &[u8]) -> Option<([u8; 32], u16, bool)> {
    let random: [u8; 32] = body.get(2..34)?.try_into().ok()?;
    let sid = *body.get(34)? as usize;
    let at = 35 + sid;
    let suite = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
    let mut ems = false;
    // compression_method(1), then optional extensions<0..2^16-1>.
    if let Some(ext) = body.get(at + 3..)
        && ext.len() >= 2
    {
        let mut rest = &ext[2..];
        while rest.len() >= 4 {
            let t = u16::from_be_bytes([rest[0], rest[1]]);
            let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
            ems |= t == EXTENDED_MASTER_SECRET;
            rest = rest.get(4 + len..)?;
        }
    }
    Some((random, suite, ems))
}

impl Client {
    /// Start a handshake with `server`; the ClientHello is ready in
    /// [`Self::poll_transmit`].
    pub fn connect(now: Instant, _server: SocketAddr, config: Arc<ClientConfig>) -> Result<Client> {
        let mut client_random = [0u8; 32];
        SystemRandom::new()
            .fill(&mut client_random)
            .map_err(|_| Error::Invalid {
                what: "DTLS connect",
                reason: "no random numbers".into(),
            })?;
        let mut c = Client {
            config,
            client_random,
            state: State::Hello,
            transcript: digest::Context::new(&digest::SHA256),
            message_seq: 0,
            record_seq: 0,
            flight: Vec::new(),
            retransmit_at: None,
            retransmit_every: FIRST_RETRANSMIT,
            retransmissions: 0,
            transmits: VecDeque::new(),
            received: VecDeque::new(),
        };
        c.send_client_hello(now, &[]);
        Ok(c)
    }

    fn client_hello_body(&self, cookie: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + cookie.len());
        b.extend_from_slice(&DTLS_1_2);
        b.extend_from_slice(&self.client_random);
        b.push(0); // session_id
        b.push(cookie.len() as u8);
        b.extend_from_slice(cookie);
        b.extend_from_slice(&((2 * self.config.suites.len()) as u16).to_be_bytes());
        for s in &self.config.suites {
            b.extend_from_slice(&s.suite().to_be_bytes());
        }
        b.extend_from_slice(&[1, 0]); // null compression
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&EXTENDED_MASTER_SECRET.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b
    }

    /// Send a ClientHello; the transcript starts over with it (the
    /// cookie-less one and the HelloVerifyRequest are not part of it).
    fn send_client_hello(&mut self, now: Instant, cookie: &[u8]) {
        let m = handshake_message(CLIENT_HELLO, self.message_seq, &self.client_hello_body(cookie));
        self.message_seq += 1;
        self.transcript = digest::Context::new(&digest::SHA256);
        self.transcript.update(&m);
        self.send_flight(now, vec![(CONTENT_HANDSHAKE, m, false)]);
    }

    fn send_flight(&mut self, now: Instant, flight: Vec<(u8, Vec<u8>, bool)>) {
        self.flight = flight;
        self.retransmit_every = FIRST_RETRANSMIT;
        self.retransmissions = 0;
        self.retransmit_at = Some(now + FIRST_RETRANSMIT);
        self.emit_flight();
    }

    /// The flight as one datagram, each record with a new record number
    /// (RFC 6347 §4.2.4: retransmissions are new records).
    fn emit_flight(&mut self) {
        let mut datagram = Vec::new();
        for (content_type, fragment, protected) in &self.flight {
            if *protected {
                let State::Finished { protection, .. } = &mut self.state else {
                    continue;
                };
                datagram.extend_from_slice(&protection.seal(*content_type, fragment));
            } else {
                datagram.extend_from_slice(&plaintext_record(*content_type, self.record_seq, fragment));
                self.record_seq += 1;
            }
        }
        self.transmits.push_back(datagram);
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The handshake failed (an alert, retransmissions exhausted) or the
    /// session was closed by the server.
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.retransmit_at = None;
        self.flight.clear();
    }

    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Some(records) = record::records(datagram) else {
            return;
        };
        for (header, range) in records {
            if matches!(self.state, State::Failed) {
                return;
            }
            let r = &datagram[range];
            let fragment = &r[RECORD_HEADER..];
            match (header.epoch, header.content_type) {
                (0, CONTENT_HANDSHAKE) => {
                    let Some(messages) = handshake_messages(fragment) else {
                        self.fail();
                        return;
                    };
                    for (msg_type, m) in messages {
                        self.handshake(now, msg_type, m);
                    }
                }
                // Before the keys change, an alert is plaintext and ends the
                // handshake (a warning here would be a close_notify).
                (0, CONTENT_ALERT) if !self.is_established() => self.fail(),
                // The server's ChangeCipherSpec: its Finished follows under
                // the new keys, which is what is checked.
                (0, _) => {}
                _ => self.protected(r),
            }
        }
    }

    fn handshake(&mut self, now: Instant, msg_type: u8, m: &[u8]) {
        let body = &m[HANDSHAKE_HEADER..];
        match (&self.state, msg_type) {
            (State::Hello, HELLO_VERIFY_REQUEST) => {
                // server_version(2) cookie<0..2^8-1>
                let Some(cookie) = body.get(2).and_then(|n| body.get(3..3 + *n as usize)) else {
                    return self.fail();
                };
                let cookie = cookie.to_vec();
                self.send_client_hello(now, &cookie);
            }
            (State::Hello, SERVER_HELLO) => {
                let Some((server_random, suite, extended_master_secret)) = parse_server_hello(body) else {
                    return self.fail();
                };
                let Some(aead) = Aead::from_suite(suite).filter(|a| self.config.suites.contains(a)) else {
                    return self.fail();
                };
                self.transcript.update(m);
                self.state = State::ServerHello {
                    aead,
                    server_random,
                    extended_master_secret,
                };
            }
            (State::ServerHello { .. }, SERVER_KEY_EXCHANGE) => self.transcript.update(m),
            (
                &State::ServerHello {
                    aead,
                    server_random,
                    extended_master_secret,
                },
                SERVER_HELLO_DONE,
            ) => {
                self.transcript.update(m);
                self.key_exchange(now, aead, server_random, extended_master_secret);
            }
            // Repeats of a flight already taken (the server retransmitted):
            // our own retransmission timer answers them.
            _ => {}
        }
    }

    /// Our final flight: ClientKeyExchange, ChangeCipherSpec, Finished.
    fn key_exchange(&mut self, now: Instant, aead: Aead, server_random: [u8; 32], extended_master_secret: bool) {
        let identity = &self.config.identity;
        let mut body = Vec::with_capacity(2 + identity.len());
        body.extend_from_slice(&(identity.len() as u16).to_be_bytes());
        body.extend_from_slice(identity);
        let cke = handshake_message(CLIENT_KEY_EXCHANGE, self.message_seq, &body);
        self.message_seq += 1;
        self.transcript.update(&cke);

        // RFC 4279 §2: the premaster secret of plain PSK is
        // uint16 N, N zero bytes, uint16 N, the key.
        let key = &self.config.key;
        let mut premaster = Vec::with_capacity(4 + 2 * key.len());
        premaster.extend_from_slice(&(key.len() as u16).to_be_bytes());
        premaster.resize(2 + key.len(), 0);
        premaster.extend_from_slice(&(key.len() as u16).to_be_bytes());
        premaster.extend_from_slice(key);
        let mut master = [0u8; 48];
        if extended_master_secret {
            // RFC 7627 §4: over the session hash, up to ClientKeyExchange.
            let session_hash = self.transcript.clone().finish();
            prf(
                &premaster,
                b"extended master secret",
                &[session_hash.as_ref()],
                &mut master,
            );
        } else {
            prf(
                &premaster,
                b"master secret",
                &[&self.client_random, &server_random],
                &mut master,
            );
        }
        let protection = Protection::new(&Negotiated {
            aead,
            master_secret: &master,
            client_random: &self.client_random,
            server_random: &server_random,
            is_server: false,
            epoch: 1,
            next_sequence: 0,
        });
        let mut verify = [0u8; VERIFY_DATA];
        let hash = self.transcript.clone().finish();
        prf(&master, b"client finished", &[hash.as_ref()], &mut verify);
        let finished = handshake_message(FINISHED, self.message_seq, &verify);
        self.message_seq += 1;
        self.transcript.update(&finished);
        let mut expected = [0u8; VERIFY_DATA];
        let hash = self.transcript.clone().finish();
        prf(&master, b"server finished", &[hash.as_ref()], &mut expected);

        self.state = State::Finished { protection, expected };
        self.send_flight(
            now,
            vec![
                (CONTENT_HANDSHAKE, cke, false),
                (CONTENT_CHANGE_CIPHER_SPEC, vec![1], false),
                (CONTENT_HANDSHAKE, finished, true),
            ],
        );
    }

    /// A record under the new keys.
    fn protected(&mut self, record: &[u8]) {
        let (State::Finished { protection, .. } | State::Established { protection }) = &mut self.state else {
            return;
        };
        match protection.open(record) {
            Ok(Opened::ApplicationData(d)) if self.is_established() => self.received.push_back(d),
            Ok(Opened::Handshake(m)) => {
                let State::Finished { protection, expected } = &self.state else {
                    return;
                };
                let ok = m.len() == HANDSHAKE_HEADER + VERIFY_DATA
                    && m[0] == FINISHED
                    && rtc_dtls::crypto_provider::constant_time_eq(&m[HANDSHAKE_HEADER..], expected);
                if !ok {
                    return self.fail();
                }
                self.state = State::Established {
                    protection: protection.clone(),
                };
                self.retransmit_at = None;
                self.flight.clear();
            }
            Ok(Opened::Closed) => self.fail(),
            // Late, replayed or forged records are dropped (RFC 6347 §4.1.2.7).
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.retransmit_at else { return };
        if now < at {
            return;
        }
        if self.retransmissions >= RETRANSMISSIONS {
            return self.fail();
        }
        self.retransmissions += 1;
        self.retransmit_every = (self.retransmit_every * 2).min(MAX_RETRANSMIT);
        self.retransmit_at = Some(now + self.retransmit_every);
        self.emit_flight();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retransmit_at
    }

    /// Encrypt `payload`; false before the handshake completes.
    pub fn send(&mut self, _now: Instant, payload: &[u8]) -> bool {
        let State::Established { protection } = &mut self.state else {
            return false;
        };
        self.transmits
            .push_back(protection.seal(CONTENT_APPLICATION_DATA, payload));
        true
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_received(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// Queue close_notify.
    pub fn close(&mut self, _now: Instant) {
        if let State::Established { protection } = &mut self.state {
            self.transmits.push_back(protection.seal(CONTENT_ALERT, &CLOSE_NOTIFY));
        }
        self.fail();
    }
}
