//! A Celery task message, protocol version 2 (Celery's "Message Protocol",
//! Version 2): the body `[args, kwargs, embed]` serialised as JSON, and the
//! envelope kombu's Redis transport pushes onto the queue's list, with the
//! body base64-encoded (`body_encoding`) and `delivery_info` naming the
//! exchange and routing key a worker acknowledges against.

use base64::Engine;
use serde_json::{Value, json};

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
        // plain task leaves empty.
        let body = json!([
            self.args,
            self.kwargs,
            { "callbacks": null, "errbacks": null, "chain": null, "chord": null }
        ]);
        let body = base64::engine::general_purpose::STANDARD.encode(body.to_string());
        let kwargsrepr = Value::Object(self.kwargs.clone()).to_string();
        json!({
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": self.name,
                "id": self.id,
                "shadow": null,
                "eta": null,
                "expires": null,
                "group": null,
                "group_index": null,
                "retries": 0,
                "timelimit": [null, null],
                "root_id": self.id,
                "parent_id": null,
                "argsrepr": Value::Array(self.args.clone()).to_string(),
                "kwargsrepr": truncated(&kwargsrepr, 1024),
                "origin": self.origin,
                "ignore_result": self.ignore_result,
            },
            "properties": {
                "correlation_id": self.id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": { "exchange": "", "routing_key": self.queue },
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": self.id,
            },
        })
        .to_string()
    }
}

/// `argsrepr`/`kwargsrepr` are for logs and monitors; Celery shortens them
/// too (`argsrepr_maxsize`).
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
