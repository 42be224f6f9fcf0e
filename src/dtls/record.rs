//! DTLS 1.2 record and ClientHello parsing (RFC 6347 §4.1, §4.2.1–4.2.2)
//! for the stateless front: enough to answer a ClientHello with a
//! HelloVerifyRequest and verify the returned cookie without keeping
//! anything per peer.

use std::net::SocketAddr;
use std::ops::Range;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The record header: type(1) version(2) epoch(2) sequence(6) length(2).
pub const RECORD_HEADER: usize = 13;
/// The handshake header: type(1) length(3) message_seq(2) fragment_offset(3)
/// fragment_length(3).
const HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HELLO_VERIFY_REQUEST: u8 = 3;
/// rtc-dtls' cookie length (`COOKIE_LENGTH`); ours must match, see
/// `dtls::provider`.
pub const COOKIE_LEN: usize = 20;

/// One record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub content_type: u8,
    pub epoch: u16,
    /// 48-bit record sequence number.
    pub sequence: u64,
}

/// The records of a datagram (RFC 6347 §4.1.1: several may share one);
/// `None` if any header is truncated.
pub fn records(datagram: &[u8]) -> Option<Vec<(RecordHeader, Range<usize>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let h = datagram.get(at..at + RECORD_HEADER)?;
        let length = u16::from_be_bytes([h[11], h[12]]) as usize;
        let end = at + RECORD_HEADER + length;
        if end > datagram.len() {
            return None;
        }
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&h[5..11]);
        out.push((
            RecordHeader {
                content_type: h[0],
                epoch: u16::from_be_bytes([h[3], h[4]]),
                sequence: u64::from_be_bytes(seq),
            },
            at..end,
        ));
        at = end;
    }
    Some(out)
}

/// An unfragmented ClientHello in the first record of a datagram.
#[derive(Debug)]
pub struct ClientHello<'a> {
    /// The whole record, header included.
    pub record: &'a [u8],
    pub record_sequence: u64,
    pub message_seq: u16,
    pub cookie: &'a [u8],
    /// client_version, random, session_id: what the cookie is bound to
    /// (RFC 6347 §4.2.1 suggests these and the client's address).
    pub bound: [&'a [u8]; 2],
}

/// Parse the ClientHello opening `datagram`, or `None` if it is anything
/// else (another record type, a fragment, a later epoch, truncated).
pub fn client_hello(datagram: &[u8]) -> Option<ClientHello<'_>> {
    let (h, range) = records(datagram)?.into_iter().next()?;
    if h.content_type != CONTENT_HANDSHAKE || h.epoch != 0 {
        return None;
    }
    let record = &datagram[range];
    let hs = &record[RECORD_HEADER..];
    if hs.len() < HANDSHAKE_HEADER || hs[0] != HANDSHAKE_CLIENT_HELLO {
        return None;
    }
    let u24 = |b: &[u8]| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize;
    let length = u24(&hs[1..4]);
    let message_seq = u16::from_be_bytes([hs[4], hs[5]]);
    // Only whole ClientHellos: a fragmented one cannot be verified statelessly.
    if u24(&hs[6..9]) != 0 || u24(&hs[9..12]) != length || hs.len() < HANDSHAKE_HEADER + length {
        return None;
    }
    let body = &hs[HANDSHAKE_HEADER..HANDSHAKE_HEADER + length];
    // client_version(2) random(32) session_id<0..32> cookie<0..2^8-1> …
    let sid_len = *body.get(34)? as usize;
    let cookie_at = 35 + sid_len;
    let cookie_len = *body.get(cookie_at)? as usize;
    let cookie = body.get(cookie_at + 1..cookie_at + 1 + cookie_len)?;
    Some(ClientHello {
        record,
        record_sequence: h.sequence,
        message_seq,
        cookie,
        bound: [&body[..2], &body[2..cookie_at]],
    })
}

/// A HelloVerifyRequest (RFC 6347 §4.2.1) carrying `cookie`, in a record
/// whose sequence number echoes the ClientHello's (§4.2.1: "the server MUST
/// use the record sequence number in the ClientHello").
pub fn hello_verify_request(record_sequence: u64, cookie: &[u8]) -> Vec<u8> {
    let body_len = 3 + cookie.len();
    let mut out = Vec::with_capacity(RECORD_HEADER + HANDSHAKE_HEADER + body_len);
    out.push(CONTENT_HANDSHAKE);
    // DTLS 1.0 in the record and the message, as §4.2.1 recommends for
    // HelloVerifyRequest, so that clients of either version accept it.
    out.extend_from_slice(&[0xfe, 0xff, 0, 0]);
    out.extend_from_slice(&record_sequence.to_be_bytes()[2..]);
    out.extend_from_slice(&((HANDSHAKE_HEADER + body_len) as u16).to_be_bytes());
    out.push(HANDSHAKE_HELLO_VERIFY_REQUEST);
    out.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    out.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[0xfe, 0xff, cookie.len() as u8]);
    out.extend_from_slice(cookie);
    out
}

/// Does `datagram` open with a HelloVerifyRequest?
pub fn is_hello_verify_request(datagram: &[u8]) -> bool {
    records(datagram)
        .and_then(|r| r.into_iter().next())
        .is_some_and(|(h, range)| {
            h.content_type == CONTENT_HANDSHAKE
                && h.epoch == 0
                && datagram[range].get(RECORD_HEADER) == Some(&HANDSHAKE_HELLO_VERIFY_REQUEST)
        })
}

