//! Per-device pre-shared keys for CoAP over DTLS (RFC 4279, LwM2M 1.1
//! Transport §5.2.8): the identity a device presents and its secret key.
//! The key is shown once, when generated, and never again: not in logs,
//! listings, `Debug` output or the API.

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::lwm2m::path::hex_bytes;

/// 128-bit keys, what nRF91 modems and tinydtls-based clients are given.
pub const GENERATED_KEY_BYTES: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct Psk {
    pub identity: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &self.identity)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Invalid {
        what: "PSK",
        reason: reason.into(),
    }
}

/// Identities are opaque to DTLS but travel in ClientHello and logs:
/// printable ASCII, at most 128 bytes (RFC 4279 §5.1 allows 2^16 − 1).
fn check_identity(identity: &str) -> Result<()> {
    if identity.is_empty() || identity.len() > 128 || !identity.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "identity `{identity}`: 1 to 128 printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

impl Psk {
    pub fn from_hex(identity: &str, key_hex: &str) -> Result<Psk> {
        check_identity(identity)?;
        let key = hex_bytes::decode(key_hex.trim()).ok_or_else(|| invalid("the key is not hex"))?;
        if key.is_empty() || key.len() > 64 {
            return Err(invalid("the key must be 1 to 64 bytes"));
        }
        Ok(Psk {
            identity: identity.to_string(),
            key,
        })
    }

    /// A fresh random key from the system's CSPRNG.
    pub fn generate(identity: &str) -> Result<Psk> {
        check_identity(identity)?;
        let mut key = vec![0u8; GENERATED_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| invalid("no random source"))?;
        Ok(Psk {
            identity: identity.to_string(),
            key,
        })
    }

    /// A key as stored (already checked when it was provisioned).
    pub fn from_parts(identity: String, key: Vec<u8>) -> Psk {
        Psk { identity, key }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key as hex, for the one time it is shown to the operator.
    pub fn key_hex(&self) -> String {
        hex_bytes::encode(&self.key)
    }
}

/// One device of a factory provisioning file.
#[derive(Debug, Clone, PartialEq)]
pub struct Provisioned {
    pub line: usize,
    pub endpoint: String,
    pub psk: Psk,
}

/// Parse `endpoint,identity,key-hex` lines (a header line, blank lines and
/// `#` comments are skipped). Every bad line is reported, with its number;
/// any error means nothing is imported.
pub fn parse_provisioning(text: &str) -> std::result::Result<Vec<Provisioned>, Vec<String>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut endpoints = std::collections::HashMap::new();
    let mut identities = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || (line == 1 && l.eq_ignore_ascii_case("endpoint,identity,key")) {
            continue;
        }
        let cols: Vec<&str> = l.split(',').map(str::trim).collect();
        let [endpoint, identity, key] = cols.as_slice() else {
            errors.push(format!(
                "line {line}: expected 3 columns (endpoint,identity,key), found {}",
                cols.len()
            ));
            continue;
        };
        if endpoint.is_empty() || endpoint.len() > 255 {
            errors.push(format!("line {line}: endpoint must be 1 to 255 bytes"));
            continue;
        }
        match Psk::from_hex(identity, key) {
            Err(e) => errors.push(format!("line {line}: {e}")),
            Ok(psk) => {
                if let Some(first) = endpoints.insert(endpoint.to_string(), line) {
                    errors.push(format!("line {line}: endpoint {endpoint} already on line {first}"));
                } else if let Some(first) = identities.insert(identity.to_string(), line) {
                    errors.push(format!("line {line}: identity {identity} already on line {first}"));
                } else {
                    rows.push(Provisioned {
                        line,
                        endpoint: endpoint.to_string(),
                        psk,
                    });
                }
            }
        }
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_generated_and_never_debug_printed() {
        let p = Psk::from_hex("dev-1", "00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(p.key().len(), 16);
        assert!(!format!("{p:?}").contains("0011"));
        for (id, key) in [
            ("", "00"),
            ("has space", "00"),
            ("ok", ""),
            ("ok", "zz"),
            ("ok", &"00".repeat(65)),
        ] {
            assert!(Psk::from_hex(id, key).is_err(), "{id}/{key}");
        }
        let a = Psk::generate("dev-2").unwrap();
        let b = Psk::generate("dev-2").unwrap();
        assert_eq!(a.key().len(), GENERATED_KEY_BYTES);
        assert_ne!(a.key(), b.key());
        assert_eq!(Psk::from_hex("dev-2", &a.key_hex()).unwrap(), a);
    }

    #[test]
    fn provisioning_files_report_every_bad_line() {
        let good = "endpoint,identity,key\nurn:imei:1, id-1, 000102\n\n# spare\nurn:imei:2,id-2,0a0b\n";
        let rows = parse_provisioning(good).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].line, rows[1].endpoint.as_str(), rows[1].psk.identity.as_str()),
            (5, "urn:imei:2", "id-2")
        );
        let bad =
            "urn:imei:1,id-1,0001\nurn:imei:2,id-2\nurn:imei:3,id-3,xyz\nurn:imei:1,id-4,00\nurn:imei:5,id-1,00\n";
        let errors = parse_provisioning(bad).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("line 2:") && errors[1].starts_with("line 3:"));
        assert!(errors[2].contains("already on line 1") && errors[3].contains("identity id-1"));
    }
}
