//! The one configuration tree: defaults → TOML file → `FLOWNEXUS_*` env → CLI flags.
//!
//! Every leaf key has an environment name derived from its dotted path
//! (`coap.ack_timeout_ms` → `FLOWNEXUS_COAP_ACK_TIMEOUT_MS`), so the names
//! scripts and Quadlet units rely on (`FLOWNEXUS_DATA_DIR`,
//! `FLOWNEXUS_COAP_LISTEN`, …) are not a separate list that can drift.
//! Unknown keys, in the file or in the environment, are rejected; validation
//! runs once and names the offending key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod load;
pub mod reference;
mod validate;

use load::{FILE_ONLY_KEYS, env_name, get_path};
pub use load::{Inspection, process_env};

/// One thing wrong with the configuration: the dotted key (or the
/// environment variable) and what is wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Environment variable prefix for every key.
pub const ENV_PREFIX: &str = "FLOWNEXUS_";
/// Environment variables with that prefix that are not config keys.
/// A directory every received device datagram is written to, for the
/// fuzzers' seed corpora (`fuzz/README.md`); never for production.
pub const RECORD_DATAGRAMS_ENV: &str = "FLOWNEXUS_RECORD_DATAGRAMS";
const ENV_NOT_KEYS: &[&str] = &["FLOWNEXUS_CONFIG", "FLOWNEXUS_LOG", RECORD_DATAGRAMS_ENV];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite store, firmware images and generated secrets live.
    pub data_dir: PathBuf,
    /// `development` allows a relative data directory; `production` refuses
    /// one (a relative path silently lands wherever the service happened to start).
    pub mode: Mode,
    pub coap: CoapConfig,
    pub coaps: CoapsConfig,
    pub http: HttpConfig,
    pub fw: FirmwareServerConfig,
    pub lwm2m: Lwm2mConfig,
    pub fota: FotaConfig,
    pub store: StoreConfig,
    pub health: HealthConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub events: EventsConfig,
}

/// Events that leave the process (issue 26): the outbox and its sinks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Rows the outbox may hold while a sink is behind; past it value
    /// reports go, oldest first (state events never do).
    pub outbox_max_rows: u64,
    pub celery: CeleryConfig,
    /// HTTP(S) receivers, each POSTed one JSON body per event (config
    /// file only: `[[events.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
    /// The key webhook bodies are signed with (HMAC-SHA256); unset: one
    /// generated in the data directory on first run, mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (or `http://…` on a private network).
    pub url: String,
    /// Only these event kinds (`device_registered`, `values_reported`, …);
    /// empty: every kind.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// Celery over Redis: each event becomes a task message for Python
/// workers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CeleryConfig {
    /// The broker: `redis://host:6379/0`, `rediss://…` (TLS) or
    /// `redis+unix:///path/redis.sock`. Unset: no Celery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// A file holding the broker's password (instead of one in the URL,
    /// which `print-config` and process listings would show).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The queue events go to.
    pub queue: String,
    /// Task names are this plus the event's kind (`flownexus.device_registered`).
    pub task_prefix: String,
    /// The queue flownexus takes tasks from (`flownexus.read`, …); the
    /// results go to the broker's Redis, as Celery's Redis backend keeps them.
    pub task_queue: String,
    /// Tasks one producer (a Celery node, by its `origin`) may send a
    /// second; more are refused, each with a failure result.
    pub tasks_per_producer_per_s: u32,
}

/// Firmware updates (LwM2M Object 5): how long each phase may take and
/// how often a failed download is retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FotaConfig {
    /// From the Package URI write to State Downloaded (2), counted from
    /// when the device was last heard (a sleeping device's clock stops).
    pub download_timeout_s: u64,
    /// From the Execute of Update to the device's new registration.
    pub update_timeout_s: u64,
    /// Downloads retried after an Update Result 2–9 or a FOTA doom loop.
    pub max_retries: u32,
    /// Wait before a retry, doubled each time.
    pub retry_backoff_s: u64,
    /// How long the download token in a Package URI stays valid.
    pub token_ttl_s: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Development,
    Production,
}

