//! Charts drawn on the server as SVG, so pages need no script to show
//! them. Every label is escaped; the markup uses presentation attributes
//! only (no `style`), which the Content-Security-Policy allows.

use std::fmt::Write;

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;
const RIGHT: f64 = 12.0;

fn label(v: f64) -> String {
    if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.2e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A horizontal grid line at `yy` with its value-axis label `label_dy`
/// below it (the baseline of text, so about half the font's height centres it).
fn value_line(svg: &mut String, yy: f64, label_dy: f64, text: &str) {
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" class="grid"/><text x="{}" y="{:.1}" text-anchor="end" class="axis">{}</text>"#,
        W - RIGHT,
        LEFT - 4.0,
        yy + label_dy,
        escape(text)
    );
}

/// One line of a chart: its name (the legend), unit and points
/// `(time ms, value)`, oldest first.
pub struct Series<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub points: &'a [(i64, f64)],
}

/// Lines drawn at most; each has its own colour (`series-N` in the CSS).
pub const MAX_SERIES: usize = 6;

/// Ticks on the time axis.
const TIME_TICKS: usize = 5;

/// The time span to draw: the data's own span inside `(from, to)`, so an
/// hour of values asked for over a day fills the chart instead of its
/// right edge; a lone instant gets the asked window around it.
fn fitted((from, to): (i64, i64), series: &[Series<'_>]) -> (i64, i64) {
    let ts = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = ts.fold((i64::MAX, i64::MIN), |(l, h), t| (l.min(t), h.max(t)));
    if lo >= hi {
        return (from, to);
    }
    // A margin of 2% each side keeps the end points off the frame.
    let pad = (hi - lo) / 50;
    ((lo - pad).max(from), (hi + pad).min(to).max(lo + 1))
}

/// A line chart: one line per series over the time window `(from, to)`,
/// fitted to the data (see [`fitted`]); `time_label` turns a time into
/// `YYYY-MM-DD hh:mm:ss` in the reader's zone, of which the axis shows
/// what the span needs (clock times within a day, dates beyond).
pub fn lines(title: &str, series: &[Series<'_>], window: (i64, i64), time_label: impl Fn(i64) -> String) -> String {
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = escape(title)
    );
    let series = &series[..series.len().min(MAX_SERIES)];
    if series.iter().all(|s| s.points.is_empty()) {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="muted">no values in this range</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return svg;
    }
    let (t0, t1) = fitted(window, series);
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if lo == hi {
        lo -= 1.0;
        hi += 1.0;
    }
    let span_t = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span_t * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    // The value axis carries the unit when every line shares it.
    let unit = series[0].unit;
    let shared = series.iter().all(|s| s.unit == unit);
    for (i, v) in [hi, (hi + lo) / 2.0, lo].into_iter().enumerate() {
        let text = if shared && !unit.is_empty() {
            format!("{} {unit}", label(v))
        } else {
            label(v)
        };
        // The top label sits a little lower, inside the frame.
        value_line(&mut svg, y(v), if i == 0 { 8.0 } else { 4.0 }, &text);
    }
    // Within minutes the seconds matter; within a day the clock time
    // says it; beyond, the date too.
    let part = |t: i64| {
        let full = time_label(t);
        let span = t1 - t0;
        let r = if span <= 600_000 {
            11..19
        } else if span <= 86_400_000 {
            11..16
        } else {
            5..16
        };
        full.get(r).map_or(full.clone(), str::to_string)
    };
    for i in 0..TIME_TICKS {
        let t = t0 + (t1 - t0) * i as i64 / (TIME_TICKS as i64 - 1);
        let anchor = match i {
            0 => "start",
            i if i == TIME_TICKS - 1 => "end",
            _ => "middle",
        };
        let xx = x(t);
        let _ = write!(
            svg,
            r#"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" class="grid"/><text x="{xx:.1}" y="{}" text-anchor="{anchor}" class="axis">{}</text>"#,
            H - BOTTOM,
            H - 6.0,
            escape(&part(t))
        );
    }
    for (n, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        // Callers pass a few hundred points at most (history comes in
        // time slices, `Store::history_buckets`).
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" class="series series-{n}" fill="none"><title>{}</title></polyline>"#,
            path.join(" "),
            escape(s.name)
        );
        // A line needs two points; sparse series show each value as a dot too.
        if s.points.len() <= 60 {
            for &(t, v) in s.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" class="point point-{n}"/>"#,
                    x(t),
                    y(v)
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One line, as [`lines`] draws it.
pub fn line(title: &str, points: &[(i64, f64)], window: (i64, i64), time_label: impl Fn(i64) -> String) -> String {
    lines(
        title,
        &[Series {
            name: title,
            unit: "",
            points,
        }],
        window,
        time_label,
    )
}

/// Counts per time slot as columns on a zero baseline, one per slot of
/// `slot` ms from `from` (`slots` of them, empty slots drawn as nothing
/// over their label), e.g. values stored per hour over a day. A count is
/// an amount: unlike a line fitted to its values, the axis starts at 0, so
/// 2,918 values an hour do not look like a cliff next to 2,917.
pub fn columns(
    title: &str,
    counts: &[(i64, u64)],
    (from, slot, slots): (i64, i64, usize),
    slot_label: impl Fn(i64) -> String,
) -> String {
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = escape(title)
    );
    let slots = slots.max(1);
    let mut per_slot = vec![0u64; slots];
    for &(t, n) in counts {
        let i = (t - from).div_euclid(slot.max(1));
        if let Some(c) = usize::try_from(i).ok().and_then(|i| per_slot.get_mut(i)) {
            *c += n;
        }
    }
    let max = per_slot.iter().copied().max().unwrap_or(0).max(1) as f64;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + (max - v) / max * plot_h;
    for v in [max, max / 2.0, 0.0] {
        value_line(&mut svg, y(v), 4.0, &label(v.round()));
    }
    let step = (W - LEFT - RIGHT) / slots as f64;
    // A label every few columns, as many as fit (about six).
    let every = slots.div_ceil(6).max(1);
    for (i, n) in per_slot.iter().enumerate() {
        let x = LEFT + i as f64 * step;
        let start = from + i as i64 * slot;
        if *n > 0 {
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" class="bar"><title>{}: {n}</title></rect>"#,
                x + 1.0,
                y(*n as f64),
                (step - 2.0).max(1.0),
                H - BOTTOM - y(*n as f64),
                escape(&slot_label(start))
            );
        }
        if i % every == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="start" class="axis">{}</text>"#,
                x + 1.0,
                H - 6.0,
                escape(&slot_label(start))
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// At most `max` characters, the rest elided: labels must fit their column
/// (the whole text is in the label's `<title>`).
fn shortened(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Horizontal bars, e.g. devices per firmware version.
pub fn bars(title: &str, rows: &[(String, u64)]) -> String {
    let row_h = 22.0;
    let h = (rows.len().max(1) as f64) * row_h + 8.0;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = escape(title)
    );
    if rows.is_empty() {
        let _ = write!(svg, r#"<text x="8" y="18" class="muted">nothing reported yet</text>"#);
    }
    let label_w = 180.0;
    for (i, (name, n)) in rows.iter().enumerate() {
        let yy = 4.0 + i as f64 * row_h;
        let w = (W - label_w - 60.0) * (*n as f64) / max;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="axis"><title>{}</title>{}</text><rect x="{label_w}" y="{yy:.1}" width="{w:.1}" height="{}" class="bar"/><text x="{:.1}" y="{:.1}" class="axis">{n}</text>"#,
            label_w - 6.0,
            yy + 15.0,
            escape(name),
            escape(&shortened(name, 28)),
            row_h - 6.0,
            label_w + w + 4.0,
            yy + 15.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal stacked bars, one per row, with a legend: e.g. a campaign's
/// waves by device status. `segments` gives each part's CSS class and
/// name; every row has one count per segment.
pub fn stacked(title: &str, segments: &[(&str, &str)], rows: &[(String, Vec<u64>)]) -> String {
    let row_h = 22.0;
    let label_w = if rows.iter().all(|r| r.0.is_empty()) {
        0.0
    } else {
        130.0
    };
    // The legend from the left edge, on as many lines as it needs: at the
    // label column's width its six names ran past the frame ("pe…").
    // Names are measured at 8 units a character, more than the 11-unit
    // font's average.
    let mut legend = Vec::new();
    let (mut x, mut line) = (0.0, 0);
    for (class, name) in segments {
        let w = 14.0 + 8.0 * name.chars().count() as f64 + 12.0;
        if x > 0.0 && x + w > W - RIGHT {
            (x, line) = (0.0, line + 1);
        }
        legend.push((x, 4.0 + 16.0 * line as f64, *class, *name));
        x += w;
    }
    let legend_h = 20.0 + 16.0 * line as f64;
    let h = legend_h + (rows.len().max(1) as f64) * row_h + 4.0;
    let bar_w = W - label_w - 70.0;
    let max = rows.iter().map(|r| r.1.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = escape(title)
    );
    for (x, y, class, name) in legend {
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" class="{class}"/><text x="{:.1}" y="{:.1}" class="axis">{}</text>"#,
            x + 14.0,
            y + 9.0,
            escape(name)
        );
    }
    for (i, (name, counts)) in rows.iter().enumerate() {
        let yy = legend_h + i as f64 * row_h;
        if label_w > 0.0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text>"#,
                label_w - 6.0,
                yy + 15.0,
                escape(&shortened(name, 20))
            );
        }
        let total: u64 = counts.iter().sum();
        let mut x = label_w;
        for ((class, part), n) in segments.iter().zip(counts) {
            if *n == 0 {
                continue;
            }
            let w = bar_w * (*n as f64) / max;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{yy:.1}" width="{w:.1}" height="{}" class="{class}"><title>{n} {}</title></rect>"#,
                row_h - 6.0,
                escape(part)
            );
            x += w;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="axis">{total}</text>"#,
            x + 4.0,
            yy + 15.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_points_drawn() {
        let svg = bars(
            "versions",
            &[("<script>alert(1)</script>".into(), 3), ("1.0".into(), 1)],
        );
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        let stamp = |t: i64| format!("2026-12-06 {:02}:{:02}:00", t / 3_600_000, t / 60_000 % 60);
        let svg = line("t<", &[(0, 1.0), (1000, 3.0), (2000, 2.0)], (0, 2000), stamp);
        assert!(svg.contains("<polyline points=\"56.0,"), "{svg}");
        assert!(svg.contains("t&lt;"));
        assert!(line("empty", &[], (0, 1), |_| String::new()).contains("no values"));
        // A single point is placed in its window and drawn as a dot.
        let one = line("one", &[(1500, 7.0)], (1000, 2000), |t| {
            format!("2026-12-06 00:00:{:02}", t / 1000)
        });
        assert!(one.contains(r#"<circle cx="342.0" cy="104.0""#), "{one}");
        // Within minutes, the axis shows seconds.
        assert!(one.contains(">00:00:01<") && one.contains(">00:00:02<"), "{one}");
        // Half an hour of data asked for over a day fills the chart: the
        // axis runs over the data's span (clock times), not the whole day.
        let hour: Vec<(i64, f64)> = (0..=60).map(|m| (82_800_000 + m * 30_000, m as f64)).collect();
        let svg = lines(
            "temp",
            &[
                Series {
                    name: "a",
                    unit: "°C",
                    points: &hour,
                },
                Series {
                    name: "b",
                    unit: "°C",
                    points: &hour[30..],
                },
            ],
            (0, 86_400_000),
            stamp,
        );
        assert!(svg.contains(">22:59<") && svg.contains(">23:30<"), "{svg}");
        assert!(!svg.contains(">00:00<"), "the day's start is not on the axis");
        assert!(svg.contains(">60 °C<"), "the shared unit on the value axis");
        assert!(svg.contains("series-0") && svg.contains("series-1"));
        // A week shows dates.
        let week = [(0, 1.0), (6 * 86_400_000, 2.0)];
        let day = |t: i64| format!("2026-12-{:02} 10:00:00", 1 + t / 86_400_000);
        let svg = line("w", &week, (0, 7 * 86_400_000), day);
        assert!(svg.contains(">12-01 10:00<") && svg.contains(">12-07 10:00<"), "{svg}");
        // Stacked bars: widths in proportion, labels escaped, empty parts left out.
        let svg = stacked(
            "waves",
            &[("seg-ok", "ok"), ("seg-fail", "failed")],
            &[("w<1>".into(), vec![3, 1]), ("all".into(), vec![6, 0])],
        );
        assert!(svg.contains("w&lt;1&gt;") && !svg.contains("w<1>"));
        assert!(
            svg.contains(r#"width="220.0" height="16" class="seg-ok"><title>3 ok"#),
            "{svg}"
        );
        assert!(svg.contains(r#"class="seg-fail"><title>1 failed"#));
        assert_eq!(svg.matches("<title>0 ").count(), 0, "{svg}");
        // Long labels are cut to fit, whole in their title.
        let long = "v".repeat(40);
        let svg = bars("versions", &[(long.clone(), 1)]);
        assert!(
            svg.contains(&format!("<title>{long}</title>{}…<", "v".repeat(27))),
            "{svg}"
        );
    }

    /// A count per hour over a day: 24 columns on a zero baseline, so two
    /// nearly equal hours look nearly equal (a fitted line once drew them
    /// on an axis from 2,917 to 2,919).
    #[test]
    fn counts_per_hour_stand_as_columns_from_zero() {
        let hour = 3_600_000;
        let svg = columns("values", &[(2 * hour, 2917), (3 * hour, 2919)], (0, hour, 24), |t| {
            format!("{:02}:00", t / hour)
        });
        let heights: Vec<f64> = svg
            .split("<rect ")
            .skip(1)
            .filter(|r| r.contains("class=\"bar\""))
            .map(|r| {
                let i = r.find("height=\"").unwrap() + 8;
                r[i..i + r[i..].find('"').unwrap()].parse().unwrap()
            })
            .collect();
        assert_eq!(heights.len(), 2, "one column per hour with values: {svg}");
        assert!(
            (heights[0] - heights[1]).abs() < 1.0 && heights[1] > 180.0,
            "{heights:?}"
        );
        assert!(
            svg.contains(r#"text-anchor="end" class="axis">0<"#),
            "a zero baseline: {svg}"
        );
        assert!(
            svg.contains("<title>02:00: 2917</title>") && svg.contains(">20:00<"),
            "{svg}"
        );
        // Values outside the day are not drawn.
        let outside = columns("values", &[(-hour, 5), (24 * hour, 5)], (0, hour, 24), |_| {
            String::new()
        });
        assert!(!outside.contains("class=\"bar\""), "{outside}");
    }

    /// The campaign chart's legend fits the frame at its width, on more
    /// lines when it must (it ran past the edge: "pe…").
    #[test]
    fn a_legend_wraps_inside_the_frame() {
        let names = [
            "verified",
            "failed",
            "cancelled",
            "installing",
            "downloading",
            "pending",
            "retrying later",
        ];
        let segments: Vec<(&str, &str)> = names.iter().map(|n| ("seg", *n)).collect();
        let svg = stacked("waves", &segments, &[("wave 1".into(), vec![1; names.len()])]);
        for name in names {
            let at = svg.find(&format!(">{name}</text>")).unwrap();
            let x: f64 = {
                let open = svg[..at].rfind("<text x=\"").unwrap() + 9;
                svg[open..open + svg[open..].find('"').unwrap()].parse().unwrap()
            };
            assert!(x + 8.0 * name.len() as f64 <= W, "{name} at {x} runs past {W}");
        }
        assert!(svg.contains(r#"y="29.0" class="axis">"#), "a second legend line: {svg}");
    }
}
