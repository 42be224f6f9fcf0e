//! SenML (RFC 8428) as LwM2M uses it: SenML-JSON 110 and SenML-CBOR 112
//! (LwM2M 1.1 Core §7.4.4, §7.4.5), plus decoding of the LwM2M 1.0 JSON
//! format 11543 (1.0 Core §6.4.4), which has the same resolution rules.
//!
//! Both encodings parse into [`Raw`] records, then one resolver applies
//! base name / base time and the object model.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ciborium::value::{Integer, Value as Cbor};

use crate::error::{Error, Result};
use crate::lwm2m::model::{Models, ResourceType};
use crate::lwm2m::path::{Record, ResourcePath, Value};

/// One SenML record before resolution.
#[derive(Debug, Default, Clone)]
struct Raw {
    bn: Option<String>,
    bt: Option<f64>,
    n: Option<String>,
    t: Option<f64>,
    value: Option<RawValue>,
}

#[derive(Debug, Clone)]
enum RawValue {
    Int(i128),
    Float(f64),
    Str(String),
    Bool(bool),
    Data(Vec<u8>),
    ObjLnk(String),
}

fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::malformed(what, reason)
}

fn parse_objlnk(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Apply base values and the model (RFC 8428 §4.5).
fn resolve(raws: Vec<Raw>, models: &Models, what: &'static str) -> Result<Vec<Record>> {
    let mut bn = String::new();
    let mut bt = 0.0;
    let mut out = Vec::new();
    for r in raws {
        if let Some(b) = r.bn {
            bn = b;
        }
        if let Some(b) = r.bt {
            bt = b;
        }
        let name = format!("{bn}{}", r.n.unwrap_or_default());
        let Some(v) = r.value else {
            // A record without a value (e.g. a base-only record, or a
            // Read-Composite request path list) names a path only.
            continue;
        };
        let path: ResourcePath = name
            .parse()
            .map_err(|_| malformed(what, format!("bad name `{name}`")))?;
        let rtype = models.resource(&path).map(|m| m.rtype);
        let value = match (v, rtype) {
            (RawValue::Int(i), Some(ResourceType::UnsignedInteger)) => {
                Value::Unsigned(u64::try_from(i).map_err(|_| malformed(what, "negative unsigned"))?)
            }
            (RawValue::Int(i), Some(ResourceType::Time)) => {
                Value::Time(i64::try_from(i).map_err(|_| malformed(what, "time out of range"))?)
            }
            (RawValue::Int(i), Some(ResourceType::Float)) => Value::Float(i as f64),
            (RawValue::Int(i), _) => match i64::try_from(i) {
                Ok(x) => Value::Integer(x),
                Err(_) => Value::Unsigned(u64::try_from(i).map_err(|_| malformed(what, "integer out of range"))?),
            },
            (RawValue::Float(f), Some(ResourceType::Integer)) if f.fract() == 0.0 => Value::Integer(f as i64),
            (RawValue::Float(f), Some(ResourceType::Time)) if f.fract() == 0.0 => Value::Time(f as i64),
            (RawValue::Float(f), _) => Value::Float(f),
            (RawValue::Str(s), Some(ResourceType::Corelnk)) => Value::CoreLink(s),
            (RawValue::Str(s), _) => Value::String(s),
            (RawValue::Bool(b), _) => Value::Boolean(b),
            (RawValue::Data(d), _) => Value::Opaque(d),
            (RawValue::ObjLnk(s), _) => {
                let (o, i) = parse_objlnk(&s).ok_or_else(|| malformed(what, format!("bad object link `{s}`")))?;
                Value::ObjectLink(o, i)
            }
        };
        let t = bt + r.t.unwrap_or(0.0);
        out.push(Record {
            path,
            value,
            time: (t != 0.0).then_some(t),
        });
    }
    Ok(out)
}

/// The paths named by a SenML payload without values (Read-Composite,
/// Observe-Composite request bodies, LwM2M 1.1 Core §6.3.3).
pub fn names(format: u16, buf: &[u8]) -> Result<Vec<ResourcePath>> {
    let raws = match format {
        super::SENML_JSON => parse_json(buf)?,
        super::SENML_CBOR => parse_cbor(buf)?,
        f => return Err(Error::UnsupportedContentFormat(f)),
    };
    let mut bn = String::new();
    let mut out = Vec::new();
    for r in raws {
        if let Some(b) = r.bn {
            bn = b;
        }
        let name = format!("{bn}{}", r.n.unwrap_or_default());
        out.push(
            name.parse()
                .map_err(|_| malformed("SenML", format!("bad name `{name}`")))?,
        );
    }
    Ok(out)
}

// ---- JSON ------------------------------------------------------------------

fn json_number(v: &serde_json::Value) -> Option<RawValue> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(RawValue::Int(i128::from(i)));
    }
    if let Some(u) = n.as_u64() {
        return Some(RawValue::Int(i128::from(u)));
    }
    n.as_f64().map(RawValue::Float)
}

