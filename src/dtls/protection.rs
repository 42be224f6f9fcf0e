//! DTLS 1.2 record protection for established sessions, both ends: the
//! TLS 1.2 PRF (RFC 5246 §5), the key block (§6.3), AEAD records
//! (§6.2.3.3; CCM per RFC 6655 §3, GCM per RFC 5288 §3) and the anti-replay
//! window (RFC 6347 §4.1.2.6).
//!
//! rtc-dtls runs the handshakes; once one completes, the negotiated master
//! secret and randoms come here and rtc-dtls' association (about 9 KB,
//! allocating per record) is dropped. An established session then costs a
//! few dozen bytes of keys and counters and no allocation beyond the record
//! itself.

use aes::Aes128;
use ccm::Ccm;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U8, U12, U16};
use ring::aead as ring_aead;
use ring::hmac;

use super::record::RECORD_HEADER;

/// DTLS 1.2 on the wire (RFC 6347 §4.1).
pub const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// The explicit part of the AEAD nonce, carried in each record.
const EXPLICIT_NONCE: usize = 8;
const KEY_LEN: usize = 16;
/// The implicit part of the nonce ("salt", the key block's write IV).
const SALT_LEN: usize = 4;
/// An alert: level warning(1), description close_notify(0) (RFC 5246 §7.2.1).
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];
const ALERT_FATAL: u8 = 2;

/// `P_SHA256(secret, label + seed)` into `out` (RFC 5246 §5): the PRF of
/// every suite we offer.
pub fn prf(secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let with_seed = |ctx: &mut hmac::Context| {
        ctx.update(label);
        for s in seed {
            ctx.update(s);
        }
    };
    // A(1) = HMAC(secret, label + seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = {
        let mut ctx = hmac::Context::with_key(&key);
        with_seed(&mut ctx);
        ctx.sign()
    };
    for chunk in out.chunks_mut(32) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        with_seed(&mut ctx);
        chunk.copy_from_slice(&ctx.sign().as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}

/// The AEAD of a suite; all three use AES-128 and the SHA-256 PRF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    /// TLS_PSK_WITH_AES_128_CCM_8 (0xC0A8), RFC 6655.
    Ccm8,
    /// TLS_PSK_WITH_AES_128_CCM (0xC0A4), RFC 6655.
    Ccm,
    /// TLS_PSK_WITH_AES_128_GCM_SHA256 (0x00A8), RFC 5487.
    Gcm,
}

impl Aead {
    pub fn from_suite(id: u16) -> Option<Aead> {
        match id {
            0xc0a8 => Some(Aead::Ccm8),
            0xc0a4 => Some(Aead::Ccm),
            0x00a8 => Some(Aead::Gcm),
            _ => None,
        }
    }

    pub fn suite(self) -> u16 {
        match self {
            Aead::Ccm8 => 0xc0a8,
            Aead::Ccm => 0xc0a4,
            Aead::Gcm => 0x00a8,
        }
    }

    fn tag_len(self) -> usize {
        match self {
            Aead::Ccm8 => 8,
            Aead::Ccm | Aead::Gcm => 16,
        }
    }

    /// Encrypt `buf[from..]` in place and append the tag.
    fn seal(self, key: &[u8; KEY_LEN], nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>, from: usize) {
        let text = &mut buf[from..];
        let sealed = match self {
            Aead::Ccm8 => Ccm::<Aes128, U8, U12>::new(GenericArray::from_slice(key))
                .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, text)
                .map(|tag| tag.to_vec()),
            Aead::Ccm => Ccm::<Aes128, U16, U12>::new(GenericArray::from_slice(key))
                .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, text)
                .map(|tag| tag.to_vec()),
            Aead::Gcm => gcm_key(key)
                .seal_in_place_separate_tag(
                    ring_aead::Nonce::assume_unique_for_key(*nonce),
                    ring_aead::Aad::from(aad),
                    text,
                )
                .map(|tag| tag.as_ref().to_vec())
                .map_err(|_| ccm::aead::Error),
        };
        // Both fail only beyond their length limits (2^24 bytes for CCM
        // with a 12-byte nonce), far over a DTLS record's 2^14.
        buf.extend_from_slice(&sealed.expect("a DTLS record is within every AEAD's length limit"));
    }

    /// Decrypt `ciphertext` (tag last) in place; the plaintext's length, or
    /// `None` if it does not authenticate.
    fn open(self, key: &[u8; KEY_LEN], nonce: &[u8; 12], aad: &[u8], ciphertext: &mut [u8]) -> Option<usize> {
        let n = ciphertext.len().checked_sub(self.tag_len())?;
        let ok = match self {
            Aead::Ccm8 | Aead::Ccm => {
                let (text, tag) = ciphertext.split_at_mut(n);
                let (nonce, tag) = (GenericArray::from_slice(nonce), &*tag);
                if self == Aead::Ccm8 {
                    Ccm::<Aes128, U8, U12>::new(GenericArray::from_slice(key))
                        .decrypt_in_place_detached(nonce, aad, text, GenericArray::from_slice(tag))
                        .is_ok()
                } else {
                    Ccm::<Aes128, U16, U12>::new(GenericArray::from_slice(key))
                        .decrypt_in_place_detached(nonce, aad, text, GenericArray::from_slice(tag))
                        .is_ok()
                }
            }
            Aead::Gcm => gcm_key(key)
                .open_in_place(
                    ring_aead::Nonce::assume_unique_for_key(*nonce),
                    ring_aead::Aad::from(aad),
                    ciphertext,
                )
                .is_ok(),
        };
        ok.then_some(n)
    }
}

