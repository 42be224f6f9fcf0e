//! The production front: `nginx/*.conf.in` rendered by
//! `deploy/render-nginx.sh`, checked by `nginx -t` and run (Debian nginx
//! with libnginx-mod-stream) on high ports with flownexus behind it. A
//! firmware download through the SNI pass-through keeps every TLS record
//! within 1370 bytes and is accounted to the device's own address (PROXY
//! protocol); the dashboard loads through the proxy with HSTS; plain HTTP
//! redirects.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flownexus::sim::https::{HttpConn, client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and one certificate for example.test and its subdomains, as
/// certbot's lineage directory holds them.
pub(super) fn certificates(dir: &Path) {
    super::sh(
        dir,
        r#"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
            -days 2 -subj /CN=test-ca -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout privkey.pem -out leaf.csr \
            -subj /CN=example.test 2>/dev/null
        printf 'subjectAltName=DNS:example.test,DNS:*.example.test\nextendedKeyUsage=serverAuth\n' > leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out fullchain.pem -days 2 \
            -extfile leaf.ext 2>/dev/null
        "#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_firmware_through_by_sni_and_proxies_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    for d in ["certs", "docs", "apex", "acme", "out", "nginx"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    certificates(&root.join("certs"));
    std::fs::write(root.join("apex/index.html"), "flownexus landing page\n").unwrap();

    let mut c = super::config(&data);
    c.fw.proxy_protocol = true;
    c.fw.dev_names = vec!["fw.example.test".into()];
    let running = flownexus::app::start(c).await.unwrap();
    super::firmware::add_image(&data);
    let image = super::firmware::image();

    let (https, http, internal) = (free_port(), free_port(), free_port());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rendered = Command::new(manifest.join("deploy/render-nginx.sh"))
        .args(["--domain", "example.test", "--cert-name", "example.test"])
        .arg(root.join("out"))
        .env("HTTPS_PORT", https.to_string())
        .env("HTTP_PORT", http.to_string())
        .env("TLS_INTERNAL", format!("127.0.0.1:{internal}"))
        .env("FW_UPSTREAM", running.fw_addr.unwrap().to_string())
        .env("DASHBOARD_UPSTREAM", running.http_addr.unwrap().to_string())
        .env("CERT_DIR", root.join("certs"))
        .env("DOCS_ROOT", root.join("docs"))
        .env("APEX_ROOT", root.join("apex"))
        .env("ACME_ROOT", root.join("acme"))
        .env("IPV6", "off")
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    // A main file as Debian's nginx.conf has it: stream at the top level,
    // the sites inside http; temporary files in the test's tree; one
    // process, so the guard's kill leaves no worker behind.
    let prefix = root.join("nginx");
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let main = format!(
        "{user}load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         master_process off;\n\
         pid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         include {out}/flownexus-stream.conf;\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
           fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
           include {out}/flownexus-http.conf;\n}}\n",
        user = if as_root { "user root;\n" } else { "" },
        p = prefix.display(),
        out = root.join("out").display(),
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let nginx = |args: &[&str]| {
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf).args(args);
        cmd
    };
    let test = nginx(&["-t"])
        .output()
        .unwrap_or_else(|e| panic!("nginx: {e} (Debian nginx and libnginx-mod-stream; `make test` installs them)"));
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let _nginx = super::Killed(nginx(&["-g", "daemon off;"]).spawn().unwrap());
    let front: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(Instant::now() < until, "nginx never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Firmware through the pass-through, in the nRF's 2 KB ranges, from
    // 127.0.0.2 (nginx itself connects from 127.0.0.1).
    let fw_ca = data.join("fw-tls/ca.pem");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut conn = HttpConn::connect_as(
            Some("127.0.0.2".parse().unwrap()),
            front,
            client_config(&fw_ca, version).unwrap(),
            "fw.example.test",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        while got.len() < image.len() {
            let end = (got.len() + 2048).min(image.len()) - 1;
            let req = format!(
                "GET /binaries/app.bin HTTP/1.1\r\nHost: fw.example.test\r\nRange: bytes={}-{end}\r\n\r\n",
                got.len()
            );
            let r = conn.request(&req).await.unwrap();
            assert_eq!(r.status, 206, "{}", r.head);
            got.extend_from_slice(&r.body);
        }
        assert!(got == image, "the image came through unchanged");
        let largest = conn.largest_record.load(Ordering::Relaxed);
        assert!(
            largest > 0 && largest <= 1370,
            "largest TLS record {largest} bytes ({version:?})"
        );
    }
    running.flush().await;
    let peers: Vec<String> = {
        let conn = rusqlite::Connection::open(data.join("flownexus.sqlite3")).unwrap();
        let mut stmt = conn.prepare("SELECT DISTINCT peer FROM downloads").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    };
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p.starts_with("127.0.0.2:")),
        "{peers:?}"
    );

    // The dashboard through nginx's own TLS, with HSTS.
    let ca = root.join("certs/ca.pem");
    let mut dash = HttpConn::connect_as(
        None,
        front,
        client_config(&ca, &rustls::version::TLS13).unwrap(),
        "dashboard.example.test",
    )
    .await
    .unwrap();
    let r = dash
        .request("GET /healthz HTTP/1.1\r\nHost: dashboard.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(String::from_utf8_lossy(&r.body).contains("\"status\":\"ok\""));
    assert!(r.header("strict-transport-security").is_some(), "{}", r.head);
    let r = dash
        .request("GET /login HTTP/1.1\r\nHost: dashboard.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(String::from_utf8_lossy(&r.body).contains("<form"));

    // The apex landing page, and plain HTTP redirected.
    let mut apex = HttpConn::connect_as(
        None,
        front,
        client_config(&ca, &rustls::version::TLS12).unwrap(),
        "example.test",
    )
    .await
    .unwrap();
    let r = apex
        .request("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).trim()),
        (200, "flownexus landing page")
    );
    let plain: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
    tcp.write_all(b"GET /devices HTTP/1.1\r\nHost: dashboard.example.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    assert!(
        answer
            .lines()
            .any(|l| l.eq_ignore_ascii_case("location: https://dashboard.example.test/devices")),
        "{answer}"
    );
    running.stop().await;
}
