//! The route table: every page and API endpoint with the role it needs,
//! the body it takes and its documentation. The shell dispatches from it,
//! the OpenAPI document is generated from it, and the route × role test
//! walks it, so the three cannot disagree.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::reply::{ErrorBody, WebResult};
use super::{Ctx, api, assets, bulk, campaigns, device_page, export, pages, preferences, profiles};
use crate::users::Role;

pub type Handler = fn(&mut Ctx<'_>) -> WebResult;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login, assets, the OpenAPI document).
    Public,
    /// Signed in with at least this role.
    Signed(Role),
}

/// API routes answer JSON and take bearer tokens; pages answer HTML and
/// send the anonymous to the login form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Api,
    Page,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    /// `application/json`, at most `http.max_body_bytes`.
    Json,
    /// An urlencoded form, at most `http.max_body_bytes`.
    Form,
    /// A firmware image: raw (API) or a multipart form (page), at most
    /// `fw.max_image_bytes` plus room for the form fields.
    Upload,
}

#[derive(Debug, Clone, Copy)]
pub enum Run {
    /// A synchronous handler on the blocking pool (it may use SQLite).
    Blocking(Handler),
    /// The Server-Sent Events stream.
    EventStream,
    /// A campaign's report as Server-Sent Events, whenever it changes.
    CampaignStream,
}

pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    /// An integer from .0 to .1, inclusive.
    Bounded(i64, i64),
    /// An LwM2M resource path, /object/instance/resource[/instance].
    ResourcePath,
    OneOf(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub about: &'static str,
}

pub const fn q(name: &'static str, ty: ParamType, about: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        about,
    }
}

/// OpenAPI facts of an API route.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    pub summary: &'static str,
    pub tag: &'static str,
    pub query: &'static [Param],
    pub request: Option<SchemaFn>,
    /// Success status and body schema (`None` body: 204 or a stream).
    pub response: (u16, Option<SchemaFn>),
}