fn gcm_key(key: &[u8; KEY_LEN]) -> ring_aead::LessSafeKey {
    ring_aead::LessSafeKey::new(ring_aead::UnboundKey::new(&ring_aead::AES_128_GCM, key).expect("a 16-byte key"))
}

/// The last 64 record numbers received (RFC 6347 §4.1.2.6): `top` is the
/// highest seen, bit i of `seen` stands for `top - i`.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    top: u64,
    seen: u64,
}

impl ReplayWindow {
    fn is_fresh(&self, seq: u64) -> bool {
        if self.seen == 0 || seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < 64 && self.seen & (1 << back) == 0
    }

    /// Only after the record authenticated (§4.1.2.6: "only after … the
    /// MAC verification").
    fn mark(&mut self, seq: u64) {
        if self.seen == 0 {
            (self.top, self.seen) = (seq, 1);
        } else if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
            self.top = seq;
        } else {
            self.seen |= 1 << (self.top - seq);
        }
    }
}

/// What a session negotiated, as the handshake hands it over.
pub struct Negotiated<'a> {
    pub aead: Aead,
    pub master_secret: &'a [u8],
    pub client_random: &'a [u8; 32],
    pub server_random: &'a [u8; 32],
    pub is_server: bool,
    /// The epoch of the protected records (1 after the first handshake).
    pub epoch: u16,
    /// Our next record number in that epoch (our Finished used the ones
    /// before it).
    pub next_sequence: u64,
}

/// A decrypted record.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    ApplicationData(Vec<u8>),
    /// close_notify or a fatal alert: the session ends (RFC 5246 §7.2).
    Closed,
    /// A warning alert other than close_notify.
    Warning,
    /// A handshake message under the new keys: the peer's Finished again
    /// (it retransmits its final flight, RFC 6347 §4.2.4) or, on a client,
    /// the server's Finished.
    Handshake(Vec<u8>),
}

/// Why a record was dropped (RFC 6347 §4.1.2.7: silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Malformed,
    /// Another epoch: a retransmitted handshake record, or garbage.
    Epoch,
    Replayed,
    Unauthentic,
}

/// One established session's keys and counters, one direction each way.
#[derive(Clone)]
pub struct Protection {
    aead: Aead,
    write_key: [u8; KEY_LEN],
    write_salt: [u8; SALT_LEN],
    read_key: [u8; KEY_LEN],
    read_salt: [u8; SALT_LEN],
    epoch: u16,
    next_sequence: u64,
    window: ReplayWindow,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Protection")
            .field("aead", &self.aead)
            .field("epoch", &self.epoch)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

/// The 8 bytes of epoch and record number (RFC 6347 §4.1).
fn epoch_sequence(epoch: u16, seq: u64) -> [u8; 8] {
    ((epoch as u64) << 48 | seq).to_be_bytes()
}

fn nonce(salt: &[u8; SALT_LEN], explicit: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(explicit);
    n
}

/// The additional data (RFC 5246 §6.2.3.3 with DTLS' epoch and sequence,
/// RFC 6347 §4.1.2.1).
fn additional_data(epoch_seq: &[u8], content_type: u8, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(epoch_seq);
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&DTLS_1_2);
    aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

/// Both ends of one established CCM_8 session with fixed keys (the key
/// block a completed handshake would hand over), for tests and the
/// `dtls_session` fuzz target: (client, server).
#[cfg(any(test, feature = "fuzzing"))]
pub fn fixed_pair() -> (Protection, Protection) {
    let (cr, sr) = ([1u8; 32], [2u8; 32]);
    let n = |is_server| Negotiated {
        aead: Aead::from_suite(0xC0A8).expect("CCM_8"),
        master_secret: &[9u8; 48],
        client_random: &cr,
        server_random: &sr,
        is_server,
        epoch: 1,
        next_sequence: 1,
    };
    (Protection::new(&n(false)), Protection::new(&n(true)))
}

impl Protection {
    /// The key block (RFC 5246 §6.3): for AEAD suites no MAC keys, then
    /// client key, server key, client salt, server salt.
    pub fn new(n: &Negotiated<'_>) -> Protection {
        let mut block = [0u8; 2 * (KEY_LEN + SALT_LEN)];
        prf(
            n.master_secret,
            b"key expansion",
            &[n.server_random, n.client_random],
            &mut block,
        );
        let part = |at: usize, len: usize| &block[at..at + len];
        let client_key: [u8; KEY_LEN] = part(0, KEY_LEN).try_into().expect("16");
        let server_key: [u8; KEY_LEN] = part(KEY_LEN, KEY_LEN).try_into().expect("16");
        let client_salt: [u8; SALT_LEN] = part(2 * KEY_LEN, SALT_LEN).try_into().expect("4");
        let server_salt: [u8; SALT_LEN] = part(2 * KEY_LEN + SALT_LEN, SALT_LEN).try_into().expect("4");
        let ((write_key, write_salt), (read_key, read_salt)) = if n.is_server {
            ((server_key, server_salt), (client_key, client_salt))
        } else {
            ((client_key, client_salt), (server_key, server_salt))
        };
        Protection {
            aead: n.aead,
            write_key,
            write_salt,
            read_key,
            read_salt,
            epoch: n.epoch,
            next_sequence: n.next_sequence,
            window: ReplayWindow::default(),
        }
    }

