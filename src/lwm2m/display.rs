//! Values as an operator reads them: coded resources in words (the
//! enumerations of the OMA objects, which the embedded DDF files carry
//! only as prose), times as dates, UCUM units as symbols; and the order a
//! person expects for paths and endpoint names (`/3/0/3` before `/3/0/10`,
//! `urn:sim:2` before `urn:sim:10`).

use std::cmp::Ordering;

use crate::lwm2m::model::{Models, ResourceType};
use crate::lwm2m::{ResourcePath, Value};

/// The enumerated values of a resource: (value, meaning).
pub type Enumeration = &'static [(i64, &'static str)];

/// Core Appendix E.4 (Device, Object 3), resource 6 Available Power Sources.
const POWER_SOURCE: Enumeration = &[
    (0, "DC power"),
    (1, "internal battery"),
    (2, "external battery"),
    (3, "fuel cell"),
    (4, "power over Ethernet"),
    (5, "USB"),
    (6, "AC (mains) power"),
    (7, "solar"),
];

/// Core Appendix E.4, resource 11 Error Code.
const ERROR_CODE: Enumeration = &[
    (0, "no error"),
    (1, "low battery power"),
    (2, "external power supply off"),
    (3, "GPS module failure"),
    (4, "low received signal strength"),
    (5, "out of memory"),
    (6, "SMS failure"),
    (7, "IP connectivity failure"),
    (8, "peripheral malfunction"),
];

/// Core Appendix E.4, resource 20 Battery Status.
const BATTERY_STATUS: Enumeration = &[
    (0, "normal"),
    (1, "charging"),
    (2, "charge complete"),
    (3, "damaged"),
    (4, "low battery"),
    (5, "not installed"),
    (6, "unknown"),
];

/// Core Appendix E.5 (Connectivity Monitoring, Object 4), resources 0
/// Network Bearer and 1 Available Network Bearer.
const NETWORK_BEARER: Enumeration = &[
    (0, "GSM"),
    (1, "TD-SCDMA"),
    (2, "WCDMA"),
    (3, "CDMA2000"),
    (4, "WiMAX"),
    (5, "LTE-TDD"),
    (6, "LTE-FDD"),
    (7, "NB-IoT"),
    (21, "WLAN"),
    (22, "Bluetooth"),
    (23, "IEEE 802.15.4"),
    (41, "Ethernet"),
    (42, "DSL"),
    (43, "PLC"),
];

/// Core Appendix E.6 (Firmware Update, Object 5), resource 3 State.
const FIRMWARE_STATE: Enumeration = &[(0, "idle"), (1, "downloading"), (2, "downloaded"), (3, "updating")];

/// Core Appendix E.6, resource 5 Update Result.
pub const UPDATE_RESULT: Enumeration = &[
    (0, "initial value"),
    (1, "firmware updated successfully"),
    (2, "not enough flash memory for the new package"),
    (3, "out of RAM during the download"),
    (4, "connection lost during the download"),
    (5, "integrity check failure of the new package"),
    (6, "unsupported package type"),
    (7, "invalid URI"),
    (8, "firmware update failed"),
    (9, "unsupported protocol"),
];

/// Core Appendix E.6, resource 8 Firmware Update Protocol Support.
const UPDATE_PROTOCOL: Enumeration = &[
    (0, "CoAP"),
    (1, "CoAPS"),
    (2, "HTTP 1.1"),
    (3, "HTTPS 1.1"),
    (4, "CoAP over TCP"),
    (5, "CoAP over TLS"),
];

/// Core Appendix E.6, resource 9 Firmware Update Delivery Method.
const DELIVERY_METHOD: Enumeration = &[(0, "pull only"), (1, "push only"), (2, "pull and push")];

/// The enumeration of resource `resource` of object `object`, if it has one.
pub fn enumeration(object: u16, resource: u16) -> Option<Enumeration> {
    Some(match (object, resource) {
        (3, 6) => POWER_SOURCE,
        (3, 11) => ERROR_CODE,
        (3, 20) => BATTERY_STATUS,
        (4, 0 | 1) => NETWORK_BEARER,
        (5, 3) => FIRMWARE_STATE,
        (5, 5) => UPDATE_RESULT,
        (5, 8) => UPDATE_PROTOCOL,
        (5, 9) => DELIVERY_METHOD,
        _ => return None,
    })
}

/// Every enumeration, for the tests that check each value is shown.
pub const ENUMERATED: &[(u16, u16)] = &[(3, 6), (3, 11), (3, 20), (4, 0), (4, 1), (5, 3), (5, 5), (5, 8), (5, 9)];

/// What `code` of `e` means; a value the specification does not define says so.
pub fn meaning(e: Enumeration, code: i64) -> &'static str {
    e.iter()
        .find(|(v, _)| *v == code)
        .map_or("a value the specification does not define", |(_, m)| m)
}

