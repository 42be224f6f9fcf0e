//! The firmware download server, seen from the wire: a proxy that parses
//! every TLS record header the server sends, an nRF-style range client on
//! one keep-alive connection, curl and openssl as real peers, certificate
//! renewal during a download, and the catalogue's crash safety.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flownexus::app;
use flownexus::bench::fw::{HttpConn, client_config};
use flownexus::config::Config;
use flownexus::firmware::{Catalogue, Upload};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{config, output_with_stdin, store, wait_for};

const LIMIT: usize = 1370;
const IMAGE_SIZE: usize = 512 * 1024;

pub(super) fn image() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut img: Vec<u8> = (0..IMAGE_SIZE).map(|_| rng.u8(..)).collect();
    img[..4].copy_from_slice(&[0x3d, 0xb8, 0xf3, 0x96]); // MCUboot magic
    img[20..28].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // ih_ver 1.0.0+0, as add_image says
    img
}

fn sha256(b: &[u8]) -> String {
    flownexus::firmware::sha256_hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn fw_config(dir: &Path) -> Config {
    let mut c = config(dir);
    c.fw.shutdown_grace_s = 5;
    c
}

/// Add the test image as `app.bin` before the server starts.
pub(super) fn add_image(dir: &Path) -> flownexus::store::FirmwareRow {
    let mut s = store(dir);
    let upload = Upload {
        name: "app.bin",
        version: Some("1.0.0"),
        notes: "",
        uploader: "test",
    };
    Catalogue::new(dir, 1 << 30)
        .add(&mut s, &mut image().as_slice(), &upload, &mut |_| {})
        .unwrap()
        .0
}

/// A TCP proxy that forwards both ways and records the size on the wire of
/// every TLS record the server sends (5-byte header + length).
async fn record_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
            });
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // Parse whole records out of the byte stream.
                    while pending.len() >= 5 {
                        let len = usize::from(u16::from_be_bytes([pending[3], pending[4]]));
                        if pending.len() < 5 + len {
                            break;
                        }
                        seen.lock().unwrap().push(5 + len);
                        pending.drain(..5 + len);
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, sizes)
}

async fn connect(addr: SocketAddr, ca: &Path, version: &'static rustls::SupportedProtocolVersion) -> HttpConn {
    HttpConn::connect(addr, client_config(ca, version).unwrap())
        .await
        .unwrap()
}

/// An RSA-2048 chain with an intermediate, made by the openssl CLI:
/// returns (fullchain.pem, privkey.pem, root.pem).
fn rsa_chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    super::sh(
        dir,
        r#"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout root.key -out root.pem -days 30 -subj "/CN=Test Root" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout int.key -out int.csr -subj "/CN=Test Intermediate" 2>/dev/null
        printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' > int.ext
        openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -out int.pem -days 30 -extfile int.ext 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout privkey.pem -out leaf.csr -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > leaf.ext
        openssl x509 -req -in leaf.csr -CA int.pem -CAkey int.key -CAcreateserial -out leaf.pem -days 30 -extfile leaf.ext 2>/dev/null
        cat leaf.pem int.pem > fullchain.pem
    "#,
    );
    (dir.join("fullchain.pem"), dir.join("privkey.pem"), dir.join("root.pem"))
}

