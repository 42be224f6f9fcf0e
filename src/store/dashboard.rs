//! Queries behind the dashboard and the REST API: filtered, sorted,
//! keyset-paginated lists that stay fast with a million devices (every
//! page is an index range from a cursor, never an OFFSET scan).

use rusqlite::types::Value as Sql;
use rusqlite::{named_params, params};
use serde::Serialize;

use super::{DeviceSummary, EventRow, JOURNALLED, Status, Store, StoredValue, now_ms};
use crate::error::Result;
use crate::lwm2m::path::ResourcePath;

/// Sort columns the device list accepts; anything else is refused before
/// it reaches SQL: no operator string is ever spliced into a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    Endpoint,
    LastSeen,
    Created,
}

impl DeviceSort {
    pub fn parse(s: &str) -> Option<DeviceSort> {
        Some(match s {
            "endpoint" => DeviceSort::Endpoint,
            "last_seen" => DeviceSort::LastSeen,
            "created" => DeviceSort::Created,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSort::Endpoint => "endpoint",
            DeviceSort::LastSeen => "last_seen",
            DeviceSort::Created => "created",
        }
    }

    fn expr(self) -> &'static str {
        match self {
            // Natural order (`urn:sim:2` before `urn:sim:10`), indexed.
            DeviceSort::Endpoint => "d.endpoint_order",
            DeviceSort::LastSeen => "d.last_seen",
            DeviceSort::Created => "d.created_at",
        }
    }
}

/// A search with more matches than this pages through the list in its own
/// order, filtering as it goes: with that many matches (one device in a
/// hundred of a million, more of a smaller fleet) a page of 50 is found
/// after a few thousand rows, sooner than all matches are sorted.
const SEARCH_SORTS_AT_MOST: usize = 10_000;

/// A page from `limit + 1` rows read: the first `limit`, and whether more
/// follow.
fn one_page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// Where a page of devices starts: the sort key and endpoint of the last
/// row of the previous page.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Text(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub struct DeviceQuery {
    pub search: Option<String>,
    pub status: Option<Status>,
    pub tag: Option<String>,
    pub firmware: Option<String>,
    pub sort: DeviceSort,
    pub descending: bool,
    pub after: Option<(SortKey, String)>,
    pub limit: usize,
    /// For the status filter: `lwm2m.queue_awake_window_s`, `lifetime_grace_s`.
    pub awake_window_s: u64,
    pub grace_s: u64,
}

/// One image's downloads by one device.
#[derive(Debug, Clone)]
pub struct DeviceDownloads {
    pub name: String,
    pub requests: u64,
    pub bytes: u64,
    pub last: i64,
}

/// Counts for the overview.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetCounts {
    pub total: u64,
    pub online: u64,
    pub sleeping: u64,
    pub offline: u64,
}

/// SQL for "registered and not expired", "awake" (`?n` placeholders
/// bound to now, grace, window by the callers).
const ALIVE: &str = "(r.reg_id IS NOT NULL AND :now <= r.updated_at + (r.lifetime + :grace) * 1000)";
const AWAKE: &str = "(r.queue_mode = 0 OR r.last_seen >= :now - :window * 1000)";

