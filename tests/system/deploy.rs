//! `deploy/deploy.sh` end to end in a temporary root (`--root`), with
//! stand-ins only for what needs a real host: `podman` (its one-shot
//! containers run the real `flownexus backup` / `restore` on a real SQLite
//! file standing for the data volume), `systemctl`, `loginctl` and nginx's
//! reload (`nginx -t` is Debian's real nginx on the rendered files). Each
//! stand-in records its calls.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use flownexus::store::Store;
use flownexus::store::tags::Tags;

/// The stand-ins, sharing one state directory ($FAKE_STATE): the calls
/// log, the images built, the release "running", the unit directory.
pub(super) const PODMAN: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "podman $*" >> "$FAKE_STATE/calls.log"
case "$1" in
  version) echo 5.6.0 ;;
  build) shift; while [ "$1" != --tag ]; do shift; done; echo "$2" >> "$FAKE_STATE/images" ;;
  pull) echo "$2" >> "$FAKE_STATE/images" ;;
  tag) echo "$3" >> "$FAKE_STATE/images" ;;
  image) [ "$2" = exists ] && grep -qx "$3" "$FAKE_STATE/images" 2>/dev/null ;;
  exec)
    shift; while [ "${1#-}" != "$1" ]; do shift; done
    [ "$1 $2" = "flownexus flownexus" ] || { echo "podman stand-in: exec into $1: $2" >&2; exit 2; }
    shift 2
    running=$(cat "$FAKE_STATE/running" 2>/dev/null || true)
    [ -n "$running" ] || { echo "Error: no container with name or ID \"flownexus\" found" >&2; exit 125; }
    # The healthcheck inside the running container: healthy unless the
    # running image is the one the test made bad; any other command is the
    # real binary on the volume.
    if [ "$1" = healthcheck ]; then [ "$running" != "${BAD_IMAGE:-}" ]; exit; fi
    exec "$FAKE_FLOWNEXUS" --data-dir "$FAKE_VOLUME" "$@" ;;
  create) grep -qx "$2" "$FAKE_STATE/images"; echo "cid-$2" ;;
  cp)
    # The image's documentation (its docs stage), naming the image.
    image=${2%:*}; image=${image#cid-}
    [ "${2##*:}" = /usr/share/doc/flownexus/html/. ] || { echo "podman stand-in: cp $2" >&2; exit 2; }
    echo "<html>documentation of $image</html>" > "$3/index.html" ;;
  rm) ;;
  run)
    # A one-shot container of flownexus on the data volume: the real binary
    # on the test's data directory, /backups mapped to the host directory.
    shift; backups=""; args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --volume) case "$2" in *:/backups:*) backups=${2%%:/backups:*} ;; esac; shift 2 ;;
        --env-file|--userns) shift 2 ;;
        --rm) shift ;;
        localhost/flownexus:*) grep -qx "$1" "$FAKE_STATE/images"; shift; args=("$@"); break ;;
        *) echo "podman stand-in: unexpected $1" >&2; exit 2 ;;
      esac
    done
    file=${args[1]/#\/backups/$backups}
    exec "$FAKE_FLOWNEXUS" --data-dir "$FAKE_VOLUME" "${args[0]}" "$file" ;;
  *) echo "podman stand-in: unexpected $*" >&2; exit 2 ;;
esac
"#;

pub(super) const SYSTEMCTL: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "systemctl $*" >> "$FAKE_STATE/calls.log"
case "$*" in
  "--user restart flownexus.service")
    image=$(sed -n 's/^Image=//p' "$FAKE_UNIT_DIR/flownexus.container")
    echo "$image" > "$FAKE_STATE/running"
    # The bad release writes before it fails: the rollback must undo it.
    if [ "$image" = "${BAD_IMAGE:-}" ]; then
      sqlite3 "$FAKE_VOLUME/flownexus.sqlite3" "INSERT INTO devices (endpoint, created_at) VALUES ('written-by-bad-release', 0)"
    fi ;;
  "--user stop flownexus.service") rm -f "$FAKE_STATE/running" ;;
esac
"#;

