//! `/api/v1`: JSON handlers. Each takes a checked [`Ctx`] (authenticated,
//! authorised, body bounded) and returns a [`Reply`]; the shell maps
//! errors to the one error body.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, auth};
use crate::lwm2m::display::natural_cmp;
use crate::lwm2m::operation::OperationKind;
use crate::lwm2m::path::ResourcePath;
use crate::psk::Psk;
use crate::store::dashboard::{DeviceQuery, DeviceSort, SortKey};
use crate::store::tags::Tags;
use crate::store::{DeviceSummary, EventRow, FirmwareRow, OperationRow, Status, Store, StoredValue, now_ms};
use crate::users::{Role, User};

pub type Operation = OperationRow;
pub type Firmware = FirmwareRow;
/// A reported value, and the same as an operator reads it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Value {
    #[serde(flatten)]
    pub stored: StoredValue,
    /// The value in words: an enumerated code's meaning ("charging (1)"),
    /// a time as a UTC date, a number with its unit ("21.5 °C").
    pub display: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Me {
    pub name: String,
    pub role: Role,
    /// Whether this request came with an API token (else a session).
    pub via_token: bool,
}

/// A device as listed, with its status now.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Device {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub status: Status,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DevicePage {
    pub items: Vec<Device>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    #[schemars(length(min = 1, max = 255))]
    pub endpoint: String,
    /// PSK identity for CoAP over DTLS; default: the endpoint name.
    #[serde(default)]
    pub psk_identity: Option<String>,
    /// The key, hex; or set `generate_psk`.
    #[serde(default)]
    pub psk_key_hex: Option<String>,
    #[serde(default)]
    pub generate_psk: bool,
    /// Comma-separated tags (at most 32, each at most 64 bytes).
    #[serde(default)]
    pub tags: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceChange {
    /// The device's tags, comma-separated, instead of the ones it has
    /// ("" removes them all).
    #[serde(default)]
    pub tags: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedDevice {
    pub device: Device,
    /// A generated key, shown in this answer only.
    pub psk_key_hex: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ValuePage {
    pub items: Vec<StoredValue>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NewOperation {
    #[serde(flatten)]
    pub kind: OperationKind,
    /// Give up after this many seconds (default `lwm2m.operation_deadline_s`).
    #[serde(default)]
    pub deadline_s: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventPage {
    pub items: Vec<EventRow>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schemars(regex(pattern = r"^[A-Za-z0-9._@-]{1,64}$"))]
    pub name: String,
    pub role: Role,
    /// At least 12 characters.
    #[schemars(length(min = 12))]
    pub password: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// At most your own role (the default).
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: crate::store::access::ApiToken,
    /// `Authorization: Bearer <secret>`; shown in this answer only.
    pub secret: String,
}

// ---- shared by the API and the pages --------------------------------------------

/// Items per page: 1–500, default 50.
pub fn limit(ctx: &Ctx<'_>) -> WebResult<usize> {
    match ctx.query("limit") {
        None => Ok(50),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| WebError::bad_request("limit must be 1 to 500")),
    }
}

/// Cursors are opaque to clients: base64url of a small JSON array.
pub fn encode_cursor(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_cursor(ctx: &Ctx<'_>) -> WebResult<Option<serde_json::Value>> {
    let Some(c) = ctx.query("cursor") else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .map(Some)
        .ok_or_else(|| WebError::new(StatusCode::BAD_REQUEST, "bad_cursor", "the cursor is not one we issued"))
}

fn int_query(ctx: &Ctx<'_>, name: &str) -> WebResult<Option<i64>> {
    ctx.query(name)
        .map(|v| {
            v.parse()
                .map_err(|_| WebError::bad_request(format!("{name} must be an integer (Unix ms)")))
        })
        .transpose()
}

pub fn status_of(ctx: &Ctx<'_>, d: &DeviceSummary) -> Status {
    d.status(
        now_ms(),
        ctx.web.lwm2m.queue_awake_window_s,
        ctx.web.lwm2m.lifetime_grace_s,
    )
}

pub fn device_of(ctx: &Ctx<'_>, summary: DeviceSummary) -> Device {
    Device {
        status: status_of(ctx, &summary),
        summary,
    }
}

/// The device list query from `q`, `status`, `tag`, `firmware`, `sort`,
/// `order`, `cursor`, `limit`.
pub fn device_query(ctx: &Ctx<'_>) -> WebResult<DeviceQuery> {
    let sort = match ctx.query("sort") {
        None => DeviceSort::Endpoint,
        Some(s) => {
            DeviceSort::parse(s).ok_or_else(|| WebError::bad_request("sort must be endpoint, last_seen or created"))?
        }
    };
    let descending = match ctx.query("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(WebError::bad_request("order must be asc or desc")),
    };
    let status = match ctx.query("status") {
        None => None,
        Some("online") => Some(Status::Online),
        Some("sleeping") => Some(Status::Sleeping),
        Some("offline") => Some(Status::Offline),
        Some(_) => return Err(WebError::bad_request("status must be online, sleeping or offline")),
    };
    let after = match decode_cursor(ctx)? {
        None => None,
        Some(v) => {
            let bad = || {
                WebError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_cursor",
                    "the cursor does not fit this sort",
                )
            };
            let key = match (sort, &v[0]) {
                (DeviceSort::Endpoint, serde_json::Value::String(s)) => SortKey::Text(s.clone()),
                (DeviceSort::LastSeen | DeviceSort::Created, serde_json::Value::Number(n)) => {
                    SortKey::Int(n.as_i64().ok_or_else(bad)?)
                }
                _ => return Err(bad()),
            };
            let endpoint = v[1].as_str().ok_or_else(bad)?.to_string();
            Some((key, endpoint))
        }
    };
    Ok(DeviceQuery {
        search: ctx.query("q").map(str::to_string),
        status,
        // Stored tags are trimmed (`Tags::parse`).
        tag: ctx
            .query("tag")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        firmware: ctx.query("firmware").map(str::to_string),
        sort,
        descending,
        after,
        limit: limit(ctx)?,
        awake_window_s: ctx.web.lwm2m.queue_awake_window_s,
        grace_s: ctx.web.lwm2m.lifetime_grace_s,
    })
}

/// A page of devices and the cursor of the next.
pub fn device_page(ctx: &mut Ctx<'_>) -> WebResult<(Vec<Device>, Option<String>)> {
    let q = device_query(ctx)?;
    let (rows, more) = ctx.store.device_page(&q)?;
    let next = more.then(|| rows.last()).flatten().map(|d| {
        let key = match Store::sort_key(d, q.sort) {
            SortKey::Text(s) => serde_json::json!(s),
            SortKey::Int(i) => serde_json::json!(i),
        };
        encode_cursor(&serde_json::json!([key, d.endpoint]))
    });
    Ok((rows.into_iter().map(|d| device_of(ctx, d)).collect(), next))
}

/// Every device matching the list's filter (the query string), in the
/// list's order, for bulk actions and exports; more than `cap` is an
/// error that names `what` to narrow.
pub fn all_matching(ctx: &mut Ctx<'_>, cap: usize, what: &str) -> WebResult<Vec<crate::store::DeviceSummary>> {
    let mut q = device_query(ctx)?;
    q.after = None;
    q.limit = 1000;
    let mut out = Vec::new();
    loop {
        let (rows, more) = ctx.store.device_page(&q)?;
        let Some(last) = rows.last() else { break };
        q.after = Some((Store::sort_key(last, q.sort), last.endpoint.clone()));
        out.extend(rows);
        if out.len() > cap {
            return Err(WebError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("more than {cap} devices match: narrow the filter to {what}"),
            ));
        }
        if !more {
            break;
        }
    }
    Ok(out)
}

/// Queue an operation as an operator asked; validated against the object
/// model first, committed before the answer.
pub fn queue(
    ctx: &mut Ctx<'_>,
    endpoint: &str,
    kind: OperationKind,
    deadline_s: Option<u64>,
) -> WebResult<OperationRow> {
    kind.validate(&ctx.web.models)?;
    let deadline_s = deadline_s.unwrap_or(ctx.web.lwm2m.operation_deadline_s);
    if deadline_s == 0 || deadline_s > 365 * 86400 {
        return Err(WebError::bad_request("deadline_s must be 1 to 31536000"));
    }
    let id = ctx.store.queue_operation(
        endpoint,
        &kind,
        now_ms() + deadline_s as i64 * 1000,
        ctx.web.lwm2m.operation_max_attempts,
    )?;
    log::info!(
        "{} queued {} {} on {endpoint:?} (operation {id})",
        ctx.who()?.name,
        kind.name(),
        kind.path()
    );
    Ok(ctx.store.operation(id)?)
}

/// Provision a device; returns it and a generated key, if one was asked for.
pub fn provision(ctx: &mut Ctx<'_>, d: NewDevice) -> WebResult<(Device, Option<String>)> {
    let endpoint = d.endpoint.trim();
    if endpoint.is_empty() || endpoint.len() > 255 || endpoint.chars().any(char::is_control) {
        return Err(WebError::from(crate::Error::Invalid {
            what: "endpoint",
            reason: "1 to 255 printable characters".into(),
        }));
    }
    let identity = d.psk_identity.as_deref().unwrap_or(endpoint);
    let (psk, shown) = match (&d.psk_key_hex, d.generate_psk) {
        (Some(_), true) => return Err(WebError::bad_request("give psk_key_hex or generate_psk, not both")),
        (Some(hex), false) => (Some(Psk::from_hex(identity, hex)?), None),
        (None, true) => {
            let p = Psk::generate(identity)?;
            let hex = p.key_hex();
            (Some(p), Some(hex))
        }
        (None, false) => {
            if d.psk_identity.is_some() {
                return Err(WebError::bad_request("psk_identity needs psk_key_hex or generate_psk"));
            }
            (None, None)
        }
    };
    let tags = Tags::parse(d.tags.as_deref().unwrap_or(""))?;
    ctx.store.add_device(endpoint, psk.as_ref(), &tags)?;
    log::info!(
        "{} provisioned device {endpoint:?}{}",
        ctx.who()?.name,
        if psk.is_some() { " with a PSK" } else { "" }
    );
    let summary = ctx.store.device(endpoint)?;
    Ok((device_of(ctx, summary), shown))
}

/// File a device under other tags.
pub fn retag(ctx: &mut Ctx<'_>, endpoint: &str, tags: &str) -> WebResult<Device> {
    let tags = Tags::parse(tags)?;
    ctx.store.set_tags(endpoint, &tags)?;
    log::info!("{} tagged device {endpoint:?}: {tags}", ctx.who()?.name);
    let summary = ctx.store.device(endpoint)?;
    Ok(device_of(ctx, summary))
}

/// Create a token for the signed-in user; the secret is returned once.
pub fn new_token(ctx: &mut Ctx<'_>, name: &str, role: Option<Role>) -> WebResult<CreatedToken> {
    let who = ctx.who()?.clone();
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(WebError::from(crate::Error::Invalid {
            what: "token name",
            reason: "1 to 64 printable characters".into(),
        }));
    }
    let role = role.unwrap_or(who.role);
    if !who.role.allows(role) {
        return Err(WebError::forbidden("a token cannot have more rights than its user"));
    }
    let secret = format!("{}{}", auth::TOKEN_PREFIX, auth::new_secret()?);
    let token = ctx.store.create_token(&who.name, name, role, &auth::digest(&secret))?;
    log::info!("{} created API token {} ({})", who.name, token.id, role.as_str());
    Ok(CreatedToken { token, secret })
}

