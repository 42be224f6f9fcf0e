//! A Celery task message, protocol version 2 (Celery's "Message Protocol",
//! Version 2): the body `[args, kwargs, embed]` serialised as JSON, and the
//! envelope kombu's Redis transport pushes onto the queue's list, with the
//! body base64-encoded (`body_encoding`) and `delivery_info` naming the
//! exchange and routing key a worker acknowledges against.

use base64::Engine;
use serde_json::Value;

/// What a task message says.
#[derive(Debug, Clone, PartialEq)]
pub struct Task<'a> {
    /// The registered task name (`flownexus.device_registered`).
    pub name: &'a str,
    /// The task id (a UUID): the same on a redelivery, so a worker or a
    /// result backend can tell a repeat.
    pub id: &'a str,
    /// The queue: the Redis list the message goes onto, and the routing key.
    pub queue: &'a str,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    /// The sender's node name (`flownexus@host`), the `origin` header.
    pub origin: &'a str,
    /// Whether a worker should store a result: the events flownexus sends
    /// need none.
    pub ignore_result: bool,
}

impl Task<'_> {
    /// The envelope as JSON text, ready for `LPUSH queue …`.
    pub fn encode(&self) -> String {
        // Protocol 2's body: args, kwargs and the workflow fields, which a
        // plain task leaves empty; serialised from borrows, as is the
        // envelope (a copy of every argument was a large part of an
        // event's delivery cost in `bench events`).
        let embed = Embed {
            callbacks: None,
            errbacks: None,
            chain: None,
            chord: None,
        };
        let body = serde_json::to_string(&(&self.args, &self.kwargs, embed)).expect("JSON values serialise");
        let body = base64::engine::general_purpose::STANDARD.encode(body);
        let argsrepr = serde_json::to_string(&self.args).expect("JSON values serialise");
        let envelope = Envelope {
            body: &body,
            content_encoding: "utf-8",
            content_type: "application/json",
            headers: Headers {
                lang: "py",
                task: self.name,
                id: self.id,
                shadow: None,
                eta: None,
                expires: None,
                group: None,
                group_index: None,
                retries: 0,
                timelimit: [None, None],
                root_id: self.id,
                parent_id: None,
                argsrepr: &argsrepr,
                kwargsrepr: &kwargs_summary(&self.kwargs),
                origin: self.origin,
                ignore_result: self.ignore_result,
            },
            properties: Properties {
                correlation_id: self.id,
                reply_to: "",
                delivery_mode: 2,
                delivery_info: DeliveryInfo {
                    exchange: "",
                    routing_key: self.queue,
                },
                priority: 0,
                body_encoding: "base64",
                delivery_tag: self.id,
            },
        };
        serde_json::to_string(&envelope).expect("the envelope serialises")
    }
}

#[derive(serde::Serialize)]
struct Embed {
    callbacks: Option<()>,
    errbacks: Option<()>,
    chain: Option<()>,
    chord: Option<()>,
}

#[derive(serde::Serialize)]
struct Envelope<'a> {
    body: &'a str,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: Headers<'a>,
    properties: Properties<'a>,
}

#[derive(serde::Serialize)]
struct Headers<'a> {
    lang: &'a str,
    task: &'a str,
    id: &'a str,
    shadow: Option<()>,
    eta: Option<()>,
    expires: Option<()>,
    group: Option<()>,
    group_index: Option<()>,
    retries: u32,
    timelimit: [Option<()>; 2],
    root_id: &'a str,
    parent_id: Option<()>,
    argsrepr: &'a str,
    kwargsrepr: &'a str,
    origin: &'a str,
    ignore_result: bool,
}

#[derive(serde::Serialize)]
struct Properties<'a> {
    correlation_id: &'a str,
    reply_to: &'a str,
    delivery_mode: u8,
    delivery_info: DeliveryInfo<'a>,
    priority: u8,
    body_encoding: &'a str,
    delivery_tag: &'a str,
}

#[derive(serde::Serialize)]
struct DeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

/// The largest task message taken from the inbound queue: a read, write
/// or update names a device, a path and a few values.
pub const MAX_INCOMING: usize = 64 * 1024;

/// A task message a Python producer sent (`app.send_task(…)`), decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub name: String,
    pub id: String,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    /// The producer's node name (`origin`), for the per-producer limit.
    pub origin: String,
}

/// Why a message cannot be taken as a task; with the task id when the
/// envelope carried one, so the failure can be reported under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    pub id: Option<String>,
    pub reason: String,
}

