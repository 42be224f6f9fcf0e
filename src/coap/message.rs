//! CoAP messages as the exchange layer sees them (RFC 7252 §3, §5): the
//! wire codec (§3) and [`Request`]/[`Response`] values with spec-named
//! fields.
//!
//! The codec is ours: it reads options straight into [`Options`] and writes
//! them straight out, where coap-lite (still a dev-dependency, checked
//! against in the tests) built a map of lists of copies both ways; this is
//! on the path of every datagram.

use crate::coap::block::BlockValue;
use crate::error::{Error, Result};

/// A CoAP response code, `class.detail` packed as on the wire (RFC 7252 §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    pub const EMPTY: Code = Code(0x00);
    pub const CREATED: Code = Code(0x41);
    pub const DELETED: Code = Code(0x42);
    pub const VALID: Code = Code(0x43);
    pub const CHANGED: Code = Code(0x44);
    pub const CONTENT: Code = Code(0x45);
    pub const CONTINUE: Code = Code(0x5F);
    pub const BAD_REQUEST: Code = Code(0x80);
    pub const UNAUTHORIZED: Code = Code(0x81);
    pub const BAD_OPTION: Code = Code(0x82);
    pub const FORBIDDEN: Code = Code(0x83);
    pub const NOT_FOUND: Code = Code(0x84);
    pub const METHOD_NOT_ALLOWED: Code = Code(0x85);
    pub const NOT_ACCEPTABLE: Code = Code(0x86);
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code(0x88);
    pub const PRECONDITION_FAILED: Code = Code(0x8C);
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(0x8D);
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code(0x8F);
    /// 4.29 Too Many Requests (RFC 8516 §3), with Max-Age saying when to return.
    pub const TOO_MANY_REQUESTS: Code = Code(0x9D);
    pub const INTERNAL_SERVER_ERROR: Code = Code(0xA0);
    pub const SERVICE_UNAVAILABLE: Code = Code(0xA3);

    pub fn class(self) -> u8 {
        self.0 >> 5
    }
    pub fn is_success(self) -> bool {
        self.class() == 2
    }
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }
    pub fn is_response(self) -> bool {
        (2..=5).contains(&self.class())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 5, self.0 & 0x1F)
    }
}

/// Request methods (RFC 7252 §5.8, RFC 8132 for FETCH/PATCH/iPATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Fetch,
    Patch,
    IPatch,
}

impl Method {
    fn code(self) -> u8 {
        match self {
            Method::Get => 1,
            Method::Post => 2,
            Method::Put => 3,
            Method::Delete => 4,
            Method::Fetch => 5,
            Method::Patch => 6,
            Method::IPatch => 7,
        }
    }
    fn from_code(c: u8) -> Option<Method> {
        Some(match c {
            1 => Method::Get,
            2 => Method::Post,
            3 => Method::Put,
            4 => Method::Delete,
            5 => Method::Fetch,
            6 => Method::Patch,
            7 => Method::IPatch,
            _ => return None,
        })
    }
}

/// Message types (RFC 7252 §3, "T").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    Con,
    Non,
    Ack,
    Rst,
}

/// Option numbers (RFC 7252 §5.10, §12.2; RFC 7641 §2; RFC 7959 §2.1, §4).
mod number {
    pub const ETAG: u16 = 4;
    pub const OBSERVE: u16 = 6;
    pub const LOCATION_PATH: u16 = 8;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const SIZE1: u16 = 60;
}

/// The payload marker (RFC 7252 §3).
const PAYLOAD_MARKER: u8 = 0xFF;

/// The fields the exchange layer and LwM2M use; other options pass through
/// untouched in `other` so a proxy-like use loses nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    pub uri_path: Vec<String>,
    pub uri_query: Vec<String>,
    pub location_path: Vec<String>,
    pub content_format: Option<u16>,
    pub accept: Option<u16>,
    pub observe: Option<u32>,
    pub block1: Option<BlockValue>,
    pub block2: Option<BlockValue>,
    pub size1: Option<u32>,
    pub size2: Option<u32>,
    pub etag: Option<Vec<u8>>,
    pub max_age: Option<u32>,
    /// Options we don't interpret, by number, in wire order.
    pub other: Vec<(u16, Vec<u8>)>,
}

