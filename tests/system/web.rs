//! The dashboard and REST API over real sockets: every route against every
//! role, sign-in and its limits, CSRF and origin checks, tokens, bad input,
//! escaping of device-supplied strings, the event stream, and the OpenAPI
//! document against the route table.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flownexus::app::{self, Running};
use flownexus::store::Store;
use flownexus::store::tags::Tags;
use flownexus::users::{Role, hash_password};
use flownexus::web::auth::{Signer, digest};
use flownexus::web::route::{Access, BodyKind, ROUTES, Surface, Verb};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{config, device, fleet, store, wait_for};

/// A response as read off the socket.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    /// The value a `Set-Cookie` gives `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !k.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let v = v.trim();
            let (k, rest) = v.split_once('=')?;
            (k == name).then(|| rest.split(';').next().unwrap_or("").to_string())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection. Bodies over 1 KiB go after
/// `Expect: 100-continue` (RFC 9110 §10.1.1), as curl does, so a server
/// that refuses them early is heard instead of reset.
pub async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let expect = body.len() > 1024;
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {addr}\r\n");
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if expect {
        req += "Expect: 100-continue\r\n";
    }
    req += &format!("Content-Length: {}\r\n\r\n", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    if expect {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering");
            buf.extend_from_slice(&chunk[..n]);
        }
        if buf.starts_with(b"HTTP/1.1 100") {
            buf.clear();
            s.write_all(body).await.unwrap();
        }
    } else {
        s.write_all(body).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Resp { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

/// Credentials made straight in the store: a session cookie value and an
/// API token per user, so each check can start from a fresh one.
pub(crate) struct Keys {
    signer: Signer,
    db: std::path::PathBuf,
}

impl Keys {
    pub(crate) fn new(dir: &Path) -> Keys {
        let secret = flownexus::secret::load_or_create(&dir.join("http-secret.key"), "http.secret_file").unwrap();
        Keys {
            signer: Signer::new(&secret),
            db: dir.join("flownexus.sqlite3"),
        }
    }
    pub(crate) fn session(&self, user: &str) -> String {
        let s = format!("test-session-{}", fastrand::u64(..));
        Store::open(&self.db)
            .unwrap()
            .create_session(&digest(&s), user, "127.0.0.1")
            .unwrap();
        s
    }
    pub(crate) fn token(&self, user: &str, role: Role) -> String {
        let t = format!("fnx_test{}", fastrand::u64(..));
        Store::open(&self.db)
            .unwrap()
            .create_token(user, "test", role, &digest(&t))
            .unwrap();
        t
    }
}

pub(crate) async fn start(dir: &Path, tweak: impl FnOnce(&mut flownexus::config::Config)) -> (Running, SocketAddr) {
    let mut c = config(dir);
    tweak(&mut c);
    let running = app::start(c).await.unwrap();
    let addr = running.http_addr.unwrap();
    let s = store(dir);
    // argon2id at full cost is slow in a debug build: three users, made once.
    for (name, role) in [
        ("viewer", Role::Viewer),
        ("operator", Role::Operator),
        ("admin", Role::Admin),
    ] {
        s.add_user(name, &hash_password(&format!("{name} password 1")).unwrap(), role)
            .unwrap();
    }
    (running, addr)
}

/// Every route × {anonymous, viewer, operator, admin}: refused exactly
/// when the role is short, never because of anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let keys = Keys::new(dir.path());
    store(dir.path())
        .add_device("matrix-dev", None, &Tags::default())
        .unwrap();
    let mut checked = 0;
    for r in ROUTES {
        let path = r
            .path
            .replace("{endpoint}", "matrix-dev")
            .replace("{id}", "999999")
            .replace(
                "{name}",
                if r.path.starts_with("/assets") {
                    "style.css"
                } else {
                    "nobody"
                },
            );
        for who in [None, Some(Role::Viewer), Some(Role::Operator), Some(Role::Admin)] {
            let user = who.map(|r| r.as_str());
            let mut headers: Vec<(&str, String)> = Vec::new();
            let mut body: Vec<u8> = Vec::new();
            // Sessions for pages, bearer tokens for the API.
            let session = match (user, r.surface) {
                (Some(u), Surface::Page) => Some(keys.session(u)),
                (Some(u), Surface::Api) => {
                    headers.push(("Authorization", format!("Bearer {}", keys.token(u, who.unwrap()))));
                    None
                }
                (None, _) => None,
            };
            // A valid CSRF token, so only the role decides.
            let (purpose, bound) = match &session {
                Some(s) => ("session", s.clone()),
                None => ("login", "login-cookie".to_string()),
            };
            let csrf = keys.signer.csrf(purpose, &bound);
            let cookie = match &session {
                Some(s) => format!("flownexus={s}"),
                None => "flownexus-login=login-cookie".into(),
            };
            headers.push(("Cookie", cookie));
            match (r.body, r.surface) {
                (BodyKind::Json, _) => {
                    headers.push(("Content-Type", "application/json".into()));
                    body = b"{}".to_vec();
                }
                (BodyKind::Form, _) => {
                    headers.push(("Content-Type", "application/x-www-form-urlencoded".into()));
                    body = format!("csrf={csrf}").into_bytes();
                }
                (BodyKind::Upload, Surface::Api) => {
                    headers.push(("Content-Type", "application/octet-stream".into()));
                }
                (BodyKind::Upload, Surface::Page) => {
                    headers.push(("Content-Type", "multipart/form-data; boundary=XX".into()));
                    body = format!("--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--XX--\r\n")
                        .into_bytes();
                }
                (BodyKind::None, _) => {}
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            // A stream never ends: ask for its head only.
            let method = if r.path.ends_with("/stream") {
                "HEAD"
            } else {
                r.method.as_str()
            };
            let resp = tokio::time::timeout(Duration::from_secs(30), http(addr, method, &path, &h, &body))
                .await
                .unwrap_or_else(|_| panic!("{} {path} as {user:?} hung", r.method.as_str()));
            let what = format!(
                "{} {path} as {user:?}: {} {}",
                r.method.as_str(),
                resp.status,
                resp.text()
            );
            match r.access {
                Access::Public => assert!(
                    resp.status != 401 && resp.status != 403 || r.path == "/login" || r.path == "/setup",
                    "{what}"
                ),
                Access::Signed(required) => match who {
                    None if r.surface == Surface::Page => {
                        assert_eq!(resp.status, 303, "{what}");
                        assert_eq!(resp.header("location"), Some("/login"), "{what}");
                    }
                    None => assert_eq!(resp.status, 401, "{what}"),
                    Some(role) if !role.allows(required) => assert_eq!(resp.status, 403, "{what}"),
                    Some(_) => {
                        assert!(![401, 403].contains(&resp.status), "{what}");
                        if r.method == Verb::Get {
                            assert_ne!(resp.header("location"), Some("/login"), "{what}");
                        }
                    }
                },
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * 4);
    running.stop().await;
}

pub(crate) async fn form_page(addr: SocketAddr, path: &str, cookie: &str) -> (Resp, String) {
    let r = http(addr, "GET", path, &[("Cookie", cookie)], b"").await;
    let text = r.text();
    let csrf = text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
        .to_string();
    (r, csrf)
}

async fn post_form(addr: SocketAddr, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Resp {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", flownexus::web::form::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    http(
        addr,
        "POST",
        path,
        &[
            ("Cookie", cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
    .await
}

/// Sign in through the real form; returns the session cookie header.
pub(crate) async fn sign_in(addr: SocketAddr, name: &str, password: &str) -> Resp {
    let (page, csrf) = form_page(addr, "/login", "").await;
    // Over an https public URL the cookie takes the __Host- prefix.
    let cookie = ["flownexus-login", "__Host-flownexus-login"]
        .iter()
        .find_map(|n| page.cookie(n).map(|v| format!("{n}={v}")))
        .expect("a login cookie");
    post_form(
        addr,
        "/login",
        &cookie,
        &[("csrf", &csrf), ("name", name), ("password", password)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_csrf_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |c| c.http.login_failures_per_account = 3).await;

    // A wrong password, then the right one: a new session id, and the
    // login cookie cleared.
    assert_eq!(sign_in(addr, "operator", "wrong password 1").await.status, 401);
    let ok = sign_in(addr, "operator", "operator password 1").await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    let session = ok.cookie("flownexus").expect("a session cookie");
    assert!(ok.head.contains("HttpOnly") && ok.head.contains("SameSite=Lax"));
    assert_eq!(ok.cookie("flownexus-login").as_deref(), Some(""));
    let cookie = format!("flownexus={session}");
    let me = http(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], b"").await;
    assert_eq!(me.json()["name"], "operator");

    // Three failures lock the account, even against the right password.
    for _ in 0..3 {
        assert_eq!(sign_in(addr, "viewer", "guess guess guess").await.status, 401);
    }
    let locked = sign_in(addr, "viewer", "viewer password 1").await;
    assert_eq!(locked.status, 429, "{}", locked.text());
    assert!(locked.header("retry-after").is_some());
    let unknown = sign_in(addr, "nobody-at-all", "whatever password").await;
    assert_eq!(unknown.status, 401, "an unknown name fails like a wrong password");

    // CSRF: a form without the token, with another session's, or from
    // another origin is refused and changes nothing.
    let (_, csrf) = form_page(addr, "/tokens", &cookie).await;
    assert!(!csrf.is_empty());
    let r = post_form(addr, "/tokens", &cookie, &[("name", "t"), ("role", "viewer")]).await;
    assert_eq!(r.status, 403);
    let other = sign_in(addr, "admin", "admin password 1")
        .await
        .cookie("flownexus")
        .unwrap();
    let (_, other_csrf) = form_page(addr, "/tokens", &format!("flownexus={other}")).await;
    let r = post_form(
        addr,
        "/tokens",
        &cookie,
        &[("csrf", &other_csrf), ("name", "t"), ("role", "viewer")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(
        addr,
        "POST",
        "/tokens",
        &[
            ("Cookie", &cookie),
            ("Origin", "https://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={csrf}&name=t&role=viewer").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        store(dir.path()).tokens(None).unwrap().is_empty(),
        "nothing was created"
    );
    // The API with a session cookie needs the header form of the token.
    let body = br#"{"name":"cli"}"#;
    let json_headers = [("Cookie", cookie.as_str()), ("Content-Type", "application/json")];
    assert_eq!(
        http(addr, "POST", "/api/v1/tokens", &json_headers, body).await.status,
        403
    );
    let with_csrf = [json_headers[0], json_headers[1], ("X-CSRF-Token", csrf.as_str())];
    let created = http(addr, "POST", "/api/v1/tokens", &with_csrf, body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("fnx_"));
    assert_eq!(created["role"], "operator", "defaults to the user's role");
    let bearer = format!("Bearer {secret}");
    let list = http(addr, "GET", "/api/v1/tokens", &[("Authorization", &bearer)], b"").await;
    assert!(!list.text().contains(&secret), "listings never show the secret");
    // A token cannot exceed its user; a demoted user's token loses rights.
    let r = http(
        addr,
        "POST",
        "/api/v1/tokens",
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        br#"{"name":"x","role":"admin"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    store(dir.path()).add_device("dev-1", None, &Tags::default()).unwrap();
    let read = |b: String| async move {
        http(
            addr,
            "POST",
            "/api/v1/devices/dev-1/operations",
            &[("Authorization", &b), ("Content-Type", "application/json")],
            br#"{"op":"read","path":"/3/0/0"}"#,
        )
        .await
    };
    assert_eq!(read(bearer.clone()).await.status, 202);
    store(dir.path()).set_user_role("operator", Role::Viewer).unwrap();
    assert_eq!(read(bearer.clone()).await.status, 403);
    // Revoked: the token is dead.
    let id = created["id"].as_i64().unwrap();
    store(dir.path()).revoke_token(id, None).unwrap();
    assert_eq!(read(bearer.clone()).await.status, 401);

    // Log out everywhere ends every session of the user; disabling a user
    // ends theirs too.
    let second = sign_in(addr, "admin", "admin password 1")
        .await
        .cookie("flownexus")
        .unwrap();
    let admin_cookie = format!("flownexus={second}");
    let (_, admin_csrf) = form_page(addr, "/profile", &admin_cookie).await;
    let r = post_form(
        addr,
        "/profile/logout-everywhere",
        &admin_cookie,
        &[("csrf", &admin_csrf)],
    )
    .await;
    assert_eq!(r.status, 303);
    for c in [&admin_cookie, &format!("flownexus={other}")] {
        assert_eq!(http(addr, "GET", "/api/v1/me", &[("Cookie", c)], b"").await.status, 401);
    }
    store(dir.path()).set_user_disabled("operator", true).unwrap();
    assert_eq!(
        http(addr, "GET", "/api/v1/me", &[("Cookie", &cookie)], b"")
            .await
            .status,
        401
    );
    running.stop().await;
}

/// Issue 32 item 7: a password change revokes the user's API tokens
/// (unless they keep them), "revoke all my tokens" sits beside "log out
/// everywhere", and each token shows its last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_end_with_a_password_change_or_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let keys = Keys::new(dir.path());
    let cookie = format!("flownexus={}", keys.session("viewer"));
    let me = |token: String| async move {
        http(
            addr,
            "GET",
            "/api/v1/me",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .await
        .status
    };
    let (used, unused) = (keys.token("viewer", Role::Viewer), keys.token("viewer", Role::Viewer));
    let others = keys.token("operator", Role::Operator);
    assert_eq!(me(used.clone()).await, 200);
    let last_use: Vec<bool> = store(dir.path())
        .tokens(Some("viewer"))
        .unwrap()
        .iter()
        .map(|t| t.last_used_at.is_some())
        .collect();
    assert_eq!(
        last_use,
        [false, true],
        "newest first: the unused token, then the used one"
    );

    let (page, csrf) = form_page(addr, "/profile", &cookie).await;
    assert!(
        page.text().contains("Revoke all my API tokens"),
        "beside log out everywhere"
    );
    let change = |to: &'static str, from: &'static str, keep: bool| {
        let (cookie, csrf) = (cookie.clone(), csrf.clone());
        async move {
            let mut fields = vec![
                ("csrf", csrf.as_str()),
                ("current", from),
                ("password", to),
                ("password2", to),
            ];
            if keep {
                fields.push(("keep_tokens", "on"));
            }
            post_form(addr, "/profile/password", &cookie, &fields).await.status
        }
    };
    assert_eq!(change("viewer password 2", "viewer password 1", true).await, 303);
    assert_eq!(me(used.clone()).await, 200, "kept on request");
    assert_eq!(change("viewer password 3", "viewer password 2", false).await, 303);
    assert_eq!(
        (me(used).await, me(unused).await),
        (401, 401),
        "revoked with the old password"
    );

    let fresh = keys.token("viewer", Role::Viewer);
    assert_eq!(me(fresh.clone()).await, 200);
    let r = post_form(addr, "/tokens/revoke-all", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(me(fresh).await, 401);
    assert_eq!(me(others).await, 200, "only the user's own tokens");

    // Issue 31: the token form preselects the user's own role, and a 403
    // for a token names what the token grants, not what its user has.
    let admin = format!("flownexus={}", keys.session("admin"));
    let page = http(addr, "GET", "/tokens", &[("Cookie", &admin)], b"").await.text();
    assert!(page.contains(r#"<option value="admin" selected>"#), "{page}");
    let weak = keys.token("admin", Role::Viewer);
    let r = http(
        addr,
        "POST",
        "/api/v1/devices",
        &[
            ("Authorization", &format!("Bearer {weak}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"endpoint":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("this API token of admin grants viewer"),
        "{}",
        r.text()
    );
    running.stop().await;
}

/// Issue 32 item 5: an open event stream ends soon after its credential
/// stops granting it (a token revoked, a session's user disabled),
/// instead of running on with the rights it had at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_when_their_credential_does() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let keys = Keys::new(dir.path());
    let open = |credential: String| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\n{credential}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(": connected") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before connecting: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        c
    };
    // Read until the stream ends: its last chunk (RFC 9112 §7.1: the
    // connection itself may be kept alive) or the connection closed.
    let closes = |mut c: tokio::net::TcpStream| async move {
        let t0 = tokio::time::Instant::now();
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    // The last chunk, after an earlier chunk's CRLF or
                    // in a read of its own.
                    if got.ends_with(b"\n0\r\n\r\n") || got == b"0\r\n\r\n" {
                        return Some(t0.elapsed());
                    }
                }
                Err(_) => return None,
            }
        }
    };
    let token = keys.token("viewer", Role::Viewer);
    let by_token = open(format!("Authorization: Bearer {token}")).await;
    let by_session = open(format!("Cookie: flownexus={}", keys.session("operator"))).await;
    let by_admin = open(format!("Cookie: flownexus={}", keys.session("admin"))).await;

    let s = store(dir.path());
    let id = s.tokens(Some("viewer")).unwrap()[0].id;
    s.revoke_token(id, None).unwrap();
    s.set_user_disabled("operator", true).unwrap();
    let (a, b) = tokio::join!(closes(by_token), closes(by_session));
    assert!(a.is_some(), "the revoked token's stream is still open");
    assert!(b.is_some(), "the disabled user's stream is still open");
    // A stream whose credential stands stays open meanwhile.
    let mut admin = by_admin;
    let mut buf = [0u8; 64];
    let still = tokio::time::timeout(
        flownexus::web::sse::RECHECK + Duration::from_secs(2),
        admin.read(&mut buf),
    )
    .await;
    assert!(
        !matches!(still, Ok(Ok(n)) if n == 0 || buf[..n].ends_with(b"0\r\n\r\n")),
        "the admin's stream was closed"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |c| {
        c.fw.max_image_bytes = 4096;
        c.fw.cache_bytes = 4096;
    })
    .await;
    let keys = Keys::new(dir.path());
    let bearer = format!("Bearer {}", keys.token("admin", Role::Admin));
    let auth = [("Authorization", bearer.as_str())];
    let with = |ct: &'static str| [("Authorization", bearer.as_str()), ("Content-Type", ct)];

    let r = http(
        addr,
        "POST",
        "/api/v1/devices",
        &with("application/json"),
        b"{\"endpoint\":",
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let r = http(addr, "POST", "/api/v1/devices", &with("text/plain"), b"{}").await;
    assert_eq!(r.status, 415);
    let big = vec![b' '; 2 << 20];
    let r = http(addr, "POST", "/api/v1/devices", &with("application/json"), &big).await;
    assert_eq!(r.status, 413);
    for q in [
        "sort=name%3BDROP%20TABLE%20devices",
        "order=up",
        "cursor=bm90IGpzb24",
        "limit=0",
        "status=asleep",
    ] {
        let r = http(addr, "GET", &format!("/api/v1/devices?{q}"), &auth, b"").await;
        assert_eq!(r.status, 400, "{q}: {} {}", r.head, r.text());
        assert!(r.json()["error"]["message"].is_string(), "{q}");
    }
    let r = http(addr, "GET", "/api/v1/devices/nope", &auth, b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    let r = http(addr, "PUT", "/api/v1/devices", &auth, b"").await;
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("GET"));

    // A Write goes out as its path allows: a Partial Update exists only for
    // an Object Instance (a POST on a resource is an Execute on the device),
    // so asking for one on a resource is refused (422 `invalid`, as every
    // well-formed request the API cannot carry out) with the reason, and
    // nothing is queued.
    store(dir.path()).add_device("dev-w", None, &Tags::default()).unwrap();
    let json = with("application/json");
    let write = |body: &'static str| http(addr, "POST", "/api/v1/devices/dev-w/operations", &json, body.as_bytes());
    let r = write(r#"{"op":"write","path":"/1/0/1","values":[{"path":"/1/0/1","value":"60"}],"replace":false}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (422, Some("invalid")),
        "{}",
        r.text()
    );
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("Partial Update") && message.contains("Execute"),
        "{message}"
    );
    let r = write(r#"{"op":"write","path":"/1","values":[{"path":"/1/0/1","value":"60"}]}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(store(dir.path()).operations_of("dev-w", 10).unwrap().is_empty());
    // Without `replace` it is a Write-Replace for a resource, a Partial
    // Update for an instance; Write-Composite takes values of several objects.
    for body in [
        r#"{"op":"write","path":"/1/0/1","values":[{"path":"/1/0/1","value":"60"}]}"#,
        r#"{"op":"write","path":"/1/0","values":[{"path":"/1/0/1","value":"60"}]}"#,
        r#"{"op":"write-composite","values":[{"path":"/1/0/1","value":"60"},{"path":"/3303/0/5750","value":"x"}]}"#,
        r#"{"op":"cancel-observe-composite","paths":["/3/0/9"]}"#,
    ] {
        assert_eq!(write(body).await.status, 202, "{body}");
    }
    let r = write(r#"{"op":"write-composite","values":[{"path":"/1/0","value":"60"}]}"#).await;
    assert_eq!(r.status, 422, "a composite value names a resource: {}", r.text());

    // A firmware upload over the limit leaves no record and no file.
    let r = http(
        addr,
        "POST",
        "/api/v1/firmware?name=app.bin&version=1.0",
        &with("application/octet-stream"),
        &[7u8; 5000],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = http(
        addr,
        "POST",
        "/api/v1/firmware?name=app.bin&version=%3Cb%3E1%3C%2Fb%3E",
        &with("application/octet-stream"),
        &[7u8; 4000],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let row = r.json();
    assert_eq!(row["size"], 4000);
    assert_eq!(row["sha256"].as_str().unwrap().len(), 64);
    let files = |sub: &str| std::fs::read_dir(dir.path().join("firmware").join(sub)).map_or(0, |d| d.count());
    assert_eq!((files("images"), files("tmp")), (1, 0));
    assert_eq!(store(dir.path()).firmware_list(true).unwrap().len(), 1);
    // Pages escape it.
    let page = http(
        addr,
        "GET",
        "/firmware",
        &[("Cookie", &format!("flownexus={}", keys.session("admin")))],
        b"",
    )
    .await;
    assert!(page.text().contains("&#60;b&#62;1&#60;/b&#62;") && !page.text().contains("<b>1</b>"));
    running.stop().await;
}

/// Tags file devices into groups: set at creation or later (API, page,
/// CLI), stored trimmed and sorted, filtered on exactly, shown as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_group_devices_and_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let keys = Keys::new(dir.path());
    let admin = format!("Bearer {}", keys.token("admin", Role::Admin));
    let operator = format!("Bearer {}", keys.token("operator", Role::Operator));
    let json = |b: &str| {
        [
            ("Authorization", b.to_string()),
            ("Content-Type", "application/json".into()),
        ]
    };
    let call = |method: &'static str, path: String, bearer: &str, body: &'static str| {
        let h = json(bearer);
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(addr, method, &path, &h, body.as_bytes()).await
        }
    };
    let r = call(
        "POST",
        "/api/v1/devices".into(),
        &admin,
        r#"{"endpoint":"t-1","tags":" pilot, north ,pilot,"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["device"]["tags"], "north,pilot");
    call(
        "POST",
        "/api/v1/devices".into(),
        &admin,
        r#"{"endpoint":"t-2","tags":"south"}"#,
    )
    .await;
    let listed = |tag: &'static str| {
        let b = admin.clone();
        async move {
            let r = http(
                addr,
                "GET",
                &format!("/api/v1/devices?tag={tag}"),
                &[("Authorization", &b)],
                b"",
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["endpoint"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("pilot").await, ["t-1"]);
    assert_eq!(
        listed("%20north%20").await,
        ["t-1"],
        "the filter is trimmed like the tags"
    );
    assert_eq!(listed("nort").await, Vec::<String>::new(), "a tag matches whole");
    assert_eq!(listed("south").await, ["t-2"]);

    // An operator moves t-1 to another group.
    let r = call(
        "PATCH",
        "/api/v1/devices/t-1".into(),
        &operator,
        r#"{"tags":"south, <b>x</b>"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tags"], "<b>x</b>,south");
    assert_eq!(listed("pilot").await, Vec::<String>::new());
    assert_eq!(listed("south").await, ["t-1", "t-2"]);
    // Bad lists and unknown devices change nothing.
    let long = r#"{"tags":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    // A list with a bad tag is refused as invalid (422), a body of the
    // wrong shape as malformed (400).
    for (body, status) in [
        (long, 422),
        ("{\"tags\":\"a\\u0007b\"}", 422),
        (r#"{"tags":7}"#, 400),
        (r#"{"tag":"a"}"#, 400),
    ] {
        let r = call("PATCH", "/api/v1/devices/t-1".into(), &operator, body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string(), "{body}");
    }
    let r = call("PATCH", "/api/v1/devices/nope".into(), &operator, r#"{"tags":"a"}"#).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(store(dir.path()).device("t-1").unwrap().tags, "<b>x</b>,south");
    let viewer = format!("Bearer {}", keys.token("viewer", Role::Viewer));
    let r = call("PATCH", "/api/v1/devices/t-1".into(), &viewer, r#"{"tags":""}"#).await;
    assert_eq!(r.status, 403);

    // The page shows each tag as a filter link, escaped, and its form
    // saves a new list.
    let cookie = format!("flownexus={}", keys.session("operator"));
    let (page, csrf) = form_page(addr, "/devices/t-1", &cookie).await;
    let t = page.text();
    assert!(t.contains(r#"href="/devices?tag=%3Cb%3Ex%3C%2Fb%3E""#), "{t}");
    assert!(!t.contains("<b>x</b>"), "{t}");
    let r = post_form(
        addr,
        "/devices/t-1/tags",
        &cookie,
        &[("csrf", &csrf), ("tags", "east , west")],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/devices/t-1?done=tagged"));
    assert_eq!(store(dir.path()).device("t-1").unwrap().tags, "east,west");
    let r = post_form(addr, "/devices/t-1/tags", &cookie, &[("csrf", "forged"), ("tags", "")]).await;
    assert_eq!(r.status, 403, "a forged form changes nothing");
    assert_eq!(store(dir.path()).device("t-1").unwrap().tags, "east,west");
    running.stop().await;
}

/// Devices whose endpoint and firmware version are script: every page and
/// chart shows them as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_strings_are_escaped_and_events_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let keys = Keys::new(dir.path());
    let bearer = format!("Bearer {}", keys.token("operator", Role::Operator));

    // Listen to the event stream before the device comes.
    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    sse.write_all(
        format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();

    // The stream subscribes before it sends its first comment: only once
    // that is read may the device come, or its registration can be
    // broadcast before anyone listens (seen on a loaded CI machine).
    let mut got = Vec::new();
    let mut read_until = async |what: &str| {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&got).contains(what) && tokio::time::Instant::now() < until {
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), sse.read(&mut buf)).await {
                got.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let head = read_until(": connected").await;
    assert!(head.contains(": connected"), "{head}");
    let evil = "<script>alert(1)</script>";
    let mut d = device(evil);
    d.firmware_version = "<img src=x onerror=alert(2)>".into();
    let _fleet = fleet(&running, vec![d]).await;
    let text = read_until("event: registered").await;
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains(r#""endpoint":"<script>alert(1)</script>""#), "{text}");

    // Read the device object so its firmware version is stored.
    let target = format!("/api/v1/devices/{}/operations", flownexus::web::form::encode(evil));
    let op = http(
        addr,
        "POST",
        &target,
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        br#"{"op":"read","path":"/3/0"}"#,
    )
    .await;
    assert_eq!(op.status, 202, "{}", op.text());
    let id = op.json()["id"].as_i64().unwrap();
    let s = store(dir.path());
    wait_for("the read", Duration::from_secs(10), || {
        s.operation(id).unwrap().state == flownexus::lwm2m::operation::OperationState::Succeeded
    })
    .await;
    running.flush().await;

    let cookie = format!("flownexus={}", keys.session("viewer"));
    for page in [
        "/",
        "/devices",
        &format!("/devices/{}", flownexus::web::form::encode(evil)),
        "/events",
    ] {
        let r = http(addr, "GET", page, &[("Cookie", &cookie)], b"").await;
        assert_eq!(r.status, 200, "{page}");
        let t = r.text();
        assert!(
            !t.contains("<script>alert") && !t.contains("<img src=x"),
            "{page} has raw script: {t}"
        );
        assert!(
            t.contains("&#60;script&#62;alert(1)") || t.contains("&lt;script&gt;alert(1)"),
            "{page}: {t}"
        );
    }
    running.stop().await;
}

/// The OpenAPI document is generated from the route table: it names every
/// API route and method and nothing else, and every `$ref` resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let r = http(addr, "GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut routes: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.surface == Surface::Api)
        .map(|r| format!("{} {}", r.method.as_str(), r.path))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 10);
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").expect("local ref");
        assert!(doc["components"]["schemas"][name].is_object(), "{r} unresolved");
    }
    // Every GET without parameters answers JSON for an admin.
    let keys = Keys::new(dir.path());
    let bearer = format!("Bearer {}", keys.token("admin", Role::Admin));
    for r in ROUTES
        .iter()
        .filter(|r| r.surface == Surface::Api && r.method == Verb::Get)
    {
        if r.path.contains('{') || r.path.ends_with("/stream") {
            continue;
        }
        let resp = http(addr, "GET", r.path, &[("Authorization", &bearer)], b"").await;
        assert_eq!(resp.status, 200, "{}: {}", r.path, resp.text());
        let _ = resp.json();
    }
    running.stop().await;
}

/// schemathesis (PyPI, installed into `.venv` by `make deps`) generates
/// requests from `/api/v1/openapi.json` against a server with a device, as
/// an admin: no request may end in a server error, and responses must
/// match the document's status codes, content types and schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_fuzzing_finds_no_server_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemathesis = root.join(".venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "schemathesis is not installed: run `make deps` (pip install into .venv)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let _fleet = fleet(&running, vec![device("sensor-1")]).await;
    let keys = Keys::new(dir.path());
    let token = format!("Bearer {}", keys.token("admin", Role::Admin));
    let bearer = format!("Authorization: {token}");

    let work = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis)
            // Its failure cache stays out of the checkout: each run starts clean.
            .current_dir(work)
            .args(["run", &format!("http://{addr}/api/v1/openapi.json")])
            .args(["--url", &format!("http://{addr}")])
            // Every check but positive_data_acceptance: some rules span
            // fields (psk_key_hex or generate_psk, the path depth each
            // operation needs) and the document states them in prose only.
            .args([
                "-H",
                &bearer,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", "25", "--seed", "20261123", "--workers", "1"])
            .args(["--request-timeout", "10", "--no-color", "--generation-database", "none"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It reached every documented operation and made real requests (a
    // wrong base URL once made every one a 404, which passes the checks).
    let doc = flownexus::web::route::openapi();
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    // (All but the document's own URL, which schemathesis leaves out.)
    assert!(
        text.contains(&format!("Tested: {}", documented - 1)),
        "{documented} documented:\n{text}"
    );
    let generated: usize = text
        .split_once(" generated,")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(generated > 500, "only {generated} requests:\n{text}");
    // And as the admin throughout: the token still works at the end.
    let me = http(addr, "GET", "/api/v1/me", &[("Authorization", &token)], b"").await;
    assert_eq!(me.status, 200, "the fuzzing token stopped working: {}", me.text());
    running.stop().await;
}

/// The API gives each value as the device sent it and as an operator
/// reads it (`display`: enumerations in words, times as dates, units as
/// symbols), in natural path order (`/3/0/9` before `/3/0/13`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_with_their_readable_form_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let _fleet = fleet(&running, vec![device("readable-1")]).await;
    reads(dir.path(), "readable-1", &["/3/0", "/5/0"]).await;
    running.flush().await;
    let bearer = format!("Bearer {}", Keys::new(dir.path()).token("viewer", Role::Viewer));
    let r = http(
        addr,
        "GET",
        "/api/v1/devices/readable-1/values",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let values: Vec<serde_json::Value> = serde_json::from_str(&r.text()).unwrap();
    let shown = |path: &str| -> (String, String) {
        let v = values
            .iter()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {values:?}"));
        (v["value"].to_string(), v["display"].as_str().unwrap().to_string())
    };
    assert_eq!(shown("/3/0/9").1, "87%", "Battery Level with its unit");
    assert_eq!(shown("/3/0/11/0").1, "no error (0)", "Error Code in words");
    assert_eq!(shown("/3/0/13").1, "2023-11-14 22:13:20 UTC", "Current Time as a date");
    assert_eq!(shown("/5/0/3").1, "idle (0)", "Firmware State in words");
    assert_eq!(shown("/5/0/5").1, "initial value (0)", "Update Result in words");
    assert_eq!(shown("/5/0/8/3").1, "HTTPS 1.1 (3)");
    let paths: Vec<&str> = values.iter().map(|v| v["path"].as_str().unwrap()).collect();
    let at = |p: &str| paths.iter().position(|x| *x == p).unwrap();
    assert!(
        at("/3/0/9") < at("/3/0/13") && at("/3/0/13") < at("/5/0/3"),
        "{paths:?}"
    );
    running.stop().await;
}

/// Last seen counts every uplink: a device that only notifies after its
/// Register is seen at its notifications, in the device list and on its
/// registration, to within the store's 5 s step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_follows_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(dir.path(), |_| {}).await;
    let _fleet = fleet(&running, vec![device("seen-1")]).await;
    let s = store(dir.path());
    let registered = s.device("seen-1").unwrap().last_seen.unwrap();
    let observe = super::run_op(
        dir.path(),
        "seen-1",
        flownexus::lwm2m::operation::OperationKind::Observe {
            path: "/3303/0/5700".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(observe.state, flownexus::lwm2m::operation::OperationState::Succeeded);
    // Notifications every 300 ms for 6 s: past the 5 s step at least once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    running.flush().await;
    let seen = s.device("seen-1").unwrap().last_seen.unwrap();
    assert!(
        seen >= registered + 5_000,
        "last seen {seen} stayed near the Register at {registered}"
    );
    let reg = s
        .registrations()
        .unwrap()
        .into_iter()
        .find(|r| r.endpoint == "seen-1")
        .unwrap();
    assert!(
        reg.last_seen >= registered + 5_000,
        "the registration's last seen moves too"
    );
    running.stop().await;
}

/// The device list pages forward and back: the page size is the
/// operator's, "Previous" leads back through the pages seen (the links
/// carry the trail of cursors; keyset pages have no offsets), and the
/// fleet's total is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_pages_forward_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let s = store(dir.path());
    for i in 0..5 {
        s.add_device(&format!("page-{i}"), None, &Tags::default()).unwrap();
    }
    let signed = sign_in(addr, "viewer", "viewer password 1").await;
    let cookie = format!("flownexus={}", signed.cookie("flownexus").expect("a session"));
    let get = |path: String| {
        let c = cookie.clone();
        async move {
            let r = http(addr, "GET", &path, &[("Cookie", &c)], b"").await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            r.text()
        }
    };
    let listed = |html: &str| -> Vec<String> {
        html.split("<a href=\"/devices/")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect()
    };
    let link = |html: &str, id: &str| -> Option<String> {
        let at = html.find(&format!("id=\"{id}\""))?;
        let before = &html[..at];
        let href = before.rsplit("href=\"").next()?;
        Some(href.split('"').next()?.replace("&#38;", "&").replace("&amp;", "&"))
    };
    let first = get("/devices?limit=2".into()).await;
    assert_eq!(listed(&first), ["page-0", "page-1"]);
    // The fleet total is the overview's count (at most 10 s old).
    assert!(
        first.contains("page 1 · 2 shown ·") && first.contains("devices in the fleet"),
        "{first}"
    );
    assert!(link(&first, "prev-page").is_none());
    let second = get(link(&first, "next-page").unwrap()).await;
    assert_eq!(listed(&second), ["page-2", "page-3"]);
    let third = get(link(&second, "next-page").unwrap()).await;
    assert_eq!(listed(&third), ["page-4"]);
    assert!(link(&third, "next-page").is_none());
    assert!(third.contains("page 3 ·"), "{third}");
    let back = get(link(&third, "prev-page").unwrap()).await;
    assert_eq!(listed(&back), ["page-2", "page-3"]);
    let back = get(link(&back, "prev-page").unwrap()).await;
    assert_eq!(listed(&back), ["page-0", "page-1"]);
    assert!(
        back.contains("<option value=\"2\"") || back.contains("limit=2"),
        "the page size is kept"
    );
    running.stop().await;
}

/// Bulk actions act only on the count the operator confirmed, need the
/// admin role to remove devices, and update firmware through a campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_confirm_the_count_and_respect_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let s = store(dir.path());
    let tags = Tags::parse("b").unwrap();
    for i in 0..12 {
        s.add_device(&format!("b-{i:02}"), None, &tags).unwrap();
    }
    let session = |name: &'static str| async move {
        let r = sign_in(addr, name, &format!("{name} password 1")).await;
        format!("flownexus={}", r.cookie("flownexus").unwrap())
    };
    let (operator, admin) = (session("operator").await, session("admin").await);
    let (_, csrf) = form_page(addr, "/devices?tag=b", &operator).await;
    let post = |cookie: &str, csrf: &str, fields: &[(&str, &str)]| {
        let mut f: Vec<(&str, &str)> = vec![("csrf", csrf)];
        f.extend_from_slice(fields);
        let (cookie, f): (String, Vec<(String, String)>) = (
            cookie.to_string(),
            f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        );
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            post_form(addr, "/devices/bulk?tag=b", &cookie, &f).await
        }
    };
    let filtered_write = [
        ("scope", "filter"),
        ("action", "write"),
        ("path", "/1/0/1"),
        ("value", "300"),
    ];
    // First post: a confirmation with the count, nothing queued.
    let r = post(&operator, &csrf, &filtered_write).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains(r#"<strong id="bulk-count">12</strong>"#),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("Write &quot;300&quot; to /1/0/1") || r.text().contains("Write &#34;300&#34; to /1/0/1"),
        "{}",
        r.text()
    );
    assert!(s.operations_of("b-00", 5).unwrap().is_empty());
    // A device joins the filter between review and confirmation: the count
    // no longer matches, so the page asks again and nothing happens.
    s.add_device("b-12", None, &tags).unwrap();
    let mut confirm = filtered_write.to_vec();
    confirm.push(("confirm", "12"));
    let r = post(&operator, &csrf, &confirm).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("The selection changed") && r.text().contains(r#"id="bulk-count">13<"#),
        "{}",
        r.text()
    );
    assert!(s.operations_of("b-00", 5).unwrap().is_empty());
    confirm.pop();
    confirm.push(("confirm", "13"));
    let r = post(&operator, &csrf, &confirm).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r.header("location").unwrap().contains("done=bulk-queued"));
    for i in 0..13 {
        let ops = s.operations_of(&format!("b-{i:02}"), 5).unwrap();
        assert!(
            matches!(&ops[..], [o] if matches!(&o.kind, flownexus::lwm2m::operation::OperationKind::Write { values, replace: None, .. } if values[0].value == "300")),
            "{ops:?}"
        );
    }
    // Ticked devices only; a bad path is refused before anything.
    let r = post(
        &operator,
        &csrf,
        &[("ep", "b-00"), ("ep", "b-01"), ("action", "read"), ("path", "/x")],
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    // Removing is for admins.
    let remove = [("ep", "b-00"), ("ep", "b-01"), ("action", "remove"), ("confirm", "2")];
    let r = post(&operator, &csrf, &remove).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(s.device("b-00").is_ok());
    let (_, admin_csrf) = form_page(addr, "/devices", &admin).await;
    let r = post(&admin, &admin_csrf, &remove).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(s.device("b-00").is_err() && s.device("b-01").is_err() && s.device("b-02").is_ok());
    // A ticked device removed before the confirmation: nothing is queued
    // on any of them.
    let gone = [
        ("ep", "b-02"),
        ("ep", "b-00"),
        ("action", "read"),
        ("path", "/3/0"),
        ("confirm", "2"),
    ];
    let r = post(&operator, &csrf, &gone).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(s.operations_of("b-02", 5).unwrap().len(), 1, "only the earlier Write");
    // Nothing selected is an error, not a no-op success.
    let r = post(&operator, &csrf, &[("action", "read"), ("path", "/3/0")]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("no devices selected"), "{}", r.text());
    running.stop().await;
}

/// CSV exports of the device list, the events and one resource's history:
/// every matching row, device-chosen text neutralised for spreadsheets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_exports_hold_every_matching_row() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let mut d = device("csv-1");
    // Formulas behind a `;`, which Excel in many locales splits cells at
    // (found by the security review, issue 32).
    let version = "1.0;=1+1;=HYPERLINK(\"http://x\")";
    d.resources = vec![
        (
            "/3/0/1".parse().unwrap(),
            flownexus::lwm2m::path::Value::String("=HYPERLINK(\"http://x\",\"y\")".into()),
        ),
        (
            "/3/0/3".parse().unwrap(),
            flownexus::lwm2m::path::Value::String(version.into()),
        ),
    ];
    let hostile = "x;=cmd|' /C calc'!A0";
    let _fleet = fleet(&running, vec![d, device(hostile)]).await;
    let s = store(dir.path());
    for i in 0..30 {
        s.add_device(&format!("csv-x{i:02}"), None, &Tags::parse("x").unwrap())
            .unwrap();
    }
    reads(dir.path(), "csv-1", &["/3/0", "/3303/0/5700", "/3303/0/5700"]).await;
    running.flush().await;
    let r = sign_in(addr, "viewer", "viewer password 1").await;
    let cookie = format!("flownexus={}", r.cookie("flownexus").unwrap());
    let get = |path: &'static str| {
        let cookie = cookie.clone();
        async move { http(addr, "GET", path, &[("Cookie", &cookie)], b"").await }
    };
    // Devices: the filter's 30 rows (more than a page), in order.
    let r = get("/devices.csv?tag=x&limit=10").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        r.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"devices-")
    );
    let text = r.text();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "endpoint,status,firmware,last_seen_utc,lifetime_s,tags,psk_identity,added_utc"
    );
    assert_eq!(lines.len(), 31, "{text}");
    assert!(lines[1].starts_with("csv-x00,offline,,,,x,,") && lines[30].starts_with("csv-x29,"));
    // The registered device: online, with its firmware version.
    let r = get("/devices.csv?q=csv-1").await;
    assert!(r.text().contains("\r\ncsv-1,online,"), "{}", r.text());
    // Events: its registration and reads, in words.
    let r = get("/events.csv?endpoint=csv-1&kind=operation").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.starts_with("time_utc,endpoint,kind,summary,detail\r\n"), "{text}");
    assert_eq!(
        text.matches(",csv-1,operation,read /3303/0/5700 #").count(),
        2,
        "{text}"
    );
    // History: both reads of the temperature, raw and with its unit.
    let r = get("/devices/csv-1/history.csv?path=/3303/0/5700&range=1h").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).skip(1).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter().all(|r| r.contains(",/3303/0/5700,") && r.ends_with(" °C")),
        "{text}"
    );
    // A device's formula is text in the export, not a formula.
    let r = get("/devices/csv-1/history.csv?path=/3/0/1&range=1h").await;
    assert!(
        r.text().contains(",\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\","),
        "{}",
        r.text()
    );
    // The `;` payloads, in each export: quoted whole, every formula start
    // after a separator marked.
    let neutral_version = "\"1.0;'=1+1;'=HYPERLINK(\"\"http://x\"\")\"";
    let neutral_endpoint = "\"x;'=cmd|' /C calc'!A0\"";
    let r = get("/devices.csv?q=csv-1").await;
    assert!(r.text().contains(&format!(",{neutral_version},")), "{}", r.text());
    let r = get("/devices.csv?q=x%3B%3Dcmd").await;
    assert!(
        r.text().contains(&format!("\r\n{neutral_endpoint},online,")),
        "{}",
        r.text()
    );
    let r = get("/events.csv?endpoint=x%3B%3Dcmd").await;
    assert!(
        r.text().contains(&format!(",{neutral_endpoint},registered,")),
        "{}",
        r.text()
    );
    let r = get("/devices/csv-1/history.csv?path=/3/0/3&range=1h").await;
    assert!(r.text().contains(&format!(",{neutral_version},")), "{}", r.text());
    for r in [get("/devices.csv").await, get("/events.csv").await] {
        assert!(!r.text().contains(";=") && !r.text().contains("|="), "{}", r.text());
    }
    // Signed out, nothing.
    let r = http(addr, "GET", "/devices.csv", &[], b"").await;
    assert!(r.status == 303 || r.status == 401, "{}", r.status);
    running.stop().await;
}

/// Each user's time zone, device list columns and saved filters: kept per
/// user, applied to their pages only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_zone_columns_and_saved_filters_are_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    let _fleet = fleet(&running, vec![device("pref-1")]).await;
    reads(dir.path(), "pref-1", &["/3/0"]).await;
    running.flush().await;
    let session = |name: &'static str| async move {
        let r = sign_in(addr, name, &format!("{name} password 1")).await;
        format!("flownexus={}", r.cookie("flownexus").unwrap())
    };
    let (viewer, operator) = (session("viewer").await, session("operator").await);
    let (page, csrf) = form_page(addr, "/devices", &viewer).await;
    assert!(page.text().contains("Last seen (UTC)"));
    // Berlin, by name; a made-up zone and an off-site return are refused.
    let r = post_form(
        addr,
        "/profile/time-zone",
        &viewer,
        &[("csrf", &csrf), ("zone", "Mars/Olympus"), ("back", "/devices")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_form(
        addr,
        "/profile/time-zone",
        &viewer,
        &[("csrf", &csrf), ("zone", "Asia/Kolkata"), ("back", "//evil.example/")],
    )
    .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let (page, _) = form_page(addr, "/devices", &viewer).await;
    let text = page.text();
    assert!(text.contains("Last seen (Asia/Kolkata)"), "{text}");
    // The registration time, shown 5:30 ahead of UTC.
    let seen = flownexus::store::Store::open(&dir.path().join("flownexus.sqlite3"))
        .unwrap()
        .device("pref-1")
        .unwrap()
        .last_seen
        .unwrap();
    let kolkata = jiff::Timestamp::from_millisecond(seen)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert!(text.contains(&kolkata), "{kolkata} not in the list");
    // Another user still sees UTC; the API keeps milliseconds.
    let (page, op_csrf) = form_page(addr, "/devices", &operator).await;
    assert!(page.text().contains("Last seen (UTC)"));
    // Columns: model, signal and battery instead of the defaults.
    let r = post_form(
        addr,
        "/profile/columns",
        &viewer,
        &[
            ("csrf", &csrf),
            ("column", "model"),
            ("column", "battery"),
            ("back", "/devices"),
        ],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let text = form_page(addr, "/devices", &viewer).await.0.text();
    assert!(
        text.contains("<th>Model</th>") && text.contains("<th>Battery</th>"),
        "{text}"
    );
    assert!(!text.contains("<th>Status</th>") && !text.contains("<th>Tags</th>"));
    assert!(text.contains(">nRF9160-SIM<"), "the model column shows /3/0/1: {text}");
    assert!(text.contains("87%"), "the battery column shows /3/0/9 with its unit");
    let r = post_form(addr, "/profile/columns", &viewer, &[("csrf", &csrf), ("column", "cpu")]).await;
    assert_eq!(r.status, 400);
    assert!(
        form_page(addr, "/devices", &operator)
            .await
            .0
            .text()
            .contains("<th>Status</th>")
    );
    // Saved filters: only the list's parameters, per user.
    let r = post_form(
        addr,
        "/devices/filters",
        &viewer,
        &[
            ("csrf", &csrf),
            ("name", "offline pilots"),
            ("query", "?tag=pilot&status=offline&evil=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let text = form_page(addr, "/devices", &viewer).await.0.text();
    assert!(
        text.contains(r#"href="/devices?tag=pilot&#38;status=offline" data-saved="offline pilots""#),
        "{text}"
    );
    assert!(
        !form_page(addr, "/devices", &operator)
            .await
            .0
            .text()
            .contains("offline pilots")
    );
    let id = text
        .split("/devices/filters/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let r = post_form(
        addr,
        &format!("/devices/filters/{id}/delete"),
        &operator,
        &[("csrf", &op_csrf)],
    )
    .await;
    assert_eq!(r.status, 404, "another user's filter is not theirs to remove");
    let r = post_form(
        addr,
        &format!("/devices/filters/{id}/delete"),
        &viewer,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(
        !form_page(addr, "/devices", &viewer)
            .await
            .0
            .text()
            .contains("offline pilots")
    );
    running.stop().await;
}

/// Read each of `paths` from `endpoint` through the server; each succeeds.
async fn reads(dir: &Path, endpoint: &str, paths: &[&str]) {
    for path in paths {
        let read = super::run_op(
            dir,
            endpoint,
            flownexus::lwm2m::operation::OperationKind::Read {
                path: path.parse().unwrap(),
            },
        )
        .await;
        assert_eq!(
            read.state,
            flownexus::lwm2m::operation::OperationState::Succeeded,
            "{path}"
        );
    }
}

/// The curl examples of the API reference (docs/api.md), run as written
/// with bash, curl and jq against a server with a simulated device: each
/// exits 0 and does what it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reference_examples_run_as_written() {
    use flownexus::web::api_reference::{EXAMPLE_SETUP, EXAMPLES};
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = start(dir.path(), |_| {}).await;
    super::without_onboarding(dir.path());
    let endpoint = EXAMPLE_SETUP
        .lines()
        .find_map(|l| l.strip_prefix("EP="))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_string();
    let _fleet = fleet(&running, vec![device(&endpoint)]).await;
    let s = store(dir.path());
    for i in 0..2 {
        s.add_device(&format!("plant-a-{i}"), None, &Tags::parse("plant-a").unwrap())
            .unwrap();
    }
    super::wait_for("the device's registration", Duration::from_secs(20), || {
        s.registrations().unwrap().iter().any(|r| r.endpoint == endpoint)
    })
    .await;
    // An MCUboot image of version 1.2.0 (ih_ver at byte 20).
    let mut image = 0x96f3_b83du32.to_le_bytes().to_vec();
    image.extend((0..4096u32).map(|i| (i % 251) as u8));
    image[20..28].copy_from_slice(&[1, 2, 0, 0, 0, 0, 0, 0]);
    std::fs::write(dir.path().join("app-1.2.0.bin"), &image).unwrap();
    let token = Keys::new(dir.path()).token("operator", Role::Operator);

    let mut outputs = Vec::new();
    for e in EXAMPLES {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!("set -euo pipefail\n{}", e.script))
            .current_dir(dir.path())
            .env("FNX", format!("http://{addr}"))
            .env("TOKEN", &token)
            .env("EP", &endpoint);
        // Off the runtime's threads: the server answers on them.
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let (ok, text) = super::outcome(&out);
        assert!(ok, "example {:?} failed:\n{text}", e.title);
        outputs.push(text);
    }
    let said = outputs.join("\n");
    for shown in ["\"version\": \"1.2.0+0\"", "\"phase\": \"", "\"paused\"", "\"running\""] {
        assert!(said.contains(shown), "{shown} in:\n{said}");
    }
    // What they did, seen from the store.
    for (kind, path) in [("read", "/3/0/0"), ("write", "/3/0/15"), ("execute", "/3303/0/5605")] {
        wait_for(&format!("{kind} {path} to succeed"), Duration::from_secs(20), || {
            s.operations_of(&endpoint, 20).unwrap().iter().any(|o| {
                let k = serde_json::to_value(&o.kind).unwrap();
                k["op"] == kind
                    && k["path"] == path
                    && o.state == flownexus::lwm2m::operation::OperationState::Succeeded
            })
        })
        .await;
    }
    assert_eq!(s.firmware("app-1.2.0.bin").unwrap().version, "1.2.0+0");
    assert_eq!(s.updates_of(&endpoint, 5).unwrap().len(), 1);
    let campaigns = s.campaigns(5).unwrap();
    assert_eq!(campaigns.len(), 1);
    assert_eq!(campaigns[0].name, "plant-a to 1.2.0");
    running.stop().await;
}
