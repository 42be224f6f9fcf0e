//! UDP sockets for the CoAP and DTLS listeners: kernel buffers sized for
//! registration storms, and SO_REUSEPORT groups for sharded listeners.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Bind a UDP socket with kernel buffers of `buffer` bytes each way.
pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(bind_std(addr, buffer, false)?)
}

/// Bind a non-blocking std socket, for a runtime other than the caller's.
/// With `reuse_port` it is one of several sockets sharing `addr`
/// (SO_REUSEPORT): the kernel spreads datagrams over them by a hash of the
/// 4-tuple, so a given peer always reaches the same socket.
pub fn bind_std(addr: SocketAddr, buffer: usize, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sized(sock.into(), buffer))
}

/// Kernel buffers of `buffer` bytes each way on a bound socket (ours, or
/// one handed over by socket activation, which must absorb a registration
/// storm as well as one we bound).
pub fn sized(sock: std::net::UdpSocket, buffer: usize) -> std::net::UdpSocket {
    use std::os::fd::AsRawFd;
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
                "could not set socket buffer of {:?} to {buffer} bytes: {}",
                sock.local_addr(),
                std::io::Error::last_os_error()
            );
        }
    }
    sock
}

/// Datagrams moved per `recvmmsg`/`sendmmsg` call: under load one wake-up
/// and one system call serve a batch instead of a datagram.
pub const BATCH: usize = 32;
/// The largest DTLS 1.2 record (RFC 6347 §4.1: 13-byte header, up to
/// 2^14 + 2048 bytes of ciphertext).
pub const MAX_DTLS_RECORD: usize = 13 + (1 << 14) + 2048;

/// Buffers for one `recvmmsg` call and what it received.
pub struct Received {
    slot: usize,
    buf: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    n: usize,
}

impl Received {
    /// Room for [`BATCH`] datagrams of up to `slot` bytes; a longer one is
    /// reported truncated and dropped.
    pub fn new(slot: usize) -> Received {
        Received {
            slot,
            buf: vec![0; BATCH * slot],
            lens: [0; BATCH],
            from: [None; BATCH],
            n: 0,
        }
    }

    /// The datagrams of the last call, with their senders; truncated
    /// ones (and any from an address family we do not speak) left out.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.n).filter_map(|i| {
            let from = self.from[i]?;
            let at = i * self.slot;
            (self.lens[i] <= self.slot).then(|| (from, &self.buf[at..at + self.lens[i]]))
        })
    }
}

/// The address in a `sockaddr_storage` the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in, which fits.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6, which fits.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive what is waiting on `sock`, up to [`BATCH`] datagrams, in one
/// `recvmmsg` call; `WouldBlock` if nothing is.
pub fn try_recv_batch(sock: &UdpSocket, into: &mut Received) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    sock.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, ((m, v), name)) in msgs.iter_mut().zip(iov.iter_mut()).zip(names.iter_mut()).enumerate() {
            v.iov_base = into.buf[i * into.slot..].as_mut_ptr().cast();
            v.iov_len = into.slot;
            m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live slot of `into.slot` bytes of
        // `into.buf` and at a live sockaddr_storage, for the whole call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            into.lens[i] = if truncated {
                usize::MAX
            } else {
                msgs[i].msg_len as usize
            };
            into.from[i] = socket_addr(&names[i]);
        }
        into.n = n;
        Ok(n)
    })
}

/// Send each `(to, datagram)` with as few `sendmmsg` calls as the socket
/// buffer allows, waiting for room when it is full. `to` is `None` on a
/// connected socket. A datagram the kernel refuses (an unreachable
/// address) is skipped, as a lost datagram would be.
pub async fn send_batch(sock: &UdpSocket, datagrams: &[(Option<SocketAddr>, &[u8])]) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    while sent < datagrams.len() {
        let chunk = &datagrams[sent..datagrams.len().min(sent + BATCH)];
        let names: Vec<Option<socket2::SockAddr>> = chunk.iter().map(|(to, _)| to.map(Into::into)).collect();
        let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, (_, d)) in chunk.iter().enumerate() {
                iov[i].iov_base = d.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = d.len();
                if let Some(name) = &names[i] {
                    msgs[i].msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
                    msgs[i].msg_hdr.msg_namelen = name.len();
                }
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the headers point at the chunk's datagrams and
            // addresses, which outlive the call; the kernel only reads them.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), chunk.len() as u32, libc::MSG_DONTWAIT) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::debug!("udp send to {:?}: {e}", chunk[0].0);
                sent += 1;
            }
        }
    }
}
