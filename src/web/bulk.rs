//! Bulk actions on the devices list: one action (queue an operation, add
//! or remove a tag, update firmware through a campaign, remove) on the
//! devices ticked on the page or on every device matching the list's
//! filter. Nothing happens until the operator has seen how many devices it
//! touches: the first post answers with a confirmation page showing the
//! count, the second carries that count back and acts only if the
//! selection still has exactly that many devices.

use askama::Template;

use super::pages::{Chrome, chrome, render, required};
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, api, form};
use crate::campaign::{Request, Target};
use crate::lwm2m::operation::{OperationKind, WriteValue};
use crate::lwm2m::path::ResourcePath;
use crate::store::now_ms;
use crate::store::tags::Tags;
use crate::users::Role;

/// The most devices one bulk action may touch; a larger change is a
/// campaign's work (waves, pauses) or a narrower filter's.
pub const BULK_MAX: usize = 100_000;

/// What a bulk action does, read from the form.
enum Action {
    Queue(OperationKind),
    AddTag(Tags),
    RemoveTag(Tags),
    Update(String),
    Remove,
}

impl Action {
    fn from_form(f: &[(String, String)]) -> WebResult<Action> {
        let path = || -> WebResult<ResourcePath> { required(f, "path")?.trim().parse().map_err(WebError::from) };
        let value = form::field(f, "value").unwrap_or("");
        let tag = || -> WebResult<Tags> {
            let t = Tags::parse(required(f, "tag_name")?)?;
            if t.iter().next().is_none() {
                return Err(WebError::bad_request("name the tag"));
            }
            Ok(t)
        };
        Ok(match required(f, "action")? {
            "read" => Action::Queue(OperationKind::Read { path: path()? }),
            "observe" => Action::Queue(OperationKind::Observe { path: path()? }),
            "cancel-observe" => Action::Queue(OperationKind::CancelObserve { path: path()? }),
            "write" => {
                let path = path()?;
                Action::Queue(OperationKind::Write {
                    path,
                    values: vec![WriteValue {
                        path,
                        value: value.to_string(),
                    }],
                    replace: None,
                })
            }
            "execute" => Action::Queue(OperationKind::Execute {
                path: path()?,
                args: (!value.is_empty()).then(|| value.to_string()),
            }),
            "add-tag" => Action::AddTag(tag()?),
            "remove-tag" => Action::RemoveTag(tag()?),
            "update" => Action::Update(required(f, "image")?.to_string()),
            "remove" => Action::Remove,
            _ => return Err(WebError::bad_request("unknown bulk action")),
        })
    }

    /// The action in words, for the confirmation ("Read /3/0").
    fn describe(&self) -> String {
        match self {
            Action::Queue(OperationKind::Write { path, values, .. }) => {
                format!("Write {:?} to {path}", values.first().map_or("", |v| v.value.as_str()))
            }
            Action::Queue(OperationKind::Execute { path, args }) => match args {
                Some(a) => format!("Execute {path} with arguments {a:?}"),
                None => format!("Execute {path}"),
            },
            Action::Queue(k) => {
                let name = k.name().replace('-', " ");
                let mut c = name.chars();
                let name = c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect());
                format!("{name} {}", k.path())
            }
            Action::AddTag(t) => format!("Add the tag {t}"),
            Action::RemoveTag(t) => format!("Remove the tag {t}"),
            Action::Update(image) => format!("Update firmware to image {image} (one campaign)"),
            Action::Remove => "Remove the devices, their values and keys".into(),
        }
    }
}

#[derive(Template)]
#[template(path = "bulk_confirm.html")]
struct Confirm {
    chrome: Chrome,
    what: String,
    count: usize,
    changed: bool,
    sample: Vec<String>,
    /// The posted fields to carry to the confirming post.
    fields: Vec<(String, String)>,
    action_url: String,
    back: String,
    danger: bool,
}

