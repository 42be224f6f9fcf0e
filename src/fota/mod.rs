//! Firmware update of one device over LwM2M Object 5 (Core 1.1 Appendix
//! E.6, "pull" delivery) or nRF Connect SDK's Advanced Firmware Update,
//! Object 33629 (the same resources per instance, one instance per
//! component: application, modem), sans-I/O: time and what the server saw
//! go in; the next operation to queue and the phase the update is in come
//! out. No SQL, sockets or clocks here: the shell (`shell::fota`) persists
//! the update after every step and queues the operations it asks for.
//! [`component`] says where each image goes.
//!
//! The steps, each waiting for the one before (paths for Object 5; with
//! 33629 the same resources of each component's instance):
//! 1. Observe `/5/0` (or all of `/33629`): its answer carries the current
//!    values (the component names find each image's instance, and a modem
//!    delta's base is checked against the modem's Current Version), and
//!    State `/5/0/3` and Update Result `/5/0/5` then arrive as
//!    notifications. An instance that is not Idle (State 0) is first reset
//!    with an empty Package URI (E.6: writing an empty URI cancels and
//!    returns to Idle).
//! 2. (Updates made by earlier versions may be in Observing: an Observe
//!    after a Read.)
//! 3. Write the Package URI `/5/0/1` (a Write-Replace of that resource).
//! 4. Wait for State Downloaded (2) within `download_timeout`; an Update
//!    Result 2–9, or the download server seeing a resume at the image's
//!    end (the nRF "FOTA doom loop"), resets the device with an empty URI
//!    and retries, with backoff, up to `max_retries`. Steps 3–4 repeat for
//!    each further image.
//! 5. Execute Update `/5/0/2` (of the first image's instance, its argument
//!    0 linking the others' so they are installed together); the device
//!    reboots and registers again (an nRF device without a De-register)
//!    within `update_timeout`.
//! 6. Read Firmware Version `/3/0/3` (or each instance's Current Version
//!    `/33629/x/15`) and compare it with the target.
//!
//! A phase's clock counts only while the device is within reach (within
//! its awake window after an uplink), so a queue-mode device asleep for an
//! hour does not time out for sleeping, while one that is awake and
//! talking but never finishes does.

use serde::{Deserialize, Serialize};

pub mod component;

pub use component::{Carrier, Component, ComponentKind};

use crate::lwm2m::operation::{OperationId, OperationKind, Outcome, WriteValue};
use crate::lwm2m::path::{Record, ResourcePath};

/// Where an update is. The final phases are `succeeded`, `failed` and
/// `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Observing the firmware object: its answer says State and what the
    /// device can fetch, before anything is written.
    Checking,
    /// Writing an empty Package URI: the device was not Idle.
    Resetting,
    /// Observing after a Read (updates made by earlier versions).
    Observing,
    /// Writing the Package URI.
    WritingUri,
    Downloading,
    /// Waiting out the backoff before a retry (the device was reset).
    RetryWait,
    /// Executing Update.
    Executing,
    /// The device reboots into the new image; waiting for it to register.
    Updating,
    /// Reading the version it now reports.
    Verifying,
    /// Writing an empty Package URI to cancel.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Resetting => "resetting",
            Phase::Observing => "observing",
            Phase::WritingUri => "writing-uri",
            Phase::Downloading => "downloading",
            Phase::RetryWait => "retry-wait",
            Phase::Executing => "executing",
            Phase::Updating => "updating",
            Phase::Verifying => "verifying",
            Phase::Cancelling => "cancelling",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    /// Does an update here hold one of a campaign's download slots (not
    /// yet past its download)?
    pub fn holds_download_slot(self) -> bool {
        matches!(
            self,
            Phase::Checking
                | Phase::Resetting
                | Phase::Observing
                | Phase::WritingUri
                | Phase::Downloading
                | Phase::RetryWait
        )
    }
}

/// Limits from the `[fota]` config section, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a device listens after an uplink (`lwm2m.queue_awake_window_s`).
    pub awake_window_ms: i64,
    pub download_timeout_ms: i64,
    pub update_timeout_ms: i64,
    pub max_retries: u32,
    pub retry_backoff_ms: i64,
}

