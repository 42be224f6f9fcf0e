//! The simulated client's firmware objects with pull delivery, as nRF
//! Connect SDK's LwM2M client behaves: Object 5 (Core 1.1 Appendix E.6),
//! or with a modem version configured Object 33629 (Advanced Firmware
//! Update) with an application and a modem instance. Per instance: a
//! Package URI write in Idle starts a download (State 1), a download whose
//! SHA-256 matches the image named in the URI ends in Downloaded (2),
//! Execute Update in Downloaded installs it (3), with 33629 together with
//! the Downloaded instances its argument links, and the device reboots and
//! registers again without a De-register, now reporting the images'
//! versions; a failed download returns to Idle with an Update Result (4
//! connection lost, 5 integrity, 9 protocol); an empty URI cancels. The
//! download itself is the runner's (sans-I/O here): it takes a
//! [`DownloadJob`] and reports back.

use std::time::{Duration, Instant};

use super::Client;
use crate::coap::{BlockValue, Code, Method, Request, RequestId, Response};
use crate::lwm2m::path::{ResourcePath, Value};

/// How the object misbehaves, for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct FotaBehaviour {
    /// This many downloads are corrupted on the way to flash (`u32::MAX`:
    /// every one): their integrity check fails (Update Result 5). One is a
    /// transient fault a retry gets past.
    pub corrupt_downloads: u32,
    /// After Execute Update the device never comes back.
    pub never_returns: bool,
    /// The download's connection drops halfway; the rest is fetched on a
    /// new one with `Range: bytes=N-`.
    pub drop_midway: bool,
    /// The downloader asks to resume at the image's end (`bytes=SIZE-`)
    /// and gets 416, again and again: the nRF "FOTA doom loop".
    pub doom_loop: bool,
    /// The download never ends: State stays Downloading.
    pub stalls: bool,
    /// A Package URI write is answered 4.04.
    pub refuses_uri: bool,
    /// Firmware Update Protocol Support (`/5/0/8`) lists only CoAP and
    /// CoAPS: the image comes block-wise from the LwM2M port.
    pub coap_only: bool,
}

/// A download the runner is to make.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadJob {
    /// Distinguishes a download from the ones an empty URI cancelled.
    pub generation: u64,
    pub uri: String,
    /// Drop the connection halfway and resume (see `drop_midway`).
    pub drop_midway: bool,
    /// Resume at the end, looping (see `doom_loop`).
    pub doom_loop: bool,
}

/// One firmware instance's download and install: `/5/0`, or an instance
/// of Object 33629 (nRF Connect SDK's Advanced Firmware Update, the same
/// resources plus Component Name 14 and Current Version 15).
#[derive(Debug, Clone)]
struct Slot {
    base: ResourcePath,
    generation: u64,
    /// The downloaded image's version, installed at the next reboot.
    downloaded: Option<Option<String>>,
    installing: Option<Option<String>>,
}

#[derive(Debug, Default)]
pub(super) struct Firmware {
    generation: u64,
    /// Downloads corrupted so far (see `FotaBehaviour::corrupt_downloads`).
    corrupted: u32,
    jobs: Vec<DownloadJob>,
    slots: Vec<Slot>,
    /// Rebooted into nothing: the radio stays off.
    pub(super) silent: bool,
    /// A CoAP(S) download under way on the client's own link: its request
    /// and the download it belongs to.
    coap_fetch: Option<(RequestId, u64)>,
}

const STATE_IDLE: i64 = 0;
const STATE_DOWNLOADING: i64 = 1;
const STATE_DOWNLOADED: i64 = 2;
const STATE_UPDATING: i64 = 3;
pub(super) const ADVANCED: u16 = 33629;

fn at(base: &ResourcePath, res: u16) -> ResourcePath {
    ResourcePath::new(&[base.ids()[0], base.ids()[1], res]).expect("resource path")
}

/// The firmware instance a resource path belongs to, if it is one
/// (`/5/0/…` or `/33629/x/…`).
pub(super) fn instance_of(p: &ResourcePath) -> Option<ResourcePath> {
    match p.ids() {
        [5, 0, ..] | [ADVANCED, _, ..] if p.depth() >= 2 => ResourcePath::new(&p.ids()[..2]),
        _ => None,
    }
}

/// The version a Nordic modem delta installs, from its file name:
/// `mfw_nrf9160_update_from_1.3.4_to_1.3.5.bin` → `mfw_nrf9160_1.3.5`
/// (a test fixture's convention: the simulator cannot read a modem image).
fn modem_version_installed(uri: &str) -> Option<String> {
    let name = uri.split('?').next()?.rsplit('/').next()?;
    let (_, to) = crate::firmware::image::modem_delta_versions(name)?;
    let prefix = name.split("_update_from_").next()?;
    Some(format!("{prefix}_{to}"))
}

