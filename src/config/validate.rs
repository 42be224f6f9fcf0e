//! Checks of the effective configuration that serde cannot express. Each
//! names its key; all are reported together.

use super::{Config, Mode, Problem};
use crate::error::{Error, Result};

impl Config {
    /// The configuration as [`Config::problems`] finds it: fine, or every
    /// problem in one error.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Configuration(problems))
        }
    }

    /// Every check serde cannot express that fails, each naming its key:
    /// all of them at once, so an operator fixes a file in one round.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let h = &self.http;
        if h.enabled && h.public_url.is_none() && self.mode == Mode::Production {
            // Behind nginx the browser's origin is https://dashboard.<domain>;
            // without it every form would be refused as cross-origin.
            p.push(Problem::new(
                "http.public_url",
                "required in production: the URL operators use, e.g. https://dashboard.example.com",
            ));
        }
        if let Some(url) = &h.public_url
            && crate::web::auth::Origin::parse(url).is_none()
        {
            p.push(Problem::new(
                "http.public_url",
                "must be http:// or https:// and a host, without a path, e.g. https://dashboard.example.com",
            ));
        }
        for (key, v) in [
            ("http.session_idle_timeout_s", h.session_idle_timeout_s),
            ("http.session_max_age_s", h.session_max_age_s),
            ("http.login_window_s", h.login_window_s),
            ("http.setup_link_ttl_s", h.setup_link_ttl_s),
            ("health.probe_interval_s", self.health.probe_interval_s),
            ("health.ready_timeout_s", self.health.ready_timeout_s),
            (
                "http.login_failures_per_account",
                u64::from(h.login_failures_per_account),
            ),
            (
                "http.login_failures_per_address",
                u64::from(h.login_failures_per_address),
            ),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be > 0"));
            }
        }
        if h.max_body_bytes < 1024 {
            p.push(Problem::new("http.max_body_bytes", "must be at least 1024"));
        }
        if !["auto", "journal", "stderr"].contains(&self.log.target.as_str()) {
            p.push(Problem::new("log.target", "must be auto, journal or stderr"));
        }
        let f = &self.fw;
        if !(256..=16_408).contains(&f.max_record_bytes) {
            p.push(Problem::new("fw.max_record_bytes", "must be between 256 and 16408"));
        }
        if f.cert_file.is_some() != f.key_file.is_some() {
            p.push(Problem::new("fw.cert_file", "fw.cert_file and fw.key_file go together"));
        }
        if f.max_image_bytes == 0 {
            p.push(Problem::new("fw.max_image_bytes", "must be > 0"));
        }
        if let Some(url) = &f.public_url
            && crate::web::auth::Origin::parse(url).is_none()
        {
            p.push(Problem::new(
                "fw.public_url",
                "must be https:// (or http://) and a host, without a path, e.g. https://fw.example.com",
            ));
        }
        if let Some(url) = &f.coap_public_url {
            let authority = url.strip_prefix("coaps://").or_else(|| url.strip_prefix("coap://"));
            if authority.is_none_or(|a| a.is_empty() || a.contains('/')) {
                p.push(Problem::new(
                    "fw.coap_public_url",
                    "must be coaps:// (or coap://) and a host, without a path, e.g. coaps://lwm2m.example.com:5684",
                ));
            }
        }
        if f.enabled && f.public_url.is_none() && self.mode == Mode::Production {
            // Every Package URI starts with it; a guessed one strands devices.
            p.push(Problem::new(
                "fw.public_url",
                "required in production: the URL devices download firmware from, e.g. https://fw.example.com",
            ));
        }
        let u = &self.fota;
        for (key, v) in [
            ("fota.download_timeout_s", u.download_timeout_s),
            ("fota.update_timeout_s", u.update_timeout_s),
            ("fota.retry_backoff_s", u.retry_backoff_s),
            ("fota.token_ttl_s", u.token_ttl_s),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be > 0"));
            }
        }
        if f.cache_bytes < f.max_image_bytes {
            // Images are served from memory: the largest must fit.
            p.push(Problem::new("fw.cache_bytes", "must be >= fw.max_image_bytes"));
        }
        if f.handshake_timeout_s == 0 || f.idle_timeout_s == 0 {
            p.push(Problem::new("fw.handshake_timeout_s", "timeouts must be > 0"));
        }
        if f.cert_file.is_none() && f.dev_names.is_empty() {
            p.push(Problem::new(
                "fw.dev_names",
                "needs at least one name when no fw.cert_file is given",
            ));
        }
        if !self.coap.enabled && !self.coaps.enabled {
            p.push(Problem::new(
                "coap.enabled",
                "devices need a transport: enable coap or coaps (or both)",
            ));
        }
        let d = &self.coaps;
        if d.max_sessions == 0 || d.max_handshakes == 0 {
            p.push(Problem::new("coaps.max_handshakes", "session caps must be > 0"));
        }
        if d.handshake_timeout_s == 0 || d.session_idle_timeout_s == 0 {
            p.push(Problem::new("coaps.handshake_timeout_s", "timeouts must be > 0"));
        }
        if d.shards > 64 {
            p.push(Problem::new("coaps.shards", "must be <= 64"));
        }
        if let Err(reason) = crate::dtls::suites::cipher_suites(&d.cipher_suites) {
            p.push(Problem::new("coaps.cipher_suites", reason));
        }
        let c = &self.coap;
        if self.data_dir.as_os_str().is_empty() {
            p.push(Problem::new("data_dir", "must not be empty"));
        }
        if self.mode == Mode::Production && self.data_dir.is_relative() {
            p.push(Problem::new("data_dir", "must be an absolute path in production mode"));
        }
        if c.ack_timeout_ms == 0 {
            p.push(Problem::new("coap.ack_timeout_ms", "must be > 0"));
        }
        if !(1.0..=10.0).contains(&c.ack_random_factor) {
            p.push(Problem::new(
                "coap.ack_random_factor",
                "must be between 1.0 and 10.0 (RFC 7252 §4.8)",
            ));
        }
        if c.max_retransmit > 20 {
            p.push(Problem::new("coap.max_retransmit", "must be <= 20"));
        }
        if c.nstart == 0 {
            p.push(Problem::new("coap.nstart", "must be >= 1"));
        }
        if !(16..=1024).contains(&c.block_size) || !c.block_size.is_power_of_two() {
            p.push(Problem::new(
                "coap.block_size",
                "must be a power of two from 16 to 1024 (RFC 7959 §2.2)",
            ));
        }
        if c.max_body_size < c.block_size {
            p.push(Problem::new("coap.max_body_size", "must be >= coap.block_size"));
        }
        let l = &self.lwm2m;
        if l.min_lifetime_s == 0 || l.min_lifetime_s > l.max_lifetime_s {
            p.push(Problem::new(
                "lwm2m.min_lifetime_s",
                "must be >= 1 and <= lwm2m.max_lifetime_s",
            ));
        }
        if l.unprovisioned_per_source == 0 {
            p.push(Problem::new(
                "lwm2m.unprovisioned_per_source",
                "must be >= 1 (use unknown_endpoints = \"reject\" to admit none)",
            ));
        }
        if l.unprovisioned_per_source_per_min == 0 {
            p.push(Problem::new(
                "lwm2m.unprovisioned_per_source_per_min",
                "must be >= 1 (use unknown_endpoints = \"reject\" to admit none)",
            ));
        }
        if l.unverified_firmware_gets_per_s == 0 {
            p.push(Problem::new("lwm2m.unverified_firmware_gets_per_s", "must be >= 1"));
        }
        if l.operation_max_attempts == 0 {
            p.push(Problem::new("lwm2m.operation_max_attempts", "must be >= 1"));
        }
        if self.store.batch_size == 0 {
            p.push(Problem::new("store.batch_size", "must be >= 1"));
        }
        if self.store.history_flush_values == 0 {
            p.push(Problem::new("store.history_flush_values", "must be >= 1"));
        }
        let e = &self.events;
        if e.outbox_max_rows < 1000 {
            p.push(Problem::new("events.outbox_max_rows", "must be at least 1000"));
        }
        if let Some(url) = &e.celery.broker
            && let Err(reason) = crate::celery::broker_problem(url)
        {
            p.push(Problem::new("events.celery.broker", reason));
        }
        for (key, queue) in [
            ("events.celery.queue", &e.celery.queue),
            ("events.celery.task_queue", &e.celery.task_queue),
        ] {
            if queue.is_empty() || queue.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(Problem::new(key, "must be a name without spaces"));
            }
        }
        if e.celery.queue == e.celery.task_queue {
            p.push(Problem::new(
                "events.celery.task_queue",
                "must differ from events.celery.queue: flownexus would take its own events as tasks",
            ));
        }
        for (i, w) in e.webhooks.iter().enumerate() {
            let key = format!("events.webhooks[{i}].url");
            match w.url.parse::<hyper::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => p.push(Problem::new(
                    key,
                    "must be an http:// or https:// URL, e.g. https://hooks.example.com/fleet",
                )),
            }
            for k in &w.kinds {
                if crate::outbox::EventKind::parse(k).is_none() {
                    let kinds: Vec<&str> = crate::outbox::EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    p.push(Problem::new(
                        format!("events.webhooks[{i}].kinds"),
                        format!("unknown event kind {k:?}: one of {}", kinds.join(", ")),
                    ));
                }
            }
        }
        if e.celery.tasks_per_producer_per_s == 0 {
            p.push(Problem::new("events.celery.tasks_per_producer_per_s", "must be >= 1"));
        }
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            p.push(Problem::new(
                "log.level",
                "must be one of error, warn, info, debug, trace",
            ));
        }
        p
    }
}
