//! Device tags: the groups an operator files devices under ("north",
//! "pilot", "batch-2026-03"). A device has any number of them; the device
//! list filters by one.
//!
//! The store keeps them in one column as `a,b,c` (sorted, no repeats, no
//! blanks), so the list's filter is an exact match between commas and a
//! page filtered by a common tag stops after its first rows.

use std::fmt;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(Vec<String>);

impl Tags {
    /// Most tags on one device.
    pub const MAX: usize = 32;
    /// Longest tag, in bytes.
    pub const MAX_LEN: usize = 64;

    /// From a comma-separated list as operators type it: spaces around a
    /// tag and empty items are dropped, repeats kept once.
    pub fn parse(list: &str) -> Result<Tags> {
        let invalid = |reason: String| Error::Invalid { what: "tags", reason };
        let mut tags: Vec<String> = Vec::new();
        for tag in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag.len() > Self::MAX_LEN {
                return Err(invalid(format!("{tag:?} is longer than {} bytes", Self::MAX_LEN)));
            }
            if tag.chars().any(char::is_control) {
                return Err(invalid(format!("{tag:?} holds a control character")));
            }
            tags.push(tag.to_string());
        }
        tags.sort();
        tags.dedup();
        if tags.len() > Self::MAX {
            return Err(invalid(format!("at most {} tags per device", Self::MAX)));
        }
        Ok(Tags(tags))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// The stored form, `a,b,c`.
impl fmt::Display for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_list_becomes_the_stored_form() {
        let t = Tags::parse(" pilot, north ,,pilot,  ").unwrap();
        assert_eq!(t.to_string(), "north,pilot");
        assert_eq!(t.iter().collect::<Vec<_>>(), ["north", "pilot"]);
        assert_eq!(Tags::parse("").unwrap(), Tags::default());
        assert_eq!(Tags::parse(" , ").unwrap().to_string(), "");
        // Markup is text like any other; the pages escape it.
        assert_eq!(Tags::parse("<b>x</b>").unwrap().to_string(), "<b>x</b>");
    }

    #[test]
    fn bad_lists_name_the_tag() {
        let long = "x".repeat(Tags::MAX_LEN + 1);
        let e = Tags::parse(&format!("ok,{long}")).unwrap_err().to_string();
        assert!(e.contains("tags") && e.contains("longer than 64"), "{e}");
        let e = Tags::parse("a\u{7}b").unwrap_err().to_string();
        assert!(e.contains("control character"), "{e}");
        let many: Vec<String> = (0..=Tags::MAX).map(|i| format!("t{i}")).collect();
        let e = Tags::parse(&many.join(",")).unwrap_err().to_string();
        assert!(e.contains("at most 32"), "{e}");
        // The same tag many times is one tag.
        assert_eq!(Tags::parse(&vec!["same"; 100].join(",")).unwrap().to_string(), "same");
    }
}
