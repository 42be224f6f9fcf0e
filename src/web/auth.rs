//! Authentication pieces without I/O: bearer secrets and their digests,
//! CSRF tokens, the first-run setup link, cookies, the login limiter.
//!
//! Session ids and API tokens are 256-bit random secrets; only their
//! SHA-256 digests reach the store. CSRF tokens and setup links are
//! HMAC-SHA256 under the secret in `http.secret_file`, so they need no
//! storage and cannot be forged without it.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};

use crate::error::Result;

/// Prefix of API tokens, so secret scanners and people recognise them.
pub const TOKEN_PREFIX: &str = "fnx_";

/// A fresh bearer secret (session id or API token body), base64url.
pub fn new_secret() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(crate::secret::random::<32>()?))
}

/// What the store keeps of a bearer secret.
pub fn digest(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// The scheme, host and port operators reach the dashboard at (RFC 6454).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    /// `host[:port]`, lower-case, as it appears in an `Origin` header.
    pub authority: String,
}

impl Origin {
    /// `http(s)://host[:port]`, optionally with a trailing `/`, no path.
    pub fn parse(url: &str) -> Option<Origin> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
        let ok = !authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        ok.then_some(Origin { https, authority })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority)
    }

    /// `http://` to a loopback name, any port: `localhost`, `127.x.y.z`
    /// or `[::1]` (RFC 6761 §6.3 keeps `localhost` on the loopback).
    pub fn is_loopback_url(url: &str) -> bool {
        let Some(o) = Origin::parse(url).filter(|o| !o.https) else {
            return false;
        };
        let host = match o.authority.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => o.authority.as_str(),
        };
        host == "localhost" || host == "[::1]" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// Cookie names. Over https the session cookie takes the `__Host-` prefix,
/// which browsers accept only with `Secure`, `Path=/` and no `Domain`
/// (RFC 6265bis §4.1.3.2), so no sibling subdomain can plant one.
#[derive(Debug, Clone)]
pub struct Cookies {
    pub secure: bool,
}

impl Cookies {
    pub fn session_name(&self) -> &'static str {
        if self.secure { "__Host-flownexus" } else { "flownexus" }
    }

    /// The pre-login cookie that binds the login form's CSRF token.
    pub fn login_name(&self) -> &'static str {
        if self.secure {
            "__Host-flownexus-login"
        } else {
            "flownexus-login"
        }
    }

    /// `Set-Cookie` for `name`; `max_age` 0 deletes it. `HttpOnly` so page
    /// scripts never see it, `SameSite=Lax` so other sites' forms do not
    /// carry it.
    pub fn set(&self, name: &str, value: &str, max_age_s: u64) -> String {
        format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The value of cookie `name` in a `Cookie` header (RFC 6265 §5.4).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The HMAC key behind CSRF tokens and setup links.
pub struct Signer(hmac::Key);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Each part length-prefixed, so no two part lists give one message.
    fn message(parts: &[&[u8]]) -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| (p.len() as u32).to_be_bytes().into_iter().chain(p.iter().copied()))
            .collect()
    }

    fn tag(&self, parts: &[&[u8]]) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, &Self::message(parts)).as_ref())
    }

    fn check(&self, parts: &[&[u8]], tag: &str) -> bool {
        let Ok(mac) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        // Constant-time comparison inside ring.
        hmac::verify(&self.0, &Self::message(parts), &mac).is_ok()
    }

    /// The CSRF token of a session (or of a pre-login cookie), derived so
    /// it needs no storage and changes when the session does.
    pub fn csrf(&self, purpose: &str, session: &str) -> String {
        self.tag(&[b"csrf", purpose.as_bytes(), session.as_bytes()])
    }

    pub fn csrf_ok(&self, purpose: &str, session: &str, token: &str) -> bool {
        self.check(&[b"csrf", purpose.as_bytes(), session.as_bytes()], token)
    }

    /// A setup link token valid until `expires` (Unix s).
    pub fn setup_token(&self, expires: i64) -> String {
        format!("{expires}.{}", self.tag(&[b"setup", expires.to_string().as_bytes()]))
    }

    pub fn setup_ok(&self, token: &str, now_s: i64) -> bool {
        let Some((e, tag)) = token.split_once('.') else {
            return false;
        };
        let Ok(expires) = e.parse::<i64>() else {
            return false;
        };
        now_s <= expires && self.check(&[b"setup", e.as_bytes()], tag)
    }
}

