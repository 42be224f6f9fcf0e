//! The SQLite store (rusqlite, WAL). Only this module speaks SQL.
//!
//! One writer thread ([`writer`]) applies server events in batched
//! transactions; readers (CLI, API, the operation poller) open their own
//! connections, which WAL lets run beside the writer.

pub mod access;
pub mod dashboard;
pub mod journal;
pub mod tags;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, named_params, params};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lwm2m::operation::{Operation, OperationId, OperationKind, OperationState, Outcome};
use crate::lwm2m::path::{Record, ResourcePath, Value};
use crate::lwm2m::registration::{Registration, RegistrationId};
use crate::psk::Psk;
use crate::store::tags::Tags;

/// Versioned migrations, applied in order at start-up; never edit one that
/// has shipped, add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: devices, registrations, values, events, operations
    r#"
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL UNIQUE,
        psk_identity TEXT UNIQUE,
        tags TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    );
    CREATE TABLE registrations (
        device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        reg_id TEXT NOT NULL UNIQUE,
        peer TEXT NOT NULL,
        lifetime INTEGER NOT NULL,
        version TEXT NOT NULL,
        binding TEXT NOT NULL,
        queue_mode INTEGER NOT NULL,
        sms TEXT,
        object_links TEXT NOT NULL,
        root_path TEXT NOT NULL,
        announced_format INTEGER,
        registered_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    -- Value history: one row per reported value; `value` keeps SQLite's
    -- own type (INTEGER, REAL, TEXT, BLOB), `vtype` the LwM2M type.
    CREATE TABLE resource_values (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY
    );
    CREATE INDEX resource_values_by_path ON resource_values(device_id, path, ts);
    CREATE INDEX resource_values_by_ts ON resource_values(ts);
    -- Latest value per resource, kept by upsert so reads never scan history.
    CREATE TABLE latest_values (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY,
        PRIMARY KEY (device_id, path)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        endpoint TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_by_endpoint ON events(endpoint, ts);
    CREATE INDEX events_by_ts ON events(ts);
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        kind TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        coap_code TEXT,
        result TEXT
    );
    CREATE INDEX operations_pending ON operations(state) WHERE state IN ('queued', 'sent');
    CREATE INDEX operations_by_endpoint ON operations(endpoint, id);
    "#,
    // 2: observations, so a restart keeps accepting their notifications
    r#"
    CREATE TABLE observations (
        token INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX observations_by_endpoint ON observations(endpoint);
    "#,
    // 3: the firmware catalogue and download accounting
    r#"
    CREATE TABLE firmware (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        image_type TEXT NOT NULL,
        uploaded_at INTEGER NOT NULL,
        uploader TEXT NOT NULL,
        notes TEXT NOT NULL DEFAULT '',
        deleted_at INTEGER
    );
    -- Names are unique among live images: /binaries/NAME must mean one file.
    CREATE UNIQUE INDEX firmware_live_name ON firmware(name) WHERE deleted_at IS NULL;
    CREATE INDEX firmware_by_sha ON firmware(sha256);
    CREATE TABLE downloads (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        firmware_id INTEGER NOT NULL,
        range_start INTEGER,
        range_end INTEGER,
        status INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        peer TEXT NOT NULL,
        device TEXT,
        doom_loop INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX downloads_by_firmware ON downloads(firmware_id, ts);
    CREATE INDEX downloads_by_device ON downloads(device, ts) WHERE device IS NOT NULL;
    "#,
    // 4: per-device PSK for CoAP over DTLS (the identity column exists since 1)
    r#"
    ALTER TABLE devices ADD COLUMN psk_key BLOB;
    "#,
    // 5: a counter bumped by every change to a device's key, whoever makes
    // it (server, CLI, API): the running server polls it and reloads its
    // in-memory key table when it moves.
    r#"
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('psk_generation', 0);
    CREATE TRIGGER psk_inserted AFTER INSERT ON devices WHEN NEW.psk_identity IS NOT NULL
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    CREATE TRIGGER psk_updated AFTER UPDATE OF psk_identity, psk_key ON devices
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    CREATE TRIGGER psk_deleted AFTER DELETE ON devices WHEN OLD.psk_identity IS NOT NULL
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    "#,
    // 6: operators of the dashboard and API; the password as an argon2id
    // PHC string, never anything reversible.
    r#"
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        password_changed_at INTEGER NOT NULL
    );
    "#,
    // 7: dashboard sessions and API tokens. Only SHA-256 digests of the
    // bearer secrets are kept: a copy of the database opens nothing.
    r#"
    CREATE TABLE web_sessions (
        id_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        address TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX web_sessions_by_user ON web_sessions(user_id);
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX api_tokens_by_user ON api_tokens(user_id);
    CREATE INDEX devices_by_created ON devices(created_at);
    CREATE INDEX registrations_by_last_seen ON registrations(last_seen);
    -- Devices per firmware version (overview chart, list filter).
    CREATE INDEX latest_values_by_path ON latest_values(path, value);
    "#,
    // 8: values stored per hour, counted as they are written, so the
    // overview's chart reads 24 rows instead of counting the history.
    r#"
    CREATE TABLE values_per_hour (hour INTEGER PRIMARY KEY, count INTEGER NOT NULL);
    INSERT INTO values_per_hour (hour, count)
        SELECT ts / 3600000 * 3600000, COUNT(*) FROM resource_values GROUP BY 1;
    "#,
    // 9: when each device was last seen, on the device itself (0: never), so
    // the device list sorts by it from an index instead of sorting the fleet
    // through a join; both keyset sorts break ties by endpoint in the index.
    r#"
    ALTER TABLE devices ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET last_seen = COALESCE((SELECT last_seen FROM registrations WHERE device_id = devices.id), 0);
    CREATE INDEX devices_by_last_seen ON devices(last_seen, endpoint);
    DROP INDEX devices_by_created;
    CREATE INDEX devices_by_created ON devices(created_at, endpoint);
    "#,
    // 10: the device list no longer sorts by the registration's last_seen
    // (migration 9); its index only cost a write per Update.
    r#"
    DROP INDEX registrations_by_last_seen;
    "#,
    // 11: the value history as one B-tree clustered by device, resource and
    // time (it was a table and two indexes), fed through a journal in
    // arrival order (`store::journal` says why). `seq` is the value's
    // journal sequence number, unique, so a value moved twice is one row.
    r#"
    CREATE TABLE value_history (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY,
        PRIMARY KEY (device_id, path, ts, seq)
    ) WITHOUT ROWID;
    INSERT INTO value_history (device_id, path, ts, seq, vtype, value)
        SELECT device_id, path, ts, rowid, vtype, value FROM resource_values ORDER BY device_id, path, ts, rowid;
    CREATE TABLE value_journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY
    );
    INSERT INTO sqlite_sequence (name, seq) SELECT 'value_journal', COALESCE(MAX(rowid), 0) FROM resource_values;
    DROP TABLE resource_values;
    -- Only the firmware version is looked up by value; indexing every
    -- resource cost a random write per latest value.
    DROP INDEX latest_values_by_path;
    CREATE INDEX latest_firmware_versions ON latest_values(value) WHERE path = '/3/0/3';
    "#,
    // 12: the device list's search ("endpoint or PSK identity contains")
    // from a trigram index instead of a scan of every device. External
    // content: the index holds no copy of the names. Case-sensitive, like
    // the scan that short searches still use.
    r#"
    CREATE VIRTUAL TABLE device_search USING fts5(
        endpoint, psk_identity, content = 'devices', content_rowid = 'id', tokenize = 'trigram case_sensitive 1'
    );
    CREATE TRIGGER device_search_insert AFTER INSERT ON devices BEGIN
        INSERT INTO device_search (rowid, endpoint, psk_identity) VALUES (new.id, new.endpoint, new.psk_identity);
    END;
    CREATE TRIGGER device_search_delete AFTER DELETE ON devices BEGIN
        INSERT INTO device_search (device_search, rowid, endpoint, psk_identity)
            VALUES ('delete', old.id, old.endpoint, old.psk_identity);
    END;
    CREATE TRIGGER device_search_update AFTER UPDATE OF endpoint, psk_identity ON devices BEGIN
        INSERT INTO device_search (device_search, rowid, endpoint, psk_identity)
            VALUES ('delete', old.id, old.endpoint, old.psk_identity);
        INSERT INTO device_search (rowid, endpoint, psk_identity) VALUES (new.id, new.endpoint, new.psk_identity);
    END;
    INSERT INTO device_search (device_search) VALUES ('rebuild');
    "#,
    // 13: Writes that an older flownexus queued with `replace: false` on a
    // resource path (its default, which went out as a POST: an Execute on
    // the device, LwM2M's operation-to-CoAP mapping) become plain Writes,
    // which go out as Write-Replace (PUT); see lwm2m::operation::write_method.
    r#"
    UPDATE operations SET request = json_remove(request, '$.replace')
     WHERE state IN ('queued', 'sent')
       AND json_extract(request, '$.op') = 'write'
       AND json_extract(request, '$.replace') = 0
       AND length(json_extract(request, '$.path')) - length(replace(json_extract(request, '$.path'), '/', '')) >= 3;
    "#,
];

/// A device's values still only in the value journal (`:device`; `:seqs`
/// their sequence numbers, from the writer's books or a scan), without
/// those a concurrent move already put in the history: readers add these
/// to what the history and the latest values hold.
const JOURNALLED: &str = "SELECT path, ts, seq, vtype, value FROM value_journal j
     WHERE seq IN rarray(:seqs) AND device_id = :device
       AND NOT EXISTS (SELECT 1 FROM value_history h
                       WHERE h.device_id = :device AND h.path = j.path AND h.ts = j.ts AND h.seq = j.seq)";

/// Journal ranges as the sequence numbers `rarray(?)` takes.
fn seq_array(ranges: &[journal::SeqRange]) -> rusqlite::vtab::array::Array {
    std::rc::Rc::new(ranges.iter().flat_map(|r| r.first..=r.last).map(Into::into).collect())
}

/// The hour (Unix ms) a value's timestamp is counted in.
pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(3_600_000) * 3_600_000
}

