//! Campaigns on the web: the REST API (`/api/v1/campaigns…`) and the
//! dashboard's campaign pages, one domain in one file. Both make and
//! command campaigns through the store as the CLI does; the server's
//! campaign task acts on them.

use askama::Template;
use hyper::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;

use super::chart;
use super::form;
use super::pages::{Chrome, chrome, opt_time, render, required, time};
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, api};
use crate::campaign::{Request, Target, WaveCounts};
use crate::store::{CampaignReport, CampaignRow, Command, MemberRow, MemberStatus, UpdateStep};
use crate::users::Role;

// ---- API -----------------------------------------------------------------------

/// A campaign in a list: the row and its totals.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CampaignItem {
    #[serde(flatten)]
    pub campaign: CampaignRow,
    pub totals: WaveCounts,
    pub skipped: u64,
}

/// A page of a campaign's devices.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MemberPage {
    pub devices: Vec<MemberRow>,
    /// The offset of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// One device of a campaign with its latest update's timeline.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MemberTimeline {
    #[serde(flatten)]
    pub member: MemberRow,
    pub steps: Vec<UpdateStep>,
}

pub(super) fn create(ctx: &mut Ctx<'_>, req: &Request) -> WebResult<i64> {
    let who = ctx.who()?.name.clone();
    let id = crate::shell::campaign::create(ctx.store, req, &who)?;
    log::info!("{who} created campaign {id} ({:?}) of {}", req.name, req.image);
    Ok(id)
}

fn command(ctx: &mut Ctx<'_>, id: i64, command: Command) -> WebResult<CampaignRow> {
    let who = ctx.who()?.name.clone();
    match ctx.store.campaign_command(id, command, &who)? {
        Ok(row) => {
            log::info!("{who}: campaign {id} {}", command.as_str());
            Ok(row)
        }
        Err(reason) => Err(WebError::new(StatusCode::CONFLICT, "conflict", reason)),
    }
}

pub fn list(ctx: &mut Ctx<'_>) -> WebResult {
    Ok(Reply::ok(&items(ctx)?))
}

fn items(ctx: &mut Ctx<'_>) -> WebResult<Vec<CampaignItem>> {
    let mut out = Vec::new();
    for campaign in ctx.store.campaigns(100)? {
        let counts = ctx.store.campaign_counts(campaign.id, campaign.plan.waves.len())?;
        out.push(CampaignItem {
            totals: crate::campaign::sum(&counts.waves),
            skipped: counts.skipped,
            campaign,
        });
    }
    Ok(out)
}

pub fn post(ctx: &mut Ctx<'_>) -> WebResult {
    let req: Request = ctx.json()?;
    let id = create(ctx, &req)?;
    Ok(Reply::json(StatusCode::CREATED, &ctx.store.campaign_report(id)?))
}

pub fn get(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    Ok(Reply::ok(&ctx.store.campaign_report(id)?))
}

fn status_filter(ctx: &Ctx<'_>) -> WebResult<Option<MemberStatus>> {
    match ctx.query("status") {
        None => Ok(None),
        Some(s) => MemberStatus::parse(s)
            .map(Some)
            .ok_or_else(|| WebError::bad_request(format!("no device status {s:?}"))),
    }
}

fn offset(ctx: &Ctx<'_>) -> WebResult<usize> {
    match ctx.query("offset") {
        None => Ok(0),
        Some(o) => o
            .parse()
            .map_err(|_| WebError::bad_request("offset must be a whole number")),
    }
}

fn member_page(ctx: &mut Ctx<'_>, id: i64, limit: usize) -> WebResult<MemberPage> {
    ctx.store.campaign(id)?;
    let status = status_filter(ctx)?;
    let offset = offset(ctx)?;
    let mut devices = ctx.store.campaign_members(id, status, limit + 1, offset)?;
    let next_offset = (devices.len() > limit).then_some(offset + limit);
    devices.truncate(limit);
    Ok(MemberPage { devices, next_offset })
}

pub fn devices(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let limit = api::limit(ctx)?;
    Ok(Reply::ok(&member_page(ctx, id, limit)?))
}

pub fn device(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let member = ctx.store.campaign_member(id, ctx.param("endpoint"))?;
    let steps = match member.update_id {
        Some(u) => ctx.store.update_steps(u)?,
        None => Vec::new(),
    };
    Ok(Reply::ok(&MemberTimeline { member, steps }))
}