/// A device-supplied string made safe for a terminal or a log line:
/// control characters (a newline that would start a forged line, ESC
/// sequences a terminal obeys) and bidirectional formatting characters
/// (U+202E shows text reversed, Unicode UAX #9) written as `\u{…}`
/// escapes; everything else as it is.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A UCUM unit (the DDF `Units` element) as people write it.
pub fn unit_symbol(ucum: &str) -> &str {
    match ucum {
        "Cel" => "°C",
        // Percent as the registry's 1.1 definitions write it.
        "/100" => "%",
        "ug/m3" => "µg/m³",
        "[degF]" => "°F",
        "K" => "K",
        "%RH" => "% RH",
        "By" => "B",
        "KiBy" => "KiB",
        "MiBy" => "MiB",
        "kBy" => "kB",
        "mW" => "mW",
        "dB" => "dB",
        "dBm" => "dBm",
        "deg" => "°",
        "m/s2" => "m/s²",
        "m2" => "m²",
        "m3" => "m³",
        "[ppm]" => "ppm",
        "[iU]" => "IU",
        "/min" => "per minute",
        other => other,
    }
}

/// `value` of the resource at `path` as an operator reads it: the meaning
/// of an enumerated code ("charging (1)"), a time as a UTC date, a number
/// with its unit symbol.
pub fn display(models: &Models, path: &ResourcePath, value: &Value) -> String {
    let model = models.resource(path);
    let code = match value {
        Value::Integer(i) => Some(*i),
        Value::Unsigned(u) => i64::try_from(*u).ok(),
        _ => None,
    };
    if let (Some(o), Some(r), Some(code)) = (path.object(), path.resource(), code)
        && let Some(e) = enumeration(o, r)
    {
        return format!("{} ({code})", meaning(e, code));
    }
    let is_time = matches!(value, Value::Time(_)) || model.is_some_and(|m| m.rtype == ResourceType::Time);
    if is_time
        && let Some(seconds) = code.or(match value {
            Value::Time(t) => Some(*t),
            _ => None,
        })
    {
        return utc_date(seconds);
    }
    let text = value.to_text();
    match model.map(|m| unit_symbol(m.units.trim())) {
        Some(u) if !u.is_empty() && matches!(value, Value::Integer(_) | Value::Unsigned(_) | Value::Float(_)) => {
            if u.starts_with('%') {
                format!("{text}{u}")
            } else {
                format!("{text} {u}")
            }
        }
        _ => text,
    }
}

/// Seconds since 1970 as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc_date(seconds: i64) -> String {
    let s = crate::datetime::rfc3339(seconds.saturating_mul(1000));
    match s.get(..19) {
        Some(t) => format!("{} UTC", t.replace('T', " ")),
        None => s,
    }
}

/// Compare as people sort names with numbers in them: runs of digits by
/// their value, the rest by character (`/3/0/3` < `/3/0/10`,
/// `urn:sim:2` < `urn:sim:10`); names equal that way fall back to byte
/// order (`002` before `2`), so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (n, m) = (run(x), run(y));
                let trim = |s: &[u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
                let (dx, dy) = (&x[trim(&x[..n]).min(n)..n], &y[trim(&y[..m]).min(m)..m]);
                let by_value = dx.len().cmp(&dy.len()).then_with(|| dx.cmp(dy));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (x, y) = (&x[n..], &y[m..]);
            }
            (Some(c), Some(d)) if c != d => return c.cmp(d),
            _ => (x, y) = (&x[1..], &y[1..]),
        }
    }
}

/// A key whose byte order is [`natural_cmp`]'s order (ties, such as
/// `002` and `2`, broken by the name itself, as `natural_cmp` does), so a
/// database can index it and page through names in natural order: each
/// run of digits becomes its count of significant digits (two digits)
/// followed by those digits, everything else stays. A run's key starts
/// with a digit, so it compares with other characters as a digit does.
/// Runs of more than 99 significant digits keep the order of their first
/// 99 digits' count only; no endpoint has such a number.
pub fn natural_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len() + 8);
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let run = rest.bytes().take_while(u8::is_ascii_digit).count();
            let significant = rest[..run].trim_start_matches('0');
            key.push_str(&format!("{:02}", significant.len().min(99)));
            key.push_str(significant);
            rest = &rest[run..];
        } else {
            key.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    key
}

