//! The update state machine driven by hand: every path an update can take,
//! with time as a number.

use super::*;
use crate::lwm2m::operation::OperationResult;
use crate::lwm2m::path::Value;

const LIMITS: Limits = Limits {
    awake_window_ms: 20_000,
    download_timeout_ms: 600_000,
    update_timeout_ms: 300_000,
    max_retries: 2,
    retry_backoff_ms: 10_000,
};
const URI: &str = "https://fw.example.com/fw/abc/app.bin?t=x";
const COAP_URI: &str = "coaps://lwm2m.example.com/fw/abc/app.bin?t=x";

fn rec(p: &str, v: Value) -> Record {
    Record {
        path: p.parse().unwrap(),
        value: v,
        time: None,
    }
}

fn ok(records: Vec<Record>) -> Outcome {
    Outcome::Succeeded(OperationResult {
        code: "2.05".into(),
        records,
        ..Default::default()
    })
}

fn failed(code: &str) -> Outcome {
    Outcome::Failed {
        code: Some(code.into()),
        reason: format!("device answered {code}"),
    }
}

/// Drives one update, numbering the operations it asks for.
struct Drive {
    u: Update,
    next: OperationId,
    sent: Vec<OperationKind>,
}

impl Drive {
    fn new() -> Drive {
        let mut d = Drive {
            u: Update::new(0, URI.into(), Some(COAP_URI.into()), "v2.0.0".into()),
            next: 1,
            sent: Vec::new(),
        };
        d.take();
        d
    }

    /// Queue what the update asks for; its id.
    fn take(&mut self) -> Option<OperationId> {
        let kind = self.u.take_operation()?;
        self.sent.push(kind);
        let id = self.next;
        self.next += 1;
        self.u.queued(id);
        Some(id)
    }

    fn last(&self) -> &OperationKind {
        self.sent.last().unwrap()
    }

    /// The operation out finishes with `outcome` at `now`.
    fn finish(&mut self, now: i64, outcome: Outcome) {
        let id = self.u.waiting_for.expect("an operation is out");
        self.u.operation_finished(now, id, &outcome, &LIMITS);
        self.take();
    }

    fn wrote(&self, uri: &str) -> bool {
        matches!(self.last(), OperationKind::Write { path, values, .. }
            if *path == "/5/0/1".parse().unwrap() && values[0].value == uri)
    }

    fn until_downloading(&mut self) {
        assert!(matches!(self.last(), OperationKind::Observe { path } if path.to_string() == "/5/0"));
        self.finish(2, ok(vec![rec("/5/0/3", Value::Integer(0))]));
        assert_eq!(self.u.phase, Phase::WritingUri);
        assert!(self.wrote(URI));
        self.finish(3, ok(vec![]));
        assert_eq!(self.u.phase, Phase::Downloading);
    }
}

#[test]
fn a_device_goes_from_idle_to_the_new_version() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(10, &[rec("/5/0/3", Value::Integer(1))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Downloading);
    d.u.values(
        20,
        &[rec("/5/0/3", Value::Integer(2)), rec("/5/0/5", Value::Integer(0))],
        &LIMITS,
    );
    assert_eq!(d.u.phase, Phase::Executing);
    d.take();
    assert!(matches!(d.last(), OperationKind::Execute { path, args: None } if path.to_string() == "/5/0/2"));
    d.finish(21, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Updating);
    d.u.registered(40, &LIMITS);
    assert_eq!(d.u.phase, Phase::Verifying);
    d.take();
    d.finish(41, ok(vec![rec("/3/0/3", Value::String("2_0_0".into()))]));
    assert_eq!((d.u.phase, d.u.reason.as_deref()), (Phase::Succeeded, None));
}

/// The values that concern a download date from the URI write, not from
/// when the server took the device's answer to it: a Downloaded reported
/// between the two (seen only by reading the store back after the event
/// stream lagged) is this download's.
#[test]
fn the_download_counts_values_from_the_uri_write() {
    let mut d = Drive::new();
    d.finish(2, ok(vec![rec("/5/0/3", Value::Integer(0))]));
    assert_eq!((d.u.phase, d.u.values_since()), (Phase::WritingUri, 2));
    d.finish(9, ok(vec![]));
    assert_eq!(
        (d.u.phase, d.u.phase_since, d.u.values_since()),
        (Phase::Downloading, 9, 2)
    );
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    assert_eq!((d.u.phase, d.u.values_since()), (Phase::Executing, 10));
}

