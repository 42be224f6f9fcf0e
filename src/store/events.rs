//! The event log.

use rusqlite::params;
use serde::Serialize;

use super::Store;
use crate::error::Result;

/// The kinds of event the store writer records, each once, with the
/// word an operator picks it by (the events page's drop-down).
pub mod kind {
    pub const REGISTERED: &str = "registered";
    pub const DEREGISTERED: &str = "deregistered";
    pub const EXPIRED: &str = "expired";
    pub const OPERATION: &str = "operation";
    pub const REJECTED: &str = "rejected";
    pub const DOOM_LOOP: &str = "fota-doom-loop";
    pub const ALL: &[(&str, &str)] = &[
        (REGISTERED, "Registered"),
        (DEREGISTERED, "De-registered"),
        (EXPIRED, "Registration expired"),
        (OPERATION, "Operation finished"),
        (REJECTED, "Request refused"),
        (DOOM_LOOP, "FOTA doom loop"),
    ];
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventRow {
    pub id: i64,
    pub ts: i64,
    pub endpoint: Option<String>,
    pub kind: String,
    pub detail: serde_json::Value,
}

impl Store {
    /// Newest events first, optionally of one endpoint.
    pub fn events(&self, endpoint: Option<&str>, limit: usize) -> Result<Vec<EventRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, ts, endpoint, kind, detail FROM events WHERE (?1 IS NULL OR endpoint = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![endpoint, limit as i64], Self::event_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        let detail: String = r.get(4)?;
        Ok(EventRow {
            id: r.get(0)?,
            ts: r.get(1)?,
            endpoint: r.get(2)?,
            kind: r.get(3)?,
            detail: serde_json::from_str(&detail).unwrap_or_default(),
        })
    }
}
