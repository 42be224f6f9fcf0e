//! Answers to sources nothing has verified. Over UDP anyone can write any
//! source address, so a small request that draws a large answer makes the
//! server a reflector aimed at that address (RFC 7252 §11.3). The rule
//! QUIC uses before it has validated an address (RFC 9000 §8.1): never
//! send more than three times what was received from it; and a per-source
//! rate limit on what is answered at all. Sans-I/O: time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// At most this many times the bytes received (RFC 9000 §8.1).
pub const FACTOR: usize = 3;

/// Bytes of an answer besides its Block2 payload: the 4-byte header, the
/// token (echoed, counted by the caller), and ETag (1+8), Block2 (1+3),
/// Content-Format (1+2), Size2 (1+4) and the payload marker, rounded up.
pub const ANSWER_OVERHEAD: usize = 4 + 32;

/// The largest Block2 SZX (a block of 2^(SZX+4) bytes, RFC 7959 §2.2)
/// whose answer, `overhead` bytes beside the block, stays within
/// [`FACTOR`] × `received`; `None` when not even a 16-byte block fits.
pub fn block_szx_within(received: usize, overhead: usize) -> Option<u8> {
    let budget = (received * FACTOR).checked_sub(overhead)?;
    (0..=6u8).rev().find(|szx| 1usize << (szx + 4) <= budget)
}

/// Answers to unverified sources, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Answered, within the factor.
    pub answered: u64,
    /// Refused with a bare error (no token, or no block small enough).
    pub refused: u64,
    /// Over the per-source rate: a bare 4.29.
    pub rate_limited: u64,
}

/// A token bucket per source (an address; for Celery tasks, the producer's
/// node name): `per_second` admitted a second, a burst of as many.
#[derive(Debug)]
pub struct Guard<K = IpAddr> {
    per_second: f64,
    sources: HashMap<K, (f64, Instant)>,
    pub counters: Counters,
}

/// Sources kept before idle ones are swept.
const SWEEP_AT: usize = 100_000;

impl<K: std::hash::Hash + Eq> Guard<K> {
    pub fn new(per_second: u32) -> Guard<K> {
        Guard {
            per_second: f64::from(per_second.max(1)),
            sources: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Whether `source` may be answered at `now`; counts it as rate
    /// limited when not.
    pub fn admit(&mut self, now: Instant, source: K) -> bool {
        if self.sources.len() >= SWEEP_AT {
            let full = self.per_second;
            // A source idle long enough to have a full bucket again
            // carries no state worth keeping.
            self.sources
                .retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * full < full);
        }
        let (tokens, at) = self.sources.entry(source).or_insert((self.per_second, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second).min(self.per_second);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.counters.rate_limited += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn blocks_fit_three_times_what_came_in() {
        // The review's probe: 27 bytes in drew 1,045 out. Now a 27-byte
        // request gets at most 81: a 32-byte block with the overhead.
        assert_eq!(block_szx_within(27, ANSWER_OVERHEAD), Some(1));
        // A request carrying a download token (~100 bytes) earns 256.
        assert_eq!(block_szx_within(100, ANSWER_OVERHEAD), Some(4));
        assert_eq!(block_szx_within(400, ANSWER_OVERHEAD), Some(6), "1024 at most");
        assert_eq!(block_szx_within(15, ANSWER_OVERHEAD), None);
    }

    #[test]
    fn each_source_has_its_own_rate() {
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let mut g = Guard::new(5);
        assert_eq!((0..8).filter(|_| g.admit(t0, a)).count(), 5, "a burst of 5");
        assert!(g.admit(t0, b), "another source is not held back");
        assert!(!g.admit(t0 + Duration::from_millis(100), a));
        assert!(g.admit(t0 + Duration::from_millis(250), a), "refilled at 5/s");
        assert_eq!(g.counters.rate_limited, 4);
    }
}
