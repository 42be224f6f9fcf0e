//! The operator guide's host setup, run as written: the shell commands of
//! its sections "Once, as root" and "First deploy, as the deploy user",
//! in their order, in a scratch root (`--root`). Stand-ins only for what
//! would change this machine or needs the outside world (`apt-get`, user
//! management, `runuser`, `podman`, `systemctl`, `loginctl`, `certbot`,
//! nginx's reload); the real nginx checks the configuration on Debian's
//! stock `nginx.conf`, the real `visudo` the sudoers file, the real `git`
//! clones the checkout, the real flownexus answers `podman exec`, and the
//! firewall file is loaded by the real `nft` into a network namespace and
//! probed over a veth pair.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flownexus::store::Store;

/// Users as the password database and logind would keep them, in files
/// of the scratch root.
const USERADD: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "useradd $*" >> "$FAKE_STATE/calls.log"
name=${!#}
echo "$name:x:1001:1001:flownexus deploys:/home/$name:/bin/bash" >> "$FAKE_ROOT/etc/passwd"
mkdir -p "$FAKE_ROOT/home/$name"
"#;

const USERMOD: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "usermod $*" >> "$FAKE_STATE/calls.log"
case "$1" in
  --add-subuids) echo "${3}:${2%-*}:65536" >> "$FAKE_ROOT/etc/subuid" ;;
  --add-subgids) echo "${3}:${2%-*}:65536" >> "$FAKE_ROOT/etc/subgid" ;;
  *) echo "usermod stand-in: unexpected $*" >&2; exit 2 ;;
esac
"#;

const GETENT: &str = r#"#!/usr/bin/env bash
[ "$1" = passwd ] || exec /usr/bin/getent "$@"
grep "^$2:" "$FAKE_ROOT/etc/passwd"
"#;

/// `id -gn USER` for the scratch root's user; everything else is the real
/// `id`, except that `runuser` made this process the deploy user.
const ID: &str = r#"#!/usr/bin/env bash
if [ "$1" = -gn ] && [ -n "${2:-}" ] && grep -q "^$2:" "$FAKE_ROOT/etc/passwd"; then echo "$2"; exit 0; fi
if [ "$*" = -un ] && [ -n "${FAKE_USER:-}" ]; then echo "$FAKE_USER"; exit 0; fi
exec /usr/bin/id "$@"
"#;

/// Ownership is recorded, not applied: the scratch root's user does not
/// exist on this machine.
const CHOWN: &str = r#"#!/usr/bin/env bash
echo "chown $*" >> "$FAKE_STATE/calls.log"
"#;

const INSTALL: &str = r#"#!/usr/bin/env bash
args=() owner="" paths=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) owner=$2; shift 2 ;;
    -g) shift 2 ;;
    -m) args+=("$1" "$2"); shift 2 ;;
    -*) args+=("$1"); shift ;;
    *) args+=("$1"); paths+=("$1"); shift ;;
  esac
done
if [ -n "$owner" ]; then
  for p in "${paths[@]}"; do echo "install -o $owner $p" >> "$FAKE_STATE/calls.log"; done
fi
exec /usr/bin/install "${args[@]}"
"#;

const RUNUSER: &str = r#"#!/usr/bin/env bash
echo "runuser $*" >> "$FAKE_STATE/calls.log"
[ "$1" = -u ] && [ "$3" = -- ] || { echo "runuser stand-in: $*" >&2; exit 2; }
export FAKE_USER=$2
shift 3
exec "$@"
"#;

const APT_GET: &str = r#"#!/usr/bin/env bash
echo "apt-get $*" >> "$FAKE_STATE/calls.log"
"#;

const SSHD: &str = r#"#!/usr/bin/env bash
[ "$1" = -T ] && printf 'port 2222\naddressfamily any\n'
"#;

/// certbot issues into the scratch root's lineage (the test's own CA)
/// and records its renewal settings as certbot does.
const CERTBOT: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "certbot $*" >> "$FAKE_STATE/calls.log"
name=""; auth=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --cert-name) name=${args[$((i + 1))]} ;;
    --webroot) auth=webroot ;;
    --standalone) auth=standalone ;;
  esac
