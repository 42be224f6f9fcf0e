//! Component health as `/healthz`, `/api/v1/health`, `flownexus
//! healthcheck`, systemd's watchdog and its `STATUS=` line see it.
//!
//! The probes (`shell::health`) exercise each component the way its users
//! do: a CoAP ping on the CoAP port (RFC 7252 §4.3), a ClientHello on the
//! DTLS port (answered by a HelloVerifyRequest, RFC 6347 §4.2.1), a TLS
//! connection to the firmware server, an HTTP request to the dashboard, a
//! round trip through the LwM2M task's command queue and through the store
//! writer's, and a read of the store. This core keeps their results and
//! judges them, with time passed in.

use serde::{Deserialize, Serialize};

/// A component's state, worst last (so the fleet's is the maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The last probe failed, the ones before did not: a blip or the start
    /// of an outage.
    Degraded,
    /// Not probed yet, `DOWN_AFTER` probes in a row failed, or no probe
    /// ended for `STALE_ROUNDS` rounds (the prober itself is stuck).
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }
}

/// Failed probes in a row that make a component down.
pub const DOWN_AFTER: u32 = 3;
/// Probe rounds without any result after which a component is down.
pub const STALE_ROUNDS: i64 = 3;

/// The components whose loops must turn for the watchdog to be pinged
/// (`WATCHDOG=1`): a stuck LwM2M task or store writer stops the pings, and
/// systemd restarts the service (`WatchdogSec=`).
pub const VITAL: &[&str] = &["lwm2m", "writer", "store"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ComponentHealth {
    pub name: String,
    pub status: Status,
    /// What the last probe saw (e.g. "answered a ping in 1 ms"), or why it
    /// failed.
    pub detail: String,
    /// When the last probe ended (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checked_at: Option<i64>,
    /// When a probe last succeeded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ok_at: Option<i64>,
    /// How long the last probe took (ms); the writer's is its commit lag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub took_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: &'static str,
    checked_at: Option<i64>,
    ok_at: Option<i64>,
    took_ms: Option<i64>,
    failures: u32,
    detail: String,
}

/// The probes' results.
#[derive(Debug, Clone)]
pub struct Board {
    interval_ms: i64,
    entries: Vec<Entry>,
    /// Components the server works without (an event sink): at worst
    /// degraded, never down, so a broker outage does not get the server
    /// restarted or its readiness withheld.
    optional: Vec<&'static str>,
}

impl Board {
    /// A board for `components`, probed every `interval_ms`.
    pub fn new(interval_ms: i64, components: &[&'static str]) -> Board {
        Board {
            interval_ms: interval_ms.max(1),
            entries: components
                .iter()
                .map(|&name| Entry {
                    name,
                    checked_at: None,
                    ok_at: None,
                    took_ms: None,
                    failures: 0,
                    detail: "not probed yet".into(),
                })
                .collect(),
            optional: Vec::new(),
        }
    }

    /// Marks `names` as optional: at worst degraded.
    pub fn with_optional(mut self, names: &[&'static str]) -> Board {
        self.optional = names.to_vec();
        self
    }

    pub fn is_optional(&self, name: &str) -> bool {
        self.optional.contains(&name)
    }

    /// A probe of `name` ended at `now`: what it saw, or why it failed.
    pub fn record(&mut self, now: i64, name: &str, result: Result<String, String>) {
        let Some(e) = self.entries.iter_mut().find(|e| e.name == name) else {
            return;
        };
        e.checked_at = Some(now);
        match result {
            Ok(detail) => {
                e.ok_at = Some(now);
                e.failures = 0;
                e.detail = detail;
            }
            Err(reason) => {
                e.failures += 1;
                e.detail = reason;
            }
        }
    }

    /// How long `name`'s last probe took.
    pub fn took(&mut self, name: &str, ms: i64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.name == name) {
            e.took_ms = Some(ms);
        }
    }

    fn judge(&self, now: i64, e: &Entry) -> Status {
        let status = self.judge_probes(now, e);
        if self.is_optional(e.name) {
            status.min(Status::Degraded)
        } else {
            status
        }
    }

    fn judge_probes(&self, now: i64, e: &Entry) -> Status {
        match e.checked_at {
            None => Status::Down,
            Some(t) if now - t > STALE_ROUNDS * self.interval_ms => Status::Down,
            Some(_) if e.failures >= DOWN_AFTER => Status::Down,
            Some(_) if e.failures > 0 => Status::Degraded,
            Some(_) => Status::Ok,
        }
    }

    /// Every component, judged at `now`.
    pub fn report(&self, now: i64) -> Vec<ComponentHealth> {
        self.entries
            .iter()
            .map(|e| {
                let status = self.judge(now, e);
                let detail = match e.checked_at {
                    Some(t) if status == Status::Down && now - t > STALE_ROUNDS * self.interval_ms => {
                        format!("no probe ended for {} s", (now - t) / 1000)
                    }
                    _ => e.detail.clone(),
                };
                ComponentHealth {
                    name: e.name.to_string(),
                    status,
                    detail,
                    checked_at: e.checked_at,
                    ok_at: e.ok_at,
                    took_ms: e.took_ms,
                }
            })
            .collect()
    }

    /// The worst of every component.
    pub fn overall(&self, now: i64) -> Status {
        overall(&self.report(now))
    }

    /// Whether each of `names` answered a probe within `within_ms` of `now`:
    /// the watchdog's test.
    pub fn alive(&self, now: i64, names: &[&str], within_ms: i64) -> bool {
        names.iter().all(|n| {
            self.entries
                .iter()
                .find(|e| e.name == *n)
                .is_none_or(|e| e.ok_at.is_some_and(|t| now - t <= within_ms))
        })
    }
}

/// The worst status of `components` (`Ok` for none).
pub fn overall(components: &[ComponentHealth]) -> Status {
    components.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

/// How often to probe so that the watchdog (`WATCHDOG_USEC`, pinged at
/// half of it) sees each vital component answer at least twice per ping
/// interval: the configured interval, or less under a short watchdog.
pub fn probe_interval_ms(configured_ms: i64, watchdog_ms: Option<i64>) -> i64 {
    match watchdog_ms {
        Some(w) => configured_ms.min(w / 4).max(100),
        None => configured_ms,
    }
}

/// The public summary `/healthz` gives: status names only (who may reach
/// it unauthenticated learns nothing of the fleet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Summary {
    pub status: Status,
    pub components: std::collections::BTreeMap<String, Status>,
}

/// The detailed report `/api/v1/health` gives signed-in users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Report {
    pub status: Status,
    pub components: Vec<ComponentHealth>,
}

pub fn summary(components: &[ComponentHealth]) -> Summary {
    Summary {
        status: overall(components),
        components: components.iter().map(|c| (c.name.clone(), c.status)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: an event sink that keeps failing is degraded, never down.
    #[test]
    fn an_optional_component_is_at_worst_degraded() {
        let mut b = Board::new(1000, &["store", "celery"]).with_optional(&["celery"]);
        assert_eq!(b.report(0)[1].status, Status::Degraded, "not probed yet");
        for t in 0..5 {
            b.record(t, "store", Ok("fine".into()));
            b.record(t, "celery", Err("cannot reach the broker".into()));
        }
        assert_eq!(b.report(5)[1].status, Status::Degraded);
        assert_eq!(b.overall(5), Status::Degraded);
        assert_eq!(b.report(10_000)[1].status, Status::Degraded, "nor when stale");
        b.record(6, "celery", Ok("delivered".into()));
        assert_eq!(b.overall(6), Status::Ok);
    }

    const ALL: &[&str] = &["store", "writer", "lwm2m", "coap"];

    #[test]
    fn unprobed_components_are_down_and_a_success_makes_them_ok() {
        let mut b = Board::new(1000, ALL);
        assert!(b.report(0).iter().all(|c| c.status == Status::Down));
        for n in ALL {
            b.record(10, n, Ok("fine".into()));
        }
        assert_eq!(b.overall(20), Status::Ok);
        assert_eq!(b.report(20)[0].detail, "fine");
    }

    #[test]
    fn failures_degrade_then_take_down_and_one_success_recovers() {
        let mut b = Board::new(1000, ALL);
        for n in ALL {
            b.record(0, n, Ok("fine".into()));
        }
        b.record(1000, "coap", Err("no answer within 2 s".into()));
        assert_eq!(b.overall(1000), Status::Degraded);
        let coap = |b: &Board, now| b.report(now).into_iter().find(|c| c.name == "coap").unwrap();
        assert_eq!(coap(&b, 1000).detail, "no answer within 2 s");
        b.record(2000, "coap", Err("no answer".into()));
        assert_eq!(coap(&b, 2000).status, Status::Degraded);
        b.record(3000, "coap", Err("no answer".into()));
        assert_eq!(coap(&b, 3000).status, Status::Down);
        assert_eq!(b.overall(3000), Status::Down);
        b.record(4000, "coap", Ok("answered".into()));
        assert_eq!(coap(&b, 4000).status, Status::Ok);
    }

    #[test]
    fn a_component_whose_probe_never_ends_goes_down() {
        let mut b = Board::new(1000, ALL);
        for n in ALL {
            b.record(0, n, Ok("fine".into()));
        }
        assert_eq!(b.overall(3000), Status::Ok);
        let later = b.report(3001);
        assert!(later.iter().all(|c| c.status == Status::Down));
        assert_eq!(later[0].detail, "no probe ended for 3 s");
    }

    /// A stuck LwM2M task answers no probe: the watchdog must stop.
    #[test]
    fn the_watchdog_needs_every_vital_component_to_answer() {
        let mut b = Board::new(500, &["store", "writer", "lwm2m", "coap"]);
        for n in ["store", "writer", "lwm2m", "coap"] {
            b.record(0, n, Ok("fine".into()));
        }
        assert!(b.alive(1000, VITAL, 1000));
        b.record(1500, "store", Ok("fine".into()));
        b.record(1500, "writer", Ok("fine".into()));
        b.record(1500, "lwm2m", Err("no answer within 2 s".into()));
        assert!(!b.alive(1500, VITAL, 1000), "the LwM2M task last answered 1.5 s ago");
        // A failing listener is for the health report, not for a restart.
        b.record(1500, "lwm2m", Ok("fine".into()));
        b.record(1500, "coap", Err("no answer".into()));
        assert!(b.alive(1500, VITAL, 1000));
    }

    #[test]
    fn the_probe_interval_fits_the_watchdog() {
        assert_eq!(probe_interval_ms(5000, None), 5000);
        assert_eq!(probe_interval_ms(5000, Some(8000)), 2000);
        assert_eq!(probe_interval_ms(5000, Some(60_000)), 5000);
        assert_eq!(probe_interval_ms(5000, Some(100)), 100);
    }

    #[test]
    fn the_public_summary_has_names_and_statuses_only() {
        let mut b = Board::new(1000, &["store", "coap"]);
        b.record(0, "store", Ok("schema 16, 3 devices".into()));
        b.record(0, "coap", Err("no answer".into()));
        let s = summary(&b.report(0));
        assert_eq!(s.status, Status::Degraded);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"status":"degraded","components":{"coap":"degraded","store":"ok"}}"#
        );
    }
}