/// Revoke a token: your own, or anyone's as an admin.
pub fn revoke(ctx: &mut Ctx<'_>, id: i64) -> WebResult<()> {
    let who = ctx.who()?.clone();
    let owner = (!who.role.allows(Role::Admin)).then_some(who.name.as_str());
    ctx.store.revoke_token(id, owner)?;
    log::info!("{} revoked API token {id}", who.name);
    Ok(())
}

pub fn add_user(ctx: &mut Ctx<'_>, name: &str, role: Role, password: &str) -> WebResult<User> {
    crate::users::check_name(name)?;
    let hash = crate::users::hash_password(password)?;
    ctx.store.add_user(name, &hash, role)?;
    log::info!("{} created user {name} ({})", ctx.who()?.name, role.as_str());
    user(ctx, name)
}

fn user(ctx: &Ctx<'_>, name: &str) -> WebResult<User> {
    ctx.store
        .users()?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| WebError::not_found(format!("no user {name}")))
}

/// Change a user's role or state. An admin cannot demote or disable
/// themselves: the last admin would lock everyone out.
pub fn change(ctx: &mut Ctx<'_>, name: &str, change: UserChange) -> WebResult<User> {
    let who = ctx.who()?.clone();
    user(ctx, name)?;
    if who.name == name && (change.role.is_some_and(|r| r != Role::Admin) || change.disabled == Some(true)) {
        return Err(WebError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot demote or disable yourself; ask another admin",
        ));
    }
    if let Some(role) = change.role {
        ctx.store.set_user_role(name, role)?;
        log::info!("{} set the role of {name} to {}", who.name, role.as_str());
    }
    if let Some(d) = change.disabled {
        ctx.store.set_user_disabled(name, d)?;
        if d {
            ctx.store.end_sessions_of(name, None)?;
        }
        log::info!("{} {} user {name}", who.name, if d { "disabled" } else { "enabled" });
    }
    user(ctx, name)
}