done
mkdir -p "$FAKE_ROOT/etc/letsencrypt/renewal"
case "$1" in
  certonly)
    mkdir -p "$FAKE_ROOT/etc/letsencrypt/live/$name"
    cp "$FAKE_CERTS/fullchain.pem" "$FAKE_CERTS/privkey.pem" "$FAKE_ROOT/etc/letsencrypt/live/$name/" ;;
  reconfigure) ;;
  *) echo "certbot stand-in: unexpected $1" >&2; exit 2 ;;
esac
printf '[renewalparams]\nauthenticator = %s\n' "$auth" > "$FAKE_ROOT/etc/letsencrypt/renewal/$name.conf"
"#;

/// `nginx -t` is the real nginx on the scratch root's nginx.conf (its
/// absolute include paths moved into the scratch root); a reload is
/// recorded.
const NGINX: &str = r#"#!/usr/bin/env bash
echo "nginx $*" >> "$FAKE_STATE/calls.log"
[ "$1" = -s ] && exit 0
[ "$*" = -t ] || { echo "nginx stand-in: $*" >&2; exit 2; }
sed -e "s|/etc/nginx/flownexus/|$FAKE_ROOT/etc/nginx/flownexus/|" \
    -e "s|/etc/nginx/sites-enabled/|$FAKE_ROOT/etc/nginx/sites-enabled/|" \
    -e "s|^pid .*|pid $FAKE_STATE/nginx.pid;|" \
    "$FAKE_ROOT/etc/nginx/nginx.conf" > "$FAKE_STATE/nginx.conf"
exec /usr/sbin/nginx -t -q -c "$FAKE_STATE/nginx.conf"
"#;

struct Host {
    _dir: tempfile::TempDir,
    /// Root's checkout, as the guide clones it: this working tree as a git
    /// repository of its own (CI's may come without `.git`, and a local
    /// one's HEAD may not hold the files being tested).
    checkout: PathBuf,
    root: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    volume: PathBuf,
    certs: PathBuf,
}

impl Host {
    fn new(debian: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let (root, bin, state, volume, certs) = (
            base.join("root"),
            base.join("bin"),
            base.join("state"),
            base.join("volume"),
            base.join("certs"),
        );
        for d in [&bin, &state, &volume, &certs] {
            std::fs::create_dir_all(d).unwrap();
        }
        super::nginx::certificates(&certs);
        let checkout = base.join("checkout");
        checkout_of_this_tree(&checkout);
        // The database the running server would have made in the volume.
        Store::open(&volume.join("flownexus.sqlite3")).unwrap();
        super::deploy::install_stand_ins(
            &bin,
            &[
                ("podman", super::deploy::PODMAN),
                ("systemctl", super::deploy::SYSTEMCTL),
                ("loginctl", super::deploy::LOGINCTL),
                ("useradd", USERADD),
                ("usermod", USERMOD),
                ("getent", GETENT),
                ("id", ID),
                ("chown", CHOWN),
                ("install", INSTALL),
                ("runuser", RUNUSER),
                ("apt-get", APT_GET),
                ("sshd", SSHD),
                ("certbot", CERTBOT),
                ("nginx", NGINX),
            ],
        );
        // A fresh Debian: its stock nginx.conf and nftables.conf (from the
        // packages installed here), the default site, no users but root.
        let etc = root.join("etc");
        for d in ["nginx/sites-enabled", "letsencrypt"] {
            std::fs::create_dir_all(etc.join(d)).unwrap();
        }
        std::fs::copy("/etc/nginx/nginx.conf", etc.join("nginx/nginx.conf")).unwrap();
        std::fs::write(
            etc.join("nginx/sites-enabled/default"),
            "server { listen 80 default_server; root /var/www/html; }\n",
        )
        .unwrap();
        std::fs::copy("/etc/nftables.conf", etc.join("nftables.conf")).unwrap();
        std::fs::write(
            etc.join("os-release"),
            format!("PRETTY_NAME=\"Debian GNU/Linux {debian}\"\nID=debian\nVERSION_ID=\"{debian}\"\n"),
        )
        .unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        Host {
            _dir: dir,
            checkout,
            root,
            bin,
            state,
            volume,
            certs,
        }
    }

