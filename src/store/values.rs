//! Reported values: the latest per resource and a device's journalled
//! values, and how a [`Value`] is stored (a type name beside the SQL value).

use rusqlite::{OptionalExtension, named_params};
use serde::Serialize;

use super::{Store, journal};
use crate::error::Result;
use crate::lwm2m::path::{Record, ResourcePath, Value};

/// A device's values still only in the value journal (`:device`; `:seqs`
/// their sequence numbers, from the writer's books or a scan), without
/// those a concurrent move already put in the history: readers add these
/// to what the history and the latest values hold.
pub(super) const JOURNALLED: &str = "SELECT path, ts, seq, vtype, value FROM value_journal j
     WHERE seq IN rarray(:seqs) AND device_id = :device
       AND NOT EXISTS (SELECT 1 FROM value_history h
                       WHERE h.device_id = :device AND h.path = j.path AND h.ts = j.ts AND h.seq = j.seq)";

/// Journal ranges as the sequence numbers `rarray(?)` takes.
pub(super) fn seq_array(ranges: &[journal::SeqRange]) -> rusqlite::vtab::array::Array {
    std::rc::Rc::new(ranges.iter().flat_map(|r| r.first..=r.last).map(Into::into).collect())
}

/// The hour (Unix ms) a value's timestamp is counted in.
pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(3_600_000) * 3_600_000
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StoredValue {
    pub path: ResourcePath,
    pub ts: i64,
    pub value: Value,
}

/// Text as the value columns keep it: as a BLOB of its UTF-8 bytes. The
/// columns are declared `ANY`, which in a table that is not STRICT has
/// NUMERIC affinity: SQLite turns text that looks like a number into one
/// ("1.0" → 1, " 7" → 7, "1e3" → 1000), so a device's Firmware Version
/// "1.0" or a numeric Serial Number came back as an integer and was lost.
/// A BLOB is never converted. Readers take either form (rows written
/// before are TEXT); SQL that compares with text casts (`CAST(value AS
/// TEXT)`) or offers both forms (`value IN (?, CAST(? AS BLOB))`).
pub(super) fn sql_text(s: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Blob(s.as_bytes().to_vec())
}

/// A stored value's SQLite form: LwM2M type name and SQL value.
pub(super) fn sql_value(v: &Value) -> (&'static str, rusqlite::types::Value) {
    use rusqlite::types::Value as S;
    match v {
        Value::String(s) => ("string", sql_text(s)),
        Value::CoreLink(s) => ("corelnk", sql_text(s)),
        Value::Integer(i) => ("integer", S::Integer(*i)),
        Value::Time(i) => ("time", S::Integer(*i)),
        // u64 above i64::MAX is kept as text so nothing is lost.
        Value::Unsigned(u) => (
            "unsigned",
            i64::try_from(*u).map_or_else(|_| sql_text(&u.to_string()), S::Integer),
        ),
        Value::Float(f) => ("float", S::Real(*f)),
        Value::Boolean(b) => ("boolean", S::Integer(i64::from(*b))),
        Value::Opaque(b) => ("opaque", S::Blob(b.clone())),
        Value::ObjectLink(o, i) => ("objlnk", S::Text(format!("{o}:{i}"))),
    }
}

