//! Fuzz targets: one function per parser of bytes from outside, each
//! calling the function the server calls and checking an invariant, not
//! only "no panic". `fuzz/` (cargo-fuzz, nightly) drives them with
//! libFuzzer; `fuzz::tests` replays every stored corpus input on stable in
//! `make test`, so an input that once broke a parser keeps it fixed.
//! Compiled for tests and with the `fuzzing` feature only.
//!
//! A target panics when an invariant fails; a parser's error on bad input
//! is the expected outcome, never a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::coap::{Exchanges, Message, Params};
use crate::lwm2m::content;
use crate::lwm2m::{Models, Record, ResourcePath};

/// A target: one input in, a panic if an invariant fails.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and libFuzzer binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("coap_message", coap_message),
    ("coap_exchange", coap_exchange),
    ("dtls_record", dtls_record),
    ("dtls_session", dtls_session),
    ("dtls_front", dtls_front),
    ("tlv", tlv),
    ("senml_json", senml_json),
    ("senml_cbor", senml_cbor),
    ("lwm2m_cbor", lwm2m_cbor),
    ("lwm2m_json", lwm2m_json),
    ("link_format", link_format),
    ("registration", registration),
    ("http_range", http_range),
    ("download_token", download_token),
    ("proxy_protocol", proxy_protocol),
    ("web_form", web_form),
    ("multipart", multipart),
    ("factory_csv", factory_csv),
    ("ddf", ddf),
    ("config_toml", config_toml),
];

fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(Models::embedded)
}

/// Bytes read off the front of the input, for targets that take several
/// values from one input.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

// ---- CoAP --------------------------------------------------------------------

/// RFC 7252 §3: what decodes encodes to bytes that decode to the same message.
pub fn coap_message(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        let again = Message::decode(&m.encode()).expect("an encoded message decodes");
        assert_eq!(again, m, "decode → encode → decode");
    }
}

/// The exchange layer fed datagrams from three peers, time moving as the
/// input says, a request of ours now and then (so ACKs, RSTs, Block2 and
/// notifications have something to match), and inbound requests answered.
/// Everything it sends must be a well-formed CoAP message.
pub fn coap_exchange(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut x: Exchanges<u8> = Exchanges::new(Params::default(), 7);
    let mut input = Input(data);
    let mut inbound = Vec::new();
    while !input.0.is_empty() {
        match input.byte() % 4 {
            0 => {
                let peer = input.byte() % 3;
                let len = input.byte() as usize;
                x.handle_datagram(now, peer, input.take(len));
            }
            1 => {
                now += Duration::from_millis(u64::from(input.u16()) * 4);
                x.handle_timeout(now);
            }
            2 => {
                let peer = input.byte() % 3;
                let mut req = crate::coap::Request::new(crate::coap::Method::Get, "/3/0");
                req.options.observe = (input.byte() % 2 == 0).then_some(0);
                x.request(now, peer, req);
            }
            _ => {
                if let Some(id) = inbound.pop() {
                    x.respond(now, id, crate::coap::Response::new(crate::coap::Code::CONTENT));
                }
            }
        }
        while let Some(ev) = x.poll_event() {
            if let crate::coap::Event::Request { id, .. } = ev {
                inbound.push(id);
            }
        }
        while let Some(t) = x.poll_transmit() {
            assert!(t.peer < 3, "sent to a peer that never spoke");
            Message::decode(&t.bytes).expect("everything sent is well-formed CoAP");
        }
        if let Some(deadline) = x.poll_timeout() {
            assert!(deadline >= t0, "a timer before time began");
        }
    }
}

// ---- DTLS --------------------------------------------------------------------

const PEER: &str = "192.0.2.7:40000";