/// The HTTP methods routes use (RFC 9110 §9.3); `HEAD` is served by GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    pub fn of(m: &hyper::Method) -> Option<Verb> {
        Some(match *m {
            hyper::Method::GET | hyper::Method::HEAD => Verb::Get,
            hyper::Method::POST => Verb::Post,
            hyper::Method::PUT => Verb::Put,
            hyper::Method::PATCH => Verb::Patch,
            hyper::Method::DELETE => Verb::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }

    fn lower(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Verb,
    /// Segments in `{braces}` are parameters.
    pub path: &'static str,
    pub access: Access,
    pub surface: Surface,
    pub body: BodyKind,
    pub run: Run,
    /// Costly (password hashing): admitted a few at a time.
    pub costly: bool,
    pub doc: Option<Doc>,
}

const VIEWER: Access = Access::Signed(Role::Viewer);
const OPERATOR: Access = Access::Signed(Role::Operator);
const ADMIN: Access = Access::Signed(Role::Admin);

/// A page: GET renders it; POST takes a form and redirects.
const fn page(method: Verb, body: BodyKind, path: &'static str, access: Access, handler: Handler) -> Route {
    Route {
        method,
        path,
        access,
        surface: Surface::Page,
        body,
        run: Run::Blocking(handler),
        costly: false,
        doc: None,
    }
}

const fn get(path: &'static str, access: Access, handler: Handler) -> Route {
    page(Verb::Get, BodyKind::None, path, access, handler)
}

const fn post(path: &'static str, access: Access, handler: Handler) -> Route {
    page(Verb::Post, BodyKind::Form, path, access, handler)
}

const fn api(method: Verb, path: &'static str, access: Access, handler: Handler, doc: Doc) -> Route {
    Route {
        method,
        path,
        access,
        surface: Surface::Api,
        body: if doc.request.is_some() {
            BodyKind::Json
        } else {
            BodyKind::None
        },
        run: Run::Blocking(handler),
        costly: false,
        doc: Some(doc),
    }
}

const fn doc(summary: &'static str, tag: &'static str, response: (u16, Option<SchemaFn>)) -> Doc {
    Doc {
        summary,
        tag,
        query: &[],
        request: None,
        response,
    }
}

const PAGE_PARAMS: [Param; 2] = [
    q("cursor", ParamType::String, "the `next` cursor of the previous page"),
    q(
        "limit",
        ParamType::Bounded(1, 500),
        "items per page, 1–500 (default 50)",
    ),
];

const DEVICE_QUERY: &[Param] = &[
    q("q", ParamType::String, "endpoint or PSK identity contains this"),
    q(
        "status",
        ParamType::OneOf(&["online", "sleeping", "offline"]),
        "registration status",
    ),
    q("tag", ParamType::String, "has this tag"),
    q("firmware", ParamType::String, "reports this firmware version (/3/0/3)"),
    q(
        "sort",
        ParamType::OneOf(&["endpoint", "last_seen", "created"]),
        "sort column",
    ),
    q("order", ParamType::OneOf(&["asc", "desc"]), "sort order"),
    PAGE_PARAMS[0],
    PAGE_PARAMS[1],
];

const HISTORY_QUERY: &[Param] = &[
    Param {
        name: "path",
        ty: ParamType::ResourcePath,
        required: true,
        about: "resource path, e.g. /3303/0/5700",
    },
    q("from", ParamType::Integer, "Unix ms, inclusive (default: 7 days ago)"),
    q("to", ParamType::Integer, "Unix ms, exclusive (default: now)"),
    PAGE_PARAMS[0],
    PAGE_PARAMS[1],
];

const EVENT_QUERY: &[Param] = &[
    q("endpoint", ParamType::String, "events of this device"),
    q("kind", ParamType::String, "e.g. registered, operation, rejected"),
    q("from", ParamType::Integer, "Unix ms, inclusive"),
    q("to", ParamType::Integer, "Unix ms, exclusive"),
    PAGE_PARAMS[0],
    PAGE_PARAMS[1],
];

const UPLOAD_QUERY: &[Param] = &[
    Param {
        name: "name",
        ty: ParamType::String,
        required: true,
        about: "download name, /binaries/NAME",
    },
    q(
        "version",
        ParamType::String,
        "firmware version; by default the one the image states (MCUboot header, Nordic modem file name), which a given one must agree with",
    ),
    q("notes", ParamType::String, "release notes"),
];

use api as a;
use campaigns as c;
use device_page as d;
use pages as p;

const MEMBER_QUERY: &[Param] = &[
    q(
        "status",
        ParamType::OneOf(&["skipped", "pending", "active", "succeeded", "failed", "cancelled"]),
        "devices in this status",
    ),
    PAGE_PARAMS[0],
    q("offset", ParamType::Integer, "devices to skip (a page's next_offset)"),
];

pub static ROUTES: &[Route] = &[
    // ---- pages --------------------------------------------------------------------
    get("/", VIEWER, p::overview),
    get("/devices", VIEWER, p::devices),
    post("/devices", ADMIN, p::add_device),
    post("/devices/bulk", OPERATOR, bulk::bulk),
    get("/devices.csv", VIEWER, export::devices),
    get("/devices/{endpoint}/history.csv", VIEWER, export::history),
    get("/events.csv", VIEWER, export::events),
    post("/devices/{endpoint}/delete", ADMIN, p::delete_device),
    get("/devices/{endpoint}", VIEWER, d::device),
    post("/devices/{endpoint}/operations", OPERATOR, d::queue_operation),
    post("/devices/{endpoint}/update", OPERATOR, d::start_update),
    post("/updates/{id}/cancel", OPERATOR, d::cancel_update),
    post("/devices/{endpoint}/tags", OPERATOR, d::set_tags),
    post("/operations/{id}/cancel", OPERATOR, d::cancel_operation),
    get("/events", VIEWER, p::events),
    get("/firmware", VIEWER, p::firmware),
    Route {
        body: BodyKind::Upload,
        ..post("/firmware", OPERATOR, p::upload_firmware)
    },
    post("/firmware/{id}/delete", OPERATOR, p::delete_firmware),
    get("/campaigns", VIEWER, c::page_list),
    post("/campaigns", OPERATOR, c::page_create),
    get("/campaigns/{id}", VIEWER, c::page),
    post("/campaigns/{id}/pause", OPERATOR, c::page_pause),
    post("/campaigns/{id}/resume", OPERATOR, c::page_resume),
    post("/campaigns/{id}/cancel", OPERATOR, c::page_cancel),
    post("/campaigns/{id}/retry", OPERATOR, c::page_retry),
    get("/device-profiles", VIEWER, profiles::page),
    post("/device-profiles", OPERATOR, profiles::page_create),
    post("/device-profiles/{id}", OPERATOR, profiles::page_update),
    post("/device-profiles/{id}/delete", OPERATOR, profiles::page_delete),
    get("/users", ADMIN, p::users),
    Route {
        costly: true,
        ..post("/users", ADMIN, p::add_user)
    },
    post("/users/{name}", ADMIN, p::change_user),
    get("/profile", VIEWER, p::profile),
    Route {
        costly: true,
        ..post("/profile/password", VIEWER, p::change_password)
    },
    post("/profile/logout-everywhere", VIEWER, p::logout_everywhere),
    post("/profile/time-zone", VIEWER, preferences::set_time_zone),
    post("/profile/columns", VIEWER, preferences::set_columns),
    post("/devices/filters", VIEWER, preferences::save_filter),
    post("/devices/filters/{id}/delete", VIEWER, preferences::delete_filter),
    get("/tokens", VIEWER, p::tokens),
    get("/api", VIEWER, p::api_reference),
    post("/tokens", VIEWER, p::create_token),
    post("/tokens/revoke-all", VIEWER, p::revoke_my_tokens),
    post("/tokens/{id}/revoke", VIEWER, p::revoke_token),
    get("/login", Access::Public, p::login_form),
    Route {
        costly: true,
        ..post("/login", Access::Public, p::login)
    },
    post("/logout", VIEWER, p::logout),
    get("/setup", Access::Public, p::setup_form),
    Route {
        costly: true,
        ..post("/setup", Access::Public, p::setup)
    },
    get("/assets/{name}", Access::Public, assets::serve),
    get("/healthz", Access::Public, a::healthz),
    // ---- API ----------------------------------------------------------------------
    api(
        Verb::Get,
        "/api/v1/openapi.json",
        Access::Public,
        a::openapi,
        doc("This document", "meta", (200, None)),
    ),
    api(
        Verb::Get,
        "/api/v1/health",
        VIEWER,
        a::health,
        doc(
            "Each component's health, with what its last probe saw",
            "meta",
            (200, Some(schema::<crate::health::Report>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/me",
        VIEWER,
        a::me,
        doc(
            "Who the token or session belongs to",
            "meta",
            (200, Some(schema::<a::Me>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/devices",
        VIEWER,
        a::list_devices,
        Doc {
            query: DEVICE_QUERY,
            ..doc("List devices", "devices", (200, Some(schema::<a::DevicePage>)))
        },
    ),
    api(
        Verb::Post,
        "/api/v1/devices",
        ADMIN,
        a::create_device,
        Doc {
            request: Some(schema::<a::NewDevice>),
            ..doc(
                "Provision a device, optionally with a PSK (a generated key is returned once)",
                "devices",
                (201, Some(schema::<a::CreatedDevice>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/devices/{endpoint}",
        VIEWER,
        a::get_device,
        doc("One device", "devices", (200, Some(schema::<a::Device>))),
    ),
    api(
        Verb::Patch,
        "/api/v1/devices/{endpoint}",
        OPERATOR,
        a::change_device,
        Doc {
            request: Some(schema::<a::DeviceChange>),
            ..doc("Change a device's tags", "devices", (200, Some(schema::<a::Device>)))
        },
    ),
    api(
        Verb::Delete,
        "/api/v1/devices/{endpoint}",
        ADMIN,
        a::delete_device,
        doc(
            "Remove a device, its values and its key; cancel its pending operations",
            "devices",
            (204, None),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/devices/{endpoint}/values",
        VIEWER,
        a::latest_values,
        doc(
            "Latest value of every resource the device reported",
            "values",
            (200, Some(schema::<Vec<a::Value>>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/devices/{endpoint}/history",
        VIEWER,
        a::history,
        Doc {
            query: HISTORY_QUERY,
            ..doc(
                "Value history of one resource, oldest first",
                "values",
                (200, Some(schema::<a::ValuePage>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/devices/{endpoint}/operations",
        VIEWER,
        a::device_operations,
        doc(
            "The device's latest 100 operations, newest first",
            "operations",
            (200, Some(schema::<Vec<a::Operation>>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/devices/{endpoint}/operations",
        OPERATOR,
        a::create_operation,
        Doc {
            request: Some(schema::<a::NewOperation>),
            ..doc(
                "Queue an operation (sent when the device is reachable)",
                "operations",
                (202, Some(schema::<a::Operation>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/operations/{id}",
        VIEWER,
        a::get_operation,
        doc(
            "One operation and its result",
            "operations",
            (200, Some(schema::<a::Operation>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/operations/{id}/cancel",
        OPERATOR,
        a::cancel_operation,
        doc(
            "Cancel a queued operation",
            "operations",
            (200, Some(schema::<a::Operation>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/devices/{endpoint}/updates",
        VIEWER,
        a::device_updates,
        doc(
            "The device's firmware updates, newest first, each with its timeline",
            "updates",
            (200, Some(schema::<Vec<a::UpdateView>>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/devices/{endpoint}/updates",
        OPERATOR,
        a::create_update,
        Doc {
            request: Some(schema::<a::NewUpdate>),
            ..doc(
                "Start a firmware update of the device to a catalogue image (LwM2M Object 5); 409 while another is active",
                "updates",
                (202, Some(schema::<a::UpdateView>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/updates/{id}",
        VIEWER,
        a::get_update,
        doc(
            "One firmware update and its timeline",
            "updates",
            (200, Some(schema::<a::UpdateView>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/updates/{id}/cancel",
        OPERATOR,
        a::cancel_update,
        doc(
            "Cancel an active firmware update (an empty Package URI returns the device to Idle)",
            "updates",
            (202, Some(schema::<a::UpdateView>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/profiles",
        VIEWER,
        profiles::api_list,
        doc(
            "Device profiles: reads and observations queued at each registration",
            "profiles",
            (200, Some(schema::<Vec<crate::store::profiles::ProfileRow>>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/profiles",
        OPERATOR,
        profiles::api_create,
        Doc {
            request: Some(schema::<profiles::NewProfile>),
            ..doc(
                "Add a device profile for a tag's devices (or every device), applied from each one's next registration",
                "profiles",
                (201, Some(schema::<crate::store::profiles::ProfileRow>)),
            )
        },
    ),
    api(
        Verb::Put,
        "/api/v1/profiles/{id}",
        OPERATOR,
        profiles::api_update,
        Doc {
            request: Some(schema::<profiles::NewProfile>),
            ..doc(
                "Replace a device profile's name, tag, steps and deadline, applied from each device's next registration",
                "profiles",
                (200, Some(schema::<crate::store::profiles::ProfileRow>)),
            )
        },
    ),
    api(
        Verb::Delete,
        "/api/v1/profiles/{id}",
        OPERATOR,
        profiles::api_delete,
        doc(
            "Remove a device profile; operations it queued stay queued",
            "profiles",
            (204, None),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/campaigns",
        VIEWER,
        c::list,
        doc(
            "Firmware campaigns, newest first, with their totals",
            "campaigns",
            (200, Some(schema::<Vec<c::CampaignItem>>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/campaigns",
        OPERATOR,
        c::post,
        Doc {
            request: Some(schema::<crate::campaign::Request>),
            ..doc(
                "Roll an image out to the devices a target selects, in waves; those already on its version are skipped",
                "campaigns",
                (201, Some(schema::<crate::store::CampaignReport>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/campaigns/{id}",
        VIEWER,
        c::get,
        doc(
            "One campaign: its state, counts per wave and timeline",
            "campaigns",
            (200, Some(schema::<crate::store::CampaignReport>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/campaigns/{id}/devices",
        VIEWER,
        c::devices,
        Doc {
            query: MEMBER_QUERY,
            ..doc(
                "A campaign's devices in campaign order, with their update's phase and bytes downloaded",
                "campaigns",
                (200, Some(schema::<c::MemberPage>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/campaigns/{id}/devices/{endpoint}",
        VIEWER,
        c::device,
        doc(
            "One device of a campaign and the timeline of its latest update",
            "campaigns",
            (200, Some(schema::<c::MemberTimeline>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/campaigns/{id}/pause",
        OPERATOR,
        c::pause,
        doc(
            "Pause: nothing new starts, updates under way carry on; 409 unless running",
            "campaigns",
            (200, Some(schema::<crate::store::CampaignReport>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/campaigns/{id}/resume",
        OPERATOR,
        c::resume,
        doc(
            "Resume a paused or stopped campaign, or confirm its next wave; 409 otherwise",
            "campaigns",
            (200, Some(schema::<crate::store::CampaignReport>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/campaigns/{id}/cancel",
        OPERATOR,
        c::cancel,
        doc(
            "Cancel: devices not started are cancelled, updates under way asked to cancel",
            "campaigns",
            (200, Some(schema::<crate::store::CampaignReport>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/campaigns/{id}/retry",
        OPERATOR,
        c::retry,
        doc(
            "Return the failed devices to pending and run the campaign again",
            "campaigns",
            (200, Some(schema::<crate::store::CampaignReport>)),
        ),
    ),
    Route {
        run: Run::CampaignStream,
        ..api(
            Verb::Get,
            "/api/v1/campaigns/{id}/stream",
            VIEWER,
            a::me,
            doc(
                "A campaign's report as Server-Sent Events (`event: campaign`) whenever it changes",
                "campaigns",
                (200, None),
            ),
        )
    },
    api(
        Verb::Get,
        "/api/v1/events",
        VIEWER,
        a::events,
        Doc {
            query: EVENT_QUERY,
            ..doc("Events, newest first", "events", (200, Some(schema::<a::EventPage>)))
        },
    ),
    Route {
        run: Run::EventStream,
        ..api(
            Verb::Get,
            "/api/v1/events/stream",
            VIEWER,
            a::me,
            doc(
                "Live events as Server-Sent Events (text/event-stream)",
                "events",
                (200, None),
            ),
        )
    },
    api(
        Verb::Get,
        "/api/v1/firmware",
        VIEWER,
        a::list_firmware,
        doc(
            "Live firmware images, newest first",
            "firmware",
            (200, Some(schema::<Vec<a::Firmware>>)),
        ),
    ),
    Route {
        body: BodyKind::Upload,
        ..api(
            Verb::Post,
            "/api/v1/firmware",
            OPERATOR,
            a::upload_firmware,
            Doc {
                query: UPLOAD_QUERY,
                ..doc(
                    "Upload an image (body: the file, application/octet-stream)",
                    "firmware",
                    (201, Some(schema::<a::Firmware>)),
                )
            },
        )
    },
    api(
        Verb::Get,
        "/api/v1/firmware/{id}",
        VIEWER,
        a::get_firmware,
        doc(
            "One image (deleted ones too)",
            "firmware",
            (200, Some(schema::<a::Firmware>)),
        ),
    ),
    api(
        Verb::Delete,
        "/api/v1/firmware/{id}",
        OPERATOR,
        a::delete_firmware,
        doc(
            "Soft-delete an image: it is no longer served",
            "firmware",
            (200, Some(schema::<a::Firmware>)),
        ),
    ),
    api(
        Verb::Get,
        "/api/v1/users",
        ADMIN,
        a::list_users,
        doc("Users", "users", (200, Some(schema::<Vec<crate::users::User>>))),
    ),
    Route {
        costly: true,
        ..api(
            Verb::Post,
            "/api/v1/users",
            ADMIN,
            a::create_user,
            Doc {
                request: Some(schema::<a::NewUser>),
                ..doc("Create a user", "users", (201, Some(schema::<crate::users::User>)))
            },
        )
    },
    api(
        Verb::Patch,
        "/api/v1/users/{name}",
        ADMIN,
        a::change_user,
        Doc {
            request: Some(schema::<a::UserChange>),
            ..doc(
                "Change a user's role or disable / enable it",
                "users",
                (200, Some(schema::<crate::users::User>)),
            )
        },
    ),
    api(
        Verb::Get,
        "/api/v1/tokens",
        VIEWER,
        a::list_tokens,
        doc(
            "Your API tokens (an admin sees everyone's)",
            "tokens",
            (200, Some(schema::<Vec<crate::store::access::ApiToken>>)),
        ),
    ),
    api(
        Verb::Post,
        "/api/v1/tokens",
        VIEWER,
        a::create_token,
        Doc {
            request: Some(schema::<a::NewToken>),
            ..doc(
                "Create an API token; the secret is in this answer only",
                "tokens",
                (201, Some(schema::<a::CreatedToken>)),
            )
        },
    ),
    api(
        Verb::Delete,
        "/api/v1/tokens/{id}",
        VIEWER,
        a::revoke_token,
        doc("Revoke an API token", "tokens", (204, None)),
    ),
];

/// The outcome of looking a request up in the table.
pub enum Found {
    Route(&'static Route, Vec<(&'static str, String)>),
    /// The path exists with other methods.
    MethodNotAllowed(Vec<Verb>),
    NotFound,
}

/// Match `path` against a pattern; parameters are percent-decoded.
fn matches(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(params),
            (Some(pat), Some(seg)) => {
                if let Some(name) = pat.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    if seg.is_empty() {
                        return None;
                    }
                    params.push((name, super::form::decode(&seg.replace('+', "%2B"))));
                } else if pat != seg {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

pub fn find(method: &hyper::Method, path: &str) -> Found {
    let verb = Verb::of(method);
    let mut allowed = Vec::new();
    for r in ROUTES {
        if let Some(params) = matches(r.path, path) {
            if Some(r.method) == verb {
                return Found::Route(r, params);
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        Found::NotFound
    } else {
        Found::MethodNotAllowed(allowed)
    }
}

fn param_schema(p: &Param) -> Value {
    match p.ty {
        // An empty required parameter is as missing as an absent one.
        ParamType::String if p.required => json!({ "type": "string", "minLength": 1 }),
        ParamType::String => json!({ "type": "string" }),
        ParamType::Integer => json!({ "type": "integer", "format": "int64" }),
        ParamType::Bounded(min, max) => json!({ "type": "integer", "minimum": min, "maximum": max }),
        ParamType::ResourcePath => json!({ "type": "string", "pattern": "^(/[0-9]{1,5}){3,4}$" }),
        ParamType::OneOf(v) => json!({ "type": "string", "enum": v }),
    }
}

/// The OpenAPI 3.0 document, generated from [`ROUTES`] and the types'
/// `JsonSchema` derivations.
pub fn openapi() -> Value {
    let mut requests = SchemaSettings::openapi3().for_deserialize().into_generator();
    let mut responses = SchemaSettings::openapi3().for_serialize().into_generator();
    let error_ref = responses.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for r in ROUTES.iter() {
        let Some(d) = r.doc else { continue };
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(d.query.iter().map(|p| {
            json!({ "name": p.name, "in": "query", "required": p.required, "description": p.about,
                    "schema": param_schema(p) })
        }));
        let mut op = json!({
            "summary": d.summary,
            "tags": [d.tag],
            "operationId": format!("{}{}", r.method.lower(),
                r.path.trim_start_matches("/api/v1").replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": {
                "default": { "description": "an error", "content": { "application/json": { "schema": error_ref.as_value() } } }
            },
        });
        let (status, body) = d.response;
        let content = match (body, r.run) {
            (Some(f), _) => json!({ "application/json": { "schema": f(&mut responses).to_value() } }),
            (None, Run::EventStream | Run::CampaignStream) => {
                // Before OpenAPI 3.2's `itemSchema`, a text/event-stream
                // `schema` describes one event: its fields as the WHATWG
                // HTML "Server-sent events" section names them; `data`
                // holds JSON.
                json!({ "text/event-stream": { "schema": {
                    "type": "object",
                    "properties": {
                        "event": { "type": "string" },
                        "data": { "type": "string" },
                        "id": { "type": "string" },
                        "retry": { "type": "integer" }
                    }
                } } })
            }
            (None, _) if status == 200 => json!({ "application/json": { "schema": { "type": "object" } } }),
            (None, _) => Value::Null,
        };
        let mut ok = json!({ "description": d.summary });
        if !content.is_null() {
            ok["content"] = content;
        }
        op["responses"][status.to_string()] = ok;
        if let Some(f) = d.request {
            op["requestBody"] = json!({ "required": true,
                "content": { "application/json": { "schema": f(&mut requests).to_value() } } });
        }
        if r.body == BodyKind::Upload {
            op["requestBody"] = json!({ "required": true,
                "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });
        }
        match r.access {
            Access::Public => op["security"] = json!([]),
            // The least role that may call it (an extension: OpenAPI has no
            // word for roles).
            Access::Signed(role) => op["x-role"] = json!(role.as_str()),
        }
        paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(r.method.lower(), op);
    }
    // Request shapes win where a type is both (they are the more lenient:
    // fields with defaults are optional).
    let mut schemas = requests.take_definitions(true);
    for (k, v) in responses.take_definitions(true) {
        schemas.entry(k).or_insert(v);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "flownexus REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, values, operations, firmware, events, users and API tokens. \
                Authenticate with `Authorization: Bearer fnx_…` (create tokens on the dashboard's \
                Tokens page or with POST /api/v1/tokens).",
        },
        "servers": [{ "url": "/" }],
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}
