//! The firmware-update task: the I/O around `fota::Update` machines. It
//! owns a store connection and a one-second timer; it feeds each active
//! update what the LwM2M server saw (values, registrations, finished
//! operations, uplinks) and the download server's doom-loop sightings,
//! queues the operations an update asks for through the store (durable
//! before they are sent, like an operator's), and persists the update
//! after every step. Decisions are the machine's.
//!
//! Nothing depends on the event stream alone: finished operations are also
//! read back from the store, a device that registered while events were
//! lost is found from its registration row, Object 5 values are read back
//! after the stream reported a lag, so a lagging subscriber
//! or a restart delays an update but never strands or repeats it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::download::token::TokenKey;
use crate::error::{Error, Result};
use crate::fota::{self, Carrier, Component, ComponentKind, Limits, Phase, Update};
use crate::lwm2m::operation::{OperationId, Outcome};
use crate::lwm2m::path::ResourcePath;
use crate::lwm2m::server::ServerEvent;
use crate::shell::Nudges;
use crate::store::{FirmwareRow, Store, now_ms};
use crate::transport::Peer;

/// How often deadlines are checked and the store is polled.
const TICK: Duration = Duration::from_secs(1);
/// Save last-heard times every this many ticks.
const REACH_SAVE_TICKS: u32 = 10;

/// What an update's operations may take before they expire (the phase
/// timeouts decide the rest).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: Limits,
    pub operation_deadline_ms: i64,
    pub operation_max_attempts: u32,
}

/// What starting an update needs: the token key, where devices reach the
/// firmware server, how long a token lives.
pub struct Starter {
    pub key: TokenKey,
    /// e.g. `https://fw.example.com`: `fw.public_url`, or in development
    /// the running server's own address.
    pub base_url: String,
    /// The same images on the LwM2M port (`fw.coap_public_url`, or the
    /// running server's CoAP address in development), if any.
    pub coap_base_url: Option<String>,
    pub token_ttl_s: u64,
}

