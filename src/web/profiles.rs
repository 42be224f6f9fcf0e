//! Device profiles on the dashboard (`/device-profiles`) and the API
//! (`/api/v1/profiles`): reads and observations queued for every device of
//! a tag, or every device, at each registration (`lwm2m::profile`).

use askama::Template;
use hyper::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use super::pages::{Chrome, chrome, render, required};
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, form};
use crate::lwm2m::profile::{Step, parse_steps};
use crate::store::profiles::ProfileRow;
use crate::users::Role;

/// How long a profile's operations wait for their device by default: an
/// hour, past a queue-mode device's usual wake-up interval.
const DEFAULT_DEADLINE_S: u32 = 3600;

/// A new profile, as the API takes it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfile {
    pub name: String,
    /// Only devices with this tag; absent: every device.
    #[serde(default)]
    pub tag: Option<String>,
    pub steps: Vec<Step>,
    /// How long each queued operation may wait for its device (default 3600).
    #[serde(default)]
    pub deadline_s: Option<u32>,
}

/// The deadline a profile asks for, checked with its steps.
fn checked(ctx: &Ctx<'_>, p: &NewProfile) -> WebResult<u32> {
    crate::lwm2m::profile::validate(&p.steps, &ctx.web.models)?;
    let deadline_s = p.deadline_s.unwrap_or(DEFAULT_DEADLINE_S);
    if deadline_s == 0 || deadline_s > 30 * 86400 {
        return Err(WebError::bad_request("deadline_s must be 1 to 2592000"));
    }
    Ok(deadline_s)
}

fn create(ctx: &mut Ctx<'_>, p: NewProfile) -> WebResult<ProfileRow> {
    let deadline_s = checked(ctx, &p)?;
    let who = ctx.who()?.name.clone();
    let row = ctx
        .store
        .add_profile(&p.name, p.tag.as_deref(), &p.steps, deadline_s, &who)?;
    log::info!("{who} created device profile {} ({:?})", row.id, row.name);
    Ok(row)
}

fn update(ctx: &mut Ctx<'_>, p: NewProfile) -> WebResult<ProfileRow> {
    let deadline_s = checked(ctx, &p)?;
    let row = ctx
        .store
        .update_profile(ctx.id("id")?, &p.name, p.tag.as_deref(), &p.steps, deadline_s)?;
    log::info!("{} changed device profile {} ({:?})", ctx.who()?.name, row.id, row.name);
    Ok(row)
}

fn remove(ctx: &mut Ctx<'_>) -> WebResult<ProfileRow> {
    let row = ctx.store.remove_profile(ctx.id("id")?)?;
    log::info!("{} removed device profile {} ({:?})", ctx.who()?.name, row.id, row.name);
    Ok(row)
}

pub fn api_list(ctx: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&ctx.store.profiles()?))
}

pub fn api_create(ctx: &mut Ctx<'_>) -> WebResult {
    let p: NewProfile = ctx.json()?;
    Ok(Reply::json(StatusCode::CREATED, &create(ctx, p)?))
}

pub fn api_update(ctx: &mut Ctx<'_>) -> WebResult {
    let p: NewProfile = ctx.json()?;
    Ok(Reply::ok(&update(ctx, p)?))
}

pub fn api_delete(ctx: &mut Ctx<'_>) -> WebResult {
    remove(ctx)?;
    Ok(Reply::no_content())
}

#[derive(Template)]
#[template(path = "device_profiles.html")]
struct Page {
    chrome: Chrome,
    /// (profile, its steps as lines)
    profiles: Vec<(ProfileRow, Vec<String>)>,
    operator: bool,
}

pub fn page(ctx: &mut Ctx<'_>) -> WebResult {
    let profiles = ctx
        .store
        .profiles()?
        .into_iter()
        .map(|p| {
            let lines = p.steps.iter().map(Step::to_line).collect();
            (p, lines)
        })
        .collect();
    render(&Page {
        chrome: chrome(ctx, "Device profiles")?,
        profiles,
        operator: ctx.who()?.role.allows(Role::Operator),
    })
}

/// The profile form's fields as the API's body.
fn profile_form(ctx: &Ctx<'_>) -> WebResult<NewProfile> {
    let f = ctx.form();
    let steps = parse_steps(required(&f, "steps")?).map_err(WebError::bad_request)?;
    let deadline_s = match form::field(&f, "deadline_s").map(str::trim).filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => Some(
            d.parse()
                .map_err(|_| WebError::bad_request("the deadline is a whole number of seconds"))?,
        ),
    };
    Ok(NewProfile {
        name: required(&f, "name")?.to_string(),
        tag: form::field(&f, "tag").map(str::to_string),
        steps,
        deadline_s,
    })
}

pub fn page_create(ctx: &mut Ctx<'_>) -> WebResult {
    let p = profile_form(ctx)?;
    create(ctx, p)?;
    Ok(Reply::redirect("/device-profiles?done=profile-saved"))
}

pub fn page_update(ctx: &mut Ctx<'_>) -> WebResult {
    let p = profile_form(ctx)?;
    update(ctx, p)?;
    Ok(Reply::redirect("/device-profiles?done=profile-saved"))
}

pub fn page_delete(ctx: &mut Ctx<'_>) -> WebResult {
    remove(ctx)?;
    Ok(Reply::redirect("/device-profiles?done=deleted"))
}
