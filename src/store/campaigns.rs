//! Firmware campaigns: the persisted `campaign::Campaign` machines, their
//! devices (one row per target, with its wave and update) and timeline.
//!
//! Every change a campaign makes is one transaction: the machine, the
//! updates it starts and its members' statuses together, guarded by the
//! campaign's `revision`, so a crash between two steps repeats nothing
//! (no device updated twice, no wave started twice) and an operator's
//! pause between the task's read and its write is never overwritten.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::campaign::{Campaign, Plan, State, Target, WaveCounts};
use crate::error::{Error, Result};
use crate::fota::{Phase, Update};

/// A campaign as stored.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CampaignRow {
    pub id: i64,
    pub name: String,
    pub firmware_id: i64,
    pub firmware_name: String,
    pub target_version: String,
    pub target: Target,
    pub plan: Plan,
    pub state: State,
    /// The latest wave reached, counting from 1.
    pub wave: usize,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    #[serde(skip)]
    #[schemars(skip)]
    pub machine: Campaign,
    #[serde(skip)]
    #[schemars(skip)]
    pub revision: i64,
}

/// Where one device of a campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Already on the target version when the campaign was made.
    Skipped,
    Pending,
    Active,
    Succeeded,
    Failed,
    Cancelled,
}

impl MemberStatus {
    pub const ALL: [MemberStatus; 6] = [
        MemberStatus::Skipped,
        MemberStatus::Pending,
        MemberStatus::Active,
        MemberStatus::Succeeded,
        MemberStatus::Failed,
        MemberStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Skipped => "skipped",
            MemberStatus::Pending => "pending",
            MemberStatus::Active => "active",
            MemberStatus::Succeeded => "succeeded",
            MemberStatus::Failed => "failed",
            MemberStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<MemberStatus> {
        MemberStatus::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// One device of a campaign, for lists.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MemberRow {
    pub endpoint: String,
    /// Counting from 1; none when skipped.
    pub wave: Option<usize>,
    pub status: MemberStatus,
    pub update_id: Option<i64>,
    /// The phase of its latest update.
    pub phase: Option<Phase>,
    pub reason: Option<String>,
    /// Updates started for it (more than one after retry-failed).
    pub attempts: u32,
    /// Bytes the download server sent it of the image since its latest
    /// update started.
    pub bytes: u64,
    pub added_at: i64,
}

/// A campaign's counts: per wave and the skipped.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CampaignCounts {
    pub waves: Vec<WaveCounts>,
    pub skipped: u64,
}

/// A campaign with its counts and timeline: what the API, the CLI, the
/// dashboard and the live stream show.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CampaignReport {
    #[serde(flatten)]
    pub campaign: CampaignRow,
    pub counts: CampaignCounts,
    /// The waves' counts summed.
    pub totals: WaveCounts,
    pub steps: Vec<CampaignStep>,
}

/// One entry of a campaign's own timeline.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CampaignStep {
    pub ts: i64,
    pub state: State,
    pub wave: usize,
    pub detail: Option<String>,
}

/// A device the target may select, with the facts it is selected by.
struct Candidate {
    pub id: i64,
    pub endpoint: String,
    pub tags: String,
    pub version: Option<String>,
    pub model: Option<String>,
}

/// What a new campaign is: its image, target and plan.
pub struct NewCampaign<'a> {
    pub name: &'a str,
    pub firmware: &'a super::FirmwareRow,
    pub target: &'a Target,
    pub plan: &'a Plan,
    pub by: &'a str,
}

fn parse_json<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

const CAMPAIGN_SQL: &str = "SELECT c.id, c.name, c.firmware_id, f.name, f.version, c.target, c.plan, c.machine,
        c.created_by, c.created_at, c.updated_at, c.finished_at, c.revision
     FROM campaigns c JOIN firmware f ON f.id = c.firmware_id";