pub struct Store {
    conn: Connection,
    /// The writer's journal books, in the server's own process.
    pending: Option<writer::SharedPending>,
}

/// A device row with its registration state, for `device list/show`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DeviceSummary {
    pub endpoint: String,
    pub psk_identity: Option<String>,
    pub tags: String,
    pub registered: bool,
    pub queue_mode: bool,
    pub last_seen: Option<i64>,
    pub updated_at: Option<i64>,
    pub lifetime: Option<u32>,
    pub firmware_version: Option<String>,
    pub created_at: i64,
}

/// Whether a device can be reached now (the CLI's and dashboard's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Sleeping,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Sleeping => "sleeping",
            Status::Offline => "offline",
        }
    }
}

impl DeviceSummary {
    pub fn status(&self, now_ms: i64, awake_window_s: u64, grace_s: u64) -> Status {
        match (self.registered, self.updated_at, self.lifetime, self.last_seen) {
            (true, Some(u), Some(lt), Some(seen)) if now_ms <= u + (i64::from(lt) + grace_s as i64) * 1000 => {
                if self.queue_mode && now_ms > seen + awake_window_s as i64 * 1000 {
                    Status::Sleeping
                } else {
                    Status::Online
                }
            }
            _ => Status::Offline,
        }
    }
}

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

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventRow {
    pub id: i64,
    pub ts: i64,
    pub endpoint: Option<String>,
    pub kind: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StoredValue {
    pub path: ResourcePath,
    pub ts: i64,
    pub value: Value,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stored value's SQLite form: LwM2M type name and SQL value.
fn sql_value(v: &Value) -> (&'static str, rusqlite::types::Value) {
    use rusqlite::types::Value as S;
    match v {
        Value::String(s) => ("string", S::Text(s.clone())),
        Value::CoreLink(s) => ("corelnk", S::Text(s.clone())),
        Value::Integer(i) => ("integer", S::Integer(*i)),
        Value::Time(i) => ("time", S::Integer(*i)),
        // u64 above i64::MAX is kept as text so nothing is lost.
        Value::Unsigned(u) => (
            "unsigned",
            i64::try_from(*u).map_or_else(|_| S::Text(u.to_string()), S::Integer),
        ),
        Value::Float(f) => ("float", S::Real(*f)),
        Value::Boolean(b) => ("boolean", S::Integer(i64::from(*b))),
        Value::Opaque(b) => ("opaque", S::Blob(b.clone())),
        Value::ObjectLink(o, i) => ("objlnk", S::Text(format!("{o}:{i}"))),
    }
}

fn from_sql(vtype: &str, v: rusqlite::types::Value) -> Option<Value> {
    use rusqlite::types::Value as S;
    Some(match (vtype, v) {
        ("string", S::Text(s)) => Value::String(s),
        ("corelnk", S::Text(s)) => Value::CoreLink(s),
        ("integer", S::Integer(i)) => Value::Integer(i),
        ("time", S::Integer(i)) => Value::Time(i),
        ("unsigned", S::Integer(i)) => Value::Unsigned(i as u64),
        ("unsigned", S::Text(s)) => Value::Unsigned(s.parse().ok()?),
        ("float", S::Real(f)) => Value::Float(f),
        ("float", S::Integer(i)) => Value::Float(i as f64),
        ("boolean", S::Integer(i)) => Value::Boolean(i != 0),
        ("opaque", S::Blob(b)) => Value::Opaque(b),
        ("objlnk", S::Text(s)) => {
            let (o, i) = s.split_once(':')?;
            Value::ObjectLink(o.parse().ok()?, i.parse().ok()?)
        }
        _ => return None,
    })
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
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
        let mut store = Store { conn, pending: None };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
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

    // ---- devices -------------------------------------------------------------

    /// Provision a device, with a PSK for DTLS if given.
    pub fn add_device(&self, endpoint: &str, psk: Option<&Psk>, tags: &Tags) -> Result<i64> {
        insert_device(&self.conn, endpoint, psk, tags)
    }

    /// File a device under these tags instead of the ones it had.
    pub fn set_tags(&self, endpoint: &str, tags: &Tags) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE devices SET tags = ?2 WHERE endpoint = ?1",
            params![endpoint, tags.to_string()],
        )?;
        if n == 0 {
            return Err(Error::UnknownEndpoint(endpoint.to_string()));
        }
        Ok(())
    }

    /// Replace a device's PSK (identity and key). Sessions using the old
    /// key end when the DTLS layer refreshes its cache.
    pub fn rotate_psk(&self, endpoint: &str, psk: &Psk) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE devices SET psk_identity = ?2, psk_key = ?3 WHERE endpoint = ?1",
                params![endpoint, psk.identity, psk.key()],
            )
            .map_err(|e| identity_taken(e, psk))?;
        if n == 0 {
            return Err(Error::UnknownEndpoint(endpoint.to_string()));
        }
        Ok(())
    }

    /// Add many provisioned devices in one transaction: all or none. Every
    /// row that clashes with the store is reported with its line.
    pub fn import_devices(
        &mut self,
        rows: &[crate::psk::Provisioned],
    ) -> Result<std::result::Result<usize, Vec<String>>> {
        let tx = self.conn.transaction()?;
        let mut errors = Vec::new();
        for r in rows {
            if let Err(e) = insert_device(&tx, &r.endpoint, Some(&r.psk), &Tags::default()) {
                errors.push(format!("line {}: {e}", r.line));
            }
        }
        if !errors.is_empty() {
            return Ok(Err(errors)); // dropping `tx` rolls everything back
        }
        tx.commit()?;
        Ok(Ok(rows.len()))
    }

    pub fn remove_device(&self, endpoint: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let id: Option<i64> = tx
            .query_row("SELECT id FROM devices WHERE endpoint = ?1", [endpoint], |r| r.get(0))
            .optional()?;
        let id = id.ok_or_else(|| Error::UnknownEndpoint(endpoint.to_string()))?;
        tx.execute("DELETE FROM value_history WHERE device_id = ?1", [id])?;
        tx.execute("DELETE FROM value_journal WHERE device_id = ?1", [id])?;
        tx.execute("DELETE FROM latest_values WHERE device_id = ?1", [id])?;
        tx.execute(
            "UPDATE operations SET state = 'cancelled', updated_at = ?2 WHERE endpoint = ?1 AND state IN ('queued', 'sent')",
            params![endpoint, now_ms()],
        )?;
        tx.execute("DELETE FROM devices WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Every device key, for the DTLS handshake's in-memory table.
    pub fn device_keys(&self) -> Result<Vec<(String, Psk)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT endpoint, psk_identity, psk_key FROM devices WHERE psk_identity IS NOT NULL AND psk_key IS NOT NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (endpoint, identity, key) = row?;
            out.push((endpoint, Psk::from_parts(identity, key)));
        }
        Ok(out)
    }

    /// Moves whenever any device key is added, changed or removed.
    pub fn keys_generation(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM counters WHERE name = 'psk_generation'", [], |r| {
                r.get(0)
            })?)
    }

    pub fn endpoints(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT endpoint FROM devices ORDER BY endpoint")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    const SUMMARY_SQL: &'static str = "SELECT d.endpoint, d.psk_identity, d.tags, r.reg_id IS NOT NULL, r.queue_mode, NULLIF(d.last_seen, 0), r.updated_at, r.lifetime,
            (SELECT value FROM latest_values l WHERE l.device_id = d.id AND l.path = '/3/0/3'), d.created_at
         FROM devices d LEFT JOIN registrations r ON r.device_id = d.id";

    fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceSummary> {
        Ok(DeviceSummary {
            endpoint: r.get(0)?,
            psk_identity: r.get(1)?,
            tags: r.get(2)?,
            registered: r.get(3)?,
            queue_mode: r.get::<_, Option<bool>>(4)?.unwrap_or(false),
            last_seen: r.get(5)?,
            updated_at: r.get(6)?,
            lifetime: r.get(7)?,
            firmware_version: r.get::<_, Option<rusqlite::types::Value>>(8)?.and_then(|v| match v {
                rusqlite::types::Value::Text(s) => Some(s),
                _ => None,
            }),
            created_at: r.get(9)?,
        })
    }

    pub fn list_devices(&self, limit: usize, offset: usize) -> Result<Vec<DeviceSummary>> {
        let mut st = self
            .conn
            .prepare(&format!("{} ORDER BY d.endpoint LIMIT ?1 OFFSET ?2", Self::SUMMARY_SQL))?;
        let rows = st.query_map(params![limit as i64, offset as i64], Self::summary_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn device(&self, endpoint: &str) -> Result<DeviceSummary> {
        let mut st = self
            .conn
            .prepare(&format!("{} WHERE d.endpoint = ?1", Self::SUMMARY_SQL))?;
        st.query_row([endpoint], Self::summary_row)
            .optional()?
            .ok_or_else(|| Error::UnknownEndpoint(endpoint.to_string()))
    }

    // ---- registrations --------------------------------------------------------

    /// All persisted registrations, for restoring the server core.
    pub fn registrations(&self) -> Result<Vec<Registration<String>>> {
        self.registrations_where("1", [])
    }

    fn registrations_where(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Registration<String>>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT r.reg_id, d.endpoint, r.peer, r.lifetime, r.version, r.binding, r.queue_mode, r.sms, r.object_links,
                    r.root_path, r.announced_format, r.registered_at, r.updated_at, r.last_seen
             FROM registrations r JOIN devices d ON d.id = r.device_id WHERE {filter}"
        ))?;
        let rows = st.query_map(args, |r| {
            let id: String = r.get(0)?;
            Ok(Registration {
                id: RegistrationId::parse(&id).unwrap_or(RegistrationId(0)),
                endpoint: r.get(1)?,
                peer: r.get(2)?,
                lifetime: r.get(3)?,
                version: r.get(4)?,
                binding: r.get(5)?,
                queue_mode: r.get(6)?,
                sms: r.get(7)?,
                object_links: r.get(8)?,
                root_path: r.get(9)?,
                announced_format: r.get(10)?,
                registered_at: r.get(11)?,
                updated_at: r.get(12)?,
                last_seen: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- values -----------------------------------------------------------------

    /// Each resource's newest value: the latest values moved into the
    /// history, or a newer one still in the journal.
    pub fn latest_values(&self, endpoint: &str) -> Result<Vec<StoredValue>> {
        let Some(device) = self.device_id(endpoint)? else {
            return Ok(Vec::new());
        };
        let mut st = self.conn.prepare_cached(&format!(
            "WITH journalled AS ({JOURNALLED})
             SELECT path, ts, vtype, value FROM (
                 SELECT path, ts, vtype, value, -1 AS seq FROM latest_values WHERE device_id = :device
                 UNION ALL SELECT path, ts, vtype, value, seq FROM journalled)
             ORDER BY path, ts DESC, seq DESC"
        ))?;
        let seqs = self.journal_seqs(device)?;
        let rows = st.query_map(named_params! { ":device": device, ":seqs": seqs }, Self::value_row)?;
        let mut out: Vec<StoredValue> = Vec::new();
        for v in rows {
            if let Some(v) = v?
                && out.last().is_none_or(|l| l.path != v.path)
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub(crate) fn device_id(&self, endpoint: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM devices WHERE endpoint = ?1")?
            .query_row([endpoint], |r| r.get(0))
            .optional()?)
    }

    /// The journal sequence numbers of a device's values that may not be
    /// in the history yet: from the writer's books in the server, else by
    /// scanning the journal (it holds minutes of values).
    pub(crate) fn journal_seqs(&self, device: i64) -> Result<rusqlite::vtab::array::Array> {
        Ok(match &self.pending {
            Some(books) => seq_array(&books.lock().expect("journal books").ranges(device)),
            None => std::rc::Rc::new(
                self.conn
                    .prepare_cached("SELECT seq FROM value_journal WHERE device_id = ?1")?
                    .query_map([device], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
            ),
        })
    }

    fn value_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<StoredValue>> {
        let path: String = r.get(0)?;
        let vtype: String = r.get(2)?;
        let v: rusqlite::types::Value = r.get(3)?;
        let ts: i64 = r.get(1)?;
        Ok(path
            .parse()
            .ok()
            .zip(from_sql(&vtype, v))
            .map(|(path, value)| StoredValue { path, ts, value }))
    }

    // ---- events ------------------------------------------------------------------

    /// Newest events first, optionally of one endpoint.
    pub fn events(&self, endpoint: Option<&str>, limit: usize) -> Result<Vec<EventRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, ts, endpoint, kind, detail FROM events WHERE (?1 IS NULL OR endpoint = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![endpoint, limit as i64], Self::event_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        let detail: String = r.get(4)?;
        Ok(EventRow {
            id: r.get(0)?,
            ts: r.get(1)?,
            endpoint: r.get(2)?,
            kind: r.get(3)?,
            detail: serde_json::from_str(&detail).unwrap_or_default(),
        })
    }

    // ---- operations ----------------------------------------------------------------

    /// Queue an operation; committed before this returns, so a crash or
    /// restart after it cannot lose it.
    pub fn queue_operation(
        &self,
        endpoint: &str,
        kind: &OperationKind,
        deadline: i64,
        max_attempts: u32,
    ) -> Result<OperationId> {
        let exists: bool = self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM devices WHERE endpoint = ?1)",
            [endpoint],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(Error::UnknownEndpoint(endpoint.to_string()));
        }
        let now = now_ms();
        self.conn.execute(
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
        Ok(self.conn.last_insert_rowid())
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
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO operations (endpoint, kind, request, state, created_at, updated_at, deadline, max_attempts)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6)",
            )?;
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

    pub fn max_operation_id(&self) -> Result<OperationId> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM operations", [], |r| r.get(0))?)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn identity_taken(e: rusqlite::Error, psk: &Psk) -> Error {
    access::constraint(e, || format!("PSK identity {}", psk.identity))
}

fn insert_device(conn: &Connection, endpoint: &str, psk: Option<&Psk>, tags: &Tags) -> Result<i64> {
    let n = conn
        .execute(
            "INSERT INTO devices (endpoint, psk_identity, psk_key, tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(endpoint) DO NOTHING",
            params![
                endpoint,
                psk.map(|p| p.identity.as_str()),
                psk.map(Psk::key),
                tags.to_string(),
                now_ms()
            ],
        )
        .map_err(|e| match psk {
            Some(p) => identity_taken(e, p),
            None => e.into(),
        })?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!("device {endpoint}")));
    }
    Ok(conn.last_insert_rowid())
}

/// A firmware catalogue record.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FirmwareRow {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub image_type: String,
    pub uploaded_at: i64,
    pub uploader: String,
    pub notes: String,
    pub deleted_at: Option<i64>,
}

/// A new catalogue record, before it has an id.
pub struct NewFirmware<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub size: u64,
    pub image_type: &'a str,
    pub uploader: &'a str,
    pub notes: &'a str,
}

