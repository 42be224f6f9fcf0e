//! The Registration interface's data: parsing Register/Update parameters
//! (LwM2M 1.1 Core §6.2, Transport §6.4 table 6.4.3-1) and the
//! [`Registration`] record the server keeps per endpoint.

use serde::{Deserialize, Serialize};

use crate::coap::Code;
use crate::lwm2m::content::{self, link_format};
use crate::lwm2m::path::ResourcePath;

/// Server-assigned registration id, the `{id}` of `/rd/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RegistrationId(pub u64);

impl RegistrationId {
    /// 12 hex digits: 48 random bits keep collisions negligible at a
    /// million devices and the Location-Path short for constrained clients.
    pub const MASK: u64 = (1 << 48) - 1;

    pub fn parse(s: &str) -> Option<RegistrationId> {
        if s.len() != 12 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(RegistrationId)
    }
}

impl std::fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// One registered endpoint. `P` is the transport peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration<P> {
    pub id: RegistrationId,
    pub endpoint: String,
    pub peer: P,
    /// Lifetime in seconds (`lt`).
    pub lifetime: u32,
    /// LwM2M version the client announced (`lwm2m`), "1.0" when absent.
    pub version: String,
    /// Binding (`b`), e.g. "U", "UQ" (1.0 queue mode), "N".
    pub binding: String,
    /// Queue mode: `b=UQ` in 1.0, the `Q` parameter in 1.1.
    pub queue_mode: bool,
    pub sms: Option<String>,
    /// The object links of the Register/Update payload (link-format text).
    pub object_links: String,
    /// Root path from `</path>;rt="oma.lwm2m"`, "/" by default.
    pub root_path: String,
    /// Content format the client announced on its root link (`ct`).
    pub announced_format: Option<u16>,
    /// Unix milliseconds of the Register, of the latest Register or Update
    /// (which starts the lifetime again), and of the latest uplink of any kind.
    pub registered_at: i64,
    pub updated_at: i64,
    pub last_seen: i64,
}

impl<P> Registration<P> {
    /// The same registration on another peer type (stored text → address).
    pub fn with_peer<Q>(self, peer: Q) -> Registration<Q> {
        Registration {
            id: self.id,
            endpoint: self.endpoint,
            peer,
            lifetime: self.lifetime,
            version: self.version,
            binding: self.binding,
            queue_mode: self.queue_mode,
            sms: self.sms,
            object_links: self.object_links,
            root_path: self.root_path,
            announced_format: self.announced_format,
            registered_at: self.registered_at,
            updated_at: self.updated_at,
            last_seen: self.last_seen,
        }
    }

    /// The content format to use with this client: what it announced, else
    /// TLV for 1.0 (the only mandatory multi-value format there) and
    /// SenML-CBOR for 1.1+ (what Zephyr's client prefers).
    pub fn preferred_format(&self) -> u16 {
        self.announced_format.unwrap_or(if self.version == "1.0" {
            content::TLV
        } else {
            content::SENML_CBOR
        })
    }

    /// Object instances and objects the client announced.
    pub fn objects(&self) -> Vec<ResourcePath> {
        link_format::parse(&self.object_links)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| strip_root(&l.target, &self.root_path).parse().ok())
            .filter(|p: &ResourcePath| p.depth() >= 1)
            .collect()
    }

    /// The version of each announced object: its `ver` attribute, else
    /// the default for this enabler version
    /// ([`model::announced_version`](crate::lwm2m::model::announced_version)).
    pub fn object_versions(&self) -> std::collections::BTreeMap<u16, String> {
        let mut out = std::collections::BTreeMap::new();
        for l in link_format::parse(&self.object_links).unwrap_or_default() {
            let path: Option<ResourcePath> = strip_root(&l.target, &self.root_path).parse().ok();
            if let Some(o) = path.as_ref().and_then(ResourcePath::object) {
                let announced = crate::lwm2m::model::announced_version(o, l.attr("ver"), &self.version);
                // `</3303>;ver=1.1,</3303/0>`: the object's link carries
                // the version, its instances' links do not.
                if l.attr("ver").is_some() || !out.contains_key(&o) {
                    out.insert(o, announced);
                }
            }
        }
        out
    }

    /// Is the registration past its lifetime (plus grace) at `unix_ms`?
    pub fn expired(&self, unix_ms: i64, grace_s: u64) -> bool {
        unix_ms > self.updated_at + (i64::from(self.lifetime) + grace_s as i64) * 1000
    }
}

fn strip_root<'a>(target: &'a str, root: &str) -> &'a str {
    if root == "/" {
        target
    } else {
        target.strip_prefix(root.trim_end_matches('/')).unwrap_or(target)
    }
}

/// Parameters of a Register or Update (Uri-Query `key=value` items).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegisterParams {
    pub endpoint: Option<String>,
    pub lifetime: Option<u32>,
    pub version: Option<String>,
    pub binding: Option<String>,
    pub sms: Option<String>,
    pub queue: bool,
}