// ---- handlers --------------------------------------------------------------------

pub fn openapi(_: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&super::route::openapi()))
}

/// `/healthz`, for load balancers, `HealthCmd=` and `flownexus
/// healthcheck`: status names only, 503 when a component is down.
pub fn healthz(ctx: &mut Ctx<'_>) -> WebResult {
    let summary = crate::health::summary(&ctx.web.health());
    let code = match summary.status {
        crate::health::Status::Down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    Ok(Reply::json(code, &summary))
}

/// Every component with what its last probe saw.
pub fn health(ctx: &mut Ctx<'_>) -> WebResult {
    ctx.who()?;
    let components = ctx.web.health();
    Ok(Reply::ok(&crate::health::Report {
        status: crate::health::overall(&components),
        components,
    }))
}

pub fn me(ctx: &mut Ctx<'_>) -> WebResult {
    let who = ctx.who()?;
    Ok(Reply::ok(&Me {
        name: who.name.clone(),
        role: who.role,
        via_token: who.via_token,
    }))
}

pub fn list_devices(ctx: &mut Ctx<'_>) -> WebResult {
    let (items, next) = device_page(ctx)?;
    Ok(Reply::ok(&DevicePage { items, next }))
}

pub fn create_device(ctx: &mut Ctx<'_>) -> WebResult {
    let d: NewDevice = ctx.json()?;
    let (device, psk_key_hex) = provision(ctx, d)?;
    Ok(Reply::json(StatusCode::CREATED, &CreatedDevice { device, psk_key_hex }))
}

pub fn get_device(ctx: &mut Ctx<'_>) -> WebResult {
    let d = ctx.store.device(ctx.param("endpoint"))?;
    Ok(Reply::ok(&device_of(ctx, d)))
}

pub fn change_device(ctx: &mut Ctx<'_>) -> WebResult {
    let c: DeviceChange = ctx.json()?;
    let endpoint = ctx.param("endpoint").to_string();
    let device = match c.tags {
        Some(tags) => retag(ctx, &endpoint, &tags)?,
        None => {
            let summary = ctx.store.device(&endpoint)?;
            device_of(ctx, summary)
        }
    };
    Ok(Reply::ok(&device))
}

pub fn delete_device(ctx: &mut Ctx<'_>) -> WebResult {
    remove_device(ctx)?;
    Ok(Reply::no_content())
}

pub fn latest_values(ctx: &mut Ctx<'_>) -> WebResult {
    let endpoint = ctx.param("endpoint");
    ctx.store.device(endpoint)?;
    let models = ctx.web.models.clone();
    let mut values: Vec<Value> = ctx
        .store
        .latest_values(endpoint)?
        .into_iter()
        .map(|stored| Value {
            display: crate::lwm2m::display::display(&models, &stored.path, &stored.value),
            stored,
        })
        .collect();
    values.sort_by(|a, b| natural_cmp(&a.stored.path.to_string(), &b.stored.path.to_string()));
    Ok(Reply::ok(&values))
}

pub fn history(ctx: &mut Ctx<'_>) -> WebResult {
    let raw = ctx
        .query("path")
        .ok_or_else(|| WebError::bad_request("path is required, e.g. path=/3303/0/5700"))?;
    let path: ResourcePath = raw.parse().map_err(WebError::from)?;
    // Values are stored per resource (instance): history names one.
    if !raw.starts_with('/') || path.depth() < 3 {
        return Err(WebError::bad_request(format!(
            "path {raw:?} does not name a resource, e.g. /3303/0/5700"
        )));
    }
    ctx.store.device(ctx.param("endpoint"))?;
    let now = now_ms();
    let to = int_query(ctx, "to")?.unwrap_or(now + 1);
    let from = int_query(ctx, "from")?.unwrap_or(to.saturating_sub(7 * 86_400_000));
    let after =
        match decode_cursor(ctx)? {
            None => None,
            Some(v) => Some(v[0].as_i64().zip(v[1].as_i64()).ok_or_else(|| {
                WebError::new(StatusCode::BAD_REQUEST, "bad_cursor", "the cursor is not one we issued")
            })?),
        };
    let limit = limit(ctx)?;
    let (rows, more) = ctx
        .store
        .history_page(ctx.param("endpoint"), &path, (from, to), after, limit)?;
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|(rowid, v)| encode_cursor(&serde_json::json!([v.ts, rowid])));
    Ok(Reply::ok(&ValuePage {
        items: rows.into_iter().map(|(_, v)| v).collect(),
        next,
    }))
}