#[test]
fn a_busy_device_is_reset_with_an_empty_uri_first() {
    let mut d = Drive::new();
    d.finish(1, ok(vec![rec("/5/0/3", Value::Integer(2))]));
    assert_eq!(d.u.phase, Phase::Resetting);
    assert!(d.wrote(""));
    d.finish(2, ok(vec![]));
    assert_eq!(d.u.phase, Phase::WritingUri);
    assert!(d.wrote(URI));
}

#[test]
fn an_integrity_failure_is_retried_then_fails_with_its_reason() {
    let mut d = Drive::new();
    d.until_downloading();
    for attempt in 1..=2 {
        d.u.values(
            100 * attempt,
            &[rec("/5/0/3", Value::Integer(0)), rec("/5/0/5", Value::Integer(5))],
            &LIMITS,
        );
        assert_eq!(d.u.phase, Phase::RetryWait, "retry {attempt}");
        d.take();
        assert!(d.wrote(""), "reset before the retry");
        d.finish(100 * attempt + 1, ok(vec![]));
        // The backoff doubles: 10 s, then 20 s.
        let wait = 10_000 << (attempt - 1);
        d.u.tick(100 * attempt + 2, &LIMITS);
        d.u.tick(100 * attempt + 2 + wait - 10, &LIMITS);
        assert_eq!(d.u.phase, Phase::RetryWait);
        d.u.tick(100 * attempt + 2 + wait, &LIMITS);
        assert_eq!(d.u.phase, Phase::WritingUri);
        d.take();
        assert!(d.wrote(URI));
        d.finish(100 * attempt + 3 + wait, ok(vec![]));
    }
    d.u.values(90_000, &[rec("/5/0/5", Value::Integer(5))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Failed);
    let reason = d.u.reason.as_deref().unwrap();
    assert!(
        reason.contains("integrity check failure") && reason.contains("2 retries"),
        "{reason}"
    );
}

#[test]
fn a_doom_loop_resets_the_device() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.doom_loop(50, &LIMITS);
    assert_eq!(d.u.phase, Phase::RetryWait);
    d.take();
    assert!(d.wrote(""));
    assert!(d.u.reason.as_deref().unwrap().contains("doom loop"));
}

#[test]
fn the_download_clock_stops_while_the_device_sleeps() {
    let mut d = Drive::new();
    d.until_downloading();
    // Silent (asleep, out of reach) for an hour: only its awake window counts.
    d.u.tick(3 + 3_600_000, &LIMITS);
    assert_eq!(d.u.phase, Phase::Downloading);
    // Heard again, and from then on awake and talking every 10 s: its
    // reachable time runs out 580 s later (20 s counted before it slept).
    let back = 3_600_003;
    d.u.seen(back, &LIMITS);
    let mut t = back;
    while d.u.phase == Phase::Downloading && t < back + 700_000 {
        t += 10_000;
        d.u.seen(t, &LIMITS);
        d.u.tick(t, &LIMITS);
    }
    assert_eq!(d.u.phase, Phase::RetryWait);
    assert!(
        (back + 580_000..=back + 590_000).contains(&t),
        "timed out at +{}",
        t - back
    );
    assert!(d.u.reason.as_deref().unwrap().contains("no Downloaded state"));
}

#[test]
fn a_device_that_never_comes_back_fails_after_the_update_timeout() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(11, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Updating);
    d.u.tick(11 + 300_000, &LIMITS);
    assert_eq!(d.u.phase, Phase::Updating);
    d.u.tick(11 + 300_001, &LIMITS);
    assert_eq!(d.u.phase, Phase::Failed);
    assert!(d.u.reason.as_deref().unwrap().contains("did not register again"));
}

#[test]
fn the_wrong_version_after_the_reboot_is_a_failure() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(11, ok(vec![]));
    d.u.registered(12, &LIMITS);
    d.take();
    d.finish(13, ok(vec![rec("/3/0/3", Value::String("1.9.0".into()))]));
    assert_eq!(d.u.phase, Phase::Failed);
    assert!(d.u.reason.as_deref().unwrap().contains("\"1.9.0\""));
}

