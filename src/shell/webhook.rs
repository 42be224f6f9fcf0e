//! The webhook sink: each outbox event (of the kinds asked for) POSTed as
//! one JSON body to an HTTP(S) receiver, over a kept-alive HTTP/1.1
//! connection, signed with HMAC-SHA256 over the body
//! (`X-Flownexus-Signature: sha256=<hex>`) so the receiver knows it came
//! from this server. A 2xx takes the event; anything else stops the batch
//! there, and the outbox retries from that event with backoff.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::config::WebhookConfig;
use crate::lwm2m::model::Models;
use crate::outbox::{EventKind, OutboxEvent};

/// Connecting, and each request, may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct WebhookSink {
    name: &'static str,
    uri: hyper::Uri,
    kinds: Vec<EventKind>,
    key: ring::hmac::Key,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    conn: Option<SendRequest<Full<Bytes>>>,
    models: Arc<Models>,
}

/// The body's signature as the header carries it.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl WebhookSink {
    /// Sink `index` of the configuration; `secret` signs the bodies.
    pub fn new(index: usize, config: &WebhookConfig, secret: &[u8], models: Arc<Models>) -> crate::Result<WebhookSink> {
        let bad = |reason: String| crate::Error::config(format!("events.webhooks[{index}].url"), reason);
        let uri: hyper::Uri = config.url.parse().map_err(|e| bad(format!("{e}")))?;
        let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
        let tls = match uri.scheme_str() {
            Some("https") => {
                let mut roots = rustls::RootCertStore::empty();
                // The system's CAs (Debian's ca-certificates); a receiver
                // with a private CA adds it to the system store.
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| bad(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| bad(e.to_string()))?;
                Some((Arc::new(config), name))
            }
            Some("http") => None,
            _ => return Err(bad("must be http:// or https://".into())),
        };
        let kinds = config.kinds.iter().filter_map(|k| EventKind::parse(k)).collect();
        // A fixed set of names, made once at start (the health board and
        // the metrics label sinks by a static name).
        let name: &'static str = Box::leak(format!("webhook-{}", index + 1).into_boxed_str());
        Ok(WebhookSink {
            name,
            uri,
            kinds,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            tls,
            conn: None,
            models,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connects unless the kept connection is still open.
    async fn connect(&mut self) -> Result<(), String> {
        if self.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let host = self.uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let port = self.uri.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("cannot reach {}: {e}", self.uri))?;
            match &self.tls {
                Some((config, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS with {}: {e}", self.uri))?;
                    handshake(stream).await
                }
                None => handshake(tcp).await,
            }
        };
        let sender = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| format!("no connection to {} within {TIMEOUT:?}", self.uri))??;
        self.conn = Some(sender);
        Ok(())
    }

    /// POSTs the events in order; how many the receiver took, and why it
    /// stopped if it did not take them all.
    pub async fn deliver(&mut self, events: &[OutboxEvent]) -> (usize, Option<String>) {
        for (i, e) in events.iter().enumerate() {
            if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
                continue;
            }
            let mut body = e.readable(&self.models);
            body.insert("kind".into(), serde_json::Value::from(e.kind.as_str()));
            let body = serde_json::Value::Object(body).to_string();
            if let Err(error) = self.post(e, body).await {
                self.conn = None;
                return (i, Some(error));
            }
        }
        (events.len(), None)
    }

    async fn post(&mut self, e: &OutboxEvent, body: String) -> Result<(), String> {
        self.connect().await?;
        let sender = self.conn.as_mut().expect("connected");
        let authority = self.uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("flownexus/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-flownexus-event", e.kind.as_str())
            .header("x-flownexus-event-id", e.event_id.as_str())
            .header("x-flownexus-signature", signature(&self.key, body.as_bytes()))
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| err.to_string())?;
        let exchange = async {
            sender.ready().await.map_err(|err| err.to_string())?;
            let response = sender.send_request(request).await.map_err(|err| err.to_string())?;
            let status = response.status();
            // The body is read (and dropped) so the connection can be kept.
            let _ = response.into_body().collect().await;
            Ok::<_, String>(status)
        };
        let status = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{} did not answer within {TIMEOUT:?}", self.uri))??;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", self.uri))
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2: HMAC-SHA256 with key "Jefe".
    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
