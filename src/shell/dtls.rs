//! One DTLS shard: a socket of the SO_REUSEPORT group on the CoAPS port,
//! its session table, and the channels to the LwM2M server's task.
//! Each shard runs on a thread of its own (a current-thread runtime), so
//! handshakes and record crypto happen off the server's task.

use std::future::Future;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::dtls::{SessionEvent, Sessions};
use crate::shell::lwm2m::{FromDtls, MAX_DATAGRAM, RECV_BATCH, ToDtls};
use crate::transport::Peer;

/// How often a shard logs its counters (when they moved).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Each handshake frees ~9 KB of rtc-dtls state in small pieces that
/// glibc keeps in its arenas; after this many, hand free pages back to the
/// kernel.
const TRIM_AFTER_CHURN: u64 = 1000;

fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn log_status(sessions: &Sessions) {
    let c = sessions.counters;
    if c.handshakes_started == 0 && c.hello_verify_requests == 0 {
        return;
    }
    log::info!(
        "coaps: {} sessions ({} handshaking); handshakes {} completed, {} failed, {} evicted; {} HelloVerifyRequests, {} rate-limited, {} dropped",
        sessions.len(),
        sessions.handshakes(),
        c.handshakes_completed,
        c.handshakes_failed,
        c.handshakes_evicted,
        c.hello_verify_requests,
        c.rate_limited,
        c.dropped
    );
}

pub async fn run(
    socket: UdpSocket,
    mut sessions: Sessions,
    to_server: mpsc::Sender<FromDtls>,
    mut from_server: mpsc::Receiver<ToDtls>,
    mut keys_changed: watch::Receiver<u64>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut churn_before = 0;
    loop {
        let deadline = tokio::time::Instant::from_std(sessions.poll_timeout());
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let t = Instant::now();
                    sessions.handle_datagram(t, from, &buf[..n]);
                    for _ in 0..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => sessions.handle_datagram(t, from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => log::debug!("coaps receive: {e}"),
            },
            Some(msg) = from_server.recv() => {
                let t = Instant::now();
                sessions.send(t, msg.session, &msg.payload);
                for _ in 0..RECV_BATCH {
                    match from_server.try_recv() {
                        Ok(msg) => { sessions.send(t, msg.session, &msg.payload); }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => sessions.handle_timeout(Instant::now()),
            Ok(()) = keys_changed.changed() => sessions.keys_changed(Instant::now()),
            _ = status.tick() => log_status(&sessions),
        }
        // Under a steady stream of datagrams the receive branch is always
        // ready and, `biased`, would starve the timer branch: deadlines,
        // retransmissions and parking are checked here on every turn.
        let t = Instant::now();
        if t >= sessions.poll_timeout() {
            sessions.handle_timeout(t);
        }
        let c = sessions.counters;
        let churn = c.handshakes_evicted + c.handshakes_failed + c.handshakes_completed;
        if churn >= churn_before + TRIM_AFTER_CHURN {
            churn_before = churn;
            return_freed_memory();
        }
        while let Some(t) = sessions.poll_transmit() {
            match socket.try_send_to(&t.datagram, t.to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.send_to(&t.datagram, t.to).await {
                        log::debug!("coaps send to {}: {e}", t.to);
                    }
                }
                Err(e) => log::debug!("coaps send to {}: {e}", t.to),
            }
        }
        while let Some(ev) = sessions.poll_event() {
            let msg = match ev {
                SessionEvent::Established { session, addr, binding } => {
                    log::debug!("DTLS session {session} from {addr} for {}", binding.endpoint);
                    FromDtls::Established {
                        peer: Peer::Dtls { session, addr },
                        endpoint: binding.endpoint,
                    }
                }
                SessionEvent::Data { session, addr, payload } => FromDtls::Data {
                    peer: Peer::Dtls { session, addr },
                    payload,
                },
                SessionEvent::Closed { session } => FromDtls::Closed {
                    peer: Peer::Dtls {
                        session,
                        addr: ([0, 0, 0, 0], 0).into(),
                    },
                },
            };
            if to_server.send(msg).await.is_err() {
                return;
            }
        }
    }
}