impl Starter {
    /// For `config`; `fw_addr` and `coap_addr` are the running server's
    /// firmware and CoAP addresses, for when the public URLs are unset
    /// (development).
    pub fn new(
        config: &crate::config::Config,
        fw_addr: Option<std::net::SocketAddr>,
        coap_addr: Option<std::net::SocketAddr>,
    ) -> Result<Starter> {
        let local = |mut a: std::net::SocketAddr| {
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a
        };
        let key_path = config
            .fw
            .token_secret_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("fw-token.key"));
        let base_url = match (&config.fw.public_url, fw_addr) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => format!("https://{}", local(addr)),
            (None, None) => {
                return Err(Error::config(
                    "fw.public_url",
                    "not set, and no running firmware server's address is known",
                ));
            }
        };
        let coap_base_url = config
            .fw
            .coap_public_url
            .clone()
            .or_else(|| coap_addr.map(|a| format!("coap://{}", local(a))));
        Ok(Starter {
            key: TokenKey::load_or_create(&key_path)?,
            base_url,
            coap_base_url,
            token_ttl_s: config.fota.token_ttl_s,
        })
    }

    /// Start an update of `endpoint` to catalogue images `images` (ids or
    /// names; more than one for a device with Object 33629, e.g. an
    /// application and a modem image installed together): the Package
    /// URIs with download tokens, checked against the device's buffer;
    /// refused while another update of the device is active. The server's
    /// update task picks it up within a second.
    /// A new update of `endpoint` to `images`, asked by `by` (for Celery
    /// task `task`, whose result its end becomes).
    pub fn create(&self, store: &Store, endpoint: &str, images: &[&str], by: &str, task: Option<&str>) -> Result<i64> {
        let fws = images
            .iter()
            .map(|image| live_firmware(store, image))
            .collect::<Result<Vec<_>>>()?;
        let device = store.device(endpoint)?;
        // As a campaign skips a device already on its image's version: an
        // update would download the image again and report success with
        // nothing changed.
        if let ([fw], Some(running)) = (fws.as_slice(), device.firmware_version.as_deref())
            && fota::same_version(running, &fw.version)
        {
            return Err(Error::Invalid {
                what: "firmware update",
                reason: format!(
                    "{endpoint} is already on {running}, the version of {}: nothing to update",
                    fw.name
                ),
            });
        }
        let machine = self.machine(store, &fws, endpoint).map_err(|reason| Error::Invalid {
            what: "firmware update",
            reason,
        })?;
        store.create_update(endpoint, fws[0].id, &machine, by, task)
    }

    /// A new update of `endpoint` to `images`, or why it cannot be one:
    /// a Package URI too long for the device, several images for a device
    /// without Object 33629, a modem delta for another modem version than
    /// the device reports.
    pub fn machine(
        &self,
        store: &Store,
        images: &[FirmwareRow],
        endpoint: &str,
    ) -> std::result::Result<Update, String> {
        if images.is_empty() {
            return Err("no image given".into());
        }
        let registration = store.registration_of(endpoint).map_err(|e| e.to_string())?;
        let carrier = registration
            .as_ref()
            .map_or(Carrier::Object5, |r| Carrier::of_registration(&r.object_links));
        if carrier == Carrier::Object5 && images.len() > 1 {
            return Err(format!(
                "{endpoint} has no Advanced Firmware Update object (/33629): Object 5 installs one image at a time"
            ));
        }
        let now = now_ms();
        let mut components = Vec::with_capacity(images.len());
        for fw in images {
            let token = self
                .key
                .sign(endpoint, &fw.sha256, now / 1000 + self.token_ttl_s as i64);
            let uri = fota::package_uri(&self.base_url, &fw.sha256, &fw.name, &token)?;
            let coap_uri = match &self.coap_base_url {
                Some(base) => Some(fota::package_uri(base, &fw.sha256, &fw.name, &token)?),
                None => None,
            };
            let mut c = Component::new(
                ComponentKind::of_image_type(&fw.image_type),
                uri,
                coap_uri,
                fw.version.clone(),
            );
            c.base_version = fw.base_version.clone();
            if carrier == Carrier::Object5 && c.base_version.is_some() {
                // The modem version an nRF device reports is /3/0/3; the
                // update itself checks Object 33629's Current Version.
                let running = store
                    .latest_value(endpoint, "/3/0/3")
                    .map_err(|e| e.to_string())?
                    .map(|v| v.to_text());
                c.check_base(running.as_deref())
                    .map_err(|reason| format!("{}: {reason}", fw.name))?;
            }
            components.push(c);
        }
        Ok(Update::of(now, carrier, components))
    }
}

/// Catalogue image `image` (id or name), refused once removed.
pub fn live_firmware(store: &Store, image: &str) -> Result<FirmwareRow> {
    let fw = store.firmware(image)?;
    if fw.deleted_at.is_some() {
        return Err(Error::NotFound(format!("firmware #{} was removed", fw.id)));
    }
    Ok(fw)
}

struct Active {
    endpoint: String,
    machine: Update,
    /// Changed only in when the device was last heard, not saved yet.
    unsaved_reach: bool,
}

