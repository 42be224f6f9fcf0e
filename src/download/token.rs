//! Per-device, expiring download tokens: `?t=DEVICE.EXPIRES.MAC`, where
//! MAC = HMAC-SHA256(secret, domain ‖ device ‖ image SHA-256 ‖ expires),
//! so a token opens one image, for one device, until a time.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::error::Result;

pub struct TokenKey(hmac::Key);

/// Domain separation: the key may sign other things one day.
const DOMAIN: &[u8] = b"flownexus firmware download v1\0";

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    Expired,
    BadSignature,
}

impl TokenKey {
    /// Read the secret, or create it (32 random bytes, mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<TokenKey> {
        let secret = crate::secret::load_or_create(path, "fw.token_secret_file")?;
        Ok(TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &secret)))
    }

    fn message(device: &str, sha256: &str, expires: i64) -> Vec<u8> {
        [
            DOMAIN,
            device.as_bytes(),
            b"\0",
            sha256.as_bytes(),
            b"\0",
            expires.to_string().as_bytes(),
        ]
        .concat()
    }

    /// A token for `device` to fetch image `sha256` until `expires` (Unix s).
    pub fn sign(&self, device: &str, sha256: &str, expires: i64) -> String {
        let tag = hmac::sign(&self.0, &Self::message(device, sha256, expires));
        format!(
            "{}.{expires}.{}",
            URL_SAFE_NO_PAD.encode(device),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The device a token was issued to, if it is valid for `sha256` at `now`.
    pub fn verify(&self, token: &str, sha256: &str, now: i64) -> std::result::Result<String, Rejected> {
        let mut parts = token.splitn(3, '.');
        let (Some(d), Some(e), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Rejected::Malformed);
        };
        let device = URL_SAFE_NO_PAD
            .decode(d)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Rejected::Malformed)?;
        let expires: i64 = e.parse().map_err(|_| Rejected::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(m).map_err(|_| Rejected::Malformed)?;
        // Constant-time comparison inside ring.
        hmac::verify(&self.0, &Self::message(&device, sha256, expires), &mac).map_err(|_| Rejected::BadSignature)?;
        if now > expires {
            return Err(Rejected::Expired);
        }
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = TokenKey::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let t = key.sign("urn:imei:1", "aa", 100);
        assert_eq!(key.verify(&t, "aa", 100), Ok("urn:imei:1".into()));
        assert_eq!(key.verify(&t, "aa", 101), Err(Rejected::Expired));
        assert_eq!(
            key.verify(&t, "bb", 50),
            Err(Rejected::BadSignature),
            "bound to the image"
        );
        let forged = t.replacen(
            &URL_SAFE_NO_PAD.encode("urn:imei:1"),
            &URL_SAFE_NO_PAD.encode("urn:imei:2"),
            1,
        );
        assert_eq!(
            key.verify(&forged, "aa", 50),
            Err(Rejected::BadSignature),
            "bound to the device"
        );
        assert_eq!(key.verify("nonsense", "aa", 50), Err(Rejected::Malformed));
        // The same file gives the same key.
        let again = TokenKey::load_or_create(&path).unwrap();
        assert!(again.verify(&t, "aa", 1).is_ok());
        assert!(!format!("{key:?}").contains(&std::fs::read_to_string(&path).unwrap()));
    }
}
