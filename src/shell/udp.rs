//! The LwM2M server on a UDP socket: receive → core → send, timers, and
//! commands from the rest of the process (operations to queue or cancel).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use crate::lwm2m::operation::{Operation, OperationId};
use crate::lwm2m::server::{Server, ServerEvent};
use crate::shell::now;
use crate::store::writer::{Command as StoreCommand, WriterHandle};

/// Requests to the running server from other tasks.
#[derive(Debug)]
pub enum Command {
    Enqueue(Operation),
    Cancel(OperationId),
    KnownEndpoints(HashSet<String>),
}

/// Largest datagram we read; CoAP over UDP should stay under the path MTU,
/// block-wise transfers keep messages small (RFC 7252 §4.6).
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams handled per wake-up before timers and commands get a turn.
const RECV_BATCH: usize = 256;

pub type Events = broadcast::Sender<ServerEvent<SocketAddr>>;

/// Bind a UDP socket with kernel buffers of `buffer` bytes each way.
pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    let size = buffer.min(i32::MAX as usize) as libc::c_int;
    for (plain, force) in [
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
    ] {
        // The FORCE variants pass net.core.[rw]mem_max when we may (root,
        // CAP_NET_ADMIN); otherwise the kernel caps the plain request.
        // SAFETY: setsockopt on a socket we own with a pointer to a local int.
        let set = |opt| unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set(force) != 0 && set(plain) != 0 {
            log::warn!(
                "could not set socket buffer of {addr} to {buffer} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    UdpSocket::from_std(sock)
}

/// Run until `shutdown` resolves. Every event is stored through `writer`
/// and published on `events` for live consumers.
pub async fn run(
    socket: UdpSocket,
    mut server: Server<SocketAddr>,
    writer: WriterHandle<SocketAddr>,
    events: Events,
    mut commands: mpsc::Receiver<Command>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    loop {
        let deadline = server
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, peer)) => {
                        let t = now();
                        server.handle_datagram(t, peer, &buf[..n]);
                        for _ in 0..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, peer)) => server.handle_datagram(t, peer, &buf[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => log::debug!("udp receive: {e}"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => server.handle_timeout(now()),
            Some(cmd) = commands.recv() => {
                let t = now();
                match cmd {
                    Command::Enqueue(op) => server.enqueue(t, op),
                    Command::Cancel(id) => { server.cancel(id); }
                    Command::KnownEndpoints(set) => server.set_known_endpoints(set),
                }
            }
        }
        while let Some(tx) = server.poll_transmit() {
            match socket.try_send_to(&tx.bytes, tx.peer) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.send_to(&tx.bytes, tx.peer).await {
                        log::debug!("udp send to {}: {e}", tx.peer);
                    }
                }
                Err(e) => log::debug!("udp send to {}: {e}", tx.peer),
            }
        }
        while let Some(ev) = server.poll_event() {
            log_event(&ev);
            if events.receiver_count() > 0 {
                let _ = events.send(ev.clone());
            }
            writer.send(StoreCommand::Event(ev));
        }
    }
}

fn log_event(ev: &ServerEvent<SocketAddr>) {
    match ev {
        ServerEvent::Registered { registration: r, .. } => {
            log::info!(
                "registered {} from {} (lt {}, lwm2m {}, b={})",
                r.endpoint,
                r.peer,
                r.lifetime,
                r.version,
                r.binding
            )
        }
        ServerEvent::Deregistered { endpoint, .. } => log::info!("deregistered {endpoint}"),
        ServerEvent::Expired { endpoint, .. } => log::info!("registration of {endpoint} expired"),
        ServerEvent::OperationFinished { id, endpoint, outcome } => {
            log::info!("operation {id} on {endpoint}: {:?}", outcome.state())
        }
        _ => {}
    }
}
