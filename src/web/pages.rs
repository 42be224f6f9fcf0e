//! The dashboard's pages: askama templates (HTML-escaped by default) fed
//! with display rows computed here. Forms post back, the handler acts and
//! redirects (post/redirect/get), so every page works without script.

use askama::Template;
use hyper::StatusCode;

use super::api::{self, NewDevice, UserChange};
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, assets, chart, form};
use crate::lwm2m::display::explain_code;
use crate::store::{EventRow, FirmwareRow, now_ms};
use crate::users::{Role, verify_password};

/// What every signed-in page shows around its content.
pub struct Chrome {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub active: &'static str,
    pub nav: Vec<(&'static str, &'static str)>,
    pub version: &'static str,
    pub notice: Option<&'static str>,
    /// The zone the page's times are in (`UTC` or the user's choice).
    pub zone: String,
    /// The page's path and query, for settings forms to return to.
    pub here: String,
}

/// Messages a redirect may ask for (`?done=`), from a fixed list so no
/// request can put its own text on the page.
const NOTICES: &[(&str, &str)] = &[
    ("queued", "Operation queued."),
    ("cancelled", "Operation cancelled."),
    ("uploaded", "Firmware uploaded."),
    ("deleted", "Deleted."),
    ("user", "User saved."),
    ("password", "Password changed; your other sessions have ended."),
    ("revoked", "Token revoked."),
    ("tagged", "Tags saved."),
    ("filter-saved", "Filter saved."),
    (
        "profile-saved",
        "Profile saved: it applies from each device's next registration.",
    ),
    (
        "bulk-queued",
        "Operations queued on every selected device; each runs when its device is reachable.",
    ),
    (
        "campaign-created",
        "Campaign created: its first wave starts within a second.",
    ),
    (
        "campaign-paused",
        "Campaign paused: nothing new starts; updates under way carry on.",
    ),
    ("campaign-resumed", "Campaign resumed."),
    ("campaign-cancelled", "Campaign cancelled."),
    ("campaign-retried", "Failed devices returned to pending."),
];

pub(super) fn chrome(ctx: &Ctx<'_>, active: &'static str) -> WebResult<Chrome> {
    let who = ctx.who()?;
    let mut nav = vec![
        ("/", "Overview"),
        ("/devices", "Devices"),
        ("/events", "Events"),
        ("/firmware", "Firmware"),
        ("/campaigns", "Campaigns"),
        ("/device-profiles", "Device profiles"),
    ];
    if who.role.allows(Role::Admin) {
        nav.push(("/users", "Users"));
    }
    nav.push(("/tokens", "API tokens"));
    let notice = ctx
        .query("done")
        .and_then(|d| NOTICES.iter().find(|(k, _)| *k == d).map(|(_, m)| *m));
    Ok(Chrome {
        user: who.name.clone(),
        role: who.role.as_str(),
        csrf: ctx.csrf(),
        active,
        nav,
        version: assets::version(),
        notice,
        zone: super::preferences::zone_label(),
        here: ctx.target.clone(),
    })
}

pub(super) fn render(t: &impl Template) -> WebResult {
    t.render().map(Reply::html).map_err(|e| {
        log::error!("template: {e}");
        WebError::internal()
    })
}

/// A time as pages show it: in the signed-in user's zone.
pub(super) fn time(ms: i64) -> String {
    super::preferences::show(ms)
}

pub(super) fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_default()
}

/// A form field, or a 400 naming it.
pub(super) fn required<'a>(f: &'a [(String, String)], name: &str) -> WebResult<&'a str> {
    form::field(f, name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| WebError::bad_request(format!("{name} is required")))
}

// ---- sign-in -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "bare.html")]
struct Bare<'a> {
    title: &'a str,
    version: &'a str,
    error: Option<String>,
    form: bool,
    action: &'a str,
    csrf: String,
    setup_token: Option<String>,
    button: &'a str,
    back: Option<&'a str>,
}

pub fn error_page(e: &WebError) -> String {
    Bare {
        title: e.status.canonical_reason().unwrap_or("Error"),
        version: assets::version(),
        error: Some(e.message.clone()),
        form: false,
        action: "",
        csrf: String::new(),
        setup_token: None,
        button: "",
        back: Some("/"),
    }
    .render()
    .unwrap_or_else(|_| "error".into())
}