/// Lingering as logind keeps it: `enable-linger` (root's) is remembered,
/// `show-user` reports it.
pub(super) const LOGINCTL: &str = r#"#!/usr/bin/env bash
echo "loginctl $*" >> "$FAKE_STATE/calls.log"
case "$1" in
  enable-linger) echo "$2" >> "$FAKE_STATE/linger" ;;
  show-user) grep -qx "$2" "$FAKE_STATE/linger" 2>/dev/null && echo yes || echo no ;;
esac
"#;

/// `nginx -t` is the real nginx (with a prefix in the test's tree); a
/// reload is only recorded.
const NGINX: &str = r#"#!/usr/bin/env bash
echo "nginx $*" >> "$FAKE_STATE/calls.log"
if [ "$1" = -s ]; then exit 0; fi
exec /usr/sbin/nginx -p "$FAKE_NGINX_PREFIX" "$@"
"#;

/// The calls the stand-ins logged in `state` since the last look.
pub(super) fn take_calls(state: &Path) -> Vec<String> {
    let path = state.join("calls.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines().map(str::to_string).collect()
}

/// Each stand-in as an executable script in `bin` (put first on PATH).
pub(super) fn install_stand_ins(bin: &Path, stand_ins: &[(&str, &str)]) {
    for (name, text) in stand_ins {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    volume: PathBuf,
    nginx_conf: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let root = base.join("root");
        let (bin, state, volume, prefix) = (
            base.join("bin"),
            base.join("state"),
            base.join("volume"),
            base.join("nginx"),
        );
        for d in [&bin, &state, &volume, &prefix] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Root's setup enabled lingering for the user running the deploy.
        let me = Command::new("id").arg("-un").output().unwrap().stdout;
        std::fs::write(state.join("linger"), me).unwrap();
        install_stand_ins(
            &bin,
            &[
                ("podman", PODMAN),
                ("systemctl", SYSTEMCTL),
                ("loginctl", LOGINCTL),
                ("nginx", NGINX),
            ],
        );
        let lineage = root.join("etc/letsencrypt/live/example.test");
        std::fs::create_dir_all(&lineage).unwrap();
        super::nginx::certificates(&lineage);
        // The host's main nginx.conf, as the operator guide has it: the
        // stream file at the top level, the sites inside http.
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let files = root.join("etc/nginx/flownexus");
        let nginx_conf = prefix.join("nginx.conf");
        std::fs::write(
            &nginx_conf,
            format!(
                "{user}load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 pid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 include {f}/flownexus-stream.conf;\n\
                 http {{\n  access_log off;\n  include {f}/flownexus-http.conf;\n}}\n",
                user = if as_root { "user root;\n" } else { "" },
                p = prefix.display(),
                f = files.display(),
            ),
        )
        .unwrap();
        Host {
            _dir: dir,
            root,
            bin,
            state,
            volume,
            nginx_conf,
        }
    }

    fn deploy(&self, revision: &str, bad_image: Option<&str>, extra: &[&str]) -> (bool, String) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(manifest.join("deploy/deploy.sh"))
            .args(["--root", self.root.to_str().unwrap()])
            .args(["--domain", "example.test", "--cert-name", "example.test"])
            .args(["--health-timeout", "2"])
            .args(extra)
            .env(
                "PATH",
                format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("HOME", "/home")
            .env("REVISION", revision)
            .env("HEALTH_POLL_S", "0.2")
            .env("NGINX_CONF", &self.nginx_conf)
            .env("FAKE_STATE", &self.state)
            .env("FAKE_VOLUME", &self.volume)
            .env("FAKE_UNIT_DIR", self.root.join("home/.config/containers/systemd"))
            .env("FAKE_NGINX_PREFIX", self.nginx_conf.parent().unwrap())
            .env("FAKE_FLOWNEXUS", env!("CARGO_BIN_EXE_flownexus"))
            .env("BAD_IMAGE", bad_image.unwrap_or(""))
            .output()
            .unwrap();
        super::outcome(&out)
    }

    /// The stand-ins' calls since the last look.
    fn calls(&self) -> Vec<String> {
        take_calls(&self.state)
    }

    fn home(&self, rel: &str) -> PathBuf {
        self.root.join("home").join(rel)
    }

    fn endpoints(&self) -> Vec<String> {
        Store::open(&self.volume.join("flownexus.sqlite3"))
            .unwrap()
            .endpoints()
            .unwrap()
    }

    fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.home(".local/share/flownexus/backups"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }
}

/// Every file under `dir` and its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

pub(super) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn deploy_script_sets_up_deploys_backs_up_and_rolls_back() {
    let host = Host::new();
    {
        let s = Store::open(&host.volume.join("flownexus.sqlite3")).unwrap();
        for i in 0..5 {
            s.add_device(&format!("urn:imei:35{i:013}"), None, &Tags::default())
                .unwrap();
        }
    }

    // Setup only: directories, secrets, nginx checked and reloaded,
    // lingering, the volume and network units; no image, no restart.
    let (ok, out) = host.deploy("rev1", None, &["--setup-only"]);
    assert!(ok, "{out}");
    let calls = host.calls();
    assert!(calls.iter().any(|c| c.starts_with("nginx -t -c ")), "{calls:?}");
    assert!(calls.contains(&"nginx -s reload".to_string()), "{calls:?}");
    assert!(
        calls.iter().any(|c| c.starts_with("loginctl show-user ")),
        "lingering is checked: {calls:?}"
    );
    assert!(calls.contains(&"systemctl --user daemon-reload".to_string()));
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("podman build") || c.contains("restart"))
    );
    let env_file = host.home(".config/flownexus/flownexus.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("FLOWNEXUS_MODE=production\n"));
    assert!(env.contains("FLOWNEXUS_HTTP_PUBLIC_URL=https://dashboard.example.test\n"));
    assert!(env.contains("FLOWNEXUS_FW_PUBLIC_URL=https://fw.example.test\n"));
    let secrets = [
        env_file.clone(),
        host.home(".config/flownexus/secrets/http-secret.key"),
        host.home(".config/flownexus/secrets/fw-token.key"),
        host.home(".local/share/flownexus/tls/privkey.pem"),
    ];
    for s in &secrets {
        assert_eq!(mode(s), 0o600, "{}", s.display());
    }
    let key = std::fs::read_to_string(&secrets[1]).unwrap();
    assert!(
        key.len() >= 43 && !key.contains(['+', '/', '=', '\n']),
        "base64url: {key}"
    );
    let secret_bytes: Vec<Vec<u8>> = secrets.iter().map(|s| std::fs::read(s).unwrap()).collect();
    let units = host.home(".config/containers/systemd");
    assert!(units.join("flownexus.volume").exists() && units.join("flownexus.network").exists());
    assert!(
        !units.join("flownexus.container").exists(),
        "no image yet, no container unit"
    );
    let apex = std::fs::read_to_string(host.root.join("var/www/flownexus/apex/index.html")).unwrap();
    assert!(
        apex.contains("https://dashboard.example.test/") && !apex.contains('@'),
        "{apex}"
    );
    let nginx_files = host.root.join("etc/nginx/flownexus");
    assert!(
        std::fs::read_to_string(nginx_files.join("flownexus-stream.conf"))
            .unwrap()
            .contains("fw.example.test")
    );

    // First release: built by revision, started, healthy; nothing to back up.
    let (ok, out) = host.deploy("rev1", None, &[]);
    assert!(ok, "{out}");
    let calls = host.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("podman build --tag localhost/flownexus:rev1 ")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c == "nginx -s reload"),
        "unchanged nginx is not reloaded"
    );
    assert!(calls.contains(&"systemctl --user restart flownexus.service".to_string()));
    assert!(
        std::fs::read_to_string(units.join("flownexus.container"))
            .unwrap()
            .contains("\nImage=localhost/flownexus:rev1\n")
    );
    assert!(out.contains("first release: nothing to back up"), "{out}");
    // The documentation the image carries is docs.<domain>'s.
    let docs = host.root.join("var/www/flownexus/docs/index.html");
    assert_eq!(
        std::fs::read_to_string(&docs).unwrap(),
        "<html>documentation of localhost/flownexus:rev1</html>\n"
    );
    // The secrets are the first run's, byte for byte.
    for (s, bytes) in secrets.iter().zip(&secret_bytes) {
        assert_eq!(&std::fs::read(s).unwrap(), bytes, "{}", s.display());
    }

    // A release that never becomes healthy: backed up first (the running
    // release's own `flownexus backup`), then rolled back to rev1 and to
    // the backup, exit non-zero.
    let before = host.endpoints();
    let (ok, out) = host.deploy("rev2", Some("localhost/flownexus:rev2"), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("rolled back to rev1 (healthy)"), "{out}");
    let calls = host.calls();
    let order: Vec<&str> = calls
        .iter()
        .filter_map(|c| {
            [
                ("podman run", "backup"),
                ("podman build", "build"),
                ("systemctl --user restart", "restart"),
                ("systemctl --user stop", "stop"),
            ]
            .iter()
            .find(|(p, _)| c.starts_with(p))
            .map(|(_, name)| {
                if *name == "backup" && c.contains(" restore ") {
                    "restore"
                } else {
                    *name
                }
            })
        })
        .collect();
    assert_eq!(
        order,
        ["backup", "build", "restart", "stop", "restore", "restart"],
        "{calls:?}"
    );
    assert_eq!(host.endpoints(), before, "the bad release's write is undone");
    assert!(
        std::fs::read_to_string(&docs).unwrap().contains("flownexus:rev1<"),
        "the rolled-back release's documentation stays"
    );
    assert!(
        std::fs::read_to_string(units.join("flownexus.container"))
            .unwrap()
            .contains("\nImage=localhost/flownexus:rev1\n")
    );
    assert_eq!(
        std::fs::read_to_string(host.home(".local/share/flownexus/release")).unwrap(),
        "rev1\n"
    );
    let backups = host.backups();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let verdict = Command::new("sqlite3")
        .args(["-readonly", backups[0].to_str().unwrap(), "PRAGMA integrity_check;"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&verdict.stdout).trim(), "ok");

    // A healthy release after it; only the newest backup is kept.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new backup name
    let (ok, out) = host.deploy("rev3", None, &["--keep-backups", "1"]);
    assert!(ok, "{out}");
    assert_eq!(host.backups().len(), 1);
    assert_ne!(host.backups(), backups, "the older backup went");
    assert_eq!(
        std::fs::read_to_string(host.home(".local/share/flownexus/release")).unwrap(),
        "rev3\n"
    );
    host.calls();

    // --dry-run changes nothing and runs nothing but look-ups.
    let snapshot = tree(&host.root);
    let (ok, out) = host.deploy("rev4", None, &["--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("would"), "{out}");
    assert_eq!(tree(&host.root), snapshot);
    let calls = host.calls();
    assert!(
        calls.iter().all(|c| c.starts_with("podman version")
            || c.starts_with("podman image exists")
            || c.starts_with("loginctl show-user")),
        "{calls:?}"
    );

    // Without lingering the units would stop at logout: refused, naming
    // what root runs.
    std::fs::write(host.state.join("linger"), "someone-else\n").unwrap();
    let (ok, out) = host.deploy("rev4", None, &[]);
    assert!(!ok && out.contains("loginctl enable-linger"), "{out}");

    // Bad input is refused before anything happens.
    let (ok, out) = host.deploy("rev5", None, &["--domain", "example.test;evil"]);
    assert!(!ok && out.contains("not a domain name"), "{out}");
    let (ok, out) = host.deploy("rev5", None, &["--bogus"]);
    assert!(!ok && out.contains("unknown option --bogus"), "{out}");
}

/// The options `deploy/deploy.sh` parses.
fn script_options() -> Vec<String> {
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/deploy.sh")).unwrap();
    script
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let opt = l.split(')').next()?;
            (l.starts_with("--") && !opt.contains(' ')).then(|| opt.to_string())
        })
        .collect()
}