/// A CoAP response code from a device, explained (RFC 7252 §5.9, Core
/// §6.3's meanings in LwM2M).
pub fn explain_code(code: &str) -> String {
    let what = match code {
        "2.01" => "created",
        "2.02" => "deleted",
        "2.04" => "changed",
        "2.05" => "content",
        "2.31" => "continue (block-wise transfer)",
        "4.00" => "the device found the request malformed",
        "4.01" => "the device refused the server's credentials",
        "4.02" => "the device does not understand an option of the request",
        "4.03" => "the device's access control forbids this",
        "4.04" => "the device has no such object or resource",
        "4.05" => "the device does not allow this operation on that resource",
        "4.06" => "the device cannot answer in the content format asked for",
        "4.08" => "a block-wise transfer was incomplete",
        "4.12" => "a precondition failed",
        "4.13" => "the request was too large for the device",
        "4.15" => "the device does not support the content format sent",
        "5.00" => "the device failed to carry it out",
        "5.01" => "the device does not implement this",
        "5.03" => "the device is unavailable",
        _ => return code.to_string(),
    };
    format!("{code}: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enumerated_value_reads_as_words() {
        let models = Models::embedded();
        for &(o, r) in ENUMERATED {
            let e = enumeration(o, r).expect("listed");
            assert!(!e.is_empty());
            let path: ResourcePath = format!("/{o}/0/{r}").parse().unwrap();
            assert!(models.resource(&path).is_some(), "{path} is in the embedded model");
            for (code, meaning) in e {
                assert_eq!(
                    display(&models, &path, &Value::Integer(*code)),
                    format!("{meaning} ({code})"),
                    "{path}"
                );
            }
            assert!(display(&models, &path, &Value::Integer(99)).contains("does not define"));
        }
        // Resource instances of a multiple resource read the same.
        let p: ResourcePath = "/3/0/6/1".parse().unwrap();
        assert_eq!(display(&models, &p, &Value::Integer(5)), "USB (5)");
    }

    #[test]
    fn device_strings_are_printable() {
        assert_eq!(printable("urn:imei:1"), "urn:imei:1");
        assert_eq!(printable("evil\nINFO x"), "evil\\u{a}INFO x");
        assert_eq!(printable("\u{1b}]0;t\u{7}"), "\\u{1b}]0;t\\u{7}");
        assert_eq!(printable("abc\u{202E}exe"), "abc\\u{202e}exe");
        assert_eq!(printable("Gerät"), "Gerät");
    }

    #[test]
    fn times_units_and_plain_values() {
        let models = Models::embedded();
        let p = |s: &str| -> ResourcePath { s.parse().unwrap() };
        assert_eq!(
            display(&models, &p("/3/0/13"), &Value::Time(1_796_287_783)),
            "2026-12-03 08:49:43 UTC"
        );
        assert_eq!(
            display(&models, &p("/3/0/13"), &Value::Integer(0)),
            "1970-01-01 00:00:00 UTC",
            "a Time resource sent as an integer"
        );
        assert_eq!(display(&models, &p("/3303/0/5700"), &Value::Float(21.5)), "21.5 °C");
        assert_eq!(display(&models, &p("/3/0/9"), &Value::Integer(87)), "87%");
        assert_eq!(display(&models, &p("/3/0/7/0"), &Value::Integer(3800)), "3800 mV");
        assert_eq!(
            display(&models, &p("/3/0/0"), &Value::String("Nordic".into())),
            "Nordic"
        );
        assert_eq!(unit_symbol("Cel"), "°C");
        assert_eq!(unit_symbol("dBm"), "dBm");
        assert_eq!(unit_symbol("furlong"), "furlong");
    }

    #[test]
    fn natural_order() {
        let mut paths = vec!["/3/0/10", "/3/0/3", "/3/0/1", "/3303/0/5700", "/3/0/20", "/4/0/2"];
        paths.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            paths,
            ["/3/0/1", "/3/0/3", "/3/0/10", "/3/0/20", "/4/0/2", "/3303/0/5700"]
        );
        let mut eps = vec!["urn:sim:10", "urn:sim:2", "urn:sim:1", "urn:sim:002", "urn:imei:9"];
        eps.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            eps,
            ["urn:imei:9", "urn:sim:1", "urn:sim:002", "urn:sim:2", "urn:sim:10"]
        );
        assert_eq!(natural_key("urn:sim:10"), "urn:sim:0210");
        assert_eq!(natural_key("urn:sim:002"), "urn:sim:012");
        assert_eq!(natural_key("0"), "00");
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("a1", "a"), Ordering::Greater);
        assert_eq!(
            natural_cmp("99999999999999999999999", "100000000000000000000000"),
            Ordering::Less
        );
    }

    proptest::proptest! {
        /// Ordering by (key, name) is natural_cmp's order, for names of
        /// letters, separators, digits (zeros among them) and non-ASCII.
        #[test]
        fn the_natural_key_sorts_as_natural_cmp(a in "[a-c0-9:/é]{0,12}", b in "[a-c0-9:/é]{0,12}") {
            let by_key = natural_key(&a).cmp(&natural_key(&b)).then_with(|| a.cmp(&b));
            proptest::prop_assert_eq!(by_key, natural_cmp(&a, &b));
        }
    }

    #[test]
    fn coap_codes_in_words() {
        assert_eq!(explain_code("4.04"), "4.04: the device has no such object or resource");
        assert_eq!(
            explain_code("4.05"),
            "4.05: the device does not allow this operation on that resource"
        );
        assert_eq!(explain_code("5.00"), "5.00: the device failed to carry it out");
        assert_eq!(explain_code("6.66"), "6.66");
    }
}