impl Client {
    /// The firmware instances this device has: `/5/0`, or with
    /// `modem_version` set `/33629/0` (application) and `/33629/1` (modem).
    pub(super) fn firmware_instances(cfg: &super::DeviceConfig) -> Vec<(ResourcePath, Vec<(u16, Value)>)> {
        let inst = |o: u16, i: u16| ResourcePath::new(&[o, i]).expect("instance");
        match &cfg.modem_version {
            None => vec![(inst(5, 0), Vec::new())],
            Some(modem) => vec![
                (
                    inst(ADVANCED, 0),
                    vec![
                        (14, Value::String("application".into())),
                        (15, Value::String(cfg.firmware_version.clone())),
                    ],
                ),
                (
                    inst(ADVANCED, 1),
                    vec![(14, Value::String("modem".into())), (15, Value::String(modem.clone()))],
                ),
            ],
        }
    }

    fn fw_state(&self, base: &ResourcePath) -> i64 {
        match self.values.get(&at(base, 3)) {
            Some(Value::Integer(i)) => *i,
            _ => STATE_IDLE,
        }
    }

    fn set_fw(&mut self, now: Instant, base: &ResourcePath, state: i64, result: i64) {
        self.values.insert(at(base, 3), Value::Integer(state));
        self.values.insert(at(base, 5), Value::Integer(result));
        self.notify(now, Some(base));
    }

    fn slot(&mut self, base: &ResourcePath) -> &mut Slot {
        if let Some(i) = self.firmware.slots.iter().position(|s| s.base == *base) {
            return &mut self.firmware.slots[i];
        }
        self.firmware.slots.push(Slot {
            base: *base,
            generation: 0,
            downloaded: None,
            installing: None,
        });
        self.firmware.slots.last_mut().expect("pushed")
    }