fn parse_json(buf: &[u8]) -> Result<Vec<Raw>> {
    let what = "SenML-JSON";
    let doc: serde_json::Value = serde_json::from_slice(buf).map_err(|e| malformed(what, e.to_string()))?;
    let arr = doc.as_array().ok_or_else(|| malformed(what, "not an array"))?;
    arr.iter().map(|rec| json_record(rec, what, false)).collect()
}

/// One record of SenML-JSON, or (legacy) of LwM2M 1.0 JSON's `e` array.
fn json_record(rec: &serde_json::Value, what: &'static str, legacy: bool) -> Result<Raw> {
    let obj = rec
        .as_object()
        .ok_or_else(|| malformed(what, "record is not an object"))?;
    let mut r = Raw::default();
    let num = |v: &serde_json::Value| v.as_f64().ok_or_else(|| malformed(what, "time is not a number"));
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| malformed(what, "expected a string"))
    };
    for (k, v) in obj {
        match (k.as_str(), legacy) {
            ("bn", _) => r.bn = Some(text(v)?),
            ("bt", _) => r.bt = Some(num(v)?),
            ("n", _) => r.n = Some(text(v)?),
            ("t", _) => r.t = Some(num(v)?),
            ("v", _) => r.value = Some(json_number(v).ok_or_else(|| malformed(what, "v is not a number"))?),
            ("vs", false) | ("sv", true) => r.value = Some(RawValue::Str(text(v)?)),
            ("vb", false) | ("bv", true) => {
                r.value = Some(RawValue::Bool(
                    v.as_bool().ok_or_else(|| malformed(what, "vb is not a boolean"))?,
                ))
            }
            ("vd", false) => {
                let d = URL_SAFE_NO_PAD
                    .decode(text(v)?.trim_end_matches('='))
                    .map_err(|_| malformed(what, "vd is not base64url"))?;
                r.value = Some(RawValue::Data(d));
            }
            ("vlo", false) | ("ov", true) => r.value = Some(RawValue::ObjLnk(text(v)?)),
            _ => {} // unknown labels are ignored (RFC 8428 §4.4) unless ending in `_`
        }
        if k.ends_with('_') {
            return Err(malformed(what, format!("mandatory-to-understand label `{k}`")));
        }
    }
    Ok(r)
}

/// Decode SenML-JSON (110).
pub fn decode_json(buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    resolve(parse_json(buf)?, models, "SenML-JSON")
}

/// Decode LwM2M 1.0 JSON (11543): `{"bn": …, "bt": …, "e": [ … ]}`.
pub fn decode_legacy_json(base: &ResourcePath, buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    let what = "LwM2M JSON";
    let doc: serde_json::Value = serde_json::from_slice(buf).map_err(|e| malformed(what, e.to_string()))?;
    let obj = doc.as_object().ok_or_else(|| malformed(what, "not an object"))?;
    let bn = match obj.get("bn") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| malformed(what, "bn is not a string"))?
            .to_string(),
        None => format!("{base}/"),
    };
    let bt = obj.get("bt").and_then(serde_json::Value::as_f64);
    let e = obj
        .get("e")
        .and_then(|e| e.as_array())
        .ok_or_else(|| malformed(what, "no `e` array"))?;
    let mut raws: Vec<Raw> = e.iter().map(|r| json_record(r, what, true)).collect::<Result<_>>()?;
    if let Some(first) = raws.first_mut() {
        first.bn = Some(bn);
        first.bt = bt;
    }
    resolve(raws, models, what)
}

fn json_value(v: &Value) -> (&'static str, serde_json::Value) {
    match v {
        Value::String(s) | Value::CoreLink(s) => ("vs", s.clone().into()),
        Value::Integer(i) | Value::Time(i) => ("v", (*i).into()),
        Value::Unsigned(u) => ("v", (*u).into()),
        Value::Float(f) => (
            "v",
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        ),
        Value::Boolean(b) => ("vb", (*b).into()),
        Value::Opaque(d) => ("vd", URL_SAFE_NO_PAD.encode(d).into()),
        Value::ObjectLink(o, i) => ("vlo", format!("{o}:{i}").into()),
    }
}