/// The operators' dashboard and REST API (plain HTTP on loopback; nginx
/// terminates TLS in front of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Port 0 picks a free port; the bound address is logged and written to
    /// `runtime.json` in the data directory.
    pub listen: SocketAddr,
    /// The address operators type, e.g. `https://dashboard.example.com`:
    /// cookies are `Secure` when it is https, the first-run setup link is
    /// built on it, and state-changing requests must come from its origin.
    /// Unset: `http://` and the bound address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The key that signs CSRF tokens and setup links. Unset: generated
    /// (mode 0600) in the data directory on first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// A dashboard session unused this long ends.
    pub session_idle_timeout_s: u64,
    /// A dashboard session ends this long after login, used or not.
    pub session_max_age_s: u64,
    /// Failed logins of one account from one address within
    /// `login_window_s` before that pair backs off (`web::auth::LoginLimiter`).
    pub login_failures_per_account: u32,
    /// Failed logins per client address within `login_window_s` before
    /// the address is slowed.
    pub login_failures_per_address: u32,
    pub login_window_s: u64,
    /// Largest JSON or form body; firmware uploads are bounded by
    /// `fw.max_image_bytes` instead.
    pub max_body_bytes: usize,
    /// How long the first-run setup link (logged when no admin exists)
    /// stays valid.
    pub setup_link_ttl_s: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client (nginx on
    /// the same host: `["127.0.0.1"]`). Empty: the connection's address.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// CoAP transmission parameters, RFC 7252 §4.8, plus our block-wise limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub ack_timeout_ms: u64,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// Outstanding confirmable requests per peer (RFC 7252 §4.7).
    pub nstart: usize,
    /// Preferred block size for Block1/Block2 (RFC 7959), 16..=1024.
    pub block_size: usize,
    /// Largest request or response body reassembled from blocks.
    pub max_body_size: usize,
    /// How long we wait for a separate response after an empty ACK.
    pub response_timeout_ms: u64,
    /// SO_RCVBUF/SO_SNDBUF of the socket: a registration storm after an
    /// outage must queue in the kernel, not be dropped (capped by
    /// net.core.rmem_max unless running as root).
    pub socket_buffer_bytes: usize,
    /// Most peers the exchange layer keeps duplicate-detection state for;
    /// bounds memory under a flood from spoofed source addresses.
    pub max_peers: usize,
}

/// CoAP over DTLS 1.2 with per-device pre-shared keys (RFC 7252 §9.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoapsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Sockets (SO_REUSEPORT) with a session table each, handled in
    /// parallel; 0: one per CPU.
    pub shards: usize,
    /// Established and half-open sessions kept, in all; at the cap the
    /// session idle the longest is closed.
    pub max_sessions: usize,
    /// Half-open handshakes kept per shard; at the cap the oldest is dropped,
    /// so stalled handshakes cannot lock out real devices.
    pub max_handshakes: usize,
    /// A handshake not finished within this is dropped.
    pub handshake_timeout_s: u64,
    /// An established session without traffic for this long is forgotten;
    /// the device handshakes again on its next uplink.
    pub session_idle_timeout_s: u64,
    /// ClientHellos answered per source address and second, burst twice
    /// that; 0 disables the limit. Devices behind one carrier NAT share an
    /// address: keep it generous.
    pub hellos_per_source_per_s: u32,
    /// PSK cipher suites accepted, by IANA name; the client's order of
    /// preference decides among them.
    pub cipher_suites: Vec<String>,
}