impl Limits {
    pub fn from_config(c: &crate::config::FotaConfig, awake_window_s: u64) -> Limits {
        Limits {
            awake_window_ms: awake_window_s as i64 * 1000,
            download_timeout_ms: c.download_timeout_s as i64 * 1000,
            update_timeout_ms: c.update_timeout_s as i64 * 1000,
            max_retries: c.max_retries,
            retry_backoff_ms: c.retry_backoff_s as i64 * 1000,
        }
    }
}

const STATE_IDLE: i64 = 0;
const STATE_DOWNLOADED: i64 = 2;

/// An Update Result (`/5/0/5`, Core E.6) in words an operator reads.
pub fn update_result_reason(code: i64) -> String {
    let what = crate::lwm2m::display::meaning(crate::lwm2m::display::UPDATE_RESULT, code);
    format!("Update Result {code}: {what}")
}

/// The same version, as devices and operators write them: `v1.2.3`,
/// `1_2_3` and `1.2.3` differ only in spelling; case is ignored.
pub fn same_version(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim();
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        // An MCUboot header always has a build number (`ih_ver`); 0 is
        // "none", and a device built without one reports "1.2.3".
        let s = s.strip_suffix("+0").unwrap_or(s);
        s.replace(['_', '-'], ".").to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// The longest Package URI a device takes: Zephyr's LwM2M engine keeps it
/// in a 255-byte `package_uri` buffer with its terminator.
pub const MAX_PACKAGE_URI: usize = 254;

/// The Package URI of image `sha256`/`name` on the download server at
/// `base` (e.g. `https://fw.example.com`) with a download `token`, or why
/// it cannot be one a device takes.
pub fn package_uri(base: &str, sha256: &str, name: &str, token: &str) -> Result<String, String> {
    let uri = format!("{}/fw/{sha256}/{name}?t={token}", base.trim_end_matches('/'));
    if uri.len() > MAX_PACKAGE_URI {
        return Err(format!(
            "the Package URI would be {} characters, over the {MAX_PACKAGE_URI} a device keeps \
             (Zephyr's package_uri buffer); shorten the image name ({} characters) or fw.public_url",
            uri.len(),
            name.len()
        ));
    }
    Ok(uri)
}

/// One device's update: everything the shell persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub phase: Phase,
    /// The object the update goes through.
    #[serde(default)]
    pub carrier: Carrier,
    /// The images to install, downloaded in this order; the first one's
    /// Execute Update installs them all (Object 33629 linked instances).
    pub components: Vec<Component>,
    /// The component being downloaded (an index into `components`).
    #[serde(default)]
    pub current: usize,
    /// Components still to be reset with an empty Package URI (Resetting,
    /// Cancelling), the next one last.
    #[serde(default)]
    pub resets: Vec<usize>,
    /// The operation this phase waits for, once the shell queued it.
    pub waiting_for: Option<OperationId>,
    /// An operation chosen but not yet queued (the shell takes it).
    #[serde(default)]
    pub to_queue: Option<OperationKind>,
    /// When the phase began (Unix ms).
    pub phase_since: i64,
    /// When the device was last heard (Unix ms).
    pub last_seen: i64,
    /// Time in this phase the device was out of reach (asleep, offline):
    /// the gaps between uplinks beyond the awake window. It does not count
    /// towards the phase's timeout.
    #[serde(default)]
    pub asleep_ms: i64,
    /// When the Package URI of the current download was queued (Unix ms).
    #[serde(default)]
    pub download_since: i64,
    /// Downloads retried so far.
    pub retries: u32,
    pub retry_at: Option<i64>,
    /// Why it failed, in words.
    pub reason: Option<String>,
    /// Set by `cancel` while an operation is out; honoured when it ends.
    #[serde(default)]
    pub cancel_requested: bool,
    /// A Package URI write or an Execute failed in a way a copy of it may
    /// explain: a server restart sends an operation again whose answer it
    /// had not stored, and the device, already downloading or rebooted,
    /// refuses the copy (4.05). The update reads the device back and fails
    /// with this reason only if it did not move.
    #[serde(default)]
    pub unconfirmed: Option<String>,
}

