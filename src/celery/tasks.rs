//! The tasks Python code sends flownexus (`app.send_task("flownexus.read",
//! args=[endpoint, "/3/0/0"], queue="flownexus")`), read into what the
//! server does. Everything here is untrusted: names, paths and values are
//! checked and bounded before anything is queued, and each refusal says
//! what was wrong, for the producer's `result.get()` to raise.

use serde_json::Value;

use super::message::Incoming;
use crate::lwm2m::operation::{OperationKind, WriteValue};
use crate::lwm2m::path::ResourcePath;

/// A value written is text as the API takes it; longer is refused.
const MAX_VALUE: usize = 4096;

/// What a task asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Operation {
        endpoint: String,
        kind: OperationKind,
        /// Give up after this many seconds (default the server's).
        deadline_s: Option<u64>,
    },
    UpdateFirmware {
        endpoint: String,
        image: String,
    },
}

/// The task names flownexus runs, after the prefix, with their arguments
/// in order (each may also be given by name).
pub const TASKS: &[(&str, &[&str])] = &[
    ("read", &["endpoint", "path"]),
    ("write", &["endpoint", "path", "value"]),
    ("execute", &["endpoint", "path", "args"]),
    ("observe", &["endpoint", "path"]),
    ("cancel_observe", &["endpoint", "path"]),
    ("update_firmware", &["endpoint", "image"]),
];