/// A server with the test image and, if given, the (chain, key, root) of an
/// RSA certificate; otherwise its development ECDSA one. Returns the data
/// directory (keep it alive), the server and the CA file to trust.
async fn start_with_certificate(
    rsa: Option<(&PathBuf, &PathBuf, &PathBuf)>,
) -> (tempfile::TempDir, app::Running, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let mut c = fw_config(dir.path());
    let ca = match rsa {
        Some((chain, key, root)) => {
            c.fw.cert_file = Some(chain.clone());
            c.fw.key_file = Some(key.clone());
            root.clone()
        }
        None => dir.path().join("fw-tls/ca.pem"),
    };
    let running = app::start(c).await.unwrap();
    (dir, running, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tls_record_fits_the_modem() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (chain, key, root) = rsa_chain(certs_dir.path());
    for rsa in [false, true] {
        let (_dir, running, ca) = start_with_certificate(rsa.then_some((&chain, &key, &root))).await;
        let (proxy, sizes) = record_proxy(running.fw_addr.unwrap()).await;
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            sizes.lock().unwrap().clear();
            let mut tls = connect(proxy, &ca, version).await;
            let full = tls
                .request("GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(full.status, 200);
            assert_eq!(sha256(&full.body), sha256(&image()));
            let part = tls
                .request("GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes=1000-9999\r\n\r\n")
                .await
                .unwrap();
            assert_eq!((part.status, part.body.len()), (206, 9000));
            drop(tls);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sizes = sizes.lock().unwrap().clone();
            let max = *sizes.iter().max().unwrap();
            assert!(sizes.len() > IMAGE_SIZE / LIMIT, "{} records seen", sizes.len());
            assert!(
                max <= LIMIT,
                "rsa={rsa} {version:?}: a {max}-byte record (limit {LIMIT})"
            );
            eprintln!(
                "rsa={rsa} {:?}: {} records, largest {max} bytes",
                version.version,
                sizes.len()
            );
        }
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nrf_style_range_download_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let row = add_image(dir.path());
    let running = app::start(fw_config(dir.path())).await.unwrap();
    let (proxy, sizes) = record_proxy(running.fw_addr.unwrap()).await;
    let ca = dir.path().join("fw-tls/ca.pem");
    let mut tls = connect(proxy, &ca, &rustls::version::TLS12).await;
    let mut assembled = Vec::new();
    let mut largest = 0;
    // As nRF Connect SDK's downloader: 2 KB ranges, keep-alive, no ALPN.
    while assembled.len() < IMAGE_SIZE {
        let a = assembled.len();
        let b = (a + 2047).min(IMAGE_SIZE - 1);
        let req = format!(
            "GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes={a}-{b}\r\nConnection: keep-alive\r\n\r\n"
        );
        let r = tls.request(&req).await.unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{IMAGE_SIZE}").as_str())
        );
        largest = largest.max(r.wire_bytes);
        assembled.extend_from_slice(&r.body);
    }
    assert!(
        largest <= 2303,
        "a {largest}-byte response: the device's buffer holds 2303"
    );
    assert_eq!(sha256(&assembled), row.sha256);

    // Resume with `bytes=N-`.
    let r = tls
        .request("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes=522240-\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (206, &assembled[522_240..]));
    // A client that clamps the last byte to the size gets it clamped, not 416.
    let r = tls
        .request("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes=524000-524288\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 524000-524287/524288"))
    );
    // Resuming at the very end: 416 with the size, and flagged.
    let r = tls
        .request("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes=524288-\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */524288")));
    // If-Range with a stale validator: the whole image.
    let r = tls
        .request("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes=0-9\r\nIf-Range: \"stale\"\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, IMAGE_SIZE));
    let etag = r.header("etag").unwrap().to_string();
    let req = format!("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes=0-9\r\nIf-Range: {etag}\r\n\r\n");
    assert_eq!(tls.request(&req).await.unwrap().status, 206);
    let h = tls
        .request("HEAD /binaries/app.bin HTTP/1.1\r\nHost: l\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((h.status, h.header("content-length")), (200, Some("524288")));
    drop(tls);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let max_record = *sizes.lock().unwrap().iter().max().unwrap();
    assert!(max_record <= LIMIT, "{max_record}");

    running.flush().await;
    let s = store(dir.path());
    let stats = s.download_stats(row.id).unwrap();
    assert_eq!(stats["doom_loops"], 1, "{stats}");
    assert!(stats["requests"].as_i64().unwrap() >= 260);
    assert!(s.events(None, 50).unwrap().iter().any(|e| e.kind == "fota-doom-loop"));
    running.stop().await;
}

/// Run curl (off the async threads) and return (success, stdout+stderr).
async fn curl(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(&args)
            .output()
            .unwrap();
        super::outcome(&out)
    })
    .await
    .unwrap()
}

