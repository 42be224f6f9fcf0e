//! Events that leave the process (issue 26): what happened on the fleet,
//! for Celery workers and other sinks.
//!
//! Each event is written to the store's outbox in the transaction of the
//! change that causes it (`store::outbox`), so none is lost between the two
//! and none is made for a change that was not committed. A delivery task
//! (`shell::outbox`) hands rows to every configured sink in id order and a
//! row goes once every sink has taken it: at-least-once delivery, with an
//! event id receivers de-duplicate on. This module is the sans-I/O part:
//! the kinds, the rows, and each sink's retry schedule ([`delivery`]).

pub mod delivery;

use serde::{Deserialize, Serialize};

/// What happened. The name is the Celery task's, after the prefix
/// (`flownexus.device_registered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DeviceRegistered,
    DeviceUpdated,
    DeviceDeregistered,
    DeviceExpired,
    ValuesReported,
    OperationFinished,
    FirmwareUpdateChanged,
    CampaignChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::DeviceRegistered,
        EventKind::DeviceUpdated,
        EventKind::DeviceDeregistered,
        EventKind::DeviceExpired,
        EventKind::ValuesReported,
        EventKind::OperationFinished,
        EventKind::FirmwareUpdateChanged,
        EventKind::CampaignChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceRegistered => "device_registered",
            EventKind::DeviceUpdated => "device_updated",
            EventKind::DeviceDeregistered => "device_deregistered",
            EventKind::DeviceExpired => "device_expired",
            EventKind::ValuesReported => "values_reported",
            EventKind::OperationFinished => "operation_finished",
            EventKind::FirmwareUpdateChanged => "firmware_update_changed",
            EventKind::CampaignChanged => "campaign_changed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// State events are never dropped; value reports may be, oldest first,
    /// when the outbox is full (a newer report supersedes an older one,
    /// while a lost "deregistered" would leave a receiver wrong for good).
    pub fn is_state(self) -> bool {
        self != EventKind::ValuesReported
    }
}

/// One row of the outbox: the event as it was committed. `payload` holds
/// the kind's own fields as stored; a sink shapes them for its receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The row's position: sinks take rows in this order.
    pub id: i64,
    /// A random UUID, the same on every delivery of this event.
    pub event_id: String,
    /// When the change was committed (ms since the epoch).
    pub ts: i64,
    pub kind: EventKind,
    pub endpoint: Option<String>,
    pub payload: serde_json::Value,
}

impl OutboxEvent {
    /// The event as receivers read it (Celery keyword arguments, a
    /// webhook's body): `endpoint`, `event_id`, `time_ms` and the kind's
    /// own fields; reported values also in words, as the REST API gives
    /// them (`display`: "21.5 °C", an enumerated code's meaning).
    pub fn readable(&self, models: &crate::lwm2m::model::Models) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut out = serde_json::Map::new();
        if let Some(e) = &self.endpoint {
            out.insert("endpoint".into(), Value::from(e.as_str()));
        }
        out.insert("event_id".into(), Value::from(self.event_id.as_str()));
        out.insert("time_ms".into(), Value::from(self.ts));
        if let Value::Object(fields) = &self.payload {
            for (k, v) in fields {
                out.insert(k.clone(), v.clone());
            }
        }
        if self.kind == EventKind::ValuesReported
            && let Some(Value::Array(values)) = out.get_mut("values")
        {
            for v in values {
                let path = v["path"]
                    .as_str()
                    .and_then(|p| p.parse::<crate::lwm2m::path::ResourcePath>().ok());
                let typed = serde_json::from_value::<crate::lwm2m::path::Value>(v["value"].clone()).ok();
                if let (Some(path), Some(typed)) = (path, typed) {
                    v["display"] = Value::from(crate::lwm2m::display::display(models, &path, &typed));
                }
            }
        }
        out
    }
}

/// A fresh event id: a random UUID (RFC 9562 §5.4, version 4). Celery uses
/// it as the task id too, so a redelivered event is the same task.
pub fn new_event_id() -> String {
    uuid_v4(fastrand::u128(..))
}

/// Formats 128 random bits as a version 4, variant 10 UUID.
pub fn uuid_v4(bits: u128) -> String {
    let b = (bits & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_read_values_in_words_beside_the_typed_value() {
        let models = crate::lwm2m::model::Models::embedded();
        let event = OutboxEvent {
            id: 7,
            event_id: uuid_v4(1),
            ts: 1_700_000_000_000,
            kind: EventKind::ValuesReported,
            endpoint: Some("urn:imei:1".into()),
            payload: serde_json::json!({ "source": "notification", "values": [
                { "path": "/3303/0/5700", "ts": 1_700_000_000_000i64, "value": { "type": "float", "value": 21.5 } }
            ]}),
        };
        let r = event.readable(&models);
        assert_eq!(r["endpoint"], "urn:imei:1");
        assert_eq!(r["event_id"], event.event_id);
        assert_eq!(r["time_ms"], 1_700_000_000_000i64);
        assert_eq!(r["source"], "notification");
        assert_eq!(r["values"][0]["value"]["value"], 21.5);
        assert_eq!(r["values"][0]["display"], "21.5 °C");
    }

    #[test]
    fn kinds_round_trip_and_only_values_may_be_dropped() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.is_state(), k != EventKind::ValuesReported);
        }
        assert_eq!(EventKind::parse("device_rebooted"), None);
    }

    /// RFC 9562 §5.4: version 4 in the high nibble of octet 6, variant 10
    /// in the top bits of octet 8.
    #[test]
    fn event_ids_are_version_4_uuids() {
        for bits in [0u128, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let id = uuid_v4(bits);
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!("89ab".contains(&parts[3][..1]), "{id}");
        }
        assert_eq!(uuid_v4(0), "00000000-0000-4000-8000-000000000000");
        assert_ne!(new_event_id(), new_event_id());
    }
}
