//! One simulated LwM2M 1.1 client, sans-I/O, modelled on Zephyr's: objects
//! 1, 3, 5, 3303, 3304; SenML-CBOR or TLV; queue mode with an awake window;
//! periodic Updates; answers Read/Write/Execute/Create/Delete/Discover/
//! Write-Attributes/Observe and their composite forms; optional Send.
//! How it answers the server's requests is in `client/requests.rs`.

mod firmware;
mod requests;
#[cfg(test)]
mod tests;

pub use firmware::{DownloadJob, FotaBehaviour};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coap::{Code, Event, Exchanges, Method, Params, Request, RequestId, Response};
use crate::lwm2m::content::{self, senml};
use crate::lwm2m::model::Models;
use crate::lwm2m::path::{Record, ResourcePath, Value};

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub endpoint: String,
    pub lifetime: u32,
    /// Update every this long (Zephyr updates ahead of lifetime expiry).
    pub update_interval: Duration,
    pub queue_mode: bool,
    /// Queue mode: how long the client listens after each uplink.
    pub awake_window: Duration,
    /// Content format for reads and notifications: SenML-CBOR or TLV.
    pub format: u16,
    /// How often sensor values change and observations notify.
    pub notify_interval: Duration,
    /// Send (`POST /dp`) the temperature this often, if set.
    pub send_interval: Option<Duration>,
    /// LwM2M version announced at Register: "1.1" or "1.0".
    pub version: String,
    pub params: Params,
    /// Speak CoAP over DTLS with this identity and key.
    pub psk: Option<crate::psk::Psk>,
    /// What `/3/0/3` (Firmware Version) reports.
    pub firmware_version: String,
    /// With a modem version the device has Object 33629 (Advanced Firmware
    /// Update: instance 0 the application, 1 the modem, reporting this)
    /// in place of Object 5.
    pub modem_version: Option<String>,
    /// Resource values that replace or add to the defaults (a manufacturer,
    /// a model name: every string a device controls).
    pub resources: Vec<(ResourcePath, Value)>,
    /// How the Firmware Update object misbehaves, for tests.
    pub fota: FotaBehaviour,
    /// The CA the firmware server's certificate chains to (the device's
    /// provisioned security tag); without it downloads fail (Result 4).
    pub fw_ca: Option<std::path::PathBuf>,
}

impl DeviceConfig {
    pub fn new(endpoint: &str) -> DeviceConfig {
        DeviceConfig {
            endpoint: endpoint.to_string(),
            lifetime: 300,
            update_interval: Duration::from_secs(240),
            queue_mode: false,
            awake_window: Duration::from_secs(20),
            format: content::SENML_CBOR,
            notify_interval: Duration::from_secs(10),
            send_interval: None,
            version: "1.1".into(),
            params: Params::default(),
            psk: None,
            firmware_version: "sim-1.0.0".into(),
            modem_version: None,
            resources: Vec::new(),
            fota: FotaBehaviour::default(),
            fw_ca: None,
        }
    }
}

/// Counters a runner aggregates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub registrations: u64,
    pub updates: u64,
    pub requests_served: u64,
    pub notifications: u64,
    pub failures: u64,
    /// Registers and Updates that got no answer at all (a transport
    /// problem; Zephyr's client reconnects, with a new DTLS handshake).
    pub timeouts: u64,
}

#[derive(Debug)]
struct Observer {
    token: Vec<u8>,
    paths: Vec<ResourcePath>,
    composite: bool,
    seq: u32,
    format: u16,
}

#[derive(Debug, PartialEq)]
enum Phase {
    Idle,
    Registering(RequestId),
    Registered { location: Vec<String> },
    Updating { location: Vec<String>, id: RequestId },
}

pub struct Client {
    cfg: DeviceConfig,
    models: Arc<Models>,
    coap: Exchanges<()>,
    phase: Phase,
    values: BTreeMap<ResourcePath, Value>,
    observers: Vec<Observer>,
    awake_until: Option<Instant>,
    next_update: Option<Instant>,
    next_notify: Option<Instant>,
    next_send: Option<Instant>,
    /// Re-register at this time (after a reboot or failure).
    next_register: Option<Instant>,
    rng: fastrand::Rng,
    pub counters: Counters,
    /// Send Updates back-to-back (benchmarks).
    pub continuous_updates: bool,
    /// Object 5: the download under way, the image being installed.
    firmware: firmware::Firmware,
}

