//! Firmware campaigns: one image rolled out to many devices in waves,
//! sans-I/O. The shell (`shell::campaign`) hands in what the store counts
//! per wave and whether the daily window is open; out come the campaign's
//! state, the wave it has reached and how many more updates to start.
//! Each device's own update is a `fota::Update`; a campaign only decides
//! who starts when.
//!
//! The rules, in the words rollout tools use (hawkBit's "rollout groups",
//! Mender's "phases"):
//! - Targets are split into waves when the campaign is made: an absolute
//!   wave takes that many devices, a percentage wave takes devices until
//!   that share of all targets is covered (so `10, 10%, 50%, 100%` is a
//!   canary of ten, then up to a tenth, half, all). The last wave takes
//!   whatever is left.
//! - A wave's devices start only once the wave is reached; the next wave
//!   is reached when `success_threshold` percent of the current one are
//!   verified (or, with `confirm_waves`, when a person confirms), so a few
//!   stragglers that never come back do not hold a fleet up.
//! - More than `error_threshold` percent of a wave failed stops the
//!   campaign with the reason; nothing new starts until a person resumes
//!   it (usually after retrying the failed).
//! - At most `max_concurrent` devices are downloading at once: the
//!   download server's capacity and the cellular bill, not the fleet size.
//! - With a daily window, new updates start only inside it; those under
//!   way carry on.

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// One wave's size, as operators write it: `10` or `25%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// This many more devices.
    Devices(u32),
    /// Devices until this percentage of the targets is covered.
    Percent(u8),
}

impl std::str::FromStr for WaveSize {
    type Err = String;
    fn from_str(s: &str) -> Result<WaveSize, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is neither a device count (10) nor a percentage (25%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(format!("{s:?}: a percentage from 1% to 100%"));
            }
            Ok(WaveSize::Percent(p))
        } else {
            let n: u32 = s.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(format!("{s:?}: a wave has at least one device"));
            }
            Ok(WaveSize::Devices(n))
        }
    }
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Devices(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WaveSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u32),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => n.to_string().parse(),
            Either::S(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for WaveSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WaveSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A device count (10) or a cumulative percentage of the targets (\"25%\")",
            "type": ["integer", "string"],
            "minimum": 1,
            "pattern": "^[0-9]{1,3}%$"
        })
    }
}

/// The daily window new updates may start in, in local time of `tz` (an
/// IANA name such as `Europe/Berlin`; the shell resolves it). `from` after
/// `to` spans midnight (22:00–05:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Window {
    /// Minutes after local midnight.
    pub from_min: u16,
    pub to_min: u16,
    pub tz: String,
}

impl Window {
    /// `HH:MM-HH:MM` in zone `tz`.
    pub fn parse(span: &str, tz: &str) -> Result<Window, String> {
        let minute = |s: &str| -> Result<u16, String> {
            let bad = || format!("{s:?} is not a time of day (HH:MM)");
            let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (from, to) = span
            .split_once('-')
            .ok_or_else(|| format!("{span:?}: a window is HH:MM-HH:MM"))?;
        let (from_min, to_min) = (minute(from)?, minute(to)?);
        if from_min == to_min {
            return Err(format!("{span:?}: the window is empty"));
        }
        Ok(Window {
            from_min,
            to_min,
            tz: tz.to_string(),
        })
    }

    /// Whether `minute` (after local midnight) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.from_min < self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        }
    }

    pub fn span(&self) -> String {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{}-{} {}", hm(self.from_min), hm(self.to_min), self.tz)
    }
}

/// How a campaign rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plan {
    pub waves: Vec<WaveSize>,
    /// Percentage of a wave verified that reaches the next wave.
    pub success_threshold: u8,
    /// Percentage of a wave failed beyond which the campaign stops.
    pub error_threshold: u8,
    /// Wait for a person's confirmation before each next wave.
    pub confirm_waves: bool,
    /// At most this many devices downloading at once.
    pub max_concurrent: u32,
    pub window: Option<Window>,
    /// Devices provisioned later that match the target join the last wave.
    pub late_joiners: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            waves: vec![WaveSize::Percent(100)],
            success_threshold: 95,
            error_threshold: 10,
            confirm_waves: false,
            max_concurrent: 100,
            window: None,
            late_joiners: false,
        }
    }
}

