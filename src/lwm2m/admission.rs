//! Admission of endpoints that were never provisioned: how many of them one
//! source address may hold registered at once, and how fast it may add
//! new ones (sans-I/O; time is a parameter).
//!
//! With `lwm2m.unknown_endpoints = accept` a Register from an unknown
//! endpoint name creates a device. Without a bound, one host can fill the
//! device table with invented names (20,000 mutated Register datagrams from
//! one address once left 473 invented devices). Provisioned endpoints are
//! never counted here: a fleet that registers through one carrier NAT is
//! provisioned, not admitted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Where a transport peer's datagrams come from: the unit the limits count
/// by (an address, not an address and port: a flood changes ports freely).
pub trait SourceAddress {
    fn source(&self) -> IpAddr;
}

/// The two limits, from `lwm2m.unprovisioned_per_source` and
/// `lwm2m.unprovisioned_per_source_per_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registrations of unprovisioned endpoints one source may hold at once.
    pub per_source: u32,
    /// New unprovisioned endpoints one source may register per minute; a
    /// burst of as many is allowed (a token bucket that refills evenly).
    pub per_source_per_min: u32,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source already holds `per_source` registrations of unprovisioned endpoints.
    TooMany,
    /// The source added new endpoints faster than `per_source_per_min`; a
    /// token is back after this many seconds.
    TooFast { retry_after_s: u32 },
}

/// What was admitted and refused since start, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub admitted: u64,
    pub refused_too_many: u64,
    pub refused_too_fast: u64,
}

#[derive(Debug)]
struct Bucket {
    /// Registrations this source holds of endpoints admitted here.
    live: u32,
    /// Tokens left at `at`, each one new endpoint.
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    sources: HashMap<IpAddr, Bucket>,
    /// Endpoints admitted as unprovisioned whose registration is live, and
    /// the source that holds it.
    admitted: HashMap<String, IpAddr>,
    counters: Counters,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            sources: HashMap::new(),
            admitted: HashMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Seconds per token.
    fn refill(&self) -> f64 {
        60.0 / f64::from(self.limits.per_source_per_min.max(1))
    }

    /// May `source` register the unprovisioned `endpoint` now? A name it
    /// already holds registered again (a client re-registering) costs
    /// nothing; a new name takes a token and one of the source's places.
    pub fn admit(&mut self, now: Instant, source: IpAddr, endpoint: &str) -> Result<(), Refusal> {
        if let Some(holder) = self.admitted.get(endpoint).copied() {
            if holder == source {
                return Ok(());
            }
            // The name moved to another address (NAT rebinding): it is
            // that address's now, and counted there.
            self.release(endpoint);
        }
        let burst = f64::from(self.limits.per_source_per_min);
        let per_token = self.refill();
        let bucket = self.sources.entry(source).or_insert(Bucket {
            live: 0,
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed / per_token).min(burst);
        bucket.at = now;
        if bucket.live >= self.limits.per_source {
            self.counters.refused_too_many += 1;
            return Err(Refusal::TooMany);
        }
        if bucket.tokens < 1.0 {
            self.counters.refused_too_fast += 1;
            let wait = (1.0 - bucket.tokens) * per_token;
            return Err(Refusal::TooFast {
                retry_after_s: wait.ceil().max(1.0) as u32,
            });
        }
        bucket.tokens -= 1.0;
        bucket.live += 1;
        self.admitted.insert(endpoint.to_string(), source);
        self.counters.admitted += 1;
        Ok(())
    }

    /// `endpoint`'s registration ended (De-register, expiry, replaced by a
    /// registration from elsewhere, or the device was provisioned since):
    /// its source has a place free again.
    pub fn release(&mut self, endpoint: &str) {
        if let Some(source) = self.admitted.remove(endpoint)
            && let Some(b) = self.sources.get_mut(&source)
        {
            b.live = b.live.saturating_sub(1);
        }
    }

    /// Forget sources that hold nothing and whose bucket is full again, so
    /// the table holds only addresses that matter now.
    pub fn sweep(&mut self, now: Instant) {
        let full = Duration::from_secs_f64(self.refill() * f64::from(self.limits.per_source_per_min));
        self.sources
            .retain(|_, b| b.live > 0 || now.saturating_duration_since(b.at) < full);
    }

    /// Sources with state (for tests and the flood's memory bound).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// Peers numbered by the cores' tests (unit and system): peers 0–127
/// share one address, the others have an address each, so both cases can
/// be driven.
impl SourceAddress for u8 {
    fn source(&self) -> IpAddr {
        IpAddr::from([127, 0, 0, if *self < 128 { 1 } else { *self }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn admission(per_source: u32, per_min: u32) -> Admission {
        Admission::new(Limits {
            per_source,
            per_source_per_min: per_min,
        })
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds_and_says_when_to_return() {
        let t0 = Instant::now();
        let mut a = admission(1000, 60);
        for i in 0..60 {
            assert_eq!(a.admit(t0, A, &format!("ep{i}")), Ok(()), "burst {i}");
        }
        assert_eq!(
            a.admit(t0, A, "ep60"),
            Err(Refusal::TooFast { retry_after_s: 1 }),
            "one token a second at 60 a minute"
        );
        // Another address has its own bucket.
        assert_eq!(a.admit(t0, B, "other"), Ok(()));
        // A second later one more is admitted, and only one.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.admit(t1, A, "ep60"), Ok(()));
        assert!(matches!(a.admit(t1, A, "ep61"), Err(Refusal::TooFast { .. })));
        assert_eq!(
            a.counters(),
            Counters {
                admitted: 62,
                refused_too_many: 0,
                refused_too_fast: 2
            }
        );
    }

    #[test]
    fn the_count_caps_live_registrations_and_a_release_frees_a_place() {
        let t0 = Instant::now();
        let mut a = admission(3, 600);
        for ep in ["a", "b", "c"] {
            a.admit(t0, A, ep).unwrap();
        }
        assert_eq!(a.admit(t0, A, "d"), Err(Refusal::TooMany));
        // A name it holds may register again (a client's re-registration).
        assert_eq!(a.admit(t0, A, "b"), Ok(()));
        a.release("b");
        assert_eq!(a.admit(t0, A, "d"), Ok(()));
        assert_eq!(a.admit(t0, A, "e"), Err(Refusal::TooMany));
        // Releasing an endpoint never admitted changes nothing.
        a.release("never");
        assert_eq!(a.admit(t0, A, "e"), Err(Refusal::TooMany));
    }

    #[test]
    fn a_name_that_moves_address_is_counted_at_its_new_address() {
        let t0 = Instant::now();
        let mut a = admission(1, 600);
        a.admit(t0, A, "dev").unwrap();
        a.admit(t0, B, "dev").unwrap();
        // A's place is free again, B's taken.
        assert_eq!(a.admit(t0, A, "x"), Ok(()));
        assert_eq!(a.admit(t0, B, "y"), Err(Refusal::TooMany));
    }

    #[test]
    fn idle_sources_are_forgotten_once_their_bucket_is_full() {
        let t0 = Instant::now();
        let mut a = admission(10, 60);
        a.admit(t0, A, "a").unwrap();
        a.admit(t0, B, "b").unwrap();
        a.release("b");
        a.sweep(t0 + Duration::from_secs(30));
        assert_eq!(a.sources(), 2, "B's bucket is not full yet");
        a.sweep(t0 + Duration::from_secs(61));
        assert_eq!(a.sources(), 1, "A holds a registration; B is gone");
    }
}
