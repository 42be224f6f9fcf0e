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
    use std::os::fd::AsRawFd;
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
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
    Ok(sock.into())
}
