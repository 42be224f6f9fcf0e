//! The configuration reference, `docs/configuration.md`, rendered from the
//! config tree: every key's environment name and default (development's,
//! and production's where it differs) come from the code, its meaning from
//! the table below. A test fails when a key has no meaning, a meaning has
//! no key, or the file in the repository differs from the rendering
//! (`FLOWNEXUS_BLESS=1 cargo test --lib` rewrites it).

use super::{Config, FILE_ONLY_KEYS, Mode, env_name, get_path};

/// (key, what its default says when it is unset, meaning), in the order
/// the reference lists them.
const KEYS: &[(&str, &str, &str)] = &[
    ("data_dir", "", "database, runtime file; created with mode 0700"),
    ("mode", "", "`production` refuses a relative `data_dir`"),
    (
        "coap.enabled",
        "",
        "plain CoAP/UDP for devices; may be turned off when `coaps.enabled` (at least one must be on). Endpoints with a PSK are refused (4.03) on plain CoAP either way",
    ),
    ("coap.listen", "", "CoAP/UDP address"),
    ("coap.ack_timeout_ms", "", "ACK_TIMEOUT (RFC 7252 §4.8)"),
    ("coap.ack_random_factor", "", "ACK_RANDOM_FACTOR"),
    ("coap.max_retransmit", "", "MAX_RETRANSMIT"),
    ("coap.nstart", "", "outstanding requests per device (§4.7)"),
    ("coap.block_size", "", "preferred block size, 16–1024 (RFC 7959)"),
    (
        "coap.max_body_size",
        "",
        "largest body reassembled from blocks; more gets 4.13",
    ),
    (
        "coap.response_timeout_ms",
        "",
        "wait for a separate response after an empty ACK",
    ),
    (
        "coap.socket_buffer_bytes",
        "",
        "kernel socket buffers, so registration storms queue instead of dropping",
    ),
    (
        "coap.max_peers",
        "",
        "most peers with duplicate-detection state; bounds memory under a spoofed-source flood",
    ),
    (
        "coaps.enabled",
        "",
        "CoAP over DTLS 1.2 with per-device PSK (both transports on by default, like flownexus)",
    ),
    ("coaps.listen", "", "CoAP/DTLS address"),
    (
        "coaps.shards",
        "",
        "sockets sharing the port (SO_REUSEPORT), each with its own session table on its own worker; 0: one per CPU",
    ),
    (
        "coaps.max_sessions",
        "",
        "sessions kept in all; at the cap the one idle longest is closed",
    ),
    (
        "coaps.max_handshakes",
        "",
        "half-open handshakes per shard; one source address may hold an eighth of them; at the cap the oldest goes if it has stalled (begun over 5 s ago), else the newcomer waits.",
    ),
    ("coaps.handshake_timeout_s", "", "a handshake must finish within this"),
    (
        "coaps.session_idle_timeout_s",
        "",
        "a session without traffic this long is forgotten; the device handshakes again",
    ),
    (
        "coaps.hellos_per_source_per_s",
        "",
        "ClientHellos answered per source IP and second (burst twice that); 0: unlimited. Devices behind one carrier NAT share an IP",
    ),
    (
        "coaps.cipher_suites",
        "",
        "PSK suites accepted (comma-separated in the environment); the client's preference picks among them. `TLS_PSK_WITH_AES_128_CBC_SHA256` is not available: rtc-dtls has no PSK-CBC suite",
    ),
    ("http.enabled", "", "the operators' dashboard and REST API (`/api/v1`)"),
    (
        "http.listen",
        "",
        "dashboard and REST API address (plain HTTP: keep it on loopback behind nginx)",
    ),
    (
        "http.public_url",
        "unset (`http://` + bound address)",
        "the URL operators use, e.g. `https://dashboard.example.com`: with https, cookies are `Secure` and named `__Host-…`; the setup link uses it; state-changing requests with an `Origin` must come from it",
    ),
    (
        "http.secret_file",
        "unset",
        "key signing CSRF tokens and the setup link; generated (mode 0600) as `http-secret.key` in the data directory when unset",
    ),
    (
        "http.session_idle_timeout_s",
        "",
        "a dashboard session unused this long ends",
    ),
    (
        "http.session_max_age_s",
        "",
        "a dashboard session ends this long after login",
    ),
    (
        "http.login_failures_per_account",
        "",
        "failed logins of one account from one client address within `http.login_window_s` before that pair waits (429): 15 s, doubling with each lock, at most the window; other addresses are not affected, and addresses the account signed in from are never slowed by failures elsewhere",
    ),
    (
        "http.login_failures_per_address",
        "",
        "failed logins from one client address (any accounts) within the window before it is slowed to one attempt per back-off (1 s doubling, at most 60 s), never locked",
    ),
    (
        "http.login_window_s",
        "",
        "the window the login failures are counted in",
    ),
    (
        "http.max_body_bytes",
        "",
        "largest JSON or form body (firmware uploads: `fw.max_image_bytes`)",
    ),
    (
        "http.setup_link_ttl_s",
        "",
        "how long the first-run setup link, logged when no admin exists, is valid",
    ),
    (
        "http.trusted_proxies",
        "",
        "reverse proxies whose `X-Forwarded-For` names the client (comma-separated in the environment); with nginx on the same host (`nginx/`), `127.0.0.1`, so login limits per address count each client, not nginx. Empty: the connection's address",
    ),
    ("fw.enabled", "", "the firmware HTTPS download server"),
    ("fw.listen", "", "firmware HTTPS address"),
    (
        "fw.max_record_bytes",
        "",
        "largest TLS record on the wire, handshake included (nRF91 modem: 2 KB buffer)",
    ),
    (
        "fw.cert_file",
        "unset",
        "PEM chain (e.g. certbot `fullchain.pem`); reloaded when it changes",
    ),
    ("fw.key_file", "unset", "PEM private key (e.g. certbot `privkey.pem`)"),
    (
        "fw.sni",
        "`[]`",
        "more certificates by SNI: `[[fw.sni]] names = [\"fw.b.example\"]`, `cert_file`, `key_file`",
    ),
    (
        "fw.dev_names",
        "",
        "names of the development certificate generated when `fw.cert_file` is unset (comma-separated in the environment)",
    ),
    ("fw.max_image_bytes", "", "largest image the catalogue accepts"),
    (
        "fw.cache_bytes",
        "",
        "memory for images kept ready to serve (least recently used evicted); at least `fw.max_image_bytes`",
    ),
    (
        "fw.require_token",
        "",
        "403 for downloads without a valid per-device token (every Package URI flownexus writes carries one). Over CoAP on the LwM2M port, a source neither registered nor in a DTLS session needs a token whatever this says, and gets answers within three times its request's size",
    ),
    (
        "fw.public_url",
        "unset (`https://` + bound address)",
        "the URL devices download firmware from, e.g. `https://fw.example.com`: the base of every Package URI a firmware update writes; required in production",
    ),
    (
        "fw.coap_public_url",
        "unset (`coap://` + the CoAP address)",
        "the same images on the LwM2M ports, e.g. `coaps://lwm2m.example.com:5684`: the Package URI for a device whose `/5/0/8` lists only CoAP(S); served block-wise (RFC 7959)",
    ),
    (
        "fw.token_secret_file",
        "unset",
        "HMAC key for download tokens; generated (mode 0600) in the data directory when unset",
    ),
    (
        "fw.idle_timeout_s",
        "",
        "a keep-alive connection may wait this long for its next request",
    ),
    (
        "fw.handshake_timeout_s",
        "",
        "a TLS handshake must complete within this",
    ),
    (
        "fw.shutdown_grace_s",
        "",
        "on shutdown, running downloads get this long to finish",
    ),
    (
        "fw.proxy_protocol",
        "",
        "every connection opens with a PROXY protocol v1 header (nginx's SNI pass-through, `nginx/`): downloads are accounted to the device's address; listen on loopback then, since the header is trusted",
    ),
    (
        "lwm2m.queue_awake_window_s",
        "",
        "how long a queue-mode device listens after an uplink",
    ),
    (
        "lwm2m.lifetime_grace_s",
        "",
        "slack after a lifetime before the registration expires",
    ),
    ("lwm2m.min_lifetime_s", "", "shortest lifetime accepted (else 4.00)"),
    ("lwm2m.max_lifetime_s", "", "longest lifetime accepted"),
    (
        "lwm2m.operation_deadline_s",
        "",
        "default deadline of a queued operation",
    ),
    (
        "lwm2m.operation_max_attempts",
        "",
        "sends of an unanswered operation before it fails",
    ),
    (
        "lwm2m.unknown_endpoints",
        "",
        "`reject` answers 4.03 to a Register of an endpoint not in the device table (added with `device add`, the factory import or the API); `accept` lets it register over plain CoAP within the two limits below, and the device appears in the table",
    ),
    (
        "lwm2m.unprovisioned_per_source",
        "",
        "registrations of endpoints that were never provisioned one source address may hold at once; beyond it 4.03. Provisioned endpoints are never counted",
    ),
    (
        "lwm2m.unprovisioned_per_source_per_min",
        "",
        "new unprovisioned endpoints one source address may register per minute, in a burst of as many; beyond it 4.29 Too Many Requests with Max-Age saying when to return (RFC 8516). Counted in `flownexus_lwm2m_unprovisioned_registrations_total`",
    ),
    (
        "lwm2m.unverified_firmware_gets_per_s",
        "",
        "firmware GETs on the LwM2M port (`coap://` Package URIs) answered per second, in a burst of as many, to one source address that neither registered nor holds a DTLS session; beyond it a request is left unanswered (the device's CoAP retransmission paces it). Such a source also needs a download token and gets blocks that keep each answer within three times its request (RFC 9000 §8.1's rule). Counted in `flownexus_coap_unverified_firmware_requests_total`",
    ),
    (
        "lwm2m.models_dir",
        "unset",
        "directory of DDF XML object definitions added to the embedded OMA registry; one for an embedded id and version replaces it, and an object defined here is drawn with this definition by default (`flownexus objects` lists them)",
    ),
    (
        "fota.download_timeout_s",
        "",
        "from the Package URI write to State Downloaded (`/5/0/3` = 2), counted from when the device was last heard (a sleeping device's clock stops)",
    ),
    (
        "fota.update_timeout_s",
        "",
        "from the Execute of Update (`/5/0/2`) to the device's new registration, counted the same way",
    ),
    (
        "fota.max_retries",
        "",
        "downloads retried after an Update Result 2–9 or a FOTA doom loop, each after a reset with an empty Package URI",
    ),
    ("fota.retry_backoff_s", "", "wait before a retry, doubled each time"),
    (
        "fota.token_ttl_s",
        "",
        "how long the download token in a Package URI stays valid",
    ),
    (
        "store.value_retention_days",
        "",
        "value history older than this is deleted hourly, once a whole hour of it is past the limit; 0 keeps all",
    ),
    (
        "store.commit_interval_ms",
        "",
        "longest a reported value or download record waits to share a commit",
    ),
    ("store.batch_size", "", "most changes committed in one transaction"),
    (
        "store.history_flush_values",
        "",
        "a device's journalled values move into the history once it has this many waiting…",
    ),
    (
        "store.history_flush_age_s",
        "",
        "…or once its oldest waiting value is this old (0: with the next commit); readers see journalled values either way",
    ),
    (
        "health.probe_interval_s",
        "",
        "how often every component is probed (`/healthz`, `flownexus healthcheck`); under a systemd watchdog (`WatchdogSec=`) at least four times per watchdog interval",
    ),
    (
        "health.ready_timeout_s",
        "",
        "how long `serve` waits at start-up for every component to answer its probe before `READY=1`; past it, start-up fails naming what did not answer",
    ),
    ("metrics.enabled", "", "serve Prometheus metrics (docs/health.md)"),
    (
        "metrics.listen",
        "",
        "where; unauthenticated, so loopback or a private network only",
    ),
    ("log.level", "", "error, warn, info, debug, trace"),
    (
        "log.target",
        "",
        "`auto`: the systemd journal when stderr is connected to it (`JOURNAL_STREAM`, as under `deploy/flownexus.service`), else stderr; `journal`: always (the Quadlet unit, with the host's journal socket mounted); `stderr`",
    ),
    ("log.journal_socket", "", "journald's native-protocol socket"),
    (
        "events.outbox_max_rows",
        "",
        "events the outbox may hold while a sink (Celery) is behind; past it value reports are dropped, oldest first, and counted (`flownexus_outbox_dropped_total`); state events never are",
    ),
    (
        "events.celery.broker",
        "unset (no Celery)",
        "Redis broker for Celery: `redis://host:6379/0`, `rediss://…` (TLS), `redis+unix:///path/redis.sock`; each event becomes a Celery task (docs/celery.md). Unreachable at start: the server starts and the sink is degraded",
    ),
    (
        "events.celery.password_file",
        "unset",
        "a file holding the broker's password, so the URL (shown by `print-config`) need not",
    ),
    ("events.celery.queue", "", "the queue events go to"),
    (
        "events.celery.task_prefix",
        "",
        "task names are this plus the event kind: `flownexus.device_registered`; the tasks flownexus runs are this plus `read`, `write`, `execute`, `observe`, `cancel_observe`, `update_firmware`",
    ),
    (
        "events.celery.task_queue",
        "",
        "the queue flownexus takes tasks from (`app.send_task(\"flownexus.read\", args=[endpoint, \"/3/0/0\"], queue=\"flownexus\")`); results go to the broker's Redis as Celery's Redis result backend keeps them",
    ),
    (
        "events.webhooks",
        "`[]`",
        "HTTP(S) receivers of every event: `[[events.webhooks]] url = \"https://hooks.example.com/fleet\"`, `kinds = [\"device_registered\"]` (default every kind); one JSON POST per event, signed in `X-Flownexus-Signature` (docs/celery.md)",
    ),
    (
        "events.webhook_secret_file",
        "unset (`<data_dir>/webhook-secret.key`, generated, mode 0600)",
        "the HMAC-SHA256 key webhook bodies are signed with",
    ),
    (
        "events.celery.tasks_per_producer_per_s",
        "",
        "tasks one producer (by its Celery node name) may send a second; more fail at once, saying so",
    ),
];