/// A login-form page; sets the pre-login cookie its CSRF token is bound to.
fn sign_in_page(ctx: &mut Ctx<'_>, setup: Option<String>, error: Option<String>, status: StatusCode) -> WebResult {
    let mut set_cookie = None;
    if ctx.login_cookie.is_none() {
        let v = super::auth::new_secret()?;
        set_cookie = Some(ctx.web.cookies.set(ctx.web.cookies.login_name(), &v, 3600));
        ctx.login_cookie = Some(v);
    }
    let (title, action, button) = if setup.is_some() {
        ("Create the first admin", "/setup", "Create admin")
    } else {
        ("Sign in", "/login", "Sign in")
    };
    let mut reply = render(&Bare {
        title,
        version: assets::version(),
        error,
        form: true,
        action,
        csrf: ctx.csrf(),
        setup_token: setup,
        button,
        back: None,
    })?
    .with_status(status);
    if let Some(c) = set_cookie {
        reply = reply.with_header(hyper::header::SET_COOKIE, c);
    }
    Ok(reply)
}

pub fn login_form(ctx: &mut Ctx<'_>) -> WebResult {
    if ctx.who.is_some() {
        return Ok(Reply::redirect("/"));
    }
    sign_in_page(ctx, None, None, StatusCode::OK)
}

/// Start a session: a new id every time (no fixation), the login cookie
/// cleared.
fn start_session(ctx: &mut Ctx<'_>, name: &str) -> WebResult {
    let id = super::auth::new_secret()?;
    ctx.store
        .create_session(&super::auth::digest(&id), name, &ctx.peer.to_string())?;
    if let Some(old) = &ctx.session {
        ctx.store.end_session(&super::auth::digest(old))?;
    }
    let c = &ctx.web.cookies;
    Ok(Reply::redirect("/")
        .with_header(
            hyper::header::SET_COOKIE,
            c.set(c.session_name(), &id, ctx.web.http.session_max_age_s),
        )
        .with_header(hyper::header::SET_COOKIE, c.set(c.login_name(), "", 0)))
}

pub fn login(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let name = form::field(&f, "name").unwrap_or("").trim().to_string();
    let password = form::field(&f, "password").unwrap_or("").to_string();
    let now = now_ms();
    if let Err(wait) = ctx.web.limiter.lock().expect("limiter").check(now, &name, ctx.peer) {
        log::warn!("login for {name:?} from {} refused: too many failures", ctx.peer);
        let mut e = WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_logins",
            format!("too many failed logins; try again in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let user = ctx.store.user_credentials(&name)?;
    let ok = match &user {
        Some((u, hash)) => verify_password(&password, hash) && !u.disabled,
        None => {
            // Spend the same time as a real check, so timing does not tell
            // which names exist.
            let _ = verify_password(&password, dummy_hash());
            false
        }
    };
    if !ok {
        ctx.web.limiter.lock().expect("limiter").failed(now, &name, ctx.peer);
        log::warn!("failed login for {name:?} from {}", ctx.peer);
        return sign_in_page(
            ctx,
            None,
            Some("Wrong user name or password.".into()),
            StatusCode::UNAUTHORIZED,
        );
    }
    ctx.web.limiter.lock().expect("limiter").succeeded(&name, ctx.peer);
    log::info!("{name} signed in from {}", ctx.peer);
    start_session(ctx, &name)
}

/// An argon2id hash of a random password, checked for unknown user names.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let pw = super::auth::new_secret().unwrap_or_else(|_| "x".repeat(43));
        crate::users::hash_password(&pw).unwrap_or_default()
    })
}

pub fn logout(ctx: &mut Ctx<'_>) -> WebResult {
    if let Some(s) = &ctx.session {
        ctx.store.end_session(&super::auth::digest(s))?;
    }
    let c = &ctx.web.cookies;
    Ok(Reply::redirect("/login").with_header(hyper::header::SET_COOKIE, c.set(c.session_name(), "", 0)))
}