/// One decoded CoAP message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub mtype: Type,
    pub code: u8,
    pub message_id: u16,
    pub token: Vec<u8>,
    pub options: Options,
    pub payload: Vec<u8>,
}

/// A request handed to or produced by the application, without transport
/// details (type, message id, token are the exchange layer's business).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub options: Options,
    pub payload: Vec<u8>,
    /// Send as NON instead of CON.
    pub non_confirmable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub code: Code,
    pub options: Options,
    pub payload: Vec<u8>,
}

impl Request {
    pub fn new(method: Method, path: &str) -> Request {
        Request {
            method,
            options: Options {
                uri_path: split_path(path),
                ..Default::default()
            },
            payload: Vec::new(),
            non_confirmable: false,
        }
    }

    /// The Uri-Path as `/a/b`.
    pub fn path(&self) -> String {
        join_path(&self.options.uri_path)
    }
}

impl Response {
    pub fn new(code: Code) -> Response {
        Response {
            code,
            options: Options::default(),
            payload: Vec::new(),
        }
    }
    pub fn with_payload(code: Code, content_format: u16, payload: Vec<u8>) -> Response {
        Response {
            code,
            options: Options {
                content_format: Some(content_format),
                ..Default::default()
            },
            payload,
        }
    }
}

pub fn split_path(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub fn join_path(segments: &[String]) -> String {
    let mut s = String::new();
    for seg in segments {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Unsigned option values are big-endian with leading zeros stripped
/// (RFC 7252 §3.2); a longer value than the option allows is malformed.
fn uint(v: &[u8], max_len: usize, name: &'static str) -> Result<u32> {
    if v.len() > max_len {
        return Err(Error::malformed(
            "CoAP option",
            format!("{name} longer than {max_len} bytes"),
        ));
    }
    Ok(v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

fn utf8(v: &[u8], name: &'static str) -> Result<String> {
    String::from_utf8(v.to_vec()).map_err(|_| Error::malformed("CoAP option", format!("{name} is not UTF-8")))
}

fn format_error(reason: &'static str) -> Error {
    Error::malformed("CoAP message", reason)
}

/// An option value to write: bytes we hold, or a uint in its shortest form.
enum OptionValue<'a> {
    Bytes(&'a [u8]),
    Uint([u8; 4]),
}

impl OptionValue<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            OptionValue::Bytes(b) => b,
            OptionValue::Uint(b) => {
                // Leading zero bytes are left out; 0 is the empty value (§3.2).
                let skip = b.iter().take_while(|x| **x == 0).count();
                &b[skip..]
            }
        }
    }
}

/// An option delta or length as its 4-bit nibble and extended bytes
/// (RFC 7252 §3.1): 13 adds one byte (value − 13), 14 two (value − 269).
fn nibble(n: usize) -> (u8, [u8; 2], usize) {
    match n {
        0..=12 => (n as u8, [0; 2], 0),
        13..=268 => (13, [(n - 13) as u8, 0], 1),
        // Our option values are LwM2M paths, queries, tokens and ETags,
        // far below the 65,804 bytes the format can carry.
        _ => (
            14,
            u16::try_from(n - 269).expect("CoAP option too long").to_be_bytes(),
            2,
        ),
    }
}

/// Read an extended delta or length after the option header byte.
fn extended(nibble: u8, bytes: &[u8], at: &mut usize) -> Result<usize> {
    let take = |at: &mut usize, n: usize| {
        let v = bytes
            .get(*at..*at + n)
            .ok_or(format_error("option runs past the end"))?;
        *at += n;
        Ok::<_, Error>(v)
    };
    Ok(match nibble {
        0..=12 => usize::from(nibble),
        13 => usize::from(take(at, 1)?[0]) + 13,
        14 => usize::from(u16::from_be_bytes(take(at, 2)?.try_into().expect("two bytes"))) + 269,
        // 15 is reserved for the payload marker (§3.1).
        _ => return Err(format_error("option delta or length 15")),
    })
}

impl Message {
    /// Decode a datagram (RFC 7252 §3). Never panics on any input; every
    /// format error the RFC names is an error.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let [first, code, mid_hi, mid_lo] = *bytes
            .first_chunk::<4>()
            .ok_or(format_error("shorter than the 4-byte header"))?;
        if first >> 6 != 1 {
            return Err(format_error("version is not 1"));
        }
        let mtype = match (first >> 4) & 3 {
            0 => Type::Con,
            1 => Type::Non,
            2 => Type::Ack,
            _ => Type::Rst,
        };
        // Token lengths 9-15 are reserved (§3).
        let tkl = usize::from(first & 0x0F);
        if tkl > 8 {
            return Err(format_error("token length over 8"));
        }
        let token = bytes
            .get(4..4 + tkl)
            .ok_or(format_error("token runs past the end"))?
            .to_vec();
        // An Empty message is the 4-byte header alone (§4.1).
        if code == 0 && bytes.len() > 4 {
            return Err(format_error("Empty message with bytes after the header"));
        }
        let mut o = Options::default();
        let mut payload = Vec::new();
        let mut option_number: usize = 0;
        let mut at = 4 + tkl;
        while let Some(&header) = bytes.get(at) {
            at += 1;
            if header == PAYLOAD_MARKER {
                // A marker followed by a zero-length payload is a format
                // error (§3).
                if at == bytes.len() {
                    return Err(format_error("payload marker without payload"));
                }
                payload = bytes[at..].to_vec();
                break;
            }
            option_number += extended(header >> 4, bytes, &mut at)?;
            let len = extended(header & 0x0F, bytes, &mut at)?;
            let Ok(num) = u16::try_from(option_number) else {
                return Err(format_error("option number over 65535"));
            };
            let v = bytes
                .get(at..at + len)
                .ok_or(format_error("option value runs past the end"))?;
            at += len;
            match num {
                number::URI_PATH => o.uri_path.push(utf8(v, "Uri-Path")?),
                number::URI_QUERY => o.uri_query.push(utf8(v, "Uri-Query")?),
                number::LOCATION_PATH => o.location_path.push(utf8(v, "Location-Path")?),
                number::CONTENT_FORMAT => o.content_format = Some(uint(v, 2, "Content-Format")? as u16),
                number::ACCEPT => o.accept = Some(uint(v, 2, "Accept")? as u16),
                number::OBSERVE => o.observe = Some(uint(v, 3, "Observe")?),
                number::BLOCK1 => o.block1 = Some(BlockValue::decode(uint(v, 3, "Block1")?)?),
                number::BLOCK2 => o.block2 = Some(BlockValue::decode(uint(v, 3, "Block2")?)?),
                number::SIZE1 => o.size1 = Some(uint(v, 4, "Size1")?),
                number::SIZE2 => o.size2 = Some(uint(v, 4, "Size2")?),
                number::MAX_AGE => o.max_age = Some(uint(v, 4, "Max-Age")?),
                number::ETAG => o.etag = Some(v.to_vec()),
                _ => o.other.push((num, v.to_vec())),
            }
        }
        Ok(Message {
            mtype,
            code,
            message_id: u16::from_be_bytes([mid_hi, mid_lo]),
            token,
            options: o,
            payload,
        })
    }

    /// Encode for the wire (RFC 7252 §3): options in ascending number
    /// order as the delta encoding needs, repeated ones in the order held.
    pub fn encode(&self) -> Vec<u8> {
        let o = &self.options;
        let uint = |n: u16, v: Option<u32>| v.map(|v| (n, OptionValue::Uint(v.to_be_bytes())));
        let mut options: Vec<(u16, OptionValue<'_>)> =
            Vec::with_capacity(o.uri_path.len() + o.uri_query.len() + o.location_path.len() + o.other.len() + 10);
        for (n, strings) in [
            (number::URI_PATH, &o.uri_path),
            (number::URI_QUERY, &o.uri_query),
            (number::LOCATION_PATH, &o.location_path),
        ] {
            options.extend(strings.iter().map(|s| (n, OptionValue::Bytes(s.as_bytes()))));
        }
        options.extend(
            [
                uint(number::CONTENT_FORMAT, o.content_format.map(u32::from)),
                uint(number::ACCEPT, o.accept.map(u32::from)),
                uint(number::OBSERVE, o.observe),
                uint(number::BLOCK1, o.block1.map(BlockValue::encode)),
                uint(number::BLOCK2, o.block2.map(BlockValue::encode)),
                uint(number::SIZE1, o.size1),
                uint(number::SIZE2, o.size2),
                uint(number::MAX_AGE, o.max_age),
                o.etag.as_deref().map(|e| (number::ETAG, OptionValue::Bytes(e))),
            ]
            .into_iter()
            .flatten(),
        );
        options.extend(o.other.iter().map(|(n, v)| (*n, OptionValue::Bytes(v))));
        // Stable: repeated options keep their order.
        options.sort_by_key(|(n, _)| *n);

        let values: usize = options.iter().map(|(_, v)| 5 + v.as_bytes().len()).sum();
        let mut out = Vec::with_capacity(4 + self.token.len() + values + 1 + self.payload.len());
        // Our tokens are at most 8 bytes, as are those we decoded (§5.3.1).
        debug_assert!(self.token.len() <= 8, "token of {} bytes", self.token.len());
        let tkl = self.token.len().min(8);
        let t = match self.mtype {
            Type::Con => 0,
            Type::Non => 1,
            Type::Ack => 2,
            Type::Rst => 3,
        };
        out.push(1 << 6 | t << 4 | tkl as u8);
        out.push(self.code);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.token[..tkl]);
        let mut previous = 0;
        for (n, v) in &options {
            let v = v.as_bytes();
            let (d, d_ext, d_len) = nibble(usize::from(n - previous));
            let (l, l_ext, l_len) = nibble(v.len());
            out.push(d << 4 | l);
            out.extend_from_slice(&d_ext[..d_len]);
            out.extend_from_slice(&l_ext[..l_len]);
            out.extend_from_slice(v);
            previous = *n;
        }
        if !self.payload.is_empty() {
            out.push(PAYLOAD_MARKER);
            out.extend_from_slice(&self.payload);
        }
        out
    }

    /// An empty ACK or RST for `message_id` (RFC 7252 §4.2, §4.3).
    pub fn empty(mtype: Type, message_id: u16) -> Message {
        Message {
            mtype,
            code: 0,
            message_id,
            token: Vec::new(),
            options: Options::default(),
            payload: Vec::new(),
        }
    }

    pub fn method(&self) -> Option<Method> {
        Method::from_code(self.code)
    }

    pub fn request(mtype: Type, message_id: u16, token: Vec<u8>, r: &Request) -> Message {
        Message {
            mtype,
            code: r.method.code(),
            message_id,
            token,
            options: r.options.clone(),
            payload: r.payload.clone(),
        }
    }

    pub fn response(mtype: Type, message_id: u16, token: Vec<u8>, r: &Response) -> Message {
        Message {
            mtype,
            code: r.code.0,
            message_id,
            token,
            options: r.options.clone(),
            payload: r.payload.clone(),
        }
    }

    pub fn into_request(self) -> Option<Request> {
        Some(Request {
            method: self.method()?,
            options: self.options,
            payload: self.payload,
            non_confirmable: self.mtype == Type::Non,
        })
    }

    pub fn into_response(self) -> Response {
        Response {
            code: Code(self.code),
            options: self.options,
            payload: self.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_request() {
        let mut r = Request::new(Method::Post, "/rd");
        r.options.uri_query = vec!["ep=dev1".into(), "lt=300".into()];
        r.options.content_format = Some(40);
        r.options.block1 = Some(BlockValue {
            num: 3,
            more: true,
            szx: 6,
        });
        r.payload = b"</1/0>,</3/0>".to_vec();
        let m = Message::request(Type::Con, 0x1234, vec![1, 2, 3, 4], &r);
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.into_request().unwrap(), r);
    }

    #[test]
    fn rejects_bad_version_and_lonely_payload_marker() {
        assert!(Message::decode(&[0x80, 0x01, 0, 1]).is_err());
        assert!(Message::decode(&[0x40, 0x01, 0, 1, 0xFF]).is_err());
        assert!(Message::decode(&[0x40]).is_err());
        // token length 9..15 is a format error (RFC 7252 §3)
        assert!(Message::decode(&[0x49, 0x01, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err());
    }

    #[test]
    fn rejects_overlong_uint_options() {
        // Content-Format (12) with 3 bytes
        let bytes = [0x40, 0x01, 0, 1, 0xC3, 1, 2, 3];
        assert!(Message::decode(&bytes).is_err());
    }

    #[test]
    fn rejects_the_format_errors_of_rfc_7252() {
        for (bytes, why) in [
            (&[0x40, 0x00, 0, 1, 0xFF, 1][..], "Empty message with a payload (§4.1)"),
            (&[0x41, 0x00, 0, 1, 7], "Empty message with a token (§4.1)"),
            (&[0x40, 0x01, 0, 1, 0xF0], "option delta 15 (§3.1)"),
            (&[0x40, 0x01, 0, 1, 0x0F], "option length 15 (§3.1)"),
            (&[0x40, 0x01, 0, 1, 0xD0], "extended delta missing"),
            (&[0x40, 0x01, 0, 1, 0xB3, b'a'], "value past the end"),
            (&[0x44, 0x01, 0, 1, 1, 2], "token past the end"),
            // 269 + 0xFFFF: option number 65804 > 65535.
            (&[0x40, 0x01, 0, 1, 0xE0, 0xFF, 0xFF], "option number over 16 bits"),
        ] {
            assert!(Message::decode(bytes).is_err(), "{why}");
        }
        // Extended deltas and lengths: Size1 (60 = 13 + 47), a 300-byte
        // Uri-Query (269 + 31), both in their 1- and 2-byte forms.
        let mut r = Request::new(Method::Get, "/a");
        r.options.uri_query = vec!["q".repeat(300)];
        r.options.size1 = Some(1024);
        let m = Message::request(Type::Con, 9, vec![], &r);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    /// The codec this one replaced, kept as an oracle: coap-lite's packet
    /// with the checks we had on top of it (version; a payload marker with
    /// no payload). Option values are read with this module's `uint` and
    /// `utf8`: the wire codec is what is under test.
    mod oracle {
        use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

        use super::super::*;

        pub fn decode(bytes: &[u8]) -> Option<Message> {
            if bytes.len() < 4 || bytes[0] >> 6 != 1 {
                return None;
            }
            let packet = Packet::from_bytes(bytes).ok()?;
            // coap-lite accepts a payload marker with nothing after it.
            let tkl = usize::from(bytes[0] & 0x0F);
            if packet.payload.is_empty() && bytes.last() == Some(&0xFF) && bytes.len() > 4 + tkl {
                return None;
            }
            let mut o = Options::default();
            for (num, values) in packet.options() {
                for v in values {
                    let u = |max: usize| uint(v, max, "option").ok();
                    match CoapOption::from(*num) {
                        CoapOption::UriPath => o.uri_path.push(utf8(v, "Uri-Path").ok()?),
                        CoapOption::UriQuery => o.uri_query.push(utf8(v, "Uri-Query").ok()?),
                        CoapOption::LocationPath => o.location_path.push(utf8(v, "Location-Path").ok()?),
                        CoapOption::ContentFormat => o.content_format = Some(u(2)? as u16),
                        CoapOption::Accept => o.accept = Some(u(2)? as u16),
                        CoapOption::Observe => o.observe = Some(u(3)?),
                        CoapOption::Block1 => o.block1 = Some(BlockValue::decode(u(3)?).ok()?),
                        CoapOption::Block2 => o.block2 = Some(BlockValue::decode(u(3)?).ok()?),
                        CoapOption::Size1 => o.size1 = Some(u(4)?),
                        CoapOption::Size2 => o.size2 = Some(u(4)?),
                        CoapOption::MaxAge => o.max_age = Some(u(4)?),
                        CoapOption::ETag => o.etag = Some(v.clone()),
                        _ => o.other.push((*num, v.clone())),
                    }
                }
            }
            Some(Message {
                mtype: match packet.header.get_type() {
                    MessageType::Confirmable => Type::Con,
                    MessageType::NonConfirmable => Type::Non,
                    MessageType::Acknowledgement => Type::Ack,
                    MessageType::Reset => Type::Rst,
                },
                code: packet.header.code.into(),
                message_id: packet.header.message_id,
                token: packet.get_token().to_vec(),
                options: o,
                payload: packet.payload,
            })
        }

        pub fn encode(m: &Message) -> Vec<u8> {
            let mut p = Packet::new();
            p.header.set_version(1);
            p.header.set_type(match m.mtype {
                Type::Con => MessageType::Confirmable,
                Type::Non => MessageType::NonConfirmable,
                Type::Ack => MessageType::Acknowledgement,
                Type::Rst => MessageType::Reset,
            });
            p.header.code = MessageClass::from(m.code);
            p.header.message_id = m.message_id;
            p.set_token(m.token.clone());
            let o = &m.options;
            for (opt, strings) in [
                (CoapOption::UriPath, &o.uri_path),
                (CoapOption::UriQuery, &o.uri_query),
                (CoapOption::LocationPath, &o.location_path),
            ] {
                for s in strings {
                    p.add_option(opt, s.as_bytes().to_vec());
                }
            }
            for (opt, v) in [
                (CoapOption::ContentFormat, o.content_format.map(u32::from)),
                (CoapOption::Accept, o.accept.map(u32::from)),
                (CoapOption::Observe, o.observe),
                (CoapOption::Block1, o.block1.map(BlockValue::encode)),
                (CoapOption::Block2, o.block2.map(BlockValue::encode)),
                (CoapOption::Size1, o.size1),
                (CoapOption::Size2, o.size2),
                (CoapOption::MaxAge, o.max_age),
            ] {
                if let Some(v) = v {
                    let b = v.to_be_bytes();
                    p.add_option(opt, b[b.iter().take_while(|x| **x == 0).count()..].to_vec());
                }
            }
            if let Some(e) = &o.etag {
                p.add_option(CoapOption::ETag, e.clone());
            }
            for (num, v) in &o.other {
                p.add_option(CoapOption::from(*num), v.clone());
            }
            p.payload = m.payload.clone();
            p.to_bytes_unlimited().unwrap()
        }
    }

    #[test]
    fn agrees_with_the_oracle_on_its_edge_cases() {
        // Both refuse a lonely payload marker; only we refuse an Empty
        // message with bytes after its header (RFC 7252 §4.1).
        assert!(Message::decode(&[0x40, 0x01, 0, 1, 0xFF]).is_err());
        assert!(oracle::decode(&[0x40, 0x01, 0, 1, 0xFF]).is_none());
        assert!(Message::decode(&[0x40, 0x00, 0, 1, 0xFF, 1]).is_err());
        assert!(oracle::decode(&[0x40, 0x00, 0, 1, 0xFF, 1]).is_some());
        let ok = [0x40, 0x01, 0, 1, 0xB1, b'a', 0xFF, 9];
        assert_eq!(Message::decode(&ok).ok(), oracle::decode(&ok));
        assert!(oracle::decode(&ok).is_some());
    }

    mod differential {
        use proptest::prelude::*;

        use super::super::*;
        use super::oracle;

        /// The numbers the codec interprets into fields of their own.
        const KNOWN: [u16; 12] = [
            number::ETAG,
            number::OBSERVE,
            number::LOCATION_PATH,
            number::URI_PATH,
            number::CONTENT_FORMAT,
            number::MAX_AGE,
            number::URI_QUERY,
            number::ACCEPT,
            number::BLOCK2,
            number::BLOCK1,
            number::SIZE2,
            number::SIZE1,
        ];

        fn block() -> impl Strategy<Value = BlockValue> {
            (0u32..1 << 20, any::<bool>(), 0u8..7).prop_map(|(num, more, szx)| BlockValue { num, more, szx })
        }

        fn message() -> impl Strategy<Value = Message> {
            let strings = || proptest::collection::vec("[a-z0-9=&./-]{0,20}", 0..4);
            let options = (
                (strings(), strings(), strings()),
                (
                    proptest::option::of(any::<u16>()),
                    proptest::option::of(any::<u16>()),
                    proptest::option::of(0u32..1 << 24),
                    proptest::option::of(block()),
                    proptest::option::of(block()),
                ),
                (
                    proptest::option::of(any::<u32>()),
                    proptest::option::of(any::<u32>()),
                    proptest::option::of(any::<u32>()),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 1..9)),
                ),
                // Numbers the codec does not interpret, small and large
                // (1- and 2-byte extended deltas), in wire order.
                proptest::collection::vec(
                    (
                        prop_oneof![1u16..70, 70u16..2000, 2000u16..=65535]
                            .prop_filter("uninterpreted", |n| !KNOWN.contains(n)),
                        proptest::collection::vec(any::<u8>(), 0..300),
                    ),
                    0..4,
                )
                .prop_map(|mut v| {
                    v.sort_by_key(|(n, _)| *n);
                    v
                }),
            )
                .prop_map(
                    |(
                        (uri_path, uri_query, location_path),
                        (content_format, accept, observe, block1, block2),
                        (size1, size2, max_age, etag),
                        other,
                    )| Options {
                        uri_path,
                        uri_query,
                        location_path,
                        content_format,
                        accept,
                        observe,
                        block1,
                        block2,
                        size1,
                        size2,
                        etag,
                        max_age,
                        other,
                    },
                );
            (
                prop_oneof![Just(Type::Con), Just(Type::Non), Just(Type::Ack), Just(Type::Rst)],
                1u8..=255,
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..=8),
                options,
                proptest::collection::vec(any::<u8>(), 0..100),
            )
                .prop_map(|(mtype, code, message_id, token, options, payload)| Message {
                    mtype,
                    code,
                    message_id,
                    token,
                    options,
                    payload,
                })
        }

        proptest! {
            #[test]
            fn encodes_byte_for_byte_as_coap_lite_and_round_trips(m in message()) {
                let ours = m.encode();
                prop_assert_eq!(&ours, &oracle::encode(&m));
                prop_assert_eq!(Message::decode(&ours).unwrap(), m);
            }

            #[test]
            fn decodes_what_coap_lite_decodes_alike(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
                match (Message::decode(&bytes), oracle::decode(&bytes)) {
                    (Ok(ours), Some(theirs)) => prop_assert_eq!(ours, theirs),
                    (Ok(ours), None) => prop_assert!(false, "only we accept {:?}: {:?}", bytes, ours),
                    // Stricter than coap-lite only where RFC 7252 §4.1 says
                    // so: an Empty message is the header alone.
                    (Err(_), Some(_)) => prop_assert!(bytes[1] == 0 && bytes.len() > 4, "only coap-lite accepts {:?}", bytes),
                    (Err(_), None) => {}
                }
            }
        }
    }
}