impl Store {
    /// One page of devices and whether more follow.
    pub fn device_page(&self, q: &DeviceQuery) -> Result<(Vec<DeviceSummary>, bool)> {
        let mut sql = format!("{} WHERE 1", Self::SUMMARY_SQL);
        let mut args: Vec<(String, Sql)> = vec![
            (":now".into(), Sql::Integer(now_ms())),
            (":grace".into(), Sql::Integer(q.grace_s as i64)),
            (":window".into(), Sql::Integer(q.awake_window_s as i64)),
        ];
        let mut found = None;
        if let Some(s) = &q.search {
            found = self.search_devices(s)?;
            if found.is_some() {
                sql += " AND d.id IN rarray(:found)";
            } else {
                sql += " AND (instr(d.endpoint, :q) > 0 OR instr(COALESCE(d.psk_identity, ''), :q) > 0)";
                args.push((":q".into(), Sql::Text(s.clone())));
            }
        }
        if let Some(t) = &q.tag {
            sql += " AND instr(',' || d.tags || ',', ',' || :tag || ',') > 0";
            args.push((":tag".into(), Sql::Text(t.clone())));
        }
        if let Some(f) = &q.firmware {
            sql += " AND EXISTS (SELECT 1 FROM latest_values l WHERE l.device_id = d.id AND l.path = '/3/0/3' AND l.value IN (:fw, CAST(:fw AS BLOB)))";
            args.push((":fw".into(), Sql::Text(f.clone())));
        }
        match q.status {
            Some(Status::Online) => sql += &format!(" AND {ALIVE} AND {AWAKE}"),
            Some(Status::Sleeping) => sql += &format!(" AND {ALIVE} AND NOT {AWAKE}"),
            Some(Status::Offline) => sql += &format!(" AND NOT COALESCE({ALIVE}, 0)"),
            None => {}
        }
        let (cmp, dir) = if q.descending { ("<", "DESC") } else { (">", "ASC") };
        let expr = q.sort.expr();
        if let Some((key, endpoint)) = &q.after {
            sql += &format!(" AND ({expr}, d.endpoint) {cmp} (:key, :after)");
            args.push((
                ":key".into(),
                match key {
                    SortKey::Text(s) => Sql::Text(s.clone()),
                    SortKey::Int(i) => Sql::Integer(*i),
                },
            ));
            args.push((":after".into(), Sql::Text(endpoint.clone())));
        }
        sql += &format!(" ORDER BY {expr} {dir}, d.endpoint {dir} LIMIT :limit");
        args.push((":limit".into(), Sql::Integer(q.limit as i64 + 1)));
        // Bind only the names this statement uses.
        let mut st = self.conn.prepare(&sql)?;
        let mut bound: Vec<(&str, &dyn rusqlite::ToSql)> = Vec::new();
        for (name, v) in &args {
            if st.parameter_index(name)?.is_some() {
                bound.push((name.as_str(), v as &dyn rusqlite::ToSql));
            }
        }
        if let Some(ids) = &found {
            bound.push((":found", ids as &dyn rusqlite::ToSql));
        }
        let rows = st.query_map(bound.as_slice(), Self::summary_row)?;
        Ok(one_page(rows.collect::<rusqlite::Result<_>>()?, q.limit))
    }

    /// The ids of the devices whose endpoint or PSK identity contains
    /// `text`, from the trigram index; `None` when the index cannot answer
    /// (under three characters) or the text is so common that scanning the
    /// list in its order finds a page sooner than sorting every match.
    fn search_devices(&self, text: &str) -> Result<Option<rusqlite::vtab::array::Array>> {
        if text.chars().count() < 3 {
            return Ok(None);
        }
        if text.chars().any(char::is_control) {
            // No endpoint or identity holds one (provisioning refuses
            // them), and FTS5 takes a NUL for the end of its query: found
            // by schemathesis as a 500.
            return Ok(Some(std::rc::Rc::new(Vec::new())));
        }
        // One FTS5 string: the whole text, quotes doubled, is a phrase,
        // which a trigram index matches as a substring.
        let phrase = format!("\"{}\"", text.replace('"', "\"\""));
        let ids: Vec<Sql> = self
            .conn
            .prepare_cached("SELECT rowid FROM device_search WHERE device_search MATCH ?1 LIMIT ?2")?
            .query_map(params![phrase, SEARCH_SORTS_AT_MOST as i64 + 1], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok((ids.len() <= SEARCH_SORTS_AT_MOST).then(|| std::rc::Rc::new(ids)))
    }

    /// The sort key of a row, for the next page's cursor.
    pub fn sort_key(d: &DeviceSummary, sort: DeviceSort) -> SortKey {
        match sort {
            DeviceSort::Endpoint => SortKey::Text(crate::lwm2m::display::natural_key(&d.endpoint)),
            DeviceSort::LastSeen => SortKey::Int(d.last_seen.unwrap_or(0)),
            DeviceSort::Created => SortKey::Int(d.created_at),
        }
    }

    pub fn fleet_counts(&self, awake_window_s: u64, grace_s: u64) -> Result<FleetCounts> {
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM({ALIVE} AND {AWAKE}), 0), COALESCE(SUM({ALIVE} AND NOT {AWAKE}), 0)
             FROM devices d LEFT JOIN registrations r ON r.device_id = d.id"
        );
        let (total, online, sleeping): (i64, i64, i64) = self.conn.query_row(
            &sql,
            rusqlite::named_params! { ":now": now_ms(), ":grace": grace_s as i64, ":window": awake_window_s as i64 },
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(FleetCounts {
            total: total as u64,
            online: online as u64,
            sleeping: sleeping as u64,
            offline: (total - online - sleeping) as u64,
        })
    }