pub fn logout_everywhere(ctx: &mut Ctx<'_>) -> WebResult {
    let name = ctx.who()?.name.clone();
    let n = ctx.store.end_sessions_of(&name, None)?;
    log::info!("{name} logged out everywhere ({n} sessions)");
    let c = &ctx.web.cookies;
    Ok(Reply::redirect("/login").with_header(hyper::header::SET_COOKIE, c.set(c.session_name(), "", 0)))
}

fn setup_token_ok(ctx: &Ctx<'_>, token: &str) -> WebResult<()> {
    if ctx.store.has_admin()? {
        return Err(WebError::not_found("setup is done: an admin exists"));
    }
    if !ctx.web.signer.setup_ok(token, now_ms() / 1000) {
        return Err(WebError::forbidden(
            "this setup link is invalid or expired; restart the server for a new one, or use `flownexus user add`",
        ));
    }
    Ok(())
}

pub fn setup_form(ctx: &mut Ctx<'_>) -> WebResult {
    let token = ctx.query("token").unwrap_or("").to_string();
    setup_token_ok(ctx, &token)?;
    sign_in_page(ctx, Some(token), None, StatusCode::OK)
}

pub fn setup(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let token = form::field(&f, "token").unwrap_or("").to_string();
    setup_token_ok(ctx, &token)?;
    let name = form::field(&f, "name").unwrap_or("").trim().to_string();
    let password = form::field(&f, "password").unwrap_or("");
    if Some(password) != form::field(&f, "password2") {
        return sign_in_page(
            ctx,
            Some(token),
            Some("The passwords differ.".into()),
            StatusCode::BAD_REQUEST,
        );
    }
    let created = crate::users::check_name(&name)
        .and_then(|()| crate::users::hash_password(password))
        .and_then(|h| ctx.store.add_first_admin(&name, &h, &super::auth::digest(&token)));
    if let Err(e) = created {
        return sign_in_page(ctx, Some(token), Some(e.to_string()), StatusCode::UNPROCESSABLE_ENTITY);
    }
    log::info!("first admin {name} created through the setup link from {}", ctx.peer);
    start_session(ctx, &name)
}

// ---- overview ------------------------------------------------------------------

pub(super) struct EventLine {
    pub(super) time: String,
    pub(super) endpoint: Option<String>,
    pub(super) kind: String,
    /// What happened, in a sentence.
    pub(super) summary: String,
    /// The stored detail, as JSON (kept as the cell's title).
    pub(super) detail: String,
}

/// An event in words: what registered from where, which operation ended
/// how (its CoAP code explained), why a request was refused.
pub(super) fn event_summary(kind: &str, d: &serde_json::Value) -> String {
    use crate::store::event_kind as k;
    let s = |key: &str| {
        d[key]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| d[key].to_string())
    };
    match kind {
        k::REGISTERED => format!(
            "registered from {}: lifetime {} s, LwM2M {}, binding {}",
            s("peer"),
            s("lifetime"),
            s("version"),
            s("binding")
        ),
        k::DEREGISTERED => "de-registered".into(),
        k::EXPIRED => "its registration's lifetime passed without an Update".into(),
        k::OPERATION => {
            let what = format!("{} {}", s("kind"), s("path"));
            let code = d["code"].as_str().map(explain_code);
            format!(
                "{} #{}: {}{}",
                what.trim(),
                s("operation"),
                s("state"),
                code.map(|c| format!(" ({c})")).unwrap_or_default()
            )
        }
        // Our code to the device, so not explained from the device's side.
        k::REJECTED => format!("refused with {}: {}", s("code"), s("reason")),
        k::DOOM_LOOP => format!(
            "asked for firmware #{} from its end again (FOTA doom loop), from {}",
            s("firmware"),
            s("peer")
        ),
        _ => d.to_string(),
    }
}

