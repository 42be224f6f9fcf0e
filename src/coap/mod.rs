//! CoAP (RFC 7252) with block-wise transfers (RFC 7959) and observe (RFC 7641).
//!
//! [`message`] wraps coap-lite's codec; [`exchange`] is the sans-I/O exchange
//! layer (retransmission, deduplication, matching, blocks, observe).

pub mod amplification;
pub mod block;
pub mod exchange;
pub mod message;

pub use block::BlockValue;
pub use exchange::{Event, Exchanges, Failure, InboundId, Params, RequestId, Transmit};
pub use message::{Code, Message, Method, Options, Request, Response, Type};
