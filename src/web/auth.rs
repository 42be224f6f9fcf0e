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

/// Login attempts: fixed windows of failures per account and per client
/// address. A locked key is refused before the password is even hashed, so
/// guessing costs the server nothing once the limit is reached. Time is
/// passed in (Unix ms).
#[derive(Debug)]
pub struct LoginLimiter {
    per_account: u32,
    per_address: u32,
    window_ms: i64,
    failures: HashMap<Key, (i64, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

/// Entries kept before expired ones are swept; bounds memory when many
/// addresses fail.
const SWEEP_AT: usize = 100_000;

impl LoginLimiter {
    pub fn new(per_account: u32, per_address: u32, window_s: u64) -> LoginLimiter {
        LoginLimiter {
            per_account,
            per_address,
            window_ms: window_s as i64 * 1000,
            failures: HashMap::new(),
        }
    }

    fn count(&self, key: &Key, now: i64) -> (u32, i64) {
        match self.failures.get(key) {
            Some(&(start, n)) if now < start + self.window_ms => (n, start + self.window_ms - now),
            _ => (0, 0),
        }
    }

    /// `Err(seconds)` if this account or address must wait.
    pub fn check(&self, now: i64, account: &str, address: IpAddr) -> std::result::Result<(), u64> {
        let (a, wait_a) = self.count(&Key::Account(account.to_string()), now);
        let (b, wait_b) = self.count(&Key::Address(address), now);
        let mut wait = 0;
        if a >= self.per_account {
            wait = wait.max(wait_a);
        }
        if b >= self.per_address {
            wait = wait.max(wait_b);
        }
        if wait > 0 {
            Err((wait as u64).div_ceil(1000))
        } else {
            Ok(())
        }
    }

    pub fn failed(&mut self, now: i64, account: &str, address: IpAddr) {
        if self.failures.len() >= SWEEP_AT {
            let window = self.window_ms;
            self.failures.retain(|_, (start, _)| now < *start + window);
        }
        for key in [Key::Account(account.to_string()), Key::Address(address)] {
            let e = self.failures.entry(key).or_insert((now, 0));
            if now >= e.0 + self.window_ms {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }

    /// A successful login clears the account's failures (not the address's:
    /// one valid account must not reset guessing at others).
    pub fn succeeded(&mut self, account: &str) {
        self.failures.remove(&Key::Account(account.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_accounts_and_addresses_for_the_window() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = LoginLimiter::new(3, 5, 60);
        for _ in 0..3 {
            assert!(l.check(0, "alice", a).is_ok());
            l.failed(0, "alice", a);
        }
        assert_eq!(
            l.check(1000, "alice", b),
            Err(59),
            "the account is locked from any address"
        );
        assert!(l.check(1000, "bob", a).is_ok(), "3 < 5 failures from the address");
        l.failed(1000, "bob", a);
        l.failed(1000, "carol", a);
        assert!(
            l.check(1000, "dave", a).is_err(),
            "the address is locked for every account"
        );
        assert!(l.check(60_000, "alice", b).is_ok(), "the window passed");
        l.failed(2000, "erin", b);
        l.succeeded("erin");
        assert_eq!(l.count(&Key::Account("erin".into()), 2000).0, 0);
        assert_eq!(
            l.count(&Key::Address(b), 2000).0,
            1,
            "success does not reset the address"
        );
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