/// Decodes an envelope as kombu's Redis transport stores it (protocol 2,
/// JSON serializer, body base64-encoded or plain).
pub fn decode(envelope: &[u8]) -> Result<Incoming, Undecodable> {
    let bad = |id: Option<&str>, reason: String| Undecodable {
        id: id.map(str::to_string),
        reason,
    };
    if envelope.len() > MAX_INCOMING {
        return Err(bad(
            None,
            format!("message of {} bytes, over {MAX_INCOMING}", envelope.len()),
        ));
    }
    let v: Value = serde_json::from_slice(envelope).map_err(|e| bad(None, format!("not a JSON envelope: {e}")))?;
    let headers = &v["headers"];
    let id = headers["id"].as_str().filter(|id| valid_id(id));
    let Some(id) = id else {
        return Err(bad(None, "the message has no usable task id (headers.id)".into()));
    };
    let name = headers["task"]
        .as_str()
        .ok_or_else(|| bad(Some(id), "no task name (headers.task): protocol 2 messages only".into()))?;
    if v["content-type"].as_str() != Some("application/json") {
        return Err(bad(
            Some(id),
            format!("content-type {}: send with the json serializer", v["content-type"]),
        ));
    }
    let raw = v["body"].as_str().ok_or_else(|| bad(Some(id), "no body".into()))?;
    let body = match v["properties"]["body_encoding"].as_str() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| bad(Some(id), format!("body is not base64: {e}")))?,
        _ => raw.as_bytes().to_vec(),
    };
    let body: Value = serde_json::from_slice(&body).map_err(|e| bad(Some(id), format!("body is not JSON: {e}")))?;
    let (Some(args), Some(kwargs)) = (body[0].as_array(), body[1].as_object()) else {
        return Err(bad(Some(id), "body is not [args, kwargs, embed]".into()));
    };
    Ok(Incoming {
        name: name.to_string(),
        id: id.to_string(),
        args: args.clone(),
        kwargs: kwargs.clone(),
        origin: headers["origin"].as_str().unwrap_or("").chars().take(128).collect(),
    })
}

/// A task id we store and use in a Redis key: Celery's are UUIDs; any
/// short printable name without spaces is accepted.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `kwargsrepr`, for a worker's logs and monitors (Celery reads it with a
/// default, and shortens its own): the short text arguments, not the
/// values, whose serialising a second time cost a fifth of `bench events`.
fn kwargs_summary(kwargs: &serde_json::Map<String, Value>) -> String {
    let shown: Vec<String> = kwargs
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) if s.len() <= 64 => Some(format!("'{k}': {s:?}")),
            Value::Number(n) => Some(format!("'{k}': {n}")),
            _ => None,
        })
        .take(6)
        .collect();
    let more = if shown.len() < kwargs.len() { ", ..." } else { "" };
    truncated(&format!("{{{}{more}}}", shown.join(", ")), 1024)
}

/// Logs' representations stay short; Celery shortens its own too
/// (`argsrepr_maxsize`).
fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_we_send_we_can_take_back() {
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("timeout".into(), json!(30));
        let task = Task {
            name: "flownexus.read",
            id: "11111111-2222-4333-8444-555555555555",
            queue: "flownexus",
            args: vec![json!("urn:imei:1"), json!("/3/0/0")],
            kwargs,
            origin: "gen42@host",
            ignore_result: false,
        };
        let back = decode(task.encode().as_bytes()).unwrap();
        assert_eq!(back.name, "flownexus.read");
        assert_eq!(back.id, task.id);
        assert_eq!(back.args, task.args);
        assert_eq!(back.kwargs["timeout"], 30);
        assert_eq!(back.origin, "gen42@host");
    }

    #[test]
    fn bad_envelopes_are_refused_with_the_task_id_when_known() {
        let e = decode(b"not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = decode(br#"{"headers":{"id":"abc","task":"flownexus.read"},"content-type":"application/x-python-serialize","body":"x"}"#)
            .unwrap_err();
        assert_eq!(e.id.as_deref(), Some("abc"));
        assert!(e.reason.contains("json serializer"), "{}", e.reason);
        let e = decode(br#"{"headers":{"id":"has space","task":"t"}}"#).unwrap_err();
        assert_eq!(e.id, None);
        let big = vec![b' '; MAX_INCOMING + 1];
        assert!(decode(&big).unwrap_err().reason.contains("over"));
        let e = decode(br#"{"headers":{"id":"a","task":"t"},"content-type":"application/json","body":"[1,2]"}"#)
            .unwrap_err();
        assert!(e.reason.contains("[args, kwargs, embed]"), "{}", e.reason);
    }

    #[test]
    fn the_envelope_carries_what_a_worker_reads() {
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("endpoint".into(), json!("urn:imei:1"));
        kwargs.insert("lifetime".into(), json!(300));
        let task = Task {
            name: "flownexus.device_registered",
            id: "8c1a2b3c-0000-4000-8000-000000000001",
            queue: "celery",
            args: vec![],
            kwargs,
            origin: "flownexus@host",
            ignore_result: true,
        };
        let v: Value = serde_json::from_str(&task.encode()).unwrap();
        assert_eq!(v["headers"]["task"], "flownexus.device_registered");
        assert_eq!(v["headers"]["id"], task.id);
        assert_eq!(v["headers"]["lang"], "py");
        assert_eq!(v["properties"]["delivery_info"]["routing_key"], "celery");
        assert_eq!(v["properties"]["delivery_info"]["exchange"], "");
        assert_eq!(v["properties"]["body_encoding"], "base64");
        assert_eq!(v["content-type"], "application/json");
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body[0], json!([]));
        assert_eq!(body[1]["endpoint"], "urn:imei:1");
        assert_eq!(body[2]["chain"], Value::Null);
        let long = truncated(&"é".repeat(1000), 1023);
        assert!(
            long.ends_with("...") && long.len() <= 1026,
            "cut on a character boundary"
        );
    }
}
