//! Recording of received device datagrams for the fuzzers' seed corpora:
//! with `FLOWNEXUS_RECORD_DATAGRAMS=DIR` set, each distinct datagram the
//! CoAP socket (`DIR/coap/`) or a DTLS shard (`DIR/dtls/`) receives is
//! written to a file named by its hash. Off unless set; a failed write is
//! ignored (it is a development aid, never in the way of serving).

use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os(crate::config::RECORD_DATAGRAMS_ENV).map(PathBuf::from))
        .as_ref()
}

/// Record `datagram` under `kind` ("coap" or "dtls").
pub fn datagram(kind: &str, datagram: &[u8]) {
    let Some(dir) = dir() else { return };
    // FNV-1a: a stable name, so a datagram seen twice is one file.
    let hash = datagram.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = dir.join(kind);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{hash:016x}")), datagram);
}
