//! Device profiles: what the operators' profiles list is asked of each
//! device at its registration, by tag, once per waiting operation.

use std::time::Duration;

use flownexus::lwm2m::operation::{OperationKind, OperationState};
use flownexus::store::tags::Tags;
use flownexus::users::Role;

use super::web::{Keys, http, start};
use super::{device, fleet, flownexus_cli, store, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_run_at_registration_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let bearer = format!("Bearer {}", Keys::new(dir.path()).token("operator", Role::Operator));
    let post = |body: &'static str| {
        let bearer = bearer.clone();
        async move {
            http(
                addr,
                "POST",
                "/api/v1/profiles",
                &[("Authorization", &bearer), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
    };
    let r = post(
        r#"{"name":"north sensors","tag":"north","steps":[{"op":"read","path":"/3/0"},{"op":"observe","path":"/3303/0/5700","pmin":1,"pmax":5}]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["tag"], "north");
    let r = post(r#"{"name":"identity","steps":[{"op":"read","path":"/3/0"}]}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Refused, naming why; nothing stored.
    for bad in [
        r#"{"name":"x","steps":[]}"#,
        r#"{"name":"x","steps":[{"op":"observe","path":"/3/0/9","pmin":60,"pmax":5}]}"#,
        r#"{"name":"x","steps":[{"op":"execute","path":"/3/0/4"}]}"#,
        r#"{"name":"identity","steps":[{"op":"read","path":"/1/0"}]}"#,
    ] {
        let r = post(bad).await;
        assert!((400..500).contains(&r.status), "{bad}: {} {}", r.status, r.text());
    }
    let s = store(dir.path());
    assert_eq!(s.profiles().unwrap().len(), 2);

    s.add_device("p-north", None, &Tags::parse("north").unwrap()).unwrap();
    s.add_device("p-south", None, &Tags::parse("south").unwrap()).unwrap();
    let _fleet = fleet(&running, vec![device("p-north"), device("p-south")]).await;
    let done = |ep: &str| {
        s.operations_of(ep, 20)
            .unwrap()
            .into_iter()
            .filter(|o| o.state == OperationState::Succeeded)
            .map(|o| format!("{} {}", o.kind.name(), o.kind.path()))
            .collect::<Vec<_>>()
    };
    wait_for("the north device's profile", Duration::from_secs(20), || {
        done("p-north").len() == 3 && done("p-south").len() == 1
    })
    .await;
    let mut north = done("p-north");
    north.sort();
    // One Read of /3/0 although two profiles list it; the attributes
    // before the observation.
    assert_eq!(
        north,
        ["observe /3303/0/5700", "read /3/0", "write-attributes /3303/0/5700"]
    );
    assert_eq!(done("p-south"), ["read /3/0"]);
    let ops = s.operations_of("p-north", 20).unwrap();
    let at = |name: &str| ops.iter().position(|o| o.kind.name() == name).unwrap();
    assert!(
        at("write-attributes") > at("observe"),
        "newest first: attributes queued before the Observe"
    );
    assert!(matches!(
        &ops[at("write-attributes")].kind,
        OperationKind::WriteAttributes { attributes, .. } if attributes == &["pmin=1", "pmax=5"]
    ));
    assert!(
        s.observed_paths("p-north")
            .unwrap()
            .contains(&"/3303/0/5700".parse().unwrap())
    );
    assert!(s.observed_paths("p-south").unwrap().is_empty());
    // The firmware version is known without anyone asking.
    running.flush().await;
    assert!(s.device("p-south").unwrap().firmware_version.is_some());
    running.stop().await;
}

/// The same from the command line: added, listed, refused with the line
/// at fault, removed.
#[test]
fn profiles_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // The database a server would have made.
    drop(store(dir.path()));
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = flownexus_cli(
        data,
        &[
            "profile",
            "add",
            "--name",
            "radio",
            "--tag",
            "north",
            "--step",
            "read /4/0",
            "--step",
            "observe /4/0/2 pmin=60 pmax=3600",
        ],
        "",
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"tag\": \"north\""), "{out}");
    let (ok, out, err) = flownexus_cli(data, &["profile", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("radio")
            && out.contains("tag north")
            && out.contains("read /4/0; observe /4/0/2 pmin=60 pmax=3600"),
        "{out}"
    );
    let (ok, _, err) = flownexus_cli(
        data,
        &[
            "profile",
            "add",
            "--name",
            "x",
            "--step",
            "read /3/0",
            "--step",
            "write /1/0/1",
        ],
        "",
    );
    assert!(!ok && err.contains("line 2: `write`"), "{err}");
    let (ok, out, err) = flownexus_cli(data, &["profile", "remove", "1"], "");
    assert!(ok && out.contains("removed profile 1 (radio)"), "{out}{err}");
    let (ok, _, err) = flownexus_cli(data, &["profile", "remove", "1"], "");
    assert!(!ok && err.contains("profile 1"), "{err}");
}