const INTRO: &str = "# Configuration

<!-- Rendered from src/config/reference.rs and the config tree's defaults; a test fails when it is stale. -->

One tree of settings. Each layer overrides the one before:

1. built-in defaults (below; `flownexus print-config` shows the effective values),
2. a TOML file given with `--config FILE` or `FLOWNEXUS_CONFIG`,
3. environment variables `FLOWNEXUS_<SECTION>_<KEY>` (upper case, `.` → `_`),
4. command-line flags (`--data-dir`, `--coap-listen`, `--coaps-listen`,
   `--http-listen`, `--fw-listen`).

The mode (`mode`, from any layer) picks the defaults the other layers go
over: production differs where a development convenience would invite
abuse on the internet, and the table shows both.

Unknown keys in the file, unknown `FLOWNEXUS_*` variables (other than
`FLOWNEXUS_CONFIG` and `FLOWNEXUS_LOG`) and invalid values stop start-up
(exit status 2) with every problem at once, each naming its key, an unknown
one with the known key it most resembles. Listen addresses are IP
addresses and ports (`127.0.0.1:8000`, `[::]:5683`): they are bound, never
looked up, so a host name such as `localhost` is refused. `print-config`
shows the merged configuration even when it has problems, each marked
beside its key. Paths are resolved to absolute paths and
logged at start. A listen address with port 0 picks a free port; the bound
address is logged and written to `runtime.json` in the data directory.
`FLOWNEXUS_LOG` overrides `log.level` for one run without touching config.

