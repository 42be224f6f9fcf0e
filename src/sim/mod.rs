//! `flownexus sim`: simulated LwM2M devices against a server, each with its
//! own UDP socket (so the server sees distinct peers, as with real devices).

pub mod client;
pub mod https;
pub mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::lwm2m::content;
use crate::lwm2m::model::Models;
pub use client::{Client, Counters, DeviceConfig, FotaBehaviour};
use link::Link;

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// The LwM2M server's CoAP address.
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub server: SocketAddr,
    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Endpoint names are PREFIX + index.
    #[arg(long, default_value = "urn:sim:")]
    pub prefix: String,
    /// Index of the first device: several simulator processes share one
    /// numbering (and so spread over source addresses without clashing).
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
    #[arg(long, default_value_t = 300)]
    pub lifetime: u32,
    /// Seconds between Updates (default: 80% of the lifetime).
    #[arg(long)]
    pub update_interval_s: Option<u64>,
    /// Queue mode (binding Q): the device sleeps outside its awake window.
    #[arg(long)]
    pub queue_mode: bool,
    #[arg(long, default_value_t = 20)]
    pub awake_window_s: u64,
    /// senml-cbor, senml-json or tlv.
    #[arg(long, default_value = "senml-cbor")]
    pub format: String,
    #[arg(long, default_value_t = 10_000)]
    pub notify_interval_ms: u64,
    /// Send the temperature with `POST /dp` this often.
    #[arg(long)]
    pub send_interval_s: Option<u64>,
    /// Stop (and de-register) after this many seconds; default: until Ctrl-C.
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Speak CoAP over DTLS with this key (hex); each device's PSK identity
    /// is its endpoint name. Point --server at the CoAPS port.
    #[arg(long)]
    pub psk_key_hex: Option<String>,
    /// The CA of the firmware server (its `fw-tls/ca.pem` in development):
    /// devices download firmware updates over HTTPS trusting it.
    #[arg(long)]
    pub fw_ca: Option<std::path::PathBuf>,
    /// Share of devices (0 to 1) whose first firmware download is corrupted
    /// on the way to flash: the integrity check fails (Update Result 5),
    /// a retry succeeds.
    #[arg(long, default_value_t = 0.0)]
    pub fota_corrupt: f64,
    /// Share of devices that never come back after Execute Update.
    #[arg(long, default_value_t = 0.0)]
    pub fota_never_return: f64,
    /// Share of devices whose download connection drops halfway and
    /// resumes with `Range: bytes=N-`.
    #[arg(long, default_value_t = 0.0)]
    pub fota_drop_midway: f64,
}

/// Whether device `index` is among the `fraction` picked for a fault,
/// spread over the numbering (not the first ones) and different for each
/// `fault`, the same in every run.
pub fn picked(index: usize, fraction: f64, fault: u64) -> bool {
    let h = (index as u64 ^ fault.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

impl SimArgs {
    pub fn device_config(&self, index: usize) -> anyhow::Result<DeviceConfig> {
        let mut c = DeviceConfig::new(&format!("{}{}", self.prefix, self.first_index + index));
        c.lifetime = self.lifetime;
        c.update_interval = Duration::from_secs(
            self.update_interval_s
                .unwrap_or(u64::from(self.lifetime) * 4 / 5)
                .max(1),
        );
        c.queue_mode = self.queue_mode;
        c.awake_window = Duration::from_secs(self.awake_window_s);
        c.format = match self.format.as_str() {
            "senml-cbor" => content::SENML_CBOR,
            "senml-json" => content::SENML_JSON,
            "tlv" => content::TLV,
            other => anyhow::bail!("--format {other}: expected senml-cbor, senml-json or tlv"),
        };
        c.notify_interval = Duration::from_millis(self.notify_interval_ms.max(1));
        c.send_interval = self.send_interval_s.map(Duration::from_secs);
        if let Some(key) = &self.psk_key_hex {
            c.psk = Some(crate::psk::Psk::from_hex(&c.endpoint, key)?);
        }
        c.fw_ca = self.fw_ca.clone();
        for (name, f) in [
            ("--fota-corrupt", self.fota_corrupt),
            ("--fota-never-return", self.fota_never_return),
            ("--fota-drop-midway", self.fota_drop_midway),
        ] {
            if !(0.0..=1.0).contains(&f) {
                anyhow::bail!("{name} {f}: a share from 0 to 1");
            }
        }
        let i = self.first_index + index;
        if picked(i, self.fota_corrupt, 1) {
            c.fota.corrupt_downloads = 1;
        }
        c.fota.never_returns = picked(i, self.fota_never_return, 2);
        c.fota.drop_midway = picked(i, self.fota_drop_midway, 3);
        Ok(c)
    }
}

/// Fleet-wide counters, summed over devices.
#[derive(Debug, Default)]
pub struct Stats {
    pub registrations: AtomicU64,
    pub updates: AtomicU64,
    pub requests_served: AtomicU64,
    pub notifications: AtomicU64,
    pub failures: AtomicU64,
    pub registered: AtomicI64,
    /// Completed DTLS handshakes.
    pub handshakes: AtomicU64,
    /// DTLS handshakes refused or unanswered: a wrong PSK, an identity the
    /// server does not know.
    pub failed_handshakes: AtomicU64,
}

impl Stats {
    /// The counters as `sim` prints them.
    pub fn line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "registered {} | registrations {} updates {} served {} notifications {} failures {} | \
             DTLS handshakes {} failed {}",
            self.registered.load(Ordering::Relaxed),
            n(&self.registrations),
            n(&self.updates),
            n(&self.requests_served),
            n(&self.notifications),
            n(&self.failures),
            n(&self.handshakes),
            n(&self.failed_handshakes),
        )
    }

    fn add(&self, before: &Counters, after: &Counters) {
        self.registrations
            .fetch_add(after.registrations - before.registrations, Ordering::Relaxed);
        self.updates
            .fetch_add(after.updates - before.updates, Ordering::Relaxed);
        self.requests_served
            .fetch_add(after.requests_served - before.requests_served, Ordering::Relaxed);
        self.notifications
            .fetch_add(after.notifications - before.notifications, Ordering::Relaxed);
        self.failures
            .fetch_add(after.failures - before.failures, Ordering::Relaxed);
    }
}

