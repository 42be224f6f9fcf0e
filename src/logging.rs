//! Logging: to the systemd journal over its native protocol when the
//! journal is there (or `log.target = "journal"`), plain stderr otherwise.
//!
//! Device-related lines carry structured fields from the `log` macros'
//! key-values (`log::info!(endpoint = ep; "…")` becomes `ENDPOINT=…`), so
//! `journalctl -u flownexus ENDPOINT=urn:imei:…` finds one device's story.
//! The native protocol (systemd's "Native Journal Protocol"): one datagram
//! per entry to `/run/systemd/journal/socket`, each field `NAME=value\n`,
//! or, for a value with a newline, `NAME\n`, its length as 64-bit little
//! endian, the value and `\n`.
//!
//! Not the `systemd-journal-logger` crate: its socket path is fixed and
//! its sends block (measured, docs/health.md "Why not the
//! `systemd-journal-logger` crate").

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::lwm2m::display::printable;

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The largest entry sent in one datagram; a longer message is cut (the
/// memfd hand-over for large entries is not needed for log lines).
const MAX_ENTRY: usize = 48 * 1024;

/// Append field `name` = `value` in the native protocol.
pub fn put_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    if value.contains(&b'\n') {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    } else {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
}

/// A journal field name from a key: upper case, `[A-Z0-9_]` only, not
/// starting with `_` (reserved for journald's trusted fields), at most 64.
pub fn field_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    while name.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        name.remove(0);
    }
    name.truncate(64);
    name
}

/// syslog(3) priorities, as journald reads `PRIORITY=`.
fn priority(level: log::Level) -> &'static [u8] {
    match level {
        log::Level::Error => b"3",
        log::Level::Warn => b"4",
        log::Level::Info => b"6",
        log::Level::Debug | log::Level::Trace => b"7",
    }
}

struct Fields<'a>(&'a mut Vec<u8>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let name = field_name(key.as_str());
        if !name.is_empty() {
            put_field(self.0, &name, printable(&value.to_string()).as_bytes());
        }
        Ok(())
    }
}

/// One record as a native-protocol entry.
pub fn entry(record: &log::Record<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Device-supplied strings reach messages: escaped, so none forges a
    // line or drives a terminal that shows the journal.
    let mut message = printable(&record.args().to_string()).into_owned();
    if message.len() > MAX_ENTRY {
        let mut cut = MAX_ENTRY;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    put_field(&mut out, "MESSAGE", message.as_bytes());
    put_field(&mut out, "PRIORITY", priority(record.level()));
    put_field(&mut out, "SYSLOG_IDENTIFIER", b"flownexus");
    put_field(&mut out, "TARGET", record.target().as_bytes());
    if let Some(file) = record.file() {
        put_field(&mut out, "CODE_FILE", file.as_bytes());
    }
    if let Some(line) = record.line() {
        put_field(&mut out, "CODE_LINE", line.to_string().as_bytes());
    }
    let _ = record.key_values().visit(&mut Fields(&mut out));
    out
}

struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl log::Log for Journal {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // A full or absent journal must not stop the server: dropped.
        let _ = self.socket.send_to(&entry(record), &self.path);
    }
    fn flush(&self) {}
}

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{:<5} {}: {}",
            record.level(),
            record.target(),
            printable(&record.args().to_string())
        );
    }
    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

/// Whether systemd connected our stderr to the journal (`JOURNAL_STREAM`
/// names its device and inode, systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat fills the zeroed struct for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// Install the logger once; later calls only change the level. `target`
/// is `log.target`: `auto` (the journal when stderr is connected to it),
/// `journal` (always, at `socket`: a container with the host's journal
/// socket mounted) or `stderr`.
pub fn init(level: &str, target: &str, socket: &Path) {
    let filter: log::LevelFilter = level.parse().unwrap_or(log::LevelFilter::Info);
    let journal = match target {
        "journal" => true,
        "stderr" => false,
        _ => stderr_is_journal(),
    };
    // Non-blocking: a journal that falls behind loses lines rather than
    // stalling the loop that logs (a blocked send stopped the LwM2M task).
    let installed = journal
        && UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map(|socket_| {
                log::set_boxed_logger(Box::new(Journal {
                    socket: socket_,
                    path: socket.to_path_buf(),
                }))
                .is_ok()
            })
            .unwrap_or(false);
    if !installed {
        let _ = log::set_logger(&STDERR);
    }
    log::set_max_level(filter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_use_the_native_protocol() {
        let mut out = Vec::new();
        put_field(&mut out, "ENDPOINT", b"urn:imei:1");
        put_field(&mut out, "MESSAGE", b"two\nlines");
        let mut want = b"ENDPOINT=urn:imei:1\nMESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, want);
    }

    /// Issue 32 item 4: a device string with a newline or a terminal
    /// escape stays one line of text in the journal and on stderr.
    #[test]
    fn device_strings_cannot_forge_lines() {
        let kvs = [("endpoint", "ev\u{1b}[2Jil")];
        let source: &dyn log::kv::Source = &kvs;
        let record = log::Record::builder()
            .args(format_args!("registered evil\nINFO adm signed in"))
            .level(log::Level::Info)
            .key_values(source)
            .build();
        let text = String::from_utf8(entry(&record)).unwrap();
        assert!(
            text.contains("MESSAGE=registered evil\\u{a}INFO adm signed in\n"),
            "{text}"
        );
        assert!(text.contains("ENDPOINT=ev\\u{1b}[2Jil\n"), "{text}");
    }

    #[test]
    fn keys_become_valid_field_names() {
        assert_eq!(field_name("endpoint"), "ENDPOINT");
        assert_eq!(field_name("firmware_sha256"), "FIRMWARE_SHA256");
        assert_eq!(field_name("_source-realtime"), "SOURCE_REALTIME");
        assert_eq!(field_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn a_record_carries_its_key_values() {
        let kvs = [("endpoint", "dev-1"), ("operation_id", "7")];
        let source: &dyn log::kv::Source = &kvs;
        let record = log::Record::builder()
            .args(format_args!("operation 7 on dev-1: succeeded"))
            .level(log::Level::Info)
            .target("flownexus::shell::lwm2m")
            .key_values(source)
            .build();
        let text = String::from_utf8(entry(&record)).unwrap();
        for line in [
            "MESSAGE=operation 7 on dev-1: succeeded",
            "PRIORITY=6",
            "SYSLOG_IDENTIFIER=flownexus",
            "ENDPOINT=dev-1",
            "OPERATION_ID=7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }
}
