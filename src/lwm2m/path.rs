//! LwM2M paths `/ObjectID/InstanceID/ResourceID/ResourceInstanceID`
//! (LwM2M 1.1 Core §6.1, §7.1) and the typed values found at them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub type ObjectId = u16;

/// A path of 0 to 4 levels; `/` is the root. 65535 is reserved (Core §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ResourcePath {
    ids: [u16; 4],
    len: u8,
}

impl ResourcePath {
    pub const ROOT: ResourcePath = ResourcePath { ids: [0; 4], len: 0 };

    pub fn new(ids: &[u16]) -> Option<ResourcePath> {
        if ids.len() > 4 || ids.contains(&u16::MAX) {
            return None;
        }
        let mut p = ResourcePath::ROOT;
        p.ids[..ids.len()].copy_from_slice(ids);
        p.len = ids.len() as u8;
        Some(p)
    }

    pub fn ids(&self) -> &[u16] {
        &self.ids[..usize::from(self.len)]
    }
    pub fn depth(&self) -> usize {
        usize::from(self.len)
    }
    pub fn object(&self) -> Option<ObjectId> {
        self.ids().first().copied()
    }
    pub fn instance(&self) -> Option<u16> {
        self.ids().get(1).copied()
    }
    pub fn resource(&self) -> Option<u16> {
        self.ids().get(2).copied()
    }
    pub fn resource_instance(&self) -> Option<u16> {
        self.ids().get(3).copied()
    }

    /// This path extended by one level.
    pub fn child(&self, id: u16) -> Option<ResourcePath> {
        if self.len >= 4 || id == u16::MAX {
            return None;
        }
        let mut p = *self;
        p.ids[usize::from(p.len)] = id;
        p.len += 1;
        Some(p)
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &ResourcePath) -> bool {
        self.len >= other.len && self.ids[..usize::from(other.len)] == other.ids[..usize::from(other.len)]
    }

    /// Uri-Path segments for a CoAP request.
    pub fn segments(&self) -> Vec<String> {
        self.ids().iter().map(u16::to_string).collect()
    }

    /// Parse Uri-Path segments (all numeric).
    pub fn from_segments(segs: &[String]) -> Option<ResourcePath> {
        let ids: Option<Vec<u16>> = segs.iter().map(|s| s.parse().ok()).collect();
        ResourcePath::new(&ids?)
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("/");
        }
        for id in self.ids() {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl FromStr for ResourcePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidPath(s.to_string());
        let t = s.trim();
        if t == "/" {
            return Ok(ResourcePath::ROOT);
        }
        let t = t.strip_prefix('/').unwrap_or(t).trim_end_matches('/');
        if t.is_empty() {
            return Err(bad());
        }
        let ids: Result<Vec<u16>, _> = t.split('/').map(|x| x.parse::<u16>()).collect();
        ResourcePath::new(&ids.map_err(|_| bad())?).ok_or_else(bad)
    }
}

impl Serialize for ResourcePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Documented as what it serialises to: `/3/0/1`-style text.
impl schemars::JsonSchema for ResourcePath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ResourcePath".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "LwM2M path: /object[/instance[/resource[/resource-instance]]]",
            "pattern": "^/([0-9]{1,5}(/[0-9]{1,5}){0,3})?$",
            "example": "/3/0/0"
        })
    }
}

impl<'de> Deserialize<'de> for ResourcePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A value as LwM2M data types define it (Core Appendix C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
#[schemars(rename = "TypedValue")]
pub enum Value {
    String(String),
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    Boolean(bool),
    /// Hex.
    Opaque(
        #[serde(with = "hex_bytes")]
        #[schemars(with = "String")]
        Vec<u8>,
    ),
    /// Seconds since the Unix epoch.
    Time(i64),
    ObjectLink(u16, u16),
    CoreLink(String),
}

impl Value {
    /// Numeric values as a float, for charts.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(i) | Value::Time(i) => Some(*i as f64),
            Value::Unsigned(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as text, as the text/plain format writes it (Core §7.4.1).
    pub fn to_text(&self) -> String {
        match self {
            Value::String(s) | Value::CoreLink(s) => s.clone(),
            Value::Integer(i) | Value::Time(i) => i.to_string(),
            Value::Unsigned(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => if *b { "1" } else { "0" }.to_string(),
            Value::Opaque(b) => hex_bytes::encode(b),
            Value::ObjectLink(o, i) => format!("{o}:{i}"),
        }
    }
}

/// Opaque values travel as hex in JSON and the CLI.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| serde::de::Error::custom("invalid hex"))
    }
}

/// One resource (instance) value, optionally timestamped by the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Record {
    pub path: ResourcePath,
    pub value: Value,
    /// Device timestamp in seconds since the epoch (SenML `t`), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in ["/", "/3", "/3/0", "/3/0/1", "/3/0/7/1"] {
            assert_eq!(s.parse::<ResourcePath>().unwrap().to_string(), s);
        }
        assert_eq!("3/0/".parse::<ResourcePath>().unwrap().to_string(), "/3/0");
        for bad in ["", "/a", "/1/2/3/4/5", "/65535", "/-1", "//"] {
            assert!(bad.parse::<ResourcePath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let a: ResourcePath = "/3/0/1".parse().unwrap();
        assert!(a.starts_with(&"/3".parse().unwrap()));
        assert!(a.starts_with(&ResourcePath::ROOT));
        assert!(!a.starts_with(&"/3/1".parse().unwrap()));
        assert_eq!(ResourcePath::ROOT.child(5).unwrap().to_string(), "/5");
    }

    #[test]
    fn hex() {
        assert_eq!(hex_bytes::decode("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_bytes::decode("0"), None);
        assert_eq!(hex_bytes::decode("zz"), None);
    }
}
