//! A simulated device's connection to the server: a UDP socket, with a
//! DTLS PSK session over it when the device has a key. A "NAT rebinding"
//! moves the device to a new socket (new source port); with DTLS that
//! means a new handshake, after which the device sends an Update.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::dtls::CIPHER_SUITES;
use crate::dtls::client::{Client as DtlsClient, ClientConfig, client_config};
use crate::psk::Psk;

/// CoAP messages held while a handshake runs; more are dropped (CoAP
/// retransmits confirmable ones).
const BACKLOG: usize = 32;
/// Wait this long before handshaking again after a failure.
const RETRY: Duration = Duration::from_secs(1);

struct Secure {
    config: Arc<ClientConfig>,
    session: Option<DtlsClient>,
    backlog: VecDeque<Vec<u8>>,
    retry_at: Option<Instant>,
    handshakes: u64,
    /// Handshakes that ended in an alert or ran out of retransmissions
    /// (a wrong key: the server answers a bad Finished with an alert).
    failed: u64,
}

pub struct Link {
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    secure: Option<Secure>,
}

impl Link {
    pub async fn open(local: SocketAddr, server: SocketAddr, psk: Option<&Psk>) -> std::io::Result<Link> {
        let secure = match psk {
            Some(p) => Some(Secure {
                config: client_config(&p.identity, p.key(), &CIPHER_SUITES[..1]).map_err(std::io::Error::other)?,
                session: None,
                backlog: VecDeque::new(),
                retry_at: None,
                handshakes: 0,
                failed: 0,
            }),
            None => None,
        };
        let mut link = Link {
            sock: Self::socket(local, server).await?,
            server,
            local,
            secure,
        };
        link.handshake(Instant::now()).await;
        Ok(link)
    }

    async fn socket(local: SocketAddr, server: SocketAddr) -> std::io::Result<UdpSocket> {
        let sock = UdpSocket::bind(local).await?;
        sock.connect(server).await?;
        Ok(sock)
    }

    /// Completed DTLS handshakes so far (0 for plain CoAP).
    pub fn handshakes(&self) -> u64 {
        self.secure.as_ref().map_or(0, |s| s.handshakes)
    }

    /// DTLS handshakes that failed so far.
    pub fn failed_handshakes(&self) -> u64 {
        self.secure.as_ref().map_or(0, |s| s.failed)
    }

    async fn handshake(&mut self, now: Instant) {
        let server = self.server;
        if let Some(s) = &mut self.secure {
            s.retry_at = None;
            match DtlsClient::connect(now, server, s.config.clone()) {
                Ok(c) => s.session = Some(c),
                Err(e) => {
                    log::warn!("sim: DTLS connect: {e}");
                    s.failed += 1;
                    s.retry_at = Some(now + RETRY);
                }
            }
        }
        self.flush().await;
    }

    /// Move to a new source port, as a NAT rebinding would. Returns once
    /// the new socket is bound; a DTLS device starts a new handshake.
    pub async fn rebind(&mut self) -> std::io::Result<()> {
        self.sock = Self::socket(self.local, self.server).await?;
        if let Some(s) = &mut self.secure {
            s.session = None;
        }
        self.handshake(Instant::now()).await;
        Ok(())
    }

    /// Start a new DTLS handshake on the same socket (after the server
    /// stopped answering: it may have lost the session). No-op for plain CoAP.
    pub async fn reconnect(&mut self) {
        if let Some(s) = &mut self.secure {
            s.session = None;
            self.handshake(Instant::now()).await;
        }
    }

    pub async fn send(&mut self, coap: Vec<u8>) {
        match &mut self.secure {
            None => {
                let _ = self.sock.send(&coap).await;
            }
            Some(s) => match &mut s.session {
                Some(c) if c.is_established() => {
                    c.send(Instant::now(), &coap);
                    self.flush().await;
                }
                _ => {
                    if s.backlog.len() < BACKLOG {
                        s.backlog.push_back(coap);
                    }
                }
            },
        }
    }

    async fn flush(&mut self) {
        if let Some(c) = self.secure.as_mut().and_then(|s| s.session.as_mut()) {
            while let Some(d) = c.poll_transmit() {
                let _ = self.sock.send(&d).await;
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = self.secure.as_ref()?;
        match (s.retry_at, s.session.as_ref().and_then(DtlsClient::poll_timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub async fn handle_timeout(&mut self, now: Instant) {
        let Some(s) = &mut self.secure else { return };
        if s.retry_at.is_some_and(|t| t <= now) {
            self.handshake(now).await;
            return;
        }
        if let Some(c) = &mut s.session {
            c.handle_timeout(now);
            if c.has_failed() {
                s.failed += u64::from(!c.is_established());
                s.session = None;
                s.retry_at = Some(now + RETRY);
            }
        }
        self.flush().await;
    }

    /// Receive one datagram; returns the CoAP messages it carried (none
    /// while handshaking) and whether a handshake just completed.
    pub async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
        let n = self.sock.recv(buf).await?;
        let Some(s) = &mut self.secure else {
            return Ok((vec![buf[..n].to_vec()], false));
        };
        let Some(c) = &mut s.session else {
            return Ok((Vec::new(), false));
        };
        let was = c.is_established();
        let now = Instant::now();
        c.handle_datagram(now, &buf[..n]);
        let mut coap = Vec::new();
        while let Some(m) = c.poll_received() {
            coap.push(m);
        }
        let established = !was && c.is_established();
        if established {
            s.handshakes += 1;
            while let Some(m) = s.backlog.pop_front() {
                c.send(now, &m);
            }
        }
        if c.has_failed() {
            // A session the server closed later is not a failed handshake.
            s.failed += u64::from(!was && !c.is_established());
            s.session = None;
            s.retry_at = Some(now + RETRY);
        }
        self.flush().await;
        Ok((coap, established))
    }
}