/// RFC 6347 §4.1, §4.2.1: records lie within the datagram; a parsed
/// ClientHello's cookie verifies exactly when it is the one we would issue.
pub fn dtls_record(data: &[u8]) {
    use crate::dtls::record::{CookieJar, client_hello, records};
    if let Some(rs) = records(data) {
        let mut at = 0;
        for (_, range) in rs {
            assert_eq!(range.start, at, "records are back to back");
            assert!(range.end <= data.len() && range.len() >= crate::dtls::record::RECORD_HEADER);
            at = range.end;
        }
        assert_eq!(at, data.len(), "records cover the datagram");
    }
    if let Some(hello) = client_hello(data) {
        static JAR: OnceLock<CookieJar> = OnceLock::new();
        let jar = JAR.get_or_init(|| CookieJar::new(Instant::now(), Duration::from_secs(3600)));
        let peer: SocketAddr = PEER.parse().expect("an address");
        let issued = jar.issue(peer, &hello);
        let verified = jar.verify(peer, &hello);
        assert_eq!(
            verified.is_some(),
            hello.cookie == issued,
            "only our own cookie for this address and hello verifies"
        );
    }
}

/// An established session fed arbitrary records (raw, or sealed by the
/// client and then altered): nothing opens that the client did not seal
/// as it is, each sealed record opens once (replays refused), and the
/// session still works afterwards (RFC 6347 §4.1.2.6–4.1.2.7: bad records
/// are dropped silently and change nothing).
pub fn dtls_session(data: &[u8]) {
    let (mut client, mut server) = crate::dtls::protection::fixed_pair();
    let mut input = Input(data);
    let mut sealed: Vec<Vec<u8>> = Vec::new();
    while !input.0.is_empty() {
        let op = input.byte();
        let len = input.byte() as usize;
        let bytes = input.take(len).to_vec();
        let record = match op % 3 {
            0 => bytes.clone(),
            1 => {
                let r = client.seal(23, &bytes);
                sealed.push(r.clone());
                r
            }
            _ => {
                // A sealed record with one byte changed.
                let mut r = client.seal(23, &bytes);
                let at = usize::from(input.byte()) % r.len();
                r[at] ^= input.byte() | 1;
                r
            }
        };
        let authentic = op % 3 == 1;
        let opened = server.open(&record);
        if authentic {
            assert_eq!(
                opened,
                Ok(crate::dtls::protection::Opened::ApplicationData(bytes)),
                "the client's record opens to what it sealed"
            );
            assert!(server.open(&record).is_err(), "a replay is refused");
        } else if let Ok(o) = opened {
            // Only an untouched client record can open: a raw input that
            // is one of the client's earlier records, already seen, cannot.
            panic!("a record the client did not seal opened: {o:?}");
        }
    }
    let check = client.seal(23, b"still here");
    assert_eq!(
        server.open(&check),
        Ok(crate::dtls::protection::Opened::ApplicationData(b"still here".to_vec())),
        "the session survives whatever came before"
    );
}

/// The session table's front (cookie exchange, handshakes, caps) fed
/// datagrams from four addresses with time passing: its caps hold.
pub fn dtls_front(data: &[u8]) {
    use crate::dtls::keys::PskKeys;
    use crate::dtls::{Limits, Sessions};
    let t0 = Instant::now();
    let limits = Limits {
        max_sessions: 4,
        max_handshakes: 4,
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        hellos_per_source_per_s: 0,
        cookie_rotation: Duration::from_secs(60),
        cipher_suites: crate::dtls::CIPHER_SUITES.to_vec(),
    };
    static KEYS: OnceLock<Arc<PskKeys>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        PskKeys::new([(
            "urn:imei:1".to_string(),
            crate::psk::Psk::from_hex("dev1", "000102030405060708090a0b0c0d0e0f").expect("a key"),
        )])
    });
    let Ok(mut s) = Sessions::new(t0, 0, keys.clone(), limits) else {
        return;
    };
    let mut now = t0;
    let mut input = Input(data);
    while !input.0.is_empty() {
        let from = SocketAddr::from(([192, 0, 2, input.byte() % 4], 5684));
        now += Duration::from_millis(u64::from(input.byte()) * 50);
        let len = input.u16() as usize % 1500;
        s.handle_datagram(now, from, input.take(len));
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {}
        while s.poll_event().is_some() {}
        assert!(s.handshakes() <= 4, "half-open handshakes stay within the cap");
        assert!(s.len() <= 4, "sessions stay within the cap");
    }
}