pub fn device_operations(ctx: &mut Ctx<'_>) -> WebResult {
    let endpoint = ctx.param("endpoint");
    ctx.store.device(endpoint)?;
    Ok(Reply::ok(&ctx.store.operations_of(endpoint, 100)?))
}

pub fn create_operation(ctx: &mut Ctx<'_>) -> WebResult {
    // serde reads an internally tagged enum's tag from a variant index too
    // (`"op": 0` would be a Read); the document says it is a name.
    let body: serde_json::Value = ctx.json()?;
    if !body["op"].is_string() {
        return Err(WebError::malformed_json(
            "`op` must be an operation name, e.g. \"read\"",
        ));
    }
    let op: NewOperation = serde_json::from_value(body).map_err(WebError::malformed_json)?;
    let endpoint = ctx.param("endpoint").to_string();
    let row = queue(ctx, &endpoint, op.kind, op.deadline_s)?;
    Ok(Reply::json(StatusCode::ACCEPTED, &row))
}

pub fn get_operation(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    Ok(Reply::ok(&ctx.store.operation(id)?))
}

/// Cancel a queued operation; a sent or finished one is a conflict.
pub fn cancel(ctx: &mut Ctx<'_>, id: i64) -> WebResult<OperationRow> {
    let row = ctx.store.operation(id)?;
    if !ctx.store.cancel_operation(id)? {
        return Err(WebError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "operation {id} is {}; only queued operations can be cancelled",
                row.state.as_str()
            ),
        ));
    }
    log::info!("{} cancelled operation {id}", ctx.who()?.name);
    Ok(ctx.store.operation(id)?)
}

