//! CoAP messages as the exchange layer sees them (RFC 7252 §3, §5).
//!
//! coap-lite does the bit-level codec; this module adds the checks it skips
//! (version, payload marker with no payload, option lengths we interpret) and
//! turns packets into [`Request`]/[`Response`] values with spec-named fields.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

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

fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

fn utf8(v: &[u8], name: &'static str) -> Result<String> {
    String::from_utf8(v.to_vec()).map_err(|_| Error::malformed("CoAP option", format!("{name} is not UTF-8")))
}

impl Message {
    /// Decode a datagram. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        if bytes.len() < 4 {
            return Err(Error::malformed("CoAP message", "shorter than the 4-byte header"));
        }
        if bytes[0] >> 6 != 1 {
            return Err(Error::malformed("CoAP message", "version is not 1"));
        }
        let packet = Packet::from_bytes(bytes).map_err(|e| Error::malformed("CoAP message", format!("{e:?}")))?;
        // RFC 7252 §3: a payload marker followed by a zero-length payload is a
        // format error. coap-lite silently accepts it.
        if packet.payload.is_empty() && bytes.last() == Some(&0xFF) {
            let tkl = usize::from(bytes[0] & 0x0F);
            if bytes.len() > 4 + tkl {
                return Err(Error::malformed("CoAP message", "payload marker without payload"));
            }
        }
        let mtype = match packet.header.get_type() {
            MessageType::Confirmable => Type::Con,
            MessageType::NonConfirmable => Type::Non,
            MessageType::Acknowledgement => Type::Ack,
            MessageType::Reset => Type::Rst,
        };
        let code: u8 = packet.header.code.into();
        let mut o = Options::default();
        for (num, values) in packet.options() {
            for v in values {
                match CoapOption::from(*num) {
                    CoapOption::UriPath => o.uri_path.push(utf8(v, "Uri-Path")?),
                    CoapOption::UriQuery => o.uri_query.push(utf8(v, "Uri-Query")?),
                    CoapOption::LocationPath => o.location_path.push(utf8(v, "Location-Path")?),
                    CoapOption::ContentFormat => o.content_format = Some(uint(v, 2, "Content-Format")? as u16),
                    CoapOption::Accept => o.accept = Some(uint(v, 2, "Accept")? as u16),
                    CoapOption::Observe => o.observe = Some(uint(v, 3, "Observe")?),
                    CoapOption::Block1 => o.block1 = Some(BlockValue::decode(uint(v, 3, "Block1")?)?),
                    CoapOption::Block2 => o.block2 = Some(BlockValue::decode(uint(v, 3, "Block2")?)?),
                    CoapOption::Size1 => o.size1 = Some(uint(v, 4, "Size1")?),
                    CoapOption::Size2 => o.size2 = Some(uint(v, 4, "Size2")?),
                    CoapOption::MaxAge => o.max_age = Some(uint(v, 4, "Max-Age")?),
                    CoapOption::ETag => o.etag = Some(v.clone()),
                    _ => o.other.push((*num, v.clone())),
                }
            }
        }
        Ok(Message {
            mtype,
            code,
            message_id: packet.header.message_id,
            token: packet.get_token().to_vec(),
            options: o,
            payload: packet.payload,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(match self.mtype {
            Type::Con => MessageType::Confirmable,
            Type::Non => MessageType::NonConfirmable,
            Type::Ack => MessageType::Acknowledgement,
            Type::Rst => MessageType::Reset,
        });
        p.header.code = MessageClass::from(self.code);
        p.header.message_id = self.message_id;
        p.set_token(self.token.clone());
        let o = &self.options;
        for s in &o.uri_path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for s in &o.uri_query {
            p.add_option(CoapOption::UriQuery, s.as_bytes().to_vec());
        }
        for s in &o.location_path {
            p.add_option(CoapOption::LocationPath, s.as_bytes().to_vec());
        }
        let mut put = |opt, v: Option<u32>| {
            if let Some(v) = v {
                p.add_option(opt, uint_bytes(v));
            }
        };
        put(CoapOption::ContentFormat, o.content_format.map(u32::from));
        put(CoapOption::Accept, o.accept.map(u32::from));
        put(CoapOption::Observe, o.observe);
        put(CoapOption::Block1, o.block1.map(BlockValue::encode));
        put(CoapOption::Block2, o.block2.map(BlockValue::encode));
        put(CoapOption::Size1, o.size1);
        put(CoapOption::Size2, o.size2);
        put(CoapOption::MaxAge, o.max_age);
        if let Some(e) = &o.etag {
            p.add_option(CoapOption::ETag, e.clone());
        }
        for (num, v) in &o.other {
            p.add_option(CoapOption::from(*num), v.clone());
        }
        p.payload = self.payload.clone();
        // Our own messages are bounded by block size, so only a bug can exceed
        // 64 KB; the unlimited form never fails for sizes we produce.
        p.to_bytes_unlimited().expect("CoAP encode")
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
}
