use super::*;

fn plan(waves: &str) -> Plan {
    Plan {
        waves: waves.split(',').map(|w| w.parse().unwrap()).collect(),
        ..Plan::default()
    }
}

fn counts(pending: u64, downloading: u64, succeeded: u64, failed: u64) -> WaveCounts {
    WaveCounts {
        pending,
        downloading,
        succeeded,
        failed,
        ..WaveCounts::default()
    }
}

#[test]
fn wave_sizes_follow_counts_and_cumulative_percentages() {
    // A canary of ten, then up to 10 %, 50 %, all.
    assert_eq!(plan("10,10%,50%,100%").wave_sizes(1000), [10, 90, 400, 500]);
    // Percentages round up; a covered percentage leaves an empty wave.
    assert_eq!(plan("10%,5%,100%").wave_sizes(5), [1, 0, 4]);
    // More asked than there are: the later waves are empty.
    assert_eq!(plan("10,20,100%").wave_sizes(15), [10, 5, 0]);
    // The last wave takes the rest whatever it says.
    assert_eq!(plan("10,10").wave_sizes(100), [10, 90]);
    assert_eq!(plan("100%").wave_sizes(0), [0]);
    for n in [0, 1, 7, 99, 1000, 10_001] {
        let p = plan("3,10%,25,50%,100%");
        assert_eq!(p.wave_sizes(n).iter().sum::<usize>(), n, "every target in one wave");
    }
}

