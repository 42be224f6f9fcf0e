//! Secrets generated on first run: 32 random bytes, base64url, in a file
//! created with mode 0600 (never logged, never in the config tree).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// Fill a buffer from the operating system's random source.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::malformed("random source", "unavailable"))?;
    Ok(b)
}

/// Read the secret at `path`, or create it on first use. `key` is the
/// config key that names the file, for the error if its content is bad.
pub fn load_or_create(path: &Path, key: &str) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        cause: source,
    };
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let secret = random::<32>()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(URL_SAFE_NO_PAD.encode(secret).as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
        .filter(|s| s.len() >= 16)
        .ok_or_else(|| Error::config(key, "must hold at least 16 bytes, base64url"))
}