pub fn cancel_operation(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    Ok(Reply::ok(&cancel(ctx, id)?))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NewUpdate {
    /// The catalogue image: its id or its name.
    pub image: String,
    /// Further images installed together with `image` (a device with the
    /// Advanced Firmware Update object, 33629: e.g. the modem image beside
    /// the application's).
    #[serde(default)]
    pub with: Vec<String>,
}

/// A firmware update with its timeline.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UpdateView {
    #[serde(flatten)]
    pub update: crate::store::UpdateRow,
    pub steps: Vec<crate::store::UpdateStep>,
}

fn update_view(ctx: &mut Ctx<'_>, id: i64) -> WebResult<UpdateView> {
    Ok(UpdateView {
        update: ctx.store.update(id)?,
        steps: ctx.store.update_steps(id)?,
    })
}

/// Start a firmware update of `endpoint` to `image` (the API and the
/// device page's form).
pub fn start_update(ctx: &mut Ctx<'_>, endpoint: &str, images: &[&str]) -> WebResult<i64> {
    let who = ctx.who()?.name.clone();
    let starter = ctx.web.updates.as_ref().ok_or_else(|| {
        WebError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the firmware server is disabled (fw.enabled = false)",
        )
    })?;
    let id = starter.create(ctx.store, endpoint, images, &who, None)?;
    log::info!(
        "{who} started firmware update {id} of {endpoint:?} to {}",
        images.join(" + ")
    );
    Ok(id)
}

