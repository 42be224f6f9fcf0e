//! One DTLS shard: a socket of the SO_REUSEPORT group on the CoAPS port,
//! its session table, and the channels to the LwM2M server's task.
//! Each shard runs on a thread of its own (a current-thread runtime), so
//! handshakes and record crypto happen off the server's task.

use std::future::Future;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::dtls::{SessionEvent, Sessions};
use crate::shell::lwm2m::{FromDtls, RECV_BATCH, ToDtls};
use crate::shell::udp;
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
    to_server: mpsc::Sender<Vec<FromDtls>>,
    mut from_server: mpsc::Receiver<Vec<ToDtls>>,
    mut keys_changed: watch::Receiver<u64>,
    metrics: (std::sync::Arc<crate::metrics::Metrics>, usize),
    shutdown: impl Future<Output = ()>,
) {
    let (metrics, shard) = metrics;
    let mut published = None;
    tokio::pin!(shutdown);
    let mut received = udp::Received::new(udp::MAX_DTLS_RECORD);
    let mut outgoing = Vec::new();
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut churn_before = 0;
    loop {
        let deadline = tokio::time::Instant::from_std(sessions.poll_timeout());
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = socket.readable() => match r {
                Ok(()) => {
                    let t = Instant::now();
                    for _ in 0..RECV_BATCH.div_ceil(udp::BATCH) {
                        match udp::try_recv_batch(&socket, &mut received) {
                            Ok(_) => {
                                for (from, datagram) in received.datagrams() {
                                    crate::shell::record::datagram("dtls", datagram);
                                    sessions.handle_datagram(t, from, datagram);
                                }
                            }
                            Err(e) => {
                                if e.kind() != std::io::ErrorKind::WouldBlock {
                                    log::debug!("coaps receive: {e}");
                                }
                                break;
                            }
                        }
                    }
                }
                Err(e) => log::debug!("coaps receive: {e}"),
            },
            Some(batch) = from_server.recv() => {
                let t = Instant::now();
                let mut taken = batch.len();
                for msg in batch {
                    sessions.send(t, msg.session, &msg.payload);
                }
                while taken < RECV_BATCH {
                    let Ok(batch) = from_server.try_recv() else { break };
                    taken += batch.len();
                    for msg in batch {
                        sessions.send(t, msg.session, &msg.payload);
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
        if published != Some(sessions.counters) {
            published = Some(sessions.counters);
            metrics.dtls_shard(shard, sessions.counters);
        }
        let c = sessions.counters;
        let churn = c.handshakes_evicted + c.handshakes_failed + c.handshakes_completed;
        if churn >= churn_before + TRIM_AFTER_CHURN {
            churn_before = churn;
            return_freed_memory();
        }
        outgoing.extend(std::iter::from_fn(|| sessions.poll_transmit()));
        if !outgoing.is_empty() {
            let batch: Vec<_> = outgoing.iter().map(|t| (Some(t.to), &t.datagram[..])).collect();
            udp::send_batch(&socket, &batch).await;
            outgoing.clear();
        }
        let up: Vec<FromDtls> = std::iter::from_fn(|| sessions.poll_event())
            .map(|ev| match ev {
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
                SessionEvent::KeyRefused {
                    addr,
                    endpoint,
                    identity,
                } => {
                    // The identity, never the key; escaped, as anything a
                    // peer chose.
                    log::warn!(
                        endpoint = &*endpoint, peer:% = addr;
                        "DTLS handshake of {} from {addr} failed: its key does not match PSK identity {:?}",
                        crate::lwm2m::display::printable(&endpoint),
                        crate::lwm2m::display::printable(&String::from_utf8_lossy(&identity))
                    );
                    FromDtls::KeyRefused { endpoint }
                }
            })
            .collect();
        if !up.is_empty() && to_server.send(up).await.is_err() {
            return;
        }
    }
}
