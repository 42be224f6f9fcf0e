//! What each operator chooses for themselves: the time zone the dashboard
//! shows times in (UTC unless they pick their own), the device list's
//! columns, and saved device-list filters.
//!
//! The time zone applies to the whole rendering of one page: the request's
//! handler runs with it set for its thread (`Zone::enter`), and every time
//! a page shows goes through [`show`]; API answers keep Unix milliseconds.

use std::cell::RefCell;

use jiff::tz::TimeZone;

use super::pages::required;
use super::reply::{Reply, WebError, WebResult};
use super::{Ctx, form};
use crate::datetime::rfc3339;
use crate::store::Store;

/// The setting keys.
const TIME_ZONE: &str = "time_zone";
const DEVICE_COLUMNS: &str = "device_columns";

thread_local! {
    /// The signed-in user's zone while their page renders (None: UTC).
    static CURRENT: RefCell<Option<(TimeZone, String)>> = const { RefCell::new(None) };
}

/// Sets the user's zone for this thread until dropped.
pub struct Zone(());

impl Zone {
    /// For a page request by `user` (none for API callers: they get UTC).
    pub fn enter(store: &Store, user: Option<&str>) -> Zone {
        let zone = user
            .and_then(|u| store.setting(u, TIME_ZONE).ok().flatten())
            .and_then(|name| TimeZone::get(&name).ok().map(|tz| (tz, name)));
        CURRENT.with(|c| *c.borrow_mut() = zone);
        Zone(())
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// The zone times are shown in, as the column headers name it.
pub fn zone_label() -> String {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map_or_else(|| "UTC".to_string(), |(_, n)| n.clone())
    })
}

/// Unix ms as `YYYY-MM-DD hh:mm:ss` in the current zone.
pub fn show(ms: i64) -> String {
    let zoned = CURRENT.with(|c| {
        let c = c.borrow();
        let (tz, _) = c.as_ref()?;
        let ts = jiff::Timestamp::from_millisecond(ms).ok()?;
        Some(ts.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string())
    });
    zoned.unwrap_or_else(|| {
        let s = rfc3339(ms);
        // "2026-11-23T07:09:15Z" → "2026-11-23 07:09:15"
        s.get(..19).map_or(s.clone(), |t| t.replace('T', " "))
    })
}

/// A `datetime-local` form value (`2026-12-06T10:30`, seconds optional)
/// read in the current zone, as Unix ms.
pub fn parse_local(s: &str) -> Option<i64> {
    let civil: jiff::civil::DateTime = s.trim().parse().ok()?;
    let tz = CURRENT
        .with(|c| c.borrow().as_ref().map(|(tz, _)| tz.clone()))
        .unwrap_or(TimeZone::UTC);
    Some(civil.to_zoned(tz).ok()?.timestamp().as_millisecond())
}

/// `POST /profile/time-zone`: `zone` is `UTC` or an IANA name (the
/// browser's own, filled in by the page's script, or one picked on the
/// profile page); `back` the page to return to.
pub fn set_time_zone(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let zone = form::field(&f, "zone").map(str::trim).unwrap_or("");
    if zone.is_empty() {
        return Err(WebError::bad_request(
            "your browser did not say its time zone: pick one on your profile page",
        ));
    }
    if TimeZone::get(zone).is_err() {
        return Err(WebError::bad_request(format!(
            "{zone:?} is not a time zone (e.g. Europe/Berlin)"
        )));
    }
    let who = ctx.who()?.name.clone();
    ctx.store.set_setting(&who, TIME_ZONE, zone)?;
    Ok(Reply::redirect(&back(&f)))
}

/// Where a settings form returns: its `back` field when that is a path on
/// this server (never another origin: `//host` and `/\host` are refused).
fn back(f: &[(String, String)]) -> String {
    form::field(f, "back")
        .filter(|b| b.starts_with('/') && !b.starts_with("//") && !b.starts_with("/\\"))
        .unwrap_or("/")
        .to_string()
}

/// Every zone of the bundled database, for the profile page's choice.
pub fn zone_names() -> Vec<String> {
    let mut names: Vec<String> = jiff::tz::db().available().map(|n| n.to_string()).collect();
    names.sort();
    names
}

/// The user's zone name (`UTC` unless they chose another).
pub fn user_zone(store: &Store, user: &str) -> WebResult<String> {
    Ok(store.setting(user, TIME_ZONE)?.unwrap_or_else(|| "UTC".into()))
}

/// The device list's optional columns: (key, header).
pub const COLUMNS: &[(&str, &str)] = &[
    ("status", "Status"),
    ("firmware", "Firmware"),
    ("model", "Model"),
    ("last_seen", "Last seen"),
    ("lifetime", "Lifetime"),
    ("signal", "Signal"),
    ("battery", "Battery"),
    ("tags", "Tags"),
];