impl Update {
    /// A new update of one image over Object 5; its first operation
    /// (Observe `/5/0`) is in `to_queue`.
    pub fn new(now: i64, package_uri: String, coap_uri: Option<String>, target_version: String) -> Update {
        let c = Component::new(ComponentKind::Application, package_uri, coap_uri, target_version);
        Update::of(now, Carrier::Object5, vec![c])
    }

    /// A new update of `components` (at least one) through `carrier`; its
    /// first operation (Observe of the object) is in `to_queue`.
    pub fn of(now: i64, carrier: Carrier, components: Vec<Component>) -> Update {
        assert!(!components.is_empty(), "an update installs at least one image");
        let mut u = Update {
            phase: Phase::Checking,
            carrier,
            components,
            current: 0,
            resets: Vec::new(),
            waiting_for: None,
            to_queue: None,
            phase_since: now,
            last_seen: now,
            asleep_ms: 0,
            download_since: now,
            retries: 0,
            retry_at: None,
            reason: None,
            cancel_requested: false,
            unconfirmed: None,
        };
        // State, and what the device can fetch from (Firmware Update
        // Protocol Support 8, Delivery Method 9), of every instance; with
        // 33629 also the Component Names and Current Versions. Observed,
        // not only read: the Observe's answer carries the current values
        // (RFC 7641 §4.2, Core §6.4.1) and State then arrives by itself;
        // one round trip fewer before the download than a Read first.
        u.send(OperationKind::Observe { path: u.read_path() });
        u
    }

    /// What Checking observes: `/5/0`, or the whole Object 33629 (every
    /// component's instance).
    fn read_path(&self) -> ResourcePath {
        match self.carrier {
            Carrier::Object5 => self.components[0].instance_path(Carrier::Object5),
            Carrier::Advanced => self.carrier.object(),
        }
    }

    fn comp(&self) -> &Component {
        &self.components[self.current]
    }

    /// The operation to queue next, if any; the shell queues it and calls
    /// [`Update::queued`] with its id.
    pub fn take_operation(&mut self) -> Option<OperationKind> {
        self.to_queue.take()
    }

    pub fn queued(&mut self, id: OperationId) {
        self.waiting_for = Some(id);
    }

    fn send(&mut self, kind: OperationKind) {
        self.to_queue = Some(kind);
        self.waiting_for = None;
    }

    fn enter(&mut self, now: i64, phase: Phase) {
        self.phase = phase;
        self.phase_since = now;
        self.asleep_ms = 0;
    }

    /// End the update from outside (its device was removed, say).
    pub fn abandon(&mut self, now: i64, reason: String) {
        if !self.phase.is_final() {
            self.fail(now, reason);
        }
    }

    fn fail(&mut self, now: i64, reason: String) {
        self.enter(now, Phase::Failed);
        self.reason = Some(reason);
        self.to_queue = None;
        self.waiting_for = None;
    }

    /// Write-Replace component `i`'s Package URI (Core E.6; an empty one
    /// cancels and returns the instance to Idle).
    fn write_uri(&mut self, i: usize, uri: &str) {
        let p = self.components[i].at(self.carrier, component::PACKAGE_URI);
        self.send(OperationKind::Write {
            path: p,
            values: vec![WriteValue {
                path: p,
                value: uri.to_string(),
            }],
            replace: None,
        });
    }

    /// Write the current component's Package URI: its download starts
    /// when the device has it.
    fn start_download(&mut self, now: i64) {
        self.enter(now, Phase::WritingUri);
        self.download_since = now;
        let uri = self.comp().package_uri.clone();
        self.write_uri(self.current, &uri);
    }

    /// The first image's SHA-256, from its Package URI (`…/fw/SHA256/NAME`),
    /// for the journal's `FIRMWARE_SHA256=`.
    pub fn firmware_sha256(&self) -> Option<&str> {
        let uri = &self.components.first()?.package_uri;
        let rest = &uri[uri.find("/fw/")? + 4..];
        Some(rest.split('/').next().unwrap_or(rest))
    }