    /// May this Package URI be written now? A new URI only in Idle (Zephyr
    /// refuses one mid-update); an empty one always (it cancels).
    pub(super) fn check_package_uri(&self, base: &ResourcePath, uri: &str) -> Result<(), Code> {
        if !uri.is_empty() && self.cfg.fota.refuses_uri {
            return Err(Code::NOT_FOUND);
        }
        if !uri.is_empty() && self.fw_state(base) != STATE_IDLE {
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        Ok(())
    }

    /// A Package URI was written (already stored in the instance).
    pub(super) fn package_uri_written(&mut self, now: Instant, base: &ResourcePath, uri: &str) {
        self.firmware.generation += 1;
        let generation = self.firmware.generation;
        let slot = self.slot(base);
        let old = slot.generation;
        slot.generation = generation;
        slot.downloaded = None;
        self.firmware.jobs.retain(|j| j.generation != old);
        if uri.is_empty() {
            return self.set_fw(now, base, STATE_IDLE, 0);
        }
        if let Some(rest) = uri.strip_prefix("coap://").or_else(|| uri.strip_prefix("coaps://")) {
            // CoAP(S): GET with Block2 on the client's own link (the server
            // it registered with), as nRF Connect SDK's CoAP downloader does.
            let target = rest.find('/').map_or("", |i| &rest[i..]);
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut req = Request::new(Method::Get, path);
            req.options.uri_query = query.split('&').filter(|q| !q.is_empty()).map(str::to_string).collect();
            req.options.block2 = Some(BlockValue {
                num: 0,
                more: false,
                szx: 6,
            });
            let id = self.coap.request(now, (), req);
            self.firmware.coap_fetch = Some((id, generation));
            self.uplink(now);
            return self.set_fw(now, base, STATE_DOWNLOADING, 0);
        }
        if !uri.starts_with("https://") {
            return self.set_fw(now, base, STATE_IDLE, 9); // Update Result 9: unsupported protocol
        }
        if !self.cfg.fota.stalls {
            self.firmware.jobs.push(DownloadJob {
                generation,
                uri: uri.to_string(),
                drop_midway: self.cfg.fota.drop_midway,
                doom_loop: self.cfg.fota.doom_loop,
            });
        }
        self.set_fw(now, base, STATE_DOWNLOADING, 0);
    }

    /// Is `id` the CoAP(S) firmware download's request?
    pub(super) fn is_coap_download(&self, id: RequestId) -> bool {
        self.firmware.coap_fetch.is_some_and(|(fetch, _)| fetch == id)
    }

    /// The CoAP(S) download's response (the whole body, the exchange layer
    /// having followed the blocks), or `None`: no answer.
    pub(super) fn coap_download_answered(&mut self, now: Instant, response: Option<Response>) {
        let Some((_, generation)) = self.firmware.coap_fetch.take() else {
            return;
        };
        let result = match response {
            Some(r) if r.code == Code::CONTENT => Ok(r.payload),
            Some(r) => Err(format!("the server answered {}", r.code)),
            None => Err("no answer".into()),
        };
        self.download_finished(now, generation, result);
    }

    /// A download to make, once each.
    pub fn poll_download(&mut self) -> Option<DownloadJob> {
        self.firmware.jobs.pop()
    }

    /// The runner's download of `generation` ended.
    pub fn download_finished(&mut self, now: Instant, generation: u64, result: Result<Vec<u8>, String>) {
        let Some(base) = self
            .firmware
            .slots
            .iter()
            .find(|s| s.generation == generation)
            .map(|s| s.base)
        else {
            return;
        };
        if self.fw_state(&base) != STATE_DOWNLOADING {
            return; // cancelled meanwhile
        }
        let mut image = match result {
            Ok(image) => image,
            Err(e) => {
                log::info!("sim {}: download failed: {e}", self.cfg.endpoint);
                return self.set_fw(now, &base, STATE_IDLE, 4);
            }
        };
        if self.firmware.corrupted < self.cfg.fota.corrupt_downloads
            && let Some(b) = image.last_mut()
        {
            self.firmware.corrupted += 1;
            *b ^= 0xff;
        }
        // The image is content-addressed: /fw/SHA256/NAME.
        let uri = match self.values.get(&at(&base, 1)) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let want = uri.split('/').nth(4).unwrap_or_default().to_string();
        let got = crate::firmware::sha256_hex(ring::digest::digest(&ring::digest::SHA256, &image).as_ref());
        if got != want {
            return self.set_fw(now, &base, STATE_IDLE, 5);
        }
        let version = match crate::firmware::image::ImageType::detect(&image) {
            crate::firmware::image::ImageType::ModemDelta | crate::firmware::image::ImageType::ModemFull => {
                modem_version_installed(&uri)
            }
            _ => crate::firmware::image::mcuboot_version(&image),
        };
        self.slot(&base).downloaded = Some(version);
        self.set_fw(now, &base, STATE_DOWNLOADED, 0);
    }

    /// Execute Update (`/5/0/2`, `/33629/x/2`): only a downloaded image can
    /// be installed (4.05 otherwise, as nRF Connect SDK's `-EPERM`); with
    /// Object 33629, argument 0 may link other instances (`0='</33629/1>'`)
    /// that must be Downloaded too, else nothing is installed (its
    /// `-ECANCELED`, a 5.00) — nRF Connect SDK's `update_arguments_parse`.
    pub(super) fn execute_update(&mut self, now: Instant, base: &ResourcePath, args: &str) -> Result<(), Code> {
        if self.fw_state(base) != STATE_DOWNLOADED {
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        let mut bases = vec![*base];
        if !args.is_empty() {
            if base.ids()[0] != ADVANCED || !args.starts_with('0') {
                return Err(Code::INTERNAL_SERVER_ERROR);
            }
            for link in args.split('<').skip(1) {
                let link = link.split('>').next().unwrap_or_default();
                let linked: Option<ResourcePath> = link.parse().ok();
                match linked {
                    Some(l) if l.depth() == 2 && l.ids()[0] == ADVANCED && l != *base => {
                        if self.fw_state(&l) != STATE_DOWNLOADED {
                            return Err(Code::INTERNAL_SERVER_ERROR);
                        }
                        bases.push(l);
                    }
                    _ => return Err(Code::INTERNAL_SERVER_ERROR),
                }
            }
        }
        for b in &bases {
            let slot = self.slot(b);
            slot.installing = slot.downloaded.take();
            self.set_fw(now, b, STATE_UPDATING, 0);
        }
        // Answer, then reboot into the images: a new registration, no
        // De-register (what an nRF device does).
        self.next_update = None;
        if self.cfg.fota.never_returns {
            self.firmware.silent = true;
        } else {
            self.next_register = Some(now + Duration::from_secs(1));
        }
        Ok(())
    }

    /// At a (re)registration: a reboot into installed images reports them.
    pub(super) fn finish_reboot(&mut self) {
        let installed: Vec<(ResourcePath, Option<String>)> = self
            .firmware
            .slots
            .iter_mut()
            .filter_map(|s| Some((s.base, s.installing.take()?)))
            .collect();
        for (base, version) in installed {
            // An image without a version the device can read keeps the old
            // one reported.
            if let Some(v) = version {
                let v = v.strip_suffix("+0").unwrap_or(&v).to_string();
                let modem = base == ResourcePath::new(&[ADVANCED, 1]).expect("path");
                if !modem {
                    self.values
                        .insert(ResourcePath::new(&[3, 0, 3]).expect("path"), Value::String(v.clone()));
                }
                if base.ids()[0] == ADVANCED {
                    self.values.insert(at(&base, 15), Value::String(v));
                }
            }
            self.values.insert(at(&base, 1), Value::String(String::new()));
            self.values.insert(at(&base, 3), Value::Integer(STATE_IDLE));
            self.values.insert(at(&base, 5), Value::Integer(1));
        }
    }
}