/// Login attempts, so that guessing is slow and strangers cannot lock
/// anyone out (issue 32). Time is passed in (Unix ms).
///
/// - **One account from one address** (`per_pair` failures in the window):
///   that pair waits, 15 s at first, doubling with each lock, at most the
///   window. Other addresses are not affected, so someone guessing at the
///   admin's name from elsewhere never locks the admin out.
/// - **One address** (`per_address` failures, any accounts): slowed, not
///   locked: one attempt per back-off (1 s doubling, at most 60 s).
/// - **One account from every address** (`per_pair` × 4, a botnet
///   spreading its guesses): addresses the account never signed in from
///   are slowed the same way; addresses it signed in from are not.
///
/// A refused attempt is refused before the password is hashed, so
/// guessing past a limit costs the server nothing.
#[derive(Debug)]
pub struct LoginLimiter {
    per_pair: u32,
    per_address: u32,
    window_ms: i64,
    failures: HashMap<Key, Failures>,
    /// Addresses each account signed in from (a few per account).
    known: HashMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pair(String, IpAddr),
    Address(IpAddr),
    Account(String),
}

/// Failures since `start` (the window's start) and the latest.
#[derive(Debug, Clone, Copy)]
struct Failures {
    start: i64,
    n: u32,
    last: i64,
}

/// Entries kept before expired ones are swept; bounds memory when many
/// addresses fail.
const SWEEP_AT: usize = 100_000;
/// Addresses remembered per account.
const KNOWN_PER_ACCOUNT: usize = 8;
/// How many times `per_pair` failures across every address slow an
/// account's unknown addresses.
const ACCOUNT_FACTOR: u32 = 4;

/// `base` doubled `excess` times, at most `cap` (ms).
fn back_off(base: i64, excess: u32, cap: i64) -> i64 {
    base.saturating_mul(1 << excess.min(20)).min(cap)
}

impl LoginLimiter {
    pub fn new(per_pair: u32, per_address: u32, window_s: u64) -> LoginLimiter {
        LoginLimiter {
            per_pair: per_pair.max(1),
            per_address: per_address.max(1),
            window_ms: window_s as i64 * 1000,
            failures: HashMap::new(),
            known: HashMap::new(),
        }
    }

    fn current(&self, key: &Key, now: i64) -> Option<Failures> {
        self.failures
            .get(key)
            .copied()
            .filter(|f| now < f.start + self.window_ms)
    }

    /// How long (ms) `key` must still wait at `now`: past `limit`
    /// failures, `base` doubled per failure beyond it, at most `cap`,
    /// counted from the latest failure.
    fn wait(&self, key: &Key, now: i64, limit: u32, base: i64, cap: i64) -> i64 {
        match self.current(key, now) {
            Some(f) if f.n >= limit => (f.last + back_off(base, f.n - limit, cap) - now).max(0),
            _ => 0,
        }
    }

    /// `Err(seconds)` if this attempt must wait.
    pub fn check(&self, now: i64, account: &str, address: IpAddr) -> std::result::Result<(), u64> {
        let pair = self.wait(
            &Key::Pair(account.to_string(), address),
            now,
            self.per_pair,
            15_000,
            self.window_ms,
        );
        let by_address = self.wait(&Key::Address(address), now, self.per_address, 1_000, 60_000);
        let known = self.known.get(account).is_some_and(|k| k.contains(&address));
        let by_account = if known {
            0
        } else {
            self.wait(
                &Key::Account(account.to_string()),
                now,
                self.per_pair.saturating_mul(ACCOUNT_FACTOR),
                1_000,
                60_000,
            )
        };
        match pair.max(by_address).max(by_account) {
            0 => Ok(()),
            ms => Err((ms as u64).div_ceil(1000)),
        }
    }

    pub fn failed(&mut self, now: i64, account: &str, address: IpAddr) {
        if self.failures.len() >= SWEEP_AT {
            let window = self.window_ms;
            self.failures.retain(|_, f| now < f.start + window);
        }
        for key in [
            Key::Pair(account.to_string(), address),
            Key::Address(address),
            Key::Account(account.to_string()),
        ] {
            let f = self.failures.entry(key).or_insert(Failures {
                start: now,
                n: 0,
                last: now,
            });
            if now >= f.start + self.window_ms {
                *f = Failures {
                    start: now,
                    n: 0,
                    last: now,
                };
            }
            f.n += 1;
            f.last = now;
        }
    }

