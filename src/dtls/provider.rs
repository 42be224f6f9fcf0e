//! rtc-dtls' crypto provider: ring for everything, with one seam in the
//! random source. rtc-dtls draws a server's cookie as the first
//! `COOKIE_LEN`-byte random fill of a new association (flight 0). When the
//! stateless front (`dtls::record`) has already verified the client's
//! cookie, [`with_cookie`] makes that fill return it, so rtc-dtls expects
//! the cookie the client already holds. Everything else is ring's CSPRNG.

use std::cell::Cell;
use std::sync::Arc;

use rtc_dtls::crypto_provider::providers::{RingProvider, RingRandom};
use rtc_dtls::crypto_provider::{CryptoError, RTCCrypto, RTCCryptoProvider, RTCRandom};

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

struct Provider {
    ring: RingProvider,
}

impl RTCCryptoProvider for Provider {
    fn name(&self) -> &'static str {
        "flownexus-ring"
    }
    fn crypto(&self) -> &dyn RTCCrypto {
        self.ring.crypto()
    }
    fn random(&self) -> &dyn RTCRandom {
        &CookieRandom
    }
}

pub fn provider() -> Arc<dyn RTCCryptoProvider> {
    Arc::new(Provider {
        ring: RingProvider::new(),
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
