//! Task results as Celery's Redis result backend keeps them, so a Python
//! producer's `AsyncResult.get()` returns the value or raises: the entry
//! is stored at `celery-task-meta-<task id>` and published on the channel
//! of the same name, which the backend's result consumer subscribes to.

use serde_json::{Value, json};

/// Seconds a result is kept: Celery's `result_expires` default, one day.
pub const EXPIRES_S: u64 = 86_400;

/// The key (and pub/sub channel) of a task's result.
pub fn key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// `result.get()` returns this value.
    Success(Value),
    /// `result.get()` raises `RuntimeError(message)` (a builtin, which
    /// every Python producer can rebuild without importing our code).
    Failure(String),
}

/// The backend's JSON for `task_id`'s `ending`, done at `now_ms`.
pub fn entry(task_id: &str, ending: &Ending, now_ms: i64) -> String {
    let date_done = crate::datetime::rfc3339(now_ms);
    let (status, result) = match ending {
        Ending::Success(v) => ("SUCCESS", v.clone()),
        Ending::Failure(message) => (
            "FAILURE",
            json!({ "exc_type": "RuntimeError", "exc_message": [message], "exc_module": "builtins" }),
        ),
    };
    json!({
        "status": status,
        "result": result,
        "traceback": null,
        "children": [],
        "date_done": date_done,
        "task_id": task_id,
    })
    .to_string()
}

/// How an operation's end reads to the producer that asked for it: a read
/// of one resource gives its value; other successes the result object
/// (the CoAP code, values by path, links, the created instance); a failure,
/// expiry or cancellation raises, naming the device and what happened.
pub fn of_operation(endpoint: &str, kind: &str, path: &str, state: &str, outcome: &Value) -> Ending {
    let what = format!("{endpoint}: {kind} {path}");
    match state {
        "succeeded" => {
            let records = outcome["records"].as_array().cloned().unwrap_or_default();
            let plain = |r: &Value| r["value"]["value"].clone();
            if kind == "read" && path.matches('/').count() >= 3 && records.len() == 1 {
                return Ending::Success(plain(&records[0]));
            }
            let mut result = serde_json::Map::new();
            result.insert("code".into(), outcome["code"].clone());
            if !records.is_empty() {
                let values: serde_json::Map<String, Value> = records
                    .iter()
                    .filter_map(|r| Some((r["path"].as_str()?.to_string(), plain(r))))
                    .collect();
                result.insert("values".into(), Value::Object(values));
            }
            for field in ["links", "location"] {
                if !outcome[field].is_null() {
                    result.insert(field.into(), outcome[field].clone());
                }
            }
            Ending::Success(Value::Object(result))
        }
        "failed" => {
            let reason = outcome["reason"].as_str().unwrap_or("failed");
            Ending::Failure(match outcome["code"].as_str() {
                Some(code) if !reason.contains(code) => format!("{what} failed: the device answered {code} ({reason})"),
                _ => format!("{what} failed: {reason}"),
            })
        }
        "expired" => Ending::Failure(format!(
            "{what} expired: the device was not reachable before the deadline"
        )),
        "cancelled" => Ending::Failure(format!("{what} was cancelled")),
        other => Ending::Failure(format!("{what} ended {other}")),
    }
}