/// Object 0, LwM2M Security.
const SECURITY: u16 = 0;

fn path(s: &str) -> ResourcePath {
    s.parse().expect("static path")
}

impl Client {
    pub fn new(cfg: DeviceConfig, models: Arc<Models>, seed: u64) -> Client {
        let mut values = BTreeMap::new();
        let mut set = |p: &str, v: Value| {
            values.insert(path(p), v);
        };
        // Security object: the client's own, never shown to the server.
        set("/0/0/0", Value::String("coap://server".into()));
        set("/0/0/1", Value::Boolean(false));
        set("/0/0/2", Value::Integer(3)); // NoSec
        set("/0/0/10", Value::Integer(1));
        set("/1/0/0", Value::Integer(1));
        set("/1/0/1", Value::Integer(i64::from(cfg.lifetime)));
        set("/1/0/6", Value::Boolean(false));
        set("/1/0/7", Value::String(if cfg.queue_mode { "UQ" } else { "U" }.into()));
        set("/3/0/0", Value::String("Nordic Semiconductor ASA".into()));
        set("/3/0/1", Value::String("nRF9160-SIM".into()));
        set("/3/0/2", Value::String(format!("{:016x}", seed)));
        set("/3/0/3", Value::String(cfg.firmware_version.clone()));
        set("/3/0/9", Value::Integer(87));
        set("/3/0/11/0", Value::Integer(0));
        set("/3/0/13", Value::Time(1_700_000_000));
        set("/3/0/16", Value::String("UQ".into()));
        set("/3/0/19", Value::String("sim".into()));
        let protocols: &[i64] = if cfg.fota.coap_only { &[0, 1] } else { &[0, 1, 2, 3] };
        for (base, extra) in Client::firmware_instances(&cfg) {
            set(&format!("{base}/1"), Value::String(String::new()));
            set(&format!("{base}/3"), Value::Integer(0));
            set(&format!("{base}/5"), Value::Integer(0));
            for (i, proto) in protocols.iter().enumerate() {
                set(&format!("{base}/8/{i}"), Value::Integer(*proto));
            }
            set(&format!("{base}/9"), Value::Integer(0));
            for (res, v) in extra {
                set(&format!("{base}/{res}"), v);
            }
        }
        set("/3303/0/5700", Value::Float(21.5));
        set("/3303/0/5701", Value::String("Cel".into()));
        set("/3304/0/5700", Value::Float(45.0));
        set("/3304/0/5701", Value::String("%RH".into()));
        values.extend(cfg.resources.iter().cloned());
        // A device writes firmware to flash as it arrives; the simulator
        // keeps it in memory, so a block-wise body may be an image's size.
        let mut params = cfg.params.clone();
        params.max_body_size = params.max_body_size.max(64 << 20);
        Client {
            coap: Exchanges::new(params, seed),
            cfg,
            models,
            phase: Phase::Idle,
            values,
            observers: Vec::new(),
            awake_until: None,
            next_update: None,
            next_notify: None,
            next_send: None,
            next_register: None,
            rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
            counters: Counters::default(),
            continuous_updates: false,
            firmware: firmware::Firmware::default(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    pub fn is_registered(&self) -> bool {
        matches!(self.phase, Phase::Registered { .. } | Phase::Updating { .. })
    }

    pub fn value(&self, p: &ResourcePath) -> Option<&Value> {
        self.values.get(p)
    }

    /// How many observations the server holds on this client.
    pub fn observations(&self) -> usize {
        self.observers.len()
    }

    pub fn set_value(&mut self, p: ResourcePath, v: Value) {
        self.values.insert(p, v);
    }

    /// Is the radio on? Sleeping queue-mode clients hear nothing.
    pub fn awake(&self, now: Instant) -> bool {
        !self.firmware.silent && (!self.cfg.queue_mode || self.awake_until.is_some_and(|t| now < t))
    }

    fn uplink(&mut self, now: Instant) {
        self.awake_until = Some(now + self.cfg.awake_window);
    }

    /// The next datagram to send. Every transmission, a CoAP
    /// retransmission or an answer to the server included, restarts the
    /// awake window: Zephyr's `socket_send_message` calls
    /// `engine_update_tx_time` on each send, and the RX-off of queue mode
    /// counts `CONFIG_LWM2M_QUEUE_MODE_UPTIME` from that time. (Counting it
    /// from the first transmission only, as before, had a device under
    /// load sleep through the answers to its own retransmitted Updates
    /// until its registration expired.)
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let t = self.coap.poll_transmit()?;
        self.uplink(now);
        Some(t.bytes)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.coap.poll_timeout(),
            self.next_update,
            self.next_notify,
            self.next_send,
            self.next_register,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Register now.
    pub fn start(&mut self, now: Instant) {
        self.register(now);
        self.next_notify = Some(now + self.cfg.notify_interval);
        self.next_send = self.cfg.send_interval.map(|d| now + d);
    }

    fn object_links(&self) -> String {
        // A 1.0 client announces no root attributes (the `ct` link attribute is 1.1).
        let mut links = if self.cfg.version == "1.0" {
            Vec::new()
        } else {
            vec![format!("</>;rt=\"oma.lwm2m\";ct={}", self.cfg.format)]
        };
        let mut seen = Vec::new();
        // The Security object is not listed (LwM2M 1.1 Core §6.2.1).
        for p in self.values.keys().filter(|p| p.object() != Some(SECURITY)) {
            let inst = ResourcePath::new(&p.ids()[..2]).expect("instance path");
            if !seen.contains(&inst) {
                seen.push(inst);
                links.push(format!("<{inst}>"));
            }
        }
        links.join(",")
    }

    fn register(&mut self, now: Instant) {
        self.next_register = None;
        self.finish_reboot();
        self.observers.clear();
        let mut req = Request::new(Method::Post, "/rd");
        req.options.uri_query = vec![
            format!("ep={}", self.cfg.endpoint),
            format!("lt={}", self.cfg.lifetime),
            format!("lwm2m={}", self.cfg.version),
            "b=U".into(),
        ];
        if self.cfg.queue_mode {
            req.options.uri_query.push("Q".into());
        }
        req.options.content_format = Some(content::LINK_FORMAT);
        req.payload = self.object_links().into_bytes();
        let id = self.coap.request(now, (), req);
        self.phase = Phase::Registering(id);
        self.uplink(now);
    }

    fn update(&mut self, now: Instant) {
        self.next_update = None;
        let Phase::Registered { location } = &self.phase else {
            return;
        };
        let location = location.clone();
        let mut req = Request::new(Method::Post, "");
        req.options.uri_path = location.clone();
        let id = self.coap.request(now, (), req);
        self.phase = Phase::Updating { location, id };
        self.uplink(now);
    }

    /// Send a registration Update now, as Zephyr's client does after its
    /// connection was re-established (e.g. a new DTLS handshake).
    pub fn update_now(&mut self, now: Instant) {
        self.update(now);
    }

    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if !self.awake(now) {
            return; // PSM: the modem is off
        }
        self.coap.handle_datagram(now, (), bytes);
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.coap.handle_timeout(now);
        if self.next_register.is_some_and(|t| t <= now) {
            self.register(now);
        }
        if self.next_update.is_some_and(|t| t <= now) {
            self.update(now);
        }
        if self.next_notify.is_some_and(|t| t <= now) {
            self.next_notify = Some(now + self.cfg.notify_interval);
            self.change_sensors();
            if self.is_registered() {
                self.notify_all(now);
            }
        }
        if self.next_send.is_some_and(|t| t <= now) {
            self.next_send = self.cfg.send_interval.map(|d| now + d);
            if self.is_registered() {
                self.send(now);
            }
        }
        self.drain(now);
    }

    fn change_sensors(&mut self) {
        for p in ["/3303/0/5700", "/3304/0/5700"] {
            if let Some(Value::Float(v)) = self.values.get_mut(&path(p)) {
                *v = ((*v + (self.rng.f64() - 0.5)) * 100.0).round() / 100.0;
            }
        }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.coap.poll_event() {
            match ev {
                Event::Response { id, response, .. } if self.is_coap_download(id) => {
                    self.coap_download_answered(now, Some(response));
                }
                Event::Response { id, response, .. } => self.on_response(now, id, response),
                Event::Failed { id, .. } if self.is_coap_download(id) => self.coap_download_answered(now, None),
                Event::Failed { id, .. } => {
                    self.counters.failures += 1;
                    match &self.phase {
                        Phase::Registering(r) if *r == id => {
                            self.counters.timeouts += 1;
                            self.phase = Phase::Idle;
                            self.next_register = Some(now + Duration::from_secs(1));
                        }
                        Phase::Updating { id: r, location } if *r == id => {
                            self.counters.timeouts += 1;
                            // Zephyr retries the Update, then falls back to Register.
                            self.phase = Phase::Registered {
                                location: location.clone(),
                            };
                            self.next_update = Some(now + Duration::from_secs(1));
                        }
                        _ => {}
                    }
                }
                Event::Request { id, token, request, .. } => {
                    self.counters.requests_served += 1;
                    let response = self.serve(now, &token, request);
                    self.coap.respond(now, id, response);
                }
                Event::Notification { .. } => {}
                Event::ObserverGone { token, .. } => self.observers.retain(|o| o.token != token),
            }
        }
    }

    fn on_response(&mut self, now: Instant, id: RequestId, r: Response) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Registering(rid) if rid == id => {
                if r.code == Code::CREATED && !r.options.location_path.is_empty() {
                    self.counters.registrations += 1;
                    self.phase = Phase::Registered {
                        location: r.options.location_path,
                    };
                    self.schedule_update(now);
                } else {
                    self.counters.failures += 1;
                    self.next_register = Some(now + Duration::from_secs(5));
                }
            }
            Phase::Updating { location, id: rid } if rid == id => {
                if r.code == Code::CHANGED {
                    self.counters.updates += 1;
                    self.phase = Phase::Registered { location };
                    self.schedule_update(now);
                } else {
                    // 4.04: the server lost us; register again (Core §6.2.2).
                    self.counters.failures += 1;
                    self.register(now);
                }
            }
            other => self.phase = other,
        }
    }