fn campaign_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignRow> {
    let machine: Campaign = parse_json(r, 7)?;
    Ok(CampaignRow {
        id: r.get(0)?,
        name: r.get(1)?,
        firmware_id: r.get(2)?,
        firmware_name: r.get(3)?,
        target_version: r.get(4)?,
        target: parse_json(r, 5)?,
        plan: parse_json(r, 6)?,
        state: machine.state,
        wave: machine.wave + 1,
        reason: machine.reason.clone(),
        created_by: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        finished_at: r.get(11)?,
        revision: r.get(12)?,
        machine,
    })
}

/// The devices with id > `after`, with their tags, version and model.
fn candidates(tx: &Transaction<'_>, after: i64) -> Result<Vec<Candidate>> {
    let mut st = tx.prepare(
        "SELECT d.id, d.endpoint, d.tags,
                (SELECT CAST(value AS TEXT) FROM latest_values l WHERE l.device_id = d.id AND l.path = '/3/0/3'),
                (SELECT CAST(value AS TEXT) FROM latest_values l WHERE l.device_id = d.id AND l.path = '/3/0/1')
         FROM devices d WHERE d.id > ?1 ORDER BY d.id",
    )?;
    let text = |v: Option<rusqlite::types::Value>| match v {
        Some(rusqlite::types::Value::Text(s)) => Some(s),
        _ => None,
    };
    let rows = st.query_map([after], |r| {
        Ok(Candidate {
            id: r.get(0)?,
            endpoint: r.get(1)?,
            tags: r.get(2)?,
            version: text(r.get(3)?),
            model: text(r.get(4)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn add_step(tx: &Transaction<'_>, id: i64, machine: &Campaign, detail: Option<&str>) -> Result<()> {
    tx.execute(
        "INSERT INTO campaign_steps (campaign_id, ts, state, wave, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now_ms(), machine.state.as_str(), machine.wave as i64 + 1, detail],
    )?;
    // Each step of the timeline is a `campaign_changed` event.
    super::outbox::emit_if_wanted(tx, crate::outbox::EventKind::CampaignChanged, None, || {
        serde_json::json!({
            "campaign": id, "state": machine.state.as_str(), "wave": machine.wave + 1,
            "reason": machine.reason, "detail": detail, "final": machine.state.is_final(),
        })
    })
}

/// Save `machine` if the campaign is still at `revision`; false when
/// someone else changed it meanwhile.
fn save_machine(tx: &Transaction<'_>, id: i64, revision: i64, machine: &Campaign) -> Result<bool> {
    let now = now_ms();
    let n = tx.execute(
        "UPDATE campaigns SET machine = ?3, state = ?4, wave = ?5, reason = ?6, revision = revision + 1, updated_at = ?7,
                finished_at = CASE WHEN ?8 THEN COALESCE(finished_at, ?7) ELSE NULL END
         WHERE id = ?1 AND revision = ?2",
        params![
            id,
            revision,
            serde_json::to_string(machine).expect("serialises"),
            machine.state.as_str(),
            machine.wave as i64,
            machine.reason,
            now,
            machine.state.is_final()
        ],
    )?;
    Ok(n == 1)
}

/// Called by `store::fota` in the transaction that ends update `update_id`.
pub(super) fn update_ended(tx: &Transaction<'_>, update_id: i64, phase: Phase, reason: Option<&str>) -> Result<()> {
    let status = match phase {
        Phase::Succeeded => MemberStatus::Succeeded,
        Phase::Cancelled => MemberStatus::Cancelled,
        _ => MemberStatus::Failed,
    };
    tx.execute(
        "UPDATE campaign_devices SET status = ?2, reason = ?3 WHERE update_id = ?1 AND status = 'active'",
        params![update_id, status.as_str(), reason],
    )?;
    Ok(())
}

/// A campaign's device with its latest update and the bytes sent to it
/// for that update; callers add the `WHERE`.
const MEMBER_SQL: &str =
    "SELECT cd.endpoint, cd.wave, cd.status, cd.update_id, u.phase, COALESCE(cd.reason, u.reason), cd.attempts,
            (SELECT COALESCE(SUM(dl.bytes), 0) FROM downloads dl
              WHERE dl.device = cd.endpoint AND dl.firmware_id = c.firmware_id AND dl.ts >= u.created_at),
            cd.added_at
     FROM campaign_devices cd JOIN campaigns c ON c.id = cd.campaign_id
     LEFT JOIN fota_updates u ON u.id = cd.update_id";

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MemberRow> {
    let status: String = r.get(2)?;
    let phase: Option<String> = r.get(4)?;
    Ok(MemberRow {
        endpoint: r.get(0)?,
        wave: r.get::<_, Option<i64>>(1)?.map(|w| w as usize + 1),
        status: MemberStatus::parse(&status).unwrap_or(MemberStatus::Failed),
        update_id: r.get(3)?,
        phase: phase.and_then(|p| serde_json::from_value(serde_json::Value::String(p)).ok()),
        reason: r.get(5)?,
        attempts: r.get(6)?,
        bytes: r.get::<_, i64>(7)? as u64,
        added_at: r.get(8)?,
    })
}

/// The result of one start the campaign task asked for.
pub enum Started {
    Update(i64),
    /// The member failed before an update began (its URI, another active
    /// update), with the reason.
    Refused(String),
    /// No longer pending (cancelled or started meanwhile).
    Gone,
}

impl Store {
    /// Make a campaign: its targets are selected and split into waves now,
    /// in one transaction (a seeded shuffle, so canaries are a sample of
    /// the fleet, not its first rows); those already on the image's version
    /// are recorded as skipped.
    pub fn create_campaign(&self, c: &NewCampaign<'_>) -> Result<i64> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let all = candidates(&tx, 0)?;
        let through = all.iter().map(|d| d.id).max().unwrap_or(0);
        let matching: Vec<&Candidate> = all
            .iter()
            .filter(|d| {
                c.target
                    .matches(&d.endpoint, &d.tags, d.version.as_deref(), d.model.as_deref())
            })
            .collect();
        if matching.is_empty() {
            return Err(Error::Invalid {
                what: "campaign",
                reason: format!("no device matches {}", c.target.describe()),
            });
        }
        let missing: Vec<&String> = c
            .target
            .devices
            .iter()
            .filter(|e| !matching.iter().any(|d| &d.endpoint == *e))
            .collect();
        if let Some(e) = missing.first() {
            return Err(Error::UnknownEndpoint(e.to_string()));
        }
        let (mut eligible, skipped): (Vec<&Candidate>, Vec<&Candidate>) = matching.into_iter().partition(|d| {
            !d.version
                .as_deref()
                .is_some_and(|v| crate::fota::same_version(v, &c.firmware.version))
        });
        let machine = Campaign::new();
        tx.execute(
            "INSERT INTO campaigns (name, firmware_id, target, plan, state, wave, machine, joined_through, created_by, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?9)",
            params![
                c.name,
                c.firmware.id,
                serde_json::to_string(c.target).expect("serialises"),
                serde_json::to_string(c.plan).expect("serialises"),
                machine.state.as_str(),
                serde_json::to_string(&machine).expect("serialises"),
                through,
                c.by,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        fastrand::Rng::with_seed(id as u64).shuffle(&mut eligible);
        let sizes = c.plan.wave_sizes(eligible.len());
        let mut ins = tx.prepare(
            "INSERT INTO campaign_devices (campaign_id, endpoint, wave, position, status, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut devices = eligible.iter();
        let mut position = 0i64;
        for (wave, &size) in sizes.iter().enumerate() {
            for d in devices.by_ref().take(size) {
                ins.execute(params![id, d.endpoint, wave as i64, position, "pending", now])?;
                position += 1;
            }
        }
        for d in skipped {
            ins.execute(params![id, d.endpoint, None::<i64>, position, "skipped", now])?;
            position += 1;
        }
        drop(ins);
        add_step(&tx, id, &machine, Some(&format!("created by {}", c.by)))?;
        tx.commit()?;
        Ok(id)
    }

    pub fn campaign(&self, id: i64) -> Result<CampaignRow> {
        self.conn
            .query_row(&format!("{CAMPAIGN_SQL} WHERE c.id = ?1"), [id], campaign_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("campaign {id}")))
    }

    /// Campaigns, newest first.
    pub fn campaigns(&self, limit: usize) -> Result<Vec<CampaignRow>> {
        let mut st = self
            .conn
            .prepare(&format!("{CAMPAIGN_SQL} ORDER BY c.id DESC LIMIT ?1"))?;
        let rows = st.query_map([limit as i64], campaign_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn campaign_report(&self, id: i64) -> Result<CampaignReport> {
        let campaign = self.campaign(id)?;
        let counts = self.campaign_counts(id, campaign.plan.waves.len())?;
        Ok(CampaignReport {
            totals: crate::campaign::sum(&counts.waves),
            steps: self.campaign_steps(id)?,
            campaign,
            counts,
        })
    }

    /// The campaigns the task steps: running ones.
    pub fn running_campaigns(&self) -> Result<Vec<CampaignRow>> {
        let mut st = self
            .conn
            .prepare(&format!("{CAMPAIGN_SQL} WHERE c.state = 'running' ORDER BY c.id"))?;
        let rows = st.query_map([], campaign_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Counts per wave (`waves` of them) and the skipped.
    pub fn campaign_counts(&self, id: i64, waves: usize) -> Result<CampaignCounts> {
        let mut counts = CampaignCounts {
            waves: vec![WaveCounts::default(); waves],
            skipped: 0,
        };
        let mut st = self.conn.prepare_cached(
            "SELECT cd.wave, cd.status, u.phase, COUNT(*) FROM campaign_devices cd
             LEFT JOIN fota_updates u ON u.id = cd.update_id
             WHERE cd.campaign_id = ?1 GROUP BY 1, 2, 3",
        )?;
        let mut rows = st.query([id])?;
        while let Some(r) = rows.next()? {
            let wave: Option<i64> = r.get(0)?;
            let status: String = r.get(1)?;
            let phase: Option<String> = r.get(2)?;
            let n = r.get::<_, i64>(3)? as u64;
            let Some(w) = wave.and_then(|w| counts.waves.get_mut(w as usize)) else {
                counts.skipped += n;
                continue;
            };
            match MemberStatus::parse(&status) {
                Some(MemberStatus::Pending) => w.pending += n,
                Some(MemberStatus::Active) => {
                    let phase = phase.and_then(|p| serde_json::from_value(serde_json::Value::String(p)).ok());
                    if phase.is_none_or(Phase::holds_download_slot) {
                        w.downloading += n;
                    } else {
                        w.installing += n;
                    }
                }
                Some(MemberStatus::Succeeded) => w.succeeded += n,
                Some(MemberStatus::Failed) => w.failed += n,
                Some(MemberStatus::Cancelled) => w.cancelled += n,
                Some(MemberStatus::Skipped) | None => counts.skipped += n,
            }
        }
        Ok(counts)
    }

    /// Up to `limit` pending endpoints of waves up to `max_wave` (0-based),
    /// the earliest wave first, in campaign order.
    pub fn pending_members(&self, id: i64, max_wave: usize, limit: u64) -> Result<Vec<String>> {
        let mut st = self.conn.prepare_cached(
            "SELECT endpoint FROM campaign_devices
             WHERE campaign_id = ?1 AND status = 'pending' AND wave <= ?2 ORDER BY wave, position LIMIT ?3",
        )?;
        let rows = st.query_map(params![id, max_wave as i64, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Save a step of the campaign task: the machine and the updates it
    /// started, together. `None` when the campaign changed since `row` was
    /// read (an operator's command): nothing is saved, the task reads again.
    pub fn apply_campaign_step(
        &self,
        row: &CampaignRow,
        machine: &Campaign,
        starts: Vec<(String, std::result::Result<Update, String>)>,
    ) -> Result<Option<Vec<(String, Started)>>> {
        let tx = self.write_tx()?;
        if !save_machine(&tx, row.id, row.revision, machine)? {
            return Ok(None);
        }
        if (row.machine.state, row.machine.wave) != (machine.state, machine.wave) {
            let detail = match (&machine.reason, row.machine.wave != machine.wave) {
                (Some(r), _) => Some(r.clone()),
                (None, true) => Some(format!("wave {} reached", machine.wave + 1)),
                (None, false) => None,
            };
            add_step(&tx, row.id, machine, detail.as_deref())?;
        }
        let by = format!("campaign {}", row.id);
        let mut results = Vec::with_capacity(starts.len());
        for (endpoint, update) in starts {
            let taken = tx.execute(
                "UPDATE campaign_devices SET status = 'active', attempts = attempts + 1
                 WHERE campaign_id = ?1 AND endpoint = ?2 AND status = 'pending'",
                params![row.id, endpoint],
            )?;
            if taken == 0 {
                results.push((endpoint, Started::Gone));
                continue;
            }
            let outcome = match update {
                Err(reason) => Err(reason),
                Ok(update) => {
                    match super::fota::insert_update(&tx, &endpoint, row.firmware_id, &update, &by, Some(row.id)) {
                        Ok(update_id) => Ok(update_id),
                        Err(Error::AlreadyExists(_)) => Err("another firmware update of the device is active".into()),
                        Err(Error::UnknownEndpoint(_)) => Err("the device was removed".into()),
                        Err(e) => return Err(e),
                    }
                }
            };
            match outcome {
                Ok(update_id) => {
                    tx.execute(
                        "UPDATE campaign_devices SET update_id = ?3, reason = NULL WHERE campaign_id = ?1 AND endpoint = ?2",
                        params![row.id, endpoint, update_id],
                    )?;
                    results.push((endpoint, Started::Update(update_id)));
                }
                Err(reason) => {
                    tx.execute(
                        "UPDATE campaign_devices SET status = 'failed', reason = ?3 WHERE campaign_id = ?1 AND endpoint = ?2",
                        params![row.id, endpoint, reason],
                    )?;
                    results.push((endpoint, Started::Refused(reason)));
                }
            }
        }
        tx.commit()?;
        Ok(Some(results))
    }

    /// An operator's command on a campaign, applied to its machine and its
    /// devices in one transaction: cancel ends the pending and asks the
    /// active updates to cancel; retry returns the failed to pending.
    pub fn campaign_command(
        &self,
        id: i64,
        command: Command,
        by: &str,
    ) -> Result<std::result::Result<CampaignRow, String>> {
        let tx = self.write_tx()?;
        let row = tx
            .query_row(&format!("{CAMPAIGN_SQL} WHERE c.id = ?1"), [id], campaign_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("campaign {id}")))?;
        let mut machine = row.machine.clone();
        let done = match command {
            Command::Pause => machine.pause(by),
            Command::Resume => machine.resume(),
            Command::Cancel => machine.cancel(by),
            Command::RetryFailed => machine.retry_failed(),
        };
        if let Err(reason) = done {
            return Ok(Err(reason));
        }
        match command {
            Command::Cancel => {
                tx.execute(
                    "UPDATE campaign_devices SET status = 'cancelled', reason = ?2 WHERE campaign_id = ?1 AND status = 'pending'",
                    params![id, format!("campaign cancelled by {by}")],
                )?;
                tx.execute(
                    "UPDATE fota_updates SET cancel_requested = 1 WHERE campaign_id = ?1 AND active = 1",
                    [id],
                )?;
            }
            Command::RetryFailed => {
                let n = tx.execute(
                    "UPDATE campaign_devices SET status = 'pending', reason = NULL
                     WHERE campaign_id = ?1 AND status = 'failed'
                       AND endpoint IN (SELECT endpoint FROM devices)",
                    [id],
                )?;
                machine.reason = None;
                if n == 0 && row.machine.state == State::Finished {
                    return Ok(Err("the campaign has no failed devices to retry".into()));
                }
            }
            Command::Pause | Command::Resume => {}
        }
        let saved = save_machine(&tx, id, row.revision, &machine)?;
        debug_assert!(saved, "the row was read in this transaction");
        add_step(&tx, id, &machine, Some(&format!("{} by {by}", command.as_str())))?;
        tx.commit()?;
        Ok(Ok(self.campaign(id)?))
    }

    /// Devices provisioned since the campaign last looked that match its
    /// target join its last wave (or are skipped when on the version).
    pub fn campaign_join_late(&self, row: &CampaignRow) -> Result<u64> {
        let tx = self.write_tx()?;
        let after: i64 = tx.query_row("SELECT joined_through FROM campaigns WHERE id = ?1", [row.id], |r| {
            r.get(0)
        })?;
        let fresh = candidates(&tx, after)?;
        let Some(through) = fresh.iter().map(|d| d.id).max() else {
            return Ok(0);
        };
        let now = now_ms();
        let last_wave = row.plan.waves.len() as i64 - 1;
        let mut joined = 0;
        for d in &fresh {
            if !row
                .target
                .matches(&d.endpoint, &d.tags, d.version.as_deref(), d.model.as_deref())
            {
                continue;
            }
            let on_target = d
                .version
                .as_deref()
                .is_some_and(|v| crate::fota::same_version(v, &row.target_version));
            joined += tx.execute(
                "INSERT INTO campaign_devices (campaign_id, endpoint, wave, position, status, added_at)
                 VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(position), 0) + 1 FROM campaign_devices WHERE campaign_id = ?1), ?4, ?5)
                 ON CONFLICT DO NOTHING",
                params![
                    row.id,
                    d.endpoint,
                    (!on_target).then_some(last_wave),
                    if on_target { "skipped" } else { "pending" },
                    now
                ],
            )? as u64;
        }
        tx.execute(
            "UPDATE campaigns SET joined_through = ?2 WHERE id = ?1",
            params![row.id, through],
        )?;
        tx.commit()?;
        Ok(joined)
    }

    /// A page of a campaign's devices, of one status if given, in the
    /// natural order of their endpoints (as the device list), which an
    /// operator looks a device up by; the rollout order is the waves'.
    /// (A target removed from the device table since lists first.)
    pub fn campaign_members(
        &self,
        id: i64,
        status: Option<MemberStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<MemberRow>> {
        let mut st = self.conn.prepare(&format!(
            "{MEMBER_SQL} LEFT JOIN devices d ON d.endpoint = cd.endpoint
             WHERE cd.campaign_id = ?1 AND (?2 IS NULL OR cd.status = ?2)
             ORDER BY d.endpoint_order, cd.endpoint LIMIT ?3 OFFSET ?4"
        ))?;
        let rows = st.query_map(
            params![id, status.map(MemberStatus::as_str), limit as i64, offset as i64],
            member_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One device of a campaign.
    pub fn campaign_member(&self, id: i64, endpoint: &str) -> Result<MemberRow> {
        self.conn
            .query_row(
                &format!("{MEMBER_SQL} WHERE cd.campaign_id = ?1 AND cd.endpoint = ?2"),
                params![id, endpoint],
                member_row,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("{endpoint} in campaign {id}")))
    }

    /// A campaign's own timeline, oldest first.
    pub fn campaign_steps(&self, id: i64) -> Result<Vec<CampaignStep>> {
        let mut st = self
            .conn
            .prepare("SELECT ts, state, wave, detail FROM campaign_steps WHERE campaign_id = ?1 ORDER BY ts, rowid")?;
        let rows = st.query_map([id], |r| {
            let state: String = r.get(1)?;
            Ok(CampaignStep {
                ts: r.get(0)?,
                state: serde_json::from_value(serde_json::Value::String(state)).unwrap_or(State::Running),
                wave: r.get::<_, i64>(2)? as usize,
                detail: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many updates of devices of campaign `id` each endpoint had (the
    /// restart tests' "no device updated twice").
    pub fn campaign_update_counts(&self, id: i64) -> Result<Vec<(String, u32)>> {
        let mut st = self.conn.prepare(
            "SELECT endpoint, COUNT(*) FROM fota_updates WHERE campaign_id = ?1 GROUP BY endpoint ORDER BY endpoint",
        )?;
        let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// What an operator can ask of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Cancel,
    RetryFailed,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "paused",
            Command::Resume => "resumed",
            Command::Cancel => "cancelled",
            Command::RetryFailed => "failed devices retried",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::WaveSize;
    use crate::store::tags::Tags;

    fn setup(n: usize) -> (tempfile::TempDir, Store, super::super::FirmwareRow) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite3")).unwrap();
        for i in 0..n {
            let tags = Tags::parse(if i % 2 == 0 { "even" } else { "odd" }).unwrap();
            s.add_device(&format!("dev-{i}"), None, &tags).unwrap();
            let version = if i == 0 { "2.0.0" } else { "1.0.0" };
            s.conn
                .execute(
                    "INSERT INTO latest_values (device_id, path, ts, vtype, value)
                     SELECT id, '/3/0/3', 0, 'string', ?2 FROM devices WHERE endpoint = ?1",
                    params![format!("dev-{i}"), super::super::values::sql_text(version)],
                )
                .unwrap();
        }
        let f = crate::store::NewFirmware {
            name: "app.bin",
            version: "v2.0.0",
            sha256: &"a".repeat(64),
            size: 1,
            image_type: "unknown",
            uploader: "t",
            notes: "",
        };
        let fw = s.insert_firmware(&f).unwrap().0;
        (dir, s, fw)
    }

    fn plan(waves: &str) -> Plan {
        Plan {
            waves: waves.split(',').map(|w| w.parse::<WaveSize>().unwrap()).collect(),
            ..Plan::default()
        }
    }

    fn start_all(s: &Store, id: i64) -> Vec<(String, Started)> {
        let row = s.campaign(id).unwrap();
        let mut m = row.machine.clone();
        let counts = s.campaign_counts(id, row.plan.waves.len()).unwrap();
        let step = m.step(&row.plan, &counts.waves, true);
        let starts = s
            .pending_members(id, m.wave, step.start)
            .unwrap()
            .into_iter()
            .map(|e| (e, Ok(Update::new(0, "https://fw/x".into(), None, "2.0.0".into()))))
            .collect();
        s.apply_campaign_step(&row, &m, starts).unwrap().unwrap()
    }

    /// Targets are selected, skipped when on the version, split into waves
    /// once; a start is one transaction with its update, never repeated; an
    /// ended update ends its member; commands change devices with the
    /// machine.
    #[test]
    fn a_campaign_starts_each_device_once_and_follows_its_updates() {
        let (_dir, s, fw) = setup(10);
        let target = Target {
            tag: Some("even".into()),
            ..Target::default()
        };
        let p = plan("2,100%");
        let new = NewCampaign {
            name: "evens",
            firmware: &fw,
            target: &target,
            plan: &p,
            by: "ann",
        };
        let id = s.create_campaign(&new).unwrap();
        let counts = s.campaign_counts(id, 2).unwrap();
        assert_eq!(counts.skipped, 1, "dev-0 already runs 2.0.0 (spelt without the v)");
        assert_eq!(
            (counts.waves[0].pending, counts.waves[1].pending),
            (2, 2),
            "four evens to update"
        );
        // Nothing matching is refused, as is a named device that is not there.
        let nobody = Target {
            tag: Some("none".into()),
            ..Target::default()
        };
        assert!(matches!(
            s.create_campaign(&NewCampaign { target: &nobody, ..new }),
            Err(Error::Invalid { .. })
        ));
        let ghost = Target {
            devices: vec!["dev-2".into(), "ghost".into()],
            ..Target::default()
        };
        assert!(matches!(
            s.create_campaign(&NewCampaign { target: &ghost, ..new }),
            Err(Error::UnknownEndpoint(_))
        ));

        let started = start_all(&s, id);
        assert_eq!(started.len(), 2, "wave 1 only");
        let Started::Update(first) = started[0].1 else { panic!() };
        // A stale step (read before this one) saves nothing and starts nothing.
        let stale = CampaignRow {
            revision: 0,
            ..s.campaign(id).unwrap()
        };
        let again = vec![(started[0].0.clone(), Ok(Update::new(0, "u".into(), None, "2".into())))];
        assert!(s.apply_campaign_step(&stale, &stale.machine, again).unwrap().is_none());
        // A device started elsewhere is not started again.
        let row = s.campaign(id).unwrap();
        let again = vec![(started[0].0.clone(), Ok(Update::new(0, "u".into(), None, "2".into())))];
        let r = s.apply_campaign_step(&row, &row.machine, again).unwrap().unwrap();
        assert!(matches!(r[0].1, Started::Gone));
        assert_eq!(s.campaign_update_counts(id).unwrap().len(), 2);
        assert_eq!(s.campaign_counts(id, 2).unwrap().waves[0].downloading, 2);

        // The update ends; its member with it.
        let mut m = s.update(first).unwrap().machine;
        m.phase = Phase::Succeeded;
        s.save_update(first, &m).unwrap();
        let member = s.campaign_member(id, &started[0].0).unwrap();
        assert_eq!(
            (member.status, member.wave, member.attempts),
            (MemberStatus::Succeeded, Some(1), 1)
        );
        let Started::Update(second) = started[1].1 else {
            panic!()
        };
        let mut m = s.update(second).unwrap().machine;
        m.phase = Phase::Failed;
        m.reason = Some("Update Result 5: integrity check failure".into());
        s.save_update(second, &m).unwrap();
        let member = s.campaign_member(id, &started[1].0).unwrap();
        assert_eq!(member.status, MemberStatus::Failed);
        assert!(member.reason.unwrap().contains("integrity"));

        // One of two failed: over the 10 % error threshold.
        start_all(&s, id);
        let row = s.campaign(id).unwrap();
        assert_eq!(row.state, State::Stopped);
        assert!(s.campaign_command(id, Command::Pause, "ann").unwrap().is_err());
        let row = s.campaign_command(id, Command::RetryFailed, "ann").unwrap().unwrap();
        assert_eq!(row.state, State::Running);
        assert_eq!(s.campaign_counts(id, 2).unwrap().waves[0].pending, 1);
        let retried = start_all(&s, id);
        assert_eq!(retried.len(), 1);
        assert_eq!(s.campaign_member(id, &retried[0].0).unwrap().attempts, 2);

        // Cancel: pending devices are cancelled, active updates asked to.
        let row = s.campaign_command(id, Command::Cancel, "bob").unwrap().unwrap();
        assert_eq!(row.state, State::Cancelled);
        assert!(row.finished_at.is_some());
        let c = s.campaign_counts(id, 2).unwrap();
        assert_eq!(c.waves[1].cancelled, 2);
        assert_eq!(s.take_update_cancels().unwrap().len(), 1);
        let steps: Vec<String> = s
            .campaign_steps(id)
            .unwrap()
            .into_iter()
            .filter_map(|st| st.detail)
            .collect();
        assert_eq!(steps[0], "created by ann");
        assert!(
            steps.iter().any(|d| d.contains("stopped at the error threshold")),
            "{steps:?}"
        );
        assert!(
            steps.contains(&"failed devices retried by ann".to_string()),
            "{steps:?}"
        );
        assert_eq!(steps.last().unwrap(), "cancelled by bob");
    }

    #[test]
    fn late_joiners_join_the_last_wave_and_removed_devices_fail() {
        let (_dir, s, fw) = setup(3);
        let target = Target {
            tag: Some("odd".into()),
            ..Target::default()
        };
        let p = Plan {
            late_joiners: true,
            ..plan("1,100%")
        };
        let id = s
            .create_campaign(&NewCampaign {
                name: "odds",
                firmware: &fw,
                target: &target,
                plan: &p,
                by: "ann",
            })
            .unwrap();
        s.add_device("dev-3", None, &Tags::parse("odd").unwrap()).unwrap();
        s.add_device("dev-4", None, &Tags::parse("even").unwrap()).unwrap();
        let row = s.campaign(id).unwrap();
        assert_eq!(s.campaign_join_late(&row).unwrap(), 1);
        assert_eq!(s.campaign_join_late(&row).unwrap(), 0, "looked at once");
        let joiner = s.campaign_member(id, "dev-3").unwrap();
        assert_eq!((joiner.wave, joiner.status), (Some(2), MemberStatus::Pending));
        s.remove_device("dev-3").unwrap();
        assert_eq!(s.campaign_member(id, "dev-3").unwrap().status, MemberStatus::Failed);
    }
}
