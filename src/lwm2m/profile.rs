//! Device profiles: what the server asks every device of a tag (or every
//! device) as soon as it registers, so a new device's Device object
//! (manufacturer, model, serial, firmware version), its connectivity
//! (signal strength, cell id) and chosen sensors are known without anyone
//! asking. A profile is a list of steps, each a Read, or an Observe with
//! optional notification attributes (Core §5.1.2 pmin/pmax, sent first as
//! a Write-Attributes, §6.3.4).
//!
//! Steps are written one a line, as operators type them:
//!
//! ```text
//! read /3/0
//! observe /4/0/2 pmin=60 pmax=3600
//! ```

use serde::{Deserialize, Serialize};

use crate::lwm2m::Models;
use crate::lwm2m::operation::OperationKind;
use crate::lwm2m::path::ResourcePath;

/// Most steps in one profile: each becomes up to two operations at every
/// registration of every device it applies to.
pub const MAX_STEPS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    Read {
        path: ResourcePath,
    },
    Observe {
        path: ResourcePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pmin: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pmax: Option<u32>,
    },
}

impl Step {
    /// The operations this step queues, in order.
    pub fn operations(&self) -> Vec<OperationKind> {
        match self {
            Step::Read { path } => vec![OperationKind::Read { path: *path }],
            Step::Observe { path, pmin, pmax } => {
                let attributes: Vec<String> = [("pmin", pmin), ("pmax", pmax)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                    .collect();
                let mut out = Vec::new();
                if !attributes.is_empty() {
                    out.push(OperationKind::WriteAttributes {
                        path: *path,
                        attributes,
                    });
                }
                out.push(OperationKind::Observe { path: *path });
                out
            }
        }
    }

    /// The step as a line of the profile's text form.
    pub fn to_line(&self) -> String {
        match self {
            Step::Read { path } => format!("read {path}"),
            Step::Observe { path, pmin, pmax } => {
                let mut s = format!("observe {path}");
                for (k, v) in [("pmin", pmin), ("pmax", pmax)] {
                    if let Some(v) = v {
                        s += &format!(" {k}={v}");
                    }
                }
                s
            }
        }
    }
}

/// Parse the text form; each error names its line.
pub fn parse_steps(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        let mut words = line.split_whitespace();
        let op = words.next().unwrap_or("").to_ascii_lowercase();
        let path: ResourcePath = words
            .next()
            .ok_or_else(|| at(format!("`{line}` names no path")))?
            .parse()
            .map_err(|e| at(format!("{e}")))?;
        if path.depth() == 0 {
            return Err(at(
                "a step reads or observes an object, instance or resource, not the root".into(),
            ));
        }
        let (mut pmin, mut pmax) = (None, None);
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| at(format!("`{w}` is not pmin=SECONDS or pmax=SECONDS")))?;
            let v: u32 = v.parse().map_err(|_| at(format!("{k} is a whole number of seconds")))?;
            match k {
                "pmin" => pmin = Some(v),
                "pmax" => pmax = Some(v),
                _ => return Err(at(format!("`{k}`: only pmin and pmax are set by profiles"))),
            }
        }
        let step = match op.as_str() {
            "read" if pmin.is_none() && pmax.is_none() => Step::Read { path },
            "read" => return Err(at("pmin and pmax belong to observe steps".into())),
            "observe" => {
                if let (Some(a), Some(b)) = (pmin, pmax)
                    && b < a
                {
                    return Err(at("pmax must not be below pmin".into()));
                }
                Step::Observe { path, pmin, pmax }
            }
            _ => return Err(at(format!("`{op}`: a step is read or observe"))),
        };
        steps.push(step);
    }
    check_shape(&steps)?;
    Ok(steps)
}

/// What any list of steps must be, however it came (the text form, or
/// JSON through the API): 1 to [`MAX_STEPS`] steps, no pmax below its pmin.
fn check_shape(steps: &[Step]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("a profile needs at least one step".into());
    }
    if steps.len() > MAX_STEPS {
        return Err(format!("at most {MAX_STEPS} steps in a profile"));
    }
    for step in steps {
        if let Step::Observe {
            path,
            pmin: Some(a),
            pmax: Some(b),
        } = step
            && b < a
        {
            return Err(format!("{path}: pmax must not be below pmin"));
        }
    }
    Ok(())
}

/// Steps fit to store: their shape, and every operation they queue valid
/// against the object model (as an operator's own operation would be).
pub fn validate(steps: &[Step], models: &Models) -> crate::error::Result<()> {
    check_shape(steps).map_err(|reason| crate::error::Error::Invalid {
        what: "profile steps",
        reason,
    })?;
    steps
        .iter()
        .flat_map(Step::operations)
        .try_for_each(|kind| kind.validate(models))
}

/// Does a profile for `tag` (`None`: every device) apply to a device
/// filed under `device_tags` (the stored `a,b,c` form)?
pub fn applies(tag: Option<&str>, device_tags: &str) -> bool {
    tag.is_none_or(|t| device_tags.split(',').any(|d| d == t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_from_lines_and_expand_to_operations() {
        let steps =
            parse_steps("read /3/0\n\n# radio\nobserve /4/0/2 pmin=60 pmax=3600\nOBSERVE /3303/0/5700\n").unwrap();
        assert_eq!(steps.len(), 3);
        let ops: Vec<OperationKind> = steps.iter().flat_map(Step::operations).collect();
        let p = |s: &str| s.parse::<ResourcePath>().unwrap();
        assert_eq!(
            ops,
            [
                OperationKind::Read { path: p("/3/0") },
                OperationKind::WriteAttributes {
                    path: p("/4/0/2"),
                    attributes: vec!["pmin=60".into(), "pmax=3600".into()]
                },
                OperationKind::Observe { path: p("/4/0/2") },
                OperationKind::Observe {
                    path: p("/3303/0/5700")
                },
            ]
        );
        let text: Vec<String> = steps.iter().map(Step::to_line).collect();
        assert_eq!(
            text,
            ["read /3/0", "observe /4/0/2 pmin=60 pmax=3600", "observe /3303/0/5700"]
        );
        assert_eq!(
            parse_steps(&text.join("\n")).unwrap(),
            steps,
            "the text form round-trips"
        );
    }

    #[test]
    fn bad_steps_name_their_line() {
        for (text, want) in [
            ("", "at least one step"),
            ("read", "line 1: `read` names no path"),
            ("read /3/0\nwrite /1/0/1", "line 2: `write`: a step is read or observe"),
            ("observe /3/0 pmin=x", "line 1: pmin is a whole number"),
            ("observe /3/0 pmin=60 pmax=10", "line 1: pmax must not be below pmin"),
            ("observe /3/0 gt=5", "line 1: `gt`: only pmin and pmax"),
            ("read /3/0 pmin=1", "line 1: pmin and pmax belong to observe steps"),
            ("read /", "line 1: a step reads or observes"),
            ("read /70000", "line 1:"),
        ] {
            let e = parse_steps(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(parse_steps(&"read /3/0\n".repeat(MAX_STEPS + 1)).is_err());
    }

    #[test]
    fn a_profile_applies_by_exact_tag_or_to_all() {
        assert!(applies(None, ""));
        assert!(applies(Some("north"), "north,pilot"));
        assert!(applies(Some("pilot"), "north,pilot"));
        assert!(!applies(Some("nor"), "north,pilot"));
        assert!(!applies(Some("north"), ""));
    }
}