/// Run until `stop`: `events` from the LwM2M server, `doom_loops` (the
/// endpoints the download server saw resume at an image's end).
pub async fn run(
    store: Store,
    settings: Settings,
    nudges: Nudges,
    mut events: broadcast::Receiver<ServerEvent<Peer>>,
    mut doom_loops: mpsc::Receiver<String>,
    stop: impl std::future::Future<Output = ()>,
) {
    let updates_created = nudges.updates.clone();
    let mut task = Task {
        store,
        settings,
        nudges,
        updates: HashMap::new(),
        by_endpoint: HashMap::new(),
        last_id: 0,
        replay_ticks: 0,
        ticks: 0,
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(TICK);
    let mut following = false;
    loop {
        // With no update active there is nothing to follow: the server's
        // events are not read at all (under a registration storm a reader
        // that only discards them still falls behind), and reading starts
        // afresh from the newest once an update is loaded from the store,
        // which holds everything it begins with.
        let active = !task.updates.is_empty();
        if active && !following {
            events = events.resubscribe();
            // What happened between the load and now is read back from
            // the store, as after missed events.
            task.replay_ticks = 2;
        }
        following = active;
        tokio::select! {
            _ = &mut stop => return task.save_reach(),
            _ = tick.tick() => task.tick(),
            _ = updates_created.notified() => {
                if let Err(e) = task.poll() {
                    log::warn!("firmware updates: store poll failed: {e}");
                }
            }
            ev = events.recv(), if following => match ev {
                Ok(ev) => task.event(&ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Recovered in full below, so not a warning: a busy
                    // fleet outruns the channel during a campaign.
                    log::info!("firmware updates: {n} server events missed; the store fills the gaps");
                    // The values in them (State Downloaded, say) are read
                    // back from the store at this tick and the next (the
                    // writer may not have committed the last ones yet).
                    task.replay_ticks = 2;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(endpoint) = doom_loops.recv() => {
                let limits = task.settings.limits;
                task.with(&endpoint, |m, now| m.doom_loop(now, &limits));
            }
        }
    }
}

struct Task {
    store: Store,
    settings: Settings,
    nudges: Nudges,
    updates: HashMap<i64, Active>,
    by_endpoint: HashMap<String, i64>,
    last_id: i64,
    /// Ticks left that read Object 5's values back from the store, after
    /// events were missed.
    replay_ticks: u8,
    ticks: u32,
}

impl Task {
    /// Apply `f` to the active update of `endpoint`, if any, then act.
    fn with(&mut self, endpoint: &str, f: impl FnOnce(&mut Update, i64)) {
        if let Some(&id) = self.by_endpoint.get(endpoint) {
            self.step(id, f);
        }
    }

    /// Apply `f` to update `id`; queue what it asks for; persist it if it
    /// changed.
    fn step(&mut self, id: i64, f: impl FnOnce(&mut Update, i64)) {
        let now = now_ms();
        let Some(a) = self.updates.get_mut(&id) else {
            return;
        };
        let before = a.machine.clone();
        f(&mut a.machine, now);
        let saved = match a.machine.take_operation() {
            Some(kind) => {
                let deadline = now + self.settings.operation_deadline_ms;
                let attempts = self.settings.operation_max_attempts;
                match self
                    .store
                    .save_update_queueing(id, &a.endpoint, &mut a.machine, &kind, deadline, attempts)
                {
                    Ok(_) => {
                        self.nudges.operations.notify_one();
                        Ok(())
                    }
                    Err(Error::UnknownEndpoint(_)) => {
                        a.machine.abandon(now, "the device was removed".into());
                        self.store.save_update(id, &a.machine)
                    }
                    Err(e) => {
                        // Kept for the next tick: nothing is lost, nothing sent twice.
                        a.machine.to_queue = Some(kind);
                        Err(e)
                    }
                }
            }
            None if a.machine == before => return,
            None if a.machine.differs_only_in_reach(&before) => {
                // Every notification moves `last_seen`; those are saved
                // together every few ticks (`save_reach`).
                a.unsaved_reach = true;
                return;
            }
            None => self.store.save_update(id, &a.machine),
        };
        a.unsaved_reach = false;
        match saved {
            Ok(()) => {}
            Err(Error::NotFound(_)) => {
                // Ended elsewhere (its device was removed).
                let endpoint = a.endpoint.clone();
                self.updates.remove(&id);
                self.by_endpoint.remove(&endpoint);
                return;
            }
            Err(e) => {
                log::error!("firmware update {id} of {}: not saved: {e}", a.endpoint);
                return;
            }
        }
        if a.machine.phase != before.phase
            && before.phase.holds_download_slot()
            && !a.machine.phase.holds_download_slot()
        {
            self.nudges.campaigns.notify_one();
        }
        if a.machine.phase != before.phase {
            log::info!(
                endpoint = a.endpoint.as_str(), update_id = id,
                firmware_sha256 = a.machine.firmware_sha256().unwrap_or_default();
                "firmware update {id} of {}: {} → {}{}",
                a.endpoint,
                before.phase.as_str(),
                a.machine.phase.as_str(),
                a.machine
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        if a.machine.phase.is_final() {
            // An operation it queued and no longer waits for must not reach
            // the device later (a Package URI written after the update
            // failed would start a download nobody follows).
            if let Some(op) = before.waiting_for
                && let Err(e) = self.store.cancel_operation(op)
            {
                log::warn!("firmware update {id}: operation {op} not cancelled: {e}");
            }
            let endpoint = a.endpoint.clone();
            self.updates.remove(&id);
            self.by_endpoint.remove(&endpoint);
        }
    }

    fn event(&mut self, ev: &ServerEvent<Peer>) {
        let limits = self.settings.limits;
        match ev {
            ServerEvent::ValuesReported {
                endpoint,
                records,
                received_ms,
                ..
            } => {
                self.with(endpoint, |m, now| m.reported(now, *received_ms, records, &limits));
            }
            ServerEvent::Registered { registration, .. } => {
                self.with(&registration.endpoint, |m, now| m.registered(now, &limits));
            }
            ServerEvent::Updated { registration, .. } => {
                self.with(&registration.endpoint, |m, now| m.seen(now, &limits));
            }
            ServerEvent::Expired { endpoint, .. } => {
                self.with(endpoint, |m, now| m.registration_ended(now, "expired"));
            }
            ServerEvent::Deregistered { endpoint, .. } => {
                self.with(endpoint, |m, now| m.registration_ended(now, "ended (De-register)"));
            }
            ServerEvent::OperationFinished { id, endpoint, outcome } => {
                let (id, outcome) = (*id, outcome.clone());
                self.with(endpoint, |m, now| m.operation_finished(now, id, &outcome, &limits));
            }
            _ => {}
        }
    }

    fn tick(&mut self) {
        if let Err(e) = self.poll() {
            log::warn!("firmware updates: store poll failed: {e}");
        }
        if self.replay_ticks > 0 {
            self.replay_ticks -= 1;
            if let Err(e) = self.replay_values() {
                log::warn!("firmware updates: reading values back failed: {e}");
            }
        }
        let limits = self.settings.limits;
        let ids: Vec<i64> = self.updates.keys().copied().collect();
        for id in ids {
            self.step(id, |m, now| m.tick(now, &limits));
        }
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(REACH_SAVE_TICKS) {
            self.save_reach();
        }
    }

    /// Persist the last-heard times that moved since they were last saved,
    /// in one transaction. A restart in between loses at most these ticks
    /// of them: a phase clock that counts a little sleep as reachable.
    fn save_reach(&mut self) {
        let unsaved = self.updates.iter().filter(|(_, a)| a.unsaved_reach);
        match self.store.save_updates(unsaved.map(|(id, a)| (*id, &a.machine))) {
            Ok(()) => self.updates.values_mut().for_each(|a| a.unsaved_reach = false),
            Err(e) => log::warn!("firmware updates: last-heard times not saved: {e}"),
        }
    }

    /// Feed the updates that wait for a notification the State and Update
    /// Result values the store holds from their phase on: what a missed
    /// `ValuesReported` carried. A value seen twice moves a machine once (a
    /// phase acts on the first).
    fn replay_values(&mut self) -> Result<()> {
        let waiting: Vec<(i64, String, i64, Vec<ResourcePath>)> = self
            .updates
            .iter()
            .filter(|(_, a)| {
                matches!(
                    a.machine.phase,
                    Phase::WritingUri | Phase::Downloading | Phase::Updating
                )
            })
            .map(|(id, a)| {
                let m = &a.machine;
                (*id, a.endpoint.clone(), m.values_since(), m.reported_paths())
            })
            .collect();
        for (id, endpoint, since, paths) in waiting {
            let records: Vec<crate::lwm2m::path::Record> = self
                .store
                .latest_values(&endpoint)?
                .into_iter()
                .filter(|v| v.ts > since && paths.contains(&v.path))
                .map(|v| crate::lwm2m::path::Record {
                    path: v.path,
                    value: v.value,
                    time: None,
                })
                .collect();
            if !records.is_empty() {
                let limits = self.settings.limits;
                self.step(id, |m, now| m.values(now, &records, &limits));
            }
        }
        Ok(())
    }

    /// New updates (made by the CLI or API), cancellations, and what the
    /// event stream may have missed.
    fn poll(&mut self) -> Result<()> {
        for row in self.store.active_updates(self.last_id)? {
            self.last_id = self.last_id.max(row.id);
            if let Some(&other) = self.by_endpoint.get(&row.endpoint) {
                // The database allows one active update per device; a row
                // seen twice is the same update.
                debug_assert_eq!(other, row.id);
                continue;
            }
            log::info!(
                endpoint = row.endpoint.as_str(), update_id = row.id,
                firmware_sha256 = row.machine.firmware_sha256().unwrap_or_default();
                "firmware update {} of {}: {} (firmware #{})",
                row.id,
                row.endpoint,
                row.phase.as_str(),
                row.firmware_id
            );
            self.by_endpoint.insert(row.endpoint.clone(), row.id);
            self.updates.insert(
                row.id,
                Active {
                    endpoint: row.endpoint,
                    machine: row.machine,
                    unsaved_reach: false,
                },
            );
        }
        let tracked: Vec<i64> = self.updates.keys().copied().collect();
        for id in self.store.ended_updates(&tracked)? {
            if let Some(a) = self.updates.remove(&id) {
                log::info!("firmware update {id} of {} ended elsewhere", a.endpoint);
                self.by_endpoint.remove(&a.endpoint);
            }
        }
        for id in self.store.take_update_cancels()? {
            let endpoint = self.updates.get(&id).map(|a| a.endpoint.clone());
            let mut refused = None;
            self.step(id, |m, now| refused = m.cancel(now).err());
            if let (Some(endpoint), Some(reason)) = (endpoint, refused) {
                log::warn!("firmware update {id} of {endpoint}: not cancelled: {reason}");
            }
        }
        // Operations that finished without our hearing of it: one query
        // for all of them (at 10,000 devices a query per update per tick
        // was most of the task's time).
        let waiting: Vec<OperationId> = self.updates.values().filter_map(|a| a.machine.waiting_for).collect();
        let by_op: HashMap<OperationId, i64> = self
            .updates
            .iter()
            .filter_map(|(id, a)| Some((a.machine.waiting_for?, *id)))
            .collect();
        for row in self.store.ended_operations(&waiting)? {
            let Some(&id) = by_op.get(&row.id) else { continue };
            let op = row.id;
            let outcome = row
                .result
                .and_then(|r| serde_json::from_value::<Outcome>(r).ok())
                .unwrap_or(Outcome::Failed {
                    code: row.coap_code,
                    reason: format!("operation {op} ended {}", row.state.as_str()),
                });
            // An Execute at the time it ended, not now: a device that
            // rebooted at once may have registered again in between, and
            // Updating must begin before that registration. Other steps
            // now, after the values their answer carried were received.
            let (limits, at) = (self.settings.limits, row.updated_at);
            self.step(id, |m, now| {
                let when = if m.phase == Phase::Executing { at.min(now) } else { now };
                m.operation_finished(when, op, &outcome, &limits)
            });
        }
        // A device that registered again while its Registered event was
        // lost (a lagging subscriber, a restart of the server).
        let updating: Vec<(i64, &str, i64)> = self
            .updates
            .iter()
            .filter(|(_, a)| a.machine.phase == Phase::Updating)
            .map(|(id, a)| (*id, a.endpoint.as_str(), a.machine.phase_since))
            .collect();
        if updating.is_empty() {
            return Ok(());
        }
        let endpoints: Vec<&str> = updating.iter().map(|u| u.1).collect();
        let registered = self.store.registered_at(&endpoints)?;
        let again: Vec<i64> = updating
            .iter()
            .filter(|(_, endpoint, since)| registered.get(*endpoint).is_some_and(|at| at > since))
            .map(|u| u.0)
            .collect();
        for id in again {
            let limits = self.settings.limits;
            self.step(id, |m, now| m.registered(now, &limits));
        }
        Ok(())
    }
}