#[test]
fn a_refused_uri_write_fails_with_the_device_code() {
    let mut d = Drive::new();
    d.finish(1, ok(vec![rec("/5/0/3", Value::Integer(0))]));
    assert_eq!(d.u.phase, Phase::WritingUri);
    d.finish(3, failed("4.04"));
    // A refusal may be of a copy of a write that went through: the
    // instance is read back, and still Idle it confirms the refusal.
    assert!(matches!(d.last(), OperationKind::Read { path } if path.to_string() == "/5/0"));
    d.finish(4, ok(vec![rec("/5/0/3", Value::Integer(0))]));
    assert_eq!(d.u.phase, Phase::Failed);
    let reason = d.u.reason.as_deref().unwrap();
    assert!(reason.contains("Package URI") && reason.contains("4.04"), "{reason}");
    // Nothing more is asked for, and late news changes nothing.
    assert!(d.u.take_operation().is_none());
    d.u.values(9, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Failed);
}

#[test]
fn cancel_writes_an_empty_uri_but_not_once_the_device_installs() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.cancel(10).unwrap();
    assert_eq!(d.u.phase, Phase::Cancelling);
    d.take();
    assert!(d.wrote(""));
    d.finish(11, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Cancelled);
    assert!(d.u.cancel(12).is_err());

    // Asked while an operation is out, it waits for that to end.
    let mut d = Drive::new();
    d.u.cancel(1).unwrap();
    assert_eq!(d.u.phase, Phase::Checking);
    d.finish(2, ok(vec![rec("/5/0/3", Value::Integer(0))]));
    assert_eq!(d.u.phase, Phase::Cancelling);
    assert!(d.wrote(""));

    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    assert!(d.u.cancel(11).is_err(), "Execute is on its way");
}

#[test]
fn only_the_awaited_operation_counts() {
    let mut d = Drive::new();
    let stale = d.u.waiting_for.unwrap() + 100;
    d.u.operation_finished(1, stale, &ok(vec![rec("/5/0/3", Value::Integer(0))]), &LIMITS);
    assert_eq!(d.u.phase, Phase::Checking);
}

#[test]
fn versions_compare_as_people_write_them() {
    assert!(same_version("v1.2.3", "1.2.3"));
    assert!(same_version("1_2_3", "1.2.3"));
    assert!(same_version("V1.2.3-RC1", "1.2.3_rc1"));
    assert!(!same_version("1.2.3", "1.2.4"));
    // A header's build number 0 is no build number.
    assert!(same_version("2.0.0+0", "2.0.0"));
    assert!(!same_version("2.0.0+1", "2.0.0"));
    assert!(update_result_reason(5).contains("integrity"));
    assert!(update_result_reason(42).contains("does not define"));
}

#[test]
fn an_update_survives_its_persisted_form() {
    let mut d = Drive::new();
    d.until_downloading();
    let json = serde_json::to_string(&d.u).unwrap();
    let back: Update = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d.u);
}

#[test]
fn a_package_uri_must_fit_the_devices_buffer() {
    let sha = "a".repeat(64);
    let token = "dXJuOmltZWk6MzU2OTM4MDM1NjQzODA5.1796000000.".to_string() + &"m".repeat(43);
    let ok = package_uri("https://fw.example.com/", &sha, "app-v2.0.0.signed.bin", &token).unwrap();
    assert!(
        ok.starts_with("https://fw.example.com/fw/aaaa") && ok.len() <= MAX_PACKAGE_URI,
        "{ok}"
    );
    let long = package_uri("https://fw.example.com", &sha, &"n".repeat(80), &token).unwrap_err();
    assert!(long.contains("254") && long.contains("image name"), "{long}");
}

fn protocols(list: &[i64], delivery: i64) -> Vec<Record> {
    let mut r: Vec<Record> = list
        .iter()
        .enumerate()
        .map(|(i, p)| rec(&format!("/5/0/8/{i}"), Value::Integer(*p)))
        .collect();
    r.push(rec("/5/0/3", Value::Integer(0)));
    r.push(rec("/5/0/9", Value::Integer(delivery)));
    r
}

#[test]
fn the_package_uri_follows_the_protocols_the_device_supports() {
    // HTTPS listed: the HTTPS URI.
    let mut d = Drive::new();
    d.finish(1, ok(protocols(&[0, 1, 3], 0)));
    assert!(d.wrote(URI));
    // CoAP(S) only: the URI on the LwM2M port.
    let mut d = Drive::new();
    d.finish(1, ok(protocols(&[0, 1], 2)));
    assert!(d.wrote(COAP_URI));
    // CoAP only, and no CoAP URI configured: a clear failure.
    let mut d = Drive::new();
    d.u.components[0].coap_uri = None;
    d.finish(1, ok(protocols(&[1], 0)));
    assert_eq!(d.u.phase, Phase::Failed);
    assert!(d.u.reason.as_deref().unwrap().contains("fw.coap_public_url"));
    // Push only: pull cannot serve it.
    let mut d = Drive::new();
    d.finish(1, ok(protocols(&[3], 1)));
    assert!(d.u.reason.as_deref().unwrap().contains("push only"));
}