    /// A successful login clears the pair's failures (not the address's
    /// nor the account's: one valid account must not reset guessing at
    /// others) and remembers the address as one the account uses.
    pub fn succeeded(&mut self, account: &str, address: IpAddr) {
        self.failures.remove(&Key::Pair(account.to_string(), address));
        if self.known.len() >= SWEEP_AT {
            self.known.clear();
        }
        let known = self.known.entry(account.to_string()).or_default();
        if !known.contains(&address) {
            if known.len() == KNOWN_PER_ACCOUNT {
                known.remove(0);
            }
            known.push(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The origins an SSH tunnel gives a browser, and look-alikes that
    /// are not loopback.
    #[test]
    fn loopback_origins_are_only_loopback() {
        for yes in [
            "http://localhost:8000",
            "http://localhost",
            "http://127.0.0.1:8000",
            "http://127.8.0.1:1",
            "http://[::1]:8000",
        ] {
            assert!(Origin::is_loopback_url(yes), "{yes}");
        }
        for no in [
            "https://localhost:8000",
            "http://localhost.evil.test:8000",
            "http://evil.localhost.test",
            "http://127.0.0.1.evil.test:8000",
            "http://128.0.0.1:8000",
            "http://[::2]:8000",
            "http://0.0.0.0:8000",
            "http://localhost/x",
            "null",
        ] {
            assert!(!Origin::is_loopback_url(no), "{no}");
        }
    }

    /// Issue 32 item 6: strangers cannot lock an account out from the
    /// addresses it uses; a pair backs off, doubling; an address that
    /// fails at many accounts is slowed, not locked for the window.
    #[test]
    fn limiter_backs_off_per_account_and_address_and_locks_no_one_out() {
        let (office, stranger, botnet): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
            "203.0.113.0".parse().unwrap(),
        );
        let mut l = LoginLimiter::new(3, 5, 900);
        l.succeeded("admin", office);
        // A stranger guesses at the admin: their pair backs off...
        for _ in 0..3 {
            assert!(l.check(0, "admin", stranger).is_ok());
            l.failed(0, "admin", stranger);
        }
        assert_eq!(l.check(1000, "admin", stranger), Err(14));
        // ...and the admin at the office signs in at once.
        assert!(l.check(1000, "admin", office).is_ok());
        // The back-off doubles with each further lock, at most the window.
        l.failed(15_000, "admin", stranger);
        assert_eq!(l.check(15_000, "admin", stranger), Err(30));
        l.failed(45_000, "admin", stranger);
        assert_eq!(l.check(45_000, "admin", stranger), Err(60));
        // Many addresses guessing at one account slow its unknown
        // addresses only.
        for i in 0..12u8 {
            let ip = IpAddr::from([203, 0, 113, i]);
            l.failed(50_000, "admin", ip);
        }
        assert!(l.check(50_500, "admin", "203.0.113.200".parse().unwrap()).is_err());
        assert!(
            l.check(50_500, "admin", office).is_ok(),
            "a known address is never slowed"
        );
        // One address failing at many accounts is slowed (a second, then
        // doubling, at most a minute), never locked for the window.
        let mut l = LoginLimiter::new(3, 5, 900);
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            l.failed(i as i64, name, botnet);
        }
        assert_eq!(l.check(4, "f", botnet), Err(1));
        assert!(l.check(1_004, "f", botnet).is_ok());
        for t in 0..10 {
            l.failed(2_000 + t, "g", botnet);
        }
        assert_eq!(l.check(2_009, "h", botnet), Err(60), "capped at a minute");
        assert!(l.check(62_009, "h", botnet).is_ok());
        // Success clears the pair, not the address.
        l.succeeded("g", botnet);
        assert_eq!(l.check(62_010, "g", botnet), Ok(()));
        assert!(l.current(&Key::Address(botnet), 62_010).is_some());
    }

    #[test]
    fn csrf_and_setup_tokens_are_bound_and_expire() {
        let s = Signer::new(b"0123456789abcdef0123456789abcdef");
        let t = s.csrf("session", "abc");
        assert!(s.csrf_ok("session", "abc", &t));
        assert!(!s.csrf_ok("session", "abd", &t));
        assert!(!s.csrf_ok("login", "abc", &t));
        assert!(!s.csrf_ok("session", "abc", "garbage!"));
        let other = Signer::new(b"another secret, another token...");
        assert!(!other.csrf_ok("session", "abc", &t));
        let link = s.setup_token(100);
        assert!(s.setup_ok(&link, 100));
        assert!(!s.setup_ok(&link, 101));
        assert!(!s.setup_ok(&link.replacen("100", "999", 1), 50), "expiry is signed");
    }

    #[test]
    fn origins_and_cookies() {
        let o = Origin::parse("https://Dashboard.example.com/").unwrap();
        assert!(o.https);
        assert_eq!(o.url(), "https://dashboard.example.com");
        assert!(Origin::parse("https://x.example/path").is_none());
        assert!(Origin::parse("ftp://x").is_none());
        assert_eq!(cookie("a=1; flownexus=xyz; b=2", "flownexus"), Some("xyz"));
        assert_eq!(cookie("flownexus-login=q", "flownexus"), None);
        let c = Cookies { secure: true };
        let set = c.set(c.session_name(), "v", 10);
        assert!(set.starts_with("__Host-flownexus=v; Path=/; HttpOnly; SameSite=Lax") && set.ends_with("; Secure"));
        assert_ne!(digest("a"), digest("b"));
    }
}