/// Ask for an active update to be cancelled; an ended one is a conflict.
pub fn request_update_cancel(ctx: &mut Ctx<'_>, id: i64) -> WebResult<crate::store::UpdateRow> {
    let row = ctx.store.update(id)?;
    if !ctx.store.request_update_cancel(id)? {
        return Err(WebError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("firmware update {id} has already ended"),
        ));
    }
    log::info!("{} asked to cancel firmware update {id}", ctx.who()?.name);
    Ok(row)
}

/// Start a firmware update of one device (LwM2M Object 5).
pub fn create_update(ctx: &mut Ctx<'_>) -> WebResult {
    let body: NewUpdate = ctx.json()?;
    let endpoint = ctx.param("endpoint").to_string();
    let images: Vec<&str> = std::iter::once(body.image.as_str())
        .chain(body.with.iter().map(String::as_str))
        .collect();
    let id = start_update(ctx, &endpoint, &images)?;
    Ok(Reply::json(StatusCode::ACCEPTED, &update_view(ctx, id)?))
}

/// A device's firmware updates, newest first.
pub fn device_updates(ctx: &mut Ctx<'_>) -> WebResult {
    let endpoint = ctx.param("endpoint").to_string();
    ctx.store.device(&endpoint)?;
    let ids: Vec<i64> = ctx.store.updates_of(&endpoint, 50)?.iter().map(|u| u.id).collect();
    let views = ids
        .into_iter()
        .map(|id| update_view(ctx, id))
        .collect::<WebResult<Vec<_>>>()?;
    Ok(Reply::ok(&views))
}

pub fn get_update(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    Ok(Reply::ok(&update_view(ctx, id)?))
}

/// Cancel an active update: the server writes an empty Package URI (Core
/// E.6); one past Execute Update cannot be cancelled and finishes.
pub fn cancel_update(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    request_update_cancel(ctx, id)?;
    Ok(Reply::json(StatusCode::ACCEPTED, &update_view(ctx, id)?))
}

/// Remove a device with its values and key; its pending operations end.
pub fn remove_device(ctx: &mut Ctx<'_>) -> WebResult<()> {
    let endpoint = ctx.param("endpoint").to_string();
    ctx.store.remove_device(&endpoint)?;
    log::info!("{} removed device {endpoint:?}", ctx.who()?.name);
    Ok(())
}

