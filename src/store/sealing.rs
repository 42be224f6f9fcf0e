//! Device keys sealed at rest: each PSK in the `devices` table is stored
//! encrypted with AES-256-GCM (RFC 5116) under a key kept in
//! `psk-seal.key` beside the database (generated on first open, mode
//! 0600), the endpoint as associated data so a sealed key moved to
//! another row does not open. A copied database file or backup alone
//! then hands out no device key (issue 32). Keys are opened once, when the
//! DTLS layer loads its in-memory table (start-up and after a change);
//! handshakes never touch the seal.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// The sealing key's file, beside the database.
pub const KEY_FILE: &str = "psk-seal.key";

/// A sealed value starts with this, then the nonce, then the ciphertext
/// and its tag; anything else is a key written before sealing existed.
const MAGIC: &[u8] = b"fnx-seal1:";

pub struct KeySeal {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeySeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySeal(..)")
    }
}

impl KeySeal {
    pub fn new(secret: &[u8]) -> Result<KeySeal> {
        let bytes = secret
            .get(..32)
            .ok_or_else(|| Error::config(KEY_FILE, "must hold 32 bytes, base64url"))?;
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| Error::config(KEY_FILE, "not an AES-256 key"))?;
        Ok(KeySeal {
            key: LessSafeKey::new(key),
        })
    }

    /// The seal of the database at `db`: `psk-seal.key` in its directory,
    /// created (0600) if missing.
    pub fn beside(db: &Path) -> Result<KeySeal> {
        KeySeal::new(&crate::secret::load_or_create(&db.with_file_name(KEY_FILE), KEY_FILE)?)
    }

    pub fn seal(&self, endpoint: &str, key: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut sealed = key.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(endpoint.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length a PSK has");
        [MAGIC, &nonce, &sealed].concat()
    }

    /// The key stored for `endpoint`: opened if sealed, as it is if it was
    /// written before sealing (migration 22 seals those).
    pub fn open(&self, endpoint: &str, stored: &[u8]) -> Result<Vec<u8>> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok(stored.to_vec());
        };
        let wrong = || {
            Error::malformed(
                "device key",
                format!("{endpoint}: does not open with {KEY_FILE} (another installation's database?)"),
            )
        };
        if rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buf = sealed.to_vec();
        let clear = self
            .key
            .open_in_place(nonce, Aad::from(endpoint.as_bytes()), &mut buf)
            .map_err(|_| wrong())?;
        Ok(clear.to_vec())
    }

    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_open_only_with_their_seal_and_row() {
        let seal = KeySeal::new(&[7u8; 32]).unwrap();
        let psk = b"0123456789abcdef";
        let sealed = seal.seal("dev-1", psk);
        assert!(KeySeal::is_sealed(&sealed));
        assert!(!sealed.windows(psk.len()).any(|w| w == psk), "no clear key inside");
        assert_eq!(seal.open("dev-1", &sealed).unwrap(), psk);
        assert_ne!(seal.seal("dev-1", psk), sealed, "a fresh nonce each time");
        assert!(seal.open("dev-2", &sealed).is_err(), "bound to its endpoint");
        assert!(KeySeal::new(&[8u8; 32]).unwrap().open("dev-1", &sealed).is_err());
        assert_eq!(seal.open("dev-1", psk).unwrap(), psk, "a key from before sealing");
        assert!(KeySeal::new(&[1u8; 16]).is_err());
    }
}
