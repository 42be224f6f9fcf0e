//! Queued operations: durable before the caller hears "queued" (Core §6.3
//! operations, as the server core dispatches them).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::error::{Error, Result};
use crate::lwm2m::content::link_format;
use crate::lwm2m::operation::{Operation, OperationId, OperationKind, OperationState, Outcome};
use crate::lwm2m::path::ResourcePath;

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OperationRow {
    pub id: OperationId,
    pub endpoint: String,
    pub kind: OperationKind,
    pub state: OperationState,
    pub created_at: i64,
    pub updated_at: i64,
    pub deadline: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub coap_code: Option<String>,
    pub result: Option<serde_json::Value>,
}

impl Store {
    /// Queue an operation; committed before this returns, so a crash or
    /// restart after it cannot lose it.
    pub fn queue_operation(
        &self,
        endpoint: &str,
        kind: &OperationKind,
        deadline: i64,
        max_attempts: u32,
    ) -> Result<OperationId> {
        insert_operation(&self.conn, endpoint, kind, deadline, max_attempts)
    }

    /// Queue an operation for Celery task `task_id`, or find the one it
    /// made before: a task taken twice (the server died between committing
    /// and acknowledging it) makes one operation. `(id, new)`.
    pub fn queue_task_operation(
        &mut self,
        endpoint: &str,
        kind: &OperationKind,
        deadline: i64,
        max_attempts: u32,
        task_id: &str,
    ) -> Result<(OperationId, bool)> {
        let tx = self.write_tx()?;
        let known: Option<OperationId> = tx
            .query_row("SELECT id FROM operations WHERE celery_task_id = ?1", [task_id], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = known {
            return Ok((id, false));
        }
        let id = insert_operation(&tx, endpoint, kind, deadline, max_attempts)?;
        tx.execute(
            "UPDATE operations SET celery_task_id = ?2 WHERE id = ?1",
            params![id, task_id],
        )?;
        tx.commit()?;
        Ok((id, true))
    }

    /// Queue `per_endpoint` copies of one operation for each endpoint in a
    /// single transaction (bulk actions, benchmarks).
    pub fn queue_operations(
        &mut self,
        endpoints: &[String],
        kind: &OperationKind,
        per_endpoint: usize,
        deadline: i64,
        max_attempts: u32,
    ) -> Result<()> {
        let request = serde_json::to_string(kind).expect("serialises");
        let now = now_ms();
        let tx = self.write_tx()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO operations (endpoint, kind, request, state, created_at, updated_at, deadline, max_attempts)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6)",
            )?;
            // All or none: an endpoint removed meanwhile fails the lot.
            for e in endpoints {
                super::devices::require_device(&tx, e)?;
            }
            for _ in 0..per_endpoint {
                for e in endpoints {
                    st.execute(params![e, kind.name(), request, now, deadline, max_attempts])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn count_registrations(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM registrations", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Operations by kind and state (the metrics' queue depth and history).
    pub fn operation_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, state, COUNT(*) FROM operations GROUP BY kind, state ORDER BY kind, state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn count_operations(&self, state: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM operations WHERE state = ?1", [state], |r| {
                r.get(0)
            })?;
        Ok(n as u64)
    }

    /// Mark a queued operation cancelled; the server picks it up like a new one.
    pub fn cancel_operation(&self, id: OperationId) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE operations SET state = 'cancelled', updated_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }

    fn operation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperationRow> {
        let request: String = r.get(2)?;
        let state: String = r.get(3)?;
        let result: Option<String> = r.get(10)?;
        Ok(OperationRow {
            id: r.get(0)?,
            endpoint: r.get(1)?,
            kind: serde_json::from_str(&request)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e)))?,
            state: OperationState::parse(&state).unwrap_or(OperationState::Failed),
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            deadline: r.get(6)?,
            attempts: r.get(7)?,
            max_attempts: r.get(8)?,
            coap_code: r.get(9)?,
            result: result.and_then(|s| serde_json::from_str(&s).ok()),
        })
    }

    const OPERATION_SQL: &'static str = "SELECT id, endpoint, request, state, created_at, updated_at, deadline, attempts, max_attempts, coap_code, result FROM operations";

    pub fn operation(&self, id: OperationId) -> Result<OperationRow> {
        let mut st = self.conn.prepare(&format!("{} WHERE id = ?1", Self::OPERATION_SQL))?;
        st.query_row([id], Self::operation_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("operation {id}")))
    }

    /// Those of `ids` that have ended, in one query (the FOTA task asks
    /// this every tick about every operation its updates wait for).
    pub fn ended_operations(&self, ids: &[OperationId]) -> Result<Vec<OperationRow>> {
        let ids: Vec<rusqlite::types::Value> = ids.iter().map(|&i| i.into()).collect();
        let mut st = self.conn.prepare_cached(&format!(
            "{} WHERE id IN rarray(?1) AND state NOT IN ('queued', 'sent')",
            Self::OPERATION_SQL
        ))?;
        let rows = st.query_map([std::rc::Rc::new(ids)], Self::operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn operations_of(&self, endpoint: &str, limit: usize) -> Result<Vec<OperationRow>> {
        let mut st = self.conn.prepare(&format!(
            "{} WHERE endpoint = ?1 ORDER BY id DESC LIMIT ?2",
            Self::OPERATION_SQL
        ))?;
        let rows = st.query_map(params![endpoint, limit as i64], Self::operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Queued or sent operations with id > `after`, oldest first: the
    /// server's start-up load and its poll for operations queued elsewhere.
    /// `sent` ones were interrupted by a restart and go out again.
    pub fn pending_operations(&self, after: OperationId) -> Result<Vec<Operation>> {
        let mut st = self.conn.prepare(&format!(
            "{} WHERE state IN ('queued', 'sent') AND id > ?1 ORDER BY id",
            Self::OPERATION_SQL
        ))?;
        let rows = st.query_map([after], Self::operation_row)?;
        let rows: Vec<OperationRow> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .map(|r| Operation {
                id: r.id,
                endpoint: r.endpoint,
                kind: r.kind,
                deadline: r.deadline,
                attempts: r.attempts,
                max_attempts: r.max_attempts,
            })
            .collect())
    }

    /// Operations cancelled by another process since `since` (Unix ms).
    pub fn cancelled_since(&self, since: i64) -> Result<Vec<OperationId>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM operations WHERE state = 'cancelled' AND updated_at >= ?1")?;
        let rows = st.query_map([since], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Persisted observations: (token, endpoint, the Observe operation).
    pub fn observations(&self) -> Result<Vec<(u64, String, OperationKind)>> {
        let mut st = self.conn.prepare("SELECT token, endpoint, request FROM observations")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (token, endpoint, request) = row?;
            // The token is a u64 kept bit-for-bit in SQLite's i64.
            if let Ok(kind) = serde_json::from_str(&request) {
                out.push((token as u64, endpoint, kind));
            }
        }
        Ok(out)
    }

    /// The paths `endpoint` has under observation now (single and
    /// composite observations alike), for the device page's marks.
    pub fn observed_paths(&self, endpoint: &str) -> Result<std::collections::BTreeSet<ResourcePath>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT request FROM observations WHERE endpoint = ?1")?;
        let rows = st.query_map([endpoint], |r| r.get::<_, String>(0))?;
        let mut out = std::collections::BTreeSet::new();
        for request in rows {
            match serde_json::from_str(&request?) {
                Ok(OperationKind::Observe { path }) => {
                    out.insert(path);
                }
                Ok(OperationKind::ObserveComposite { paths }) => out.extend(paths),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Paths the device's latest successful Discovers answered (Core 1.1
    /// §6.3.5: objects, instances and resources as link-format), newest
    /// first: the object tree draws the resources of an object no
    /// definition knows from them.
    pub fn discovered_paths(&self, endpoint: &str) -> Result<Vec<ResourcePath>> {
        let mut st = self.conn.prepare_cached(
            "SELECT result FROM operations WHERE endpoint = ?1 AND kind = 'discover' AND state = 'succeeded'
             ORDER BY id DESC LIMIT 32",
        )?;
        let rows = st.query_map([endpoint], |r| r.get::<_, Option<String>>(0))?;
        let mut out = Vec::new();
        for result in rows {
            let Some(Outcome::Succeeded(r)) = result?.and_then(|j| serde_json::from_str(&j).ok()) else {
                continue;
            };
            let links = r.links.as_deref().map(link_format::parse).and_then(|l| l.ok());
            out.extend(
                links
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|l| l.target.parse::<ResourcePath>().ok()),
            );
        }
        Ok(out)
    }

    pub fn max_operation_id(&self) -> Result<OperationId> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM operations", [], |r| r.get(0))?)
    }
}

/// Insert a queued operation for a provisioned `endpoint` on `conn` (a
/// connection, or a transaction that also writes other rows).
pub(super) fn insert_operation(
    conn: &rusqlite::Connection,
    endpoint: &str,
    kind: &OperationKind,
    deadline: i64,
    max_attempts: u32,
) -> Result<OperationId> {
    super::devices::require_device(conn, endpoint)?;
    let now = now_ms();
    conn.execute(
        "INSERT INTO operations (endpoint, kind, request, state, created_at, updated_at, deadline, max_attempts)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6)",
        params![
            endpoint,
            kind.name(),
            serde_json::to_string(kind).expect("serialises"),
            now,
            deadline,
            max_attempts
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The JSON form of an outcome's result, and its CoAP code, for the row.
pub fn outcome_columns(outcome: &Outcome) -> (Option<String>, String) {
    let code = match outcome {
        Outcome::Succeeded(r) => Some(r.code.clone()),
        Outcome::Failed { code, .. } => code.clone(),
        _ => None,
    };
    (code, serde_json::to_string(outcome).expect("serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 13: a resource Write queued with `replace: false` by an
    /// older flownexus is dispatched as a Write-Replace; instance writes
    /// and finished rows keep what they had.
    #[test]
    fn old_partial_updates_of_resources_become_replaces() {
        // A database as flownexus left it at schema 12, with three writes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let old = super::super::migrations::database_at(&path, 12);
        old.execute("INSERT INTO devices (endpoint, created_at) VALUES ('dev', 0)", [])
            .unwrap();
        let write = |path: &str, state: &str| {
            old.execute(
                "INSERT INTO operations (endpoint, kind, request, state, created_at, updated_at, deadline, max_attempts)
                 VALUES ('dev', 'write', ?1, ?2, 0, 0, ?3, 3)",
                params![
                    format!(r#"{{"op":"write","path":"{path}","values":[{{"path":"/1/0/1","value":"60"}}],"replace":false}}"#),
                    state,
                    i64::MAX
                ],
            )
            .unwrap();
            old.last_insert_rowid()
        };
        let resource = write("/1/0/1", "queued");
        let instance = write("/1/0", "queued");
        let done = write("/1/0/1", "failed");
        drop(old);
        let store = Store::open(&path).unwrap();
        let replace = |id| match store.operation(id).unwrap().kind {
            OperationKind::Write { replace, .. } => replace,
            k => panic!("{k:?}"),
        };
        assert_eq!(replace(resource), None, "goes out as the path allows: PUT");
        assert_eq!(replace(instance), Some(false), "an instance keeps its Partial Update");
        assert_eq!(replace(done), Some(false), "history is not rewritten");
    }
}