// ---- LwM2M content formats ---------------------------------------------------

/// The base path a payload refers to, from the first byte.
fn base(b: u8) -> ResourcePath {
    match b % 4 {
        0 => ResourcePath::ROOT,
        1 => "/3".parse().expect("a path"),
        2 => "/3/0".parse().expect("a path"),
        _ => "/3/0/0".parse().expect("a path"),
    }
}

/// Records compared as text, so a NaN equals itself.
fn same(a: &[Record], b: &[Record]) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// decode → encode → decode gives the same records, where the format can
/// say everything it decoded.
fn round_trip(format: u16, data: &[u8]) {
    let Some((&b, payload)) = data.split_first() else {
        return;
    };
    let base = base(b);
    let Ok(records) = content::decode(format, &base, payload, models()) else {
        return;
    };
    if let Ok(bytes) = content::encode(format, &base, &records, models()) {
        let again = content::decode(format, &base, &bytes, models())
            .unwrap_or_else(|e| panic!("what we encoded does not decode: {e}\n{records:?}"));
        assert!(same(&again, &records), "{records:?}\n{again:?}");
    }
}

pub fn tlv(data: &[u8]) {
    round_trip(content::TLV, data)
}

pub fn senml_json(data: &[u8]) {
    round_trip(content::SENML_JSON, data)
}

pub fn senml_cbor(data: &[u8]) {
    round_trip(content::SENML_CBOR, data)
}

pub fn lwm2m_cbor(data: &[u8]) {
    round_trip(content::LWM2M_CBOR, data)
}

/// Legacy LwM2M 1.0 JSON (11543) is only ever decoded; what decodes
/// re-encodes as SenML JSON and decodes to the same records.
pub fn lwm2m_json(data: &[u8]) {
    let Some((&b, payload)) = data.split_first() else {
        return;
    };
    let base = base(b);
    if let Ok(records) = content::decode(content::LWM2M_JSON, &base, payload, models())
        && let Ok(bytes) = content::encode(content::SENML_JSON, &base, &records, models())
    {
        let again = content::decode(content::SENML_JSON, &base, &bytes, models()).expect("SenML JSON we wrote decodes");
        assert!(same(&again, &records), "{records:?}\n{again:?}");
    }
}

/// RFC 6690: parse → format → parse gives the same links.
pub fn link_format(data: &[u8]) {
    use crate::lwm2m::content::link_format::{format, parse};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(links) = parse(text) {
        let again = parse(&format(&links)).expect("formatted links parse");
        assert_eq!(again, links);
    }
}

/// Register/Update query parameters (Core §6.2.1) and object links.
pub fn registration(data: &[u8]) {
    use crate::lwm2m::registration::{RegisterParams, parse_object_links};
    let mut input = Input(data);
    let split = input.byte() as usize;
    let (query, payload) = {
        let rest = input.rest();
        rest.split_at(split.min(rest.len()))
    };
    let query: Vec<String> = String::from_utf8_lossy(query).split('&').map(str::to_string).collect();
    if let Ok(p) = RegisterParams::parse(&query)
        && let Some(ep) = &p.endpoint
    {
        assert!(
            query.iter().any(|q| q == &format!("ep={ep}")),
            "ep comes from the query"
        );
    }
    if let Ok((links, root, _)) = parse_object_links(payload, Some(content::LINK_FORMAT)) {
        assert!(root.starts_with('/'), "the root path is a path: {root}");
        assert_eq!(links.as_bytes(), payload, "the links are kept as sent");
    }
}

// ---- Firmware server -----------------------------------------------------------

