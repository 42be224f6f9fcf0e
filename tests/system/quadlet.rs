//! The Quadlet units in `quadlet/` against the keys Podman's Quadlet
//! generator accepts, without Podman here (Debian 12's 4.3 has no
//! generator): each `[Container]`, `[Volume]` and `[Network]` key must be
//! in the generator's list, no other section may appear besides systemd's
//! own, and those systemd sections pass `systemd-analyze verify`.
//!
//! The lists are the `SupportedKeys` of `groupsInfo` in Podman's
//! `pkg/systemd/quadlet/quadlet.go` (Podman 5.6; podman-container.unit(5),
//! podman-volume.unit(5), podman-network.unit(5)). The units use only keys
//! Podman 4.6 already had.

use std::path::Path;

const PODMAN: &str = "5.6";

const CONTAINER_KEYS: &[&str] = &[
    "AddCapability",
    "AddDevice",
    "AddHost",
    "Annotation",
    "AutoUpdate",
    "CgroupsMode",
    "ContainerName",
    "ContainersConfModule",
    "DNS",
    "DNSOption",
    "DNSSearch",
    "DropCapability",
    "Environment",
    "EnvironmentFile",
    "EnvironmentHost",
    "Entrypoint",
    "Exec",
    "ExposeHostPort",
    "GIDMap",
    "GlobalArgs",
    "Group",
    "GroupAdd",
    "HealthCmd",
    "HealthInterval",
    "HealthOnFailure",
    "HealthLogDestination",
    "HealthMaxLogCount",
    "HealthMaxLogSize",
    "HealthRetries",
    "HealthStartPeriod",
    "HealthStartupCmd",
    "HealthStartupInterval",
    "HealthStartupRetries",
    "HealthStartupSuccess",
    "HealthStartupTimeout",
    "HealthTimeout",
    "HostName",
    "IP6",
    "IP",
    "Image",
    "Label",
    "LogDriver",
    "LogOpt",
    "Mask",
    "Memory",
    "Mount",
    "Network",
    "NetworkAlias",
    "NoNewPrivileges",
    "Notify",
    "PidsLimit",
    "Pod",
    "PodmanArgs",
    "PublishPort",
    "Pull",
    "ReadOnly",
    "ReadOnlyTmpfs",
    "ReloadCmd",
    "ReloadSignal",
    "RemapGid",
    "RemapUid",
    "RemapUidSize",
    "RemapUsers",
    "Retry",
    "RetryDelay",
    "Rootfs",
    "RunInit",
    "SeccompProfile",
    "Secret",
    "SecurityLabelDisable",
    "SecurityLabelFileType",
    "SecurityLabelLevel",
    "SecurityLabelNested",
    "SecurityLabelType",
    "ServiceName",
    "ShmSize",
    "StopSignal",
    "StartWithPod",
    "StopTimeout",
    "SubGIDMap",
    "SubUIDMap",
    "Sysctl",
    "Timezone",
    "Tmpfs",
    "UIDMap",
    "Ulimit",
    "Unmask",
    "User",
    "UserNS",
    "VolatileTmp",
    "Volume",
    "WorkingDir",
];

const VOLUME_KEYS: &[&str] = &[
    "ContainersConfModule",
    "Copy",
    "Device",
    "Driver",
    "GlobalArgs",
    "Group",
    "Image",
    "Label",
    "Options",
    "PodmanArgs",
    "ServiceName",
    "Type",
    "User",
    "VolumeName",
];

const NETWORK_KEYS: &[&str] = &[
    "Label",
    "DNS",
    "ContainersConfModule",
    "GlobalArgs",
    "DisableDNS",
    "Driver",
    "Gateway",
    "IPAMDriver",
    "IPRange",
    "IPv6",
    "InterfaceName",
    "Internal",
    "NetworkName",
    "NetworkDeleteOnStop",
    "Options",
    "ServiceName",
    "Subnet",
    "PodmanArgs",
];

/// Sections systemd itself reads, passed through by the generator.
const SYSTEMD_SECTIONS: &[&str] = &["Unit", "Service", "Install"];

