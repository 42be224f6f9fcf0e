//! `flownexus healthcheck`: what the running server's probes say (its
//! `/healthz`), or, with the dashboard off, the same probes run from here.
//! Exits non-zero when a component is down or the server is not running:
//! Quadlet's `HealthCmd=` and the deploy script read the exit code.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::health::{Status, Summary};
use crate::shell::health::{self as probes, loopback};

pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = std::fs::read_to_string(config.runtime_path())
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let Some(runtime) = runtime else {
        println!(
            "server: down (no {} : is `flownexus serve` running with this data directory?)",
            config.runtime_path().display()
        );
        return Ok(ExitCode::FAILURE);
    };
    let bound = |key: &str| {
        runtime[key]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(loopback)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let status = match bound("http") {
        Some(http) => rt.block_on(ask_server(http))?,
        None => rt.block_on(probe_here(config, bound("coap"), bound("coaps"), bound("fw"))),
    };
    println!("flownexus: {}", status.as_str());
    Ok(if status == Status::Down {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The server's own verdict, from `/healthz`.
async fn ask_server(http: SocketAddr) -> anyhow::Result<Status> {
    let answer = tokio::time::timeout(probes::PROBE_TIMEOUT, probes::get_healthz(http)).await;
    let (code, body) = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            println!("http: down ({http}: {e:#})");
            return Ok(Status::Down);
        }
        Err(_) => {
            println!(
                "http: down ({http}: no answer within {} s)",
                probes::PROBE_TIMEOUT.as_secs()
            );
            return Ok(Status::Down);
        }
    };
    let summary: Summary =
        serde_json::from_str(&body).with_context(|| format!("{http}/healthz answered {code}: {body}"))?;
    for (name, status) in &summary.components {
        println!("{name}: {}", status.as_str());
    }
    Ok(summary.status)
}

/// With the dashboard off: the store, and each listener's probe from here.
async fn probe_here(
    config: &Config,
    coap: Option<SocketAddr>,
    coaps: Option<SocketAddr>,
    fw: Option<SocketAddr>,
) -> Status {
    let mut worst = Status::Ok;
    let mut show = |name: &str, r: anyhow::Result<String>| match r {
        Ok(what) => println!("{name}: ok ({what})"),
        Err(e) => {
            worst = Status::Down;
            println!("{name}: down ({e:#})");
        }
    };
    let store = super::open_store(config).and_then(|s| Ok(format!("schema {}", s.schema_version()?)));
    show("store", store);
    let within = |f| async move {
        tokio::time::timeout(probes::PROBE_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {} s",
                    probes::PROBE_TIMEOUT.as_secs()
                ))
            })
    };
    if let Some(a) = coap {
        show("coap", within(Box::pin(probes::coap_ping(a)) as Probe).await);
    }
    if let Some(a) = coaps {
        show("coaps", within(Box::pin(probes::dtls_hello(a)) as Probe).await);
    }
    if let Some(a) = fw {
        let proxy = config.fw.proxy_protocol;
        show("firmware", within(Box::pin(probes::tls_hello(a, proxy)) as Probe).await);
    }
    worst
}

type Probe = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>>>>;
