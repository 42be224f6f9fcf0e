//! TLS for the firmware server: rustls with the ring provider only (two
//! providers in one binary make `ServerConfig::builder()` panic at run time),
//! every record on the wire within the configured limit, ALPN `http/1.1`
//! only, and certificates chosen by SNI and reloaded when their files change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::FirmwareServerConfig;
use crate::error::{Error, Result};

/// Bytes a record adds beyond what `max_fragment_size` counts: rustls
/// counts the 5-byte header but not the AEAD expansion, at most 8 bytes of
/// explicit nonce + 16 of tag (TLS 1.2 AES-GCM); TLS 1.3 adds 17. Measured:
/// `Some(1346)` keeps every record ≤ 1370 bytes (tests/system/firmware.rs reads them off the wire).
pub const AEAD_EXPANSION: usize = 24;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One certificate chain and key, and the SNI names it answers
/// (empty: the default for every other name and for clients without SNI).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

struct Loaded {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificates in use; [`Certificates::reload`] swaps them atomically,
/// so handshakes in progress and established connections are untouched.
pub struct Certificates {
    pairs: Vec<CertPair>,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("pairs", &self.pairs).finish()
    }
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::malformed("TLS certificate or key", format!("{}: {e}", path.display()))
}

fn load_pair(p: &CertPair, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&p.cert)
        .map_err(|e| tls_err(&p.cert, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(&p.cert, e))?;
    if chain.is_empty() {
        return Err(tls_err(&p.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|e| tls_err(&p.key, e))?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| tls_err(&p.key, e))?;
    Ok(Arc::new(ck))
}

impl Certificates {
    /// Load every pair; the first pair without names is the default (else the first).
    pub fn load(pairs: Vec<CertPair>, provider: Arc<CryptoProvider>) -> Result<Arc<Certificates>> {
        let loaded = Self::read(&pairs, &provider)?;
        Ok(Arc::new(Certificates {
            pairs,
            provider,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn read(pairs: &[CertPair], provider: &CryptoProvider) -> Result<Loaded> {
        let mut default = None;
        let mut by_name = HashMap::new();
        for p in pairs {
            let ck = load_pair(p, provider)?;
            if p.names.is_empty() {
                default.get_or_insert_with(|| ck.clone());
            }
            for n in &p.names {
                by_name.insert(n.to_ascii_lowercase(), ck.clone());
            }
            default.get_or_insert(ck);
        }
        let default = default.ok_or_else(|| Error::config("fw.cert_file", "no certificate configured"))?;
        Ok(Loaded { default, by_name })
    }

    /// Re-read the files. On any error the certificates in use stay.
    pub fn reload(&self) -> Result<()> {
        let fresh = Self::read(&self.pairs, &self.provider)?;
        *self.loaded.write().expect("certificate lock") = Arc::new(fresh);
        Ok(())
    }

    /// The files to watch for renewals.
    pub fn files(&self) -> Vec<PathBuf> {
        self.pairs
            .iter()
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.read().expect("certificate lock").clone();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(ck) = loaded.by_name.get(&name) {
                return Some(ck.clone());
            }
            // One wildcard label, as certificates have it (`*.example.com`).
            if let Some((_, rest)) = name.split_once('.')
                && let Some(ck) = loaded.by_name.get(&format!("*.{rest}"))
            {
                return Some(ck.clone());
            }
        }
        Some(loaded.default.clone())
    }
}

/// The server configuration: TLS 1.3 and 1.2, AEAD suites only (all rustls
/// has), ALPN `http/1.1` (an h2-only client is refused with
/// no_application_protocol; a client without ALPN is accepted), and every
/// record — handshake included — at most `max_record_bytes` on the wire.
pub fn server_config(certs: Arc<Certificates>, max_record_bytes: usize) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::config("fw", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.max_fragment_size = Some(max_record_bytes - AEAD_EXPANSION);
    Ok(Arc::new(config))
}

/// Watch the certificate files and reload on change (certbot renews by
/// swapping symlinks in its `live/` directory, so directories are watched).
/// Keep the returned watcher alive.
pub fn watch(certs: Arc<Certificates>) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::config("fw.cert_file", format!("cannot watch certificates: {e}")))?;
    let mut dirs: Vec<PathBuf> = certs
        .files()
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| Error::config("fw.cert_file", format!("cannot watch {}: {e}", d.display())))?;
    }
    std::thread::Builder::new()
        .name("cert-reload".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // A renewal writes several files: settle, then read once.
                std::thread::sleep(Duration::from_millis(300));
                while rx.try_recv().is_ok() {}
                match certs.reload() {
                    Ok(()) => log::info!("firmware server certificates reloaded"),
                    Err(e) => log::error!("certificate reload failed, keeping the current ones: {e}"),
                }
            }
        })
        .map_err(|e| Error::Io {
            path: PathBuf::from("cert-reload thread"),
            cause: e,
        })?;
    Ok(watcher)
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            cause: source,
        })?;
    f.write_all(text.as_bytes()).map_err(|source| Error::Io {
        path: path.to_owned(),
        cause: source,
    })
}

/// For `serve` on embedded defaults: a development CA and a server
/// certificate signed by it (ECDSA P-256) in `dir`, made once. Devices and
/// tests are given `ca.pem`.
pub fn development_certificates(dir: &Path, names: &[String]) -> Result<CertPair> {
    let pair = CertPair {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        names: Vec::new(),
    };
    if pair.cert.exists() && pair.key.exists() {
        return Ok(pair);
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        cause: source,
    })?;
    let gen_err = |e: rcgen::Error| Error::malformed("development certificate", e.to_string());
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flownexus development CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).map_err(gen_err)?;
    std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(|source| Error::Io {
        path: dir.join("ca.pem"),
        cause: source,
    })?;
    write_secret(&pair.key, &key.serialize_pem())?;
    // The chain a device needs: leaf, then the CA it can pin.
    std::fs::write(&pair.cert, format!("{}{}", cert.pem(), ca.pem())).map_err(|source| Error::Io {
        path: pair.cert.clone(),
        cause: source,
    })?;
    log::info!(
        "generated a development CA and certificate for {names:?} in {}",
        dir.display()
    );
    Ok(pair)
}

/// The certificate pairs the configuration names, or the development ones.
pub fn configured_pairs(c: &FirmwareServerConfig, data_dir: &Path) -> Result<Vec<CertPair>> {
    let mut pairs = match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => vec![CertPair {
            cert: cert.clone(),
            key: key.clone(),
            names: Vec::new(),
        }],
        _ => vec![development_certificates(&data_dir.join("fw-tls"), &c.dev_names)?],
    };
    pairs.extend(c.sni.iter().map(|s| CertPair {
        cert: s.cert_file.clone(),
        key: s.key_file.clone(),
        names: s.names.clone(),
    }));
    Ok(pairs)
}
