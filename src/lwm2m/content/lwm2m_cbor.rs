//! LwM2M-CBOR, content format 11544 (LwM2M 1.2 Core §7.4.6): nested CBOR
//! maps keyed by path ids, or by arrays of ids that stand for several levels.

use ciborium::value::{Integer, Value as Cbor};

use crate::error::{Error, Result};
use crate::lwm2m::content::senml::cbor_from_slice;
use crate::lwm2m::model::{Models, ResourceType};
use crate::lwm2m::path::{Record, ResourcePath, Value};

const WHAT: &str = "LwM2M-CBOR";

fn malformed(reason: impl Into<String>) -> Error {
    Error::malformed(WHAT, reason)
}

fn id(v: &Cbor) -> Result<u16> {
    match v {
        Cbor::Integer(i) => u16::try_from(i128::from(*i)).map_err(|_| malformed("path id out of range")),
        _ => Err(malformed("path key is not an unsigned integer")),
    }
}

/// Decode a payload; keys are relative to the root (the spec's examples give
/// the full path as the first key).
pub fn decode(buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    let doc = cbor_from_slice(buf, WHAT)?;
    let mut out = Vec::new();
    walk(&ResourcePath::ROOT, &doc, models, &mut out)?;
    Ok(out)
}

/// A single CBOR value (content format 60) for the resource at `path`.
pub fn decode_single(path: &ResourcePath, buf: &[u8], models: &Models) -> Result<Vec<Record>> {
    let v = cbor_from_slice(buf, "CBOR")?;
    if matches!(v, Cbor::Map(_) | Cbor::Array(_)) {
        return Err(malformed("plain CBOR must be a single value"));
    }
    let mut out = Vec::new();
    leaf(path, &v, models, &mut out)?;
    Ok(out)
}

fn walk(at: &ResourcePath, v: &Cbor, models: &Models, out: &mut Vec<Record>) -> Result<()> {
    let Cbor::Map(entries) = v else {
        return leaf(at, v, models, out);
    };
    for (k, child) in entries {
        let mut path = *at;
        let ids = match k {
            Cbor::Array(parts) => parts.iter().map(id).collect::<Result<Vec<_>>>()?,
            k => vec![id(k)?],
        };
        for i in ids {
            path = path.child(i).ok_or_else(|| malformed("path deeper than 4 levels"))?;
        }
        walk(&path, child, models, out)?;
    }
    Ok(())
}

fn leaf(path: &ResourcePath, v: &Cbor, models: &Models, out: &mut Vec<Record>) -> Result<()> {
    if path.depth() < 3 {
        return Err(malformed(format!("value at {path}, above resource level")));
    }
    let rtype = models.resource(path).map(|m| m.rtype);
    let value = match (v, rtype) {
        (Cbor::Integer(i), Some(ResourceType::UnsignedInteger)) => {
            Value::Unsigned(u64::try_from(i128::from(*i)).map_err(|_| malformed("negative unsigned"))?)
        }
        (Cbor::Integer(i), Some(ResourceType::Time)) => {
            Value::Time(i64::try_from(i128::from(*i)).map_err(|_| malformed("time out of range"))?)
        }
        (Cbor::Integer(i), _) => match i64::try_from(i128::from(*i)) {
            Ok(x) => Value::Integer(x),
            Err(_) => Value::Unsigned(u64::try_from(i128::from(*i)).map_err(|_| malformed("integer out of range"))?),
        },
        (Cbor::Tag(1, inner), _) => match inner.as_ref() {
            Cbor::Integer(i) => Value::Time(i64::try_from(i128::from(*i)).map_err(|_| malformed("time out of range"))?),
            _ => return Err(malformed("tag 1 without an integer")),
        },
        (Cbor::Float(f), _) => Value::Float(*f),
        (Cbor::Bool(b), _) => Value::Boolean(*b),
        (Cbor::Bytes(b), _) => Value::Opaque(b.clone()),
        (Cbor::Text(s), Some(ResourceType::Objlnk)) => {
            let (o, i) = s.split_once(':').ok_or_else(|| malformed("bad object link"))?;
            Value::ObjectLink(
                o.parse().map_err(|_| malformed("bad object link"))?,
                i.parse().map_err(|_| malformed("bad object link"))?,
            )
        }
        (Cbor::Text(s), Some(ResourceType::Corelnk)) => Value::CoreLink(s.clone()),
        (Cbor::Text(s), _) => Value::String(s.clone()),
        (other, _) => return Err(malformed(format!("unsupported value {other:?}"))),
    };
    out.push(Record {
        path: *path,
        value,
        time: None,
    });
    Ok(())
}