fn api_command(ctx: &mut Ctx<'_>, c: Command) -> WebResult {
    let id = ctx.id("id")?;
    command(ctx, id, c)?;
    Ok(Reply::ok(&ctx.store.campaign_report(id)?))
}

pub fn pause(ctx: &mut Ctx<'_>) -> WebResult {
    api_command(ctx, Command::Pause)
}

pub fn resume(ctx: &mut Ctx<'_>) -> WebResult {
    api_command(ctx, Command::Resume)
}

pub fn cancel(ctx: &mut Ctx<'_>) -> WebResult {
    api_command(ctx, Command::Cancel)
}

pub fn retry(ctx: &mut Ctx<'_>) -> WebResult {
    api_command(ctx, Command::RetryFailed)
}

/// What the live stream sends: the campaign's report, whenever it changed.
pub fn stream_news(store: &mut crate::store::Store, id: i64) -> crate::Result<serde_json::Value> {
    Ok(serde_json::to_value(store.campaign_report(id)?).expect("serialises"))
}

// ---- pages ---------------------------------------------------------------------

/// The segments of a progress bar, in drawing order, with their CSS class.
const SEGMENTS: [(&str, &str); 6] = [
    ("seg-ok", "verified"),
    ("seg-fail", "failed"),
    ("seg-cancel", "cancelled"),
    ("seg-install", "installing"),
    ("seg-active", "downloading"),
    ("seg-pending", "pending"),
];

fn segments(w: &WaveCounts) -> Vec<u64> {
    vec![
        w.succeeded,
        w.failed,
        w.cancelled,
        w.installing,
        w.downloading,
        w.pending,
    ]
}

/// The campaign's progress: one stacked bar per wave and one for all.
fn progress_chart(r: &CampaignReport) -> String {
    let mut rows: Vec<(String, Vec<u64>)> = r
        .counts
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("wave {} ({})", i + 1, r.campaign.plan.waves[i]), segments(w)))
        .collect();
    rows.push(("all".into(), segments(&r.totals)));
    chart::stacked("Campaign progress by wave", &SEGMENTS, &rows)
}