/// `(section, key, value)` of each assignment (systemd.syntax(7): `#` and
/// `;` comment lines, `[Section]` headers, `Key=Value`).
fn parse(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut section = None;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: not Key=Value: {line}", n + 1));
        };
        let Some(s) = &section else {
            return Err(format!("line {}: {k} before any section", n + 1));
        };
        out.push((s.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

/// What is wrong with unit `name` (its extension names its kind).
fn problems(name: &str, text: &str) -> Vec<String> {
    let (own, keys) = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("container") => ("Container", CONTAINER_KEYS),
        Some("volume") => ("Volume", VOLUME_KEYS),
        Some("network") => ("Network", NETWORK_KEYS),
        other => return vec![format!("{name}: not a Quadlet unit kind this test knows ({other:?})")],
    };
    let entries = match parse(text) {
        Ok(e) => e,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut found = Vec::new();
    if !entries.iter().any(|(s, _, _)| s == own) {
        found.push(format!("{name}: no [{own}] section"));
    }
    for (section, key, _) in &entries {
        if section == own {
            if !keys.contains(&key.as_str()) {
                found.push(format!("{name}: [{own}] {key}= is not a Quadlet key (Podman {PODMAN})"));
            }
        } else if !SYSTEMD_SECTIONS.contains(&section.as_str()) {
            found.push(format!("{name}: [{section}] is neither [{own}] nor a systemd section"));
        }
    }
    // The systemd sections, as the generated service would carry them.
    let mut service = String::new();
    for s in SYSTEMD_SECTIONS {
        service.push_str(&format!("[{s}]\n"));
        if *s == "Service" {
            service.push_str("ExecStart=/bin/true\n");
        }
        for (_, k, v) in entries.iter().filter(|(section, _, _)| section == s) {
            service.push_str(&format!("{k}={}\n", v.replace("%h", "/home/flownexus")));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.service", name.replace('.', "-")));
    std::fs::write(&path, service).unwrap();
    let (ok, said) = super::systemd::systemd_analyze_verify(&path);
    if !ok || !said.trim().is_empty() {
        found.push(format!("{name}: systemd-analyze verify: {said}"));
    }
    found
}

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("quadlet").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_quadlet_unit_uses_only_keys_podman_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("quadlet");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["flownexus.container", "flownexus.network", "flownexus.volume"]);
    for name in &names {
        let found = problems(name, &unit(name));
        assert!(found.is_empty(), "{found:#?}");
    }
}

#[test]
fn the_container_unit_says_what_production_needs() {
    let entries = parse(&unit("flownexus.container")).unwrap();
    let values = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Container" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("Notify"), ["true"]);
    assert_eq!(
        values("Network"),
        ["flownexus.network"],
        "the container uses the network unit"
    );
    assert_eq!(
        values("Volume"),
        [
            "flownexus.volume:/var/lib/flownexus:Z",
            "%h/.config/flownexus/secrets:/run/secrets/flownexus:ro,Z",
            "%h/.local/share/flownexus/tls:/etc/flownexus/tls:ro,Z",
            "/run/systemd/journal/socket:/run/systemd/journal/socket",
        ],
        "the volume unit, the secrets and certificate deploy/deploy.sh writes, and the journal's socket"
    );
    // The deploy user's 0600 files are readable as the image's user.
    assert_eq!(values("UserNS"), ["keep-id:uid=10001,gid=10001"]);
    let deploy = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/deploy.sh")).unwrap();
    for written in [
        "secrets_dir=\"$conf_dir/secrets\"",
        "conf_dir=\"$config_home/flownexus\"",
        "tls_dir=\"$state_dir/tls\"",
        "state_dir=\"$home/.local/share/flownexus\"",
        "FLOWNEXUS_FW_CERT_FILE=/etc/flownexus/tls/fullchain.pem",
        "FLOWNEXUS_HTTP_SECRET_FILE=/run/secrets/flownexus/http-secret.key",
    ] {
        assert!(deploy.contains(written), "deploy.sh and the unit agree on {written}");
    }
    assert!(values("Environment").contains(&"FLOWNEXUS_LOG_TARGET=journal"));
    assert_eq!(values("HealthCmd"), ["/usr/local/bin/flownexus healthcheck"]);
    assert!(values("AutoUpdate").is_empty(), "images change only through the deploy");
    assert_eq!(values("EnvironmentFile").len(), 1);
    let ports = values("PublishPort");
    for p in ["5683:5683/udp", "5684:5684/udp"] {
        assert!(ports.contains(&p), "{p}: {ports:?}");
    }
    // The firmware server (behind nginx, trusting its PROXY header), the
    // dashboard and the metrics: loopback only.
    assert!(values("Environment").contains(&"FLOWNEXUS_FW_PROXY_PROTOCOL=true"));
    for p in ["8443:8443/tcp", "8000:8000/tcp", "9464:9464/tcp"] {
        assert!(ports.contains(&format!("127.0.0.1:{p}").as_str()), "{p}: {ports:?}");
        assert!(!ports.contains(&p), "{p} published on every address");
    }
    assert!(
        entries
            .iter()
            .any(|(s, k, v)| s == "Service" && k == "Restart" && v == "on-failure")
    );
}

/// The check fails where the generator would: a misspelled section, a key
/// Quadlet does not have, a systemd key systemd does not have.
#[test]
fn a_wrong_section_or_key_fails_the_check() {
    let good = unit("flownexus.container");
    let cases = [
        (good.replace("[Container]", "[Containr]"), "[Containr] is neither"),
        (good.replace("Notify=true", "Notfy=true"), "Notfy= is not a Quadlet key"),
        (
            good.replace("Restart=on-failure", "Restrat=on-failure"),
            "Unknown key 'Restrat'",
        ),
    ];
    for (text, want) in cases {
        let found = problems("flownexus.container", &text);
        assert!(found.iter().any(|p| p.contains(want)), "{want}: {found:#?}");
    }
    let volume = unit("flownexus.volume").replace("VolumeName", "Name");
    assert!(!problems("flownexus.volume", &volume).is_empty());
}

/// What can be checked of `deploy/Containerfile` without a container
/// engine (none here runs Quadlet, and no registry is reachable for its
/// base images): two stages, the runtime as the unprivileged uid the unit
/// maps the deploy user to, the data in a volume, the healthcheck inside,
/// nothing site-specific baked in, every COPY source present, and build
/// output kept out of the context.
#[test]
fn the_containerfile_builds_from_a_checkout_and_bakes_in_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    // Instructions, with continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let instr = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).filter(|r| r.starts_with(' ')).map(str::trim))
            .collect()
    };
    assert_eq!(
        instr("FROM").len(),
        3,
        "a build stage, a docs stage and a runtime stage"
    );
    assert_eq!(instr("USER"), ["10001:10001"], "the runtime runs unprivileged");
    let unit = parse(&unit("flownexus.container")).unwrap();
    assert!(
        unit.iter()
            .any(|(_, k, v)| k == "UserNS" && v.contains("uid=10001,gid=10001")),
        "the unit maps the deploy user to the image's uid"
    );
    assert_eq!(instr("VOLUME"), ["/var/lib/flownexus"]);
    assert!(
        instr("HEALTHCHECK")
            .iter()
            .any(|h| h.contains("\"/usr/local/bin/flownexus\", \"healthcheck\"")),
        "{text}"
    );
    for env in instr("ENV").iter().chain(instr("ARG").iter()) {
        assert!(
            !env.contains("URL") && !env.contains("example") && !env.contains("SECRET"),
            "site settings come at run time, not from the image: {env}"
        );
    }
    for copy in instr("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY {src}: not in the checkout");
        }
    }
    let ignore = std::fs::read_to_string(root.join(".containerignore")).unwrap();
    for kept_out in ["target", ".git", "data"] {
        assert!(
            ignore.lines().any(|l| l.trim() == kept_out),
            "{kept_out} kept out of the context"
        );
    }
}
