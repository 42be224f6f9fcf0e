//! The simulated client's Firmware Update object, Object 5 with pull
//! delivery (Core 1.1 Appendix E.6), as nRF Connect SDK's LwM2M client
//! behaves: a Package URI write in Idle starts a download (State 1),
//! a download whose SHA-256 matches the image named in the URI ends in
//! Downloaded (2), Execute Update in Downloaded installs it (3) and the
//! device reboots and registers again without a De-register, now
//! reporting the image's version; a failed download returns to Idle with
//! an Update Result (4 connection lost, 5 integrity, 9 protocol); an empty
//! URI cancels. The download itself is the runner's (sans-I/O here): it
//! takes a [`DownloadJob`] and reports back.

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

#[derive(Debug, Default)]
pub(super) struct Firmware {
    generation: u64,
    /// Downloads corrupted so far (see `FotaBehaviour::corrupt_downloads`).
    corrupted: u32,
    job: Option<DownloadJob>,
    /// The downloaded image's version, installed at the next reboot.
    installing: Option<Option<String>>,
    downloaded: Option<Option<String>>,
    /// Rebooted into nothing: the radio stays off.
    pub(super) silent: bool,
    /// A CoAP(S) download under way on the client's own link: its request
    /// and the download it belongs to.
    coap_fetch: Option<(RequestId, u64)>,
}

const STATE: &str = "/5/0/3";
const RESULT: &str = "/5/0/5";
const URI: &str = "/5/0/1";
const STATE_IDLE: i64 = 0;
const STATE_DOWNLOADING: i64 = 1;
const STATE_DOWNLOADED: i64 = 2;
const STATE_UPDATING: i64 = 3;

fn path(s: &str) -> ResourcePath {
    s.parse().expect("static path")
}

impl Client {
    fn fw_state(&self) -> i64 {
        match self.values.get(&path(STATE)) {
            Some(Value::Integer(i)) => *i,
            _ => STATE_IDLE,
        }
    }

    fn set_fw(&mut self, now: Instant, state: i64, result: i64) {
        self.values.insert(path(STATE), Value::Integer(state));
        self.values.insert(path(RESULT), Value::Integer(result));
        self.notify(now, Some(&path("/5/0")));
    }

    /// May this Package URI be written now? A new URI only in Idle (Zephyr
    /// refuses one mid-update); an empty one always (it cancels).
    pub(super) fn check_package_uri(&self, uri: &str) -> Result<(), Code> {
        if !uri.is_empty() && self.cfg.fota.refuses_uri {
            return Err(Code::NOT_FOUND);
        }
        if !uri.is_empty() && self.fw_state() != STATE_IDLE {
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        Ok(())
    }

    /// A Package URI was written (already stored at `/5/0/1`).
    pub(super) fn package_uri_written(&mut self, now: Instant, uri: &str) {
        self.firmware.generation += 1;
        self.firmware.job = None;
        self.firmware.downloaded = None;
        if uri.is_empty() {
            return self.set_fw(now, STATE_IDLE, 0);
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
            self.firmware.coap_fetch = Some((id, self.firmware.generation));
            self.uplink(now);
            return self.set_fw(now, STATE_DOWNLOADING, 0);
        }
        if !uri.starts_with("https://") {
            return self.set_fw(now, STATE_IDLE, 9); // Update Result 9: unsupported protocol
        }
        if !self.cfg.fota.stalls {
            self.firmware.job = Some(DownloadJob {
                generation: self.firmware.generation,
                uri: uri.to_string(),
                drop_midway: self.cfg.fota.drop_midway,
                doom_loop: self.cfg.fota.doom_loop,
            });
        }
        self.set_fw(now, STATE_DOWNLOADING, 0);
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

    /// The download to make, once.
    pub fn poll_download(&mut self) -> Option<DownloadJob> {
        self.firmware.job.take()
    }

    /// The runner's download of `generation` ended.
    pub fn download_finished(&mut self, now: Instant, generation: u64, result: Result<Vec<u8>, String>) {
        if generation != self.firmware.generation || self.fw_state() != STATE_DOWNLOADING {
            return; // cancelled meanwhile
        }
        let mut image = match result {
            Ok(image) => image,
            Err(e) => {
                log::info!("sim {}: download failed: {e}", self.cfg.endpoint);
                return self.set_fw(now, STATE_IDLE, 4);
            }
        };
        if self.firmware.corrupted < self.cfg.fota.corrupt_downloads
            && let Some(b) = image.last_mut()
        {
            self.firmware.corrupted += 1;
            *b ^= 0xff;
        }
        // The image is content-addressed: /fw/SHA256/NAME.
        let uri = match self.values.get(&path(URI)) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let want = uri.split('/').nth(4).unwrap_or_default().to_string();
        let got = crate::firmware::sha256_hex(ring::digest::digest(&ring::digest::SHA256, &image).as_ref());
        if got != want {
            return self.set_fw(now, STATE_IDLE, 5);
        }
        self.firmware.downloaded = Some(crate::firmware::image::mcuboot_version(&image));
        self.set_fw(now, STATE_DOWNLOADED, 0);
    }

    /// Execute Update (`/5/0/2`): only a downloaded image can be installed.
    pub(super) fn execute_update(&mut self, now: Instant) -> Result<(), Code> {
        if self.fw_state() != STATE_DOWNLOADED {
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        self.firmware.installing = self.firmware.downloaded.take();
        self.set_fw(now, STATE_UPDATING, 0);
        // Answer, then reboot into the image: a new registration, no
        // De-register (what an nRF device does).
        self.next_update = None;
        if self.cfg.fota.never_returns {
            self.firmware.silent = true;
        } else {
            self.next_register = Some(now + Duration::from_secs(1));
        }
        Ok(())
    }

    /// At a (re)registration: a reboot into an installed image reports it.
    pub(super) fn finish_reboot(&mut self) {
        let Some(version) = self.firmware.installing.take() else {
            return;
        };
        // An image without an MCUboot header carries no version: the
        // device then keeps reporting its old one.
        if let Some(v) = version {
            let v = v.strip_suffix("+0").unwrap_or(&v).to_string();
            self.values.insert(path("/3/0/3"), Value::String(v));
        }
        self.values.insert(path(URI), Value::String(String::new()));
        self.values.insert(path(STATE), Value::Integer(STATE_IDLE));
        self.values.insert(path(RESULT), Value::Integer(1));
    }
}