/// A request the Registration interface refuses, with its response code.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: Code,
    pub reason: String,
    /// Seconds after which the client may try again, sent as Max-Age with
    /// 4.29 Too Many Requests (RFC 8516 §3).
    pub retry_after_s: Option<u32>,
}

impl Rejection {
    pub fn new(code: Code, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
            retry_after_s: None,
        }
    }
}

/// Why an Endpoint Client Name (Core 1.1 §6.2.1 `ep`) is refused, if it
/// is: 1 to 255 bytes with no control characters (a newline in a name
/// forges log lines, ESC sequences reach terminals) and no bidirectional
/// formatting characters (U+202E shows a name reversed; Unicode UAX #9).
/// Register and provisioning ask the same question.
pub fn endpoint_problem(ep: &str) -> Option<&'static str> {
    const BIDI: [char; 12] = [
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
        '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    if ep.is_empty() || ep.len() > 255 {
        Some("ep must be 1 to 255 bytes")
    } else if ep.chars().any(char::is_control) {
        Some("ep must not hold control characters")
    } else if ep.chars().any(|c| BIDI.contains(&c)) {
        Some("ep must not hold bidirectional formatting characters")
    } else {
        None
    }
}

fn reject(code: Code, reason: impl Into<String>) -> Rejection {
    Rejection::new(code, reason)
}

impl RegisterParams {
    pub fn parse(query: &[String]) -> Result<RegisterParams, Rejection> {
        let mut p = RegisterParams::default();
        for item in query {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item.as_str(), None),
            };
            match (k, v) {
                ("ep", Some(v)) => match endpoint_problem(v) {
                    None => p.endpoint = Some(v.to_string()),
                    Some(why) => return Err(reject(Code::BAD_REQUEST, why)),
                },
                ("ep", None) => return Err(reject(Code::BAD_REQUEST, "ep must be 1 to 255 bytes")),
                ("lt", Some(v)) => {
                    p.lifetime = Some(
                        v.parse()
                            .ok()
                            .filter(|l| *l > 0)
                            .ok_or_else(|| reject(Code::BAD_REQUEST, "lt must be a positive integer"))?,
                    )
                }
                ("lwm2m", Some(v)) if matches!(v, "1.0" | "1.1" | "1.2") => p.version = Some(v.to_string()),
                ("lwm2m", _) => {
                    return Err(reject(Code::PRECONDITION_FAILED, "unsupported LwM2M version"));
                }
                ("b", Some(v)) if !v.is_empty() && v.chars().all(|c| "UMHTSNQ".contains(c)) => {
                    p.queue |= v.contains('Q');
                    p.binding = Some(v.to_string());
                }
                ("b", _) => return Err(reject(Code::BAD_REQUEST, "invalid binding")),
                ("sms", Some(v)) => p.sms = Some(v.to_string()),
                ("Q", None) => p.queue = true,
                // Unknown parameters are ignored for forward compatibility.
                _ => {}
            }
        }
        Ok(p)
    }
}

