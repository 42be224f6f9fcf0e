//! Logging: journald when connected to the journal (under systemd), plain
//! stderr otherwise.

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

/// Install the logger once; later calls only change the level.
pub fn init(level: &str) {
    let filter: log::LevelFilter = level.parse().unwrap_or(log::LevelFilter::Info);
    let installed = if systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new()
            .map(|j| j.with_syslog_identifier("flownexus".into()).install().is_ok())
            .unwrap_or(false)
    } else {
        false
    };
    if !installed {
        let _ = log::set_logger(&STDERR);
    }
    log::set_max_level(filter);
}
