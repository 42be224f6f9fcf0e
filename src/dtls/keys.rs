//! The in-memory PSK table the handshake reads (rtc-dtls' key callback is
//! synchronous, so it cannot wait for SQLite): identity → endpoint and key,
//! replaced as a whole when the store's keys change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ring::rand::{SecureRandom, SystemRandom};

use crate::psk::Psk;

struct Entry {
    endpoint: Arc<str>,
    key: Vec<u8>,
    /// Changes whenever the key does, so live sessions of a rotated key
    /// can be told apart from sessions of the current one.
    tag: u64,
}

/// What a session keeps of the key it was established with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub endpoint: Arc<str>,
    pub tag: u64,
}

#[derive(Default)]
struct Table {
    by_identity: HashMap<Box<[u8]>, Entry>,
    /// Endpoint → the tag of its current key.
    by_endpoint: HashMap<Arc<str>, u64>,
}

#[derive(Default)]
pub struct PskKeys {
    table: RwLock<Arc<Table>>,
}

fn tag(key: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

impl PskKeys {
    pub fn new(devices: impl IntoIterator<Item = (String, Psk)>) -> Arc<PskKeys> {
        let keys = Arc::new(PskKeys::default());
        keys.replace(devices);
        keys
    }

    /// Swap in a new table (after a `device add`, `rotate-psk`, import or
    /// removal); handshakes in progress finish with whichever table they
    /// read.
    pub fn replace(&self, devices: impl IntoIterator<Item = (String, Psk)>) {
        let mut table = Table::default();
        for (endpoint, psk) in devices {
            let key = psk.key().to_vec();
            let entry = Entry {
                endpoint: endpoint.into(),
                tag: tag(&key),
                key,
            };
            table.by_endpoint.insert(entry.endpoint.clone(), entry.tag);
            table
                .by_identity
                .insert(psk.identity.into_bytes().into_boxed_slice(), entry);
        }
        *self.table.write().expect("psk table") = Arc::new(table);
    }

    fn snapshot(&self) -> Arc<Table> {
        self.table.read().expect("psk table").clone()
    }

    pub fn len(&self) -> usize {
        self.snapshot().by_identity.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoint an identity may speak for, and its key's tag.
    pub fn binding(&self, identity: &[u8]) -> Option<Binding> {
        self.snapshot().by_identity.get(identity).map(|e| Binding {
            endpoint: e.endpoint.clone(),
            tag: e.tag,
        })
    }

    /// Is `binding` still the endpoint's current key?
    pub fn is_current(&self, binding: &Binding) -> bool {
        self.snapshot().by_endpoint.get(&binding.endpoint) == Some(&binding.tag)
    }

    /// Endpoints that have a key: they must come over DTLS.
    pub fn endpoints(&self) -> std::collections::HashSet<String> {
        self.snapshot().by_endpoint.keys().map(|e| e.to_string()).collect()
    }

    /// The key for `identity`. For an unknown identity a random key, so the
    /// handshake fails exactly as with a wrong key (decrypt_error on the
    /// Finished) and does not reveal which identities exist (RFC 4279 §2).
    pub fn key_or_decoy(&self, identity: &[u8]) -> Vec<u8> {
        if let Some(e) = self.snapshot().by_identity.get(identity) {
            return e.key.clone();
        }
        log::debug!("DTLS: unknown PSK identity {:?}", String::from_utf8_lossy(identity));
        let mut decoy = vec![0u8; crate::psk::GENERATED_KEY_BYTES];
        let _ = SystemRandom::new().fill(&mut decoy);
        decoy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_replace_and_decoy() {
        let keys = PskKeys::new([("urn:imei:1".to_string(), Psk::from_hex("id1", "00112233").unwrap())]);
        assert_eq!(keys.key_or_decoy(b"id1"), vec![0, 0x11, 0x22, 0x33]);
        let b = keys.binding(b"id1").unwrap();
        assert_eq!(&*b.endpoint, "urn:imei:1");
        let decoy = keys.key_or_decoy(b"nobody");
        assert_eq!(decoy.len(), crate::psk::GENERATED_KEY_BYTES);
        assert_ne!(decoy, keys.key_or_decoy(b"nobody"), "a fresh decoy each time");
        assert!(keys.is_current(&b));
        keys.replace([("urn:imei:1".to_string(), Psk::from_hex("id1", "44").unwrap())]);
        assert_ne!(keys.binding(b"id1").unwrap().tag, b.tag, "rotation changes the tag");
        assert!(!keys.is_current(&b));
        keys.replace([]);
        assert!(keys.binding(b"id1").is_none() && keys.is_empty());
    }
}
