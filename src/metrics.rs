//! What the server counts, in the Prometheus text exposition format
//! (version 0.0.4: `# HELP`, `# TYPE`, one sample per line). Counters are
//! atomics and small maps the shells bump as things happen; gauges are
//! read from the store and the health board at scrape time
//! ([`Gauges`]); [`render`] is a pure function of both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lwm2m::server::ServerEvent;

/// A firmware response's transport and status.
type ResponseKey = (&'static str, u16);

/// The counters, shared by every shell.
#[derive(Debug, Default)]
pub struct Metrics {
    registrations: AtomicU64,
    registration_updates: AtomicU64,
    deregistrations: AtomicU64,
    expiries: AtomicU64,
    values: AtomicU64,
    rejected: AtomicU64,
    /// Finished operations by outcome.
    operations: Mutex<BTreeMap<&'static str, u64>>,
    /// Each DTLS shard's counters as it last published them.
    dtls: Mutex<Vec<crate::dtls::Counters>>,
    /// Firmware responses (count, body bytes) by transport ("https",
    /// "coap") and status.
    downloads: Mutex<BTreeMap<ResponseKey, (u64, u64)>>,
    doom_loops: AtomicU64,
    writer_batches: AtomicU64,
    writer_changes: AtomicU64,
    /// HTTP requests by route pattern and status.
    http: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Registrations of unprovisioned endpoints, as the LwM2M task last
    /// published them.
    admission: Mutex<crate::lwm2m::admission::Counters>,
    unverified: Mutex<crate::coap::amplification::Counters>,
    /// Events each outbox sink took, and its backlog when last looked at.
    outbox: Mutex<BTreeMap<&'static str, (u64, u64)>>,
    outbox_dropped: AtomicU64,
}

impl Metrics {
    /// One of the LwM2M server's events (called where they are polled, so
    /// none is missed).
    pub fn observe<P>(&self, ev: &ServerEvent<P>) {
        let bump = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        match ev {
            ServerEvent::Registered { .. } => bump(&self.registrations, 1),
            ServerEvent::Updated { .. } => bump(&self.registration_updates, 1),
            ServerEvent::Deregistered { .. } => bump(&self.deregistrations, 1),
            ServerEvent::Expired { .. } => bump(&self.expiries, 1),
            ServerEvent::ValuesReported { records, .. } => bump(&self.values, records.len() as u64),
            ServerEvent::Rejected { .. } => bump(&self.rejected, 1),
            ServerEvent::OperationFinished { outcome, .. } => {
                let state = outcome.state().as_str();
                *self.operations.lock().expect("metrics").entry(state).or_default() += 1;
            }
            _ => {}
        }
    }

    /// DTLS shard `shard`'s counters now.
    pub fn dtls_shard(&self, shard: usize, counters: crate::dtls::Counters) {
        let mut d = self.dtls.lock().expect("metrics");
        if d.len() <= shard {
            d.resize(shard + 1, crate::dtls::Counters::default());
        }
        d[shard] = counters;
    }

    /// A firmware response: its transport, status and body bytes.
    pub fn download(&self, transport: &'static str, status: u16, bytes: u64, doom_loop: bool) {
        let mut d = self.downloads.lock().expect("metrics");
        let e = d.entry((transport, status)).or_default();
        e.0 += 1;
        e.1 += bytes;
        if doom_loop {
            self.doom_loops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The LwM2M server's admission counters now.
    pub fn admission(&self, counters: crate::lwm2m::admission::Counters) {
        *self.admission.lock().expect("metrics") = counters;
    }

    /// The LwM2M server's counters of firmware GETs from unverified sources.
    pub fn unverified(&self, counters: crate::coap::amplification::Counters) {
        *self.unverified.lock().expect("metrics") = counters;
    }

    /// The store writer committed `changes` in one transaction.
    pub fn writer_batch(&self, changes: usize) {
        self.writer_batches.fetch_add(1, Ordering::Relaxed);
        self.writer_changes.fetch_add(changes as u64, Ordering::Relaxed);
    }

    /// The outbox sink `sink` took `delivered` more events; `backlog` wait.
    pub fn outbox(&self, sink: &'static str, delivered: u64, backlog: u64) {
        let mut o = self.outbox.lock().expect("metrics");
        let e = o.entry(sink).or_default();
        e.0 += delivered;
        e.1 = backlog;
    }

    /// Value reports dropped from a full outbox.
    pub fn outbox_dropped(&self, n: u64) {
        self.outbox_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The dashboard or API answered `route` (its pattern, never the
    /// concrete path: endpoints would make the label set unbounded).
    pub fn http(&self, route: &'static str, status: u16) {
        *self.http.lock().expect("metrics").entry((route, status)).or_default() += 1;
    }
}

/// What is read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Devices by status (online, sleeping, offline).
    pub devices: Vec<(&'static str, u64)>,
    /// Operations in the store by kind and state.
    pub operations: Vec<(String, String, u64)>,
    pub value_journal: u64,
    pub active_updates: u64,
    /// Each component's health (0 ok, 1 degraded, 2 down) and its last
    /// probe's round trip in seconds (the writer's is its commit lag).
    pub health: Vec<(String, u8, Option<f64>)>,
}

/// A label value, escaped as the text format requires (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }
}

/// The exposition of `m` and `g`.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut o = Out(String::new());
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    o.family("flownexus_devices", "gauge", "Devices by status.");
    for (status, n) in &g.devices {
        o.sample("flownexus_devices", &[("status", status)], n);
    }
    for (name, help, counter) in [
        (
            "flownexus_lwm2m_registrations_total",
            "LwM2M Register requests accepted (Core 6.2.1).",
            &m.registrations,
        ),
        (
            "flownexus_lwm2m_updates_total",
            "LwM2M registration Update requests accepted (Core 6.2.2).",
            &m.registration_updates,
        ),
        (
            "flownexus_lwm2m_deregistrations_total",
            "LwM2M De-register requests.",
            &m.deregistrations,
        ),
        (
            "flownexus_lwm2m_expiries_total",
            "Registrations whose lifetime passed without an Update.",
            &m.expiries,
        ),
        (
            "flownexus_lwm2m_values_total",
            "Resource values reported (notifications, Send, Read answers).",
            &m.values,
        ),
        (
            "flownexus_lwm2m_rejected_total",
            "Requests from devices refused (bad request, unknown endpoint, wrong key).",
            &m.rejected,
        ),
    ] {
        o.counter(name, help, load(counter));
    }
    let admission = *m.admission.lock().expect("metrics");
    let unverified = *m.unverified.lock().expect("metrics");
    for (name, help, outcomes) in [
        (
            "flownexus_lwm2m_unprovisioned_registrations_total",
            "Register requests of endpoints never provisioned, admitted or refused by the per-source limits (lwm2m.unprovisioned_per_source*).",
            [
                ("admitted", admission.admitted),
                ("refused_too_many", admission.refused_too_many),
                ("refused_too_fast", admission.refused_too_fast),
            ],
        ),
        (
            "flownexus_coap_unverified_firmware_requests_total",
            "Firmware GETs on the LwM2M port from sources neither registered nor in a DTLS session: answered within 3x their size, refused (no download token), or over the per-source rate.",
            [
                ("answered", unverified.answered),
                ("refused", unverified.refused),
                ("rate_limited", unverified.rate_limited),
            ],
        ),
    ] {
        o.family(name, "counter", help);
        for (outcome, n) in outcomes {
            o.sample(name, &[("outcome", outcome)], n);
        }
    }
    o.family(
        "flownexus_operations_finished_total",
        "counter",
        "Operations that ended, by outcome.",
    );
    for (state, n) in m.operations.lock().expect("metrics").iter() {
        o.sample("flownexus_operations_finished_total", &[("outcome", state)], n);
    }
    o.family(
        "flownexus_operations",
        "gauge",
        "Operations in the store by kind and state (queued ones are the queue depth).",
    );
    for (kind, state, n) in &g.operations {
        o.sample("flownexus_operations", &[("kind", kind), ("state", state)], n);
    }
    let dtls = m.dtls.lock().expect("metrics").clone();
    let sum = |f: fn(&crate::dtls::Counters) -> u64| dtls.iter().map(f).sum::<u64>();
    o.counter(
        "flownexus_dtls_hello_verify_requests_total",
        "HelloVerifyRequests sent (RFC 6347 4.2.1).",
        sum(|c| c.hello_verify_requests),
    );
    o.counter(
        "flownexus_dtls_handshakes_started_total",
        "DTLS handshakes begun after a valid cookie.",
        sum(|c| c.handshakes_started),
    );
    o.counter(
        "flownexus_dtls_handshakes_completed_total",
        "DTLS handshakes completed.",
        sum(|c| c.handshakes_completed),
    );
    o.family(
        "flownexus_dtls_handshake_failures_total",
        "counter",
        "DTLS handshakes that did not complete, and ClientHellos refused, by reason.",
    );
    for (reason, n) in [
        ("failed", sum(|c| c.handshakes_failed)),
        ("evicted", sum(|c| c.handshakes_evicted)),
        ("rate_limited", sum(|c| c.rate_limited)),
    ] {
        o.sample("flownexus_dtls_handshake_failures_total", &[("reason", reason)], n);
    }
    o.counter(
        "flownexus_dtls_dropped_total",
        "DTLS datagrams dropped (malformed, unknown session, replayed).",
        sum(|c| c.dropped),
    );
    let downloads = m.downloads.lock().expect("metrics").clone();
    o.family(
        "flownexus_firmware_responses_total",
        "counter",
        "Firmware responses by transport and status.",
    );
    for ((transport, status), (n, _)) in &downloads {
        o.sample(
            "flownexus_firmware_responses_total",
            &[("transport", transport), ("status", &status.to_string())],
            n,
        );
    }
    o.family(
        "flownexus_firmware_bytes_total",
        "counter",
        "Firmware body bytes sent, by transport.",
    );
    let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for ((transport, _), (_, b)) in &downloads {
        *bytes.entry(transport).or_default() += b;
    }
    for (transport, b) in bytes {
        o.sample("flownexus_firmware_bytes_total", &[("transport", transport)], b);
    }
    let outbox = m.outbox.lock().expect("metrics").clone();
    o.family(
        "flownexus_outbox_delivered_total",
        "counter",
        "Events each outbox sink took (Celery: task messages the broker accepted).",
    );
    for (sink, (n, _)) in &outbox {
        o.sample("flownexus_outbox_delivered_total", &[("sink", sink)], n);
    }
    o.family(
        "flownexus_outbox_backlog",
        "gauge",
        "Events waiting in the outbox for each sink.",
    );
    for (sink, (_, n)) in &outbox {
        o.sample("flownexus_outbox_backlog", &[("sink", sink)], n);
    }
    o.counter(
        "flownexus_outbox_dropped_total",
        "Value reports dropped, oldest first, from a full outbox (events.outbox_max_rows); state events never are.",
        load(&m.outbox_dropped),
    );
    o.counter(
        "flownexus_firmware_doom_loops_total",
        "Downloads resumed at the end of the image (the nRF FOTA doom loop).",
        load(&m.doom_loops),
    );
    o.family(
        "flownexus_firmware_updates_active",
        "gauge",
        "Firmware updates under way.",
    );
    o.sample("flownexus_firmware_updates_active", &[], g.active_updates);
    o.counter(
        "flownexus_store_writer_batches_total",
        "Transactions the store writer committed.",
        load(&m.writer_batches),
    );
    o.counter(
        "flownexus_store_writer_changes_total",
        "Changes the store writer committed (divided by batches: the mean batch size).",
        load(&m.writer_changes),
    );
    o.family(
        "flownexus_store_value_journal",
        "gauge",
        "Reported values waiting in the journal to move into the history.",
    );
    o.sample("flownexus_store_value_journal", &[], g.value_journal);
    o.family(
        "flownexus_health_status",
        "gauge",
        "Each component's health: 0 ok, 1 degraded, 2 down.",
    );
    for (component, status, _) in &g.health {
        o.sample("flownexus_health_status", &[("component", component)], status);
    }
    o.family(
        "flownexus_health_probe_seconds",
        "gauge",
        "The last health probe's round trip (the writer's: its commit lag).",
    );
    for (component, _, took) in &g.health {
        if let Some(s) = took {
            o.sample("flownexus_health_probe_seconds", &[("component", component)], s);
        }
    }
    o.family(
        "flownexus_http_requests_total",
        "counter",
        "Dashboard and API requests by route and status.",
    );
    for ((route, status), n) in m.http.lock().expect("metrics").iter() {
        o.sample(
            "flownexus_http_requests_total",
            &[("route", route), ("status", &status.to_string())],
            n,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_text_exposition() {
        let m = Metrics::default();
        m.download("https", 206, 2048, false);
        m.download("https", 206, 1024, true);
        m.download("coap", 205, 512, false);
        m.http("/api/v1/devices/{endpoint}", 200);
        m.dtls_shard(
            1,
            crate::dtls::Counters {
                handshakes_completed: 3,
                ..Default::default()
            },
        );
        m.writer_batch(10);
        m.admission(crate::lwm2m::admission::Counters {
            admitted: 5,
            refused_too_many: 0,
            refused_too_fast: 9,
        });
        m.unverified(crate::coap::amplification::Counters {
            answered: 1,
            refused: 300,
            rate_limited: 2,
        });
        let g = Gauges {
            devices: vec![("online", 2), ("sleeping", 1), ("offline", 0)],
            operations: vec![("read".into(), "queued".into(), 4)],
            value_journal: 7,
            active_updates: 1,
            health: vec![("writer".into(), 0, Some(0.002))],
        };
        let text = render(&m, &g);
        for line in [
            "flownexus_devices{status=\"sleeping\"} 1",
            "flownexus_firmware_responses_total{transport=\"https\",status=\"206\"} 2",
            "flownexus_firmware_bytes_total{transport=\"https\"} 3072",
            "flownexus_firmware_bytes_total{transport=\"coap\"} 512",
            "flownexus_firmware_doom_loops_total 1",
            "flownexus_http_requests_total{route=\"/api/v1/devices/{endpoint}\",status=\"200\"} 1",
            "flownexus_dtls_handshakes_completed_total 3",
            "flownexus_operations{kind=\"read\",state=\"queued\"} 4",
            "flownexus_store_writer_changes_total 10",
            "flownexus_lwm2m_unprovisioned_registrations_total{outcome=\"refused_too_fast\"} 9",
            "flownexus_coap_unverified_firmware_requests_total{outcome=\"refused\"} 300",
            "flownexus_health_probe_seconds{component=\"writer\"} 0.002",
            "# TYPE flownexus_store_value_journal gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