    /// One command line of the guide, run as the guide's user would (root
    /// in this checkout; the deploy user in its own checkout), with
    /// `--root` added and example.com replaced by the test's domain.
    fn run(&self, line: &str, as_deploy: bool, stdin: &str) -> (bool, String) {
        let line = line.replace("example.com", "example.test");
        let mut words = line.split_whitespace();
        let program = words.next().unwrap();
        let mut args: Vec<String> = words.map(str::to_string).collect();
        let repo = &self.checkout;
        let (cwd, path) = if as_deploy {
            let checkout = self.root.join("home/deploy/flownexus");
            (checkout.clone(), checkout.join(program))
        } else {
            (repo.to_path_buf(), repo.join(program))
        };
        let exe = if program.starts_with("deploy/") {
            args.extend(["--root".to_string(), self.root.display().to_string()]);
            path
        } else {
            PathBuf::from(program)
        };
        let mut cmd = Command::new(exe);
        cmd.args(&args)
            .current_dir(&cwd)
            .env(
                "PATH",
                format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("FAKE_ROOT", &self.root)
            .env("FAKE_STATE", &self.state)
            .env("FAKE_VOLUME", &self.volume)
            .env("FAKE_CERTS", &self.certs)
            .env(
                "FAKE_UNIT_DIR",
                self.root.join("home/deploy/.config/containers/systemd"),
            )
            .env("FAKE_FLOWNEXUS", env!("CARGO_BIN_EXE_flownexus"))
            .env("HEALTH_POLL_S", "0.2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if as_deploy {
            cmd.env("HOME", "/home/deploy").env("FAKE_USER", "deploy");
        }
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).unwrap();
        }
        super::outcome(&child.wait_with_output().unwrap())
    }

    /// The stand-ins' calls since the last look.
    fn calls(&self) -> Vec<String> {
        super::deploy::take_calls(&self.state)
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

/// This working tree's files (without build output, tools, local data
/// and the fuzz corpora, none of which a deploy reads) committed in a
/// fresh git repository at `dest`.
fn checkout_of_this_tree(dest: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let skip = ["target", ".git", ".venv", "data", "node_modules", "output", "fuzz"];
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if skip.contains(&name.as_str()) {
                continue;
            }
            let to = dest.join(p.strip_prefix(repo).unwrap());
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&p, &to).unwrap();
            }
        }
    }
    super::sh(
        dest,
        "git init -q && git add -A && git -c user.name=test -c user.email=test@example.test commit -qm tree",
    );
}

/// The shell blocks of a section of the operator guide, one command per
/// line (continuations joined, comments dropped).
fn guide_commands(section: &str) -> Vec<String> {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operator-guide.md")).unwrap();
    let start = guide
        .find(section)
        .unwrap_or_else(|| panic!("the guide has no {section}"));
    let text = &guide[start..];
    let end = text[section.len()..]
        .find("\n## ")
        .map_or(text.len(), |i| i + section.len());
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text[..end].lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = line.split(" #").next().unwrap().trim_end();
        if let Some(head) = line.strip_suffix('\\') {
            pending += head;
            continue;
        }
        pending += line;
        if !pending.trim().is_empty() {
            commands.push(pending.trim().to_string());
        }
        pending.clear();
    }
    commands
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix}: {calls:#?}"))
}