pub(super) fn event_lines(rows: Vec<EventRow>) -> Vec<EventLine> {
    rows.into_iter()
        .map(|e| EventLine {
            time: time(e.ts),
            endpoint: e.endpoint,
            summary: event_summary(&e.kind, &e.detail),
            kind: e.kind,
            detail: e.detail.to_string(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    chrome: Chrome,
    counts: crate::store::dashboard::FleetCounts,
    counted_at: String,
    values_chart: String,
    versions_chart: String,
    events: Vec<EventLine>,
}

pub fn overview(ctx: &mut Ctx<'_>) -> WebResult {
    let fleet = ctx.web.fleet_summary(ctx.store)?;
    let now = now_ms();
    let from = crate::store::hour_of(now) - 23 * 3_600_000;
    let per_hour = ctx.store.values_per_hour(from)?;
    render(&Overview {
        chrome: chrome(ctx, "Overview")?,
        counts: fleet.counts,
        counted_at: time(fleet.counted_at),
        values_chart: chart::columns("values stored per hour", &per_hour, (from, 3_600_000, 24), |t| {
            time(t)[11..16].to_string()
        }),
        versions_chart: chart::bars("devices per firmware version", &fleet.versions),
        events: event_lines(ctx.store.events(None, 10)?),
    })
}

// ---- devices -------------------------------------------------------------------

pub(super) struct DeviceRow {
    pub(super) summary: crate::store::DeviceSummary,
    pub(super) status: &'static str,
    pub(super) last_seen: String,
}

/// The latest values behind the device list's optional value columns:
/// (column, path). Signal strength is the Connectivity Monitoring
/// object's (Core Appendix E.5, resource 2, dBm); battery the Device's.
const VALUE_COLUMNS: &[(&str, &str)] = &[("model", "/3/0/1"), ("signal", "/4/0/2"), ("battery", "/3/0/9")];

/// A device list row's value columns, as read: column → text.
type ColumnValues = std::collections::HashMap<&'static str, String>;

#[derive(Template)]
#[template(path = "devices.html")]
struct Devices {
    chrome: Chrome,
    devices: Vec<DeviceRow>,
    next: Option<String>,
    prev: Option<String>,
    /// Devices in the fleet (the overview's count, at most 10 s old) and
    /// the number of this page (1 = first).
    fleet_total: u64,
    page_number: usize,
    limit: usize,
    limits: [usize; 4],
    q: String,
    status: String,
    tag: String,
    firmware: String,
    sort: String,
    order: String,
    statuses: Vec<(&'static str, &'static str)>,
    sorts: Vec<(&'static str, &'static str)>,
    admin: bool,
    operator: bool,
    /// `?q=…&tag=…`: the list's filter, for the bulk form's action.
    filter_query: String,
    /// Catalogue images for a bulk update: (id, label).
    images: Vec<(i64, String)>,
    /// The columns this user chose, and every column to choose from.
    columns: Vec<&'static str>,
    all_columns: &'static [(&'static str, &'static str)],
    /// Per row (in order), its value columns.
    values: Vec<ColumnValues>,
    saved: Vec<crate::store::settings::SavedFilter>,
}

impl Devices {
    fn show(&self, column: &str) -> bool {
        self.columns.contains(&column)
    }

    /// Row `row`'s value in column `column`, as read; empty if unknown.
    fn cell(&self, row: &usize, column: &str) -> &str {
        self.values
            .get(*row)
            .and_then(|v| v.get(column))
            .map_or("", String::as_str)
    }
}

/// Cursors of the pages before this one that a device list link carries,
/// so "Previous" needs no state on the server (keyset pages go forward
/// only); at most this many are kept.
const PAGE_TRAIL: usize = 50;

/// The first page in a trail (a cursor is base64url of a JSON array, so
/// it always starts with `W` and is never this).
const FIRST_PAGE: &str = "first";

/// The device list's filter, sort and page size as `k=v` query items, so
/// a link (the next page, a bulk action) keeps the operator's view.
pub(super) fn list_filters(ctx: &Ctx<'_>) -> Vec<String> {
    ["q", "status", "tag", "firmware", "sort", "order", "limit"]
        .iter()
        .filter_map(|k| ctx.query(k).map(|v| format!("{k}={}", form::encode(v))))
        .collect()
}

pub fn devices(ctx: &mut Ctx<'_>) -> WebResult {
    let (rows, next) = api::device_page(ctx)?;
    let keep = |k: &str| ctx.query(k).unwrap_or("").to_string();
    // The cursors of the pages before this one, oldest first.
    let mut trail: Vec<String> = ctx
        .query("trail")
        .map(|t| t.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let current = ctx.query("cursor").map(str::to_string);
    let filters = list_filters(ctx);
    let link = |cursor: Option<&str>, trail: &[String]| {
        let mut q = filters.clone();
        if let Some(c) = cursor.filter(|c| *c != FIRST_PAGE) {
            q.push(format!("cursor={c}"));
        }
        if !trail.is_empty() {
            q.push(format!("trail={}", form::encode(&trail.join(","))));
        }
        format!("/devices?{}", q.join("&"))
    };
    let page_number = trail.len() + 1;
    let next = next.map(|c| {
        let mut t = trail.clone();
        t.push(current.clone().unwrap_or_else(|| FIRST_PAGE.to_string()));
        let skip = t.len().saturating_sub(PAGE_TRAIL);
        link(Some(&c), &t[skip..])
    });
    let prev = current.as_ref().map(|_| {
        let before = trail.pop();
        link(before.as_deref(), &trail)
    });
    let fleet_total = ctx.web.fleet_summary(ctx.store)?.counts.total;
    let user = ctx.who()?.name.clone();
    let columns = super::preferences::device_columns(ctx.store, &user)?;
    let wanted: Vec<(&str, &str)> = VALUE_COLUMNS
        .iter()
        .filter(|(c, _)| columns.contains(c))
        .copied()
        .collect();
    let endpoints: Vec<String> = rows.iter().map(|d| d.summary.endpoint.clone()).collect();
    let found = ctx
        .store
        .latest_of(&endpoints, &wanted.iter().map(|(_, p)| *p).collect::<Vec<_>>())?;
    let models = ctx.web.models.clone();
    let values: Vec<ColumnValues> = endpoints
        .iter()
        .map(|ep| {
            found
                .iter()
                .filter(|(e, _)| e == ep)
                .filter_map(|(_, v)| {
                    let col = wanted.iter().find(|(_, p)| *p == v.path.to_string())?.0;
                    Some((col, crate::lwm2m::display::display(&models, &v.path, &v.value)))
                })
                .collect()
        })
        .collect();
    let page = Devices {
        prev,
        fleet_total,
        page_number,
        limit: api::limit(ctx)?,
        limits: [25, 50, 100, 200],
        chrome: chrome(ctx, "Devices")?,
        devices: rows
            .into_iter()
            .map(|d| DeviceRow {
                status: d.status.as_str(),
                last_seen: opt_time(d.summary.last_seen),
                summary: d.summary,
            })
            .collect(),
        next,
        q: keep("q"),
        status: keep("status"),
        tag: keep("tag"),
        firmware: keep("firmware"),
        sort: ctx.query("sort").unwrap_or("endpoint").to_string(),
        order: ctx.query("order").unwrap_or("asc").to_string(),
        statuses: vec![
            ("", "any"),
            ("online", "online"),
            ("sleeping", "sleeping"),
            ("offline", "offline"),
        ],
        sorts: vec![
            ("endpoint", "endpoint"),
            ("last_seen", "last seen"),
            ("created", "added"),
        ],
        admin: ctx.who()?.role.allows(Role::Admin),
        operator: ctx.who()?.role.allows(Role::Operator),
        filter_query: if filters.is_empty() {
            String::new()
        } else {
            format!("?{}", filters.join("&"))
        },
        images: ctx
            .store
            .firmware_list(false)?
            .into_iter()
            .map(|f| (f.id, format!("{} {}", f.name, f.version)))
            .collect(),
        columns,
        all_columns: super::preferences::COLUMNS,
        values,
        saved: ctx.store.saved_filters(&user)?,
    };
    render(&page)
}

pub fn add_device(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let identity = form::field(&f, "psk_identity").filter(|s| !s.trim().is_empty());
    let generate = form::field(&f, "psk") != Some("none");
    let new = NewDevice {
        endpoint: required(&f, "endpoint")?.to_string(),
        psk_identity: if generate { identity.map(str::to_string) } else { None },
        psk_key_hex: None,
        generate_psk: generate,
        tags: form::field(&f, "tags").map(str::to_string),
    };
    let (device, key) = api::provision(ctx, new)?;
    let endpoint = device.summary.endpoint.clone();
    super::device_page::page(ctx, &endpoint, key)
}

pub fn delete_device(ctx: &mut Ctx<'_>) -> WebResult {
    api::remove_device(ctx)?;
    Ok(Reply::redirect("/devices?done=deleted"))
}

// ---- events --------------------------------------------------------------------

#[derive(Template)]
#[template(path = "events.html")]
struct Events {
    chrome: Chrome,
    events: Vec<EventLine>,
    next: Option<String>,
    endpoint: String,
    kind: String,
    /// The kinds to choose from: (stored name, label).
    kinds: &'static [(&'static str, &'static str)],
    from_date: String,
    to_date: String,
}

/// `YYYY-MM-DDTHH:MM` (a datetime-local field, read in the user's zone) → Unix ms.
pub(super) fn local_date(s: Option<&str>) -> WebResult<Option<i64>> {
    let Some(s) = s else { return Ok(None) };
    super::preferences::parse_local(s)
        .map(Some)
        .ok_or_else(|| WebError::bad_request("dates look like 2026-11-23T07:00"))
}

pub fn events(ctx: &mut Ctx<'_>) -> WebResult {
    let before = match api::decode_cursor(ctx)? {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| WebError::bad_request("bad cursor"))?),
    };
    let range = (local_date(ctx.query("from_date"))?, local_date(ctx.query("to_date"))?);
    let limit = api::limit(ctx)?;
    // The page's device box matches any part of an endpoint; the type is
    // one of the kinds the writer records (a drop-down, so nothing typed
    // can silently match nothing).
    let endpoint = ctx.query("endpoint").filter(|e| !e.is_empty());
    let kind = ctx.query("kind").filter(|k| !k.is_empty());
    let (rows, more) = ctx.store.event_page(endpoint, true, kind, range, before, limit)?;
    let next = more.then(|| rows.last()).flatten().map(|e| {
        let mut q: Vec<String> = ["endpoint", "kind", "from_date", "to_date", "limit"]
            .iter()
            .filter_map(|k| ctx.query(k).map(|v| format!("{k}={}", form::encode(v))))
            .collect();
        q.push(format!("cursor={}", api::encode_cursor(&serde_json::json!(e.id))));
        format!("/events?{}", q.join("&"))
    });
    let keep = |k: &str| ctx.query(k).unwrap_or("").to_string();
    render(&Events {
        chrome: chrome(ctx, "Events")?,
        events: event_lines(rows),
        next,
        endpoint: keep("endpoint"),
        kind: keep("kind"),
        kinds: crate::store::event_kind::ALL,
        from_date: keep("from_date"),
        to_date: keep("to_date"),
    })
}

// ---- API reference -------------------------------------------------------------

#[derive(Template)]
#[template(path = "api.html")]
struct ApiPage {
    chrome: Chrome,
    r: &'static crate::web::api_reference::Reference,
    setup: &'static str,
    examples: &'static [crate::web::api_reference::Example],
}

/// The REST API reference, rendered on the server from the OpenAPI
/// document (the same model as `docs/api.md`), built once.
pub fn api_reference(ctx: &mut Ctx<'_>) -> WebResult {
    static REFERENCE: std::sync::OnceLock<crate::web::api_reference::Reference> = std::sync::OnceLock::new();
    let r = REFERENCE.get_or_init(|| crate::web::api_reference::reference(&crate::web::route::openapi()));
    render(&ApiPage {
        chrome: chrome(ctx, "API tokens")?,
        r,
        setup: crate::web::api_reference::EXAMPLE_SETUP,
        examples: crate::web::api_reference::EXAMPLES,
    })
}

// ---- firmware ------------------------------------------------------------------

struct FirmwareView {
    row: FirmwareRow,
    devices: u64,
    uploaded: String,
    /// "512.0 KiB".
    size: String,
    /// What the image is, in words.
    kind: &'static str,
    /// Where devices fetch it (a device's own URL adds its token).
    url: String,
}

/// Bytes as people read them (binary units, one decimal).
pub(super) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// An image type (`firmware::image`) in words.
fn image_kind(stored: &str) -> &'static str {
    match crate::firmware::image::ImageType::parse(stored) {
        crate::firmware::image::ImageType::McubootApplication => "application (MCUboot)",
        crate::firmware::image::ImageType::ModemDelta => "modem delta update",
        crate::firmware::image::ImageType::ModemFull => "full modem update",
        crate::firmware::image::ImageType::Unknown => "not recognised (no MCUboot or modem header)",
    }
}

#[derive(Template)]
#[template(path = "firmware.html")]
struct Firmware {
    chrome: Chrome,
    images: Vec<FirmwareView>,
    operator: bool,
    max_mb: u64,
}

pub fn firmware(ctx: &mut Ctx<'_>) -> WebResult {
    let mut images = Vec::new();
    let base = ctx.web.updates.as_ref().map(|s| s.base_url.clone()).unwrap_or_default();
    for row in ctx.store.firmware_list(false)? {
        images.push(FirmwareView {
            devices: ctx.store.devices_on_version(&row.version)?,
            uploaded: time(row.uploaded_at),
            size: human_size(row.size),
            kind: image_kind(&row.image_type),
            url: format!("{base}/binaries/{}", form::encode(&row.name)),
            row,
        });
    }
    render(&Firmware {
        chrome: chrome(ctx, "Firmware")?,
        images,
        operator: ctx.who()?.role.allows(Role::Operator),
        max_mb: ctx.web.max_upload >> 20,
    })
}

pub fn upload_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    let parts = std::mem::take(&mut ctx.parts);
    if parts.is_empty() {
        return Err(WebError::bad_request("the upload is not a well-formed multipart form"));
    }
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.data).trim().to_string())
            .unwrap_or_default()
    };
    let file = parts
        .iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| WebError::bad_request("choose a file"))?
        .data
        .clone();
    let version = text("version");
    let version = (!version.is_empty()).then_some(version.as_str());
    api::store_firmware(ctx, &text("name"), version, &text("notes"), &file)?;
    Ok(Reply::redirect("/firmware?done=uploaded"))
}