    /// Devices per reported firmware version (`/3/0/3`), most common
    /// first, the `limit` most common, then "other" for the rest and
    /// "unknown" for the devices of `total` that never reported one (until
    /// someone or a profile reads `/3/0`, a new device's version is not known).
    pub fn firmware_versions(&self, limit: usize, total: u64) -> Result<Vec<(String, u64)>> {
        // All groups (the versions in a fleet are few; the partial index
        // `latest_firmware_versions` holds just these rows).
        let mut st = self.conn.prepare(
            "SELECT CAST(value AS TEXT), COUNT(*) FROM latest_values WHERE path = '/3/0/3'
             GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        let mut all: Vec<(String, u64)> = rows.collect::<rusqlite::Result<_>>()?;
        let counted: u64 = all.iter().map(|(_, n)| n).sum();
        let other: u64 = all.iter().skip(limit).map(|(_, n)| n).sum();
        all.truncate(limit);
        if other > 0 {
            all.push(("other".into(), other));
        }
        if total > counted {
            all.push(("unknown".into(), total - counted));
        }
        Ok(all)
    }

    /// Values stored per hour over the last `hours` hours: (hour start ms, count).
    pub fn values_per_hour(&self, from: i64) -> Result<Vec<(i64, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT hour, count FROM values_per_hour WHERE hour >= ?1 ORDER BY hour")?;
        let rows = st.query_map([from], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A page of events, newest first, after event id `before`.
    /// Events newest first. `endpoint` names one device exactly, or with
    /// `partial` any whose endpoint contains it (the events page's filter;
    /// that one reads events newest first until a page matches, so a rare
    /// match in a long log costs a longer walk).
    pub fn event_page(
        &self,
        endpoint: Option<&str>,
        partial: bool,
        kind: Option<&str>,
        range: (Option<i64>, Option<i64>),
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<EventRow>, bool)> {
        let exact = endpoint.filter(|_| !partial);
        let contains = endpoint.filter(|_| partial);
        let mut st = self.conn.prepare_cached(
            "SELECT id, ts, endpoint, kind, detail FROM events
             WHERE (?1 IS NULL OR endpoint = ?1) AND (?7 IS NULL OR instr(endpoint, ?7) > 0)
               AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR ts >= ?3)
               AND (?4 IS NULL OR ts < ?4) AND (?5 IS NULL OR id < ?5)
             ORDER BY id DESC LIMIT ?6",
        )?;
        let rows = st.query_map(
            params![exact, kind, range.0, range.1, before, limit as i64 + 1, contains],
            Self::event_row,
        )?;
        Ok(one_page(rows.collect::<rusqlite::Result<_>>()?, limit))
    }

    /// A page of one resource's history in `[from, to)`, oldest first,
    /// after `(ts, seq)`; each value comes with its sequence number for the
    /// cursor.
    pub fn history_page(
        &self,
        endpoint: &str,
        path: &ResourcePath,
        range: (i64, i64),
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<(Vec<(i64, StoredValue)>, bool)> {
        let Some(device) = self.device_id(endpoint)? else {
            return Err(crate::Error::UnknownEndpoint(endpoint.to_string()));
        };
        let (ts, seq) = after.unwrap_or((range.0, -1));
        let mut st = self.conn.prepare_cached(&format!(
            "WITH journalled AS ({JOURNALLED})
             SELECT path, ts, vtype, value, seq FROM (
                 SELECT * FROM (SELECT path, ts, vtype, value, seq FROM value_history
                                WHERE device_id = :device AND path = :path AND ts >= :from AND ts < :to
                                  AND (ts, seq) > (:ts, :seq)
                                ORDER BY ts, seq LIMIT :limit)
                 UNION ALL
                 SELECT path, ts, vtype, value, seq FROM journalled
                 WHERE path = :path AND ts >= :from AND ts < :to AND (ts, seq) > (:ts, :seq))
             ORDER BY ts, seq LIMIT :limit"
        ))?;
        let seqs = self.journal_seqs(device)?;
        let rows = st.query_map(
            named_params! {
                ":device": device, ":seqs": seqs, ":path": path.to_string(), ":from": range.0, ":to": range.1,
                ":ts": ts, ":seq": seq, ":limit": limit as i64 + 1,
            },
            |r| Ok((r.get::<_, i64>(4)?, Self::value_row(r)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, v) = row?;
            if let Some(v) = v {
                out.push((seq, v));
            }
        }
        Ok(one_page(out, limit))
    }

    /// A numeric resource's history over `range` in at most `buckets` equal
    /// time slices: (first time in the slice, mean value). A chart of a week
    /// of per-minute values reads every row once but draws 600 points.
    pub fn history_buckets(
        &self,
        endpoint: &str,
        path: &ResourcePath,
        (from, to): (i64, i64),
        buckets: u32,
    ) -> Result<Vec<(i64, f64)>> {
        let width = ((to - from) / i64::from(buckets.max(1))).max(1);
        let Some(device) = self.device_id(endpoint)? else {
            return Ok(Vec::new());
        };
        let mut st = self.conn.prepare_cached(&format!(
            "WITH journalled AS ({JOURNALLED})
             SELECT MIN(ts), AVG(value) FROM (
                 SELECT ts, vtype, value FROM value_history
                 WHERE device_id = :device AND path = :path AND ts >= :from AND ts < :to
                 UNION ALL
                 SELECT ts, vtype, value FROM journalled WHERE path = :path AND ts >= :from AND ts < :to)
             WHERE vtype IN ('integer', 'unsigned', 'float', 'time')
             GROUP BY (ts - :from) / :width ORDER BY 1"
        ))?;
        let seqs = self.journal_seqs(device)?;
        let rows = st.query_map(
            named_params! {
                ":device": device, ":seqs": seqs, ":path": path.to_string(), ":from": from, ":to": to, ":width": width,
            },
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Numeric resources a device has history for (the chart picker).
    pub fn numeric_paths(&self, endpoint: &str) -> Result<Vec<ResourcePath>> {
        let Some(device) = self.device_id(endpoint)? else {
            return Ok(Vec::new());
        };
        let mut st = self.conn.prepare_cached(&format!(
            "WITH journalled AS ({JOURNALLED})
             SELECT path FROM latest_values WHERE device_id = :device AND vtype IN ('integer', 'unsigned', 'float')
             UNION SELECT path FROM journalled WHERE vtype IN ('integer', 'unsigned', 'float')
             ORDER BY path"
        ))?;
        let seqs = self.journal_seqs(device)?;
        let rows = st.query_map(named_params! { ":device": device, ":seqs": seqs }, |r| {
            r.get::<_, String>(0)
        })?;
        Ok(rows
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Download requests a device made, per image, most recent first.
    pub fn device_downloads(&self, endpoint: &str) -> Result<Vec<DeviceDownloads>> {
        let mut st = self.conn.prepare(
            "SELECT f.id, f.name, COUNT(*), COALESCE(SUM(dl.bytes), 0), MAX(dl.ts) FROM downloads dl
             JOIN firmware f ON f.id = dl.firmware_id WHERE dl.device = ?1 GROUP BY f.id ORDER BY 5 DESC LIMIT 20",
        )?;
        let rows = st.query_map([endpoint], |r| {
            Ok(DeviceDownloads {
                name: r.get(1)?,
                requests: r.get::<_, i64>(2)? as u64,
                bytes: r.get::<_, i64>(3)? as u64,
                last: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A device's registration, if it has one.
    pub fn registration_of(&self, endpoint: &str) -> Result<Option<crate::lwm2m::registration::Registration<String>>> {
        Ok(self.registrations_where("d.endpoint = ?1", [endpoint])?.pop())
    }

    /// How many devices report each live image's version.
    pub fn devices_on_version(&self, version: &str) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM latest_values WHERE path = '/3/0/3' AND value IN (?1, CAST(?1 AS BLOB))",
            [version],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tags::Tags;

    /// Slices are equal spans of the range; each is its values' mean at its
    /// first time; text values and other devices stay out.
    #[test]
    fn history_is_charted_in_time_slices() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let a = s.add_device("a", None, &Tags::default()).unwrap();
        let b = s.add_device("b", None, &Tags::default()).unwrap();
        let insert = |dev: i64, path: &str, ts: i64, vtype: &str, v: rusqlite::types::Value| {
            s.connection()
                .execute(
                    "INSERT INTO value_history (device_id, path, ts, seq, vtype, value) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    params![dev, path, ts, vtype, v],
                )
                .unwrap();
        };
        use rusqlite::types::Value::{Integer, Real, Text};
        for (ts, v) in [(0, 1.0), (5, 3.0), (10, 10.0), (99, 4.0), (100, 1000.0)] {
            insert(a, "/3303/0/5700", ts, "float", Real(v));
        }
        insert(a, "/3303/0/5700", 50, "string", Text("n/a".into()));
        insert(a, "/3303/0/5700", 60, "integer", Integer(6));
        insert(b, "/3303/0/5700", 1, "float", Real(500.0));
        let path = "/3303/0/5700".parse().unwrap();
        // (0, 100) in 10 slices of 10 ms; 100 is outside.
        assert_eq!(
            s.history_buckets("a", &path, (0, 100), 10).unwrap(),
            vec![(0, 2.0), (10, 10.0), (60, 6.0), (99, 4.0)]
        );
        assert!(
            s.history_buckets("a", &"/3304/0/5700".parse().unwrap(), (0, 100), 10)
                .unwrap()
                .is_empty()
        );
    }

    /// A search finds devices by any part of the endpoint or PSK identity
    /// of three characters or more from the trigram index, shorter ones by
    /// scanning; the index follows new, re-keyed and removed devices; a
    /// text matching more devices than the index sorts pages through the
    /// list in order.
    /// The fleet's versions: the most common, then "other", then
    /// "unknown" for devices that never reported `/3/0/3`.
    #[test]
    fn firmware_versions_count_the_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let versions = ["1.0", "1.0", "1.0", "2.0", "2.0", "3.0"];
        for (i, v) in versions.iter().enumerate() {
            let id = s.add_device(&format!("dev-{i}"), None, &Default::default()).unwrap();
            s.conn
                .execute(
                    "INSERT INTO latest_values (device_id, path, ts, vtype, value) VALUES (?1, '/3/0/3', 0, 'string', ?2)",
                    params![id, super::super::values::sql_text(v)],
                )
                .unwrap();
        }
        for i in 0..4 {
            s.add_device(&format!("new-{i}"), None, &Default::default()).unwrap();
        }
        let got = s.firmware_versions(2, 10).unwrap();
        let want: Vec<(String, u64)> = [("1.0", 3), ("2.0", 2), ("other", 1), ("unknown", 4)]
            .iter()
            .map(|(v, n)| (v.to_string(), *n))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn devices_are_found_by_any_part_of_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let key = |id: &str| crate::psk::Psk::from_hex(id, "00112233").unwrap();
        s.add_device("urn:imei:351234567890123", Some(&key("factory-A7")), &Tags::default())
            .unwrap();
        s.add_device("urn:imei:351234567890999", None, &Tags::default())
            .unwrap();
        s.add_device("sensor-\"quoted\"", None, &Tags::default()).unwrap();
        let find = |s: &Store, text: &str| {
            let q = DeviceQuery {
                search: Some(text.to_string()),
                ..by_endpoint(50)
            };
            let (page, more) = s.device_page(&q).unwrap();
            (page.into_iter().map(|d| d.endpoint).collect::<Vec<_>>(), more)
        };
        let names = |s: &Store, text: &str| find(s, text).0;
        assert_eq!(names(&s, "890123"), ["urn:imei:351234567890123"]);
        assert_eq!(
            names(&s, "3512345678"),
            ["urn:imei:351234567890123", "urn:imei:351234567890999"]
        );
        assert_eq!(names(&s, "ory-A"), ["urn:imei:351234567890123"], "by identity");
        assert_eq!(names(&s, "ory-a"), Vec::<String>::new(), "case counts, as in a scan");
        assert_eq!(names(&s, "A7"), ["urn:imei:351234567890123"], "two characters: a scan");
        assert_eq!(names(&s, "\"quoted\""), ["sensor-\"quoted\""], "quotes are text");
        assert_eq!(names(&s, "imei OR sensor"), Vec::<String>::new(), "no query syntax");
        assert_eq!(
            names(&s, "ime\0i:35"),
            Vec::<String>::new(),
            "a NUL finds nothing, and fails nothing"
        );
        assert_eq!(names(&s, "\u{1}\u{2}\u{3}"), Vec::<String>::new());

        s.rotate_psk("urn:imei:351234567890123", &key("line-B9")).unwrap();
        assert_eq!(names(&s, "ory-A"), Vec::<String>::new());
        assert_eq!(names(&s, "line-B"), ["urn:imei:351234567890123"]);
        s.remove_device("urn:imei:351234567890123").unwrap();
        assert_eq!(names(&s, "line-B"), Vec::<String>::new());
        assert_eq!(names(&s, "890"), ["urn:imei:351234567890999"]);

        // More matches than the index sorts: the list is scanned in order.
        let rows: Vec<crate::psk::Provisioned> = (0..=SEARCH_SORTS_AT_MOST)
            .map(|i| crate::psk::Provisioned {
                line: i + 1,
                endpoint: format!("bulk-{i:05}"),
                psk: key(&format!("bulk-id-{i:05}")),
            })
            .collect();
        s.import_devices(&rows).unwrap().unwrap();
        assert!(s.search_devices("bulk-").unwrap().is_none());
        let (page, more) = find(&s, "bulk-");
        assert_eq!(page.len(), 50);
        assert!(more);
        assert_eq!(page[0], "bulk-00000");
        assert_eq!(find(&s, "bulk-00012").0, ["bulk-00012"]);
        assert!(s.search_devices("bulk-00012").unwrap().is_some());
    }

    /// Every device, by endpoint, `limit` a page.
    fn by_endpoint(limit: usize) -> DeviceQuery {
        DeviceQuery {
            search: None,
            status: None,
            tag: None,
            firmware: None,
            sort: DeviceSort::Endpoint,
            descending: false,
            after: None,
            limit,
            awake_window_s: 60,
            grace_s: 60,
        }
    }

    /// The device list pages through endpoints in natural order from the
    /// stored key (`urn:sim:2` before `urn:sim:10`), keyset pages exact;
    /// a database from before the key had it filled by its migration.
    #[test]
    fn devices_list_in_natural_order_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        // A database as flownexus left it at schema 18, with three devices.
        let old = super::super::migrations::database_at(&path, 18);
        for ep in ["urn:sim:10", "urn:sim:2", "urn:sim:100"] {
            old.execute("INSERT INTO devices (endpoint, created_at) VALUES (?1, 0)", [ep])
                .unwrap();
        }
        drop(old);
        let s = Store::open(&path).unwrap();
        for ep in ["urn:sim:1", "urn:sim:20", "urn:sim:002", "urn:imei:9"] {
            s.add_device(ep, None, &Tags::default()).unwrap();
        }
        let mut q = by_endpoint(3);
        let mut seen = Vec::new();
        loop {
            let (page, more) = s.device_page(&q).unwrap();
            let last = page.last().cloned();
            seen.extend(page.into_iter().map(|d| d.endpoint));
            match (more, last) {
                (true, Some(d)) => q.after = Some((Store::sort_key(&d, q.sort), d.endpoint)),
                _ => break,
            }
        }
        let natural = [
            "urn:imei:9",
            "urn:sim:1",
            "urn:sim:002",
            "urn:sim:2",
            "urn:sim:10",
            "urn:sim:20",
            "urn:sim:100",
        ];
        assert_eq!(seen, natural);
        assert_eq!(s.endpoints().unwrap(), natural);
        let listed: Vec<String> = s.list_devices(10, 0).unwrap().into_iter().map(|d| d.endpoint).collect();
        assert_eq!(listed, natural);
        q.descending = true;
        q.after = None;
        q.limit = 10;
        let (page, _) = s.device_page(&q).unwrap();
        let mut reversed = natural.to_vec();
        reversed.reverse();
        assert_eq!(page.into_iter().map(|d| d.endpoint).collect::<Vec<_>>(), reversed);
    }
}