#[test]
fn the_operator_guide_sets_up_a_fresh_debian_host_as_written() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads the firewall into network namespaces and runs nginx -t on Debian's stock \
         nginx.conf: it needs root (make test runs as root on CI)"
    );
    let host = Host::new("13");

    // Root's section: every command is one this test runs or knows.
    let root_commands = guide_commands("## 2. Once, as root");
    let mut ran_setup = false;
    for c in &root_commands {
        if c.starts_with("deploy/setup-host.sh ") {
            let (ok, out) = host.run(c, false, "");
            assert!(ok, "{c}:\n{out}");
            ran_setup = true;
        } else {
            assert!(
                c.starts_with("apt-get update && apt-get install -y git") || c.starts_with("git clone "),
                "the guide has a root command this test does not know: {c}"
            );
        }
    }
    assert!(ran_setup, "{root_commands:?}");
    let calls = host.calls();

    // 1. Packages, in one install.
    let install = &calls[position(&calls, "apt-get install")];
    for p in [
        "podman",
        "uidmap",
        "passt",
        "dbus-user-session",
        "systemd-container",
        "nginx",
        "libnginx-mod-stream",
        "certbot",
        "nftables",
        "sudo",
        "sqlite3",
    ] {
        assert!(install.split_whitespace().any(|w| w == p), "{p} in {install}");
    }
    // 2. The user, its subordinate ids, lingering (before its deploy
    // checks it).
    assert!(host.file("etc/passwd").contains("\ndeploy:"));
    assert!(host.file("etc/subuid").starts_with("deploy:100000:65536"));
    assert!(host.file("etc/subgid").starts_with("deploy:100000:65536"));
    let linger = position(&calls, "loginctl enable-linger deploy");
    assert!(linger < position(&calls, "loginctl show-user deploy"));
    // 3. Its directories, and exactly nginx's check and reload as root
    // (real visudo passed it inside the script).
    for d in ["etc/nginx/flownexus", "var/www/flownexus"] {
        let owned = format!("install -o deploy {}", host.root.join(d).display());
        assert!(calls.contains(&owned), "{owned}: {calls:#?}");
    }
    let sudoers = host.root.join("etc/sudoers.d/flownexus");
    assert_eq!(super::deploy::mode(&sudoers), 0o440);
    assert!(
        host.file("etc/sudoers.d/flownexus")
            .contains("\ndeploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /usr/sbin/nginx -s reload\n")
    );
    // 4. The firewall: persisted, SSH's port from sshd kept open; its
    // behaviour is probed below.
    let nft = host.file("etc/nftables.d/flownexus.nft");
    assert!(
        nft.contains("policy drop;") && nft.contains("tcp dport { 2222 } accept"),
        "{nft}"
    );
    assert!(
        host.file("etc/nftables.conf")
            .contains("\ninclude \"/etc/nftables.d/flownexus.nft\"\n")
    );
    assert!(calls.contains(&"systemctl enable --now nftables.service".to_string()));
    // 5. nginx up on port 80 before certbot asks by webroot; the default
    // site gone; the includes in place once.
    assert!(!host.root.join("etc/nginx/sites-enabled/default").exists());
    let started = position(&calls, "systemctl reload-or-restart nginx.service");
    let certbot = position(&calls, "certbot certonly");
    assert!(started < certbot, "{calls:#?}");
    assert!(
        calls[certbot].contains(" --webroot -w /var/www/letsencrypt --cert-name example.test ")
            && calls[certbot].contains("-d fw.example.test")
            && calls[certbot].contains("--email ops@example.test"),
        "{}",
        calls[certbot]
    );
    assert!(!calls.iter().any(|c| c.contains("--standalone")));
    let conf = host.file("etc/nginx/nginx.conf");
    assert_eq!(
        conf.matches("include /etc/nginx/flownexus/flownexus-stream.conf;")
            .count(),
        1
    );
    assert_eq!(
        conf.matches("include /etc/nginx/flownexus/flownexus-http.conf;")
            .count(),
        1
    );
    let http_block = &conf[conf.find("\nhttp {").unwrap()..];
    assert!(
        http_block.find("flownexus-http.conf").unwrap() < http_block.find("\n}").unwrap(),
        "the sites are included inside http {{ }}"
    );
    // 6. The hook, with the user written in, ran: the deploy user has the
    // certificate, owner-only.
    let hook = host.file("etc/letsencrypt/renewal-hooks/deploy/flownexus");
    assert!(hook.contains("\nuser=${FLOWNEXUS_DEPLOY_USER:-deploy}\n"), "{hook}");
    let copied = host.root.join("home/deploy/.local/share/flownexus/tls/privkey.pem");
    assert_eq!(super::deploy::mode(&copied), 0o600);
    assert_eq!(
        std::fs::read(&copied).unwrap(),
        std::fs::read(host.certs.join("privkey.pem")).unwrap()
    );
    // 7. The deploy user's setup ran in its own checkout, as that user,
    // after nginx was up: the full configuration is rendered and reloaded.
    let setup = position(&calls, "runuser -u deploy -- env HOME=/home/deploy");
    assert!(calls[setup].contains("deploy/deploy.sh --domain example.test --cert-name example.test --setup-only"));
    assert!(position(&calls, "nginx -s reload") > started);
    assert!(
        host.file("etc/nginx/flownexus/flownexus-stream.conf")
            .contains("ssl_preread on;")
    );
    assert!(host.root.join("home/deploy/flownexus/.git").is_dir());

    // The deploy user's section, in order.
    let deploy_commands = guide_commands("## 3. First deploy, as the deploy user");
    let mut deployed = false;
    for c in &deploy_commands {
        if c.starts_with("deploy/deploy.sh ") {
            let before = dir_snapshot(&host.root);
            let (ok, out) = host.run(c, true, "");
            assert!(ok, "{c}:\n{out}");
            if c.contains("--dry-run") {
                assert_eq!(dir_snapshot(&host.root), before, "--dry-run changed files");
            } else {
                assert!(out.contains("is up and healthy"), "{out}");
                deployed = true;
            }
        } else if c.starts_with("podman exec ") {
            let (ok, out) = host.run(c, true, "a long admin password\n");
            assert!(ok, "{c}:\n{out}");
        } else {
            // The tunnel runs on the operator's machine (browser.rs tests
            // the dashboard through one).
            assert!(
                ["machinectl shell deploy@", "cd ~/flownexus"].contains(&c.as_str()) || c.starts_with("ssh -L "),
                "the guide has a command this test does not know: {c}"
            );
        }
    }
    assert!(deployed, "{deploy_commands:?}");
    let users = Store::open(&host.volume.join("flownexus.sqlite3"))
        .unwrap()
        .users()
        .unwrap();
    assert!(
        users.iter().any(|u| u.name == "alice" && u.role.as_str() == "admin"),
        "{users:?}"
    );
    assert!(
        host.file("var/www/flownexus/docs/index.html")
            .contains("documentation of localhost/flownexus:")
    );
    host.calls();

    // Root's script again: nothing to change, no second certificate.
    let setup_line = root_commands
        .iter()
        .find(|c| c.starts_with("deploy/setup-host.sh"))
        .unwrap();
    let (ok, out) = host.run(setup_line, false, "");
    assert!(ok, "{out}");
    assert!(!out.contains("wrote ") && !out.contains("created user"), "{out}");
    let calls = host.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("certbot") || c.starts_with("useradd")),
        "{calls:#?}"
    );
    assert_eq!(host.file("etc/nginx/nginx.conf"), conf);

    // A lineage an operator issued with --standalone (the old guide) is
    // moved to webroot renewals.
    std::fs::write(
        host.root.join("etc/letsencrypt/renewal/example.test.conf"),
        "[renewalparams]\nauthenticator = standalone\n",
    )
    .unwrap();
    let (ok, out) = host.run(setup_line, false, "");
    assert!(ok && out.contains("now renews by webroot"), "{out}");
    assert!(
        host.file("etc/letsencrypt/renewal/example.test.conf")
            .contains("authenticator = webroot")
    );

    // The firewall as the kernel applies it.
    probe_firewall(&host.root.join("etc/nftables.conf"), &host.root);
}

