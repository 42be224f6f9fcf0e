//! One TLS connection of the firmware server, with idle parking.
//!
//! hyper keeps an 8 KiB header write buffer per connection and reserves an
//! 8 KiB read buffer while it waits for the next request; with thousands of
//! devices holding keep-alive connections between downloads that is most of
//! the server's memory. So a connection with no request for [`LINGER`] is
//! parked: hyper is shut down gracefully *without* closing the stream (its
//! responses were already sent with keep-alive), the stream waits for the
//! next request's first bytes with no HTTP state, and a fresh hyper
//! connection takes over with those bytes replayed first. Back-to-back
//! range requests (the nRF downloader) never park.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Idle time after the last request before a connection is parked.
pub const LINGER: Duration = Duration::from_millis(500);

/// A stream that yields `prefix` before reading from `inner`.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }

    /// The stream and any prefix bytes not read yet.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When the current hyper connection last saw a request, in ms since `epoch`.
struct Activity {
    epoch: Instant,
    last_request_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_request_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed)))
    }
}

/// Resolves when the stop flag is raised (the guard is dropped inside, so
/// callers' futures stay `Send`).
pub async fn raised(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serve HTTP/1.1 on `io` until the client leaves, the connection idles
/// past `idle`, or `stop` is raised (then the response in progress ends first).
pub async fn serve<T, F, Fut>(mut io: T, handle: F, idle: Duration, mut stop: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<Bytes>>> + Send + 'static,
{
    let mut prefix = Bytes::new();
    loop {
        if prefix.is_empty() {
            // Parked: no HTTP state, just the stream, until a request starts.
            let mut first = [0u8; 256];
            let read = tokio::select! {
                _ = raised(&mut stop) => return,
                r = tokio::time::timeout(idle, io.read(&mut first)) => r,
            };
            match read {
                Ok(Ok(n)) if n > 0 => prefix = Bytes::copy_from_slice(&first[..n]),
                _ => return, // closed, failed, or idle too long
            }
        }
        let activity = Arc::new(Activity {
            epoch: Instant::now(),
            last_request_ms: AtomicU64::new(0),
        });
        let seen = activity.clone();
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |req| {
            seen.touch();
            let fut = handle(req);
            let seen = seen.clone();
            // Boxed: `poll_without_shutdown` needs an Unpin service future.
            Box::pin(async move {
                let response = fut.await;
                // Count from the response too: its head (with keep-alive)
                // must be written before a park can end the connection.
                seen.touch();
                Ok::<_, std::convert::Infallible>(response)
            })
        });
        let mut conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(idle)
            .serve_connection(TokioIo::new(Rewind::new(prefix, io)), service);
        let mut parking = false;
        let mut stopping = false;
        let ended = loop {
            let linger = LINGER.saturating_sub(activity.idle_for());
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                _ = raised(&mut stop), if !stopping => {
                    stopping = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
                _ = tokio::time::sleep(linger), if !parking && !stopping => {
                    if activity.idle_for() >= LINGER {
                        // Ends the connection once no response is in
                        // progress; the stream itself stays open.
                        parking = true;
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                }
            }
        };
        if ended.is_err() {
            return;
        }
        let parts = conn.into_parts();
        let (unread, inner) = parts.io.into_inner().into_parts();
        io = inner;
        if stopping || !parking {
            // The server is stopping, or hyper ended the connection itself
            // (the client asked for `Connection: close`, or HTTP/1.0 without
            // keep-alive): close it as hyper would have.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            return;
        }
        prefix = [unread, parts.read_buf].concat().into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut r = Rewind::new(Bytes::from_static(b"GET "), client);
        tokio::io::AsyncWriteExt::write_all(&mut server, b"/x").await.unwrap();
        drop(server);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET /x");
    }
}