struct ItemView {
    item: CampaignItem,
    chart: String,
    created: String,
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct Campaigns {
    chrome: Chrome,
    campaigns: Vec<ItemView>,
    images: Vec<(i64, String)>,
    operator: bool,
}

pub fn page_list(ctx: &mut Ctx<'_>) -> WebResult {
    let campaigns = items(ctx)?
        .into_iter()
        .map(|item| {
            let rows = [(String::new(), segments(&item.totals))];
            ItemView {
                chart: chart::stacked(&format!("Progress of {}", item.campaign.name), &SEGMENTS, &rows),
                created: time(item.campaign.created_at),
                item,
            }
        })
        .collect();
    let images = ctx
        .store
        .firmware_list(false)?
        .into_iter()
        .map(|f| (f.id, format!("{} ({})", f.name, f.version)))
        .collect();
    render(&Campaigns {
        chrome: chrome(ctx, "Campaigns")?,
        campaigns,
        images,
        operator: ctx.who()?.role.allows(Role::Operator),
    })
}

/// A form field that may be blank.
fn optional(f: &[(String, String)], name: &str) -> Option<String> {
    form::field(f, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn number<T: std::str::FromStr>(f: &[(String, String)], name: &str) -> WebResult<Option<T>> {
    optional(f, name)
        .map(|v| {
            v.parse()
                .map_err(|_| WebError::bad_request(format!("{name}: {v:?} is not a number")))
        })
        .transpose()
}

pub fn page_create(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let waves = match optional(&f, "waves") {
        None => Vec::new(),
        Some(w) => w
            .split(',')
            .map(|s| {
                s.parse()
                    .map_err(|e: String| WebError::bad_request(format!("waves: {e}")))
            })
            .collect::<WebResult<_>>()?,
    };
    let devices = optional(&f, "devices")
        .map(|d| {
            d.split([',', ' ', '\n', '\r'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let req = Request {
        name: required(&f, "name")?.to_string(),
        image: required(&f, "image")?.to_string(),
        target: Target {
            devices,
            tag: optional(&f, "tag"),
            firmware_version: optional(&f, "from_version"),
            model: optional(&f, "model"),
            all: form::field(&f, "all") == Some("on"),
        },
        waves,
        success_threshold: number(&f, "success_threshold")?,
        error_threshold: number(&f, "error_threshold")?,
        confirm_waves: form::field(&f, "confirm_waves") == Some("on"),
        max_concurrent: number(&f, "max_concurrent")?,
        window: optional(&f, "window"),
        time_zone: optional(&f, "time_zone"),
        late_joiners: form::field(&f, "late_joiners") == Some("on"),
    };
    let id = create(ctx, &req)?;
    Ok(Reply::redirect(&format!("/campaigns/{id}?done=campaign-created")))
}

struct MemberView {
    m: MemberRow,
    wave: String,
    phase: &'static str,
    bytes: String,
}

struct WaveView {
    number: usize,
    size: String,
    counts: WaveCounts,
    current: bool,
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    chrome: Chrome,
    r: CampaignReport,
    chart: String,
    waves: Vec<WaveView>,
    steps: Vec<(String, &'static str, usize, String)>,
    members: Vec<MemberView>,
    status: String,
    statuses: Vec<&'static str>,
    next: Option<String>,
    operator: bool,
    finished: String,
    plan: String,
}

pub fn page(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let r = ctx.store.campaign_report(id)?;
    let page = member_page(ctx, id, 100)?;
    let status = ctx.query("status").unwrap_or("").to_string();
    let next = page
        .next_offset
        .map(|o| format!("/campaigns/{id}?status={}&offset={o}", form::encode(&status)));
    let p = &r.campaign.plan;
    let plan = format!(
        "next wave at {}% verified; stops over {}% failed in a wave; at most {} downloading{}{}{}",
        p.success_threshold,
        p.error_threshold,
        p.max_concurrent,
        p.window
            .as_ref()
            .map(|w| format!("; starts only within {}", w.span()))
            .unwrap_or_default(),
        if p.confirm_waves {
            "; each wave confirmed by a person"
        } else {
            ""
        },
        if p.late_joiners {
            "; devices provisioned later join"
        } else {
            ""
        },
    );
    render(&CampaignPage {
        chrome: chrome(ctx, "Campaigns")?,
        chart: progress_chart(&r),
        waves: r
            .counts
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveView {
                number: i + 1,
                size: p.waves[i].to_string(),
                counts: *w,
                current: i + 1 == r.campaign.wave,
            })
            .collect(),
        steps: r
            .steps
            .iter()
            .map(|s| {
                (
                    time(s.ts),
                    s.state.as_str(),
                    s.wave,
                    s.detail.clone().unwrap_or_default(),
                )
            })
            .collect(),
        members: page
            .devices
            .into_iter()
            .map(|m| MemberView {
                wave: m.wave.map(|w| w.to_string()).unwrap_or_else(|| "–".into()),
                phase: m.phase.map_or("", |p| p.as_str()),
                bytes: super::pages::human_size(m.bytes),
                m,
            })
            .collect(),
        statuses: MemberStatus::ALL.iter().map(|s| s.as_str()).collect(),
        status,
        next,
        operator: ctx.who()?.role.allows(Role::Operator),
        finished: opt_time(r.campaign.finished_at),
        plan,
        r,
    })
}

fn page_command(ctx: &mut Ctx<'_>, c: Command) -> WebResult {
    let id = ctx.id("id")?;
    command(ctx, id, c)?;
    Ok(Reply::redirect(&format!(
        "/campaigns/{id}?done=campaign-{}",
        match c {
            Command::Pause => "paused",
            Command::Resume => "resumed",
            Command::Cancel => "cancelled",
            Command::RetryFailed => "retried",
        }
    )))
}

pub fn page_pause(ctx: &mut Ctx<'_>) -> WebResult {
    page_command(ctx, Command::Pause)
}

pub fn page_resume(ctx: &mut Ctx<'_>) -> WebResult {
    page_command(ctx, Command::Resume)
}

pub fn page_cancel(ctx: &mut Ctx<'_>) -> WebResult {
    page_command(ctx, Command::Cancel)
}

pub fn page_retry(ctx: &mut Ctx<'_>) -> WebResult {
    page_command(ctx, Command::RetryFailed)
}