pub fn delete_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    api::remove_firmware(ctx)?;
    Ok(Reply::redirect("/firmware?done=deleted"))
}

// ---- users, profile, tokens ----------------------------------------------------

struct UserView {
    name: String,
    role: &'static str,
    disabled: bool,
    created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct Users {
    chrome: Chrome,
    users: Vec<UserView>,
}

pub fn users(ctx: &mut Ctx<'_>) -> WebResult {
    let users = ctx
        .store
        .users()?
        .into_iter()
        .map(|u| UserView {
            role: u.role.as_str(),
            disabled: u.disabled,
            created: time(u.created_at),
            name: u.name,
        })
        .collect();
    render(&Users {
        chrome: chrome(ctx, "Users")?,
        users,
    })
}

fn role_field(f: &[(String, String)]) -> WebResult<Role> {
    Ok(required(f, "role")?.parse()?)
}

pub fn add_user(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    api::add_user(
        ctx,
        required(&f, "name")?.trim(),
        role_field(&f)?,
        required(&f, "password")?,
    )?;
    Ok(Reply::redirect("/users?done=user"))
}

pub fn change_user(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let name = ctx.param("name").to_string();
    let change = match required(&f, "action")? {
        "role" => UserChange {
            role: Some(role_field(&f)?),
            disabled: None,
        },
        "disable" => UserChange {
            role: None,
            disabled: Some(true),
        },
        "enable" => UserChange {
            role: None,
            disabled: Some(false),
        },
        _ => return Err(WebError::bad_request("unknown action")),
    };
    api::change(ctx, &name, change)?;
    Ok(Reply::redirect("/users?done=user"))
}

#[derive(Template)]
#[template(path = "profile.html")]
struct Profile {
    chrome: Chrome,
    zone: String,
    zones: Vec<String>,
}

pub fn profile(ctx: &mut Ctx<'_>) -> WebResult {
    let zone = super::preferences::user_zone(ctx.store, &ctx.who()?.name)?;
    render(&Profile {
        chrome: chrome(ctx, "")?,
        zone,
        zones: super::preferences::zone_names(),
    })
}

pub fn change_password(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let name = ctx.who()?.name.clone();
    let current = required(&f, "current")?;
    let (_, hash) = ctx.store.user_credentials(&name)?.ok_or_else(WebError::unauthorized)?;
    if !verify_password(current, &hash) {
        return Err(WebError::forbidden("the current password is wrong"));
    }
    let new = required(&f, "password")?;
    if Some(new) != form::field(&f, "password2") {
        return Err(WebError::bad_request("the new passwords differ"));
    }
    ctx.store.set_user_password(&name, &crate::users::hash_password(new)?)?;
    let keep = ctx.session.as_deref().map(super::auth::digest);
    ctx.store.end_sessions_of(&name, keep.as_deref())?;
    // A changed password usually means a leaked one: the API tokens made
    // with it go too, unless the user keeps them on purpose.
    let revoked = if form::field(&f, "keep_tokens").is_some() {
        0
    } else {
        ctx.store.revoke_tokens_of(&name)?
    };
    log::info!("{name} changed their password ({revoked} API tokens revoked)");
    Ok(Reply::redirect("/profile?done=password"))
}

/// "Revoke all my tokens", beside "log out everywhere".
pub fn revoke_my_tokens(ctx: &mut Ctx<'_>) -> WebResult {
    let name = ctx.who()?.name.clone();
    let n = ctx.store.revoke_tokens_of(&name)?;
    log::info!("{name} revoked all their API tokens ({n})");
    Ok(Reply::redirect("/tokens?done=revoked"))
}

struct TokenView {
    id: i64,
    name: String,
    user: String,
    role: &'static str,
    created: String,
    last_used: String,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct Tokens {
    chrome: Chrome,
    tokens: Vec<TokenView>,
    roles: Vec<&'static str>,
    /// Preselected: the user's own role, what the API gives a token made
    /// without one.
    own_role: &'static str,
    secret: Option<String>,
}

fn tokens_page(ctx: &mut Ctx<'_>, secret: Option<String>) -> WebResult {
    let who = ctx.who()?.clone();
    let owner = (!who.role.allows(Role::Admin)).then_some(who.name.as_str());
    let tokens = ctx
        .store
        .tokens(owner)?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            role: t.role.as_str(),
            created: time(t.created_at),
            last_used: opt_time(t.last_used_at),
            revoked: t.revoked_at.is_some(),
            name: t.name,
            user: t.user,
        })
        .collect();
    let roles = [Role::Viewer, Role::Operator, Role::Admin]
        .into_iter()
        .filter(|r| who.role.allows(*r))
        .map(Role::as_str)
        .collect();
    render(&Tokens {
        chrome: chrome(ctx, "API tokens")?,
        tokens,
        roles,
        own_role: who.role.as_str(),
        secret,
    })
}