/// The firmware download server (HTTPS for nRF91 devices).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirmwareServerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// No TLS record on the wire is larger than this, handshake included:
    /// the nRF91 modem's receive buffer is 2 KB (docs/firmware.md, TLS).
    pub max_record_bytes: usize,
    /// PEM certificate chain (certbot's fullchain.pem) and key; unset: a
    /// development CA and certificate are generated in the data directory.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// More certificates chosen by SNI (config file only).
    pub sni: Vec<SniCertificate>,
    /// Names the generated development certificate is valid for.
    pub dev_names: Vec<String>,
    /// Largest firmware image accepted into the catalogue.
    pub max_image_bytes: u64,
    /// Memory for images kept ready to serve.
    pub cache_bytes: u64,
    /// Refuse downloads without a valid per-device token (403).
    pub require_token: bool,
    /// The URL devices reach this server at, e.g. `https://fw.example.com`:
    /// the base of every Package URI. Required in production; unset in
    /// development, the server's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The same images on the LwM2M ports, for devices that fetch only by
    /// CoAP(S), e.g. `coaps://lwm2m.example.com:5684`; unset in
    /// development: the server's own CoAP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coap_public_url: Option<String>,
    /// HMAC key for download tokens; unset: generated in the data directory.
    pub token_secret_file: Option<PathBuf>,
    pub idle_timeout_s: u64,
    pub handshake_timeout_s: u64,
    /// On shutdown, running downloads get this long to finish.
    pub shutdown_grace_s: u64,
    /// Every connection opens with a PROXY protocol v1 header (nginx's
    /// `stream` pass-through with `proxy_protocol on`; nginx/): downloads are
    /// then accounted to the device's address, not nginx's. Listen on
    /// loopback then: the header is trusted.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    pub names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lwm2mConfig {
    /// How long a queue-mode device listens after an uplink (LwM2M 1.1
    /// Transport §6.5; Zephyr's CONFIG_LWM2M_QUEUE_MODE_UPTIME).
    pub queue_awake_window_s: u64,
    /// Extra time after a lifetime elapses before the registration expires.
    pub lifetime_grace_s: u64,
    pub min_lifetime_s: u64,
    pub max_lifetime_s: u64,
    /// Default deadline for a queued operation.
    pub operation_deadline_s: u64,
    /// Dispatch attempts before an unanswered operation fails.
    pub operation_max_attempts: u32,
    /// What plain-CoAP registrations from endpoints not in the device
    /// table get: `accept` in development, `reject` in production.
    pub unknown_endpoints: UnknownEndpoints,
    /// Registrations of endpoints that were never provisioned one source
    /// address may hold at once (under `accept`).
    pub unprovisioned_per_source: u32,
    /// New unprovisioned endpoints one source address may register per
    /// minute, in a burst of as many; beyond it 4.29 with Max-Age.
    pub unprovisioned_per_source_per_min: u32,
    /// Firmware GETs on the LwM2M port answered per second to one source
    /// address that neither registered nor holds a DTLS session.
    pub unverified_firmware_gets_per_s: u32,
    /// Directory of extra DDF object definitions loaded at start (optional).
    pub models_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownEndpoints {
    Accept,
    Reject,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Value history older than this is deleted; 0 keeps everything.
    pub value_retention_days: u64,
    /// Largest number of changes committed in one transaction.
    pub batch_size: usize,
    /// Longest a change waits for others to share its commit (a crash
    /// loses at most this much of reported values and download accounting;
    /// queued operations are committed by whoever queues them).
    pub commit_interval_ms: u64,
    /// Reported values are journalled in arrival order and moved into the
    /// history per device once it has this many waiting...
    pub history_flush_values: u32,
    /// ...or its oldest waiting value is this old. Larger values write less
    /// at high rates and keep a longer journal; both are read as history.
    pub history_flush_age_s: u64,
}

/// The health probes (`/healthz`, `flownexus healthcheck`, systemd's
/// watchdog and `STATUS=` line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often every component is probed (more often under a systemd
    /// watchdog shorter than four times this).
    pub probe_interval_s: u64,
    /// How long `serve` waits at start-up for every component to answer
    /// its probe before it reports ready (`READY=1`); past it, start-up
    /// fails naming what did not answer.
    pub ready_timeout_s: u64,
}

/// Prometheus metrics (text format) on a listener of their own, without
/// authentication: loopback unless a private network is meant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// `auto`: the systemd journal when stderr is connected to it
    /// (`JOURNAL_STREAM`), else stderr; `journal`: always the journal (a
    /// container with the host's journal socket mounted); `stderr`.
    pub target: String,
    /// journald's native-protocol socket.
    pub journal_socket: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config::defaults(Mode::Development)
    }
}

impl Config {
    /// The built-in defaults of `mode`. Production differs only where a
    /// development convenience would invite abuse on the internet: an
    /// endpoint must be provisioned to register, and one address may add
    /// few unprovisioned ones if an operator turns `accept` back on.
    pub fn defaults(mode: Mode) -> Config {
        let mut c = Config::development();
        if mode == Mode::Production {
            c.mode = Mode::Production;
            c.lwm2m.unknown_endpoints = UnknownEndpoints::Reject;
            c.lwm2m.unprovisioned_per_source = 100;
            c.lwm2m.unprovisioned_per_source_per_min = 60;
            // Images to whoever asks is a development convenience: every
            // Package URI flownexus writes carries a token (issue 32).
            c.fw.require_token = true;
        }
        c
    }

