//! Provisioned devices: rows, keys, tags, the summary the lists show.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Store, access, now_ms};
use crate::error::{Error, Result};
use crate::psk::Psk;
use crate::store::tags::Tags;

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

impl Store {
    pub fn count_devices(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Provision a device, with a PSK for DTLS if given.
    pub fn add_device(&self, endpoint: &str, psk: Option<&Psk>, tags: &Tags) -> Result<i64> {
        insert_device(&self.conn, &self.seal, endpoint, psk, tags)
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

    /// File many devices under `add` and take them out of `remove`, in one
    /// transaction: all or none (a device that would pass
    /// [`Tags::MAX`] fails the lot, naming it). Returns how many changed.
    pub fn change_tags(&mut self, endpoints: &[String], add: &Tags, remove: &Tags) -> Result<usize> {
        let tx = self.write_tx()?;
        let mut changed = 0;
        {
            let mut read = tx.prepare_cached("SELECT tags FROM devices WHERE endpoint = ?1")?;
            let mut write = tx.prepare_cached("UPDATE devices SET tags = ?2 WHERE endpoint = ?1")?;
            for endpoint in endpoints {
                let old: String = read
                    .query_row([endpoint], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| Error::UnknownEndpoint(endpoint.clone()))?;
                let kept = old
                    .split(',')
                    .chain(add.iter())
                    .filter(|t| !remove.iter().any(|r| r == *t))
                    .collect::<Vec<_>>()
                    .join(",");
                let new = Tags::parse(&kept).map_err(|e| Error::Invalid {
                    what: "tags",
                    reason: format!("{endpoint}: {e}"),
                })?;
                if new.to_string() != old {
                    write.execute(params![endpoint, new.to_string()])?;
                    changed += 1;
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Replace a device's PSK (identity and key). Sessions using the old
    /// key end when the DTLS layer refreshes its cache.
    pub fn rotate_psk(&self, endpoint: &str, psk: &Psk) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE devices SET psk_identity = ?2, psk_key = ?3 WHERE endpoint = ?1",
                params![endpoint, psk.identity, self.seal.seal(endpoint, psk.key())],
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
        let tx = self.write_tx()?;
        let mut errors = Vec::new();
        for r in rows {
            if let Err(e) = insert_device(&tx, &self.seal, &r.endpoint, Some(&r.psk), &Tags::default()) {
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
        let tx = self.write_tx()?;
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
        // Its update can go no further: it ends, failed, with the reason.
        tx.execute(
            "UPDATE fota_updates SET active = 0, phase = 'failed', reason = 'the device was removed',
                    updated_at = ?2, finished_at = ?2,
                    machine = json_set(machine, '$.phase', 'failed', '$.reason', 'the device was removed')
             WHERE endpoint = ?1 AND active = 1",
            params![endpoint, now_ms()],
        )?;
        tx.execute(
            "UPDATE campaign_devices SET status = 'failed', reason = 'the device was removed'
             WHERE endpoint = ?1 AND status IN ('pending', 'active')",
            [endpoint],
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
            let (endpoint, identity, stored) = row?;
            let key = self.seal.open(&endpoint, &stored)?;
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

    /// Device rows added after row `id`, in order: (row id, endpoint).
    pub fn endpoints_after(&self, id: i64) -> Result<Vec<(i64, String)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, endpoint FROM devices WHERE id > ?1 ORDER BY id")?;
        let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many devices were ever removed (migration 17's counter).
    pub fn devices_deleted(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM counters WHERE name = 'devices_deleted'", [], |r| {
                r.get(0)
            })?)
    }

    pub fn endpoints(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT endpoint FROM devices ORDER BY endpoint_order, endpoint")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(super) const SUMMARY_SQL: &'static str = "SELECT d.endpoint, d.psk_identity, d.tags, r.reg_id IS NOT NULL, r.queue_mode, NULLIF(d.last_seen, 0), r.updated_at, r.lifetime,
            (SELECT CAST(value AS TEXT) FROM latest_values l WHERE l.device_id = d.id AND l.path = '/3/0/3'), d.created_at
         FROM devices d LEFT JOIN registrations r ON r.device_id = d.id";

    pub(super) fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceSummary> {
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
        let mut st = self.conn.prepare(&format!(
            "{} ORDER BY d.endpoint_order, d.endpoint LIMIT ?1 OFFSET ?2",
            Self::SUMMARY_SQL
        ))?;
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
}

/// `UnknownEndpoint` unless `endpoint` is provisioned.
pub(super) fn require_device(conn: &Connection, endpoint: &str) -> Result<()> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM devices WHERE endpoint = ?1)",
        [endpoint],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(Error::UnknownEndpoint(endpoint.to_string()))
    }
}

fn identity_taken(e: rusqlite::Error, psk: &Psk) -> Error {
    access::constraint(e, || format!("PSK identity {}", psk.identity))
}

fn insert_device(
    conn: &Connection,
    seal: &super::sealing::KeySeal,
    endpoint: &str,
    psk: Option<&Psk>,
    tags: &Tags,
) -> Result<i64> {
    if let Some(why) = crate::lwm2m::registration::endpoint_problem(endpoint) {
        return Err(Error::Invalid {
            what: "endpoint",
            reason: why.to_string(),
        });
    }
    let n = conn
        .execute(
            "INSERT INTO devices (endpoint, psk_identity, psk_key, tags, created_at, endpoint_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(endpoint) DO NOTHING",
            params![
                endpoint,
                psk.map(|p| p.identity.as_str()),
                psk.map(|p| seal.seal(endpoint, p.key())),
                tags.to_string(),
                now_ms(),
                crate::lwm2m::display::natural_key(endpoint)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32 item 4: provisioning refuses what Register refuses.
    #[test]
    fn provisioning_refuses_endpoints_register_would() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite3")).unwrap();
        for ep in ["evil\nINFO forged", "x\u{1b}[31m", "abc\u{202E}gpj.exe", ""] {
            let err = store.add_device(ep, None, &Tags::default()).unwrap_err().to_string();
            assert!(err.contains("ep must"), "{ep:?}: {err}");
        }
        assert!(store.endpoints().unwrap().is_empty());
        store.add_device("urn:imei:1", None, &Tags::default()).unwrap();
    }

    /// Issue 32 item 8: device keys are sealed at rest, keys from before
    /// are sealed by migration 22, and the database copied without its
    /// `psk-seal.key` hands out no key.
    #[test]
    fn device_keys_are_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flownexus.sqlite3");
        // A key a flownexus of schema 21 stored in clear.
        let old = super::super::migrations::database_at(&path, 21);
        old.execute(
            "INSERT INTO devices (endpoint, psk_identity, psk_key, tags, created_at) VALUES ('old', 'old-id', x'00112233445566778899aabbccddeeff', '', 0)",
            [],
        )
        .unwrap();
        drop(old);
        let store = Store::open(&path).unwrap();
        let psk = Psk::from_hex("new-id", "0f0e0d0c0b0a09080706050403020100").unwrap();
        store.add_device("new", Some(&psk), &Tags::default()).unwrap();
        let stored: Vec<Vec<u8>> = store
            .conn
            .prepare("SELECT psk_key FROM devices ORDER BY endpoint")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            stored.iter().all(|k| super::super::sealing::KeySeal::is_sealed(k)),
            "{stored:?}"
        );
        let keys = store.device_keys().unwrap();
        let key = |ep: &str| keys.iter().find(|(e, _)| e == ep).unwrap().1.key().to_vec();
        assert_eq!(key("old"), hex_bytes("00112233445566778899aabbccddeeff"));
        assert_eq!(key("new"), psk.key());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(super::super::sealing::KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The database file alone, elsewhere: no key opens.
        let elsewhere = tempfile::tempdir().unwrap();
        let copy = elsewhere.path().join("flownexus.sqlite3");
        store.backup_to(&copy).unwrap();
        let err = Store::open(&copy).unwrap().device_keys().unwrap_err().to_string();
        assert!(err.contains("psk-seal.key"), "{err}");
    }

    fn hex_bytes(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }
}