impl Plan {
    /// Why this plan cannot run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a campaign has at least one wave".into());
        }
        if self.waves.len() > 100 {
            return Err("at most 100 waves".into());
        }
        if self.success_threshold == 0 || self.success_threshold > 100 {
            return Err("success_threshold is a percentage from 1 to 100".into());
        }
        if self.error_threshold > 100 {
            return Err("error_threshold is a percentage from 0 to 100".into());
        }
        if self.max_concurrent == 0 {
            return Err("max_concurrent is at least 1".into());
        }
        Ok(())
    }

    /// The size of each wave for `targets` devices: never more than are
    /// left, the last taking the rest. A wave may be empty (a percentage
    /// already covered), so `sizes.len() == waves.len()` always holds.
    pub fn wave_sizes(&self, targets: usize) -> Vec<usize> {
        let mut covered = 0usize;
        let mut sizes = Vec::with_capacity(self.waves.len());
        for (i, w) in self.waves.iter().enumerate() {
            let until = if i + 1 == self.waves.len() {
                targets
            } else {
                match *w {
                    WaveSize::Devices(n) => covered.saturating_add(n as usize),
                    // Rounded up: 10% of 5 devices is one device, not none.
                    WaveSize::Percent(p) => (targets * p as usize).div_ceil(100),
                }
                .min(targets)
            };
            let size = until.saturating_sub(covered);
            sizes.push(size);
            covered += size;
        }
        sizes
    }
}

/// Which devices a campaign updates: every criterion given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Target {
    /// These endpoints (none: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Devices with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Devices reporting this firmware version (`/3/0/3`); `v1.2.3`,
    /// `1_2_3` and `1.2.3` are the same version, case ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// Devices of this model (`/3/0/1`), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every device: must be said, never implied by an empty target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Target {
    pub fn check(&self) -> Result<(), String> {
        let narrowed =
            !self.devices.is_empty() || self.tag.is_some() || self.firmware_version.is_some() || self.model.is_some();
        match (narrowed, self.all) {
            (false, false) => Err("name the devices, a tag, a firmware version or a model, or say all".into()),
            (true, true) => Err("all excludes the other criteria".into()),
            _ => Ok(()),
        }
    }

    /// Whether a device with these facts is a target. `tags` as the store
    /// keeps them (`a,b,c`); unknown version or model never match a
    /// criterion on them.
    pub fn matches(&self, endpoint: &str, tags: &str, version: Option<&str>, model: Option<&str>) -> bool {
        (self.devices.is_empty() || self.devices.iter().any(|d| d == endpoint))
            && self.tag.as_ref().is_none_or(|t| tags.split(',').any(|x| x == t))
            && self
                .firmware_version
                .as_ref()
                .is_none_or(|v| version.is_some_and(|have| crate::fota::same_version(have, v)))
            && self.model.as_ref().is_none_or(|m| model == Some(m.as_str()))
    }

    /// In words, for lists.
    pub fn describe(&self) -> String {
        if self.all {
            return "all devices".into();
        }
        let mut parts = Vec::new();
        match self.devices.len() {
            0 => {}
            1 => parts.push(self.devices[0].clone()),
            n => parts.push(format!("{n} devices")),
        }
        if let Some(t) = &self.tag {
            parts.push(format!("tag {t}"));
        }
        if let Some(v) = &self.firmware_version {
            parts.push(format!("on {v}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model {m}"));
        }
        parts.join(", ")
    }
}

