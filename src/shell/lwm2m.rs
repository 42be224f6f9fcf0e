//! The LwM2M server's task: CoAP from plain UDP and from the DTLS shards →
//! core → back out the way each peer came; timers; commands from the rest
//! of the process (operations to queue or cancel, provisioning changes).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use crate::dtls::SessionId;
use crate::lwm2m::operation::{Operation, OperationId};
use crate::lwm2m::server::{Server, ServerEvent};
use crate::shell::now;
use crate::store::writer::{Command as StoreCommand, WriterHandle};
use crate::transport::Peer;

/// Requests to the running server from other tasks.
#[derive(Debug)]
pub enum Command {
    Enqueue(Operation),
    Cancel(OperationId),
    /// Every endpoint in the device table (after a device was removed).
    KnownEndpoints(HashSet<String>),
    /// Endpoints added to the device table since the last poll.
    KnownEndpointsAdded(Vec<String>),
    /// Endpoints with a PSK, after the key table changed.
    KeyedEndpoints(HashSet<String>),
    /// The health prober's round trip through this queue: answered by the
    /// loop itself, so a stuck loop fails it (`shell::health`).
    Probe(tokio::sync::oneshot::Sender<crate::shell::health::Lwm2mFigures>),
}

/// From a DTLS shard to the server (in batches: one channel message per
/// turn of the shard's loop, so a busy shard wakes the server once per
/// batch rather than once per datagram).
#[derive(Debug)]
pub enum FromDtls {
    Established {
        peer: Peer,
        endpoint: Arc<str>,
    },
    Data {
        peer: Peer,
        payload: Vec<u8>,
    },
    Closed {
        peer: Peer,
    },
    /// A provisioned device's handshake failed on its key.
    KeyRefused {
        endpoint: Arc<str>,
    },
}

/// From the server to the DTLS shard owning `session` (batched likewise).
#[derive(Debug)]
pub struct ToDtls {
    pub session: SessionId,
    pub payload: Vec<u8>,
}

/// How devices reach the server: plain UDP, DTLS shards, or both.
pub struct Transports {
    pub udp: Option<UdpSocket>,
    pub dtls: Option<DtlsLink>,
    /// Answers firmware GETs on these ports (`coap(s)://` Package URIs).
    pub firmware: Option<Arc<crate::download::Server>>,
}

pub struct DtlsLink {
    pub inbound: mpsc::Receiver<Vec<FromDtls>>,
    /// One sender per shard, indexed by [`SessionId::shard`].
    pub outbound: Vec<mpsc::Sender<Vec<ToDtls>>>,
}

/// Largest datagram we read; CoAP over UDP should stay under the path MTU,
/// block-wise transfers keep messages small (RFC 7252 §4.6).
pub const MAX_DATAGRAM: usize = 65_535;
/// Datagrams handled per wake-up before timers and commands get a turn.
pub const RECV_BATCH: usize = 256;

pub type Events = broadcast::Sender<ServerEvent<Peer>>;