pub fn tokens(ctx: &mut Ctx<'_>) -> WebResult {
    tokens_page(ctx, None)
}

/// Answered with the page itself, not a redirect: the secret is shown once
/// and must not sit in a URL or a later response.
pub fn create_token(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let created = api::new_token(ctx, required(&f, "name")?, Some(role_field(&f)?))?;
    tokens_page(ctx, Some(created.secret))
}

pub fn revoke_token(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    api::revoke(ctx, id)?;
    Ok(Reply::redirect("/tokens?done=revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_image_kinds_read_as_words() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(512 * 1024), "512.0 KiB");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(image_kind("mcuboot-application"), "application (MCUboot)");
        assert!(image_kind("unknown").starts_with("not recognised"));
    }

    #[test]
    fn events_read_as_sentences() {
        let d =
            serde_json::json!({ "operation": 7, "kind": "read", "path": "/3/0", "state": "failed", "code": "4.04" });
        assert_eq!(
            event_summary("operation", &d),
            "read /3/0 #7: failed (4.04: the device has no such object or resource)"
        );
        let d = serde_json::json!({ "peer": "192.0.2.1:5683", "lifetime": 300, "version": "1.1", "binding": "UQ" });
        assert_eq!(
            event_summary("registered", &d),
            "registered from 192.0.2.1:5683: lifetime 300 s, LwM2M 1.1, binding UQ"
        );
        let d = serde_json::json!({ "code": "4.03", "reason": "not provisioned" });
        assert_eq!(event_summary("rejected", &d), "refused with 4.03: not provisioned");
    }
}