/// The workflows run what exists: CI the README's test command, the
/// deploy the script with flags the script parses, over SSH with the host
/// key pinned (never learnt on first use).
#[test]
fn workflows_run_the_test_command_and_the_deploy_script_with_its_own_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::fs::read_to_string(root.join(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains("run: bash .ci/run"), "{ci}");
    assert!(
        std::fs::read_to_string(root.join(".ci/run"))
            .unwrap()
            .contains("make test")
    );

    let options = script_options();
    for o in ["--domain", "--cert-name", "--setup-only", "--dry-run", "--root"] {
        assert!(options.iter().any(|x| x == o), "deploy.sh parses {o}: {options:?}");
    }
    let deploy = std::fs::read_to_string(root.join(".github/workflows/deploy.yml")).unwrap();
    let runs: Vec<&str> = deploy
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("deploy/deploy.sh"))
        .collect();
    assert_eq!(runs.len(), 1, "{deploy}");
    let (_, args) = runs[0].split_once("deploy/deploy.sh").unwrap();
    let used: Vec<String> = args
        .split(|c: char| c.is_whitespace() || c == '"')
        .filter(|t| t.starts_with("--"))
        .map(str::to_string)
        .collect();
    assert!(used.contains(&"--domain".to_string()) && used.contains(&"--cert-name".to_string()));
    for flag in &used {
        assert!(
            options.contains(flag),
            "the workflow passes {flag}, which deploy.sh does not parse"
        );
    }
    // The host key comes from a secret, checked strictly.
    assert!(deploy.contains("StrictHostKeyChecking=yes"));
    assert!(deploy.contains("secrets.DEPLOY_KNOWN_HOSTS"));
    assert!(
        !deploy
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("ssh-keyscan")),
        "no trust on first use"
    );
    // A flag the script does not know fails, so the comparison means something.
    let (ok, out) = {
        let out = Command::new(root.join("deploy/deploy.sh"))
            .arg("--no-such-flag")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(!ok && out.contains("unknown option --no-such-flag"), "{out}");
}

