//! Firmware updates of single devices: the persisted `fota::Update`
//! machines and each update's timeline of steps.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, access, now_ms};
use crate::error::{Error, Result};
use crate::fota::{Phase, Update};
use crate::lwm2m::operation::{OperationId, OperationKind};

/// An update as stored: the machine and what lists show of it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UpdateRow {
    pub id: i64,
    pub endpoint: String,
    pub firmware_id: i64,
    pub phase: Phase,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// The campaign it belongs to, if any.
    pub campaign_id: Option<i64>,
    #[serde(skip)]
    #[schemars(skip)]
    pub machine: Update,
}

/// One step of an update's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct UpdateStep {
    pub ts: i64,
    pub phase: Phase,
    pub detail: Option<String>,
}

fn save_on(tx: &rusqlite::Transaction<'_>, id: i64, machine: &Update) -> Result<()> {
    let now = now_ms();
    let before: Option<(String, Of)> = tx
        .query_row(
            "SELECT phase, endpoint, firmware_id, campaign_id, celery_task_id FROM fota_updates WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    Of {
                        endpoint: r.get(1)?,
                        firmware_id: r.get(2)?,
                        campaign_id: r.get(3)?,
                        task: r.get(4)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((before, of)) = before else {
        return Err(Error::NotFound(format!("firmware update {id}")));
    };
    let phase = machine.phase;
    // Only an active update is saved: one ended elsewhere (its device was
    // removed) stays ended.
    let changed = tx.execute(
        "UPDATE fota_updates SET phase = ?2, active = ?3, machine = ?4, reason = ?5, updated_at = ?6,
                finished_at = CASE WHEN ?3 = 0 THEN ?6 ELSE NULL END
         WHERE id = ?1 AND active = 1",
        params![
            id,
            phase.as_str(),
            !phase.is_final(),
            serde_json::to_string(machine).expect("serialises"),
            machine.reason,
            now
        ],
    )?;
    if changed == 0 {
        return Err(Error::NotFound(format!("active firmware update {id}")));
    }
    if before != phase.as_str() {
        tx.execute(
            "INSERT INTO fota_steps (update_id, ts, phase, detail) VALUES (?1, ?2, ?3, ?4)",
            params![id, now, phase.as_str(), machine.reason],
        )?;
        changed_event(tx, id, &of, machine, Some(&before))?;
    }
    if phase.is_final() {
        // A campaign's device ends with its update, in this transaction.
        super::campaigns::update_ended(tx, id, phase, machine.reason.as_deref())?;
    }
    Ok(())
}

/// Insert a new active update (of a campaign, if `campaign_id`) and the
/// first step of its timeline; `AlreadyExists` while the device has
/// another (the partial unique index decides, never a check before).
pub(super) fn insert_update(
    tx: &rusqlite::Transaction<'_>,
    endpoint: &str,
    firmware_id: i64,
    machine: &Update,
    by: &str,
    campaign_id: Option<i64>,
) -> Result<i64> {
    let now = now_ms();
    super::devices::require_device(tx, endpoint)?;
    tx.execute(
        "INSERT INTO fota_updates (endpoint, firmware_id, phase, active, machine, created_by, created_at, updated_at, campaign_id)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?6, ?7)",
        params![
            endpoint,
            firmware_id,
            machine.phase.as_str(),
            serde_json::to_string(machine).expect("serialises"),
            by,
            now,
            campaign_id
        ],
    )
    .map_err(|e| access::constraint(e, || format!("an active firmware update of {endpoint}")))?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO fota_steps (update_id, ts, phase, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, machine.phase.as_str(), format!("queued by {by}")],
    )?;
    let of = Of {
        endpoint: endpoint.to_string(),
        firmware_id,
        campaign_id,
        task: None,
    };
    changed_event(tx, id, &of, machine, None)?;
    Ok(id)
}

/// Whose an update is, for its events.
struct Of {
    endpoint: String,
    firmware_id: i64,
    campaign_id: Option<i64>,
    /// The Celery task that asked for it, whose result its end is.
    task: Option<String>,
}

