//! The device page: its registration, the object tree with an action per
//! resource (`object_tree`), the operation queue, history chart, firmware
//! updates; and the forms it posts (operations, tags, updates).

use std::collections::BTreeMap;

use askama::Template;

use super::object_tree::{self, Latest, TreeObject};
use super::pages::{Chrome, DeviceRow, EventLine, chrome, event_lines, opt_time, render, required, time};
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, api, chart, form};
use crate::lwm2m::display::{display, explain_code, natural_cmp, unit_symbol};
use crate::lwm2m::operation::{OperationKind, WriteValue};
use crate::lwm2m::path::ResourcePath;
use crate::store::now_ms;
use crate::users::Role;

struct RegistrationView {
    peer: String,
    version: String,
    binding: String,
    queue_mode: bool,
    lifetime: u32,
    registered_at: String,
    updated_at: String,
    last_seen: String,
    object_links: String,
}

struct OperationView {
    id: i64,
    kind: &'static str,
    path: String,
    state: &'static str,
    attempts: u32,
    code: String,
    /// Values the device answered with: (path, resource name, as read).
    values: Vec<(String, String, String)>,
    /// Anything else the result says (links, a location, why it failed).
    note: String,
    updated: String,
    cancellable: bool,
}

/// An operation's stored outcome as the device page shows it: values as a
/// small table, in natural order, each as an operator reads it; otherwise
/// the links, the created instance or the reason it failed.
fn outcome_view(
    models: &crate::lwm2m::Models,
    result: Option<serde_json::Value>,
) -> (Vec<(String, String, String)>, String) {
    use crate::lwm2m::operation::Outcome;
    let Some(outcome) = result.and_then(|r| serde_json::from_value::<Outcome>(r).ok()) else {
        return (Vec::new(), String::new());
    };
    match outcome {
        Outcome::Succeeded(r) => {
            let mut values: Vec<(String, String, String)> = r
                .records
                .iter()
                .map(|rec| {
                    let name = models.resource(&rec.path).map(|m| m.name.clone()).unwrap_or_default();
                    (rec.path.to_string(), name, display(models, &rec.path, &rec.value))
                })
                .collect();
            values.sort_by(|a, b| natural_cmp(&a.0, &b.0));
            let note = match (r.links, r.location) {
                (Some(l), _) => l,
                (None, Some(loc)) => format!("created {loc}"),
                (None, None) => String::new(),
            };
            (values, note)
        }
        Outcome::Failed { reason, .. } => (Vec::new(), reason),
        Outcome::Expired | Outcome::Cancelled => (Vec::new(), String::new()),
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    chrome: Chrome,
    d: DeviceRow,
    reg: Option<RegistrationView>,
    tree: Vec<TreeObject>,
    operations: Vec<OperationView>,
    /// Numeric resources to chart: (path, name, charted now).
    numeric: Vec<(String, String, bool)>,
    /// The charted paths, and each line's (colour index, name, unit).
    charted: Vec<String>,
    legend: Vec<(usize, String, String)>,
    range: String,
    ranges: Vec<(&'static str, &'static str)>,
    chart: String,
    events: Vec<EventLine>,
    downloads: Vec<(String, u64, u64, String)>,
    updates: Vec<UpdateLine>,
    /// Live catalogue images an operator can update the device to: (id, label).
    images: Vec<(i64, String)>,
    operator: bool,
    admin: bool,
    generated_key: Option<String>,
}

/// A charted resource: its name, unit symbol and (time, value) points.
type ChartLine = (String, String, Vec<(i64, f64)>);

/// A firmware update on the device page, with its timeline.
struct UpdateLine {
    id: i64,
    image: String,
    phase: &'static str,
    reason: String,
    started: String,
    active: bool,
    steps: Vec<(String, &'static str, String)>,
}

const RANGES: &[(&str, &str, i64)] = &[
    ("1h", "1 hour", 3_600_000),
    ("24h", "24 hours", 86_400_000),
    ("7d", "7 days", 7 * 86_400_000),
    ("30d", "30 days", 30 * 86_400_000),
];

/// Points a history chart draws at most: the range is cut into this many
/// time slices and each is drawn as its mean (about one per pixel pair).
const CHART_BUCKETS: u32 = 600;

/// A history range's name (`24h`) as milliseconds.
pub(super) fn range_ms(range: &str) -> WebResult<i64> {
    RANGES
        .iter()
        .find(|r| r.0 == range)
        .map(|r| r.2)
        .ok_or_else(|| WebError::bad_request("range must be 1h, 24h, 7d or 30d"))
}

pub fn device(ctx: &mut Ctx<'_>) -> WebResult {
    let endpoint = ctx.param("endpoint").to_string();
    page(ctx, &endpoint, None)
}

pub(super) fn page(ctx: &mut Ctx<'_>, endpoint: &str, generated_key: Option<String>) -> WebResult {
    let summary = ctx.store.device(endpoint)?;
    let d = api::device_of(ctx, summary);
    let models = ctx.web.models.clone();
    let registration = ctx.store.registration_of(endpoint)?;
    let (announced, announced_at, versions) = registration.as_ref().map_or((Vec::new(), 0, BTreeMap::new()), |r| {
        (r.objects(), r.updated_at, r.object_versions())
    });
    let discovered = ctx.store.discovered_paths(endpoint)?;
    let reg = registration.map(|r| RegistrationView {
        peer: r.peer,
        version: r.version,
        binding: r.binding,
        queue_mode: r.queue_mode,
        lifetime: r.lifetime,
        registered_at: time(r.registered_at),
        updated_at: time(r.updated_at),
        last_seen: time(r.last_seen),
        object_links: r.object_links,
    });
    let mut latest = ctx.store.latest_values(endpoint)?;
    latest.sort_by(|a, b| natural_cmp(&a.path.to_string(), &b.path.to_string()));
    let observed = ctx.store.observed_paths(endpoint)?;
    let mut tree = object_tree::build(
        &models,
        &object_tree::Announced {
            paths: &announced,
            at: announced_at,
            versions: &versions,
            discovered: &discovered,
        },
        &latest
            .iter()
            .map(|v| Latest {
                path: &v.path,
                value: &v.value,
                ts: v.ts,
            })
            .collect::<Vec<_>>(),
        &observed,
        &time,
    );
    // The object the operator just acted on stays open after the form's
    // redirect (`open=`), values or not.
    if let Some(id) = ctx.query("open").and_then(|o| o.parse::<u16>().ok()) {
        tree.iter_mut().filter(|o| o.id == id).for_each(|o| o.open = true);
    }
    let operations = ctx
        .store
        .operations_of(endpoint, 20)?
        .into_iter()
        .map(|o| {
            let (values, note) = outcome_view(&models, o.result);
            OperationView {
                id: o.id,
                kind: o.kind.name(),
                path: o.kind.path().to_string(),
                state: o.state.as_str(),
                attempts: o.attempts,
                code: o.coap_code.as_deref().map(explain_code).unwrap_or_default(),
                values,
                note,
                updated: time(o.updated_at),
                cancellable: o.state == crate::lwm2m::operation::OperationState::Queued,
            }
        })
        .collect();
    let mut numeric: Vec<String> = ctx
        .store
        .numeric_paths(endpoint)?
        .iter()
        .map(ToString::to_string)
        .collect();
    numeric.sort_by(|a, b| natural_cmp(a, b));
    let mut charted: Vec<String> = ctx
        .query
        .iter()
        .filter(|(k, v)| k == "chart" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .take(chart::MAX_SERIES)
        .collect();
    if charted.is_empty() {
        // The IPSO Sensor Value (resource 5700) if there is one: what an
        // operator charts first, rather than an error code.
        charted.extend(
            numeric
                .iter()
                .find(|p| p.ends_with("/5700"))
                .or(numeric.first())
                .cloned(),
        );
    }
    let range = ctx.query("range").unwrap_or("24h").to_string();
    let span = range_ms(&range)?;
    let now = now_ms();
    // (name, unit, points) of each charted resource.
    let mut lines: Vec<ChartLine> = Vec::new();
    for p in &charted {
        let path: ResourcePath = p.parse().map_err(WebError::from)?;
        let points = ctx
            .store
            .history_buckets(endpoint, &path, (now - span, now + 1), CHART_BUCKETS)?;
        let model = models.resource(&path);
        let name = model.map_or_else(|| p.clone(), |m| format!("{} {p}", m.name));
        let unit = model
            .map(|m| unit_symbol(m.units.trim()).to_string())
            .unwrap_or_default();
        lines.push((name, unit, points));
    }
    let series: Vec<chart::Series<'_>> = lines
        .iter()
        .map(|(name, unit, points)| chart::Series { name, unit, points })
        .collect();
    let title = format!(
        "{} over the last {}",
        lines.iter().map(|l| l.0.as_str()).collect::<Vec<_>>().join(", "),
        RANGES.iter().find(|r| r.0 == range).map_or("", |r| r.1),
    );
    let chart = chart::lines(&title, &series, (now - span, now), time);
    let legend: Vec<(usize, String, String)> = lines
        .iter()
        .enumerate()
        .map(|(i, (name, unit, _))| (i, name.clone(), unit.clone()))
        .collect();
    let numeric: Vec<(String, String, bool)> = numeric
        .into_iter()
        .map(|p| {
            let name = p
                .parse::<ResourcePath>()
                .ok()
                .and_then(|rp| models.resource(&rp).map(|m| m.name.clone()))
                .unwrap_or_default();
            let on = charted.contains(&p);
            (p, name, on)
        })
        .collect();
    let downloads = ctx
        .store
        .device_downloads(endpoint)?
        .into_iter()
        .map(|d| (d.name, d.requests, d.bytes, time(d.last)))
        .collect();
    let catalogue = ctx.store.firmware_list(false)?;
    let label = |id: i64| {
        catalogue
            .iter()
            .find(|f| f.id == id)
            .map_or_else(|| format!("#{id} (removed)"), |f| format!("{} {}", f.name, f.version))
    };
    let mut updates = Vec::new();
    for u in ctx.store.updates_of(endpoint, 10)? {
        let steps = ctx
            .store
            .update_steps(u.id)?
            .into_iter()
            .map(|st| (time(st.ts), st.phase.as_str(), st.detail.unwrap_or_default()))
            .collect();
        updates.push(UpdateLine {
            id: u.id,
            image: label(u.firmware_id),
            phase: u.phase.as_str(),
            reason: u.reason.unwrap_or_default(),
            started: time(u.created_at),
            active: !u.phase.is_final(),
            steps,
        });
    }
    let images = catalogue
        .iter()
        .map(|f| (f.id, format!("{} {}", f.name, f.version)))
        .collect();
    let who = ctx.who()?.clone();
    render(&DevicePage {
        chrome: chrome(ctx, "Devices")?,
        d: DeviceRow {
            status: d.status.as_str(),
            last_seen: opt_time(d.summary.last_seen),
            summary: d.summary,
        },
        reg,
        tree,
        operations,
        numeric,
        charted,
        legend,
        range,
        ranges: RANGES.iter().map(|r| (r.0, r.1)).collect(),
        chart,
        events: event_lines(ctx.store.events(Some(endpoint), 10)?),
        downloads,
        updates,
        images,
        operator: who.role.allows(Role::Operator),
        admin: who.role.allows(Role::Admin),
        generated_key,
    })
}

/// Paths of a composite operation, separated by spaces or commas.
fn paths_field(f: &[(String, String)]) -> WebResult<Vec<ResourcePath>> {
    required(f, "path")?
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(WebError::from))
        .collect()
}

/// The operation form: a path (several for the composite operations), a
/// value for Write, arguments for Execute, `PATH=VALUE` lines for
/// Write-Composite. A Write goes out as its path allows unless the form
/// asks for a mode (Core §6.3.3; see `operation::write_method`).
pub fn queue_operation(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let endpoint = ctx.param("endpoint").to_string();
    let value = &typed_field(&f, "value")?.unwrap_or_default();
    let path = || -> WebResult<ResourcePath> { required(&f, "path")?.trim().parse().map_err(WebError::from) };
    let kind = match required(&f, "op")? {
        "read" => OperationKind::Read { path: path()? },
        "write" => {
            let path = path()?;
            let replace = match form::field(&f, "mode").unwrap_or("") {
                "" => None,
                "replace" => Some(true),
                "partial-update" => Some(false),
                _ => return Err(WebError::bad_request("mode is replace or partial-update")),
            };
            OperationKind::Write {
                path,
                values: vec![WriteValue {
                    path,
                    value: value.to_string(),
                }],
                replace,
            }
        }
        "write-composite" => OperationKind::WriteComposite {
            values: required(&f, "assignments")?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let (p, v) = l
                        .split_once('=')
                        .ok_or_else(|| WebError::bad_request(format!("`{}` is not PATH=VALUE", l.trim())))?;
                    Ok(WriteValue {
                        path: p.trim().parse().map_err(WebError::from)?,
                        value: v.to_string(),
                    })
                })
                .collect::<WebResult<_>>()?,
        },
        "execute" => OperationKind::Execute {
            path: path()?,
            args: (!value.is_empty()).then(|| value.to_string()),
        },
        "create" => {
            let object = path()?;
            let instance: u16 = required(&f, "instance")?
                .trim()
                .parse()
                .ok()
                .filter(|i| *i != u16::MAX)
                .ok_or_else(|| WebError::bad_request("the instance is a number from 0 to 65534"))?;
            let mut values = Vec::new();
            for (k, _) in &f {
                let Some(rid) = k.strip_prefix("res-").and_then(|r| r.parse::<u16>().ok()) else {
                    continue;
                };
                if let Some(v) = typed_field(&f, k)?.filter(|v| !v.is_empty()) {
                    let at = ResourcePath::new(&[object.object().unwrap_or(0), instance, rid])
                        .filter(|_| object.depth() == 1)
                        .ok_or_else(|| WebError::bad_request("Create takes an object path, such as /3303"))?;
                    values.push(WriteValue { path: at, value: v });
                }
            }
            OperationKind::Create { path: object, values }
        }
        "delete" => OperationKind::Delete { path: path()? },
        "write-attributes" => OperationKind::WriteAttributes {
            path: path()?,
            attributes: notification_attributes(&f)?,
        },
        "observe" => OperationKind::Observe { path: path()? },
        "cancel-observe" => OperationKind::CancelObserve { path: path()? },
        "discover" => OperationKind::Discover { path: path()? },
        "read-composite" => OperationKind::ReadComposite {
            paths: paths_field(&f)?,
        },
        "observe-composite" => OperationKind::ObserveComposite {
            paths: paths_field(&f)?,
        },
        "cancel-observe-composite" => OperationKind::CancelObserveComposite {
            paths: paths_field(&f)?,
        },
        _ => return Err(WebError::bad_request("unknown operation")),
    };
    // Back to where the operator was: the resource's row in the tree,
    // its object open.
    let p = kind.path();
    let open = p.object().map(|o| format!("&open={o}")).unwrap_or_default();
    let back = match (p.depth(), p.object()) {
        (3.., _) => format!("{open}#r{}", p.to_string().replace('/', "-")),
        (_, Some(o)) => format!("{open}#o-{o}"),
        _ => String::new(),
    };
    api::queue(ctx, &endpoint, kind, None)?;
    Ok(back_to(&endpoint, &format!("queued{back}")))
}

