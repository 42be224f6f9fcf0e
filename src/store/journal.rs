//! Which reported values are still only in the value journal.
//!
//! Why a journal: a value's place in the history is keyed by device, and
//! with a large fleet the devices that report one after another are spread
//! over the whole index, so writing each value where it belongs costs a
//! random page write (and its WAL copy) per value. The writer instead
//! appends every value to `value_journal`, a table in arrival order (pages
//! fill one after another), and moves a device's values into the history in
//! one go once it has [`HistoryPolicy::flush_values`] of them or its oldest
//! is [`HistoryPolicy::flush_age_ms`] old: one page write then carries a
//! device's tens of values. The journal is durable like any table, so a
//! crash loses nothing; its head is deleted once every device has moved the
//! values there.
//!
//! This module only keeps the books (sans-I/O: times are passed in, no SQL):
//! the writer's [`PendingHistory`] (per device how many values wait and the
//! first one's sequence number, and in arrival order the devices to move
//! when their values get old), and [`WaitingRanges`], the sequence numbers
//! not yet in the history, which readers (the dashboard, in the same
//! process) copy to read a device's newest values from the journal beside
//! the history.

use std::collections::{HashMap, HashSet, VecDeque};

/// When a device's journalled values are moved into the history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPolicy {
    /// Move once a device has this many values waiting.
    pub flush_values: u32,
    /// Move once a device's oldest waiting value is this old (Unix ms).
    pub flush_age_ms: i64,
}

/// A run of consecutive journal sequence numbers (one report's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: i64,
    pub last: i64,
}

impl SeqRange {
    /// How many values the range holds.
    pub fn values(&self) -> u64 {
        (self.last - self.first + 1) as u64
    }
}

#[derive(Debug)]
struct Waiting {
    /// The sequence number of the device's oldest waiting value.
    first: i64,
    values: u32,
}

#[derive(Debug)]
pub struct PendingHistory {
    policy: HistoryPolicy,
    devices: HashMap<i64, Waiting>,
    /// (journalled at, device, first sequence number) in arrival order, one
    /// entry each time a device starts waiting. An entry whose device has
    /// moved since (its first sequence number differs) is stale and skipped.
    by_age: VecDeque<(i64, i64, i64)>,
    /// Devices due at once, whatever their age or count.
    urgent: Vec<i64>,
    /// Values waiting, over all devices.
    waiting: u64,
}

impl PendingHistory {
    pub fn new(policy: HistoryPolicy) -> PendingHistory {
        PendingHistory {
            policy,
            devices: HashMap::new(),
            by_age: VecDeque::new(),
            urgent: Vec::new(),
            waiting: 0,
        }
    }

    /// A report's values were appended to the journal as `range` at `now`.
    /// `urgent`: move them with the next commit (an answer to an operator's
    /// Read, which other processes may be waiting to see in the history).
    pub fn journalled(&mut self, device: i64, range: SeqRange, now: i64, urgent: bool) {
        let by_age = &mut self.by_age;
        let w = self.devices.entry(device).or_insert_with(|| {
            by_age.push_back((now, device, range.first));
            Waiting {
                first: range.first,
                values: 0,
            }
        });
        let n = range.values() as u32;
        w.values += n;
        self.waiting += u64::from(n);
        if urgent || w.values >= self.policy.flush_values {
            self.urgent.push(device);
        }
    }

    /// Up to `max` devices whose values should move now, each once, the
    /// urgent first, then the oldest; and whether more are due (a burst of
    /// old values moves over several commits instead of holding one).
    pub fn due(&mut self, now: i64, max: usize) -> (Vec<i64>, bool) {
        let mut due = Vec::new();
        let mut taken = HashSet::new();
        let mut urgent = std::mem::take(&mut self.urgent).into_iter();
        for device in urgent.by_ref() {
            if due.len() == max {
                self.urgent.push(device);
                break;
            }
            if self.devices.contains_key(&device) && taken.insert(device) {
                due.push(device);
            }
        }
        self.urgent.extend(urgent);
        let mut more = !self.urgent.is_empty();
        for &(since, device, first) in &self.by_age {
            if now - since < self.policy.flush_age_ms {
                break;
            }
            if self.first_waiting(device) == Some(first) && !taken.contains(&device) {
                if due.len() == max {
                    more = true;
                    break;
                }
                taken.insert(device);
                due.push(device);
            }
        }
        (due, more)
    }