/// `firmware_update_changed` for the outbox: the update entered a phase
/// (or began, with no `previous`).
fn changed_event(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    of: &Of,
    machine: &Update,
    previous: Option<&str>,
) -> Result<()> {
    super::outbox::emit_if_wanted(
        tx,
        crate::outbox::EventKind::FirmwareUpdateChanged,
        Some(&of.endpoint),
        || {
            let mut payload = serde_json::json!({
                "update": id, "firmware": of.firmware_id, "campaign": of.campaign_id,
                "phase": machine.phase.as_str(), "previous": previous, "reason": machine.reason,
                "final": machine.phase.is_final(),
            });
            if let Some(task) = &of.task {
                payload["celery_task_id"] = serde_json::Value::from(task.as_str());
            }
            payload
        },
    )
}

const UPDATE_SQL: &str =
    "SELECT id, endpoint, firmware_id, reason, created_by, created_at, updated_at, finished_at, machine, campaign_id
     FROM fota_updates";

fn update_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UpdateRow> {
    let machine: String = r.get(8)?;
    let machine: Update = serde_json::from_str(&machine)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok(UpdateRow {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        firmware_id: r.get(2)?,
        phase: machine.phase,
        reason: r.get(3)?,
        created_by: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        finished_at: r.get(7)?,
        campaign_id: r.get(9)?,
        machine,
    })
}