    /// One protected record of `content_type` carrying `plaintext`. The
    /// explicit nonce is the epoch and record number, unique under the key
    /// (RFC 6655 §3 suggests it).
    pub fn seal(&mut self, content_type: u8, plaintext: &[u8]) -> Vec<u8> {
        let seq = self.next_sequence;
        self.next_sequence += 1;
        let explicit = epoch_sequence(self.epoch, seq);
        let length = EXPLICIT_NONCE + plaintext.len() + self.aead.tag_len();
        let mut out = Vec::with_capacity(RECORD_HEADER + length);
        out.push(content_type);
        out.extend_from_slice(&DTLS_1_2);
        out.extend_from_slice(&explicit);
        out.extend_from_slice(&(length as u16).to_be_bytes());
        out.extend_from_slice(&explicit);
        out.extend_from_slice(plaintext);
        let aad = additional_data(&explicit, content_type, plaintext.len());
        let nonce = nonce(&self.write_salt, &explicit);
        self.aead
            .seal(&self.write_key, &nonce, &aad, &mut out, RECORD_HEADER + EXPLICIT_NONCE);
        debug_assert_eq!(out.len(), RECORD_HEADER + length);
        out
    }

    /// Count record `sequence` of our epoch as received (one another
    /// implementation opened before the session came here).
    pub fn mark_received(&mut self, sequence: u64) {
        self.window.mark(sequence);
    }