/// Validate a Register/Update payload (link-format) and find the root path
/// and announced content format (Core §6.2.1: `</>;rt="oma.lwm2m";ct=…`).
pub fn parse_object_links(
    payload: &[u8],
    content_format: Option<u16>,
) -> Result<(String, String, Option<u16>), Rejection> {
    if content_format.is_some_and(|cf| cf != content::LINK_FORMAT) {
        return Err(reject(
            Code::UNSUPPORTED_CONTENT_FORMAT,
            "object links must be application/link-format",
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|_| reject(Code::BAD_REQUEST, "object links are not UTF-8"))?;
    let links = link_format::parse(text).map_err(|e| reject(Code::BAD_REQUEST, e.to_string()))?;
    let mut root = "/".to_string();
    let mut ct = None;
    for l in &links {
        if l.attr("rt") == Some("oma.lwm2m") {
            // The alternate path is an absolute path (Core §6.2.1, e.g.
            // `</lwm2m>`); anything else would be taken as the prefix of
            // every object link (found by the registration fuzzer).
            if !l.target.starts_with('/') || l.target.contains(|c: char| c.is_whitespace() || c == '<') {
                return Err(reject(
                    Code::BAD_REQUEST,
                    format!("the root path `{}` is not an absolute path", l.target),
                ));
            }
            root = l.target.clone();
            ct = l
                .attr("ct")
                .and_then(|c| c.split_whitespace().next())
                .and_then(|c| c.parse().ok());
        } else {
            let t = strip_root(&l.target, &root);
            if t.parse::<ResourcePath>().is_err() {
                return Err(reject(
                    Code::BAD_REQUEST,
                    format!("`{}` is not an object path", l.target),
                ));
            }
        }
    }
    Ok((text.to_string(), root, ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parameters() {
        let p = RegisterParams::parse(&q(&["ep=urn:imei:351234567890123", "lt=300", "lwm2m=1.1", "b=U", "Q"])).unwrap();
        assert_eq!(p.endpoint.as_deref(), Some("urn:imei:351234567890123"));
        assert_eq!(p.lifetime, Some(300));
        assert!(p.queue);
        assert!(RegisterParams::parse(&q(&["b=UQ"])).unwrap().queue);
        assert_eq!(
            RegisterParams::parse(&q(&["lt=x"])).unwrap_err().code,
            Code::BAD_REQUEST
        );
        assert_eq!(
            RegisterParams::parse(&q(&["lt=0"])).unwrap_err().code,
            Code::BAD_REQUEST
        );
        assert_eq!(
            RegisterParams::parse(&q(&["lwm2m=2.0"])).unwrap_err().code,
            Code::PRECONDITION_FAILED
        );
        assert_eq!(RegisterParams::parse(&q(&["ep="])).unwrap_err().code, Code::BAD_REQUEST);
        // Issue 32 item 4: a forged log line, a terminal escape, a name
        // shown reversed; each refused with the reason as the diagnostic.
        for (ep, why) in [
            ("evil\nINFO adm signed in from 6.6.6.6", "control characters"),
            ("x\u{1b}]0;owned\u{7}", "control characters"),
            ("abc\u{202E}txt.exe", "bidirectional"),
        ] {
            let r = RegisterParams::parse(&q(&[&format!("ep={ep}"), "lt=60"])).unwrap_err();
            assert_eq!(r.code, Code::BAD_REQUEST, "{ep:?}");
            assert!(r.reason.contains(why), "{ep:?}: {}", r.reason);
        }
        assert!(endpoint_problem("urn:imei:351234567890123").is_none());
        assert!(endpoint_problem("Gerät-ü-日本").is_none(), "other Unicode is fine");
    }

    /// tests/data/fuzz/registration/root-not-a-path: a root link whose
    /// target is no path is refused, not taken as every link's prefix.
    #[test]
    fn a_root_link_must_be_a_path() {
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fuzz/registration/root-not-a-path"
        ))
        .unwrap();
        let split = input[0] as usize;
        let payload = &input[1..][split.min(input.len() - 1)..];
        let err = parse_object_links(payload, Some(40)).unwrap_err();
        assert_eq!(err.code, Code::BAD_REQUEST, "{}", err.reason);
        assert!(parse_object_links(br#"<lwm2m>;rt="oma.lwm2m",<lwm2m/3/0>"#, None).is_err());
        assert!(parse_object_links(br#"</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>"#, None).is_ok());
    }

    #[test]
    fn object_links() {
        let (_, root, ct) =
            parse_object_links(br#"</lwm2m>;rt="oma.lwm2m";ct=112,</lwm2m/1/0>,</lwm2m/3/0>"#, Some(40)).unwrap();
        assert_eq!(root, "/lwm2m");
        assert_eq!(ct, Some(112));
        assert_eq!(
            parse_object_links(b"</1/0>", Some(0)).unwrap_err().code,
            Code::UNSUPPORTED_CONTENT_FORMAT
        );
        assert_eq!(parse_object_links(b"</x/y>", None).unwrap_err().code, Code::BAD_REQUEST);
        assert_eq!(
            parse_object_links(b"garbage", None).unwrap_err().code,
            Code::BAD_REQUEST
        );
        let reg = Registration {
            id: RegistrationId(1),
            endpoint: "e".into(),
            peer: (),
            lifetime: 60,
            version: "1.1".into(),
            binding: "U".into(),
            queue_mode: false,
            sms: None,
            object_links:
                r#"</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/5>,</lwm2m/3303/0>,</lwm2m/3303>;ver=1.1"#
                    .into(),
            root_path: "/lwm2m".into(),
            announced_format: None,
            registered_at: 0,
            updated_at: 0,
            last_seen: 0,
        };
        let objs: Vec<String> = reg.objects().iter().map(|p| p.to_string()).collect();
        assert_eq!(objs, ["/1/0", "/3/0", "/5", "/3303/0", "/3303"]);
        // Core 1.1 Appendix E defaults where `ver` is absent; `ver` on the
        // object's link wins over its instance's link, in either order.
        let versions = reg.object_versions();
        assert_eq!(versions[&1], "1.1");
        assert_eq!(versions[&3], "1.1");
        assert_eq!(versions[&5], "1.0");
        assert_eq!(versions[&3303], "1.1");
        assert_eq!(reg.preferred_format(), content::SENML_CBOR);
        assert!(!reg.expired(60_000, 0) && reg.expired(60_001, 0));
    }

    #[test]
    fn registration_id_text() {
        let id = RegistrationId(0xabc);
        assert_eq!(id.to_string(), "000000000abc");
        assert_eq!(RegistrationId::parse(&id.to_string()), Some(id));
        assert_eq!(RegistrationId::parse("abc"), None);
    }
}
