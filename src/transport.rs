//! Who a CoAP message came from: an address on plain UDP, or a DTLS
//! session. The LwM2M server above is the same for both.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use crate::dtls::SessionId;

#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Udp(SocketAddr),
    /// A DTLS session. `addr` is an attribute, not part of the identity:
    /// the session is the peer even if its address moves (RFC 9146
    /// Connection IDs), so equality, hashing and order use only `session`.
    Dtls {
        session: SessionId,
        addr: SocketAddr,
    },
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Peer::Udp(a) | Peer::Dtls { addr: a, .. } => a,
        }
    }

    fn key(&self) -> (u8, Result<SessionId, SocketAddr>) {
        match *self {
            Peer::Udp(a) => (0, Err(a)),
            Peer::Dtls { session, .. } => (1, Ok(session)),
        }
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Peer {}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialOrd for Peer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Peer {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// As stored with a registration and shown to operators: `ip:port` for
/// UDP, `coaps://ip:port` for DTLS.
impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Udp(a) => write!(f, "{a}"),
            Peer::Dtls { addr, .. } => write!(f, "coaps://{addr}"),
        }
    }
}

impl std::str::FromStr for Peer {
    type Err = std::net::AddrParseError;

    /// A stored DTLS peer comes back with a session that no longer exists
    /// (sessions do not survive a restart): nothing reaches it until the
    /// device handshakes again and its Update moves the registration.
    fn from_str(s: &str) -> Result<Peer, Self::Err> {
        Ok(match s.strip_prefix("coaps://") {
            Some(a) => Peer::Dtls {
                session: SessionId(0),
                addr: a.parse()?,
            },
            None => Peer::Udp(s.strip_prefix("coap://").unwrap_or(s).parse()?),
        })
    }
}

impl crate::lwm2m::admission::SourceAddress for Peer {
    fn source(&self) -> std::net::IpAddr {
        self.addr().ip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_one_peer_wherever_it_is() {
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:2000".parse().unwrap();
        let s = |addr| Peer::Dtls {
            session: SessionId(7),
            addr,
        };
        assert_eq!(s(a), s(b));
        assert_ne!(s(a), Peer::Udp(a));
        assert_ne!(Peer::Udp(a), Peer::Udp(b));
        for p in [Peer::Udp(a), s(b)] {
            let back: Peer = p.to_string().parse().unwrap();
            assert_eq!(back.addr(), p.addr());
            assert_eq!(matches!(back, Peer::Dtls { .. }), matches!(p, Peer::Dtls { .. }));
        }
        assert_eq!("coap://192.0.2.1:1000".parse::<Peer>().unwrap(), Peer::Udp(a));
    }
}
