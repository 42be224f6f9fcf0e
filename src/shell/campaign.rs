//! The campaign task: the I/O around `campaign::Campaign` machines. Every
//! tick it reads each running campaign and its counts from the store,
//! asks the machine what to do (the daily window resolved here, in the
//! campaign's time zone), builds the updates it starts (Package URIs with
//! tokens) and saves machine and updates in one transaction. The update
//! task (`shell::fota`) then drives each device's update as if an operator
//! had started it, and the store ends a member with its update.
//!
//! The task keeps nothing between ticks that the store does not hold, so a
//! restart, a second server process or an operator's command in between
//! never makes it start a device twice or a wave twice.

use std::time::Duration;

use crate::campaign::{Request, Window};
use crate::error::{Error, Result};
use crate::shell::Nudges;
use crate::shell::fota::{Starter, live_firmware};
use crate::store::{CampaignRow, NewCampaign, Started, Store, now_ms};

/// How often campaigns are stepped.
const TICK: Duration = Duration::from_secs(1);
/// After a nudge, wait this long for more slots to free before a step.
const NUDGE_GATHER: Duration = Duration::from_millis(50);

/// Every this many ticks, look for late joiners.
const JOIN_EVERY: u64 = 10;

/// Make the campaign `req` asks for.
pub fn create(store: &Store, req: &Request, by: &str) -> Result<i64> {
    let invalid = |reason: String| Error::Invalid {
        what: "campaign",
        reason,
    };
    let plan = req.plan().map_err(invalid)?;
    if let Some(w) = &plan.window {
        local_minute(w, now_ms()).map_err(invalid)?;
    }
    let firmware = live_firmware(store, &req.image)?;
    store.create_campaign(&NewCampaign {
        name: req.name.trim(),
        firmware: &firmware,
        target: &req.target,
        plan: &plan,
        by,
    })
}

/// The minute after local midnight in the window's zone at `now_ms`.
fn local_minute(w: &Window, now_ms: i64) -> std::result::Result<u16, String> {
    let tz = jiff::tz::TimeZone::get(&w.tz).map_err(|e| format!("time zone {:?}: {e}", w.tz))?;
    let ts = jiff::Timestamp::from_millisecond(now_ms).map_err(|e| e.to_string())?;
    let local = ts.to_zoned(tz);
    Ok(local.hour() as u16 * 60 + local.minute() as u16)
}

/// Whether the window (if any) is open at `now_ms`. A zone that vanished
/// from the system's database after the campaign was made keeps it shut,
/// loudly: starting outside an operator's window is the worse mistake.
fn window_open(window: Option<&Window>, now_ms: i64) -> bool {
    match window {
        None => true,
        Some(w) => match local_minute(w, now_ms) {
            Ok(m) => w.contains(m),
            Err(e) => {
                log::error!("campaign window {}: {e}; no new updates start", w.span());
                false
            }
        },
    }
}

/// Run until `stop`.
pub async fn run(store: Store, starter: Starter, nudges: Nudges, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    loop {
        let join = tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                n += 1;
                n % JOIN_EVERY == 1
            }
            _ = nudges.campaigns.notified() => {
                // Let the slots freed at about the same time gather.
                tokio::time::sleep(NUDGE_GATHER).await;
                false
            }
        };
        let mut started = false;
        match store.running_campaigns() {
            Ok(rows) => {
                for row in rows {
                    match step(&store, &starter, row, join) {
                        Ok(s) => started |= s,
                        Err(e) => log::warn!("campaigns: step failed: {e}"),
                    }
                }
            }
            Err(e) => log::warn!("campaigns: store poll failed: {e}"),
        }
        if started {
            nudges.updates.notify_one();
        }
    }
}

/// One step of one campaign; whether it started updates.
pub fn step(store: &Store, starter: &Starter, row: CampaignRow, join: bool) -> Result<bool> {
    let row = if join && row.plan.late_joiners {
        let joined = store.campaign_join_late(&row)?;
        if joined > 0 {
            log::info!(campaign = row.id; "campaign {} ({}): {joined} devices joined late", row.id, row.name);
        }
        store.campaign(row.id)?
    } else {
        row
    };
    let now = now_ms();
    let counts = store.campaign_counts(row.id, row.plan.waves.len())?;
    let mut machine = row.machine.clone();
    let firmware = store.firmware(&row.firmware_id.to_string())?;
    let step = if firmware.deleted_at.is_some() {
        machine.stop(format!("firmware #{} was removed from the catalogue", firmware.id));
        Default::default()
    } else {
        machine.step(&row.plan, &counts.waves, window_open(row.plan.window.as_ref(), now))
    };
    if machine == row.machine && step.start == 0 {
        return Ok(false);
    }
    let starts = store
        .pending_members(row.id, machine.wave, step.start)?
        .into_iter()
        .map(|endpoint| {
            let update = starter.machine(store, std::slice::from_ref(&firmware), &endpoint);
            (endpoint, update)
        })
        .collect();
    let Some(results) = store.apply_campaign_step(&row, &machine, starts)? else {
        // An operator's command came between: read again next tick.
        return Ok(false);
    };
    if (row.machine.state, row.machine.wave) != (machine.state, machine.wave) {
        log::info!(
            campaign = row.id;
            "campaign {} ({}): {} in wave {}{}",
            row.id,
            row.name,
            machine.state.as_str(),
            machine.wave + 1,
            machine.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    let mut started = 0;
    for (endpoint, result) in results {
        match result {
            Started::Update(_) => started += 1,
            Started::Refused(reason) => log::warn!(
                campaign = row.id, endpoint = endpoint.as_str();
                "campaign {}: {endpoint} not started: {reason}", row.id
            ),
            Started::Gone => {}
        }
    }
    if started > 0 {
        log::info!(campaign = row.id; "campaign {} ({}): {started} updates started", row.id, row.name);
    }
    Ok(started > 0)
}
