//! One handshake in progress, server side: an rtc-dtls endpoint with its
//! transcript and flights (about 9 KB). When it completes, what it
//! negotiated becomes a [`Protection`] and the endpoint is dropped; the
//! established session never touches rtc-dtls again.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_dtls::config::HandshakeConfig;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};

use super::ASSOCIATION;
use super::protection::{Aead, Negotiated, Protection};

/// A mirror of rtc-dtls' private `SerializedState` (state.rs), the only
/// way it hands out the master secret and randoms: `State::marshal_binary`
/// writes it with rkyv, and the same fields of the same types in the same
/// order archive identically. rtc-dtls is pinned (`=0.21.1` in Cargo.toml)
/// and the session tests fail on any mismatch: a handshake whose keys came
/// out wrong cannot exchange a single record.
#[derive(rkyv::Archive, rkyv::Deserialize)]
struct SerializedState {
    local_epoch: u16,
    _remote_epoch: u16,
    local_random: [u8; 32],
    remote_random: [u8; 32],
    cipher_suite_id: u16,
    master_secret: Vec<u8>,
    sequence_number: u64,
    _srtp_protection_profile: u16,
    _peer_certificates: Vec<Vec<u8>>,
    _identity_hint: Vec<u8>,
    is_client: bool,
}

pub struct Handshake {
    endpoint: Endpoint,
}

impl Handshake {
    pub fn new(config: Arc<HandshakeConfig>) -> Box<Handshake> {
        Box::new(Handshake {
            endpoint: Endpoint::new(ASSOCIATION, Default::default(), Some(config)),
        })
    }

    /// Feed one datagram; rtc-dtls' error as text.
    pub fn read(&mut self, now: Instant, datagram: &[u8]) -> Result<Vec<EndpointEvent>, String> {
        self.endpoint
            .read(now, ASSOCIATION, None, BytesMut::from(datagram))
            .map_err(|e| e.to_string())
    }

    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.endpoint.poll_transmit().map(|t| t.message)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout(&ASSOCIATION)
    }

    /// Retransmit our flight if it is due; false if the handshake gave up.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.endpoint.handle_timeout(ASSOCIATION, now).is_ok()
    }

    /// The PSK identity the peer presented.
    pub fn identity(&self) -> Box<[u8]> {
        self.endpoint
            .get_connection_state(ASSOCIATION)
            .map(|st| st.identity_hint.clone().into_boxed_slice())
            .unwrap_or_default()
    }

    /// The record protection of the completed handshake.
    pub fn protection(&self) -> Result<Protection, String> {
        let state = self
            .endpoint
            .get_connection_state(ASSOCIATION)
            .ok_or("no connection state")?
            .marshal_binary()
            .map_err(|e| e.to_string())?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(state.len());
        aligned.extend_from_slice(&state);
        let s = rkyv::from_bytes::<SerializedState, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())?;
        let aead = Aead::from_suite(s.cipher_suite_id).ok_or(format!("suite {:#06x}", s.cipher_suite_id))?;
        if s.is_client || s.local_epoch == 0 {
            return Err("not a completed server handshake".into());
        }
        Ok(Protection::new(&Negotiated {
            aead,
            master_secret: &s.master_secret,
            client_random: &s.remote_random,
            server_random: &s.local_random,
            is_server: true,
            epoch: s.local_epoch,
            next_sequence: s.sequence_number,
        }))
    }
}
