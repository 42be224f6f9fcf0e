//! Request bodies and query strings: `application/x-www-form-urlencoded`
//! (WHATWG URL §5) and `multipart/form-data` (RFC 7578), the two a form
//! without JavaScript can send.

use bytes::Bytes;

/// Name/value pairs, percent-decoded, `+` as space; invalid UTF-8 is
/// replaced rather than refused (a form field is never binary).
pub fn urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encode a path segment or query value (RFC 3986 §2.3 unreserved
/// characters pass).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first value of `name`.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Bytes,
}

/// The boundary parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<&str> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"'))
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// Split a buffered multipart body into parts; `None` if it is not well
/// formed. Part bodies are slices of `body` (no copy of large files).
pub fn multipart(body: &Bytes, boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut pos = find(body, d, 0)?;
    let mut parts = Vec::new();
    loop {
        pos += d.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Some(parts);
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return None;
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos)?;
        let head = std::str::from_utf8(&body[pos..head_end]).ok()?;
        let data_start = head_end + 4;
        let next = find(body, &[b"\r\n", d].concat(), data_start)?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else { continue };
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for p in v.split(';').skip(1) {
                if let Some((pk, pv)) = p.trim().split_once('=') {
                    let pv = pv.trim().trim_matches('"').to_string();
                    match pk.trim() {
                        "name" => name = Some(pv),
                        "filename" => filename = Some(pv),
                        _ => {}
                    }
                }
            }
        }
        parts.push(Part {
            name: name?,
            filename,
            data: body.slice(data_start..next),
        });
        pos = next + 2;
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_pairs_decode() {
        let p = urlencoded("a=1&b=x+y%21&c&d=%zz&e=%C3%A9&=v&f=%4");
        assert_eq!(field(&p, "b"), Some("x y!"));
        assert_eq!(field(&p, "c"), Some(""));
        assert_eq!(field(&p, "d"), Some("%zz"));
        assert_eq!(field(&p, "e"), Some("é"));
        assert_eq!(field(&p, "f"), Some("%4"));
        assert_eq!(decode(&encode("urn:imei:1 /<x>")), "urn:imei:1 /<x>");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn multipart_parts_split() {
        let ct = "multipart/form-data; boundary=----X1";
        let b = boundary(ct).unwrap();
        let body = Bytes::from_static(
            b"------X1\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n1.2.3\r\n------X1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"app.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\r\n\x02\r\n------X1--\r\n",
        );
        let parts = multipart(&body, b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "version");
        assert_eq!(&parts[0].data[..], b"1.2.3");
        assert_eq!(parts[1].filename.as_deref(), Some("app.bin"));
        assert_eq!(&parts[1].data[..], b"\x00\x01\r\n\x02");
        assert!(multipart(&Bytes::from_static(b"------X1\r\nno end"), b).is_none());
        assert!(boundary("application/json").is_none());
    }
}