/// Encode records as one map keyed by each record's full path.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let entries = records
        .iter()
        .map(|r| {
            let key = Cbor::Array(r.path.ids().iter().map(|i| Cbor::Integer(Integer::from(*i))).collect());
            let v = match &r.value {
                Value::String(s) | Value::CoreLink(s) => Cbor::Text(s.clone()),
                Value::Integer(i) => Cbor::Integer((*i).into()),
                Value::Time(i) => Cbor::Tag(1, Box::new(Cbor::Integer((*i).into()))),
                Value::Unsigned(u) => Cbor::Integer((*u).into()),
                Value::Float(f) => Cbor::Float(*f),
                Value::Boolean(b) => Cbor::Bool(*b),
                Value::Opaque(d) => Cbor::Bytes(d.clone()),
                Value::ObjectLink(o, i) => Cbor::Text(format!("{o}:{i}")),
            };
            (key, v)
        })
        .collect();
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Cbor::Map(entries), &mut out).expect("CBOR encode into a Vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_array_keys() {
        let m = Models::embedded();
        // {3: {0: {0: "ACME", 9: 80, 13: 1(1700000000)}}, [3303, 0, 5700]: 21.5}
        let doc = Cbor::Map(vec![
            (
                Cbor::Integer(3.into()),
                Cbor::Map(vec![(
                    Cbor::Integer(0.into()),
                    Cbor::Map(vec![
                        (Cbor::Integer(0.into()), Cbor::Text("ACME".into())),
                        (Cbor::Integer(9.into()), Cbor::Integer(80.into())),
                        (
                            Cbor::Integer(13.into()),
                            Cbor::Tag(1, Box::new(Cbor::Integer(1_700_000_000.into()))),
                        ),
                    ]),
                )]),
            ),
            (
                Cbor::Array(vec![
                    Cbor::Integer(3303.into()),
                    Cbor::Integer(0.into()),
                    Cbor::Integer(5700.into()),
                ]),
                Cbor::Float(21.5),
            ),
        ]);
        let mut buf = Vec::new();
        ciborium::ser::into_writer(&doc, &mut buf).unwrap();
        let recs = decode(&buf, &m).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].value, Value::String("ACME".into()));
        assert_eq!(recs[2].value, Value::Time(1_700_000_000));
        assert_eq!(recs[3].path.to_string(), "/3303/0/5700");
        assert_eq!(decode(&encode(&recs), &m).unwrap(), recs);
    }

    #[test]
    fn plain_cbor_single_value() {
        let m = Models::embedded();
        let p: ResourcePath = "/3/0/9".parse().unwrap();
        let recs = decode_single(&p, &[0x18, 0x50], &m).unwrap();
        assert_eq!(
            recs,
            vec![Record {
                path: p,
                value: Value::Integer(80),
                time: None
            }]
        );
        assert!(decode_single(&p, &[0xA0], &m).is_err());
        assert!(decode_single(&"/3/0".parse().unwrap(), &[0x01], &m).is_err());
    }

    #[test]
    fn rejects_values_above_resources() {
        let m = Models::embedded();
        let mut buf = Vec::new();
        ciborium::ser::into_writer(
            &Cbor::Map(vec![(Cbor::Integer(3.into()), Cbor::Integer(1.into()))]),
            &mut buf,
        )
        .unwrap();
        assert!(decode(&buf, &m).is_err());
    }
}