/// A device whose registration ends mid-update is gone: the update fails
/// saying so, except while it reboots (its old registration may lapse
/// then; the update timeout decides).
#[test]
fn a_registration_that_ends_fails_the_update_except_while_rebooting() {
    let mut d = Drive::new();
    d.until_downloading();
    d.u.registration_ended(50, "expired");
    assert_eq!(d.u.phase, Phase::Failed);
    assert_eq!(
        d.u.reason.as_deref(),
        Some("the device's registration expired while the update was downloading")
    );
    assert_eq!(d.u.take_operation(), None);

    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(20, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(21, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Updating);
    d.u.registration_ended(30, "ended (De-register)");
    assert_eq!(d.u.phase, Phase::Updating, "rebooting");
    d.u.registered(40, &LIMITS);
    assert_eq!(d.u.phase, Phase::Verifying);
}

/// A device retried after an integrity failure still reports Update
/// Result 5 in its Observe answer, and that answer's values may be handled
/// after the URI write is queued: an old result, not this download's.
#[test]
fn the_last_downloads_result_is_not_taken_for_this_ones() {
    let mut d = Drive::new();
    let idle_after_failure = vec![rec("/5/0/3", Value::Integer(0)), rec("/5/0/5", Value::Integer(5))];
    d.finish(2, ok(idle_after_failure.clone()));
    assert_eq!(d.u.phase, Phase::WritingUri);
    d.u.values(3, &idle_after_failure, &LIMITS);
    assert_eq!(d.u.phase, Phase::WritingUri, "the Observe answer, handled late");
    d.finish(4, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Downloading);
    // Later still: the store's poll took the Observe and the write while
    // the event carrying the Observe's answer (received at 1, before the
    // write was decided at 2) waited in the broadcast.
    d.u.reported(5, 1, &idle_after_failure, &LIMITS);
    assert_eq!(d.u.phase, Phase::Downloading, "received before the URI was written");
    // A URI the device rejects at once: its notification after the 2.04.
    d.u.reported(
        6,
        5,
        &[rec("/5/0/3", Value::Integer(0)), rec("/5/0/5", Value::Integer(9))],
        &LIMITS,
    );
    assert_eq!(d.u.phase, Phase::RetryWait);
}

/// Object 33629 with an application and a modem instance, as nRF Connect
/// SDK's client reports it.
fn advanced(app_state: i64, modem_version: &str) -> Vec<Record> {
    vec![
        rec("/33629/0/3", Value::Integer(app_state)),
        rec("/33629/0/14", Value::String("application".into())),
        rec("/33629/0/15", Value::String("1.0.0".into())),
        rec("/33629/1/3", Value::Integer(0)),
        rec("/33629/1/14", Value::String("modem".into())),
        rec("/33629/1/15", Value::String(modem_version.into())),
    ]
}

const MODEM_URI: &str = "https://fw.example.com/fw/def/mfw_nrf9160_update_from_1.3.4_to_1.3.5.bin?t=x";

fn app_and_modem() -> Drive {
    let app = Component::new(ComponentKind::Application, URI.into(), None, "2.0.0".into());
    let mut modem = Component::new(ComponentKind::Modem, MODEM_URI.into(), None, "1.3.5".into());
    modem.base_version = Some("1.3.4".into());
    let mut d = Drive {
        u: Update::of(0, Carrier::Advanced, vec![app, modem]),
        next: 1,
        sent: Vec::new(),
    };
    d.take();
    d
}

fn wrote_at(d: &Drive, p: &str, uri: &str) -> bool {
    matches!(d.last(), OperationKind::Write { path, values, .. }
        if path.to_string() == p && values[0].value == uri)
}

/// One update moves application and modem (nRF Connect SDK's Advanced
/// Firmware Update): the object is read to find each image's instance by
/// its Component Name, both are downloaded in turn, the application's
/// Execute Update links the modem's instance (`0='</33629/1>'`, as
/// `update_arguments_parse` reads it), and each instance's Current Version
/// is checked after the reboot (the modem's `mfw_nrf9160_1.3.5` is 1.3.5).
#[test]
fn an_application_and_a_modem_image_are_installed_together_over_object_33629() {
    let mut d = app_and_modem();
    assert!(matches!(d.last(), OperationKind::Observe { path } if path.to_string() == "/33629"));
    d.finish(1, ok(advanced(0, "mfw_nrf9160_1.3.4")));
    assert!(wrote_at(&d, "/33629/0/1", URI));
    d.finish(3, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Downloading);
    // The modem's old result is not this download's.
    d.u.values(4, &[rec("/33629/1/5", Value::Integer(5))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Downloading);
    d.u.values(10, &[rec("/33629/0/3", Value::Integer(2))], &LIMITS);
    assert_eq!((d.u.phase, d.u.current), (Phase::WritingUri, 1));
    d.take();
    assert!(wrote_at(&d, "/33629/1/1", MODEM_URI));
    d.finish(11, ok(vec![]));
    d.u.values(20, &[rec("/33629/1/3", Value::Integer(2))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Executing);
    d.take();
    assert!(
        matches!(d.last(), OperationKind::Execute { path, args: Some(a) }
            if path.to_string() == "/33629/0/2" && a == "0='</33629/1>'"),
        "{:?}",
        d.last()
    );
    d.finish(21, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Updating);
    d.u.registered(40, &LIMITS);
    d.take();
    assert!(matches!(d.last(), OperationKind::Read { path } if path.to_string() == "/33629"));
    let mut after = advanced(0, "mfw_nrf9160_1.3.5");
    after[2] = rec("/33629/0/15", Value::String("v2.0.0".into()));
    d.finish(41, ok(after));
    assert_eq!((d.u.phase, d.u.reason.as_deref()), (Phase::Succeeded, None));
}

/// A modem that did not move fails the update, naming the component.
#[test]
fn a_component_left_on_its_old_version_fails_the_update_by_name() {
    let mut d = app_and_modem();
    d.finish(1, ok(advanced(0, "mfw_nrf9160_1.3.4")));
    d.finish(3, ok(vec![]));
    d.u.values(10, &[rec("/33629/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(11, ok(vec![]));
    d.u.values(20, &[rec("/33629/1/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(21, ok(vec![]));
    d.u.registered(40, &LIMITS);
    d.take();
    let mut after = advanced(0, "mfw_nrf9160_1.3.4");
    after[2] = rec("/33629/0/15", Value::String("2.0.0".into()));
    d.finish(41, ok(after));
    assert_eq!(d.u.phase, Phase::Failed);
    let why = d.u.reason.unwrap();
    assert!(
        why.starts_with("modem: the device reports firmware \"mfw_nrf9160_1.3.4\""),
        "{why}"
    );
}

/// A delta for another modem version than the device's is refused before
/// anything is written (it would fail, or worse, on the modem).
#[test]
fn a_modem_delta_for_another_base_is_refused() {
    let mut d = app_and_modem();
    d.finish(1, ok(advanced(0, "mfw_nrf9160_1.3.3")));
    assert_eq!(d.u.phase, Phase::Failed);
    assert_eq!(
        d.u.reason.as_deref(),
        Some("the modem runs \"mfw_nrf9160_1.3.3\"; this delta applies to \"1.3.4\" only")
    );
    assert_eq!(d.sent.len(), 1, "nothing but the Read went out");
}

/// A device whose 33629 has no instance for a component says which it has.
#[test]
fn a_device_without_the_component_names_those_it_has() {
    let mut d = app_and_modem();
    let only_app: Vec<Record> = advanced(0, "x").into_iter().filter(|r| r.path.ids()[1] == 0).collect();
    d.finish(1, ok(only_app));
    assert_eq!(d.u.phase, Phase::Failed);
    let why = d.u.reason.unwrap();
    assert!(
        why.contains("no Advanced Firmware Update (/33629) instance for the modem"),
        "{why}"
    );
    assert!(why.contains("0 \"application\""), "{why}");
}

/// A failed modem download retries the modem's instance, and names it;
/// a busy application instance is reset first; cancelling resets every
/// instance written so far.
#[test]
fn per_component_retry_reset_and_cancel() {
    let mut d = app_and_modem();
    d.finish(1, ok(advanced(1, "mfw_nrf9160_1.3.4")));
    assert_eq!(d.u.phase, Phase::Resetting);
    assert!(wrote_at(&d, "/33629/0/1", ""));
    d.finish(2, ok(vec![]));
    assert!(wrote_at(&d, "/33629/0/1", URI));
    d.finish(4, ok(vec![]));
    d.u.values(10, &[rec("/33629/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(11, ok(vec![]));
    d.u.values(
        20,
        &[
            rec("/33629/1/3", Value::Integer(0)),
            rec("/33629/1/5", Value::Integer(5)),
        ],
        &LIMITS,
    );
    assert_eq!(d.u.phase, Phase::RetryWait);
    assert!(d.u.reason.as_deref().unwrap().starts_with("modem: Update Result 5"));
    d.take();
    assert!(wrote_at(&d, "/33629/1/1", ""));
    d.finish(21, ok(vec![]));
    d.u.tick(21, &LIMITS); // the backoff starts
    d.u.tick(21 + LIMITS.retry_backoff_ms, &LIMITS);
    d.take();
    assert!(wrote_at(&d, "/33629/1/1", MODEM_URI));
    d.finish(22 + LIMITS.retry_backoff_ms, ok(vec![]));
    d.u.cancel(30 + LIMITS.retry_backoff_ms).unwrap();
    d.take();
    assert!(wrote_at(&d, "/33629/0/1", ""));
    d.finish(31 + LIMITS.retry_backoff_ms, ok(vec![]));
    assert!(wrote_at(&d, "/33629/1/1", ""));
    d.finish(32 + LIMITS.retry_backoff_ms, ok(vec![]));
    assert_eq!(d.u.phase, Phase::Cancelled);
}

#[test]
fn components_carriers_and_modem_versions() {
    assert_eq!(
        Carrier::of_registration("</>;rt=\"oma.lwm2m\",</1/0>,</3/0>,</33629/0>,</33629/1>"),
        Carrier::Advanced
    );
    assert_eq!(
        Carrier::of_registration("</1/0>,</3/0>,</5/0>,</33629>"),
        Carrier::Advanced
    );
    assert_eq!(
        Carrier::of_registration("</1/0>,</3/0>,</5/0>,</336290/0>"),
        Carrier::Object5
    );
    let modem = Component::new(ComponentKind::Modem, URI.into(), None, "1.3.5".into());
    assert!(modem.reached("mfw_nrf9160_1.3.5"));
    assert!(!modem.reached("mfw_nrf9160_1.3.4"));
    let app = Component::new(ComponentKind::Application, URI.into(), None, "1.3.5".into());
    assert!(!app.reached("mfw_nrf9160_1.3.5"), "only the modem compares its number");
    assert_eq!(ComponentKind::of_image_type("modem-delta"), ComponentKind::Modem);
    assert_eq!(
        ComponentKind::of_image_type("mcuboot-application"),
        ComponentKind::Application
    );
}

/// A server restart sends a Package URI write or an Execute again whose
/// answer it had not stored; the device, already downloading or already
/// running the image, refuses the copy with 4.05. Reading the device back
/// shows the first copy went through, and the update goes on.
#[test]
fn a_refused_copy_of_a_write_or_execute_that_went_through_is_not_a_failure() {
    let mut d = Drive::new();
    d.finish(1, ok(vec![rec("/5/0/3", Value::Integer(0))]));
    d.finish(3, failed("4.05"));
    d.finish(4, ok(vec![rec("/5/0/3", Value::Integer(1))]));
    assert_eq!(d.u.phase, Phase::Downloading);
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    assert_eq!(d.u.phase, Phase::Executing);
    d.take();
    d.finish(11, failed("4.05"));
    assert_eq!(d.u.phase, Phase::Verifying);
    assert!(matches!(d.last(), OperationKind::Read { path } if path.to_string() == "/3/0/3"));
    d.finish(12, ok(vec![rec("/3/0/3", Value::String("2.0.0".into()))]));
    assert_eq!((d.u.phase, d.u.reason.as_deref()), (Phase::Succeeded, None));

    // Refused, and the device still runs the old version: the refusal.
    let mut d = Drive::new();
    d.until_downloading();
    d.u.values(10, &[rec("/5/0/3", Value::Integer(2))], &LIMITS);
    d.take();
    d.finish(11, failed("4.05"));
    d.finish(12, ok(vec![rec("/3/0/3", Value::String("1.0.0".into()))]));
    assert_eq!(d.u.phase, Phase::Failed);
    let reason = d.u.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("executing Update (/5/0/2) failed") && reason.contains("4.05"),
        "{reason}"
    );
}