| key | environment | default | meaning |
| --- | --- | --- | --- |
";

/// The example file; a test loads it as it stands.
const EXAMPLE_FILE: &str = "data_dir = \"/var/lib/flownexus\"
mode = \"production\"

[coap]
listen = \"[::]:5683\"

[http]
public_url = \"https://dashboard.example.com\"

[fw]
public_url = \"https://fw.example.com\"

[lwm2m]
queue_awake_window_s = 30
";

const EXAMPLE: &str = "
Example file (production needs the two public URLs and an absolute
`data_dir`; `flownexus --config FILE print-config` shows the merged result,
with every problem marked beside its key):

```toml
";

/// A default as the table shows it: lists comma-separated, as the
/// environment takes them.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
            .iter()
            .filter_map(toml::Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// `docs/configuration.md` as it must read.
pub fn markdown() -> String {
    let dev = toml::Table::try_from(Config::defaults(Mode::Development)).expect("defaults serialise");
    let prod = toml::Table::try_from(Config::defaults(Mode::Production)).expect("defaults serialise");
    let mut out = INTRO.to_string();
    for (key, unset, meaning) in KEYS {
        let env = if FILE_ONLY_KEYS.contains(key) {
            "— (file only)".to_string()
        } else {
            format!("`{}`", env_name(key))
        };
        let default = match (get_path(&dev, key), get_path(&prod, key)) {
            (_, _) if !unset.is_empty() => unset.to_string(),
            (Some(d), Some(p)) if d != p && *key != "mode" => {
                format!("`{}` (production: `{}`)", shown(d), shown(p))
            }
            (Some(toml::Value::Array(a)), _) if a.is_empty() => "empty".to_string(),
            (Some(d), _) => format!("`{}`", shown(d)),
            (None, _) => unset.to_string(),
        };
        out.push_str(&format!("| `{key}` | {env} | {default} | {meaning} |\n"));
    }
    out.push_str(EXAMPLE);
    out.push_str(EXAMPLE_FILE);
    out.push_str("```\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::load::{OPTIONAL_KEYS, leaf_keys};
    use super::*;

    #[test]
    fn every_key_has_one_meaning() {
        let mut keys = Vec::new();
        leaf_keys(&toml::Table::try_from(Config::default()).unwrap(), "", &mut keys);
        keys.extend(OPTIONAL_KEYS.iter().map(|k| k.to_string()));
        keys.sort();
        let mut documented: Vec<String> = KEYS.iter().map(|(k, _, _)| k.to_string()).collect();
        documented.sort();
        assert_eq!(keys, documented, "KEYS must list every config key once");
    }

    #[test]
    fn the_example_file_loads_as_written() {
        let c = Config::load_text(
            Some(("example", EXAMPLE_FILE)),
            &Default::default(),
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.mode, Mode::Production);
        assert_eq!(c.lwm2m.queue_awake_window_s, 30);
    }

    #[test]
    fn the_reference_in_docs_is_current() {
        crate::rendered_docs::assert_current("docs/configuration.md", &markdown());
    }
}
