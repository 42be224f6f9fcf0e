//! A DTLS 1.2 PSK client for the device simulator and the benchmarks:
//! one association with one server, sans-I/O like the server side.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};

use crate::error::{Error, Result};

/// A client's handshake configuration: one identity and key, `suites`
/// offered in order.
pub fn client_config(identity: &str, key: &[u8], suites: &[CipherSuiteId]) -> Result<Arc<HandshakeConfig>> {
    let key = key.to_vec();
    ConfigBuilder::default()
        .with_crypto_provider(super::provider::provider())
        .with_psk(Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))))
        .with_psk_identity_hint(Some(identity.as_bytes().to_vec()))
        .with_cipher_suites(suites.to_vec())
        // Used for SNI only, which PSK handshakes do not need; set so that
        // rtc-dtls does not warn about its default.
        .with_server_name("flownexus".into())
        .build(true, None)
        .map(Arc::new)
        .map_err(|e| Error::Invalid {
            what: "DTLS client configuration",
            reason: e.to_string(),
        })
}

pub struct Client {
    server: SocketAddr,
    association: Endpoint,
    established: bool,
    failed: bool,
    received: VecDeque<Vec<u8>>,
    transmits: VecDeque<Vec<u8>>,
}

impl Client {
    /// Start a handshake with `server`; the ClientHello is ready in
    /// [`Self::poll_transmit`].
    pub fn connect(now: Instant, server: SocketAddr, config: Arc<HandshakeConfig>) -> Result<Client> {
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut association = Endpoint::new(local, Default::default(), None);
        association
            .connect(now, server, config, None)
            .map_err(|e| Error::Invalid {
                what: "DTLS connect",
                reason: e.to_string(),
            })?;
        let mut c = Client {
            server,
            association,
            established: false,
            failed: false,
            received: VecDeque::new(),
            transmits: VecDeque::new(),
        };
        c.drain();
        Ok(c)
    }

    fn drain(&mut self) {
        while let Some(t) = self.association.poll_transmit() {
            self.transmits.push_back(t.message.to_vec());
        }
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// The handshake failed (an alert, or retransmissions exhausted).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        match self.association.read(now, self.server, None, BytesMut::from(datagram)) {
            Ok(events) => {
                for ev in events {
                    match ev {
                        EndpointEvent::HandshakeComplete => self.established = true,
                        EndpointEvent::ApplicationData(d) => self.received.push_back(d.to_vec()),
                        EndpointEvent::PeerClosed => self.failed = true,
                        _ => {}
                    }
                }
            }
            // After the handshake a bad record is only dropped; before it, an
            // error ends the attempt.
            Err(_) if !self.established => self.failed = true,
            Err(_) => {}
        }
        self.drain();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.association.poll_timeout(&self.server).is_some_and(|t| t <= now)
            && self.association.handle_timeout(self.server, now).is_err()
        {
            self.failed = true;
        }
        self.drain();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.association.poll_timeout(&self.server)
    }

    /// Encrypt `payload`; false before the handshake completes.
    pub fn send(&mut self, now: Instant, payload: &[u8]) -> bool {
        if !self.established || self.association.write(now, self.server, payload).is_err() {
            return false;
        }
        self.drain();
        true
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_received(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// Queue close_notify.
    pub fn close(&mut self, now: Instant) {
        self.association.stop(now, self.server);
        self.drain();
    }
}