/// Soft-delete an image (it is no longer served).
pub fn remove_firmware(ctx: &mut Ctx<'_>) -> WebResult<FirmwareRow> {
    let id = ctx.id("id")?;
    let row = ctx.web.catalogue.remove(ctx.store, id)?;
    log::info!("{} deleted firmware {} ({})", ctx.who()?.name, row.name, row.id);
    Ok(row)
}

pub fn events(ctx: &mut Ctx<'_>) -> WebResult {
    let before =
        match decode_cursor(ctx)? {
            None => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                WebError::new(StatusCode::BAD_REQUEST, "bad_cursor", "the cursor is not one we issued")
            })?),
        };
    let range = (int_query(ctx, "from")?, int_query(ctx, "to")?);
    let limit = limit(ctx)?;
    let (items, more) = ctx
        .store
        .event_page(ctx.query("endpoint"), false, ctx.query("kind"), range, before, limit)?;
    let next = more
        .then(|| items.last())
        .flatten()
        .map(|e| encode_cursor(&serde_json::json!(e.id)));
    Ok(Reply::ok(&EventPage { items, next }))
}

pub fn list_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&ctx.store.firmware_list(false)?))
}

/// Store an uploaded image; the catalogue writes it to a temporary file and
/// renames it only when complete, so a failed upload leaves nothing.
pub fn store_firmware(
    ctx: &mut Ctx<'_>,
    name: &str,
    version: Option<&str>,
    notes: &str,
    data: &[u8],
) -> WebResult<FirmwareRow> {
    let uploader = ctx.who()?.name.clone();
    let (row, _) = ctx.web.catalogue.add(
        ctx.store,
        &mut &data[..],
        &crate::firmware::Upload {
            name,
            version,
            notes,
            uploader: &uploader,
        },
        &mut |_| {},
    )?;
    log::info!(
        "{uploader} uploaded firmware {} {} ({} bytes, {})",
        row.name,
        row.version,
        row.size,
        row.sha256
    );
    Ok(row)
}

pub fn upload_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    let name = ctx.query("name").unwrap_or("").to_string();
    // Absent or empty: the version the image states.
    let version = ctx
        .query("version")
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string);
    let notes = ctx.query("notes").unwrap_or("").to_string();
    let body = ctx.body.clone();
    let row = store_firmware(ctx, &name, version.as_deref(), &notes, &body)?;
    Ok(Reply::json(StatusCode::CREATED, &row))
}

pub fn get_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let f = ctx.store.firmware(&id.to_string())?;
    // Deleted images stay in the catalogue for their download history, but
    // as far as the API is concerned they are gone.
    if f.deleted_at.is_some() {
        return Err(WebError::not_found(format!("firmware {id} was deleted")));
    }
    Ok(Reply::ok(&f))
}

pub fn delete_firmware(ctx: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&remove_firmware(ctx)?))
}

pub fn list_users(ctx: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&ctx.store.users()?))
}

pub fn create_user(ctx: &mut Ctx<'_>) -> WebResult {
    let u: NewUser = ctx.json()?;
    let user = add_user(ctx, &u.name, u.role, &u.password)?;
    Ok(Reply::json(StatusCode::CREATED, &user))
}

pub fn change_user(ctx: &mut Ctx<'_>) -> WebResult {
    let c: UserChange = ctx.json()?;
    let name = ctx.param("name").to_string();
    Ok(Reply::ok(&change(ctx, &name, c)?))
}

pub fn list_tokens(ctx: &mut Ctx<'_>) -> WebResult {
    let who = ctx.who()?;
    let owner = (!who.role.allows(Role::Admin)).then(|| who.name.clone());
    Ok(Reply::ok(&ctx.store.tokens(owner.as_deref())?))
}

pub fn create_token(ctx: &mut Ctx<'_>) -> WebResult {
    let t: NewToken = ctx.json()?;
    let created = new_token(ctx, &t.name, t.role)?;
    Ok(Reply::json(StatusCode::CREATED, &created))
}

pub fn revoke_token(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    revoke(ctx, id)?;
    Ok(Reply::no_content())
}
