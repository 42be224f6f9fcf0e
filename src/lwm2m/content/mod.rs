//! LwM2M content formats (Core §7.4): decode any payload into flat
//! [`Record`]s, encode records for Write/Create/Send.

pub mod link_format;
pub mod lwm2m_cbor;
pub mod senml;
pub mod tlv;

use crate::error::{Error, Result};
use crate::lwm2m::model::{Models, ResourceType};
use crate::lwm2m::path::{Record, ResourcePath, Value};

/// Content-Format numbers (CoAP registry; Core §7.4 table 7.4-1).
pub const TEXT_PLAIN: u16 = 0;
pub const LINK_FORMAT: u16 = 40;
pub const OPAQUE: u16 = 42;
pub const CBOR: u16 = 60;
pub const SENML_JSON: u16 = 110;
pub const SENML_CBOR: u16 = 112;
pub const TLV: u16 = 11542;
pub const LWM2M_JSON: u16 = 11543;
pub const LWM2M_CBOR: u16 = 11544;

/// The formats we can encode a multi-value Write with.
pub const ENCODABLE: &[u16] = &[TLV, SENML_CBOR, SENML_JSON, LWM2M_CBOR];

pub fn name(format: u16) -> &'static str {
    match format {
        TEXT_PLAIN => "text/plain",
        LINK_FORMAT => "application/link-format",
        OPAQUE => "application/octet-stream",
        CBOR => "application/cbor",
        SENML_JSON => "application/senml+json",
        SENML_CBOR => "application/senml+cbor",
        TLV => "application/vnd.oma.lwm2m+tlv",
        LWM2M_JSON => "application/vnd.oma.lwm2m+json",
        LWM2M_CBOR => "application/vnd.oma.lwm2m+cbor",
        _ => "unknown",
    }
}

/// Parse a single value written as text (Core §7.4.1), typed by the model.
pub fn parse_text(text: &str, rtype: Option<ResourceType>) -> Result<Value> {
    let bad = |what: &str| Error::malformed("text value", format!("`{text}` is not {what}"));
    Ok(match rtype {
        Some(ResourceType::Integer) => Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?),
        Some(ResourceType::Time) => Value::Time(text.trim().parse().map_err(|_| bad("a time in seconds"))?),
        Some(ResourceType::UnsignedInteger) => {
            Value::Unsigned(text.trim().parse().map_err(|_| bad("an unsigned integer"))?)
        }
        Some(ResourceType::Float) => Value::Float(text.trim().parse().map_err(|_| bad("a number"))?),
        Some(ResourceType::Boolean) => match text.trim() {
            "1" | "true" => Value::Boolean(true),
            "0" | "false" => Value::Boolean(false),
            _ => return Err(bad("a boolean (0 or 1)")),
        },
        Some(ResourceType::Objlnk) => {
            let (o, i) = text.trim().split_once(':').ok_or_else(|| bad("an object link O:I"))?;
            Value::ObjectLink(
                o.parse().map_err(|_| bad("an object link"))?,
                i.parse().map_err(|_| bad("an object link"))?,
            )
        }
        Some(ResourceType::Opaque) => {
            Value::Opaque(crate::lwm2m::path::hex_bytes::decode(text.trim()).ok_or_else(|| bad("hex bytes"))?)
        }
        Some(ResourceType::Corelnk) => Value::CoreLink(text.to_string()),
        Some(ResourceType::String) | Some(ResourceType::None) | None => Value::String(text.to_string()),
    })
}

/// Decode a response or uplink payload of `format` that refers to `base`.
pub fn decode(format: u16, base: &ResourcePath, buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    let single = |value: Value| -> Result<Vec<Record>> {
        if base.depth() < 3 {
            return Err(Error::malformed(
                "payload",
                format!("{} needs a resource path, got {base}", name(format)),
            ));
        }
        Ok(vec![Record {
            path: *base,
            value,
            time: None,
        }])
    };
    match format {
        TEXT_PLAIN => {
            let text = std::str::from_utf8(buf).map_err(|_| Error::malformed("text value", "not UTF-8"))?;
            single(parse_text(text, models.resource(base).map(|r| r.rtype))?)
        }
        OPAQUE => single(Value::Opaque(buf.to_vec())),
        TLV => tlv::decode(base, buf, models),
        SENML_JSON => senml::decode_json(buf, models),
        SENML_CBOR => senml::decode_cbor(buf, models),
        LWM2M_JSON => senml::decode_legacy_json(base, buf, models),
        LWM2M_CBOR => lwm2m_cbor::decode(buf, models),
        // Plain CBOR carries one resource value (Core §7.4.7).
        CBOR => lwm2m_cbor::decode_single(base, buf, models),
        f => Err(Error::UnsupportedContentFormat(f)),
    }
}

/// Encode records for a request on `base` in `format`.
pub fn encode(format: u16, base: &ResourcePath, records: &[Record], models: &Models) -> Result<Vec<u8>> {
    match format {
        TEXT_PLAIN | OPAQUE => match records {
            [r] if r.path == *base => Ok(match (&r.value, format) {
                (Value::Opaque(b), OPAQUE) => b.clone(),
                (v, TEXT_PLAIN) => v.to_text().into_bytes(),
                _ => {
                    return Err(Error::malformed("payload", "opaque format needs an opaque value"));
                }
            }),
            _ => Err(Error::malformed(
                "payload",
                "text and opaque formats carry exactly one value at the request path",
            )),
        },
        TLV => tlv::encode(base, records, models),
        SENML_JSON => Ok(senml::encode_json(records)),
        SENML_CBOR => Ok(senml::encode_cbor(records)),
        LWM2M_CBOR => Ok(lwm2m_cbor::encode(records)),
        f => Err(Error::UnsupportedContentFormat(f)),
    }
}

#[cfg(test)]
mod properties;
