//! rtc-dtls' crypto provider: ring, with two seams. The first is in the
//! random source. rtc-dtls draws a server's cookie as the first
//! `COOKIE_LEN`-byte random fill of a new association (flight 0). When the
//! stateless front (`dtls::record`) has already verified the client's
//! cookie, [`with_cookie`] makes that fill return it, so rtc-dtls expects
//! the cookie the client already holds. Everything else is ring's CSPRNG.
//!
//! The second is in the key exchange: rtc-dtls draws an ephemeral ECDHE
//! key for every association in flight 0, even when the suite is plain PSK
//! (RFC 4279 §2), where it is never used. That X25519 key generation was a
//! third of the server's handshake CPU. Our suites are all plain PSK, so
//! the key exchange here is a placeholder whose completion fails: were an
//! ECDHE suite ever enabled, its handshakes would fail, not weaken.

use std::cell::Cell;
use std::sync::Arc;

use rtc_dtls::crypto_provider::providers::{RingCrypto, RingRandom};
use rtc_dtls::crypto_provider::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto, RTCCryptoProvider,
    RTCRandom, SecretVec, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};

use super::record::COOKIE_LEN;

thread_local! {
    /// Set only for the duration of [`with_cookie`] on this thread.
    static ISSUED_COOKIE: Cell<Option<[u8; COOKIE_LEN]>> = const { Cell::new(None) };
}

struct CookieRandom;

impl RTCRandom for CookieRandom {
    fn fill(&self, output: &mut [u8]) -> Result<(), CryptoError> {
        if output.len() == COOKIE_LEN
            && let Some(cookie) = ISSUED_COOKIE.take()
        {
            output.copy_from_slice(&cookie);
            return Ok(());
        }
        RingRandom.fill(output)
    }
}

/// Stands in for the ECDHE key of a plain-PSK handshake; see the module
/// documentation.
struct UnusedKeyExchange(KeyExchangeAlgorithm);

impl ActiveKeyExchange for UnusedKeyExchange {
    fn algorithm(&self) -> KeyExchangeAlgorithm {
        self.0
    }
    fn public_key(&self) -> &[u8] {
        &[]
    }
    fn complete(self: Box<Self>, _peer_public_key: &[u8]) -> Result<SecretVec, CryptoError> {
        Err(CryptoError::UnsupportedAlgorithm(CryptoAlgorithm::KeyExchange(self.0)))
    }
}

/// ring for everything but ephemeral key exchange.
struct PskCrypto(RingCrypto);

impl RTCCrypto for PskCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.0.supports(algorithm)
    }
    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.hash(algorithm, data)
    }
    fn block_encrypt(&self, algorithm: BlockCipherAlgorithm, key: &[u8], block: &mut [u8]) -> Result<(), CryptoError> {
        self.0.block_encrypt(algorithm, key, block)
    }
    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.0.new_hmac(algorithm, key)
    }
    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.0.new_stream_cipher(algorithm, key)
    }
    fn new_aead(&self, algorithm: AeadAlgorithm, key: &[u8]) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.0.new_aead(algorithm, key)
    }
    fn new_cbc(&self, algorithm: CbcAlgorithm, key: &[u8]) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.0.new_cbc(algorithm, key)
    }
    fn start_key_exchange(&self, algorithm: KeyExchangeAlgorithm) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        Ok(Box::new(UnusedKeyExchange(algorithm)))
    }
    fn generate_signing_key(&self, scheme: SignatureScheme) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.0.generate_signing_key(scheme)
    }
    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.0.import_signing_key(scheme, pkcs8_der)
    }
    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.0.verify_signature(scheme, public_key, message, signature)
    }
}

struct Provider {
    crypto: PskCrypto,
}

impl RTCCryptoProvider for Provider {
    fn name(&self) -> &'static str {
        "flownexus-psk-ring"
    }
    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }
    fn random(&self) -> &dyn RTCRandom {
        &CookieRandom
    }
}

pub fn provider() -> Arc<dyn RTCCryptoProvider> {
    Arc::new(Provider {
        crypto: PskCrypto(RingCrypto),
    })
}

/// Run `prime` (which feeds a new association its first ClientHello) with
/// `cookie` as the association's cookie. Returns false if `prime` failed or
/// did not draw the cookie (rtc-dtls changed how it makes cookies).
pub fn with_cookie(cookie: [u8; COOKIE_LEN], prime: impl FnOnce() -> bool) -> bool {
    ISSUED_COOKIE.set(Some(cookie));
    let ok = prime();
    let unused = ISSUED_COOKIE.take().is_some();
    ok && !unused
}