/// The task result an outbox event completes, if it completes one: an
/// operation's end, or an update's final phase, asked by a Celery task.
pub fn of_event(event: &crate::outbox::OutboxEvent) -> Option<(String, Ending)> {
    use crate::outbox::EventKind;
    let p = &event.payload;
    let task = p["celery_task_id"].as_str()?.to_string();
    let endpoint = event.endpoint.as_deref().unwrap_or("");
    let ending = match event.kind {
        EventKind::OperationFinished => of_operation(
            endpoint,
            p["kind"].as_str().unwrap_or(""),
            p["request"]["path"].as_str().unwrap_or(""),
            p["state"].as_str().unwrap_or(""),
            &p["result"],
        ),
        EventKind::FirmwareUpdateChanged if p["final"] == true => {
            let (id, phase) = (&p["update"], p["phase"].as_str().unwrap_or(""));
            if phase == "succeeded" {
                Ending::Success(json!({ "update": id, "phase": phase }))
            } else {
                let reason = p["reason"].as_str().unwrap_or("no reason given");
                Ending::Failure(format!("{endpoint}: firmware update {id} {phase}: {reason}"))
            }
        }
        _ => return None,
    };
    Some((task, ending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_of_one_resource_gives_its_value_and_failures_raise_naming_the_device() {
        let ok = json!({ "state": "succeeded", "code": "2.05",
                         "records": [{ "path": "/3/0/0", "value": { "type": "string", "value": "Nordic" } }] });
        assert_eq!(
            of_operation("urn:imei:1", "read", "/3/0/0", "succeeded", &ok),
            Ending::Success(json!("Nordic"))
        );
        let object = json!({ "state": "succeeded", "code": "2.05", "records": [
            { "path": "/3/0/0", "value": { "type": "string", "value": "Nordic" } },
            { "path": "/3/0/9", "value": { "type": "integer", "value": 87 } } ] });
        assert_eq!(
            of_operation("urn:imei:1", "read", "/3/0", "succeeded", &object),
            Ending::Success(json!({ "code": "2.05", "values": { "/3/0/0": "Nordic", "/3/0/9": 87 } }))
        );
        assert_eq!(
            of_operation("urn:imei:1", "write", "/1/0/1", "succeeded", &json!({ "code": "2.04" })),
            Ending::Success(json!({ "code": "2.04" }))
        );
        let failed = json!({ "state": "failed", "code": "4.04", "reason": "not found" });
        assert_eq!(
            of_operation("urn:imei:1", "read", "/9/0", "failed", &failed),
            Ending::Failure("urn:imei:1: read /9/0 failed: the device answered 4.04 (not found)".into())
        );
        let Ending::Failure(m) = of_operation("urn:imei:1", "execute", "/3/0/4", "expired", &Value::Null) else {
            panic!()
        };
        assert!(m.starts_with("urn:imei:1: execute /3/0/4 expired"), "{m}");
    }

    #[test]
    fn only_events_of_celery_tasks_complete_results() {
        use crate::outbox::{EventKind, OutboxEvent};
        let event = |kind, payload: Value| OutboxEvent {
            id: 1,
            event_id: "e".into(),
            ts: 0,
            kind,
            endpoint: Some("urn:imei:1".into()),
            payload,
        };
        let op = json!({ "kind": "read", "request": { "op": "read", "path": "/3/0/0" }, "state": "succeeded",
                         "result": { "code": "2.05", "records": [{ "path": "/3/0/0", "value": { "type": "string", "value": "N" } }] } });
        assert_eq!(
            of_event(&event(EventKind::OperationFinished, op.clone())),
            None,
            "not a task's"
        );
        let mut of_task = op;
        of_task["celery_task_id"] = json!("t-1");
        assert_eq!(
            of_event(&event(EventKind::OperationFinished, of_task)),
            Some(("t-1".into(), Ending::Success(json!("N"))))
        );
        let step = json!({ "update": 4, "phase": "downloading", "final": false, "celery_task_id": "t-2" });
        assert_eq!(
            of_event(&event(EventKind::FirmwareUpdateChanged, step)),
            None,
            "not final yet"
        );
        let failed = json!({ "update": 4, "phase": "failed", "final": true, "reason": "Update Result 5", "celery_task_id": "t-2" });
        assert_eq!(
            of_event(&event(EventKind::FirmwareUpdateChanged, failed)),
            Some((
                "t-2".into(),
                Ending::Failure("urn:imei:1: firmware update 4 failed: Update Result 5".into())
            ))
        );
    }

    #[test]
    fn backend_entries_are_what_celery_reads() {
        let v: Value = serde_json::from_str(&entry("t-1", &Ending::Success(json!(42)), 0)).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["result"].clone(), v["task_id"].as_str()),
            (Some("SUCCESS"), json!(42), Some("t-1"))
        );
        assert_eq!(v["date_done"], "1970-01-01T00:00:00Z");
        let v: Value = serde_json::from_str(&entry("t-2", &Ending::Failure("no such device".into()), 0)).unwrap();
        assert_eq!(v["status"], "FAILURE");
        assert_eq!(v["result"]["exc_type"], "RuntimeError");
        assert_eq!(v["result"]["exc_message"][0], "no such device");
        assert_eq!(key("t-2"), "celery-task-meta-t-2");
    }
}