    fn development() -> Config {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Config {
            data_dir: PathBuf::from("./data"),
            mode: Mode::Development,
            coap: CoapConfig {
                enabled: true,
                listen: any(5683),
                ack_timeout_ms: 2000,
                ack_random_factor: 1.5,
                max_retransmit: 4,
                nstart: 1,
                block_size: 1024,
                max_body_size: 256 * 1024,
                response_timeout_ms: 60_000,
                socket_buffer_bytes: 4 << 20,
                max_peers: 2_000_000,
            },
            coaps: CoapsConfig {
                enabled: true,
                listen: any(5684),
                shards: 0,
                max_sessions: 1_000_000,
                max_handshakes: 2048,
                handshake_timeout_s: 30,
                session_idle_timeout_s: 86_400,
                hellos_per_source_per_s: 200,
                cipher_suites: crate::dtls::suites::CIPHER_SUITES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
            http: HttpConfig {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
                public_url: None,
                secret_file: None,
                session_idle_timeout_s: 8 * 3600,
                session_max_age_s: 7 * 86400,
                login_failures_per_account: 10,
                login_failures_per_address: 50,
                login_window_s: 900,
                max_body_bytes: 1 << 20,
                setup_link_ttl_s: 3600,
                trusted_proxies: Vec::new(),
            },
            fw: FirmwareServerConfig {
                enabled: true,
                listen: any(8443),
                max_record_bytes: 1370,
                cert_file: None,
                key_file: None,
                sni: Vec::new(),
                dev_names: vec!["localhost".into(), "127.0.0.1".into()],
                max_image_bytes: 64 << 20,
                cache_bytes: 256 << 20,
                require_token: false,
                public_url: None,
                coap_public_url: None,
                token_secret_file: None,
                idle_timeout_s: 120,
                handshake_timeout_s: 10,
                shutdown_grace_s: 30,
                proxy_protocol: false,
            },
            lwm2m: Lwm2mConfig {
                queue_awake_window_s: 20,
                lifetime_grace_s: 15,
                min_lifetime_s: 1,
                max_lifetime_s: 30 * 86400,
                operation_deadline_s: 86400,
                operation_max_attempts: 3,
                unknown_endpoints: UnknownEndpoints::Accept,
                unprovisioned_per_source: 10_000,
                unprovisioned_per_source_per_min: 6_000,
                unverified_firmware_gets_per_s: 100,
                models_dir: None,
            },
            fota: FotaConfig {
                download_timeout_s: 3600,
                update_timeout_s: 900,
                max_retries: 3,
                retry_backoff_s: 60,
                token_ttl_s: 7 * 86400,
            },
            store: StoreConfig {
                value_retention_days: 90,
                batch_size: 5000,
                commit_interval_ms: 10,
                history_flush_values: 32,
                history_flush_age_s: 300,
            },
            health: HealthConfig {
                probe_interval_s: 5,
                ready_timeout_s: 30,
            },
            metrics: MetricsConfig {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            },
            events: EventsConfig {
                outbox_max_rows: 1_000_000,
                celery: CeleryConfig {
                    broker: None,
                    password_file: None,
                    queue: "celery".into(),
                    task_prefix: "flownexus.".into(),
                    task_queue: "flownexus".into(),
                    tasks_per_producer_per_s: 200,
                },
                webhooks: Vec::new(),
                webhook_secret_file: None,
            },
            log: LogConfig {
                level: "info".into(),
                target: "auto".into(),
                journal_socket: PathBuf::from(crate::logging::JOURNAL_SOCKET),
            },
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub coap_listen: Option<SocketAddr>,
    pub coaps_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub fw_listen: Option<SocketAddr>,
}

impl Config {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.coap.ack_timeout_ms)
    }

    /// The SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("flownexus.sqlite3")
    }

    /// Where `serve` records the addresses it actually bound.
    pub fn runtime_path(&self) -> PathBuf {
        self.data_dir.join("runtime.json")
    }