/// A campaign as the API, the CLI and the dashboard ask for one.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewCampaign")]
pub struct Request {
    pub name: String,
    /// The catalogue image: its id or its name.
    pub image: String,
    pub target: Target,
    /// Wave sizes, e.g. `[10, "10%", "50%", "100%"]`; one wave of all when
    /// left out.
    #[serde(default)]
    pub waves: Vec<WaveSize>,
    /// Percentage of a wave verified that starts the next (default 95).
    #[serde(default)]
    pub success_threshold: Option<u8>,
    /// Percentage of a wave failed that stops the campaign (default 10).
    #[serde(default)]
    pub error_threshold: Option<u8>,
    #[serde(default)]
    pub confirm_waves: bool,
    /// Devices downloading at once (default 100).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Daily window for new starts, `HH:MM-HH:MM`, in `time_zone`.
    #[serde(default)]
    pub window: Option<String>,
    /// IANA time zone of the window (default UTC).
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub late_joiners: bool,
}

impl Request {
    /// The plan this asks for, or why it is not one (the time zone's name
    /// is the shell's to check).
    pub fn plan(&self) -> Result<Plan, String> {
        if self.name.trim().is_empty() || self.name.len() > 200 || self.name.chars().any(char::is_control) {
            return Err("a campaign's name is 1 to 200 printable characters".into());
        }
        self.target.check()?;
        let d = Plan::default();
        let window = match (&self.window, &self.time_zone) {
            (Some(w), tz) => Some(Window::parse(w, tz.as_deref().unwrap_or("UTC"))?),
            (None, Some(_)) => return Err("time_zone is for a window; give window too".into()),
            (None, None) => None,
        };
        let plan = Plan {
            waves: if self.waves.is_empty() {
                d.waves
            } else {
                self.waves.clone()
            },
            success_threshold: self.success_threshold.unwrap_or(d.success_threshold),
            error_threshold: self.error_threshold.unwrap_or(d.error_threshold),
            confirm_waves: self.confirm_waves,
            max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent),
            window,
            late_joiners: self.late_joiners,
        };
        plan.check()?;
        Ok(plan)
    }
}

/// Where a campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    /// Paused by a person: nothing new starts.
    Paused,
    /// A wave reached its success threshold; the next waits for a person.
    AwaitingConfirmation,
    /// Stopped by a threshold; the reason says which.
    Stopped,
    Cancelled,
    /// Every wave done with its success threshold met.
    Finished,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::AwaitingConfirmation => "awaiting-confirmation",
            State::Stopped => "stopped",
            State::Cancelled => "cancelled",
            State::Finished => "finished",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Cancelled | State::Finished)
    }
}

/// What the store counts of one wave's devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WaveCounts {
    /// Not started yet.
    pub pending: u64,
    /// Update under way and not yet past the download (they hold a slot).
    pub downloading: u64,
    /// Update under way past the download (executing, rebooting, verifying).
    pub installing: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Updates a person cancelled one by one.
    pub cancelled: u64,
}

impl WaveCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.active() + self.succeeded + self.failed + self.cancelled
    }

    pub fn active(&self) -> u64 {
        self.downloading + self.installing
    }

    fn done(&self) -> bool {
        self.pending == 0 && self.active() == 0
    }

    fn add(&mut self, o: &WaveCounts) {
        self.pending += o.pending;
        self.downloading += o.downloading;
        self.installing += o.installing;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.cancelled += o.cancelled;
    }
}

/// The counts of `waves`, summed.
pub fn sum(waves: &[WaveCounts]) -> WaveCounts {
    let mut all = WaveCounts::default();
    for w in waves {
        all.add(w);
    }
    all
}

/// What a step asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Start this many pending devices of waves up to `Campaign::wave`,
    /// the earliest wave first.
    pub start: u64,
}

/// A campaign's own state, persisted by the shell after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub state: State,
    /// The latest wave reached (0-based); waves up to it may start.
    pub wave: usize,
    /// Why it stopped, paused or awaits confirmation.
    pub reason: Option<String>,
}

impl Default for Campaign {
    fn default() -> Campaign {
        Campaign::new()
    }
}

impl Campaign {
    pub fn new() -> Campaign {
        Campaign {
            state: State::Running,
            wave: 0,
            reason: None,
        }
    }

