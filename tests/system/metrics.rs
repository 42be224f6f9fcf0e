//! A real scrape of the metrics listener after real traffic, checked by
//! Prometheus' own `promtool check metrics` (Debian `prometheus`).

use std::io::Write;
use std::process::{Command, Stdio};

use flownexus::lwm2m::operation::{OperationKind, OperationState};

use super::{config, device, fleet, run_op, web::http};

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e} (Debian prometheus; `make test` installs it)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_traffic_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let running = flownexus::app::start(config(dir.path())).await.unwrap();
    // Counts below are of this test's own operations.
    super::without_onboarding(dir.path());
    let f = fleet(&running, vec![device("metrics-1")]).await;
    let read = run_op(
        dir.path(),
        "metrics-1",
        OperationKind::Read {
            path: "/3/0/0".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(read.state, OperationState::Succeeded);
    let http_addr = running.http_addr.unwrap();
    assert_eq!(http(http_addr, "GET", "/healthz", &[], b"").await.status, 200);
    running.flush().await;

    let addr = running.metrics_addr.unwrap();
    let r = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    let text = r.text();
    let (ok, said) = promtool(&text);
    assert!(ok, "{said}\n{text}");
    assert_eq!(sample(&text, "flownexus_lwm2m_registrations_total"), 1.0);
    assert_eq!(sample(&text, "flownexus_devices{status=\"online\"}"), 1.0);
    assert!(sample(&text, "flownexus_operations_finished_total{outcome=\"succeeded\"}") >= 1.0);
    assert_eq!(
        sample(&text, "flownexus_operations{kind=\"read\",state=\"succeeded\"}"),
        1.0
    );
    assert!(
        sample(
            &text,
            "flownexus_http_requests_total{route=\"/healthz\",status=\"200\"}"
        ) >= 1.0
    );
    // The health prober's own ClientHellos and the writer's commits count.
    assert!(sample(&text, "flownexus_dtls_hello_verify_requests_total") >= 1.0);
    assert!(sample(&text, "flownexus_store_writer_batches_total") >= 1.0);
    assert_eq!(sample(&text, "flownexus_health_status{component=\"lwm2m\"}"), 0.0);
    assert!(text.contains("flownexus_health_probe_seconds{component=\"writer\"}"));

    // The check can fail: a sample of a family declared twice.
    let (ok, said) = promtool(&format!("{text}# TYPE flownexus_devices gauge\nflownexus_devices 1\n"));
    assert!(!ok, "promtool took a second TYPE line: {said}");

    assert_eq!(http(addr, "GET", "/other", &[], b"").await.status, 404);
    f.stop().await;
    running.stop().await;
}