/// Encode records as SenML-JSON with full names (no base name).
pub fn encode_json(records: &[Record]) -> Vec<u8> {
    let arr: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("n".into(), r.path.to_string().into());
            let (k, v) = json_value(&r.value);
            m.insert(k.into(), v);
            if let Some(t) = r.time {
                m.insert("t".into(), t.into());
            }
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::to_vec(&arr).expect("JSON encode")
}

/// A list of names only, for Read-Composite / Observe-Composite requests.
pub fn encode_json_names(paths: &[ResourcePath]) -> Vec<u8> {
    let arr: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| serde_json::json!({ "n": p.to_string() }))
        .collect();
    serde_json::to_vec(&arr).expect("JSON encode")
}

// ---- CBOR ------------------------------------------------------------------

/// SenML-CBOR labels (RFC 8428 §6, table 6).
mod label {
    pub const BN: i128 = -2;
    pub const BT: i128 = -3;
    pub const N: i128 = 0;
    pub const V: i128 = 2;
    pub const VS: i128 = 3;
    pub const VB: i128 = 4;
    pub const T: i128 = 6;
    pub const VD: i128 = 8;
}

fn cbor_f64(v: &Cbor) -> Option<f64> {
    match v {
        Cbor::Integer(i) => Some(i128::from(*i) as f64),
        Cbor::Float(f) => Some(*f),
        _ => None,
    }
}

/// Decode exactly one CBOR item (nesting bounded by ciborium's recursion
/// limit); bytes after it make the payload malformed.
pub(crate) fn cbor_from_slice(buf: &[u8], what: &'static str) -> Result<Cbor> {
    let mut rest = buf;
    let v: Cbor = ciborium::de::from_reader(&mut rest).map_err(|e| malformed(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(what, format!("{} bytes after the CBOR item", rest.len())));
    }
    Ok(v)
}