impl Store {
    /// Start an update of `endpoint`; refused while another is active on
    /// it (the partial unique index decides, never a check before).
    /// A new update; for Celery task `task`, whose id it keeps (unique).
    pub fn create_update(
        &self,
        endpoint: &str,
        firmware_id: i64,
        machine: &Update,
        by: &str,
        task: Option<&str>,
    ) -> Result<i64> {
        let tx = self.write_tx()?;
        let id = insert_update(&tx, endpoint, firmware_id, machine, by, None)?;
        if let Some(task) = task {
            tx.execute(
                "UPDATE fota_updates SET celery_task_id = ?2 WHERE id = ?1",
                params![id, task],
            )
            .map_err(|e| access::constraint(e, || format!("an update for Celery task {task}")))?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// The update Celery task `task` made, if any.
    pub fn update_of_task(&self, task: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT id FROM fota_updates WHERE celery_task_id = ?1", [task], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Persist a machine after a step; a phase change adds to the timeline.
    pub fn save_update(&self, id: i64, machine: &Update) -> Result<()> {
        let tx = self.write_tx()?;
        save_on(&tx, id, machine)?;
        tx.commit()?;
        Ok(())
    }

    /// Save several updates in one transaction.
    pub fn save_updates<'a>(&self, updates: impl IntoIterator<Item = (i64, &'a Update)>) -> Result<()> {
        let tx = self.write_tx()?;
        for (id, machine) in updates {
            save_on(&tx, id, machine)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Queue the operation an update asked for and save the update waiting
    /// for it, in one transaction: after a crash either both happened or
    /// neither, so no step is sent twice (an Execute Update repeated would
    /// fail on the device) and none is forgotten.
    pub fn save_update_queueing(
        &self,
        id: i64,
        endpoint: &str,
        machine: &mut Update,
        kind: &OperationKind,
        deadline: i64,
        max_attempts: u32,
    ) -> Result<OperationId> {
        let tx = self.write_tx()?;
        let op = super::operations::insert_operation(&tx, endpoint, kind, deadline, max_attempts)?;
        machine.queued(op);
        save_on(&tx, id, machine)?;
        tx.commit()?;
        Ok(op)
    }

    /// How many updates are under way (systemd's `STATUS=` line).
    pub fn count_active_updates(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM fota_updates WHERE active = 1", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Updates still under way with id > `after`, oldest first: the update
    /// task's start-up load and its poll for updates created elsewhere.
    pub fn active_updates(&self, after: i64) -> Result<Vec<UpdateRow>> {
        let mut st = self
            .conn
            .prepare(&format!("{UPDATE_SQL} WHERE active = 1 AND id > ?1 ORDER BY id"))?;
        let rows = st.query_map([after], update_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Ask the server to cancel an active update (it writes an empty
    /// Package URI to the device, Core E.6); false if none is active.
    pub fn request_update_cancel(&self, id: i64) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE fota_updates SET cancel_requested = 1 WHERE id = ?1 AND active = 1",
            [id],
        )? == 1)
    }

    /// Those of `ids` that are no longer active (ended by another process).
    pub fn ended_updates(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let ids: Vec<rusqlite::types::Value> = ids.iter().map(|&i| i.into()).collect();
        let mut st = self
            .conn
            .prepare("SELECT id FROM fota_updates WHERE id IN rarray(?1) AND active = 0")?;
        let rows = st.query_map([std::rc::Rc::new(ids)], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Cancellations asked for and not yet taken: their ids, cleared.
    pub fn take_update_cancels(&self) -> Result<Vec<i64>> {
        // Looked for first: an UPDATE takes the write lock even when it
        // matches nothing, and this runs every second, so it would queue
        // behind the writer's long moves (seen as `database is locked`
        // under `bench web`) for no change at all.
        let any: bool = self
            .conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM fota_updates WHERE cancel_requested = 1)")?
            .query_row([], |r| r.get(0))?;
        if !any {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare("UPDATE fota_updates SET cancel_requested = 0 WHERE cancel_requested = 1 RETURNING id")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn update(&self, id: i64) -> Result<UpdateRow> {
        self.conn
            .query_row(&format!("{UPDATE_SQL} WHERE id = ?1"), [id], update_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("firmware update {id}")))
    }

    /// A device's updates, newest first.
    pub fn updates_of(&self, endpoint: &str, limit: usize) -> Result<Vec<UpdateRow>> {
        let mut st = self
            .conn
            .prepare(&format!("{UPDATE_SQL} WHERE endpoint = ?1 ORDER BY id DESC LIMIT ?2"))?;
        let rows = st.query_map(params![endpoint, limit as i64], update_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// An update's timeline, oldest first.
    pub fn update_steps(&self, id: i64) -> Result<Vec<UpdateStep>> {
        let mut st = self
            .conn
            .prepare("SELECT ts, phase, detail FROM fota_steps WHERE update_id = ?1 ORDER BY ts, rowid")?;
        let rows = st.query_map([id], |r| {
            let phase: String = r.get(1)?;
            Ok(UpdateStep {
                ts: r.get(0)?,
                phase: serde_json::from_value(serde_json::Value::String(phase)).unwrap_or(Phase::Checking),
                detail: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::operation::OperationState;
    use crate::store::tags::Tags;

    fn firmware(s: &mut Store) -> i64 {
        let f = crate::store::NewFirmware {
            name: "app.bin",
            version: "2.0.0",
            sha256: &"a".repeat(64),
            size: 1,
            image_type: "unknown",
            uploader: "t",
            notes: "",
        };
        s.insert_firmware(&f).unwrap().0.id
    }

    /// One active update per device; an update and the operation it waits
    /// for are saved together or not at all.
    #[test]
    fn updates_are_unique_per_device_and_saved_with_their_operation() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite3")).unwrap();
        s.add_device("dev", None, &Tags::default()).unwrap();
        let fw = firmware(&mut s);
        let mut m = Update::new(0, "https://fw/x".into(), None, "2.0.0".into());
        let id = s.create_update("dev", fw, &m, "t", None).unwrap();
        let again = s.create_update("dev", fw, &m, "t", None).unwrap_err();
        assert!(matches!(again, Error::AlreadyExists(_)), "{again}");
        assert!(matches!(
            s.create_update("nobody", fw, &m, "t", None),
            Err(Error::UnknownEndpoint(_))
        ));

        let kind = m.take_operation().unwrap();
        let op = s.save_update_queueing(id, "dev", &mut m, &kind, i64::MAX, 3).unwrap();
        assert_eq!(s.operation(op).unwrap().state, OperationState::Queued);
        assert_eq!(
            s.update(id).unwrap().machine.waiting_for,
            Some(op),
            "saved with its operation"
        );

        // The device is gone: its update ends, and a late save from the
        // update task neither queues nor resurrects anything.
        s.remove_device("dev").unwrap();
        let ended = s.update(id).unwrap();
        assert_eq!(
            (ended.phase, ended.reason.as_deref()),
            (Phase::Failed, Some("the device was removed"))
        );
        assert_eq!(s.ended_updates(&[id]).unwrap(), [id]);
        let before = s.max_operation_id().unwrap();
        let mut moved = m.clone();
        moved.phase = Phase::Observing;
        assert!(
            s.save_update_queueing(id, "dev", &mut moved, &kind, i64::MAX, 3)
                .is_err()
        );
        assert!(matches!(s.save_update(id, &moved), Err(Error::NotFound(_))));
        assert_eq!(s.max_operation_id().unwrap(), before);
        assert_eq!(s.update(id).unwrap().phase, Phase::Failed);
        // A device provisioned again under that name can be updated.
        s.add_device("dev", None, &Tags::default()).unwrap();
        let fresh = Update::new(0, "https://fw/x".into(), None, "2.0.0".into());
        s.create_update("dev", fw, &fresh, "t", None).unwrap();
    }
}