/// RFC 9110 §14: a plan never points outside the image, and the head says
/// the same bytes as the plan.
pub fn http_range(data: &[u8]) {
    use crate::download::range::{Plan, Representation, head, plan};
    let mut input = Input(data);
    let size = u64::from(input.u16()) * 7 + u64::from(input.byte());
    let is_get = input.byte() % 4 != 0;
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let (range, if_range) = match text.split_once('\n') {
        Some((r, i)) => (Some(r), Some(i)),
        None => (Some(text.as_str()), None),
    };
    let rep = Representation::new(size, "0123456789abcdef0123456789abcdef0123", 1_700_000_000);
    let p = plan(is_get, range, if_range, &rep);
    let (status, headers) = head(p, &rep);
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    match p {
        Plan::Partial { start, end } => {
            assert!(start <= end && end < size, "{start}-{end} of {size}");
            assert_eq!(status, 206);
            assert_eq!(header("content-length"), Some((end - start + 1).to_string().as_str()));
            assert_eq!(
                header("content-range"),
                Some(format!("bytes {start}-{end}/{size}").as_str())
            );
        }
        Plan::Full => assert_eq!(status, 200),
        Plan::Unsatisfiable { .. } => assert_eq!(status, 416),
    }
}

fn token_key() -> &'static crate::download::token::TokenKey {
    static K: OnceLock<crate::download::token::TokenKey> = OnceLock::new();
    K.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("flownexus-fuzz-{}", std::process::id()));
        let key = crate::download::token::TokenKey::load_or_create(&dir.join("token.key")).expect("a key file");
        let _ = std::fs::remove_dir_all(&dir);
        key
    })
}

/// A token verifies only as signed: the device it was signed for, that
/// image, before it expires; nothing else the input says gets through.
pub fn download_token(data: &[u8]) {
    let sha = "a".repeat(64);
    let text = String::from_utf8_lossy(data);
    let key = token_key();
    if let Ok(device) = key.verify(&text, &sha, 1_800_000_000) {
        let expires: i64 = text
            .split('.')
            .nth(1)
            .and_then(|e| e.parse().ok())
            .expect("a valid token has an expiry");
        assert_eq!(
            key.sign(&device, &sha, expires),
            text,
            "only a token we signed verifies"
        );
    }
    let device = text.split('.').next().unwrap_or("");
    let token = key.sign(device, &sha, 1_800_000_100);
    assert_eq!(key.verify(&token, &sha, 1_800_000_000).as_deref(), Ok(device));
    assert!(key.verify(&token, &sha, 1_800_000_101).is_err(), "expired");
    assert!(
        key.verify(&token, &"b".repeat(64), 1_800_000_000).is_err(),
        "another image"
    );
}

/// The PROXY protocol v1 header nginx sends first (HAProxy spec §2.1):
/// a complete header ends with its CRLF inside the input, so not one byte
/// of the TLS stream behind it is taken; more bytes only complete it.
pub fn proxy_protocol(data: &[u8]) {
    use crate::download::proxy_protocol::{Header, parse_v1};
    match parse_v1(data) {
        Ok(Header::Complete { len, .. }) => {
            assert!(
                len <= data.len() && data[..len].ends_with(b"\r\n"),
                "{len} of {}",
                data.len()
            );
            assert_eq!(
                parse_v1(&data[..len]),
                parse_v1(data),
                "the bytes after it do not matter"
            );
        }
        Ok(Header::Incomplete) => assert!(!data.windows(2).any(|w| w == b"\r\n")),
        Err(_) => {}
    }
}

// ---- Dashboard and API ---------------------------------------------------------

/// Percent-coding: what `encode` writes, `decode` reads back; urlencoded
/// bodies split into pairs whose text came from the body.
pub fn web_form(data: &[u8]) {
    use crate::web::form::{decode, encode, urlencoded};
    let text = String::from_utf8_lossy(data);
    assert_eq!(decode(&encode(&text)), text, "decode(encode(x)) == x");
    let pairs = urlencoded(&text);
    assert!(pairs.len() <= text.matches('&').count() + 1);
}

/// multipart/form-data (RFC 7578): every part's bytes are bytes of the body.
pub fn multipart(data: &[u8]) {
    use crate::web::form::{boundary, multipart};
    let mut input = Input(data);
    let n = input.byte() as usize % 72;
    let ct = String::from_utf8_lossy(input.take(n)).into_owned();
    let body = bytes::Bytes::copy_from_slice(input.rest());
    let b = boundary(&format!("multipart/form-data; boundary={ct}")).map(str::to_string);
    if let Some(b) = b
        && let Some(parts) = multipart(&body, &b)
    {
        for p in parts {
            let within = body.as_ptr_range();
            let part = p.data.as_ptr_range();
            assert!(
                p.data.is_empty() || (within.start <= part.start && part.end <= within.end),
                "a part is a slice of the body"
            );
        }
    }
}