fn parse_cbor(buf: &[u8]) -> Result<Vec<Raw>> {
    let what = "SenML-CBOR";
    let doc = cbor_from_slice(buf, what)?;
    let arr = doc.as_array().ok_or_else(|| malformed(what, "not an array"))?;
    let mut out = Vec::with_capacity(arr.len());
    for rec in arr {
        let map = rec.as_map().ok_or_else(|| malformed(what, "record is not a map"))?;
        let mut r = Raw::default();
        for (k, v) in map {
            let text = || {
                v.as_text()
                    .map(str::to_string)
                    .ok_or_else(|| malformed(what, "expected text"))
            };
            match k {
                Cbor::Integer(i) => match i128::from(*i) {
                    label::BN => r.bn = Some(text()?),
                    label::BT => r.bt = Some(cbor_f64(v).ok_or_else(|| malformed(what, "bt is not a number"))?),
                    label::N => r.n = Some(text()?),
                    label::T => r.t = Some(cbor_f64(v).ok_or_else(|| malformed(what, "t is not a number"))?),
                    label::V => {
                        r.value = Some(match v {
                            Cbor::Integer(i) => RawValue::Int(i128::from(*i)),
                            Cbor::Float(f) => RawValue::Float(*f),
                            _ => return Err(malformed(what, "v is not a number")),
                        })
                    }
                    label::VS => r.value = Some(RawValue::Str(text()?)),
                    label::VB => {
                        r.value = Some(RawValue::Bool(
                            v.as_bool().ok_or_else(|| malformed(what, "vb is not a boolean"))?,
                        ))
                    }
                    label::VD => {
                        r.value = Some(RawValue::Data(
                            v.as_bytes()
                                .cloned()
                                .ok_or_else(|| malformed(what, "vd is not a byte string"))?,
                        ))
                    }
                    _ => {}
                },
                Cbor::Text(t) if t == "vlo" => r.value = Some(RawValue::ObjLnk(text()?)),
                Cbor::Text(t) if t.ends_with('_') => {
                    return Err(malformed(what, format!("mandatory-to-understand label `{t}`")));
                }
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Decode SenML-CBOR (112).
pub fn decode_cbor(buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    resolve(parse_cbor(buf)?, models, "SenML-CBOR")
}

fn cbor_value(v: &Value) -> (Cbor, Cbor) {
    let l = |x: i128| Cbor::Integer(Integer::try_from(x).expect("small label"));
    match v {
        Value::String(s) | Value::CoreLink(s) => (l(label::VS), Cbor::Text(s.clone())),
        Value::Integer(i) | Value::Time(i) => (l(label::V), Cbor::Integer((*i).into())),
        Value::Unsigned(u) => (l(label::V), Cbor::Integer((*u).into())),
        Value::Float(f) => (l(label::V), Cbor::Float(*f)),
        Value::Boolean(b) => (l(label::VB), Cbor::Bool(*b)),
        Value::Opaque(d) => (l(label::VD), Cbor::Bytes(d.clone())),
        Value::ObjectLink(o, i) => (Cbor::Text("vlo".into()), Cbor::Text(format!("{o}:{i}"))),
    }
}

fn cbor_to_vec(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("CBOR encode into a Vec");
    out
}

/// Encode records as SenML-CBOR with full names.
pub fn encode_cbor(records: &[Record]) -> Vec<u8> {
    let n = Cbor::Integer(Integer::from(0u8));
    let arr = records
        .iter()
        .map(|r| {
            let mut m = vec![(n.clone(), Cbor::Text(r.path.to_string())), cbor_value(&r.value)];
            if let Some(t) = r.time {
                m.push((Cbor::Integer(Integer::from(6u8)), Cbor::Float(t)));
            }
            Cbor::Map(m)
        })
        .collect();
    cbor_to_vec(&Cbor::Array(arr))
}

/// A list of names only, for Read-Composite / Observe-Composite requests.
pub fn encode_cbor_names(paths: &[ResourcePath]) -> Vec<u8> {
    let n = Cbor::Integer(Integer::from(0u8));
    let arr = paths
        .iter()
        .map(|p| Cbor::Map(vec![(n.clone(), Cbor::Text(p.to_string()))]))
        .collect();
    cbor_to_vec(&Cbor::Array(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ResourcePath {
        s.parse().unwrap()
    }

    #[test]
    fn json_base_name_and_types() {
        let m = Models::embedded();
        let doc = br#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},{"n":"9","v":95},
            {"n":"13","v":1367491215},{"bn":"/3303/0/","n":"5700","v":24.5,"t":-5},{"n":"5701","vs":"Cel"}]"#;
        let recs = decode_json(doc, &m).unwrap();
        assert_eq!(recs[0].path, p("/3/0/0"));
        assert_eq!(recs[1].value, Value::Integer(95));
        assert_eq!(recs[2].value, Value::Time(1367491215));
        assert_eq!(recs[3].value, Value::Float(24.5));
        assert_eq!(recs[3].time, Some(-5.0));
        assert_eq!(recs[4].path, p("/3303/0/5701"));
    }

    #[test]
    fn round_trips() {
        let m = Models::embedded();
        let recs = vec![
            Record {
                path: p("/3/0/0"),
                value: Value::String("x".into()),
                time: None,
            },
            Record {
                path: p("/3/0/9"),
                value: Value::Integer(-3),
                time: Some(1.7e9),
            },
            Record {
                path: p("/3303/0/5700"),
                value: Value::Float(21.25),
                time: None,
            },
            Record {
                path: p("/1/0/6"),
                value: Value::Boolean(true),
                time: None,
            },
            Record {
                path: p("/5/0/0"),
                value: Value::Opaque(vec![0, 1, 255]),
                time: None,
            },
            Record {
                path: p("/1/0/10"),
                value: Value::ObjectLink(11, 0),
                time: None,
            },
        ];
        assert_eq!(decode_json(&encode_json(&recs), &m).unwrap(), recs);
        assert_eq!(decode_cbor(&encode_cbor(&recs), &m).unwrap(), recs);
    }

    #[test]
    fn names_only() {
        let paths = vec![p("/3/0/9"), p("/3303/0")];
        assert_eq!(
            names(super::super::SENML_CBOR, &encode_cbor_names(&paths)).unwrap(),
            paths
        );
        assert_eq!(
            names(super::super::SENML_JSON, &encode_json_names(&paths)).unwrap(),
            paths
        );
    }

    #[test]
    fn legacy_json() {
        let m = Models::embedded();
        let doc = br#"{"bn":"/3/0/","e":[{"n":"0","sv":"Open Mobile Alliance"},{"n":"6/0","v":1},{"n":"9","v":100}]}"#;
        let recs = decode_legacy_json(&p("/3/0"), doc, &m).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].path, p("/3/0/6/0"));
        assert_eq!(recs[2].value, Value::Integer(100));
    }

    #[test]
    fn rejects_bad_documents() {
        let m = Models::embedded();
        assert!(decode_json(b"{}", &m).is_err());
        assert!(decode_json(br#"[{"n":"/x","v":1}]"#, &m).is_err());
        assert!(decode_json(br#"[{"n":"/3/0/0","v":"s"}]"#, &m).is_err());
        assert!(decode_json(br#"[{"n":"/3/0/0","v":1,"x_":1}]"#, &m).is_err());
        assert!(decode_cbor(&[0x81, 0xA1, 0x00], &m).is_err());
        assert!(decode_cbor(&[0xFF], &m).is_err());
        assert!(decode_cbor(&[0x80, 0x00], &m).is_err(), "trailing bytes");
    }
}
