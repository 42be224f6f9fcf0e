//! One DTLS association, live or parked. A live association is an
//! rtc-dtls endpoint with its handshake transcript, flights and buffers,
//! about 12 KB. Most devices sleep for hours between uplinks, so an
//! established association idle for a while is parked: only its
//! negotiated state (keys, epochs, sequence number; a few hundred bytes,
//! rtc-dtls' own serialisation) is kept, and it is restored when the next
//! datagram comes or the server has something to send.
//!
//! Parked states live in one [`ParkingLot`], a slab of fixed-size slots,
//! not in boxes of their own: a small long-lived allocation made while
//! live associations come and go would land among their freed chunks and
//! keep those pages resident; the slab keeps them in one block.
//!
//! Parking forgets rtc-dtls' anti-replay window (RFC 6347 §4.1.2.6), so we
//! keep a floor: the highest record number seen to carry data. Records at
//! or below it are dropped before a restored association sees them.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_dtls::config::HandshakeConfig;
use rtc_dtls::crypto_provider::RTCCryptoProvider;

use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::state::State;

use super::ASSOCIATION;
use super::record;

/// Bytes per slot: a serialised PSK state with an identity of up to about
/// 60 bytes; longer ones are kept on the heap.
const SLOT_BYTES: usize = 256;

/// Aligned for rkyv, which reads the serialised state in place.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot([u8; SLOT_BYTES]);

/// Where a parked state's bytes are.
pub enum Place {
    Slot { index: u32, len: u16 },
    Heap(Box<[u8]>),
}

/// The shared storage of parked states and the session machinery they
/// need to come back to life.
pub struct Context {
    pub config: Arc<HandshakeConfig>,
    pub provider: Arc<dyn RTCCryptoProvider>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Context {
    pub fn new(config: Arc<HandshakeConfig>, provider: Arc<dyn RTCCryptoProvider>) -> Context {
        Context {
            config,
            provider,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn store(&mut self, state: Vec<u8>) -> Place {
        if state.len() > SLOT_BYTES {
            return Place::Heap(state.into_boxed_slice());
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot([0; SLOT_BYTES]));
            (self.slots.len() - 1) as u32
        });
        self.slots[index as usize].0[..state.len()].copy_from_slice(&state);
        Place::Slot {
            index,
            len: state.len() as u16,
        }
    }

    fn bytes<'a>(&'a self, place: &'a Place) -> &'a [u8] {
        match place {
            Place::Slot { index, len } => &self.slots[*index as usize].0[..*len as usize],
            Place::Heap(b) => b,
        }
    }

    fn release(&mut self, place: Place) {
        if let Place::Slot { index, .. } = place {
            self.free.push(index);
        }
    }
}

pub enum Association {
    Live {
        endpoint: Box<Endpoint>,
        /// The peer has sent application data since the handshake, so it
        /// has our Finished: no flight of ours can still need resending
        /// (RFC 6347 §4.2.4), and the association may be parked.
        confirmed: bool,
        floor: u64,
    },
    Parked {
        state: Place,
        floor: u64,
    },
}

/// Why a datagram was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Nothing left after dropping replayed records.
    Replay,
    /// The parked state did not restore.
    Restore(String),
    /// rtc-dtls refused the datagram (bad record, alert, failed handshake).
    Dtls(String),
}

impl Association {
    pub fn new(ctx: &Context) -> Association {
        Association::Live {
            endpoint: Box::new(Endpoint::new(ASSOCIATION, Default::default(), Some(ctx.config.clone()))),
            confirmed: false,
            floor: 0,
        }
    }

    /// The PSK identity the peer presented (live associations only).
    pub fn identity(&self) -> Option<Box<[u8]>> {
        match self {
            Association::Live { endpoint, .. } => endpoint
                .get_connection_state(ASSOCIATION)
                .map(|st| st.identity_hint.clone().into_boxed_slice()),
            Association::Parked { .. } => None,
        }
    }