    fn first_waiting(&self, device: i64) -> Option<i64> {
        self.devices.get(&device).map(|w| w.first)
    }

    /// The device's values are in the history now (the move committed).
    pub fn moved(&mut self, device: i64) {
        if let Some(w) = self.devices.remove(&device) {
            self.waiting -= u64::from(w.values);
        }
        while let Some(&(_, d, first)) = self.by_age.front() {
            if self.first_waiting(d) == Some(first) {
                break;
            }
            self.by_age.pop_front();
        }
    }

    /// Journal rows below this are in the history (all of them, when
    /// nothing waits, up to `next`: the next sequence number to be given).
    pub fn low_water(&self, next: i64) -> i64 {
        self.by_age
            .iter()
            .find(|&&(_, d, first)| self.first_waiting(d) == Some(first))
            .map_or(next, |&(_, _, first)| first)
    }

    /// Values waiting, over all devices.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    pub fn clear(&mut self) {
        self.devices.clear();
        self.by_age.clear();
        self.urgent.clear();
        self.waiting = 0;
    }
}

/// Per device, the journal ranges not yet in the history: what readers
/// need, and what a move copies. The writer changes it beside its
/// [`PendingHistory`] (add as journalled, remove once moved), each under
/// its own lock, so a reader waits at most for one batch's worth of map
/// updates, never for the writer's bookkeeping (choosing due devices walks
/// the arrival order; under a sustained ingest that took tens of
/// milliseconds while readers waited).
#[derive(Debug, Default)]
pub struct WaitingRanges {
    devices: HashMap<i64, Vec<SeqRange>>,
    /// Values waiting, over all devices.
    waiting: u64,
}

impl WaitingRanges {
    /// A report's values were journalled as `range` (one range with the
    /// device's previous one when they follow each other).
    pub fn add(&mut self, device: i64, range: SeqRange) {
        let ranges = self.devices.entry(device).or_default();
        match ranges.last_mut() {
            Some(last) if last.last + 1 == range.first => last.last = range.last,
            _ => ranges.push(range),
        }
        self.waiting += range.values();
    }

    /// The device's values are in the history now (the move committed).
    pub fn remove(&mut self, device: i64) {
        if let Some(ranges) = self.devices.remove(&device) {
            self.waiting -= ranges.iter().map(SeqRange::values).sum::<u64>();
        }
    }

    /// The journal ranges of a device's values not yet in the history.
    pub fn ranges(&self, device: i64) -> Vec<SeqRange> {
        self.devices.get(&device).cloned().unwrap_or_default()
    }