    /// The effective configuration as TOML, for `print-config`. No key is a
    /// secret yet; when PSK and session secrets arrive they are `*_file`
    /// paths, never values, so nothing here needs redaction.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[coap]\nack_timeout_ms = 3000\nmax_retransmit = 2\n").unwrap();
        let e = env(&[
            ("FLOWNEXUS_COAP_MAX_RETRANSMIT", "3"),
            ("FLOWNEXUS_COAP_LISTEN", "127.0.0.1:1"),
        ]);
        let flags = Overrides {
            coap_listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.coap.ack_timeout_ms, 3000, "file beats default");
        assert_eq!(c.coap.max_retransmit, 3, "env beats file");
        assert_eq!(c.coap.listen.port(), 2, "flag beats env");
        assert!(c.data_dir.is_absolute(), "paths are resolved");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[coap]\nack_timeout = 3000\n").unwrap();
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("coap.ack_timeout"), "{err}");

        let err = Config::load(None, &env(&[("FLOWNEXUS_COAP_TYPO", "1")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("FLOWNEXUS_COAP_TYPO"), "{err}");
    }

    /// Issue 31: every problem in one run, in words, with the key a slip
    /// was meant to be; a bad value does not hide the others.
    #[test]
    fn every_problem_is_reported_at_once() {
        let file = "mode = \"production\"\ndata_dir = \"data\"\n[coap]\nack_timout_ms = 5\nnstart = -1\n\
                    [http]\nlisten = \"localhost:8000\"\nmax_body_bytes = \"big\"\n";
        let e = env(&[
            ("FLOWNEXUS_COAPS_SHARDZ", "2"),
            ("FLOWNEXUS_COAP_MAX_RETRANSMIT", "often"),
        ]);
        let err = Config::load_text(Some(("site.toml", file)), &e, &Overrides::default()).unwrap_err();
        let crate::error::Error::Configuration(problems) = &err else {
            panic!("{err}")
        };
        let said = err.to_string();
        for (key, words) in [
            ("coap.ack_timout_ms", "did you mean `coap.ack_timeout_ms`?"),
            ("coap.nstart", "expected a whole number, 0 or more, got -1"),
            ("http.listen", "a host name such as localhost is not accepted"),
            (
                "http.max_body_bytes",
                "expected a whole number, 0 or more, got text \"big\"",
            ),
            ("FLOWNEXUS_COAPS_SHARDZ", "did you mean FLOWNEXUS_COAPS_SHARDS?"),
            (
                "FLOWNEXUS_COAP_MAX_RETRANSMIT",
                "expected a whole number, got \"often\"",
            ),
            ("http.public_url", "required in production"),
            ("fw.public_url", "required in production"),
            ("data_dir", "must be an absolute path in production mode"),
        ] {
            assert!(
                problems.iter().any(|p| p.key == key && p.reason.contains(words)),
                "{key}: {words}\n{said}"
            );
        }
        assert!(
            said.starts_with(&format!("{} configuration problems:", problems.len())),
            "{said}"
        );
        for rust in ["usize", "u64", "SocketAddr", "socket address syntax"] {
            assert!(!said.contains(rust), "{rust} in {said}");
        }
        // print-config's view: the merged tree, each problem beside its key.
        let seen = Config::inspect_text(Some(("site.toml", file)), &e, &Overrides::default()).unwrap();
        let text = seen.annotated();
        assert!(
            text.starts_with(&format!("# {} configuration problems;", problems.len())),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("nstart = 1  # ERROR: expected a whole number")),
            "{text}"
        );
        assert!(
            text.contains("# ERROR: coap.ack_timout_ms: unknown key; did you mean"),
            "{text}"
        );
        assert!(
            text.contains("\nmode = \"production\""),
            "the merged values are shown: {text}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("FLOWNEXUS_COAP_BLOCK_SIZE", "1000", "coap.block_size"),
            ("FLOWNEXUS_COAP_NSTART", "0", "coap.nstart"),
            ("FLOWNEXUS_DATA_DIR", "", "data_dir"),
            ("FLOWNEXUS_COAP_ACK_TIMEOUT_MS", "soon", "FLOWNEXUS_COAP_ACK_TIMEOUT_MS"),
            ("FLOWNEXUS_LOG_LEVEL", "loud", "log.level"),
            ("FLOWNEXUS_COAP_LISTEN", "nowhere", "coap.listen"),
            ("FLOWNEXUS_HTTP_PUBLIC_URL", "ftp://x", "http.public_url"),
            ("FLOWNEXUS_HTTP_LOGIN_WINDOW_S", "0", "http.login_window_s"),
            ("FLOWNEXUS_COAPS_SHARDS", "100", "coaps.shards"),
            ("FLOWNEXUS_COAPS_MAX_HANDSHAKES", "0", "coaps.max_handshakes"),
            (
                "FLOWNEXUS_COAPS_CIPHER_SUITES",
                "TLS_PSK_WITH_NULL_SHA",
                "coaps.cipher_suites",
            ),
            ("FLOWNEXUS_COAPS_CIPHER_SUITES", "", "coaps.cipher_suites"),
            ("FLOWNEXUS_FW_PUBLIC_URL", "https://fw.example.com/fw", "fw.public_url"),
            ("FLOWNEXUS_FW_COAP_PUBLIC_URL", "https://x", "fw.coap_public_url"),
            ("FLOWNEXUS_FOTA_DOWNLOAD_TIMEOUT_S", "0", "fota.download_timeout_s"),
        ];
        for (k, v, named) in cases {
            let err = Config::load(None, &env(&[(k, v)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(named), "{k}={v}: {err}");
        }
    }

    #[test]
    fn production_refuses_relative_data_dir_and_a_missing_public_url() {
        let url = ("FLOWNEXUS_HTTP_PUBLIC_URL", "https://dashboard.example.com");
        let fw = ("FLOWNEXUS_FW_PUBLIC_URL", "https://fw.example.com");
        let err = Config::load(
            None,
            &env(&[("FLOWNEXUS_MODE", "production"), url, fw]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("data_dir"), "{err}");
        let err = Config::load(None, &env(&[("FLOWNEXUS_MODE", "production")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("http.public_url"), "{err}");
        let err = Config::load(
            None,
            &env(&[
                ("FLOWNEXUS_MODE", "production"),
                url,
                ("FLOWNEXUS_DATA_DIR", "/var/lib/x"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fw.public_url"), "{err}");
        let ok = Config::load(
            None,
            &env(&[
                ("FLOWNEXUS_MODE", "production"),
                url,
                fw,
                ("FLOWNEXUS_DATA_DIR", "/var/lib/x"),
            ]),
            &Overrides::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// Production's defaults refuse unprovisioned endpoints and bound what
    /// an operator who turns `accept` back on admits; a layer that names a
    /// key still wins, and development keeps accepting.
    #[test]
    fn production_defaults_reject_unprovisioned_endpoints() {
        let prod = [
            ("FLOWNEXUS_MODE", "production"),
            ("FLOWNEXUS_HTTP_PUBLIC_URL", "https://dashboard.example.com"),
            ("FLOWNEXUS_FW_PUBLIC_URL", "https://fw.example.com"),
            ("FLOWNEXUS_DATA_DIR", "/var/lib/x"),
        ];
        let c = Config::load(None, &env(&prod), &Overrides::default()).unwrap();
        assert_eq!(c.lwm2m.unknown_endpoints, UnknownEndpoints::Reject);
        assert!(
            c.fw.require_token,
            "production serves images only with a download token"
        );
        assert_eq!(
            (
                c.lwm2m.unprovisioned_per_source,
                c.lwm2m.unprovisioned_per_source_per_min
            ),
            (100, 60)
        );
        let mut accept = prod.to_vec();
        accept.push(("FLOWNEXUS_LWM2M_UNKNOWN_ENDPOINTS", "accept"));
        let c = Config::load(None, &env(&accept), &Overrides::default()).unwrap();
        assert_eq!(c.lwm2m.unknown_endpoints, UnknownEndpoints::Accept);
        assert_eq!(c.lwm2m.unprovisioned_per_source, 100, "production's bound stays");
        // The mode may come from the file too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "mode = \"production\"\n[lwm2m]\nunprovisioned_per_source = 7\n").unwrap();
        let c = Config::load(Some(&file), &env(&prod[1..]), &Overrides::default()).unwrap();
        assert_eq!(c.lwm2m.unknown_endpoints, UnknownEndpoints::Reject);
        assert_eq!(c.lwm2m.unprovisioned_per_source, 7);
        let dev = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(dev.lwm2m.unknown_endpoints, UnknownEndpoints::Accept);
        assert!(!dev.fw.require_token);
        let err = Config::load(
            None,
            &env(&[("FLOWNEXUS_LWM2M_UNPROVISIONED_PER_SOURCE_PER_MIN", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("lwm2m.unprovisioned_per_source_per_min"),
            "{err}"
        );
    }

    #[test]
    fn optional_models_dir_from_env() {
        let c = Config::load(
            None,
            &env(&[("FLOWNEXUS_LWM2M_MODELS_DIR", "models")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.lwm2m.models_dir.unwrap().is_absolute());
    }
}
