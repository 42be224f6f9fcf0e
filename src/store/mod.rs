//! The SQLite store (rusqlite, WAL). Only this module speaks SQL.
//!
//! One writer thread ([`writer`]) applies server events in batched
//! transactions; readers (CLI, API, the operation poller) open their own
//! connections, which WAL lets run beside the writer.
//!
//! Each domain keeps its SQL in a file of its own (`devices`,
//! `registrations`, `values`, `events`, `operations`, `firmware`, `fota`, `campaigns`,
//! [`access`], [`dashboard`]), each adding its queries to [`Store`]; the
//! schema is in `migrations`.

pub mod access;
pub mod backup;
mod campaigns;
pub mod dashboard;
mod devices;
mod events;
mod firmware;
mod fota;
pub mod journal;
mod migrations;
mod operations;
pub(crate) mod outbox;
pub mod profiles;
mod registrations;
pub mod sealing;
pub mod settings;
pub mod tags;
mod values;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::error::{Error, Result};
pub use campaigns::{
    CampaignCounts, CampaignReport, CampaignRow, CampaignStep, Command, MemberRow, MemberStatus, NewCampaign, Started,
};
pub use devices::{DeviceSummary, Status};
pub use events::{EventRow, kind as event_kind};
pub use firmware::{DownloadRecord, FirmwareRow, NewFirmware};
pub use fota::{UpdateRow, UpdateStep};
use migrations::MIGRATIONS;
pub use operations::{OperationRow, outcome_columns};
use values::{JOURNALLED, seq_array, sql_value};
pub use values::{StoredValue, hour_of, record_row};

pub struct Store {
    conn: Connection,
    /// The writer's journal books, in the server's own process.
    pending: Option<writer::SharedPending>,
    /// Device keys are sealed with it on the way in, opened on the way out.
    seal: sealing::KeySeal,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                cause: source,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: a commit is durable once the WAL is synced at
        // checkpoint; a power cut can lose the last commits, never corrupt.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The default 2 MB page cache makes index updates miss once the
        // value history and download accounting grow past a million rows.
        // Negative: KiB; pages are allocated only as they are used.
        conn.pragma_update(None, "cache_size", -32_768)?;
        rusqlite::vtab::array::load_module(&conn)?;
        let seal = sealing::KeySeal::beside(path)?;
        let mut store = Store {
            conn,
            pending: None,
            seal,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self.write_tx()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )?;
        let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| {
            r.get(0)
        })?;
        if current as usize > MIGRATIONS.len() {
            return Err(Error::malformed(
                "database",
                format!(
                    "schema version {current} is newer than this flownexus ({})",
                    MIGRATIONS.len()
                ),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)?;
            if i + 1 == migrations::ENDPOINT_ORDER {
                migrations::fill_endpoint_order(&tx)?;
            }
            if i + 1 == migrations::SEAL_KEYS {
                migrations::seal_device_keys(&tx, &self.seal)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![i as i64 + 1, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Find journalled values through the writer's books instead of a scan.
    pub fn with_pending(mut self, pending: writer::SharedPending) -> Store {
        self.pending = Some(pending);
        self
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0))?)
    }

    /// A write transaction, holding the write lock from its start. In WAL
    /// mode a deferred transaction that reads and then writes fails at once
    /// with SQLITE_BUSY_SNAPSHOT (517) if another connection committed in
    /// between, whatever the busy timeout; BEGIN IMMEDIATE waits instead.
    pub(crate) fn write_tx(&self) -> Result<rusqlite::Transaction<'_>> {
        Ok(rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tags::Tags;

    /// Two processes changing devices at once: read-then-write transactions
    /// (remove_device reads the id first) wait for each other instead of
    /// failing with SQLITE_BUSY_SNAPSHOT.
    #[test]
    fn concurrent_writers_wait_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        Store::open(&path).unwrap();
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&path).unwrap();
                    for i in 0..150 {
                        let ep = format!("dev-{w}-{i}");
                        s.add_device(&ep, None, &Tags::default()).unwrap();
                        s.remove_device(&ep).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("no writer failed");
        }
    }
}