#[test]
fn wave_sizes_parse_as_operators_write_them() {
    assert_eq!("10".parse(), Ok(WaveSize::Devices(10)));
    assert_eq!(" 25% ".parse(), Ok(WaveSize::Percent(25)));
    for bad in ["0", "0%", "101%", "ten", "", "-3", "5.5%"] {
        assert!(bad.parse::<WaveSize>().is_err(), "{bad:?}");
    }
    let json: Vec<WaveSize> = serde_json::from_str(r#"[10, "10%", "50%"]"#).unwrap();
    assert_eq!(serde_json::to_string(&json).unwrap(), r#"["10","10%","50%"]"#);
    assert!(serde_json::from_str::<WaveSize>(r#""200%""#).is_err());
}

#[test]
fn a_plan_with_impossible_numbers_is_refused() {
    assert!(Plan::default().check().is_ok());
    for p in [
        Plan {
            waves: vec![],
            ..Plan::default()
        },
        Plan {
            success_threshold: 0,
            ..Plan::default()
        },
        Plan {
            success_threshold: 101,
            ..Plan::default()
        },
        Plan {
            error_threshold: 101,
            ..Plan::default()
        },
        Plan {
            max_concurrent: 0,
            ..Plan::default()
        },
    ] {
        assert!(p.check().is_err(), "{p:?}");
    }
}

#[test]
fn windows_span_midnight() {
    let w = Window::parse("22:00-05:30", "Europe/Berlin").unwrap();
    assert!(w.contains(22 * 60) && w.contains(23 * 60 + 59) && w.contains(0) && w.contains(5 * 60 + 29));
    assert!(!w.contains(5 * 60 + 30) && !w.contains(12 * 60) && !w.contains(21 * 60 + 59));
    let day = Window::parse("09:00-17:00", "UTC").unwrap();
    assert!(day.contains(9 * 60) && !day.contains(17 * 60) && !day.contains(8 * 60));
    assert_eq!(w.span(), "22:00-05:30 Europe/Berlin");
    for bad in ["9-17", "25:00-01:00", "10:00-10:00", "10:00", "10:61-11:00"] {
        assert!(Window::parse(bad, "UTC").is_err(), "{bad:?}");
    }
}

/// Starts are bounded by the concurrency limit, counted over every wave.
#[test]
fn starts_keep_within_the_concurrent_downloads() {
    let p = Plan {
        max_concurrent: 5,
        ..plan("10,100%")
    };
    let mut c = Campaign::new();
    assert_eq!(c.step(&p, &[counts(10, 0, 0, 0), counts(90, 0, 0, 0)], true).start, 5);
    assert_eq!(c.step(&p, &[counts(7, 3, 0, 0), counts(90, 0, 0, 0)], true).start, 2);
    assert_eq!(c.step(&p, &[counts(5, 5, 0, 0), counts(90, 0, 0, 0)], true).start, 0);
    // Installing devices no longer hold a download slot.
    let installing = WaveCounts {
        pending: 5,
        installing: 5,
        ..WaveCounts::default()
    };
    assert_eq!(c.step(&p, &[installing, counts(90, 0, 0, 0)], true).start, 5);
    assert_eq!(c.wave, 0, "wave 2 waits for wave 1");
    // Outside the window nothing starts, and nothing else changes.
    assert_eq!(c.step(&p, &[counts(10, 0, 0, 0), counts(90, 0, 0, 0)], false).start, 0);
    assert_eq!(c.state, State::Running);
}

/// The next wave is reached at the success threshold, not when the last
/// straggler of the wave is done.
#[test]
fn the_next_wave_starts_at_the_success_threshold() {
    let p = Plan {
        success_threshold: 90,
        ..plan("10,100%")
    };
    let mut c = Campaign::new();
    assert_eq!(c.step(&p, &[counts(0, 2, 8, 0), counts(90, 0, 0, 0)], true).start, 0);
    assert_eq!(c.wave, 0);
    // Nine of ten verified, one still rebooting: wave 2 starts.
    let s = c.step(
        &p,
        &[
            WaveCounts {
                installing: 1,
                succeeded: 9,
                ..WaveCounts::default()
            },
            counts(90, 0, 0, 0),
        ],
        true,
    );
    assert_eq!((c.wave, s.start), (1, 90));
    // Wave 2 nearly done with the straggler of wave 1 failing: one of ten
    // is not over the 10 % error threshold.
    let s = c.step(&p, &[counts(0, 0, 9, 1), counts(0, 0, 90, 0)], true);
    assert_eq!((s.start, c.state), (0, State::Finished));
}

#[test]
fn confirm_waves_waits_for_a_person() {
    let p = Plan {
        confirm_waves: true,
        ..plan("2,100%")
    };
    let mut c = Campaign::new();
    assert_eq!(c.step(&p, &[counts(2, 0, 0, 0), counts(8, 0, 0, 0)], true).start, 2);
    let waves = [counts(0, 0, 2, 0), counts(8, 0, 0, 0)];
    assert_eq!(c.step(&p, &waves, true).start, 0);
    assert_eq!((c.state, c.wave), (State::AwaitingConfirmation, 1));
    assert!(c.reason.as_deref().unwrap().contains("confirm to start wave 2"));
    assert_eq!(c.step(&p, &waves, true).start, 0, "still waiting");
    c.resume().unwrap();
    assert_eq!(c.step(&p, &waves, true).start, 8);
    assert_eq!(c.wave, 1, "confirmed once, not skipped ahead");
}

#[test]
fn the_error_threshold_stops_and_retry_runs_again() {
    let p = Plan {
        error_threshold: 5,
        ..plan("20,100%")
    };
    let mut c = Campaign::new();
    // One of twenty is 5 %: not over the threshold.
    assert_eq!(c.step(&p, &[counts(0, 5, 14, 1), counts(80, 0, 0, 0)], true).start, 0);
    assert_eq!(c.state, State::Running);
    // Two of twenty is.
    c.step(&p, &[counts(0, 4, 14, 2), counts(80, 0, 0, 0)], true);
    assert_eq!(c.state, State::Stopped);
    let reason = c.reason.clone().unwrap();
    assert!(reason.contains("2 of 20 devices failed"), "{reason}");
    assert_eq!(c.step(&p, &[counts(0, 4, 14, 2), counts(80, 0, 0, 0)], true).start, 0);
    assert!(c.pause("ann").is_err(), "only a running campaign pauses");
    // Retry-failed puts the two back to pending; the campaign runs them.
    c.retry_failed().unwrap();
    assert_eq!(c.step(&p, &[counts(2, 4, 14, 0), counts(80, 0, 0, 0)], true).start, 2);
    // Earlier waves' failures count once a later wave is reached.
    let mut c = Campaign::new();
    c.step(&p, &[counts(0, 0, 20, 0), counts(80, 0, 0, 0)], true);
    assert_eq!(c.wave, 1);
    c.step(&p, &[counts(0, 0, 18, 2), counts(0, 80, 0, 0)], true);
    assert_eq!(c.state, State::Stopped);
    assert!(c.reason.unwrap().starts_with("wave 1 "));
}

#[test]
fn a_zero_error_threshold_stops_at_the_first_failure() {
    let p = Plan {
        error_threshold: 0,
        ..plan("100%")
    };
    let mut c = Campaign::new();
    assert_eq!(c.step(&p, &[counts(100, 0, 0, 0)], true).start, 100);
    c.step(&p, &[counts(0, 99, 0, 1)], true);
    assert_eq!(c.state, State::Stopped);
}

#[test]
fn a_wave_done_below_the_success_threshold_stops() {
    let p = Plan {
        success_threshold: 100,
        error_threshold: 50,
        ..plan("4,100%")
    };
    let mut c = Campaign::new();
    let cancelled = WaveCounts {
        succeeded: 3,
        cancelled: 1,
        ..WaveCounts::default()
    };
    c.step(&p, &[cancelled, counts(6, 0, 0, 0)], true);
    assert_eq!(c.state, State::Stopped);
    assert!(c.reason.unwrap().contains("3 of 4 devices verified"));
}

#[test]
fn pause_resume_and_cancel() {
    let p = plan("100%");
    let mut c = Campaign::new();
    c.pause("ann").unwrap();
    assert_eq!(c.reason.as_deref(), Some("paused by ann"));
    assert_eq!(c.step(&p, &[counts(10, 0, 0, 0)], true).start, 0);
    assert!(c.pause("ann").is_err());
    c.resume().unwrap();
    assert!(c.resume().is_err(), "a running campaign is not resumed");
    assert_eq!(c.step(&p, &[counts(10, 0, 0, 0)], true).start, 10);
    c.cancel("bob").unwrap();
    assert_eq!(c.state, State::Cancelled);
    assert_eq!(c.step(&p, &[counts(10, 0, 0, 0)], true).start, 0);
    assert!(c.cancel("bob").is_err() && c.resume().is_err() && c.retry_failed().is_err());
}

/// With late joiners the campaign keeps running when its devices are done.
#[test]
fn late_joiners_keep_a_campaign_open() {
    let p = Plan {
        late_joiners: true,
        ..plan("100%")
    };
    let mut c = Campaign::new();
    c.step(&p, &[counts(0, 0, 5, 0)], true);
    assert_eq!(c.state, State::Running);
    assert_eq!(c.step(&p, &[counts(1, 0, 5, 0)], true).start, 1, "a joiner starts");
    let p = plan("100%");
    c.step(&p, &[counts(0, 0, 6, 0)], true);
    assert_eq!(c.state, State::Finished);
}

/// An empty campaign (every target already on the version) is finished;
/// empty waves are passed through.
#[test]
fn empty_waves_pass() {
    let p = plan("10%,5%,100%");
    let mut c = Campaign::new();
    c.step(&p, &[WaveCounts::default(); 3], true);
    assert_eq!((c.state, c.wave), (State::Finished, 2));
    let mut c = Campaign::new();
    let s = c.step(
        &p,
        &[counts(0, 0, 1, 0), WaveCounts::default(), counts(4, 0, 0, 0)],
        true,
    );
    assert_eq!((c.wave, s.start), (2, 4));
}

/// A model run: 1,000 devices in four waves, a few failing, each tick
/// finishing what was started the tick before. Every device is started
/// once, waves are reached in order, the campaign finishes.
#[test]
fn a_rollout_runs_to_the_end_starting_every_device_once() {
    let p = Plan {
        max_concurrent: 50,
        error_threshold: 10,
        success_threshold: 90,
        ..plan("10,10%,50%,100%")
    };
    let sizes = p.wave_sizes(1000);
    // Per device: its wave and whether it has started / how it ended.
    let mut waves: Vec<WaveCounts> = sizes.iter().map(|&n| counts(n as u64, 0, 0, 0)).collect();
    let mut c = Campaign::new();
    let mut started = 0u64;
    let mut to_fail = vec![0u64; waves.len()];
    let mut reached = vec![0usize];
    for tick in 0..10_000u64 {
        // Last tick's starts end: every 40th device started fails.
        for (w, f) in waves.iter_mut().zip(to_fail.iter_mut()) {
            w.failed += *f;
            w.succeeded += w.downloading - *f;
            w.downloading = 0;
            *f = 0;
        }
        let s = c.step(&p, &waves, true);
        if *reached.last().unwrap() != c.wave {
            reached.push(c.wave);
        }
        assert!(s.start <= 50);
        let mut left = s.start;
        for (w, f) in waves[..=c.wave].iter_mut().zip(to_fail.iter_mut()) {
            let n = left.min(w.pending);
            w.pending -= n;
            w.downloading += n;
            *f += (started..started + n).filter(|i| i % 40 == 39).count() as u64;
            started += n;
            left -= n;
        }
        assert_eq!(left, 0, "tick {tick}: asked to start only what is pending");
        if c.state == State::Finished {
            break;
        }
    }
    assert_eq!(c.state, State::Finished);
    assert_eq!(started, 1000, "every device started once");
    assert_eq!(reached, [0, 1, 2, 3]);
    let all = sum(&waves);
    assert_eq!((all.succeeded, all.failed), (975, 25));
}

#[test]
fn targets_must_be_named_and_every_criterion_holds() {
    assert!(Target::default().check().is_err(), "an empty target is not all devices");
    assert!(
        Target {
            all: true,
            tag: Some("a".into()),
            ..Target::default()
        }
        .check()
        .is_err()
    );
    assert!(
        Target {
            all: true,
            ..Target::default()
        }
        .check()
        .is_ok()
    );
    let t = Target {
        tag: Some("north".into()),
        firmware_version: Some("v1.0.0".into()),
        model: Some("nRF9160".into()),
        ..Target::default()
    };
    assert!(t.check().is_ok());
    assert!(t.matches("a", "north,pilot", Some("1.0.0"), Some("nRF9160")));
    assert!(
        !t.matches("a", "northern", Some("1.0.0"), Some("nRF9160")),
        "whole tags only"
    );
    assert!(
        !t.matches("a", "north", None, Some("nRF9160")),
        "an unknown version is not 1.0.0"
    );
    assert!(!t.matches("a", "north", Some("1.0.0"), Some("nRF9161")));
    let listed = Target {
        devices: vec!["a".into(), "b".into()],
        ..Target::default()
    };
    assert!(listed.matches("b", "", None, None) && !listed.matches("c", "", None, None));
    assert_eq!(t.describe(), "tag north, on v1.0.0, model nRF9160");
}
