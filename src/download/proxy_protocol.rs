//! The PROXY protocol's version 1 header (HAProxy's "The PROXY protocol",
//! §2.1), which nginx's `stream` module sends before the bytes it passes
//! through (`proxy_protocol on`): with `fw.proxy_protocol` the firmware
//! server behind nginx's SNI pass-through learns each device's own address
//! instead of nginx's. A human-readable line, at most 107 bytes:
//! `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n` (or `TCP6`, or
//! `UNKNOWN` for a connection nginx could not describe).

use std::net::{IpAddr, SocketAddr};

/// §2.1: "a receiver must not accept a line longer than 107 characters".
pub const MAX_V1: usize = 107;

/// What the start of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed (no CRLF yet, under the limit).
    Incomplete,
    /// A header of `len` bytes; the client's address, if it gave one.
    Complete { len: usize, source: Option<SocketAddr> },
}

/// Parse the header at the start of `buf`; an error for anything that is
/// not one (the sender is configured to send it, so its absence is a
/// fault, never a guess, §2).
pub fn parse_v1(buf: &[u8]) -> Result<Header, String> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_V1 {
            return Err("no PROXY header within 107 bytes".into());
        }
        if !b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
            return Err("the connection does not start with a PROXY header".into());
        }
        return Ok(Header::Incomplete);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "a PROXY header that is not ASCII".to_string())?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err("the connection does not start with a PROXY header".into());
    }
    let len = end + 2;
    match parts.next() {
        Some("UNKNOWN") => Ok(Header::Complete { len, source: None }),
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(format!("a PROXY {family} header needs 4 fields: {line}"));
            };
            let ip: IpAddr = src.parse().map_err(|_| format!("bad source address in {line}"))?;
            let _: IpAddr = dst.parse().map_err(|_| format!("bad destination address in {line}"))?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(format!("{family} with a source of the other family: {line}"));
            }
            let port: u16 = sport.parse().map_err(|_| format!("bad source port in {line}"))?;
            let _: u16 = dport.parse().map_err(|_| format!("bad destination port in {line}"))?;
            Ok(Header::Complete {
                len,
                source: Some(SocketAddr::new(ip, port)),
            })
        }
        _ => Err(format!("unknown PROXY protocol family: {line}")),
    }
}

/// Read the header off `tcp` (peeking, so not one byte of the TLS
/// ClientHello after it is consumed) and return the client's address.
pub async fn read_v1(tcp: &mut tokio::net::TcpStream) -> Result<Option<SocketAddr>, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; MAX_V1];
    loop {
        let n = tcp.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a PROXY header".into());
        }
        match parse_v1(&buf[..n])? {
            Header::Incomplete => {
                // Wait for more: readable again only once more has come.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Header::Complete { len, source } => {
                let mut header = vec![0u8; len];
                tcp.read_exact(&mut header).await.map_err(|e| e.to_string())?;
                return Ok(source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp4_tcp6_and_unknown_headers() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n\x16\x03\x01";
        assert_eq!(
            parse_v1(h),
            Ok(Header::Complete {
                len: 45,
                source: Some("192.0.2.1:56324".parse().unwrap())
            })
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        assert_eq!(
            parse_v1(h),
            Ok(Header::Complete {
                len: h.len(),
                source: Some("[2001:db8::1]:4000".parse().unwrap())
            })
        );
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN\r\n"),
            Ok(Header::Complete { len: 15, source: None })
        );
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_are_refused() {
        assert_eq!(parse_v1(b"PROX"), Ok(Header::Incomplete));
        assert_eq!(parse_v1(b"PROXY TCP4 192.0.2.1"), Ok(Header::Incomplete));
        // A TLS ClientHello where the header should be.
        assert!(parse_v1(b"\x16\x03\x01\x02\x00").is_err());
        assert!(parse_v1(&[b'P'; 200]).is_err());
        assert!(parse_v1(b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 2\r\n").is_err());
        assert!(parse_v1(b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n").is_err());
    }
}