    /// Values waiting, over all devices.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: i64, last: i64) -> SeqRange {
        SeqRange { first, last }
    }

    fn books() -> PendingHistory {
        PendingHistory::new(HistoryPolicy {
            flush_values: 8,
            flush_age_ms: 1_000,
        })
    }

    #[test]
    fn a_device_moves_when_it_has_enough_values() {
        let mut p = books();
        let mut seen = WaitingRanges::default();
        let mut journalled = |p: &mut PendingHistory, device, range| {
            p.journalled(device, range, 0, false);
            seen.add(device, range);
        };
        journalled(&mut p, 7, r(1, 4));
        assert_eq!(p.due(0, 10), (vec![], false));
        journalled(&mut p, 9, r(5, 8));
        journalled(&mut p, 7, r(9, 12));
        assert_eq!(p.due(0, 10), (vec![7], false));
        journalled(&mut p, 9, r(13, 14));
        assert_eq!(seen.ranges(7), vec![r(1, 4), r(9, 12)]);
        p.moved(7);
        seen.remove(7);
        assert_eq!(seen.ranges(7), vec![]);
        assert_eq!(seen.ranges(9), vec![r(5, 8), r(13, 14)]);
        assert_eq!(p.low_water(15), 5);
        assert_eq!(p.waiting(), 6);
    }

    #[test]
    fn old_values_move_and_the_journal_head_follows() {
        let mut p = books();
        p.journalled(1, r(1, 2), 0, false);
        p.journalled(2, r(3, 4), 500, false);
        p.journalled(1, r(5, 6), 600, false);
        assert_eq!(p.due(999, 10), (vec![], false));
        assert_eq!(p.due(1_000, 10), (vec![1], false));
        assert_eq!(p.low_water(7), 1);
        p.moved(1);
        assert_eq!(p.low_water(7), 3);
        assert_eq!(p.due(1_500, 10), (vec![2], false));
        p.moved(2);
        assert_eq!(p.low_water(7), 7);
        // A device that moved and reports again waits from its new value.
        p.journalled(1, r(7, 8), 2_000, false);
        assert_eq!(p.due(2_999, 10), (vec![], false));
        assert_eq!(p.due(3_000, 10), (vec![1], false));
    }

    #[test]
    fn urgent_reports_move_at_the_next_commit() {
        let mut p = books();
        p.journalled(3, r(1, 1), 0, true);
        p.journalled(3, r(2, 2), 0, true);
        assert_eq!(p.due(0, 10), (vec![3], false));
        assert_eq!(p.due(0, 10), (vec![], false), "asked once");
        p.moved(3);
        assert_eq!(p.due(10_000, 10), (vec![], false));
    }

    /// A device that moved by count leaves a stale entry in the age queue;
    /// it must neither move the device again nor hold the journal head.
    #[test]
    fn stale_age_entries_are_skipped() {
        let mut p = books();
        p.journalled(1, r(1, 8), 0, false);
        p.journalled(2, r(9, 10), 10, false);
        assert_eq!(p.due(0, 10), (vec![1], false));
        p.moved(1);
        p.journalled(1, r(11, 11), 20, false);
        assert_eq!(p.low_water(12), 9);
        assert_eq!(p.due(1_010, 10), (vec![2], false));
        p.moved(2);
        assert_eq!(p.low_water(12), 11);
        assert_eq!(p.due(1_019, 10), (vec![], false));
        assert_eq!(p.due(1_020, 10), (vec![1], false));
    }

    /// Many due at once move a few per commit, urgent first, oldest next.
    #[test]
    fn a_burst_moves_over_several_commits() {
        let mut p = books();
        for d in 0..5 {
            p.journalled(d, r(d * 2 + 1, d * 2 + 2), d, false);
        }
        p.journalled(4, r(11, 11), 10, true);
        assert_eq!(p.due(2_000, 2), (vec![4, 0], true));
        p.moved(4);
        p.moved(0);
        assert_eq!(p.due(2_000, 2), (vec![1, 2], true));
        p.moved(1);
        p.moved(2);
        assert_eq!(p.due(2_000, 2), (vec![3], false));
    }

    /// The readers' ranges count like the books: ranges added as
    /// journalled, merged when consecutive, gone once moved.
    #[test]
    fn readers_see_what_the_books_hold() {
        let mut b = books();
        let mut seen = WaitingRanges::default();
        for (device, range) in [(1, r(10, 12)), (2, r(13, 13)), (1, r(14, 15)), (1, r(16, 16))] {
            b.journalled(device, range, 0, false);
            seen.add(device, range);
        }
        assert_eq!(seen.ranges(1), vec![r(10, 12), r(14, 16)]);
        assert_eq!(seen.waiting(), b.waiting());
        assert_eq!(seen.waiting(), 7);
        seen.remove(1);
        b.moved(1);
        assert_eq!((seen.ranges(1), seen.waiting()), (vec![], 1));
        assert_eq!((seen.ranges(2), seen.waiting()), (vec![r(13, 13)], b.waiting()));
        seen.remove(42);
        assert_eq!(seen.waiting(), 1);
    }
}