fn s_client(addr: SocketAddr, args: &[&str], input: &str) -> String {
    let out = output_with_stdin(
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                "-ign_eof",
            ])
            .args(args),
        input,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_as_peers() {
    let dir = tempfile::tempdir().unwrap();
    let row = add_image(dir.path());
    let running = app::start(fw_config(dir.path())).await.unwrap();
    let addr = running.fw_addr.unwrap();
    let ca = dir.path().join("fw-tls/ca.pem").to_str().unwrap().to_string();
    let url = format!("https://localhost:{}/binaries/app.bin", addr.port());
    let out = dir.path().join("dl.bin");
    let w = "%{http_code} %{http_version}";
    let (ok, text) = curl(&["--http1.1", "--cacert", &ca, "-o", out.to_str().unwrap(), "-w", w, &url]).await;
    assert!(ok && text.starts_with("200 1.1"), "{text}");
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), row.sha256);
    // curl asking for h2 falls back to HTTP/1.1 (ALPN offers only http/1.1).
    let (ok, text) = curl(&["--http2", "--cacert", &ca, "-o", "/dev/null", "-w", w, &url]).await;
    assert!(ok && text.starts_with("200 1.1"), "{text}");
    let fw_url = format!("https://localhost:{}/fw/{}/app.bin", addr.port(), row.sha256);
    let (ok, text) = curl(&[
        "--cacert",
        &ca,
        "-r",
        "0-99",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &fw_url,
    ])
    .await;
    assert!(ok && text.starts_with("206 100"), "{text}");

    // An h2-only client is refused: alert 120, no_application_protocol.
    let text = tokio::task::spawn_blocking(move || s_client(addr, &["-alpn", "h2"], ""))
        .await
        .unwrap();
    assert!(
        text.contains("no application protocol") || text.contains("alert number 120"),
        "{text}"
    );
    // HTTP/1.0 with a doubled slash and no Range, as flownexus' old sample client sent.
    let ca5 = ca.clone();
    let text = tokio::task::spawn_blocking(move || {
        s_client(
            addr,
            &["-CAfile", &ca5, "-quiet"],
            "GET //binaries/app.bin HTTP/1.0\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(
        text.contains("HTTP/1.0 200") || text.contains("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(400)]
    );
    // `openssl s_client -msg`: every record the server sends, by its
    // header (traced to its own file, apart from the body on stdout).
    for v in ["-tls1_2", "-tls1_3"] {
        let trace = dir.path().join(format!("msg{v}.txt"));
        let (ca6, t) = (ca.clone(), trace.to_str().unwrap().to_string());
        tokio::task::spawn_blocking(move || {
            s_client(
                addr,
                &[v, "-CAfile", &ca6, "-msg", "-msgfile", &t],
                "GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
        })
        .await
        .unwrap();
        let text = std::fs::read_to_string(&trace).unwrap();
        let mut lines = text.lines();
        let mut sizes = Vec::new();
        while let Some(l) = lines.next() {
            if l.starts_with("<<<") && l.contains("RecordHeader") {
                let hex: Vec<u8> = lines
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).unwrap())
                    .collect();
                sizes.push(5 + usize::from(u16::from_be_bytes([hex[3], hex[4]])));
            }
        }
        assert!(sizes.len() > 300, "{v}: {} records", sizes.len());
        assert!(
            sizes.iter().all(|s| *s <= LIMIT),
            "{v}: largest {:?}",
            sizes.iter().max()
        );
    }
    // No listings, no dotfiles, no traversal, no other methods.
    let status = |extra: &'static [&'static str], u: String| {
        let ca = ca.clone();
        async move {
            let mut args: Vec<&str> = extra.to_vec();
            args.extend(["--cacert", &ca, "-o", "/dev/null", "-w", "%{http_code}", &u]);
            curl(&args).await.1
        }
    };
    for path in ["/binaries/", "/binaries/.hidden", "/binaries/../flownexus.sqlite3", "/"] {
        let u = format!("https://localhost:{}{path}", addr.port());
        assert_eq!(status(&["--path-as-is"], u).await, "404", "{path}");
    }
    assert_eq!(status(&["-X", "POST"], url.clone()).await, "405");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewal_during_a_download() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let certs = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let (chain, key, root) = rsa_chain(first.path());
    let live_cert = certs.path().join("fullchain.pem");
    let live_key = certs.path().join("privkey.pem");
    std::fs::copy(&chain, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let mut c = fw_config(dir.path());
    c.fw.cert_file = Some(live_cert.clone());
    c.fw.key_file = Some(live_key.clone());
    let running = app::start(c).await.unwrap();
    let addr = running.fw_addr.unwrap();

    let mut tls = connect(addr, &root, &rustls::version::TLS13).await;
    let old_leaf = tls.peer_certificate().unwrap();
    let mut assembled = Vec::new();
    // First half of the image, then the renewal, then the rest on the same connection.
    for i in 0..128 {
        let req = format!(
            "GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes={}-{}\r\n\r\n",
            i * 2048,
            i * 2048 + 2047
        );
        assembled.extend(tls.request(&req).await.unwrap().body);
    }
    let second = tempfile::tempdir().unwrap();
    let (chain2, key2, root2) = rsa_chain(second.path());
    // As certbot does: write the new files next to the old, rename over them.
    std::fs::copy(&key2, certs.path().join("privkey.tmp")).unwrap();
    std::fs::copy(&chain2, certs.path().join("fullchain.tmp")).unwrap();
    std::fs::rename(certs.path().join("privkey.tmp"), &live_key).unwrap();
    std::fs::rename(certs.path().join("fullchain.tmp"), &live_cert).unwrap();
    for i in 128..256 {
        let req = format!(
            "GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes={}-{}\r\n\r\n",
            i * 2048,
            i * 2048 + 2047
        );
        let r = tls.request(&req).await.unwrap();
        assert_eq!(r.status, 206);
        assembled.extend(r.body);
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    assert_eq!(
        sha256(&assembled),
        sha256(&image()),
        "the download that spanned the renewal is intact"
    );
    // The next handshake presents the new certificate.
    let mut new_leaf = old_leaf.clone();
    for _ in 0..50 {
        let fresh = connect(addr, &root2, &rustls::version::TLS13);
        if let Ok(t) = tokio::time::timeout(Duration::from_secs(2), fresh).await {
            new_leaf = t.peer_certificate().unwrap();
            break;
        }
    }
    assert_ne!(new_leaf, old_leaf);
    let expected = CertificateDer::pem_file_iter(&chain2).unwrap().next().unwrap().unwrap();
    assert_eq!(new_leaf, expected);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let row = add_image(dir.path());
    let mut c = fw_config(dir.path());
    c.fw.require_token = true;
    let running = app::start(c).await.unwrap();
    let addr = running.fw_addr.unwrap();
    let ca = dir.path().join("fw-tls/ca.pem");
    let bin = env!("CARGO_BIN_EXE_flownexus");
    let data = dir.path().to_str().unwrap().to_string();
    let base = format!("https://localhost:{}", addr.port());
    let out = Command::new(bin)
        .args([
            "--data-dir",
            &data,
            "firmware",
            "url",
            "app.bin",
            "--device",
            "urn:imei:42",
            "--base",
            &base,
        ])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.contains("?t="), "{url}");
    let path = url.strip_prefix(&base).unwrap().to_string();
    let mut tls = connect(addr, &ca, &rustls::version::TLS12).await;
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: l\r\nRange: bytes=0-99\r\n\r\n");
    assert_eq!(tls.request(&get(&path)).await.unwrap().status, 206);
    assert_eq!(
        tls.request(&get("/binaries/app.bin")).await.unwrap().status,
        403,
        "no token"
    );
    let forged = path.replace("?t=", "?t=x");
    assert_eq!(tls.request(&get(&forged)).await.unwrap().status, 403);
    running.flush().await;
    let rows: Vec<Option<String>> = store(dir.path())
        .connection()
        .prepare("SELECT device FROM downloads WHERE status = 206")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![Some("urn:imei:42".to_string())],
        "the download is accounted to the token's device"
    );

    // Removed by the CLI while the server runs: 404 within a second or so.
    let rm = Command::new(bin)
        .args(["--data-dir", &data, "firmware", "remove", "app.bin"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    let mut status = 0;
    for _ in 0..30 {
        status = tls.request(&get(&path)).await.unwrap().status;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404);
    assert!(!Catalogue::new(dir.path(), 1 << 30).image_path(&row.sha256).exists());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_killed_mid_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("upload.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let bin = env!("CARGO_BIN_EXE_flownexus");
    let mut child = Command::new(bin)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--create",
            "firmware",
            "add",
            fifo.to_str().unwrap(),
            "--version",
            "9",
        ])
        .spawn()
        .unwrap();
    // Feed half an image, then kill the uploader mid-write.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, &image()[..IMAGE_SIZE / 2]).unwrap();
    let tmp = dir.path().join("firmware/tmp");
    let s = store(dir.path());
    wait_for("the partial upload", Duration::from_secs(10), || {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 1)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    drop(writer);
    assert!(s.firmware_list(true).unwrap().is_empty(), "no record");
    let images = dir.path().join("firmware/images");
    assert_eq!(
        std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0),
        0,
        "no visible image"
    );
    // The next server start clears the partial file.
    let running = app::start(fw_config(dir.path())).await.unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    running.stop().await;
}

/// Devices drop connections mid-download all the time. The real binary
/// (not the test harness, which ignores SIGPIPE for us) must survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_clients_that_vanish_mid_download() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let mut child = super::serve_command(dir.path(), &[])
        .env("FLOWNEXUS_LOG_LEVEL", "warn")
        .spawn()
        .unwrap();
    let addr: SocketAddr = super::bound_when_up(dir.path(), "fw").await;
    let ca = dir.path().join("fw-tls/ca.pem");
    for _ in 0..20 {
        let mut conn = connect(addr, &ca, &rustls::version::TLS13).await;
        // Ask for the whole image and hang up before reading it.
        let req = "GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\n\r\nGET /binaries/app.bin HTTP/1.1\r\nHost: l\r\n\r\n";
        let _ = tokio::time::timeout(Duration::from_millis(20), conn.request(req)).await;
        drop(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    let mut conn = connect(addr, &ca, &rustls::version::TLS12).await;
    let r = conn
        .request("GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, sha256(&r.body)), (200, sha256(&image())));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

/// A keep-alive connection idle past the linger time is parked (hyper's
/// buffers released) and resumes seamlessly, pipelined requests included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_park_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let running = app::start(fw_config(dir.path())).await.unwrap();
    let ca = dir.path().join("fw-tls/ca.pem");
    let mut conn = connect(running.fw_addr.unwrap(), &ca, &rustls::version::TLS12).await;
    let range = |a: usize| {
        format!(
            "GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\nRange: bytes={a}-{}\r\n\r\n",
            a + 2047
        )
    };
    for round in 0..3 {
        let r = conn.request(&range(round * 2048)).await.unwrap();
        assert_eq!(
            (r.status, r.header("connection")),
            (206, None),
            "kept alive, round {round}"
        );
        assert_eq!(r.body, image()[round * 2048..round * 2048 + 2048]);
        tokio::time::sleep(flownexus::download::connection::LINGER * 2).await;
    }
    // Two requests in one write, after a park: both answered, in order.
    let two = format!("{}{}", range(0), range(4096));
    let first = conn.request(&two).await.unwrap();
    assert_eq!(first.body, image()[..2048]);
    let second = conn.request("").await.unwrap();
    assert_eq!(second.body, image()[4096..6144]);
    running.stop().await;
}

/// `[[fw.sni]]` certificates are chosen by the name the client sends; others
/// (and clients without SNI) get the default certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let other_dir = dir.path().join("other-tls");
    let other = flownexus::download::tls::development_certificates(&other_dir, &["fw.other.example".into()]).unwrap();
    let mut c = fw_config(dir.path());
    c.fw.sni = vec![flownexus::config::SniCertificate {
        names: vec!["fw.other.example".into()],
        cert_file: other.cert.clone(),
        key_file: other.key.clone(),
    }];
    let running = app::start(c).await.unwrap();
    let addr = running.fw_addr.unwrap();
    let other_ca = client_config(&other_dir.join("ca.pem"), &rustls::version::TLS13).unwrap();
    let mut conn = HttpConn::connect_as(None, addr, other_ca, "fw.other.example")
        .await
        .unwrap();
    assert_eq!(
        conn.request("GET /binaries/app.bin HTTP/1.1\r\nHost: fw.other.example\r\nRange: bytes=0-9\r\n\r\n")
            .await
            .unwrap()
            .status,
        206
    );
    let expected = CertificateDer::pem_file_iter(&other.cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer_certificate().unwrap(), expected);
    // The default name still gets the default certificate.
    let default = connect(addr, &dir.path().join("fw-tls/ca.pem"), &rustls::version::TLS13).await;
    assert_ne!(default.peer_certificate().unwrap(), expected);
    running.stop().await;
}

/// Stopping lets a download in progress finish (within the grace time)
/// and refuses new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_downloads_finish() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let running = app::start(fw_config(dir.path())).await.unwrap();
    let addr = running.fw_addr.unwrap();
    let ca = dir.path().join("fw-tls/ca.pem");
    // A slow device: a 4 KiB receive buffer, read in small paced chunks, so
    // the server is still writing the image when the stop comes.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let cfg = client_config(&ca, &rustls::version::TLS12).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /binaries/app.bin HTTP/1.1\r\nHost: l\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 64 * 1024 {
        let n = tls.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    // Stop while this client is mid-transfer (whether the rest still sits
    // in hyper or already in the kernel's send buffer, it must arrive).
    let stopping = tokio::spawn(running.stop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    loop {
        let n = tls.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        sha256(&got[head_end..]),
        sha256(&image()),
        "the running download completed"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// Every cipher suite the server offers keeps every record within the
/// limit: each of rustls' nine suites is forced in turn, on an RSA chain
/// and on an ECDSA certificate (TLS 1.2 suites need their key type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_keeps_records_within_the_limit() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (chain, key, root) = rsa_chain(certs_dir.path());
    let mut negotiated = Vec::new();
    for rsa in [false, true] {
        let (_dir, running, ca) = start_with_certificate(rsa.then_some((&chain, &key, &root))).await;
        let (proxy, sizes) = record_proxy(running.fw_addr.unwrap()).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        for suite in rustls::crypto::ring::default_provider().cipher_suites {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let version = suite.version();
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            sizes.lock().unwrap().clear();
            // A TLS 1.2 suite for the other key type fails the handshake: skip it.
            let Ok(mut conn) = HttpConn::connect(proxy, Arc::new(cfg)).await else {
                continue;
            };
            let r = conn
                .request("GET /binaries/app.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(sha256(&r.body), sha256(&image()));
            drop(conn);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let max = sizes.lock().unwrap().iter().copied().max().unwrap();
            assert!(max <= LIMIT, "{:?} (rsa={rsa}): a {max}-byte record", suite.suite());
            negotiated.push(format!("{:?}/{}", suite.suite(), if rsa { "rsa" } else { "ecdsa" }));
        }
        running.stop().await;
    }
    // 3 TLS 1.3 suites on each key + 3 TLS 1.2 suites for each key type.
    assert_eq!(negotiated.len(), 12, "{negotiated:?}");
}

/// With room for one image only, two images alternate in the cache and
/// both are served intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_larger_than_the_cache_room_are_evicted_not_reread() {
    let dir = tempfile::tempdir().unwrap();
    add_image(dir.path());
    let other: Vec<u8> = image().iter().map(|b| b ^ 0x5a).collect();
    let upload = Upload {
        name: "other.bin",
        version: Some("2"),
        notes: "",
        uploader: "test",
    };
    Catalogue::new(dir.path(), 1 << 30)
        .add(&mut store(dir.path()), &mut other.as_slice(), &upload, &mut |_| {})
        .unwrap();
    let mut c = fw_config(dir.path());
    c.fw.max_image_bytes = IMAGE_SIZE as u64 + 1000;
    c.fw.cache_bytes = IMAGE_SIZE as u64 + 1000;
    let running = app::start(c).await.unwrap();
    let mut conn = connect(
        running.fw_addr.unwrap(),
        &dir.path().join("fw-tls/ca.pem"),
        &rustls::version::TLS12,
    )
    .await;
    for round in 0..3 {
        for (name, want) in [("app.bin", image()), ("other.bin", other.clone())] {
            let r = conn
                .request(&format!("GET /binaries/{name} HTTP/1.1\r\nHost: l\r\n\r\n"))
                .await
                .unwrap();
            assert_eq!(sha256(&r.body), sha256(&want), "{name}, round {round}");
        }
    }
    running.stop().await;
}