    /// Decide, given the counts of every wave (`waves.len()` equals the
    /// plan's wave count) and whether the daily window is open now.
    pub fn step(&mut self, plan: &Plan, waves: &[WaveCounts], in_window: bool) -> Step {
        if self.state != State::Running || waves.is_empty() {
            return Step::default();
        }
        loop {
            let w = self.wave.min(waves.len() - 1);
            // Error threshold: more than that share of a wave reached so
            // far failed (an earlier wave's stragglers count too).
            for (i, c) in waves[..=w].iter().enumerate() {
                if c.failed > 0 && c.failed * 100 > u64::from(plan.error_threshold) * c.total() {
                    self.stop(format!(
                        "wave {} stopped at the error threshold: {} of {} devices failed (over {}%)",
                        i + 1,
                        c.failed,
                        c.total(),
                        plan.error_threshold
                    ));
                    return Step::default();
                }
            }
            let cur = &waves[w];
            let reached = cur.succeeded * 100 >= u64::from(plan.success_threshold) * cur.total();
            if reached && w + 1 < waves.len() {
                self.wave = w + 1;
                if plan.confirm_waves {
                    self.state = State::AwaitingConfirmation;
                    self.reason = Some(format!(
                        "wave {} reached {}% verified: confirm to start wave {}",
                        w + 1,
                        plan.success_threshold,
                        w + 2
                    ));
                    return Step::default();
                }
                continue;
            }
            if cur.done() && !reached {
                self.stop(format!(
                    "wave {} ended with {} of {} devices verified, below the {}% success threshold",
                    w + 1,
                    cur.succeeded,
                    cur.total(),
                    plan.success_threshold
                ));
                return Step::default();
            }
            break;
        }
        let started = &waves[..=self.wave.min(waves.len() - 1)];
        let all = sum(waves);
        if self.wave + 1 >= waves.len() && all.done() && !plan.late_joiners {
            self.state = State::Finished;
            self.reason = None;
            return Step::default();
        }
        if !in_window {
            return Step::default();
        }
        let downloading = all.downloading;
        let slots = u64::from(plan.max_concurrent).saturating_sub(downloading);
        let pending = sum(started).pending;
        Step {
            start: slots.min(pending),
        }
    }

    /// Stop for a reason found outside the counts (the image was removed).
    pub fn stop(&mut self, reason: String) {
        self.state = State::Stopped;
        self.reason = Some(reason);
    }

    /// A person pauses: nothing new starts; updates under way carry on.
    pub fn pause(&mut self, by: &str) -> Result<(), String> {
        match self.state {
            State::Running => {
                self.state = State::Paused;
                self.reason = Some(format!("paused by {by}"));
                Ok(())
            }
            s => Err(format!("a campaign that is {} cannot be paused", s.as_str())),
        }
    }

    /// A person resumes a paused or stopped campaign, or confirms the next
    /// wave of one awaiting confirmation.
    pub fn resume(&mut self) -> Result<(), String> {
        match self.state {
            State::Paused | State::Stopped | State::AwaitingConfirmation => {
                self.state = State::Running;
                self.reason = None;
                Ok(())
            }
            s => Err(format!("a campaign that is {} cannot be resumed", s.as_str())),
        }
    }

    /// A person cancels: the shell cancels the updates under way and the
    /// devices not started.
    pub fn cancel(&mut self, by: &str) -> Result<(), String> {
        if self.state == State::Cancelled {
            return Err("the campaign is already cancelled".into());
        }
        self.state = State::Cancelled;
        self.reason = Some(format!("cancelled by {by}"));
        Ok(())
    }

    /// A person retries the failed devices (the shell returns them to
    /// pending): the campaign runs again, whether it had stopped at the
    /// error threshold or finished with a few failures.
    pub fn retry_failed(&mut self) -> Result<(), String> {
        if self.state == State::Cancelled {
            return Err("a cancelled campaign cannot be retried".into());
        }
        self.state = State::Running;
        self.reason = None;
        Ok(())
    }
}
