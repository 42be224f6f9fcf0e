//! Listening sockets handed to `serve` already bound: systemd's socket
//! activation protocol (sd_listen_fds(3)). The service manager (a
//! `.socket` unit, Podman's socket-activated containers, or a test that
//! must keep its ports across restarts of the server) passes them as file
//! descriptors 3, 4, … with `LISTEN_PID` (our pid: the variables are for
//! us, not a child we might start), `LISTEN_FDS` (how many) and
//! `LISTEN_FDNAMES` (colon-separated, one name per descriptor: `coap`,
//! `coaps`, `fw`, `http` or `metrics`, as systemd's `FileDescriptorName=`).
//! A listener with an inherited socket uses it instead of binding its
//! `*.listen` address.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, bail};

/// The first descriptor passed (SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;

/// The listeners a socket may be handed to, with the socket type each needs.
const LISTENERS: [(&str, socket2::Type); 5] = [
    ("coap", socket2::Type::DGRAM),
    ("coaps", socket2::Type::DGRAM),
    ("fw", socket2::Type::STREAM),
    ("http", socket2::Type::STREAM),
    ("metrics", socket2::Type::STREAM),
];

/// Sockets inherited by name, each taken at most once.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<String, socket2::Socket>,
}

impl Inherited {
    /// No inherited sockets: every listener binds its address.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// The sockets this process was started with, if the variables are
    /// addressed to it. The variables are removed so nothing started later
    /// takes them for its own. Wrong names, types or counts fail here,
    /// naming the variable.
    pub fn from_env() -> anyhow::Result<Inherited> {
        let pid = std::env::var("LISTEN_PID").ok();
        let count = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // SAFETY: called from `serve` before any other thread reads the
        // environment (the runtime's threads never do).
        unsafe {
            for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
                std::env::remove_var(v);
            }
        }
        let (Some(pid), Some(count)) = (pid, count) else {
            return Ok(Inherited::none());
        };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            // Meant for another process (sd_listen_fds(3) ignores them too).
            return Ok(Inherited::none());
        }
        let count: i32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n| (0..=64).contains(n))
            .context("LISTEN_FDS: not a count of descriptors")?;
        let names: Vec<String> = names
            .context("LISTEN_FDNAMES: needed to tell the listeners apart (FileDescriptorName=)")?
            .split(':')
            .map(str::to_string)
            .collect();
        if names.len() != count as usize {
            bail!("LISTEN_FDNAMES: {} names for {count} descriptors", names.len());
        }
        let mut sockets = HashMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let fd = FIRST_FD + i as i32;
            // SAFETY: descriptors FIRST_FD.. are ours by the protocol; each
            // is wrapped once, so it is closed once.
            let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let Some((_, kind)) = LISTENERS.iter().find(|(n, _)| *n == name) else {
                bail!("LISTEN_FDNAMES: `{name}` is no listener (coap, coaps, fw, http, metrics)");
            };
            let actual = socket
                .r#type()
                .with_context(|| format!("LISTEN_FDS: descriptor {fd} ({name}) is not a socket"))?;
            if actual != *kind {
                bail!("LISTEN_FDS: descriptor {fd} ({name}) is a {actual:?} socket, not {kind:?}");
            }
            // Not inherited by anything we start (sd_listen_fds sets it too).
            socket.set_cloexec(true)?;
            if sockets.insert(name.clone(), socket).is_some() {
                bail!("LISTEN_FDNAMES: `{name}` is named twice");
            }
        }
        Ok(Inherited { sockets })
    }

    /// The UDP socket for `name`, non-blocking.
    pub fn udp(&mut self, name: &str) -> anyhow::Result<Option<std::net::UdpSocket>> {
        let Some(s) = self.sockets.remove(name) else {
            return Ok(None);
        };
        s.set_nonblocking(true)?;
        Ok(Some(s.into()))
    }

    /// The listening TCP socket for `name`, registered with the runtime.
    pub fn tcp(&mut self, name: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(s) = self.sockets.remove(name) else {
            return Ok(None);
        };
        s.set_nonblocking(true)?;
        // A stream socket handed over bound but not yet listening (a test's
        // may be) listens now; listen(2) on a listening socket only resets
        // the backlog.
        s.listen(1024).with_context(|| format!("LISTEN_FDS: {name}"))?;
        Ok(Some(tokio::net::TcpListener::from_std(s.into())?))
    }

    /// A socket handed over for a listener that is disabled is a
    /// configuration error (the unit and the config disagree): fail before
    /// anything starts, naming both.
    pub fn refuse_disabled(&self, listeners: &[(&str, bool)]) -> anyhow::Result<()> {
        let mut off: Vec<&str> = listeners
            .iter()
            .filter(|(name, enabled)| !enabled && self.sockets.contains_key(*name))
            .map(|(name, _)| *name)
            .collect();
        off.sort_unstable();
        if !off.is_empty() {
            bail!(
                "LISTEN_FDNAMES: sockets handed over for disabled listeners ({}.enabled = false)",
                off.join(".enabled = false, ")
            );
        }
        Ok(())
    }
}
