//! Range requests and conditional headers for one firmware image, sans-I/O
//! (RFC 9110 §13.1.5 If-Range, §14 Range, §15.3.7 206, §15.5.17 416).
//!
//! nRF Connect SDK's downloader asks for `bytes=a-b` fragments of about
//! 2 KB on one keep-alive connection and resumes with `bytes=N-`; some
//! clients clamp the last byte to the size instead of size − 1 (RFC 9110
//! says to clamp, not to answer 416). A resume at offset == size is the
//! nRF "FOTA doom loop": answered 416 and flagged for FOTA to act on.

use crate::datetime;

/// What is served: its size and validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representation {
    pub size: u64,
    /// Strong entity tag, quoted, from the image's SHA-256.
    pub etag: String,
    /// Unix seconds of the upload.
    pub last_modified: i64,
}

impl Representation {
    /// 128 bits of the SHA-256 are plenty for a validator and keep the
    /// response head small (a 2 KB range response must fit 2303 bytes).
    pub fn new(size: u64, sha256_hex: &str, last_modified: i64) -> Representation {
        Representation {
            size,
            etag: format!("\"{}\"", &sha256_hex[..32.min(sha256_hex.len())]),
            last_modified,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole image.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416; `doom_loop` when the client asked to resume at the very end.
    Unsatisfiable { doom_loop: bool },
}

/// Decide what a GET (or HEAD) gets. Only GET honours Range (§14.2).
pub fn plan(is_get: bool, range: Option<&str>, if_range: Option<&str>, rep: &Representation) -> Plan {
    let Some(range) = range.filter(|_| is_get) else {
        return Plan::Full;
    };
    if let Some(cond) = if_range
        && !if_range_matches(cond.trim(), rep)
    {
        return Plan::Full;
    }
    let Some(spec) = strip_prefix_ci(range.trim(), "bytes=") else {
        return Plan::Full; // unknown range unit: ignore the header
    };
    if spec.contains(',') {
        // Several ranges would need multipart/byteranges; ignoring Range is
        // allowed (§14.2) and devices never ask for it.
        return Plan::Full;
    }
    let (first, last) = match spec.trim().split_once('-') {
        Some(x) => x,
        None => return Plan::Full,
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let size = rep.size;
    match (num(first), first.trim().is_empty(), num(last), last.trim().is_empty()) {
        // suffix-range: the last n bytes
        (None, true, Some(n), false) => {
            if n == 0 || size == 0 {
                Plan::Unsatisfiable { doom_loop: false }
            } else {
                Plan::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (Some(a), false, b, open) if open || b.is_some() => {
            if let Some(b) = b
                && b < a
            {
                return Plan::Full; // invalid range-spec: ignore
            }
            if a >= size {
                return Plan::Unsatisfiable { doom_loop: a == size };
            }
            // An over-long last-byte-pos is clamped (RFC 9110 §14.1.2).
            let end = b.map_or(size - 1, |b| b.min(size - 1));
            Plan::Partial { start: a, end }
        }
        _ => Plan::Full,
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`, not indexing: the header may hold any UTF-8, and the prefix's
    // length need not fall on a character boundary of it (found by the
    // http_range fuzzer: a multi-byte character there panicked).
    s.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

/// §13.1.5: an entity tag must match strongly; a date must equal
/// Last-Modified exactly.
fn if_range_matches(cond: &str, rep: &Representation) -> bool {
    if cond.starts_with('"') {
        cond == rep.etag
    } else if cond.starts_with("W/") {
        false
    } else {
        datetime::parse_http_date(cond) == Some(rep.last_modified)
    }
}

/// Status and headers of a response, before hyper adds `date` and its
/// framing. Kept to the minimum the device and RFC 9110 need.
pub fn head(plan: Plan, rep: &Representation) -> (u16, Vec<(&'static str, String)>) {
    let mut h: Vec<(&'static str, String)> = Vec::with_capacity(6);
    let status = match plan {
        Plan::Full => {
            h.push(("content-length", rep.size.to_string()));
            h.push(("accept-ranges", "bytes".into()));
            h.push(("last-modified", datetime::http_date(rep.last_modified)));
            200
        }
        Plan::Partial { start, end } => {
            h.push(("content-length", (end - start + 1).to_string()));
            h.push(("content-range", format!("bytes {start}-{end}/{}", rep.size)));
            206
        }
        Plan::Unsatisfiable { .. } => {
            h.push(("content-length", "0".into()));
            h.push(("content-range", format!("bytes */{}", rep.size)));
            return (416, h);
        }
    };
    h.push(("content-type", "application/octet-stream".into()));
    h.push(("etag", rep.etag.clone()));
    (status, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Range header with a multi-byte character where `bytes=` would
    /// end is ignored, not a panic (tests/data/fuzz/http_range/char-boundary).
    #[test]
    fn a_non_ascii_range_header_is_ignored() {
        let rep = Representation::new(1000, "0123456789abcdef0123456789abcdef", 0);
        assert_eq!(plan(true, Some("byt\u{e9}s=0-1"), None, &rep), Plan::Full);
        assert_eq!(plan(true, Some("bytes\u{e9}0-1"), None, &rep), Plan::Full);
    }

    fn rep() -> Representation {
        Representation::new(524_288, &"ab".repeat(32), 1_795_400_000)
    }

    #[test]
    fn byte_ranges() {
        let r = rep();
        let p = |range: &str| plan(true, Some(range), None, &r);
        assert_eq!(p("bytes=0-2047"), Plan::Partial { start: 0, end: 2047 });
        assert_eq!(
            p("bytes=522240-"),
            Plan::Partial {
                start: 522_240,
                end: 524_287
            }
        );
        assert_eq!(
            p("bytes=-100"),
            Plan::Partial {
                start: 524_188,
                end: 524_287
            }
        );
        assert_eq!(p("bytes=-9999999"), Plan::Partial { start: 0, end: 524_287 });
        // Older clients clamp to the size, not size − 1: clamp, no 416.
        assert_eq!(
            p("bytes=522240-524288"),
            Plan::Partial {
                start: 522_240,
                end: 524_287
            }
        );
        assert_eq!(p("BYTES=0-0"), Plan::Partial { start: 0, end: 0 });
        assert_eq!(p("bytes=524288-"), Plan::Unsatisfiable { doom_loop: true });
        assert_eq!(p("bytes=600000-600001"), Plan::Unsatisfiable { doom_loop: false });
        assert_eq!(p("bytes=-0"), Plan::Unsatisfiable { doom_loop: false });
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(p(ignored), Plan::Full, "{ignored}");
        }
        assert_eq!(
            plan(false, Some("bytes=0-1"), None, &r),
            Plan::Full,
            "HEAD ignores Range"
        );
        assert_eq!(plan(true, None, None, &r), Plan::Full);
    }

    #[test]
    fn if_range() {
        let r = rep();
        let etag = r.etag.clone();
        let date = datetime::http_date(r.last_modified);
        assert_eq!(
            plan(true, Some("bytes=0-1"), Some(&etag), &r),
            Plan::Partial { start: 0, end: 1 }
        );
        assert_eq!(
            plan(true, Some("bytes=0-1"), Some(&date), &r),
            Plan::Partial { start: 0, end: 1 }
        );
        assert_eq!(plan(true, Some("bytes=0-1"), Some("\"other\""), &r), Plan::Full);
        assert_eq!(
            plan(true, Some("bytes=0-1"), Some(&format!("W/{etag}")), &r),
            Plan::Full
        );
        assert_eq!(
            plan(true, Some("bytes=0-1"), Some("Sun, 06 Nov 1994 08:49:37 GMT"), &r),
            Plan::Full
        );
    }

    #[test]
    fn heads_are_small() {
        let r = rep();
        let (status, h) = head(Plan::Partial { start: 0, end: 2047 }, &r);
        assert_eq!(status, 206);
        // Status line, these headers, hyper's `date` (37 bytes), blank line.
        let bytes = "HTTP/1.1 206 Partial Content\r\n".len()
            + h.iter().map(|(k, v)| k.len() + 2 + v.len() + 2).sum::<usize>()
            + 37
            + 2;
        assert!(bytes + 2048 <= 2303, "{bytes} bytes of head");
        let (status, h) = head(Plan::Unsatisfiable { doom_loop: true }, &r);
        assert_eq!(status, 416);
        assert!(h.contains(&("content-range", "bytes */524288".into())));
    }
}