/// The text of a value field as `WriteValue` takes it (Core §7.4.1 text
/// forms), converted from the form's typed input where `as-FIELD` says
/// how it was entered: `time` a `datetime-local` value read in the user's
/// zone (to
/// seconds since 1970, Core Appendix C Time), `base64` bytes (to hex).
fn typed_field(f: &[(String, String)], name: &str) -> WebResult<Option<String>> {
    let Some(v) = form::field(f, name) else {
        return Ok(None);
    };
    Ok(Some(match form::field(f, &format!("as-{name}")).unwrap_or("") {
        "time" if !v.trim().is_empty() => {
            let ms = super::preferences::parse_local(v).ok_or_else(|| {
                WebError::bad_request(format!(
                    "`{}` is not a date and time such as 2026-12-06T10:30",
                    v.trim()
                ))
            })?;
            ms.div_euclid(1000).to_string()
        }
        "base64" => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|_| WebError::bad_request("the bytes are not base64"))?;
            crate::lwm2m::path::hex_bytes::encode(&bytes)
        }
        _ => v.to_string(),
    }))
}

/// `pmin`/`pmax` of the attributes form as Write-Attributes query items
/// (Core §5.1.2: periods in whole seconds, and a pmax below pmin could
/// never be met).
fn notification_attributes(f: &[(String, String)]) -> WebResult<Vec<String>> {
    let mut out = Vec::new();
    let mut periods = Vec::new();
    for name in ["pmin", "pmax"] {
        let Some(v) = form::field(f, name).map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        let n: u32 = v
            .parse()
            .map_err(|_| WebError::bad_request(format!("{name} is a whole number of seconds")))?;
        periods.push(n);
        out.push(format!("{name}={n}"));
    }
    if let [pmin, pmax] = periods[..]
        && pmax < pmin
    {
        return Err(WebError::bad_request("pmax must not be below pmin"));
    }
    if out.is_empty() {
        return Err(WebError::bad_request("give pmin, pmax or both"));
    }
    Ok(out)
}

/// The device page's "Update firmware" form.
/// After a form on the device page: back to it, with a notice.
fn back_to(endpoint: &str, done: &str) -> Reply {
    Reply::redirect(&format!("/devices/{}?done={done}", form::encode(endpoint)))
}

pub fn start_update(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let endpoint = ctx.param("endpoint").to_string();
    api::start_update(ctx, &endpoint, &[required(&f, "image")?])?;
    Ok(back_to(&endpoint, "update-started"))
}

/// The device page's cancel button of an active update.
pub fn cancel_update(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let row = api::request_update_cancel(ctx, id)?;
    Ok(back_to(&row.endpoint, "update-cancelling"))
}

pub fn set_tags(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let endpoint = ctx.param("endpoint").to_string();
    api::retag(ctx, &endpoint, form::field(&f, "tags").unwrap_or(""))?;
    Ok(back_to(&endpoint, "tagged"))
}

pub fn cancel_operation(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let row = api::cancel(ctx, id)?;
    Ok(back_to(&row.endpoint, "cancelled"))
}
