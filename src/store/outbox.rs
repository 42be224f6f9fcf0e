//! The outbox (issue 26): events written in the transaction of the change
//! that causes them, each sink's cursor, and the bound on its size.
//!
//! Rows exist only while a sink is configured: with `outbox_sinks` empty,
//! [`emit`] writes nothing, so a server without Redis or webhooks pays one
//! indexed look-up per transaction and keeps no backlog.

use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::Value;

use super::{Store, now_ms};
use crate::error::Result;
use crate::outbox::{EventKind, OutboxEvent, new_event_id};

/// Whether any sink is configured: then the changes of this transaction
/// write their events.
pub(crate) fn wanted(tx: &Transaction<'_>) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox_sinks)")?
        .query_row([], |r| r.get(0))?)
}

/// One event into the outbox, in the caller's transaction. The caller has
/// checked [`wanted`] (the payload is built only then).
pub(crate) fn emit(tx: &Transaction<'_>, kind: EventKind, endpoint: Option<&str>, payload: &Value) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (event_id, ts, kind, endpoint, state, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        new_event_id(),
        now_ms(),
        kind.as_str(),
        endpoint,
        kind.is_state(),
        payload.to_string()
    ])?;
    Ok(())
}

/// [`emit`] when a sink is configured: for changes made one at a time
/// (an update's step, a campaign's), not in the writer's batches.
pub(crate) fn emit_if_wanted(
    tx: &Transaction<'_>,
    kind: EventKind,
    endpoint: Option<&str>,
    payload: impl FnOnce() -> Value,
) -> Result<()> {
    if wanted(tx)? {
        emit(tx, kind, endpoint, &payload())?;
    }
    Ok(())
}

impl Store {
    /// The sinks this server delivers to. A new sink starts after the
    /// events already waiting (it takes what happens from now on); a sink
    /// no longer configured is forgotten, and rows only it still needed go.
    pub fn outbox_configure(&self, sinks: &[&str]) -> Result<()> {
        let tx = self.write_tx()?;
        let known: Vec<String> = tx
            .prepare("SELECT name FROM outbox_sinks")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in known.iter().filter(|n| !sinks.contains(&n.as_str())) {
            tx.execute("DELETE FROM outbox_sinks WHERE name = ?1", [name])?;
        }
        let last: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |r| r.get(0))?;
        for name in sinks {
            tx.execute(
                "INSERT INTO outbox_sinks (name, delivered) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                params![name, last],
            )?;
        }
        trim(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Where `sink` is: the id of the last event it took.
    pub fn outbox_cursor(&self, sink: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT delivered FROM outbox_sinks WHERE name = ?1", [sink], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, event_id, ts, kind, endpoint, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            let kind: String = r.get(3)?;
            let payload: String = r.get(5)?;
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                kind,
                r.get::<_, Option<String>>(4)?,
                payload,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, event_id, ts, kind, endpoint, payload) = row?;
            // A kind this release does not know (written by a newer one,
            // then rolled back) is skipped, not delivered half-understood.
            let Some(kind) = EventKind::parse(&kind) else { continue };
            out.push(OutboxEvent {
                id,
                event_id,
                ts,
                kind,
                endpoint,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
            });
        }
        Ok(out)
    }

    /// `sink` took every event up to `id`; rows every sink has taken go.
    /// (The server's delivery task has the store writer do this.)
    #[cfg(test)]
    pub fn outbox_delivered(&self, sink: &str, id: i64) -> Result<()> {
        let tx = self.write_tx()?;
        delivered(&tx, sink, id)?;
        tx.commit()?;
        Ok(())
    }

    /// The id of the newest event in the outbox (0 when it is empty).
    pub fn outbox_last(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |r| r.get(0))?)
    }

    /// Events waiting for `sink`, at most: ids past its cursor (value
    /// reports dropped from a full outbox leave gaps). Two index look-ups,
    /// not a count of the backlog, so a large one costs nothing to watch.
    pub fn outbox_backlog(&self, sink: &str) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT MAX(0, COALESCE((SELECT MAX(id) FROM outbox), 0) - (SELECT delivered FROM outbox_sinks WHERE name = ?1))",
            [sink],
            |r| r.get(0),
        )?)
    }

    /// Keeps the outbox within `max_rows`: value reports go, oldest first;
    /// state events never (the stated policy: a receiver that missed a
    /// "deregistered" would stay wrong, one that missed a reading gets the
    /// next). Returns how many were dropped.
    pub fn outbox_bound(&self, max_rows: u64) -> Result<u64> {
        // MAX - MIN bounds the count from above without a full scan (each
        // in a query of its own: SQLite answers a lone MIN or MAX from the
        // index, both in one SELECT by scanning the table).
        let (low, high): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE((SELECT MIN(id) FROM outbox), 0), COALESCE((SELECT MAX(id) FROM outbox), 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if ((high - low + 1).max(0) as u64) <= max_rows {
            return Ok(0);
        }
        let tx = self.write_tx()?;
        let rows: i64 = tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        let excess = rows - max_rows as i64;
        let dropped = if excess > 0 {
            tx.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 0 ORDER BY id LIMIT ?1)",
                [excess],
            )?
        } else {
            0
        };
        tx.commit()?;
        Ok(dropped as u64)
    }
}