/// Debian 12 is refused before anything is installed; bad input too.
#[test]
fn setup_host_refuses_debian_12_and_bad_input() {
    let host = Host::new("12");
    let (ok, out) = host.run(
        "deploy/setup-host.sh --domain example.com --cert-name example.com --email ops@example.com",
        false,
        "",
    );
    assert!(!ok && out.contains("Debian 13 (trixie) or newer"), "{out}");
    assert!(host.calls().is_empty(), "nothing ran");
    for (args, says) in [
        ("--domain 'a;b' --cert-name x --email a@b.c", "not a domain name"),
        ("--domain a.b --cert-name x --email nobody", "not an e-mail address"),
        (
            "--domain a.b --cert-name x --email a@b.c --ssh-port 70000",
            "not a port",
        ),
        (
            "--domain a.b --cert-name x --email a@b.c --user Bad_User",
            "not a user name",
        ),
        ("--domain a.b --cert-name x", "--email is required"),
    ] {
        let (ok, out) = host.run(&format!("deploy/setup-host.sh {args}"), false, "");
        assert!(!ok && out.contains(says), "{args}: {out}");
    }
}

fn dir_snapshot(dir: &Path) -> BTreeSet<(PathBuf, Vec<u8>)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.insert((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

/// Runs `f` on a thread that has entered the network namespace `ns`;
/// sockets it creates stay in that namespace.
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace file descriptor; only this thread moves.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns {path}"
        );
        f()
    })
    .join()
    .unwrap()
}

fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces (and with them the veth pair) however the test
/// ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Loads `nftables_conf` (its include moved into `root`) into a fresh
/// "server" namespace, then from a "client" namespace over a veth pair:
/// SSH (2222), 80, 443 connect; the dashboard's 8000 does not, though
/// something listens there; 5683/5684 answer over UDP, another UDP port
/// does not; the server's own outgoing connection gets its replies.
fn probe_firewall(nftables_conf: &Path, root: &Path) {
    let id = format!("{}{}", std::process::id() % 100_000, rand_suffix());
    let (server, client) = (format!("fnx-s{id}"), format!("fnx-c{id}"));
    let _cleanup = Namespaces(vec![server.clone(), client.clone()]);
    ip(&format!("netns add {server}"));
    ip(&format!("netns add {client}"));
    ip(&format!(
        "link add vs{id} netns {server} type veth peer name vc{id} netns {client}"
    ));
    ip(&format!("-n {server} addr add 10.99.0.1/24 dev vs{id}"));
    ip(&format!("-n {client} addr add 10.99.0.2/24 dev vc{id}"));
    for (ns, dev) in [(&server, format!("vs{id}")), (&client, format!("vc{id}"))] {
        ip(&format!("-n {ns} link set {dev} up"));
        ip(&format!("-n {ns} link set lo up"));
    }
    let conf = std::fs::read_to_string(nftables_conf)
        .unwrap()
        .replace("\"/etc/nftables.d/", &format!("\"{}/etc/nftables.d/", root.display()));
    let file = root.join("nftables-probe.conf");
    std::fs::write(&file, conf).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &server, "nft", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));

    // The server: listeners on the open ports and on the dashboard's, UDP
    // echoes on the LwM2M ports and one more.
    let (tcp, udp) = in_namespace(&server, || {
        let tcp: Vec<std::net::TcpListener> = [2222u16, 80, 443, 8000]
            .iter()
            .map(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).unwrap())
            .collect();
        let udp: Vec<std::net::UdpSocket> = [5683u16, 5684, 9999]
            .iter()
            .map(|p| std::net::UdpSocket::bind(("0.0.0.0", *p)).unwrap())
            .collect();
        (tcp, udp)
    });
    for s in udp {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    let client_listener = in_namespace(&client, || std::net::TcpListener::bind("10.99.0.2:7000").unwrap());
    let results = in_namespace(&client, || {
        let server = |p: u16| std::net::SocketAddr::from(([10, 99, 0, 1], p));
        let connects =
            |p: u16, wait: u64| std::net::TcpStream::connect_timeout(&server(p), Duration::from_secs(wait)).is_ok();
        let echoes = |p: u16, wait: u64| {
            let s = std::net::UdpSocket::bind("10.99.0.2:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(wait))).unwrap();
            s.send_to(b"ping", server(p)).unwrap();
            let mut buf = [0u8; 8];
            s.recv_from(&mut buf).is_ok()
        };
        // Open ports get a generous wait; closed ones a short one (a busy
        // machine can only make them look more closed).
        vec![
            ("tcp 2222 (ssh)", connects(2222, 20), true),
            ("tcp 80", connects(80, 20), true),
            ("tcp 443", connects(443, 20), true),
            ("tcp 8000 (dashboard)", connects(8000, 2), false),
            ("udp 5683", echoes(5683, 20), true),
            ("udp 5684", echoes(5684, 20), true),
            ("udp 9999", echoes(9999, 2), false),
        ]
    });
    for (what, got, want) in results {
        assert_eq!(got, want, "{what}: open is {want}");
    }
    // Replies to the server's own connections come back in.
    let outgoing = in_namespace(&server, || {
        std::net::TcpStream::connect_timeout(&"10.99.0.2:7000".parse().unwrap(), Duration::from_secs(20)).is_ok()
    });
    assert!(outgoing, "the server's own connection out");
    drop((tcp, client_listener));
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