/// Devices per loopback address: the ephemeral port range (about 28,000
/// ports) limits sockets per source address, so large fleets spread over
/// 127.0.0.1, 127.0.0.2, … (all of 127/8 is loopback on Linux).
const DEVICES_PER_ADDRESS: usize = 20_000;

fn local_addr(server: SocketAddr, index: usize) -> SocketAddr {
    if server.is_ipv6() {
        return "[::1]:0".parse().expect("addr");
    }
    let n = (index / DEVICES_PER_ADDRESS) as u32 + 1;
    SocketAddr::from((std::net::Ipv4Addr::from(0x7f00_0000 + n), 0))
}

/// Running simulated devices.
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    rebinds: Vec<Arc<Notify>>,
    pub stats: Arc<Stats>,
}

/// Raise the open-file limit to what the kernel allows: one socket a device.
pub fn raise_fd_limit(wanted: u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < wanted {
            let target = libc::rlimit {
                rlim_cur: wanted.max(r.rlim_cur),
                rlim_max: wanted.max(r.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &target) != 0 {
                let soft = libc::rlimit {
                    rlim_cur: r.rlim_max,
                    rlim_max: r.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
            }
        }
    }
}

impl Fleet {
    /// Start `configs.len()` devices against `server`.
    pub async fn spawn(
        configs: Vec<DeviceConfig>,
        server: SocketAddr,
        models: Arc<Models>,
        continuous_updates: bool,
    ) -> std::io::Result<Fleet> {
        Fleet::spawn_from(0, configs, server, models, continuous_updates).await
    }

    /// As [`Fleet::spawn`], numbering devices from `first_index` for the
    /// choice of source address.
    pub async fn spawn_from(
        first_index: usize,
        configs: Vec<DeviceConfig>,
        server: SocketAddr,
        models: Arc<Models>,
        continuous_updates: bool,
    ) -> std::io::Result<Fleet> {
        raise_fd_limit(configs.len() as u64 + 1024);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let mut tasks = Vec::with_capacity(configs.len());
        let mut rebinds = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.into_iter().enumerate() {
            let link = Link::open(local_addr(server, first_index + i), server, cfg.psk.as_ref()).await?;
            let mut client = Client::new(cfg, models.clone(), fastrand::u64(..) ^ i as u64);
            client.continuous_updates = continuous_updates;
            let rebind = Arc::new(Notify::new());
            rebinds.push(rebind.clone());
            tasks.push(tokio::spawn(run_device(
                client,
                link,
                rebind,
                stop_rx.clone(),
                stats.clone(),
            )));
        }
        Ok(Fleet {
            stop,
            tasks,
            rebinds,
            stats,
        })
    }

    /// Move device `index` to a new source port, as a NAT rebinding would.
    pub fn rebind(&self, index: usize) {
        self.rebinds[index].notify_one();
    }

    /// De-register every device and wait for them to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn run_device(
    mut client: Client,
    mut link: Link,
    rebind: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
) {
    let mut buf = vec![0u8; 2048];
    // Firmware downloads run beside the CoAP loop and report back here.
    let (fetched_tx, mut fetched) = tokio::sync::mpsc::channel(1);
    let start = tokio::time::Instant::now().into_std();
    client.start(start);
    let mut before = client.counters;
    let (mut handshakes, mut failed_handshakes) = (0, 0);
    let mut registered = false;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        while let Some(job) = client.poll_download() {
            let ca = client.config().fw_ca.clone();
            let done = fetched_tx.clone();
            tokio::spawn(async move {
                let result = download(&job, ca.as_deref()).await;
                let _ = done.send((job.generation, result)).await;
            });
        }
        while let Some(bytes) = client.poll_transmit(std::time::Instant::now()) {
            link.send(bytes).await;
        }
        let after = client.counters;
        if after.timeouts > before.timeouts {
            link.reconnect().await;
        }
        stats.add(&before, &after);
        before = after;
        stats
            .handshakes
            .fetch_add(link.handshakes() - handshakes, Ordering::Relaxed);
        handshakes = link.handshakes();
        stats
            .failed_handshakes
            .fetch_add(link.failed_handshakes() - failed_handshakes, Ordering::Relaxed);
        failed_handshakes = link.failed_handshakes();
        if client.is_registered() != registered {
            registered = client.is_registered();
            stats
                .registered
                .fetch_add(if registered { 1 } else { -1 }, Ordering::Relaxed);
        }
        let deadline = match (client.poll_timeout(), link.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(tokio::time::Instant::from_std)
        .unwrap_or_else(far);
        tokio::select! {
            _ = stop.changed() => {
                client.deregister(std::time::Instant::now());
                while let Some(bytes) = client.poll_transmit(std::time::Instant::now()) {
                    link.send(bytes).await;
                }
                if registered {
                    stats.registered.fetch_sub(1, Ordering::Relaxed);
                }
                return;
            }
            r = link.recv(&mut buf) => {
                if let Ok((messages, established)) = r {
                    let now = std::time::Instant::now();
                    for m in messages {
                        client.handle_datagram(now, &m);
                    }
                    // A new session after the first: tell the server where
                    // the device is now (Zephyr updates after reconnecting).
                    if established && link.handshakes() > 1 {
                        client.update_now(now);
                    }
                }
            }
            Some((generation, result)) = fetched.recv() => {
                client.download_finished(std::time::Instant::now(), generation, result);
            }
            _ = rebind.notified() => {
                if let Err(e) = link.rebind().await {
                    log::warn!("sim: rebind of {}: {e}", client.endpoint());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = std::time::Instant::now();
                client.handle_timeout(now);
                link.handle_timeout(now).await;
            }
        }
    }
}

/// The fragment size nRF Connect SDK's downloader asks for
/// (`CONFIG_DOWNLOAD_CLIENT_HTTP_FRAG_SIZE_2048`).
const FRAGMENT: usize = 2048;

/// A device's firmware download over HTTPS, trusting `ca`.
async fn download(job: &client::DownloadJob, ca: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let ca = ca.ok_or("no CA for the firmware server (--fw-ca)")?;
    let config = https::client_config(ca, &rustls::version::TLS12).map_err(|e| e.to_string())?;
    https::fetch(&job.uri, config, FRAGMENT, job.drop_midway, job.doom_loop).await
}

/// `flownexus sim`: run devices, print counters every 5 s.
pub async fn run(args: SimArgs) -> anyhow::Result<std::process::ExitCode> {
    let configs = (0..args.count)
        .map(|i| args.device_config(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fleet = Fleet::spawn_from(
        args.first_index,
        configs,
        args.server,
        Arc::new(Models::embedded()),
        false,
    )
    .await?;
    let stats = fleet.stats.clone();
    let report = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!("{}", stats.line());
        }
    };
    let until = async {
        match args.duration_s {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        _ = report => {}
        _ = until => {}
    }
    fleet.stop().await;
    println!("{}", stats.line());
    // Nothing registered and every handshake refused: say what to check
    // instead of ending as if all were well.
    let failed = stats.failed_handshakes.load(Ordering::Relaxed);
    if stats.registrations.load(Ordering::Relaxed) == 0 && failed > 0 {
        eprintln!(
            "sim: no device registered; {failed} DTLS handshakes failed: check the PSK identity and key \
             (the server logs a refused key of a provisioned device)"
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