    /// The resources whose reported values move the update: each
    /// component's State and Update Result.
    pub fn reported_paths(&self) -> Vec<ResourcePath> {
        self.components
            .iter()
            .flat_map(|c| {
                [
                    c.at(self.carrier, component::STATE),
                    c.at(self.carrier, component::UPDATE_RESULT),
                ]
            })
            .collect()
    }

    /// From when the values a device reports concern this phase: for the
    /// download, from the URI write on (the device may report Downloaded
    /// before the server has taken its answer to the write); else from
    /// the phase's start.
    pub fn values_since(&self) -> i64 {
        match self.phase {
            Phase::WritingUri | Phase::Downloading => self.download_since,
            _ => self.phase_since,
        }
    }

    /// Whether `self` and `other` differ at most in when the device was
    /// last heard (an uplink that moved nothing else): worth persisting
    /// now and then, not in a transaction per notification.
    pub fn differs_only_in_reach(&self, other: &Update) -> bool {
        let mut a = self.clone();
        a.last_seen = other.last_seen;
        a.asleep_ms = other.asleep_ms;
        a == *other
    }

    /// How long the device was out of reach since it was last heard: the
    /// time past its awake window (Transport §6.5: a queue-mode device
    /// listens only for a while after each uplink).
    fn out_of_reach(&self, now: i64, awake_window_ms: i64) -> i64 {
        (now - self.last_seen.max(self.phase_since) - awake_window_ms).max(0)
    }

    /// The device sent something (Register, Update, a notification, a
    /// response): a gap before it that was longer than the awake window
    /// was sleep, which the phase's clock does not count.
    pub fn seen(&mut self, now: i64, limits: &Limits) {
        self.asleep_ms += self.out_of_reach(now, limits.awake_window_ms);
        self.last_seen = self.last_seen.max(now);
    }

    /// Time in this phase with the device within reach.
    fn reachable_for(&self, now: i64, limits: &Limits) -> i64 {
        now - self.phase_since - self.asleep_ms - self.out_of_reach(now, limits.awake_window_ms)
    }

    /// The operation this update waited for ended.
    pub fn operation_finished(&mut self, now: i64, id: OperationId, outcome: &Outcome, limits: &Limits) {
        if self.waiting_for != Some(id) || self.phase.is_final() {
            return;
        }
        self.waiting_for = None;
        if let Outcome::Succeeded(_) = outcome {
            self.seen(now, limits);
        }
        if self.cancel_requested && self.phase != Phase::Cancelling {
            return self.start_cancel(now);
        }
        let ok = match outcome {
            Outcome::Succeeded(r) => Ok(&r.records),
            Outcome::Failed { reason, .. } => Err(reason.clone()),
            Outcome::Expired => Err("the device was not reachable before the operation's deadline".into()),
            Outcome::Cancelled => Err("the operation was cancelled".into()),
        };
        match (self.phase, ok) {
            (Phase::Checking, Ok(records)) => self.check(now, records),
            (Phase::Resetting, Ok(_)) => self.next_reset(now),
            // Updates made before Checking observed went through here.
            (Phase::Observing, Ok(_)) => self.start_download(now),
            (Phase::WritingUri, Ok(records)) => match self.unconfirmed.take() {
                None => self.enter(now, Phase::Downloading),
                // The read back after a refused write: downloading (or
                // done) means the write had gone through.
                Some(reason) => {
                    let state = self.comp().at(self.carrier, component::STATE);
                    match component::int_at(records, &state) {
                        Some(1 | 2) => {
                            self.enter(now, Phase::Downloading);
                            self.values(now, records, limits);
                        }
                        _ => self.fail(now, reason),
                    }
                }
            },
            (Phase::WritingUri, Err(reason)) if self.unconfirmed.is_none() => {
                let p = self.comp().at(self.carrier, component::PACKAGE_URI);
                self.unconfirmed = Some(format!("writing the Package URI ({p}) failed: {reason}"));
                self.send(OperationKind::Read { path: self.read_path() });
            }
            (Phase::Executing, Err(reason)) => {
                // Verifying tells: the new version means an earlier copy
                // of this Execute was carried out.
                let p = self.components[0].at(self.carrier, component::UPDATE);
                self.unconfirmed = Some(format!("executing Update ({p}) failed: {reason}"));
                self.start_verify(now);
            }
            (Phase::RetryWait, Ok(_)) => {} // the reset before a retry is done
            (Phase::Executing, Ok(_)) => self.enter(now, Phase::Updating),
            (Phase::Verifying, Ok(records)) => self.verify(now, records),
            (Phase::Cancelling, _) if !self.resets.is_empty() => self.next_reset(now),
            (Phase::Cancelling, _) => {
                self.enter(now, Phase::Cancelled);
                self.reason = Some("cancelled by an operator".into());
            }
            (_, Err(_)) if self.unconfirmed.is_some() => {
                // Reading back after a refused write or Execute failed too:
                // the refusal is what the operator needs to know.
                let reason = self.unconfirmed.take().unwrap_or_default();
                self.fail(now, reason);
            }
            (phase, Err(reason)) => {
                let c = self.comp();
                let what = match phase {
                    Phase::Checking => format!("observing {}", self.read_path()),
                    Phase::Resetting => "resetting with an empty Package URI".into(),
                    Phase::Observing => format!("observing {}", self.read_path()),
                    Phase::WritingUri => format!(
                        "writing the Package URI ({})",
                        c.at(self.carrier, component::PACKAGE_URI)
                    ),
                    Phase::RetryWait => "resetting before a retry".into(),
                    Phase::Executing => format!(
                        "executing Update ({})",
                        self.components[0].at(self.carrier, component::UPDATE)
                    ),
                    Phase::Verifying => format!("reading the firmware version ({})", c.version_path(self.carrier)),
                    _ => "an operation".into(),
                };
                self.fail(now, format!("{what} failed: {reason}"));
            }
            (_, Ok(_)) => {}
        }
    }