/// The image builds from what its Containerfile copies: every file of this
/// checkout that rustc or build.rs read for this very build (cargo's
/// dependency files beside the test binary) is under a `COPY` of the build
/// stage and not excluded by `.containerignore`; the docs stage copies the
/// book, built by the mdBook version the Makefile pins.
#[test]
fn the_image_build_copies_every_file_the_compiler_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let containerfile = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    // Sources of each stage's COPY lines from the build context.
    let mut stage = String::new();
    let mut copied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in containerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["FROM", .., "AS", name] => stage = name.to_string(),
            ["FROM", ..] => stage = "final".into(),
            ["COPY", rest @ ..] if !rest.iter().any(|w| w.starts_with("--from")) => {
                let (_, sources) = rest.split_last().unwrap();
                copied
                    .entry(stage.clone())
                    .or_default()
                    .extend(sources.iter().map(|s| s.trim_end_matches('/').to_string()));
            }
            _ => {}
        }
    }
    let ignored: Vec<String> = std::fs::read_to_string(root.join(".containerignore"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();

    // What cargo recorded for this build: the library's and the build
    // script's dependency files (stale ones from older builds may name
    // files since removed; only files that exist count).
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let mut dep_files: Vec<PathBuf> = std::fs::read_dir(&deps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("flownexus-") && n.ends_with(".d")
        })
        .collect();
    let build = deps.parent().unwrap().join("build");
    for e in std::fs::read_dir(&build).unwrap() {
        let dir = e.unwrap().path();
        if dir.file_name().unwrap().to_string_lossy().starts_with("flownexus-") {
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|x| x == "d") {
                    dep_files.push(f);
                }
            }
        }
    }
    let mut read = std::collections::BTreeSet::new();
    for f in &dep_files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let Some((_, inputs)) = line.split_once(": ") else {
                continue;
            };
            for input in inputs.split_whitespace() {
                let p = Path::new(input);
                let rel = p.strip_prefix(root).unwrap_or(p);
                if rel.is_relative() && !rel.starts_with("target") && root.join(rel).is_file() {
                    read.insert(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    for must in ["build.rs", "src/lib.rs", "askama.toml", "src/web/templates/base.html"] {
        assert!(read.contains(must), "cargo's dependency files name {must}: {read:?}");
    }
    let build_stage = &copied["build"];
    for file in &read {
        assert!(
            build_stage
                .iter()
                .any(|c| file == c || file.starts_with(&format!("{c}/"))),
            "{file} is read by the build but not copied into the image's build stage ({build_stage:?})"
        );
        let top = file.split('/').next().unwrap();
        assert!(
            !ignored.iter().any(|i| i == top),
            "{file} is excluded by .containerignore"
        );
    }
    assert_eq!(copied["docs"], ["docs"], "the docs stage copies the book");
    assert!(!ignored.contains(&"docs".to_string()));
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    let pinned = |text: &str| {
        text.split("install mdbook --version ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    assert_eq!(pinned(&containerfile), pinned(&makefile));
    assert!(pinned(&makefile).is_some());
}