/// `record` (one ClientHello record) with its record sequence number and
/// handshake message_seq replaced.
pub fn restamp(record: &[u8], record_sequence: u64, message_seq: u16) -> Vec<u8> {
    let mut out = record.to_vec();
    out[5..11].copy_from_slice(&record_sequence.to_be_bytes()[2..]);
    out[RECORD_HEADER + 4..RECORD_HEADER + 6].copy_from_slice(&message_seq.to_be_bytes());
    out
}

/// Stateless cookies: HMAC-SHA256 over the client's address and its
/// ClientHello, under a secret that rotates; a cookie from the current or
/// the previous secret is accepted, so a cookie lives one to two rotations.
pub struct CookieJar {
    current: hmac::Key,
    previous: hmac::Key,
    rotated_at: std::time::Instant,
    rotate_every: std::time::Duration,
}

fn fresh_key() -> hmac::Key {
    let mut secret = [0u8; 32];
    // The system CSPRNG does not fail on Linux; a zero key would still
    // only weaken cookies (return-routability), not the handshake.
    let _ = SystemRandom::new().fill(&mut secret);
    hmac::Key::new(hmac::HMAC_SHA256, &secret)
}

impl CookieJar {
    pub fn new(now: std::time::Instant, rotate_every: std::time::Duration) -> CookieJar {
        CookieJar {
            current: fresh_key(),
            previous: fresh_key(),
            rotated_at: now,
            rotate_every,
        }
    }

    fn tag(key: &hmac::Key, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        let mut ctx = hmac::Context::with_key(key);
        match peer.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&peer.port().to_be_bytes());
        for part in hello.bound {
            ctx.update(part);
        }
        let mut out = [0u8; COOKIE_LEN];
        out.copy_from_slice(&ctx.sign().as_ref()[..COOKIE_LEN]);
        out
    }

    pub fn maybe_rotate(&mut self, now: std::time::Instant) {
        if now.saturating_duration_since(self.rotated_at) >= self.rotate_every {
            self.previous = std::mem::replace(&mut self.current, fresh_key());
            self.rotated_at = now;
        }
    }

    pub fn issue(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        Self::tag(&self.current, peer, hello)
    }

    /// The cookie in `hello`, if it is one we issued to `peer` for this
    /// ClientHello (constant-time comparison).
    pub fn verify(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> Option<[u8; COOKIE_LEN]> {
        if hello.cookie.len() != COOKIE_LEN {
            return None;
        }
        [&self.current, &self.previous]
            .into_iter()
            .map(|k| Self::tag(k, peer, hello))
            .find(|t| rtc_dtls::crypto_provider::constant_time_eq(t, hello.cookie))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A ClientHello as coap-client-openssl sends it, built by hand:
    /// version, random, empty session id, `cookie`, one suite, null
    /// compression, no extensions.
    pub fn client_hello_record(record_seq: u64, message_seq: u16, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&message_seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 0xfe, 0xff, 0, 0];
        rec.extend_from_slice(&record_seq.to_be_bytes()[2..]);
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn cookies_bind_address_and_hello_and_expire() {
        let t0 = Instant::now();
        let mut jar = CookieJar::new(t0, Duration::from_secs(60));
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let first = client_hello_record(0, 0, &[]);
        let hello = client_hello(&first).unwrap();
        assert_eq!(
            (hello.record_sequence, hello.message_seq, hello.cookie.len()),
            (0, 0, 0)
        );
        assert!(jar.verify(peer, &hello).is_none());
        let cookie = jar.issue(peer, &hello);

        let second = client_hello_record(1, 1, &cookie);
        let hello2 = client_hello(&second).unwrap();
        assert_eq!(jar.verify(peer, &hello2), Some(cookie));
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        assert!(jar.verify(other, &hello2).is_none(), "another port");
        let mut forged = cookie;
        forged[0] ^= 1;
        let bad = client_hello_record(1, 1, &forged);
        assert!(jar.verify(peer, &client_hello(&bad).unwrap()).is_none());

        // One rotation: still valid; two: expired.
        jar.maybe_rotate(t0 + Duration::from_secs(61));
        assert_eq!(jar.verify(peer, &hello2), Some(cookie));
        jar.maybe_rotate(t0 + Duration::from_secs(122));
        assert!(jar.verify(peer, &hello2).is_none());
    }

    #[test]
    fn hello_verify_request_echoes_sequence_and_carries_cookie() {
        let hvr = hello_verify_request(0x0102_0304_0506, &[9; COOKIE_LEN]);
        let recs = records(&hvr).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0.sequence, 0x0102_0304_0506);
        assert_eq!(recs[0].1, 0..hvr.len());
        assert_eq!(hvr[RECORD_HEADER], HANDSHAKE_HELLO_VERIFY_REQUEST);
        assert_eq!(&hvr[hvr.len() - COOKIE_LEN..], &[9; COOKIE_LEN]);
        assert!(is_hello_verify_request(&hvr));
        assert!(!is_hello_verify_request(&client_hello_record(0, 0, &[])));
    }

    #[test]
    fn garbage_and_truncation_are_not_client_hellos() {
        let good = client_hello_record(3, 1, &[1; COOKIE_LEN]);
        for n in 0..good.len() {
            assert!(client_hello(&good[..n]).is_none(), "truncated at {n}");
        }
        let restamped = restamp(&good, 2, 0);
        let h = client_hello(&restamped).unwrap();
        assert_eq!(
            (h.record_sequence, h.message_seq, h.cookie),
            (2, 0, &[1u8; COOKIE_LEN][..])
        );
        let mut app = good.clone();
        app[0] = 23;
        assert!(client_hello(&app).is_none());
        assert!(records(&[22, 0xfe, 0xfd]).is_none());
    }
}