    /// The device's firmware instances as read: find each component's
    /// instance (33629), choose its URI, check a delta's base, reset the
    /// instances that are not Idle.
    fn check(&mut self, now: i64, records: &[Record]) {
        let carrier = self.carrier;
        for c in &mut self.components {
            let found = match carrier {
                Carrier::Advanced => c.find_instance(records),
                Carrier::Object5 => Ok(()),
            };
            let checked = found
                .and_then(|()| c.choose_uri(carrier, records))
                .and_then(|()| match carrier {
                    // Object 5 devices report the modem in /3/0/3, which the
                    // shell checked at creation from the store.
                    Carrier::Advanced => c.check_base(c.reported_version(carrier, records).as_deref()),
                    Carrier::Object5 => Ok(()),
                });
            if let Err(reason) = checked {
                return self.fail(now, reason);
            }
        }
        let instances: Vec<u16> = self.components.iter().map(|c| c.instance).collect();
        if instances.iter().enumerate().any(|(i, x)| instances[..i].contains(x)) {
            return self.fail(now, "two of the images are for the same component".into());
        }
        let mut busy = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            match component::int_at(records, &c.at(carrier, component::STATE)) {
                Some(STATE_IDLE) => {}
                Some(_) => busy.push(i),
                None => {
                    let state = c.at(carrier, component::STATE);
                    return self.fail(now, format!("the device reported no State ({state})"));
                }
            }
        }
        if busy.is_empty() {
            return self.start_download(now);
        }
        busy.reverse();
        self.resets = busy;
        self.enter(now, Phase::Resetting);
        self.next_reset(now);
    }

    /// Reset the next instance in `resets`, or go on once none is left:
    /// to the download from Resetting, to Cancelled from Cancelling.
    fn next_reset(&mut self, now: i64) {
        match self.resets.pop() {
            Some(i) => self.write_uri(i, ""),
            None if self.phase == Phase::Cancelling => {
                self.enter(now, Phase::Cancelled);
                self.reason = Some("cancelled by an operator".into());
            }
            None => self.start_download(now),
        }
    }

    /// Values the server received at `received` (ms): a report received
    /// before the Package URI write was even decided cannot be about this
    /// download, however late it reaches this machine (the store's poll
    /// may have moved it past the Observe and the write while the event
    /// that carried the Observe's answer, with the last download's Update
    /// Result, still waited in the broadcast). A device keeps that result
    /// until a new Package URI resets it: Core Appendix E.6, Object 5
    /// resource 5, "reset to Initial value" when an update is initiated.
    pub fn reported(&mut self, now: i64, received: i64, records: &[Record], limits: &Limits) {
        if matches!(self.phase, Phase::WritingUri | Phase::Downloading) && received <= self.download_since {
            return self.seen(now, limits);
        }
        self.values(now, records, limits);
    }

    /// Values the device reported (notifications, Send, Read answers).
    pub fn values(&mut self, now: i64, records: &[Record], limits: &Limits) {
        self.seen(now, limits);
        let carrier = self.carrier;
        match self.phase {
            Phase::Downloading | Phase::WritingUri => {
                let c = self.comp();
                if component::int_at(records, &c.at(carrier, component::STATE)) == Some(STATE_DOWNLOADED) {
                    if self.current + 1 < self.components.len() {
                        // The next image downloads while this one waits in
                        // Downloaded for the Execute that installs both.
                        self.current += 1;
                        self.retries = 0;
                        return self.start_download(now);
                    }
                    self.enter(now, Phase::Executing);
                    self.send(OperationKind::Execute {
                        path: self.components[0].at(carrier, component::UPDATE),
                        args: self.linked_instances(),
                    });
                } else if let Some(r @ 2..=9) = component::int_at(records, &c.at(carrier, component::UPDATE_RESULT))
                    && self.phase == Phase::Downloading
                {
                    self.retry(now, self.component_reason(update_result_reason(r)), limits);
                }
                // Before the device acknowledged the URI, a 2–9 is the last
                // download's result still reported (the Observe answer, or
                // a notification sent before the write): not this one's. A
                // device that rejects the URI at once (Result 7 or 9) says
                // so in a notification after its 2.04, in Downloading.
            }
            Phase::Updating => {
                // A failed update may be reported before (or instead of)
                // the reboot, by any of the instances installed.
                for i in 0..self.components.len() {
                    let p = self.components[i].at(carrier, component::UPDATE_RESULT);
                    if let Some(r @ 2..=9) = component::int_at(records, &p) {
                        self.current = i;
                        return self.fail(now, self.component_reason(update_result_reason(r)));
                    }
                }
            }
            _ => {}
        }
    }

    /// Execute Update's argument 0 listing the other instances installed
    /// with the first (Object 33629), e.g. `0='</33629/1>'`.
    fn linked_instances(&self) -> Option<String> {
        if self.components.len() < 2 {
            return None;
        }
        let links: Vec<String> = self.components[1..]
            .iter()
            .map(|c| format!("<{}>", c.instance_path(self.carrier)))
            .collect();
        Some(format!("0='{}'", links.join(",")))
    }

    /// `reason`, naming the component when the update has several.
    fn component_reason(&self, reason: String) -> String {
        if self.components.len() > 1 {
            format!("{}: {reason}", self.comp().kind.as_str())
        } else {
            reason
        }
    }

    /// The download server saw this device resume at the end of the image
    /// (`Range: bytes=SIZE-`): nRF Connect SDK's downloader
    /// answers a 416 by retrying the same range, until the device is reset.
    pub fn doom_loop(&mut self, now: i64, limits: &Limits) {
        if matches!(self.phase, Phase::Downloading | Phase::WritingUri) {
            let reason = "the download resumed at the end of the image (FOTA doom loop)".into();
            self.retry(now, self.component_reason(reason), limits);
        }
    }

    /// Reset the current component with an empty Package URI and try again
    /// after a backoff, or fail once the retries are spent.
    fn retry(&mut self, now: i64, reason: String, limits: &Limits) {
        if self.retries >= limits.max_retries {
            return self.fail(now, format!("{reason} (after {} retries)", self.retries));
        }
        self.retries += 1;
        self.reason = Some(reason);
        self.enter(now, Phase::RetryWait);
        self.retry_at = None; // set by `tick`, which knows the backoff
        self.write_uri(self.current, "");
    }

    /// The device registered anew: after Execute, it is running the image.
    pub fn registered(&mut self, now: i64, limits: &Limits) {
        self.seen(now, limits);
        if self.phase == Phase::Updating {
            self.start_verify(now);
        }
    }

    /// Read the version(s) the device now runs.
    fn start_verify(&mut self, now: i64) {
        self.enter(now, Phase::Verifying);
        let path = match self.carrier {
            Carrier::Object5 => self.components[0].version_path(Carrier::Object5),
            Carrier::Advanced => self.carrier.object(),
        };
        self.send(OperationKind::Read { path });
    }

    /// The device's registration ended (it de-registered, or its lifetime
    /// passed without an uplink: Core §6.2.2): it is gone, and an update
    /// that waits for it to answer cannot go on. While it reboots into the
    /// image (Updating) its old registration may lapse; the update
    /// timeout decides there.
    pub fn registration_ended(&mut self, now: i64, how: &str) {
        if self.phase.is_final() || matches!(self.phase, Phase::Updating) {
            return;
        }
        let phase = self.phase.as_str();
        self.fail(
            now,
            format!("the device's registration {how} while the update was {phase}"),
        );
    }

    /// Every component reports its target version.
    fn verify(&mut self, now: i64, records: &[Record]) {
        for i in 0..self.components.len() {
            self.current = i;
            let c = self.comp();
            let p = c.version_path(self.carrier);
            match c.reported_version(self.carrier, records) {
                Some(v) if c.reached(&v) => {}
                Some(_) if self.unconfirmed.is_some() => {
                    let reason = self.unconfirmed.take().unwrap_or_default();
                    return self.fail(now, reason);
                }
                Some(v) => {
                    let reason = format!(
                        "the device reports firmware {v:?} after the update, not {:?}",
                        c.target_version
                    );
                    return self.fail(now, self.component_reason(reason));
                }
                None => return self.fail(now, format!("the device reported no firmware version ({p})")),
            }
        }
        self.enter(now, Phase::Succeeded);
        self.reason = None;
        self.unconfirmed = None;
    }

    /// Cancel: an empty Package URI returns an instance to Idle (Core
    /// E.6), written to every component downloaded so far. An update past
    /// Execute cannot be called back.
    pub fn cancel(&mut self, now: i64) -> Result<(), String> {
        match self.phase {
            p if p.is_final() => Err(format!("the update has already {}", p.as_str())),
            Phase::Executing | Phase::Updating | Phase::Verifying => {
                Err("the device is already installing the image; it cannot be cancelled now".into())
            }
            Phase::Cancelling => Ok(()),
            _ if self.waiting_for.is_some() => {
                // Let the operation that is out finish first.
                self.cancel_requested = true;
                Ok(())
            }
            _ => {
                self.start_cancel(now);
                Ok(())
            }
        }
    }

    fn start_cancel(&mut self, now: i64) {
        self.cancel_requested = false;
        self.enter(now, Phase::Cancelling);
        self.resets = (0..=self.current).rev().collect();
        self.next_reset(now);
    }

    /// Deadlines and backoff; call about once a second.
    pub fn tick(&mut self, now: i64, limits: &Limits) {
        let reachable = self.reachable_for(now, limits);
        match self.phase {
            Phase::Downloading if reachable > limits.download_timeout_ms => {
                let state = self.comp().at(self.carrier, component::STATE);
                let reason = format!(
                    "no Downloaded state ({state} = 2) after {} s with the device within reach",
                    limits.download_timeout_ms / 1000
                );
                self.retry(now, self.component_reason(reason), limits);
            }
            // A rebooting device is silent by nature: here wall time counts.
            Phase::Updating if now - self.phase_since > limits.update_timeout_ms => self.fail(
                now,
                format!(
                    "the device did not register again within {} s of Execute Update",
                    limits.update_timeout_ms / 1000
                ),
            ),
            _ => {}
        }
        // In RetryWait, once the reset is done: wait out the backoff, then
        // write the URI again.
        if self.phase == Phase::RetryWait && self.waiting_for.is_none() && self.to_queue.is_none() {
            let at = *self
                .retry_at
                .get_or_insert(now + limits.retry_backoff_ms * (1i64 << (self.retries - 1).min(10)));
            if now >= at {
                self.retry_at = None;
                self.start_download(now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