/// The factory CSV: what parses imports all or nothing, and an import that
/// is refused leaves the store as it was.
pub fn factory_csv(data: &[u8]) {
    static STORE: OnceLock<Mutex<(crate::store::Store, tempfile::TempDir)>> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rows) = crate::psk::parse_provisioning(text) else {
        return;
    };
    for r in &rows {
        assert!(!r.endpoint.is_empty() && !r.psk.key().is_empty());
    }
    let cell = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut s = crate::store::Store::open(&dir.path().join("fuzz.sqlite3")).expect("a store");
        // One device every import clashes with when it names it.
        let psk = crate::psk::Psk::from_hex("taken", "00112233445566778899aabbccddeeff").expect("a key");
        s.add_device("urn:imei:taken", Some(&psk), &Default::default())
            .expect("a device");
        let _ = &mut s;
        Mutex::new((s, dir))
    });
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    let store = &mut guard.0;
    let before = store.endpoints().expect("endpoints");
    match store.import_devices(&rows).expect("the store answers") {
        Ok(n) => {
            assert_eq!(n, rows.len());
            assert_eq!(
                store.endpoints().expect("endpoints").len(),
                before.len() + n,
                "all imported"
            );
            for r in &rows {
                store.remove_device(&r.endpoint).expect("imported, so removable");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert_eq!(
                store.endpoints().expect("endpoints"),
                before,
                "a refused import adds nothing"
            );
        }
    }
}

/// OMA DDF object definitions (operators supply their own): every
/// object and resource parsed is one the text names.
pub fn ddf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(objects) = crate::lwm2m::model::parse_ddf(text) {
        for o in &objects {
            assert!(text.contains(&o.id.to_string()), "object {} is not in the text", o.id);
            for (id, r) in &o.resources {
                assert_eq!(*id, r.id);
                // An ID attribute ends with these digits (after any leading zeros).
                assert!(
                    text.contains(&format!("{id}\"")) || text.contains(&format!("{id}'")),
                    "resource {id}"
                );
            }
        }
    }
}

/// The TOML config loader: what loads is valid, prints as TOML and loads
/// again from that text to the same configuration; what does not load
/// says which key.
pub fn config_toml(data: &[u8]) {
    use crate::config::{Config, Overrides};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = BTreeMap::new();
    let flags = Overrides::default();
    match Config::load_text(Some(("fuzz.toml", text)), &env, &flags) {
        Ok(c) => {
            c.validate().expect("a loaded config is valid");
            let again = Config::load_text(Some(("printed.toml", &c.to_toml())), &env, &flags)
                .unwrap_or_else(|e| panic!("print-config's output does not load: {e}\n{}", c.to_toml()));
            assert_eq!(again, c, "print-config → load is the same configuration");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored corpus input (`fuzz/corpus/<target>/`) and every input
    /// that once failed (`tests/data/fuzz/<target>/`, each also the subject
    /// of a plain regression test beside the code it broke), through its
    /// target, on stable, in `make test`: seconds, not minutes.
    #[test]
    fn corpora_replay() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut total = 0;
        for (name, target) in TARGETS {
            let dir = manifest.join("fuzz/corpus").join(name);
            let mut inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("an entry").path())
                .collect();
            assert!(!inputs.is_empty(), "{name} has a seed corpus");
            if let Ok(fixed) = std::fs::read_dir(manifest.join("tests/data/fuzz").join(name)) {
                inputs.extend(fixed.map(|e| e.expect("an entry").path()));
            }
            inputs.sort();
            for p in inputs {
                let bytes = std::fs::read(&p).expect("a corpus file");
                let r = std::panic::catch_unwind(|| target(&bytes));
                assert!(r.is_ok(), "{name}: {} fails", p.display());
                total += 1;
            }
        }
        assert!(total >= TARGETS.len());
    }
}
