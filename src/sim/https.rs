//! The HTTPS side of a simulated nRF91 device: a TLS keep-alive HTTP/1.1
//! client with Range requests, as nRF Connect SDK's downloader uses it
//! (2 KB fragments on one connection, `bytes=N-` to resume). The firmware
//! benchmark and the wire-level tests use it as their load generator.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A client TLS configuration trusting `ca`, pinned to one protocol
/// version, without session resumption (every handshake is a full one).
pub fn client_config(
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A TCP stream that notes the size of every TLS record it reads.
pub struct RecordCounting {
    inner: TcpStream,
    pending: Vec<u8>,
    largest: Arc<AtomicU64>,
}

impl AsyncRead for RecordCounting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let fresh = buf.filled()[before..].to_vec();
            let me = &mut *self;
            me.pending.extend_from_slice(&fresh);
            while me.pending.len() >= 5 {
                let len = 5 + usize::from(u16::from_be_bytes([me.pending[3], me.pending[4]]));
                if me.pending.len() < len {
                    break;
                }
                me.largest.fetch_max(len as u64, Ordering::Relaxed);
                me.pending.drain(..len);
            }
        }
        r
    }
}

impl tokio::io::AsyncWrite for RecordCounting {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One response off a keep-alive connection.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// Head plus body: what the device's receive buffer must hold.
    pub wire_bytes: usize,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A keep-alive HTTP/1.1 client connection over TLS.
pub struct HttpConn {
    tls: tokio_rustls::client::TlsStream<RecordCounting>,
    carry: Vec<u8>,
    /// Largest TLS record received on this connection, header included.
    pub largest_record: Arc<AtomicU64>,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<HttpConn> {
        Self::connect_from(None, addr, config).await
    }

    /// Connect from a chosen local address: a load generator making many
    /// short connections spreads them over loopback addresses, so it does
    /// not cycle through one address's ephemeral ports while old
    /// connections still sit in TIME_WAIT.
    pub async fn connect_from(
        local: Option<std::net::IpAddr>,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<HttpConn> {
        Self::connect_as(local, addr, config, "localhost").await
    }

    /// Connect sending `server_name` as SNI (and verifying against it).
    pub async fn connect_as(
        local: Option<std::net::IpAddr>,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> std::io::Result<HttpConn> {
        let tcp = match local {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        let largest = Arc::new(AtomicU64::new(0));
        let io = RecordCounting {
            inner: tcp,
            pending: Vec::new(),
            largest: largest.clone(),
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, io).await?;
        Ok(HttpConn {
            tls,
            carry: Vec::new(),
            largest_record: largest,
        })
    }

    /// The server's end-entity certificate.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.tls.get_ref().1.peer_certificates()?.first().cloned()
    }

    /// Send one request (a complete head) and read its response.
    pub async fn request(&mut self, req: &str) -> std::io::Result<Reply> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        self.tls.write_all(req.as_bytes()).await?;
        // rustls may hold encrypted records back when the socket was full;
        // without a flush the request can sit there while we wait for its reply.
        self.tls.flush().await?;
        let mut buf = vec![0u8; 16384];
        let head_end = loop {
            if let Some(i) = self.carry.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.tls.read(&mut buf).await?;
            if n == 0 {
                return Err(eof());
            }
            self.carry.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&self.carry[..head_end]).into_owned();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(eof)?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let body_len = if req.starts_with("HEAD") { 0 } else { len };
        while self.carry.len() < head_end + body_len {
            let n = self.tls.read(&mut buf).await?;
            if n == 0 {
                return Err(eof());
            }
            self.carry.extend_from_slice(&buf[..n]);
        }
        let body = self.carry[head_end..head_end + body_len].to_vec();
        self.carry.drain(..head_end + body_len);
        Ok(Reply {
            status,
            head,
            body,
            wire_bytes: head_end + body_len,
        })
    }
}

/// How long one range request may take before the download fails.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Fetch the image at Package URI `uri` (`https://host[:port]/path?query`)
/// as an nRF91 does: `fragment`-byte ranges on one keep-alive connection,
/// each a 206 whose Content-Range gives the total. With `drop_midway`,
/// the connection is dropped once half the image has arrived and the rest
/// is fetched on a new one with `Range: bytes=N-` (a resume). With
/// `doom_loop`, after the first range it keeps asking for `bytes=SIZE-`
/// as a confused nRF downloader does, until it gives up.
pub async fn fetch(
    uri: &str,
    config: Arc<rustls::ClientConfig>,
    fragment: usize,
    drop_midway: bool,
    doom_loop: bool,
) -> Result<Vec<u8>, String> {
    let rest = uri
        .strip_prefix("https://")
        .ok_or_else(|| format!("not an https URI: {uri}"))?;
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let port_authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let addr = tokio::net::lookup_host(&port_authority)
        .await
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let connect = || HttpConn::connect_as(None, addr, config.clone(), host);
    let mut conn = connect().await.map_err(|e| format!("connecting to {authority}: {e}"))?;
    let mut image = Vec::new();
    let mut total = None;
    let mut dropped = false;
    while total.is_none_or(|t| image.len() < t) {
        let from = image.len();
        let half = total.map_or(usize::MAX, |t| t / 2);
        let range = if drop_midway && from >= half && !dropped {
            dropped = true;
            conn = connect()
                .await
                .map_err(|e| format!("reconnecting to {authority}: {e}"))?;
            format!("bytes={from}-")
        } else {
            format!("bytes={from}-{}", from + fragment - 1)
        };
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nRange: {range}\r\nConnection: keep-alive\r\n\r\n");
        // A device's socket gives up on a silent server (then Result 4).
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, conn.request(&req))
            .await
            .map_err(|_| format!("download at {from}: no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("download at {from}: {e}"))?;
        if reply.status != 206 {
            return Err(format!("download at {from}: HTTP {}", reply.status));
        }
        let t = reply
            .header("content-range")
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, t)| t.parse::<usize>().ok())
            .ok_or_else(|| format!("download at {from}: no total in Content-Range"))?;
        total = Some(t);
        if doom_loop {
            for _ in 0..3 {
                let req = format!(
                    "GET {target} HTTP/1.1\r\nHost: {authority}\r\nRange: bytes={t}-\r\nConnection: keep-alive\r\n\r\n"
                );
                let reply = conn.request(&req).await.map_err(|e| format!("resume at {t}: {e}"))?;
                if reply.status != 416 {
                    return Err(format!("resume at {t}: HTTP {}, not 416", reply.status));
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            return Err(format!("resume at {t} answered 416 three times"));
        }
        if reply.body.is_empty() {
            return Err(format!("download at {from}: an empty range"));
        }
        image.extend_from_slice(&reply.body);
    }
    Ok(image)
}