async fn recv_udp(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn recv_dtls(link: &mut Option<DtlsLink>) -> Option<Vec<FromDtls>> {
    match link {
        Some(l) => l.inbound.recv().await,
        None => std::future::pending().await,
    }
}

fn from_dtls(server: &mut Server<Peer>, msg: FromDtls) {
    let t = now();
    match msg {
        FromDtls::Data { peer, payload } => server.handle_datagram(t, peer, &payload),
        FromDtls::Established { peer, endpoint } => server.session_established(peer, endpoint),
        FromDtls::Closed { peer } => server.session_closed(peer),
        FromDtls::KeyRefused { endpoint } => server.key_refused(t, &endpoint),
    }
}

/// Run until `shutdown` resolves. Every event is stored through `writer`
/// and published on `events` for live consumers.
pub async fn run(
    mut transports: Transports,
    mut server: Server<Peer>,
    writer: WriterHandle<Peer>,
    events: Events,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    let udp = transports.udp.take();
    let mut to_shards: Vec<Vec<ToDtls>> = (0..transports.dtls.as_ref().map_or(0, |l| l.outbound.len()))
        .map(|_| Vec::new())
        .collect();
    // Firmware blocks are looked up beside the loop and answered here.
    let (blocks_tx, mut blocks) = mpsc::channel::<(crate::coap::InboundId, crate::coap::Response)>(1024);
    loop {
        let deadline = server
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = recv_udp(udp.as_ref(), &mut buf) => {
                let socket = udp.as_ref().expect("only polled with a socket");
                match r {
                    Ok((n, from)) => {
                        let t = now();
                        crate::shell::record::datagram("coap", &buf[..n]);
                        server.handle_datagram(t, Peer::Udp(from), &buf[..n]);
                        for _ in 0..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => {
                                    crate::shell::record::datagram("coap", &buf[..n]);
                                    server.handle_datagram(t, Peer::Udp(from), &buf[..n])
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => log::debug!("udp receive: {e}"),
                }
            }
            Some(batch) = recv_dtls(&mut transports.dtls) => {
                let mut taken = batch.len();
                batch.into_iter().for_each(|msg| from_dtls(&mut server, msg));
                let link = transports.dtls.as_mut().expect("only polled with a link");
                while taken < RECV_BATCH {
                    match link.inbound.try_recv() {
                        Ok(batch) => {
                            taken += batch.len();
                            batch.into_iter().for_each(|msg| from_dtls(&mut server, msg));
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => server.handle_timeout(now()),
            Some((inbound, response)) = blocks.recv() => server.respond(now(), inbound, response),
            Some(cmd) = commands.recv() => {
                let t = now();
                match cmd {
                    Command::Enqueue(op) => server.enqueue(t, op),
                    Command::Cancel(id) => { server.cancel(id); }
                    Command::KnownEndpoints(set) => server.set_known_endpoints(set),
                    Command::KnownEndpointsAdded(list) => server.add_known_endpoints(list),
                    Command::KeyedEndpoints(set) => server.set_keyed_endpoints(set),
                    Command::Probe(answer) => {
                        let _ = answer.send(crate::shell::health::Lwm2mFigures {
                            registrations: server.registration_count(),
                        });
                    }
                }
            }
        }
        while let Some(fr) = server.poll_firmware_request() {
            let Some(fw) = transports.firmware.clone() else {
                server.respond(
                    now(),
                    fr.inbound,
                    crate::coap::Response::new(crate::coap::Code::NOT_FOUND),
                );
                continue;
            };
            let done = blocks_tx.clone();
            let addr = match fr.peer {
                Peer::Udp(a) | Peer::Dtls { addr: a, .. } => a,
            };
            tokio::spawn(async move {
                let response = fw.coap_get(&fr.request, addr).await;
                let _ = done.send((fr.inbound, response)).await;
            });
        }
        // A steady stream of datagrams keeps the (biased) receive branches
        // ready; timers must not wait for a lull.
        if server.poll_timeout().is_some_and(|d| d <= std::time::Instant::now()) {
            server.handle_timeout(now());
        }
        while let Some(tx) = server.poll_transmit() {
            match tx.peer {
                Peer::Udp(to) => {
                    let Some(socket) = udp.as_ref() else { continue };
                    match socket.try_send_to(&tx.bytes, to) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if let Err(e) = socket.send_to(&tx.bytes, to).await {
                                log::debug!("udp send to {to}: {e}");
                            }
                        }
                        Err(e) => log::debug!("udp send to {to}: {e}"),
                    }
                }
                Peer::Dtls { session, .. } => {
                    if let Some(batch) = to_shards.get_mut(session.shard()) {
                        batch.push(ToDtls {
                            session,
                            payload: tx.bytes,
                        });
                    }
                }
            }
        }
        if let Some(link) = &transports.dtls {
            for (shard, batch) in link.outbound.iter().zip(to_shards.iter_mut()) {
                // A full shard queue drops the batch like a full socket
                // would; CoAP retransmits confirmable messages.
                if !batch.is_empty() {
                    let _ = shard.try_send(std::mem::take(batch));
                }
            }
        }
        metrics.admission(server.admission_counters());
        metrics.unverified(server.unverified_counters());
        while let Some(ev) = server.poll_event() {
            log_event(&ev);
            metrics.observe(&ev);
            if events.receiver_count() > 0 {
                let _ = events.send(ev.clone());
            }
            writer.send(StoreCommand::Event(ev));
        }
    }
}

fn log_event(ev: &ServerEvent<Peer>) {
    match ev {
        ServerEvent::Registered { registration: r, .. } => {
            log::info!(
                endpoint = r.endpoint.as_str(), peer:% = r.peer;
                "registered {} from {} (lt {}, lwm2m {}, b={})",
                r.endpoint,
                r.peer,
                r.lifetime,
                r.version,
                r.binding
            )
        }
        ServerEvent::Deregistered { endpoint, .. } => {
            log::info!(endpoint = endpoint.as_str(); "deregistered {endpoint}")
        }
        ServerEvent::Expired { endpoint, .. } => {
            log::info!(endpoint = endpoint.as_str(); "registration of {endpoint} expired")
        }
        ServerEvent::OperationFinished { id, endpoint, outcome } => {
            log::info!(
                endpoint = endpoint.as_str(), operation_id:% = id;
                "operation {id} on {endpoint}: {:?}", outcome.state()
            )
        }
        _ => {}
    }
}