    /// Give back a parked association's slot; call before dropping it.
    pub fn release(self, ctx: &mut Context) {
        if let Association::Parked { state, .. } = self {
            ctx.release(state);
        }
    }

    /// The live endpoint, restoring a parked association first.
    pub fn live(&mut self, now: Instant, ctx: &mut Context) -> Result<&mut Endpoint, Refused> {
        if let Association::Parked { state, floor } = self {
            let mut st = State::new(ctx.provider.clone(), false);
            st.unmarshal_binary(ctx.bytes(state))
                .map_err(|e| Refused::Restore(e.to_string()))?;
            // rtc-dtls resumes a stored association only through connect();
            // after a completed handshake the role no longer matters: the
            // state carries its own, and with it the key directions.
            let mut endpoint = Box::new(Endpoint::new(ASSOCIATION, Default::default(), None));
            endpoint
                .connect(now, ASSOCIATION, ctx.config.clone(), Some(st))
                .map_err(|e| Refused::Restore(e.to_string()))?;
            while endpoint.poll_transmit().is_some() {}
            let floor = *floor;
            if let Association::Parked { state, .. } = std::mem::replace(
                self,
                Association::Live {
                    endpoint,
                    confirmed: true,
                    floor,
                },
            ) {
                ctx.release(state);
            }
        }
        match self {
            Association::Live { endpoint, .. } => Ok(endpoint),
            Association::Parked { .. } => unreachable!("restored above"),
        }
    }

    pub fn is_parked(&self) -> bool {
        matches!(self, Association::Parked { .. })
    }

    /// Feed one datagram.
    pub fn read(&mut self, now: Instant, ctx: &mut Context, datagram: &[u8]) -> Result<Vec<EndpointEvent>, Refused> {
        let records = record::records(datagram).unwrap_or_default();
        let fresh: Vec<u8>;
        // A live association has rtc-dtls' window; a parked one our floor.
        let floor = match self {
            Association::Parked { floor, .. } => Some(*floor),
            Association::Live { .. } => None,
        };
        let datagram = if let Some(floor) = floor
            && records.iter().any(|(h, _)| h.epoch > 0 && h.sequence <= floor)
        {
            fresh = records
                .iter()
                .filter(|(h, _)| h.epoch == 0 || h.sequence > floor)
                .flat_map(|(_, r)| datagram[r.clone()].iter().copied())
                .collect();
            if fresh.is_empty() {
                return Err(Refused::Replay);
            }
            &fresh[..]
        } else {
            datagram
        };
        let endpoint = self.live(now, ctx)?;
        let events = endpoint
            .read(now, ASSOCIATION, None, BytesMut::from(datagram))
            .map_err(|e| Refused::Dtls(e.to_string()))?;
        if events.iter().any(|e| matches!(e, EndpointEvent::ApplicationData(_))) {
            // Only a datagram of one record says which record carried the
            // data; the floor stays conservative (lower) otherwise.
            let top = match records.as_slice() {
                [(h, _)] if h.epoch > 0 => Some(h.sequence),
                _ => None,
            };
            if let Association::Live { confirmed, floor, .. } = self {
                *confirmed = true;
                if let Some(top) = top {
                    *floor = (*floor).max(top);
                }
            }
        }
        Ok(events)
    }

    /// Datagrams the association has queued (none while parked).
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        match self {
            Association::Live { endpoint, .. } => endpoint.poll_transmit().map(|t| t.message),
            Association::Parked { .. } => None,
        }
    }

    /// Park an established, confirmed association (`force`: even if the
    /// peer never sent data). False if it cannot be parked.
    pub fn park(&mut self, force: bool, ctx: &mut Context) -> bool {
        let Association::Live {
            endpoint,
            confirmed,
            floor,
        } = self
        else {
            return true;
        };
        if !(*confirmed || force) {
            return false;
        }
        let Some(state) = endpoint
            .get_connection_state(ASSOCIATION)
            .and_then(|s| s.marshal_binary().ok())
        else {
            return false;
        };
        *self = Association::Parked {
            state: ctx.store(state),
            floor: *floor,
        };
        true
    }
}