const FIRMWARE_SQL: &str =
    "SELECT id, name, version, sha256, size, image_type, uploaded_at, uploader, notes, deleted_at FROM firmware";

fn firmware_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FirmwareRow> {
    Ok(FirmwareRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        sha256: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        image_type: r.get(5)?,
        uploaded_at: r.get(6)?,
        uploader: r.get(7)?,
        notes: r.get(8)?,
        deleted_at: r.get(9)?,
    })
}

impl Store {
    /// Add a catalogue record. A live image with the same content is
    /// returned instead (`false`): the same image is stored once.
    pub fn insert_firmware(&mut self, f: &NewFirmware<'_>) -> Result<(FirmwareRow, bool)> {
        let tx = self.conn.transaction()?;
        let existing = tx
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE sha256 = ?1 AND deleted_at IS NULL"),
                [f.sha256],
                firmware_row,
            )
            .optional()?;
        if let Some(row) = existing {
            return Ok((row, false));
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM firmware WHERE name = ?1 AND deleted_at IS NULL)",
            [f.name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(Error::AlreadyExists(format!("a live firmware image named {}", f.name)));
        }
        tx.execute(
            "INSERT INTO firmware (name, version, sha256, size, image_type, uploaded_at, uploader, notes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                f.name,
                f.version,
                f.sha256,
                f.size as i64,
                f.image_type,
                now_ms(),
                f.uploader,
                f.notes
            ],
        )?;
        let id = tx.last_insert_rowid();
        let row = tx.query_row(&format!("{FIRMWARE_SQL} WHERE id = ?1"), [id], firmware_row)?;
        tx.commit()?;
        Ok((row, true))
    }

    /// Catalogue records, newest first; soft-deleted ones only if asked.
    pub fn firmware_list(&self, include_deleted: bool) -> Result<Vec<FirmwareRow>> {
        let filter = if include_deleted {
            ""
        } else {
            " WHERE deleted_at IS NULL"
        };
        let mut st = self.conn.prepare(&format!("{FIRMWARE_SQL}{filter} ORDER BY id DESC"))?;
        let rows = st.query_map([], firmware_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A record by id, or the live record by name.
    pub fn firmware(&self, id_or_name: &str) -> Result<FirmwareRow> {
        let row = match id_or_name.parse::<i64>() {
            Ok(id) => self
                .conn
                .query_row(&format!("{FIRMWARE_SQL} WHERE id = ?1"), [id], firmware_row)
                .optional()?,
            Err(_) => self
                .conn
                .query_row(
                    &format!("{FIRMWARE_SQL} WHERE name = ?1 AND deleted_at IS NULL"),
                    [id_or_name],
                    firmware_row,
                )
                .optional()?,
        };
        row.ok_or_else(|| Error::NotFound(format!("firmware {id_or_name}")))
    }

    /// The live record with this download name.
    pub fn live_firmware_by_name(&self, name: &str) -> Result<Option<FirmwareRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE name = ?1 AND deleted_at IS NULL"),
                [name],
                firmware_row,
            )
            .optional()?)
    }

    /// The live record with this content.
    pub fn live_firmware_by_sha(&self, sha256: &str) -> Result<Option<FirmwareRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE sha256 = ?1 AND deleted_at IS NULL"),
                [sha256],
                firmware_row,
            )
            .optional()?)
    }

    /// Soft delete: the record stays for audit, the image is no longer served.
    pub fn remove_firmware(&self, id: i64) -> Result<FirmwareRow> {
        let n = self.conn.execute(
            "UPDATE firmware SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("live firmware {id}")));
        }
        self.firmware(&id.to_string())
    }

    /// Download counts of an image: requests, bytes, devices, doom loops.
    pub fn download_stats(&self, firmware_id: i64) -> Result<serde_json::Value> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COUNT(DISTINCT device), COALESCE(SUM(doom_loop), 0), MAX(ts)
             FROM downloads WHERE firmware_id = ?1",
            [firmware_id],
            |r| {
                Ok(serde_json::json!({
                    "requests": r.get::<_, i64>(0)?,
                    "bytes": r.get::<_, i64>(1)?,
                    "devices": r.get::<_, i64>(2)?,
                    "doom_loops": r.get::<_, i64>(3)?,
                    "last": r.get::<_, Option<i64>>(4)?,
                }))
            },
        )?)
    }

    /// Content hashes of live records: the image files that must stay.
    pub fn firmware_hashes(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT DISTINCT sha256 FROM firmware WHERE deleted_at IS NULL")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
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

/// Values of records as stored, for tests and the CLI.
pub fn record_row(r: &Record) -> (String, &'static str, rusqlite::types::Value) {
    let (t, v) = sql_value(&r.value);
    (r.path.to_string(), t, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 13: a resource Write queued with `replace: false` by an
    /// older flownexus is dispatched as a Write-Replace; instance writes
    /// and finished rows keep what they had.
    #[test]
    fn old_partial_updates_of_resources_become_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db.sqlite3")).unwrap();
        store.add_device("dev", None, &Tags::default()).unwrap();
        let old = |path: &str, state: &str| {
            store
                .conn
                .execute(
                    "INSERT INTO operations (endpoint, kind, request, state, created_at, updated_at, deadline, max_attempts)
                     VALUES ('dev', 'write', ?1, ?2, 0, 0, ?3, 3)",
                    params![
                        format!(r#"{{"op":"write","path":"{path}","values":[{{"path":"/1/0/1","value":"60"}}],"replace":false}}"#),
                        state,
                        i64::MAX
                    ],
                )
                .unwrap();
            store.conn.last_insert_rowid()
        };
        let resource = old("/1/0/1", "queued");
        let instance = old("/1/0", "queued");
        let done = old("/1/0/1", "failed");
        store
            .conn
            .execute("DELETE FROM schema_migrations WHERE version = 13", [])
            .unwrap();
        store.migrate().unwrap();
        let replace = |id| match store.operation(id).unwrap().kind {
            OperationKind::Write { replace, .. } => replace,
            k => panic!("{k:?}"),
        };
        assert_eq!(replace(resource), None, "goes out as the path allows: PUT");
        assert_eq!(replace(instance), Some(false), "an instance keeps its Partial Update");
        assert_eq!(replace(done), Some(false), "history is not rewritten");
    }
}