fn from_sql(vtype: &str, v: rusqlite::types::Value) -> Option<Value> {
    use rusqlite::types::Value as S;
    // Text kept as a BLOB (`sql_text`) or, in rows written before, as TEXT.
    let v = match (vtype, v) {
        ("string" | "corelnk" | "unsigned" | "objlnk", S::Blob(b)) => S::Text(String::from_utf8(b).ok()?),
        (_, v) => v,
    };
    Some(match (vtype, v) {
        ("string", S::Text(s)) => Value::String(s),
        // Rows written before text went in as BLOBs, whose text SQLite had
        // turned into a number: the number's text is the best left of them.
        ("string", S::Integer(i)) => Value::String(i.to_string()),
        ("string", S::Real(f)) => Value::String(f.to_string()),
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
    /// Reported values waiting in the journal.
    pub fn value_journal_len(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM value_journal", [], |r| r.get(0))?;
        Ok(n as u64)
    }

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

    /// The newest value of one resource of a device, if any.
    pub fn latest_value(&self, endpoint: &str, path: &str) -> Result<Option<Value>> {
        Ok(self
            .latest_values(endpoint)?
            .into_iter()
            .find(|v| v.path.to_string() == path)
            .map(|v| v.value))
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

    /// The latest value of each of `paths` for each of `endpoints` (a page
    /// of the device list and its chosen columns), as (endpoint, value).
    /// Values still in the journal (seconds old) are not among them.
    pub fn latest_of(&self, endpoints: &[String], paths: &[&str]) -> Result<Vec<(String, StoredValue)>> {
        if endpoints.is_empty() || paths.is_empty() {
            return Ok(Vec::new());
        }
        let eps: Vec<rusqlite::types::Value> = endpoints.iter().map(|e| e.clone().into()).collect();
        let ps: Vec<rusqlite::types::Value> = paths.iter().map(|p| p.to_string().into()).collect();
        let mut st = self.conn.prepare_cached(
            "SELECT l.path, l.ts, l.vtype, l.value, d.endpoint FROM devices d
             JOIN latest_values l ON l.device_id = d.id AND l.path IN rarray(?2)
             WHERE d.endpoint IN rarray(?1)",
        )?;
        let rows = st.query_map(rusqlite::params![std::rc::Rc::new(eps), std::rc::Rc::new(ps)], |r| {
            Ok((r.get::<_, String>(4)?, Self::value_row(r)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            if let (ep, Some(v)) = row? {
                out.push((ep, v));
            }
        }
        Ok(out)
    }

    pub(super) fn value_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<StoredValue>> {
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
}

/// Values of records as stored, for tests and the CLI.
pub fn record_row(r: &Record) -> (String, &'static str, rusqlite::types::Value) {
    let (t, v) = sql_value(&r.value);
    (r.path.to_string(), t, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that looks like a number stays text: the value columns have
    /// NUMERIC affinity, which turned a Firmware Version "1.0" into the
    /// integer 1 and so lost it on reading.
    #[test]
    fn text_that_looks_like_a_number_stays_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let id = s.add_device("dev", None, &Default::default()).unwrap();
        let texts = [
            ("/3/0/3", "1.0"),
            ("/3/0/2", "0012345"),
            ("/3/0/19", " 7"),
            ("/3/0/1", "1e3"),
        ];
        for (path, text) in texts {
            let (vtype, value) = sql_value(&Value::String(text.into()));
            s.conn
                .execute(
                    "INSERT INTO latest_values (device_id, path, ts, vtype, value) VALUES (?1, ?2, 0, ?3, ?4)",
                    rusqlite::params![id, path, vtype, value],
                )
                .unwrap();
        }
        let big = Value::Unsigned(u64::MAX);
        let (vtype, value) = sql_value(&big);
        s.conn
            .execute(
                "INSERT INTO latest_values (device_id, path, ts, vtype, value) VALUES (?1, '/3/0/21', 0, ?2, ?3)",
                rusqlite::params![id, vtype, value],
            )
            .unwrap();
        let got = s.latest_values("dev").unwrap();
        for (path, text) in texts {
            let v = got
                .iter()
                .find(|v| v.path.to_string() == path)
                .unwrap_or_else(|| panic!("{path} lost"));
            assert_eq!(v.value, Value::String(text.into()), "{path}");
        }
        assert!(got.iter().any(|v| v.value == big), "u64::MAX kept");
        assert_eq!(s.device("dev").unwrap().firmware_version.as_deref(), Some("1.0"));
        assert_eq!(s.devices_on_version("1.0").unwrap(), 1);
        assert_eq!(s.firmware_versions(5, 1).unwrap(), vec![("1.0".to_string(), 1)]);
        // A row written before (TEXT turned into an integer) still reads.
        s.conn
            .execute(
                "INSERT INTO latest_values (device_id, path, ts, vtype, value) VALUES (?1, '/3/0/0', 0, 'string', '42')",
                [id],
            )
            .unwrap();
        let old = s.latest_values("dev").unwrap();
        assert!(old.iter().any(|v| v.value == Value::String("42".into())));
    }
}
