//! Device profiles (`lwm2m::profile`): stored, listed, and queued by the
//! writer in the transaction that records a registration, so a crash
//! between the two loses neither.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::error::{Error, Result};
use crate::lwm2m::profile::{Step, applies};

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProfileRow {
    pub id: i64,
    pub name: String,
    /// The tag whose devices it applies to; absent: every device.
    pub tag: Option<String>,
    pub steps: Vec<Step>,
    /// How long each queued operation may wait for its device, seconds.
    pub deadline_s: u32,
    pub created_by: String,
    pub created_at: i64,
}

/// Operations of one profile step tried at most this often.
const PROFILE_ATTEMPTS: u32 = 3;

impl Store {
    pub fn add_profile(
        &self,
        name: &str,
        tag: Option<&str>,
        steps: &[Step],
        deadline_s: u32,
        by: &str,
    ) -> Result<ProfileRow> {
        let (name, tag) = (profile_name(name)?, tag.map(str::trim).filter(|t| !t.is_empty()));
        self.conn
            .execute(
                "INSERT INTO device_profiles (name, tag, steps, deadline_s, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    tag,
                    serde_json::to_string(steps).expect("serialises"),
                    deadline_s,
                    by,
                    now_ms()
                ],
            )
            .map_err(|e| name_taken(e, name))?;
        self.profile(self.conn.last_insert_rowid())
    }

    /// Replace a profile's name, tag, steps and deadline; devices get the
    /// new steps from their next registration.
    pub fn update_profile(
        &self,
        id: i64,
        name: &str,
        tag: Option<&str>,
        steps: &[Step],
        deadline_s: u32,
    ) -> Result<ProfileRow> {
        let (name, tag) = (profile_name(name)?, tag.map(str::trim).filter(|t| !t.is_empty()));
        let changed = self
            .conn
            .execute(
                "UPDATE device_profiles SET name = ?2, tag = ?3, steps = ?4, deadline_s = ?5 WHERE id = ?1",
                params![
                    id,
                    name,
                    tag,
                    serde_json::to_string(steps).expect("serialises"),
                    deadline_s
                ],
            )
            .map_err(|e| name_taken(e, name))?;
        if changed == 0 {
            return Err(Error::NotFound(format!("profile {id}")));
        }
        self.profile(id)
    }

    pub fn profile(&self, id: i64) -> Result<ProfileRow> {
        self.conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), [id], profile_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("profile {id}")))
    }

    pub fn profiles(&self) -> Result<Vec<ProfileRow>> {
        let mut st = self.conn.prepare_cached(&format!("{SELECT} ORDER BY name"))?;
        let rows = st.query_map([], profile_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn remove_profile(&self, id: i64) -> Result<ProfileRow> {
        let row = self.profile(id)?;
        self.conn.execute("DELETE FROM device_profiles WHERE id = ?1", [id])?;
        Ok(row)
    }
}

fn profile_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(Error::Invalid {
            what: "profile name",
            reason: "1 to 64 printable characters".into(),
        });
    }
    Ok(name)
}

/// Names are unique: a clash is the operator's to fix, not a server error.
fn name_taken(e: rusqlite::Error, name: &str) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::AlreadyExists(format!("profile {name:?}"))
        }
        e => e.into(),
    }
}

const SELECT: &str = "SELECT id, name, tag, steps, deadline_s, created_by, created_at FROM device_profiles";

fn profile_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProfileRow> {
    let steps: String = r.get(3)?;
    Ok(ProfileRow {
        id: r.get(0)?,
        name: r.get(1)?,
        tag: r.get(2)?,
        // Written by `add_profile` from parsed steps; a row that no longer
        // parses (edited by hand) queues nothing rather than failing every
        // registration.
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        deadline_s: r.get(4)?,
        created_by: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// Queue the steps of every profile that applies to `endpoint` (device row
/// `device`), inside the registration's transaction. An operation already
/// waiting for the device with the same request is not queued again, so a
/// device that registers repeatedly while out of reach does not pile up
/// copies. Returns how many operations were queued.
pub(super) fn queue_profiles(tx: &Transaction<'_>, device: i64, endpoint: &str) -> Result<usize> {
    let profiles: Vec<(Option<String>, String, u32)> = tx
        .prepare_cached("SELECT tag, steps, deadline_s FROM device_profiles ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if profiles.is_empty() {
        return Ok(0);
    }
    let tags: String = tx
        .prepare_cached("SELECT tags FROM devices WHERE id = ?1")?
        .query_row([device], |r| r.get(0))?;
    let mut waiting = tx.prepare_cached(
        "SELECT 1 FROM operations WHERE endpoint = ?1 AND request = ?2 AND state IN ('queued', 'sent') LIMIT 1",
    )?;
    let mut queued = 0;
    for (tag, steps, deadline_s) in profiles {
        if !applies(tag.as_deref(), &tags) {
            continue;
        }
        let steps: Vec<Step> = serde_json::from_str(&steps).unwrap_or_default();
        for kind in steps.iter().flat_map(Step::operations) {
            let request = serde_json::to_string(&kind).expect("serialises");
            if waiting.exists(params![endpoint, request])? {
                continue;
            }
            super::operations::insert_operation(
                tx,
                endpoint,
                &kind,
                now_ms() + i64::from(deadline_s) * 1000,
                PROFILE_ATTEMPTS,
            )?;
            queued += 1;
        }
    }
    Ok(queued)
}
