//! `flownexus bench fota`: one campaign over N simulated devices (plain
//! CoAP, a 512 KiB image by default), beside the download server alone
//! serving the same devices the same bytes in the same pattern (2 KB
//! ranges on one keep-alive TLS connection each, the same number at once)
//! in the same run. Reports devices updated per minute, the ratio of the
//! campaign's wall time to the download server's alone (what orchestration
//! adds: the LwM2M operations, the waits for notifications, the reboots),
//! and the server's RSS during the campaign.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ServerProcess, device_configs, registered};
use crate::campaign::{Request, State, Target, WaveSize};
use crate::firmware::{Catalogue, Upload};
use crate::lwm2m::Models;
use crate::sim::Fleet;
use crate::store::{Store, now_ms};

/// `bench fota`'s knobs.
pub struct FotaBench {
    pub devices: usize,
    pub image_kib: usize,
    /// Devices downloading at once, in both halves.
    pub concurrent: u32,
}

fn image(kib: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut img: Vec<u8> = (0..kib * 1024).map(|_| rng.u8(..)).collect();
    img[..4].copy_from_slice(&[0x3d, 0xb8, 0xf3, 0x96]); // MCUboot ih_magic
    img[20..28].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]); // ih_ver 2.0.0+0
    img
}

pub async fn run(b: FotaBench, models: &Arc<Models>) -> anyhow::Result<()> {
    let img = image(b.image_kib);
    let upload = Upload {
        name: "bench-app.bin",
        version: Some("2.0.0"),
        notes: "",
        uploader: "bench",
    };
    let server = ServerProcess::start_with(
        &[
            ("FLOWNEXUS_FOTA_MAX_RETRIES", "0"),
            ("FLOWNEXUS_COAPS_ENABLED", "false"),
            ("FLOWNEXUS_HTTP_ENABLED", "false"),
        ],
        |dir| {
            let mut store = Store::open(&dir.join("flownexus.sqlite3"))?;
            Catalogue::new(dir, 1 << 30).add(&mut store, &mut img.as_slice(), &upload, &mut |_| {})?;
            Ok(())
        },
    )?;
    let dir = server.data_dir().to_path_buf();
    let ca = dir.join("fw-tls/ca.pem");
    let fw = server.fw.context("the firmware server is off")?;
    let store = Store::open(&dir.join("flownexus.sqlite3"))?;
    let firmware = store.firmware("bench-app.bin")?;
    let n = b.devices;

    let mut configs = device_configs(n, "bench:fota:", 3600);
    for c in &mut configs {
        c.fw_ca = Some(ca.clone());
        c.params.ack_timeout = Duration::from_secs(2);
    }
    let endpoints: Vec<String> = configs.iter().map(|c| c.endpoint.clone()).collect();
    let fleet = Fleet::spawn(configs, server.coap, models.clone(), false).await?;
    registered(&fleet, n, Duration::from_secs(300)).await?;
    println!(
        "bench fota: {n} devices, a {} KiB image, {} downloading at once",
        b.image_kib, b.concurrent
    );

    // The download server alone: the same devices' tokens, the same
    // 2 KB-range pattern, `concurrent` at a time.
    let key = crate::download::token::TokenKey::load_or_create(&dir.join("fw-token.key"))?;
    let config = crate::sim::https::client_config(&ca, &rustls::version::TLS12)?;
    let base = format!("https://{fw}");
    let uris: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let token = key.sign(e, &firmware.sha256, now_ms() / 1000 + 3600);
            crate::fota::package_uri(&base, &firmware.sha256, &firmware.name, &token).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(b.concurrent as usize));
    let mut tasks = Vec::with_capacity(n);
    for uri in uris {
        let (gate, config) = (gate.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.expect("open");
            crate::sim::https::fetch(&uri, config, 2048, false, false).await
        }));
    }
    for t in tasks {
        let body = t.await?.map_err(anyhow::Error::msg)?;
        if body.len() != img.len() {
            bail!("a download returned {} bytes, not {}", body.len(), img.len());
        }
    }
    let alone = t.elapsed();
    println!(
        "  download server alone: {:.1} s ({:.0} devices/min, {:.0} MB/s)",
        alone.as_secs_f64(),
        n as f64 * 60.0 / alone.as_secs_f64(),
        (n * img.len()) as f64 / alone.as_secs_f64() / 1e6
    );

    // The campaign: every device, one wave.
    let req = Request {
        name: "bench".into(),
        image: "bench-app.bin".into(),
        target: Target {
            all: true,
            ..Target::default()
        },
        waves: vec![WaveSize::Percent(100)],
        success_threshold: Some(100),
        error_threshold: Some(0),
        confirm_waves: false,
        max_concurrent: Some(b.concurrent),
        window: None,
        time_zone: None,
        late_joiners: false,
    };
    let rss_before = server.status_kib("VmRSS:");
    let t = Instant::now();
    let id = crate::shell::campaign::create(&store, &req, "bench")?;
    let mut rss_peak = rss_before;
    let mut shown = Instant::now();
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(server.status_kib("VmRSS:"));
        if shown.elapsed() >= Duration::from_secs(30) {
            shown = Instant::now();
            let w = crate::campaign::sum(&store.campaign_counts(id, 1)?.waves);
            println!(
                "    {:>4.0} s: {} verified, {} downloading, {} installing, {} pending",
                t.elapsed().as_secs_f64(),
                w.succeeded,
                w.downloading,
                w.installing,
                w.pending
            );
        }
        let c = store.campaign(id)?;
        match c.state {
            State::Finished => break t.elapsed(),
            State::Running => {}
            s => {
                let counts = store.campaign_counts(id, 1)?;
                bail!("the campaign is {} ({:?}): {counts:?}", s.as_str(), c.reason);
            }
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("the campaign did not finish within an hour");
        }
    };
    let totals = crate::campaign::sum(&store.campaign_counts(id, 1)?.waves);
    if totals.succeeded != n as u64 {
        bail!("{} of {n} verified", totals.succeeded);
    }
    println!(
        "  campaign: {:.1} s, {n} verified ({:.0} devices/min); ratio to the download server alone {:.2}",
        finished.as_secs_f64(),
        n as f64 * 60.0 / finished.as_secs_f64(),
        finished.as_secs_f64() / alone.as_secs_f64()
    );
    println!(
        "  server RSS: {} MiB before the campaign, {} MiB at its peak",
        rss_before >> 10,
        rss_peak >> 10
    );
    fleet.stop().await;
    Ok(())
}