/// What the device list shows before a user chooses.
const DEFAULT_COLUMNS: &[&str] = &["status", "firmware", "last_seen", "lifetime", "tags"];

/// The columns `user` chose, in the list's order.
pub fn device_columns(store: &Store, user: &str) -> WebResult<Vec<&'static str>> {
    let chosen = store.setting(user, DEVICE_COLUMNS)?;
    Ok(COLUMNS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| match &chosen {
            Some(c) => c.split(',').any(|x| x == *k),
            None => DEFAULT_COLUMNS.contains(k),
        })
        .collect())
}

/// `POST /profile/columns`: the ticked `column` fields.
pub fn set_columns(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let mut chosen = Vec::new();
    for (k, v) in &f {
        if k == "column" {
            let known = COLUMNS
                .iter()
                .find(|(c, _)| c == v)
                .ok_or_else(|| WebError::bad_request(format!("no column {v:?}")))?;
            chosen.push(known.0);
        }
    }
    let who = ctx.who()?.name.clone();
    ctx.store.set_setting(&who, DEVICE_COLUMNS, &chosen.join(","))?;
    Ok(Reply::redirect(&back(&f)))
}

/// `POST /devices/filters`: save the list's current filter under a name.
pub fn save_filter(ctx: &mut Ctx<'_>) -> WebResult {
    let f = ctx.form();
    let query = form::field(&f, "query")
        .unwrap_or("")
        .trim_start_matches('?')
        .to_string();
    // Only the list's own parameters, so a saved filter is a device list.
    let kept: Vec<(String, String)> = form::urlencoded(&query)
        .into_iter()
        .filter(|(k, v)| {
            ["q", "status", "tag", "firmware", "sort", "order", "limit"].contains(&k.as_str()) && !v.is_empty()
        })
        .collect();
    if kept.is_empty() {
        return Err(WebError::bad_request("filter the list first: there is nothing to save"));
    }
    let query = kept
        .iter()
        .map(|(k, v)| format!("{k}={}", form::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let who = ctx.who()?.name.clone();
    ctx.store.save_filter(&who, required(&f, "name")?, &query)?;
    Ok(Reply::redirect(&format!("/devices?{query}&done=filter-saved")))
}

/// `POST /devices/filters/{id}/delete`.
pub fn delete_filter(ctx: &mut Ctx<'_>) -> WebResult {
    let id = ctx.id("id")?;
    let who = ctx.who()?.name.clone();
    ctx.store.remove_saved_filter(&who, id)?;
    Ok(Reply::redirect("/devices?done=deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_the_chosen_zone_and_forms_read_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        // 2026-07-01 12:00:00 UTC: summer time in Berlin (UTC+2).
        let ms = 1_782_907_200_000;
        {
            let _z = Zone::enter(&s, Some("ann"));
            assert_eq!(
                (show(ms).as_str(), zone_label().as_str()),
                ("2026-07-01 12:00:00", "UTC")
            );
            assert_eq!(parse_local("2026-07-01T12:00"), Some(ms));
        }
        s.set_setting("ann", TIME_ZONE, "Europe/Berlin").unwrap();
        {
            let _z = Zone::enter(&s, Some("ann"));
            assert_eq!(show(ms), "2026-07-01 14:00:00");
            assert_eq!(zone_label(), "Europe/Berlin");
            assert_eq!(parse_local("2026-07-01T14:00:00"), Some(ms));
            // Another user, and an API caller, see UTC.
            let _other = Zone::enter(&s, None);
            assert_eq!(show(ms), "2026-07-01 12:00:00");
        }
        assert_eq!(zone_label(), "UTC", "the zone ends with the request");
        assert_eq!(parse_local("not a date"), None);
        assert!(zone_names().iter().any(|z| z == "Europe/Berlin"));
    }

    #[test]
    fn columns_default_until_chosen_and_back_stays_on_this_server() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        assert_eq!(device_columns(&s, "ann").unwrap(), DEFAULT_COLUMNS);
        s.set_setting("ann", DEVICE_COLUMNS, "tags,signal,battery").unwrap();
        assert_eq!(device_columns(&s, "ann").unwrap(), ["signal", "battery", "tags"]);
        let f = |b: &str| vec![("back".to_string(), b.to_string())];
        assert_eq!(back(&f("/devices?tag=x")), "/devices?tag=x");
        for evil in ["//evil.example/", "/\\evil.example", "https://evil.example/", ""] {
            assert_eq!(back(&f(evil)), "/", "{evil}");
        }
    }
}