/// Reads `task` (named `prefix` + one of [`TASKS`]) into a request.
pub fn parse(prefix: &str, task: &Incoming) -> Result<Request, String> {
    let Some((short, params)) = task
        .name
        .strip_prefix(prefix)
        .and_then(|n| TASKS.iter().find(|(t, _)| *t == n))
    else {
        let known: Vec<String> = TASKS.iter().map(|(t, _)| format!("{prefix}{t}")).collect();
        return Err(format!(
            "unknown task {:?}: flownexus runs {}",
            task.name,
            known.join(", ")
        ));
    };
    if task.args.len() > params.len() {
        return Err(format!(
            "{}: {} arguments, at most {} ({})",
            task.name,
            task.args.len(),
            params.len(),
            params.join(", ")
        ));
    }
    for k in task.kwargs.keys() {
        if !params.contains(&k.as_str()) && k != "deadline_s" {
            return Err(format!(
                "{}: unknown argument {k:?} (takes {})",
                task.name,
                params.join(", ")
            ));
        }
    }
    // Positional first, then by name.
    let arg = |name: &str| -> Option<&Value> {
        let i = params.iter().position(|p| *p == name)?;
        task.args.get(i).or_else(|| task.kwargs.get(name))
    };
    let text = |name: &str| -> Result<String, String> {
        match arg(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{}: {name} must be a string, not {other}", task.name)),
            None => Err(format!("{}: missing argument {name}", task.name)),
        }
    };
    let endpoint = text("endpoint")?;
    if let Some(problem) = crate::lwm2m::registration::endpoint_problem(&endpoint) {
        return Err(format!("{}: endpoint {problem}", task.name));
    }
    let deadline_s = match task.kwargs.get("deadline_s") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|s| (1..=365 * 86_400).contains(s))
                .ok_or_else(|| format!("{}: deadline_s must be 1 to 31536000 seconds", task.name))?,
        ),
    };
    if *short == "update_firmware" {
        let image = text("image")?;
        if image.is_empty() || image.len() > 255 {
            return Err(format!("{}: image must name a catalogue image", task.name));
        }
        return Ok(Request::UpdateFirmware { endpoint, image });
    }
    let raw_path = text("path")?;
    let path: ResourcePath = raw_path.parse().map_err(|_| {
        format!(
            "{}: {raw_path:?} is not an LwM2M path (/object/instance/resource)",
            task.name
        )
    })?;
    let kind = match *short {
        "read" => OperationKind::Read { path },
        "observe" => OperationKind::Observe { path },
        "cancel_observe" => OperationKind::CancelObserve { path },
        "execute" => OperationKind::Execute {
            path,
            args: match arg("args") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.len() <= MAX_VALUE => Some(s.clone()),
                Some(_) => {
                    return Err(format!(
                        "{}: args must be a string of at most {MAX_VALUE} bytes",
                        task.name
                    ));
                }
            },
        },
        "write" => {
            // Text as Core §7.4.1 writes it: numbers and booleans as
            // Python sends them are spelt the same.
            let value = match arg("value") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                Some(other) => {
                    return Err(format!(
                        "{}: value must be text, a number or a boolean, not {other}",
                        task.name
                    ));
                }
                None => return Err(format!("{}: missing argument value", task.name)),
            };
            if value.len() > MAX_VALUE {
                return Err(format!("{}: value longer than {MAX_VALUE} bytes", task.name));
            }
            OperationKind::Write {
                path,
                values: vec![WriteValue { path, value }],
                replace: None,
            }
        }
        _ => unreachable!("every task of TASKS is matched"),
    };
    Ok(Request::Operation {
        endpoint,
        kind,
        deadline_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(name: &str, args: Value, kwargs: Value) -> Incoming {
        Incoming {
            name: name.into(),
            id: "t".into(),
            args: args.as_array().unwrap().clone(),
            kwargs: kwargs.as_object().unwrap().clone(),
            origin: "p@h".into(),
        }
    }

    #[test]
    fn tasks_become_operations_positionally_or_by_name() {
        let r = parse(
            "flownexus.",
            &task("flownexus.read", json!(["urn:imei:1", "/3/0/0"]), json!({})),
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Operation {
                endpoint: "urn:imei:1".into(),
                kind: OperationKind::Read {
                    path: "/3/0/0".parse().unwrap()
                },
                deadline_s: None
            }
        );
        let r = parse(
            "flownexus.",
            &task(
                "flownexus.write",
                json!(["urn:imei:1"]),
                json!({ "path": "/1/0/1", "value": 90, "deadline_s": 60 }),
            ),
        )
        .unwrap();
        let Request::Operation {
            kind: OperationKind::Write { values, .. },
            deadline_s,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((values[0].value.as_str(), deadline_s), ("90", Some(60)));
        let r = parse(
            "flownexus.",
            &task(
                "flownexus.update_firmware",
                json!(["urn:imei:1", "app-2.bin"]),
                json!({}),
            ),
        )
        .unwrap();
        assert_eq!(
            r,
            Request::UpdateFirmware {
                endpoint: "urn:imei:1".into(),
                image: "app-2.bin".into()
            }
        );
    }

    #[test]
    fn bad_tasks_are_refused_saying_what_is_wrong() {
        for (name, args, kwargs, says) in [
            (
                "flownexus.reboot",
                json!(["e"]),
                json!({}),
                "unknown task \"flownexus.reboot\"",
            ),
            ("other.read", json!(["e", "/3"]), json!({}), "unknown task"),
            ("flownexus.read", json!(["e"]), json!({}), "missing argument path"),
            (
                "flownexus.read",
                json!(["e", "/3/0/0", "x"]),
                json!({}),
                "3 arguments, at most 2",
            ),
            (
                "flownexus.read",
                json!(["e", "/3/x"]),
                json!({}),
                "is not an LwM2M path",
            ),
            (
                "flownexus.read",
                json!([7, "/3/0"]),
                json!({}),
                "endpoint must be a string",
            ),
            ("flownexus.read", json!(["a\nb", "/3/0"]), json!({}), "endpoint"),
            (
                "flownexus.read",
                json!(["e", "/3/0"]),
                json!({ "timeout": 3 }),
                "unknown argument \"timeout\"",
            ),
            (
                "flownexus.write",
                json!(["e", "/1/0/1"]),
                json!({}),
                "missing argument value",
            ),
            (
                "flownexus.write",
                json!(["e", "/1/0/1", [1]]),
                json!({}),
                "value must be",
            ),
            (
                "flownexus.read",
                json!(["e", "/3/0"]),
                json!({ "deadline_s": 0 }),
                "deadline_s",
            ),
        ] {
            let e = parse("flownexus.", &task(name, args, kwargs)).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        }
    }
}