    fn schedule_update(&mut self, now: Instant) {
        self.next_update = Some(if self.continuous_updates {
            now
        } else {
            now + self.cfg.update_interval
        });
    }

    fn records_under(&self, p: &ResourcePath) -> Vec<Record> {
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(k, v)| Record {
                path: *k,
                value: v.clone(),
                time: None,
            })
            .collect()
    }

    fn notify_all(&mut self, now: Instant) {
        self.notify(now, None);
    }

    /// Notify observers (RFC 7641 §4.2): all of them, or those whose paths
    /// cover or lie under `changed`.
    fn notify(&mut self, now: Instant, changed: Option<&ResourcePath>) {
        let mut out = Vec::new();
        for i in 0..self.observers.len() {
            let o = &self.observers[i];
            if changed.is_some_and(|c| !o.paths.iter().any(|p| c.starts_with(p) || p.starts_with(c))) {
                continue;
            }
            self.observers[i].seq += 1;
            let o = &self.observers[i];
            let records: Vec<Record> = o.paths.iter().flat_map(|p| self.records_under(p)).collect();
            let base = if o.composite { ResourcePath::ROOT } else { o.paths[0] };
            let Ok(payload) = content::encode(o.format, &base, &records, &self.models) else {
                continue;
            };
            let mut r = Response::with_payload(Code::CONTENT, o.format, payload);
            r.options.observe = Some(o.seq);
            // Every tenth notification is confirmable, so a vanished
            // observer is noticed (RFC 7641 §4.5).
            out.push((o.token.clone(), r, o.seq.is_multiple_of(10)));
        }
        for (token, r, con) in out {
            self.counters.notifications += 1;
            self.coap.notify(now, (), &token, &r, con);
            self.uplink(now);
        }
    }

    fn send(&mut self, now: Instant) {
        let records = self.records_under(&path("/3303/0/5700"));
        let mut req = Request::new(Method::Post, "/dp");
        req.options.content_format = Some(content::SENML_CBOR);
        req.payload = senml::encode_cbor(&records);
        self.coap.request(now, (), req);
        self.uplink(now);
    }

    /// De-register (used when a simulator stops cleanly).
    pub fn deregister(&mut self, now: Instant) {
        if let Phase::Registered { location } | Phase::Updating { location, .. } = &self.phase {
            let mut req = Request::new(Method::Delete, "");
            req.options.uri_path = location.clone();
            self.coap.request(now, (), req);
            self.phase = Phase::Idle;
            self.next_update = None;
        }
    }
}
