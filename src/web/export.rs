//! CSV exports of what the dashboard lists: the devices matching a filter,
//! the events matching a filter, one resource's history. RFC 4180 text
//! with a header row; values come raw and, where the page shows them
//! otherwise, readable beside them (`lwm2m::display`).
//!
//! Cells holding text a device or an operator chose are neutralised
//! against spreadsheet formula injection (OWASP "CSV Injection"): a
//! formula start (`=`, `+`, `-`, `@`, a tab or a carriage return) at the
//! cell's beginning, or right after any character a spreadsheet may take
//! for a separator (`,` `;` tab `|`, a line end: Excel splits on `;` in
//! many locales), gets a `'` before it, so a spreadsheet shows it instead
//! of evaluating it; and a cell holding any such separator is quoted, so
//! it stays one cell whatever the reader's locale.

use hyper::header::CONTENT_DISPOSITION;

use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, api, pages};
use crate::datetime::rfc3339;
use crate::lwm2m::display::display;
use crate::lwm2m::path::ResourcePath;
use crate::store::now_ms;

/// The most rows one export holds; beyond it the export is refused, not
/// cut short, so a file never silently misses rows.
pub const EXPORT_MAX: usize = 200_000;

/// Characters a spreadsheet may split a line into cells at.
const SEPARATORS: [char; 6] = [',', ';', '\t', '|', '\n', '\r'];

/// What starts a formula in a spreadsheet cell.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A text cell: formula starts neutralised at its beginning and after
/// every separator; quoted (RFC 4180 §2) when it holds a separator or a
/// quote.
fn text(s: &str) -> String {
    let mut guarded = String::with_capacity(s.len() + 2);
    let mut after_separator = true;
    for c in s.chars() {
        if after_separator && FORMULA_STARTS.contains(&c) {
            guarded.push('\'');
        }
        guarded.push(c);
        after_separator = SEPARATORS.contains(&c);
    }
    if guarded.contains(SEPARATORS) || guarded.contains('"') {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// Rows of cells as CSV with CRLF line ends (RFC 4180 §2.1).
fn csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = header.join(",");
    out.push_str("\r\n");
    for r in rows {
        out.push_str(&r.join(","));
        out.push_str("\r\n");
    }
    out
}

fn attachment(name: &str, body: String) -> Reply {
    Reply {
        status: hyper::StatusCode::OK,
        content_type: "text/csv; charset=utf-8",
        body: body.into(),
        headers: Vec::new(),
    }
    .with_header(
        CONTENT_DISPOSITION,
        format!("attachment; filename=\"{name}-{}.csv\"", &rfc3339(now_ms())[..10]),
    )
}

fn time_cell(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_default()
}

/// `GET /devices.csv`: every device the list's filter matches.
pub fn devices(ctx: &mut Ctx<'_>) -> WebResult {
    let rows = api::all_matching(ctx, EXPORT_MAX, "export them")?;
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|d| {
            let d = api::device_of(ctx, d);
            let s = d.summary;
            vec![
                text(&s.endpoint),
                d.status.as_str().to_string(),
                text(s.firmware_version.as_deref().unwrap_or("")),
                time_cell(s.last_seen),
                s.lifetime.map(|l| l.to_string()).unwrap_or_default(),
                text(&s.tags.replace(',', " ")),
                text(s.psk_identity.as_deref().unwrap_or("")),
                time_cell(Some(s.created_at)),
            ]
        })
        .collect();
    Ok(attachment(
        "devices",
        csv(
            &[
                "endpoint",
                "status",
                "firmware",
                "last_seen_utc",
                "lifetime_s",
                "tags",
                "psk_identity",
                "added_utc",
            ],
            rows.into_iter(),
        ),
    ))
}

/// `GET /events.csv`: the events the events page's filter matches, newest
/// first, each with its sentence and its stored detail.
pub fn events(ctx: &mut Ctx<'_>) -> WebResult {
    let range = (
        pages::local_date(ctx.query("from_date"))?,
        pages::local_date(ctx.query("to_date"))?,
    );
    let endpoint = ctx.query("endpoint").filter(|e| !e.is_empty());
    let kind = ctx.query("kind").filter(|k| !k.is_empty());
    let (rows, more) = ctx.store.event_page(endpoint, true, kind, range, None, EXPORT_MAX)?;
    if more {
        return Err(too_many("events", "a shorter time range or one device"));
    }
    let rows = rows.into_iter().map(|e| {
        vec![
            rfc3339(e.ts),
            text(e.endpoint.as_deref().unwrap_or("")),
            e.kind.clone(),
            text(&pages::event_summary(&e.kind, &e.detail)),
            text(&e.detail.to_string()),
        ]
    });
    Ok(attachment(
        "events",
        csv(&["time_utc", "endpoint", "kind", "summary", "detail"], rows),
    ))
}

fn too_many(what: &str, narrower: &str) -> WebError {
    WebError::new(
        hyper::StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("more than {EXPORT_MAX} {what} match: export {narrower}"),
    )
}

/// `GET /devices/{endpoint}/history.csv?path=…&range=…`: one resource's
/// values over the chart's range, oldest first, raw and readable.
pub fn history(ctx: &mut Ctx<'_>) -> WebResult {
    let endpoint = ctx.param("endpoint").to_string();
    let path: ResourcePath = ctx
        .query("path")
        .ok_or_else(|| WebError::bad_request("name the resource: path=/3303/0/5700"))?
        .parse()
        .map_err(WebError::from)?;
    let span = super::device_page::range_ms(ctx.query("range").unwrap_or("24h"))?;
    let now = now_ms();
    let (rows, more) = ctx
        .store
        .history_page(&endpoint, &path, (now - span, now + 1), None, EXPORT_MAX)?;
    if more {
        return Err(too_many("values", "a shorter range"));
    }
    let models = &ctx.web.models;
    let rows = rows.into_iter().map(|(_, v)| {
        vec![
            rfc3339(v.ts),
            v.path.to_string(),
            text(&v.value.to_text()),
            text(&display(models, &v.path, &v.value)),
        ]
    });
    let name = format!("history-{}", path.to_string().trim_start_matches('/').replace('/', "-"));
    Ok(attachment(&name, csv(&["time_utc", "path", "value", "display"], rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(text("plain"), "plain");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("two\nlines"), "\"two\nlines\"");
        assert_eq!(text("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
        for lead in ["+1", "-1+1", "@SUM(A1)", "\tx"] {
            assert!(text(lead).trim_start_matches('"').starts_with('\''), "{lead}");
        }
        // After a separator of any locale, and quoted so it stays one cell
        // (the payloads of the security review).
        assert_eq!(
            text("1.0;=1+1;=HYPERLINK(\"http://x\")"),
            "\"1.0;'=1+1;'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(text("x;=cmd|' /C calc'!A0"), "\"x;'=cmd|' /C calc'!A0\"");
        assert_eq!(text("a|@b\t-c"), "\"a|'@b\t'-c\"");
        assert_eq!(text("1.0;2"), "\"1.0;2\"");
        assert_eq!(text("v1-2"), "v1-2", "a formula start inside a word is harmless");
        assert_eq!(
            csv(&["a", "b"], vec![vec!["1".into(), text("x,y")]].into_iter()),
            "a,b\r\n1,\"x,y\"\r\n"
        );
    }
}