/// `sink` took every event up to `id`, in `tx`; rows every sink has taken go.
pub(crate) fn delivered(tx: &Transaction<'_>, sink: &str, id: i64) -> Result<()> {
    tx.prepare_cached("UPDATE outbox_sinks SET delivered = MAX(delivered, ?2) WHERE name = ?1")?
        .execute(params![sink, id])?;
    trim(tx)
}

/// Removes the rows every sink has taken (all rows when no sink is left).
fn trim(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "DELETE FROM outbox WHERE id <= COALESCE((SELECT MIN(delivered) FROM outbox_sinks), (SELECT MAX(id) FROM outbox))",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn emit_one(s: &Store, kind: EventKind, n: i64) {
        let tx = s.write_tx().unwrap();
        if wanted(&tx).unwrap() {
            emit(&tx, kind, Some("ep"), &json!({ "n": n })).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn rows_wait_for_every_sink_and_only_while_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        emit_one(&s, EventKind::DeviceRegistered, 0);
        assert!(s.outbox_after(0, 10).unwrap().is_empty(), "no sink, no row");

        s.outbox_configure(&["celery", "webhook"]).unwrap();
        for n in 1..=3 {
            emit_one(&s, EventKind::DeviceRegistered, n);
        }
        let rows = s.outbox_after(0, 10).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].payload["n"], 1);
        assert_ne!(rows[0].event_id, rows[1].event_id);
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));

        s.outbox_delivered("celery", rows[2].id).unwrap();
        assert_eq!(
            s.outbox_after(0, 10).unwrap().len(),
            3,
            "the webhook has not taken them"
        );
        assert_eq!(s.outbox_backlog("webhook").unwrap(), 3);
        assert_eq!(s.outbox_backlog("celery").unwrap(), 0);
        s.outbox_delivered("webhook", rows[1].id).unwrap();
        assert_eq!(s.outbox_after(0, 10).unwrap().len(), 1);

        // A sink dropped from the configuration no longer holds rows; a
        // new one starts after what is waiting.
        s.outbox_configure(&["celery", "other"]).unwrap();
        assert!(s.outbox_after(0, 10).unwrap().is_empty());
        emit_one(&s, EventKind::DeviceUpdated, 4);
        assert_eq!(s.outbox_backlog("other").unwrap(), 1);
        s.outbox_configure(&[]).unwrap();
        assert!(s.outbox_after(0, 10).unwrap().is_empty());
        emit_one(&s, EventKind::DeviceUpdated, 5);
        assert!(s.outbox_after(0, 10).unwrap().is_empty());
    }

    #[test]
    fn a_full_outbox_drops_value_reports_oldest_first_never_state_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        s.outbox_configure(&["celery"]).unwrap();
        for n in 0..10 {
            let kind = if n % 2 == 0 {
                EventKind::ValuesReported
            } else {
                EventKind::DeviceUpdated
            };
            emit_one(&s, kind, n);
        }
        assert_eq!(s.outbox_bound(10).unwrap(), 0);
        assert_eq!(s.outbox_bound(7).unwrap(), 3);
        let left: Vec<i64> = s
            .outbox_after(0, 20)
            .unwrap()
            .iter()
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect();
        assert_eq!(left, [1, 3, 5, 6, 7, 8, 9], "the three oldest readings went");
        assert_eq!(s.outbox_bound(2).unwrap(), 2, "then every reading");
        let left: Vec<EventKind> = s.outbox_after(0, 20).unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(left, [EventKind::DeviceUpdated; 5], "state events stay, over the bound");
    }
}
