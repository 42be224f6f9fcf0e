//! Property tests for every decoder that reads device bytes: arbitrary
//! input never panics, and each encoder round-trips through its decoder.
//! `make test` runs them with PROPTEST_CASES cases each.

use proptest::prelude::*;

use super::*;
use crate::coap::Message;
use crate::lwm2m::path::{Record, ResourcePath, Value};

fn models() -> Models {
    Models::embedded()
}

/// Paths in objects the model does not know, so decoders keep the wire
/// type. Resources from 150 up are multiple-instance (a resource is one or
/// the other, never both).
fn unknown_path() -> impl Strategy<Value = ResourcePath> {
    (30000u16..30003, 0u16..3, 0u16..300, 0u16..5).prop_map(|(o, i, r, ri)| {
        if r >= 150 {
            ResourcePath::new(&[o, i, r, ri]).unwrap()
        } else {
            ResourcePath::new(&[o, i, r]).unwrap()
        }
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,40}".prop_map(Value::String),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("finite, non-integral", |f| f.is_finite() && f.fract() != 0.0)
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Opaque),
        (any::<u16>(), any::<u16>()).prop_map(|(o, i)| Value::ObjectLink(o, i)),
    ]
}

fn records() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::btree_map(unknown_path(), value(), 1..12).prop_map(|m| {
        m.into_iter()
            .map(|(path, value)| Record {
                path,
                value,
                time: None,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn coap_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(m) = Message::decode(&bytes) {
            // Whatever decodes re-encodes and decodes to the same message.
            prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let m = models();
        let base = ResourcePath::new(&[3, 0]).unwrap();
        for f in [TEXT_PLAIN, OPAQUE, CBOR, SENML_JSON, SENML_CBOR, TLV, LWM2M_JSON, LWM2M_CBOR, 9999] {
            let _ = decode(f, &base, &bytes, &m);
            let _ = decode(f, &ResourcePath::new(&[3, 0, 9]).unwrap(), &bytes, &m);
        }
        let _ = senml::names(SENML_CBOR, &bytes);
        let _ = link_format::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn link_format_text_never_panics(text in "[<>;,=\"\\\\/a-z0-9 ]{0,80}") {
        if let Ok(links) = link_format::parse(&text) {
            prop_assert_eq!(link_format::parse(&link_format::format(&links)).unwrap(), links);
        }
    }

    #[test]
    fn senml_round_trips(recs in records()) {
        let m = models();
        prop_assert_eq!(senml::decode_json(&senml::encode_json(&recs), &m).unwrap(), recs.clone());
        prop_assert_eq!(senml::decode_cbor(&senml::encode_cbor(&recs), &m).unwrap(), recs);
    }

    #[test]
    fn lwm2m_cbor_round_trips(recs in records()) {
        // An object link is a text string in LwM2M-CBOR; only the model can
        // tell it from a String, and these paths are outside the model.
        let recs: Vec<Record> = recs.into_iter().filter(|r| !matches!(r.value, Value::ObjectLink(..))).collect();
        prop_assert_eq!(lwm2m_cbor::decode(&lwm2m_cbor::encode(&recs), &models()).unwrap(), recs);
    }

    #[test]
    fn tlv_round_trips(recs in records()) {
        let m = models();
        let object = ResourcePath::new(&[recs[0].path.object().unwrap()]).unwrap();
        let same_object: Vec<Record> = recs.into_iter().filter(|r| r.path.starts_with(&object)).collect();
        let bytes = tlv::encode(&object, &same_object, &m).unwrap();
        let back = tlv::decode(&object, &bytes, &m).unwrap();
        // TLV is untyped: an unknown resource decodes as its bytes.
        let expect: Vec<(ResourcePath, Vec<u8>)> = same_object.iter().map(|r| (r.path, tlv::value_bytes(&r.value))).collect();
        let got: Vec<(ResourcePath, Vec<u8>)> = back.iter().map(|r| (r.path, tlv::value_bytes(&r.value))).collect();
        let mut expect_sorted = expect.clone();
        expect_sorted.sort();
        let mut got_sorted = got;
        got_sorted.sort();
        prop_assert_eq!(got_sorted, expect_sorted);
    }
}
