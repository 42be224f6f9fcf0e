//! One sink's delivery schedule, sans-I/O: whether it may be tried now,
//! how long it waits after a failure (exponential backoff), and how it is
//! seen by the health report. A sink that keeps failing is `degraded`, never
//! down: the outbox keeps its events, and the server's own work does not
//! depend on a receiver (an optional dependency never fails the server).

use std::time::{Duration, Instant};

/// The waits after consecutive failures: `first`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(60),
    };

    /// The wait after the `failures`-th failure in a row (1-based).
    pub fn wait(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// How a sink is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkHealth {
    /// The last attempt delivered (or none was needed yet).
    Ok,
    /// Failing since the first failure of this run, with the last error.
    Failing { failures: u32, error: String },
}

#[derive(Debug, Clone)]
pub struct SinkState {
    backoff: Backoff,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl SinkState {
    pub fn new(backoff: Backoff) -> SinkState {
        SinkState {
            backoff,
            failures: 0,
            retry_at: None,
            last_error: None,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// When the next attempt may be made, if it must wait.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The sink took what it was given.
    pub fn delivered(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
    }

    /// The attempt at `now` failed: the wait before the next one.
    pub fn failed(&mut self, now: Instant, error: impl Into<String>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = self.backoff.wait(self.failures);
        self.retry_at = Some(now + wait);
        self.last_error = Some(error.into());
        wait
    }

    pub fn health(&self) -> SinkHealth {
        match (&self.last_error, self.failures) {
            (Some(e), n) if n > 0 => SinkHealth::Failing {
                failures: n,
                error: e.clone(),
            },
            _ => SinkHealth::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_to_a_ceiling_and_a_success_resets() {
        let b = Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(8),
        };
        let waits: Vec<u64> = (1..=7).map(|n| b.wait(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(b.wait(u32::MAX), Duration::from_secs(8), "no overflow");

        let t0 = Instant::now();
        let mut s = SinkState::new(b);
        assert!(s.ready(t0));
        assert_eq!(s.health(), SinkHealth::Ok);
        assert_eq!(s.failed(t0, "connection refused"), Duration::from_millis(500));
        assert!(!s.ready(t0 + Duration::from_millis(499)));
        assert!(s.ready(t0 + Duration::from_millis(500)));
        assert_eq!(s.failed(t0, "connection refused"), Duration::from_secs(1));
        assert_eq!(
            s.health(),
            SinkHealth::Failing {
                failures: 2,
                error: "connection refused".into()
            }
        );
        s.delivered();
        assert!(s.ready(t0));
        assert_eq!(s.health(), SinkHealth::Ok);
        assert_eq!(
            s.failed(t0, "x"),
            Duration::from_millis(500),
            "the schedule starts over"
        );
    }
}