/// The devices the form selected: the ticked endpoints (`scope=selected`),
/// or every device matching the list's filter (the query string), in the
/// list's order.
fn selection(ctx: &mut Ctx<'_>, f: &[(String, String)]) -> WebResult<Vec<String>> {
    if form::field(f, "scope") != Some("filter") {
        let mut eps: Vec<String> = f.iter().filter(|(k, _)| k == "ep").map(|(_, v)| v.clone()).collect();
        eps.sort();
        eps.dedup();
        if eps.len() > BULK_MAX {
            return Err(WebError::bad_request(format!("at most {BULK_MAX} devices at once")));
        }
        return Ok(eps);
    }
    Ok(
        api::all_matching(ctx, BULK_MAX, "act on them, or update them with a campaign")?
            .into_iter()
            .map(|d| d.endpoint)
            .collect(),
    )
}

/// `POST /devices/bulk`: confirm, then act.
pub fn bulk(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let action = Action::from_form(&f)?;
    let who = ctx.who()?.clone();
    if matches!(action, Action::Remove) && !who.role.allows(Role::Admin) {
        return Err(WebError::forbidden("removing devices needs the admin role"));
    }
    if let Action::Queue(kind) = &action {
        kind.validate(&ctx.web.models)?;
    }
    let endpoints = selection(ctx, &f)?;
    if endpoints.is_empty() {
        return Err(WebError::bad_request(
            "no devices selected: tick some, or choose every device matching the filter",
        ));
    }
    let filter = match super::pages::list_filters(ctx) {
        f if f.is_empty() => String::new(),
        f => format!("?{}", f.join("&")),
    };
    let confirmed: Option<usize> = form::field(&f, "confirm").and_then(|c| c.parse().ok());
    if confirmed != Some(endpoints.len()) {
        return render(&Confirm {
            chrome: chrome(ctx, "Devices")?,
            what: action.describe(),
            count: endpoints.len(),
            changed: confirmed.is_some(),
            sample: endpoints.iter().take(10).cloned().collect(),
            fields: f.into_iter().filter(|(k, _)| k != "csrf" && k != "confirm").collect(),
            action_url: format!("/devices/bulk{filter}"),
            back: format!("/devices{filter}"),
            danger: matches!(action, Action::Remove),
        });
    }
    let n = endpoints.len();
    let what = action.describe();
    let done = match action {
        Action::Queue(kind) => {
            let deadline = now_ms() + ctx.web.lwm2m.operation_deadline_s as i64 * 1000;
            let attempts = ctx.web.lwm2m.operation_max_attempts;
            ctx.store.queue_operations(&endpoints, &kind, 1, deadline, attempts)?;
            "bulk-queued"
        }
        Action::AddTag(t) => {
            ctx.store.change_tags(&endpoints, &t, &Tags::default())?;
            "tagged"
        }
        Action::RemoveTag(t) => {
            ctx.store.change_tags(&endpoints, &Tags::default(), &t)?;
            "tagged"
        }
        Action::Update(image) => {
            let req = Request {
                name: format!("bulk update of {n} devices by {}", who.name),
                image,
                target: Target {
                    devices: endpoints,
                    ..Target::default()
                },
                waves: Vec::new(),
                success_threshold: None,
                error_threshold: None,
                confirm_waves: false,
                max_concurrent: None,
                window: None,
                time_zone: None,
                late_joiners: false,
            };
            let id = super::campaigns::create(ctx, &req)?;
            log::info!("{} bulk: {what} on {n} devices", who.name);
            return Ok(Reply::redirect(&format!("/campaigns/{id}?done=campaign-created")));
        }
        Action::Remove => {
            for ep in &endpoints {
                ctx.store.remove_device(ep)?;
            }
            "deleted"
        }
    };
    log::info!("{} bulk: {what} on {n} devices", who.name);
    let sep = if filter.is_empty() { "?" } else { "&" };
    Ok(Reply::redirect(&format!("/devices{filter}{sep}done={done}")))
}
