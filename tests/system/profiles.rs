//! Device profiles: what the operators' profiles list is asked of each
//! device at its registration, by tag, once per waiting operation.

use std::time::Duration;

use flownexus::lwm2m::operation::{OperationKind, OperationState};
use flownexus::lwm2m::profile::Step;
use flownexus::store::tags::Tags;
use flownexus::users::Role;

use super::web::{Keys, http, start};
use super::{device, fleet, flownexus_cli, store, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_run_at_registration_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let bearer = format!("Bearer {}", Keys::new(dir.path()).token("operator", Role::Operator));
    let send = |method: &'static str, target: String, body: &'static str| {
        let bearer = bearer.clone();
        async move {
            http(
                addr,
                method,
                &target,
                &[("Authorization", &bearer), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
    };
    let post = |body: &'static str| send("POST", "/api/v1/profiles".into(), body);
    // Every installation starts with the onboarding profile (issue 25):
    // the Device object read, its firmware version observed.
    let s = store(dir.path());
    let onboarding = s.profiles().unwrap();
    assert_eq!(onboarding.len(), 1);
    assert_eq!(
        (onboarding[0].name.as_str(), onboarding[0].tag.as_deref()),
        ("onboarding", None)
    );
    assert_eq!(onboarding[0].created_by, "flownexus");
    let lines: Vec<String> = onboarding[0].steps.iter().map(Step::to_line).collect();
    assert_eq!(lines, ["read /3/0", "observe /3/0/3"]);
    let r = post(
        r#"{"name":"north sensors","tag":"north","steps":[{"op":"read","path":"/3/0"},{"op":"observe","path":"/3303/0/5700","pmin":1,"pmax":5}]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["tag"], "north");
    let r = post(r#"{"name":"identity","steps":[{"op":"read","path":"/3/0/0"}]}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Edited: all of it replaced; a name another profile has, an unknown
    // id and bad steps are refused and change nothing.
    let identity = format!("/api/v1/profiles/{}", r.json()["id"]);
    let r = send(
        "PUT",
        identity.clone(),
        r#"{"name":"identity","steps":[{"op":"read","path":"/3/0"}],"deadline_s":600}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["deadline_s"].as_u64(), r.json()["steps"][0]["path"].as_str()),
        (Some(600), Some("/3/0"))
    );
    for (target, body, status) in [
        (
            identity.clone(),
            r#"{"name":"onboarding","steps":[{"op":"read","path":"/3/0"}]}"#,
            409,
        ),
        (
            "/api/v1/profiles/999".to_string(),
            r#"{"name":"x","steps":[{"op":"read","path":"/3/0"}]}"#,
            404,
        ),
        (identity.clone(), r#"{"name":"identity","steps":[]}"#, 422),
    ] {
        let r = send("PUT", target, body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
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
    assert_eq!(s.profiles().unwrap().len(), 3);
    assert_eq!(
        s.profiles()
            .unwrap()
            .iter()
            .find(|p| p.name == "identity")
            .unwrap()
            .deadline_s,
        600
    );

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
        done("p-north").len() == 4 && done("p-south").len() == 2
    })
    .await;
    let mut north = done("p-north");
    north.sort();
    // One Read of /3/0 although three profiles list it; the attributes
    // before the observation.
    assert_eq!(
        north,
        [
            "observe /3/0/3",
            "observe /3303/0/5700",
            "read /3/0",
            "write-attributes /3303/0/5700"
        ]
    );
    let mut south = done("p-south");
    south.sort();
    assert_eq!(south, ["observe /3/0/3", "read /3/0"]);
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
    assert_eq!(
        s.observed_paths("p-south").unwrap().into_iter().collect::<Vec<_>>(),
        ["/3/0/3".parse().unwrap()]
    );
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
    // The onboarding profile (1) is removed like any other, and stays
    // removed when the database is opened again.
    let (ok, out, err) = flownexus_cli(data, &["profile", "remove", "2"], "");
    assert!(ok && out.contains("removed profile 2 (radio)"), "{out}{err}");
    let (ok, out, err) = flownexus_cli(data, &["profile", "remove", "1"], "");
    assert!(ok && out.contains("removed profile 1 (onboarding)"), "{out}{err}");
    let (ok, _, err) = flownexus_cli(data, &["profile", "remove", "1"], "");
    assert!(!ok && err.contains("profile 1"), "{err}");
    assert!(store(dir.path()).profiles().unwrap().is_empty());
}