    /// Open one record (header included). Nothing changes unless it
    /// authenticates.
    pub fn open(&mut self, record: &[u8]) -> Result<Opened, Dropped> {
        let header = record.get(..RECORD_HEADER).ok_or(Dropped::Malformed)?;
        let content_type = header[0];
        // The AAD carries the record's version (RFC 5246 §6.2.3.3); ours is
        // always DTLS 1.2, so a record claiming another is not one of the
        // peer's, even if the rest authenticates (found by the dtls_session
        // fuzzer: a record with its version bytes changed opened).
        if header[1..3] != DTLS_1_2 {
            return Err(Dropped::Malformed);
        }
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        if epoch != self.epoch {
            return Err(Dropped::Epoch);
        }
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&header[5..11]);
        let seq = u64::from_be_bytes(seq);
        if !self.window.is_fresh(seq) {
            return Err(Dropped::Replayed);
        }
        let body = &record[RECORD_HEADER..];
        if body.len() != u16::from_be_bytes([header[11], header[12]]) as usize
            || body.len() < EXPLICIT_NONCE + self.aead.tag_len()
        {
            return Err(Dropped::Malformed);
        }
        let nonce = nonce(&self.read_salt, &body[..EXPLICIT_NONCE]);
        let mut text = body[EXPLICIT_NONCE..].to_vec();
        let plaintext_len = text.len() - self.aead.tag_len();
        let aad = additional_data(&header[3..11], content_type, plaintext_len);
        let n = self
            .aead
            .open(&self.read_key, &nonce, &aad, &mut text)
            .ok_or(Dropped::Unauthentic)?;
        text.truncate(n);
        self.window.mark(seq);
        Ok(match content_type {
            CONTENT_APPLICATION_DATA => Opened::ApplicationData(text),
            CONTENT_ALERT if text == CLOSE_NOTIFY || text.first() == Some(&ALERT_FATAL) => Opened::Closed,
            CONTENT_ALERT => Opened::Warning,
            CONTENT_HANDSHAKE => Opened::Handshake(text),
            _ => return Err(Dropped::Malformed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/data/fuzz/dtls_session/version-changed: a sealed record whose
    /// version bytes were changed does not open.
    #[test]
    fn a_record_with_another_version_is_dropped() {
        let (mut client, mut server) = fixed_pair();
        let mut r = client.seal(23, b"");
        r[2] ^= 1;
        assert_eq!(server.open(&r), Err(Dropped::Malformed));
        r[2] ^= 1;
        assert_eq!(
            server.open(&r),
            Ok(Opened::ApplicationData(Vec::new())),
            "untouched, it opens"
        );
    }

    /// RFC 5246 has no PRF vectors; this is the TLS 1.2 P_SHA256 vector
    /// posted to the IETF TLS list, checked here with
    /// `openssl kdf -keylen 100 -kdfopt digest:SHA256 -kdfopt hexsecret:… -kdfopt seed:"test label" -kdfopt hexseed:… TLS1-PRF`.
    #[test]
    fn prf_matches_openssl() {
        let hex = |s: &str| crate::lwm2m::path::hex_bytes::decode(s).unwrap();
        let expected = hex(concat!(
            "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af",
            "0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701",
            "87347b66"
        ));
        let mut out = [0u8; 100];
        prf(
            &hex("9bbe436ba940f017b17652849a71db35"),
            b"test label",
            &[&hex("a0ba9f936cda311827a6f796ffd5198c")],
            &mut out,
        );
        assert_eq!(out[..], expected[..]);
    }

    fn pair(aead: Aead) -> (Protection, Protection) {
        let (master, cr, sr) = ([7u8; 48], [1u8; 32], [2u8; 32]);
        let side = |is_server| {
            Protection::new(&Negotiated {
                aead,
                master_secret: &master,
                client_random: &cr,
                server_random: &sr,
                is_server,
                epoch: 1,
                next_sequence: 1,
            })
        };
        (side(false), side(true))
    }

    #[test]
    fn records_round_trip_once_in_every_suite_and_tampering_is_refused() {
        for aead in [Aead::Ccm8, Aead::Ccm, Aead::Gcm] {
            let (mut client, mut server) = pair(aead);
            let r = client.seal(CONTENT_APPLICATION_DATA, b"GET /rd");
            assert_eq!(r.len(), RECORD_HEADER + 8 + 7 + aead.tag_len(), "{aead:?}");
            assert_eq!(server.open(&r), Ok(Opened::ApplicationData(b"GET /rd".to_vec())));
            assert_eq!(server.open(&r), Err(Dropped::Replayed), "{aead:?}");
            let answer = server.seal(CONTENT_APPLICATION_DATA, b"2.05");
            assert_eq!(client.open(&answer), Ok(Opened::ApplicationData(b"2.05".to_vec())));
            // A record of the client's own direction does not open there.
            let own = client.seal(CONTENT_APPLICATION_DATA, b"x");
            assert_eq!(client.open(&own), Err(Dropped::Unauthentic));

            for at in [0, 4, 12, RECORD_HEADER + 2, r.len() - 1] {
                let mut bad = client.seal(CONTENT_APPLICATION_DATA, b"GET /rd");
                bad[at] ^= 0x40;
                assert!(server.open(&bad).is_err(), "{aead:?}: flipped byte {at} accepted");
            }
            let fresh = client.seal(CONTENT_APPLICATION_DATA, b"GET /rd");
            assert_eq!(server.open(&fresh[..fresh.len() - 1]), Err(Dropped::Malformed));
            assert_eq!(server.open(&fresh[..RECORD_HEADER + 3]), Err(Dropped::Malformed));
            assert!(
                server.open(&fresh).is_ok(),
                "{aead:?}: a refused record leaves no trace"
            );
            let close = client.seal(CONTENT_ALERT, &CLOSE_NOTIFY);
            assert_eq!(server.open(&close), Ok(Opened::Closed));
        }
    }

    #[test]
    fn the_replay_window_takes_late_records_once_and_forgets_the_too_old() {
        let (mut client, mut server) = pair(Aead::Ccm8);
        let records: Vec<Vec<u8>> = (0..100).map(|_| client.seal(CONTENT_APPLICATION_DATA, b"v")).collect();
        assert!(server.open(&records[80]).is_ok());
        assert!(server.open(&records[79]).is_ok(), "late but within the window");
        assert_eq!(server.open(&records[79]), Err(Dropped::Replayed));
        assert_eq!(
            server.open(&records[10]),
            Err(Dropped::Replayed),
            "older than 64 records"
        );
        assert!(server.open(&records[99]).is_ok());
        assert!(server.open(&records[40]).is_ok(), "99 - 40 < 64");
        assert_eq!(server.open(&records[30]), Err(Dropped::Replayed));
    }
}
