//! CoRE Link Format, content format 40 (RFC 6690 §2), as LwM2M uses it in
//! Register/Update payloads (Core §6.2.1) and Discover responses (§6.3.5).

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI-reference between `<` and `>`.
    pub target: String,
    /// Attributes in order; a value-less attribute (`;obs`) has `None`.
    pub attrs: Vec<(String, Option<String>)>,
}

impl Link {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn has_attr(&self, name: &str) -> bool {
        self.attrs.iter().any(|(k, _)| k == name)
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::malformed("link-format", reason)
}

/// Parse a link-format document. Quoted values may contain `,` and `;`.
pub fn parse(text: &str) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        rest = rest
            .strip_prefix('<')
            .ok_or_else(|| malformed("link does not start with `<`"))?;
        let end = rest.find('>').ok_or_else(|| malformed("missing `>`"))?;
        let target = rest[..end].to_string();
        rest = rest[end + 1..].trim_start();
        let mut attrs = Vec::new();
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start();
            let name_end = r.find(['=', ';', ',']).unwrap_or(r.len());
            let name = r[..name_end].trim().to_string();
            if name.is_empty() {
                return Err(malformed("empty attribute name"));
            }
            if !name.chars().all(is_parmname_char) {
                return Err(malformed(format!("attribute name {name:?} is not a token")));
            }
            let mut r = &r[name_end..];
            let value = if let Some(v) = r.strip_prefix('=') {
                if let Some(q) = v.strip_prefix('"') {
                    let (value, after) = quoted_string(q)?;
                    r = after;
                    Some(value)
                } else {
                    let e = v.find([';', ',']).unwrap_or(v.len());
                    r = &v[e..];
                    let value = v[..e].trim();
                    // ptoken (RFC 6690 §2) has no DQUOTE: `a=b"c` is an error, not a value.
                    if value.contains('"') {
                        return Err(malformed(format!("unquoted value {value:?} contains `\"`")));
                    }
                    Some(value.to_string())
                }
            } else {
                None
            };
            attrs.push((name, value));
            rest = r.trim_start();
        }
        links.push(Link { target, attrs });
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
            if rest.is_empty() {
                return Err(malformed("trailing `,`"));
            }
        } else if !rest.is_empty() {
            return Err(malformed("expected `,` between links"));
        }
    }
    Ok(links)
}

/// `parmname` of RFC 5987 §3.2.1, which RFC 6690 §2 uses for attribute names.
fn is_parmname_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&+-.^_`|~".contains(c)
}

/// The rest of a quoted-string after its opening DQUOTE (RFC 2616 §2.2,
/// which RFC 6690 §2 refers to): `\` escapes the next character. Returns
/// the unescaped value and the text after the closing DQUOTE.
fn quoted_string(q: &str) -> Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = q.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &q[i + 1..])),
            '\\' => value.push(chars.next().ok_or_else(|| malformed("unterminated quoted value"))?.1),
            c => value.push(c),
        }
    }
    Err(malformed("unterminated quoted value"))
}

/// Serialise links; values that need it are quoted.
pub fn format(links: &[Link]) -> String {
    let mut out = String::new();
    for (i, l) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('<');
        out.push_str(&l.target);
        out.push('>');
        for (k, v) in &l.attrs {
            out.push(';');
            out.push_str(k);
            if let Some(v) = v {
                out.push('=');
                if v.is_empty() || v.contains([',', ';', ' ', '"', '\\']) || v.parse::<f64>().is_err() {
                    out.push('"');
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str(v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_payload() {
        let links = parse(r#"</>;rt="oma.lwm2m";ct=110, </1/0>,</3/0>,</5>;ver=1.1,</3303/0>;dim=2;obs"#).unwrap();
        assert_eq!(links.len(), 5);
        assert_eq!(links[0].target, "/");
        assert_eq!(links[0].attr("rt"), Some("oma.lwm2m"));
        assert_eq!(links[0].attr("ct"), Some("110"));
        assert_eq!(links[3].attr("ver"), Some("1.1"));
        assert!(links[4].has_attr("obs"));
        assert_eq!(parse(&format(&links)).unwrap(), links);
    }

    #[test]
    fn quoted_separators_and_errors() {
        let l = parse(r#"<a>;title="x, y; z""#).unwrap();
        assert_eq!(l[0].attr("title"), Some("x, y; z"));
        let l = parse(r#"<a>;title="say \"hi\" \\o/""#).unwrap();
        assert_eq!(l[0].attr("title"), Some(r#"say "hi" \o/"#));
        assert_eq!(parse(&format(&l)).unwrap(), l);
        for bad in [
            "/1/0",
            "</1/0",
            "</1>,",
            "</1>;=3",
            "</1> </2>",
            r#"</1>;t="x"#,
            r#"<>;"=<""#,
            r#"<>;a=b"c"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("").unwrap().is_empty());
    }
}
