//! The self-contained HTML report of a load run: inline SVG charts and tables, no scripts, no network.
//!
//! Charts: throughput over time (target, sent, final outcomes), latency percentiles over time per status,
//! the status distribution per channel, per-batch health (acked, lost, not sent) and the generator's
//! lateness. Every chart is a `<figure class="chart" data-chart="…" data-points="N">`, N being the data
//! points drawn.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::load::StoredRun;
use crate::load::gate::Verdict;
use crate::load::report::{StatusRow, status_rows};
use crate::load::results::{LOST, NOT_SENT};
use crate::model::Status;
use crate::store::RunEventRow;

const W: f64 = 880.0;
const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;

/// Series colours (also what the rendering test looks for).
pub const BLUE: &str = "#1f77b4";
pub const GREEN: &str = "#2ca02c";
pub const RED: &str = "#d62728";
pub const ORANGE: &str = "#ff7f0e";
pub const GREY: &str = "#7f7f7f";
const STATUS_COLOURS: [&str; 10] =
    ["#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#bcbd22", "#ff7f0e", "#d62728", "#8c564b", "#e377c2", "#7f7f7f"];

struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round step for about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Axes, grid and labels; `categories` label bar slots instead of numeric x ticks.
fn frame(
    out: &mut String,
    x_max: f64,
    y_max: f64,
    x_label: &str,
    y_label: &str,
    categories: Option<&[String]>,
) -> (f64, f64) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let (xs, ys) = (tick_step(x_max), tick_step(y_max));
    let (x_top, y_top) = ((x_max / xs).ceil().max(1.0) * xs, (y_max / ys).ceil().max(1.0) * ys);
    let _ = write!(out, r##"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">"##);
    let mut y = 0.0;
    while y <= y_top + 1e-9 {
        let py = TOP + ph - y / y_top * ph;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            num(y)
        );
        y += ys;
    }
    if let Some(cats) = categories {
        // At most about a dozen labels: every k-th slot.
        let slot = pw / cats.len().max(1) as f64;
        let every = cats.len().div_ceil(12).max(1);
        for (i, c) in cats.iter().enumerate().step_by(every) {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"##,
                LEFT + (i as f64 + 0.5) * slot,
                TOP + ph + 16.0,
                esc(c)
            );
        }
    }
    let mut x = 0.0;
    while categories.is_none() && x <= x_top + 1e-9 {
        let px = LEFT + x / x_top * pw;
        let _ = write!(
            out,
            r##"<text x="{px:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"##,
            TOP + ph + 16.0,
            num(x)
        );
        x += xs;
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#999"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#999"/><text x="{}" y="{}" text-anchor="middle" class="axis">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" class="axis">{}</text>"##,
        TOP + ph,
        W - RIGHT,
        TOP + ph,
        TOP + ph,
        LEFT + pw / 2.0,
        H - 4.0,
        esc(x_label),
        TOP + ph / 2.0,
        esc(y_label)
    );
    (pw / x_top, ph / y_top)
}

fn legend(out: &mut String, items: &[(&str, &str)]) {
    out.push_str(r#"<div class="legend">"#);
    for (name, colour) in items {
        let _ = write!(out, r#"<span><i style="background:{colour}"></i>{}</span>"#, esc(name));
    }
    out.push_str("</div>");
}

fn line_chart(id: &str, title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut out = format!(
        r#"<figure class="chart" data-chart="{id}" data-points="{points}"><figcaption>{}</figcaption>"#,
        esc(title)
    );
    let (sx, sy) = frame(&mut out, x_max, y_max, x_label, y_label, None);
    let base = TOP + (H - TOP - BOTTOM);
    for s in series {
        let pts: Vec<String> =
            s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", LEFT + x * sx, base - y * sy)).collect();
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2.5"{dash} points="{}"><title>{}</title></polyline>"#,
            s.colour,
            pts.join(" "),
            esc(s.name)
        );
    }
    out.push_str("</svg>");
    legend(&mut out, &series.iter().map(|s| (s.name, s.colour)).collect::<Vec<_>>());
    out.push_str("</figure>");
    out
}

/// Stacked bars: one bar per category, one segment per series.
fn stacked_bars(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, &str, Vec<f64>)],
) -> String {
    let points = categories.len() * series.len();
    let y_max = (0..categories.len()).map(|i| series.iter().map(|s| s.2[i]).sum::<f64>()).fold(0.0, f64::max);
    let mut out = format!(
        r#"<figure class="chart" data-chart="{id}" data-points="{points}"><figcaption>{}</figcaption>"#,
        esc(title)
    );
    let n = categories.len().max(1) as f64;
    let (_, sy) = frame(&mut out, n, y_max, x_label, y_label, Some(categories));
    let base = TOP + (H - TOP - BOTTOM);
    let slot = (W - LEFT - RIGHT) / n;
    let width = (slot * 0.8).max(1.0);
    for (i, cat) in categories.iter().enumerate() {
        let mut y = base;
        for (name, colour, values) in series {
            let h = values[i] * sy;
            if h > 0.0 {
                let _ = write!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{width:.1}" height="{h:.1}" fill="{colour}"><title>{} {}: {}</title></rect>"#,
                    LEFT + i as f64 * slot + (slot - width) / 2.0,
                    y - h,
                    esc(cat),
                    esc(name),
                    num(values[i])
                );
            }
            y -= h;
        }
    }
    out.push_str("</svg>");
    legend(&mut out, &series.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>());
    out.push_str("</figure>");
    out
}

fn quantile(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// The whole report.
pub fn render(run: &StoredRun, events: &[RunEventRow], verdicts: &[Verdict]) -> String {
    let r = &run.results;
    let start_us = r.started_at.timestamp_micros();
    let summary = crate::load::report::summary(&run.run_id, run.generators, r, verdicts);
    let mut body = String::new();

    // Throughput over time.
    let per_second = |f: fn(&crate::load::results::Second) -> u64| -> Vec<(f64, f64)> {
        r.timeline.iter().enumerate().map(|(i, s)| (i as f64, f(s) as f64)).collect()
    };
    body.push_str(&line_chart(
        "throughput",
        "Throughput: target vs achieved",
        "seconds into the run",
        "messages / s",
        &[
            Series { name: "sent", colour: BLUE, points: per_second(|s| s.sent), dashed: false },
            Series {
                name: "final outcomes received",
                colour: GREEN,
                points: per_second(|s| s.resolved),
                dashed: false,
            },
            Series { name: "target", colour: GREY, points: per_second(|s| s.target), dashed: true },
        ],
    ));

    // Latency percentiles over time, per status, by arrival time.
    let secs = r.timeline.len().max(1) as f64;
    let window = (secs / 60.0).ceil().max(1.0);
    let mut by_status: BTreeMap<Status, BTreeMap<i64, Vec<i64>>> = BTreeMap::new();
    for e in events {
        let (Ok(status), Some(latency)) = (e.status.parse::<Status>(), e.latency_us) else { continue };
        let arrival_s = (e.intended_at_us + latency - start_us) as f64 / 1e6;
        let w = (arrival_s / window).floor() as i64;
        by_status.entry(status).or_default().entry(w).or_default().push(latency);
    }
    let mut latency_charts = String::new();
    for (status, windows) in &mut by_status {
        let mut p50 = Vec::new();
        let mut p90 = Vec::new();
        let mut p99 = Vec::new();
        for (w, v) in windows.iter_mut() {
            v.sort_unstable();
            let x = (*w as f64 + 0.5) * window;
            p50.push((x, quantile(v, 0.5)));
            p90.push((x, quantile(v, 0.9)));
            p99.push((x, quantile(v, 0.99)));
        }
        latency_charts.push_str(&line_chart(
            &format!("latency-{}", status.as_str().to_ascii_lowercase()),
            &format!("{status}: latency from intended send, by arrival time ({window:.0} s windows)"),
            "seconds into the run",
            "ms",
            &[
                Series { name: "p50", colour: BLUE, points: p50, dashed: false },
                Series { name: "p90", colour: ORANGE, points: p90, dashed: false },
                Series { name: "p99", colour: RED, points: p99, dashed: false },
            ],
        ));
    }

    // Status distribution per channel.
    let rows: Vec<StatusRow> = status_rows(r);
    let channels: Vec<String> = r.statuses.keys().map(|c| c.as_str().to_owned()).collect();
    let statuses: Vec<Status> = Status::ALL.into_iter().filter(|s| rows.iter().any(|x| x.status == *s)).collect();
    let distribution: Vec<(&str, &str, Vec<f64>)> = statuses
        .iter()
        .map(|s| {
            let values = r
                .statuses
                .keys()
                .map(|c| rows.iter().find(|x| x.channel == *c && x.status == *s).map_or(0.0, |x| x.payloads as f64))
                .collect();
            (s.as_str(), STATUS_COLOURS[*s as usize], values)
        })
        .collect();
    let distribution_chart = stacked_bars(
        "statuses",
        "Status distribution per channel (payloads with each status)",
        "channel",
        "payloads",
        &channels,
        &distribution,
    );

    // Per-batch health.
    let mut batches: BTreeMap<(i32, i64), (std::collections::BTreeSet<i64>, u64, u64)> = BTreeMap::new();
    let batch_size: BTreeMap<i32, i64> =
        run.settings.iter().map(|s| (s.generator as i32, s.batch_size.max(1) as i64)).collect();
    for e in events {
        let size = batch_size.get(&e.generator).copied().unwrap_or(1000);
        let b = batches.entry((e.generator, e.seq / size)).or_default();
        match e.status.as_str() {
            LOST => b.1 += 1,
            NOT_SENT => b.2 += 1,
            s => {
                if s.parse::<Status>().is_ok_and(Status::can_end) {
                    b.0.insert(e.seq);
                }
            }
        }
    }
    let labels: Vec<String> = batches.keys().map(|(g, b)| format!("g{g}-b{b}")).collect();
    let batch_chart = stacked_bars(
        "batches",
        "Per-batch health",
        "batch",
        "messages",
        &labels,
        &[
            ("acked", GREEN, batches.values().map(|b| b.0.len() as f64).collect()),
            ("lost", RED, batches.values().map(|b| b.1 as f64).collect()),
            ("not sent", GREY, batches.values().map(|b| b.2 as f64).collect()),
        ],
    );

    // The generator's lateness.
    let lateness_chart = line_chart(
        "lateness",
        "Generator lateness: the latest send of each second behind its intended time",
        "seconds into the run",
        "ms",
        &[Series {
            name: "max lateness",
            colour: ORANGE,
            points: r.timeline.iter().enumerate().map(|(i, s)| (i as f64, s.lateness_max_us as f64 / 1000.0)).collect(),
            dashed: false,
        }],
    );

    let mut table = String::from(
        "<table><tr><th>channel</th><th>status</th><th>payloads</th><th>rate</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>",
    );
    for x in &rows {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>",
            x.channel.as_str(),
            x.status.as_str(),
            x.payloads,
            x.rate * 100.0,
            x.p50_ms,
            x.p90_ms,
            x.p99_ms,
            x.max_ms
        );
    }
    table.push_str("</table>");
    let mut gates = String::new();
    if !verdicts.is_empty() {
        gates.push_str("<h2>Gates</h2><ul class=\"gates\">");
        for v in verdicts {
            let (class, word) = if v.passed { ("pass", "passed") } else { ("fail", "FAILED") };
            let _ = write!(
                gates,
                "<li class=\"{class}\">{word}: <code>{}</code> (measured {}{})</li>",
                esc(&v.gate),
                esc(&v.measured),
                if v.detail.is_empty() { String::new() } else { format!(": {}", esc(&v.detail)) }
            );
        }
        gates.push_str("</ul>");
    }
    let lost = if r.lost > 0 {
        let shown: Vec<String> = r.lost_ids.iter().take(50).map(|s| esc(s)).collect();
        let injected = super::report::lost_causes(r.lost, r.lost_injected, r.lost_late)
            .map(|c| format!("; {c}"))
            .unwrap_or_default();
        format!(
            "<p class=\"lost\">Lost ({}{injected}): {}{}</p>",
            r.lost,
            shown.join(", "),
            if r.lost > 50 { " …" } else { "" }
        )
    } else {
        String::new()
    };
    // Through a door: its send calls, by answer, and their latency.
    let http = match &summary.http {
        Some(h) => {
            let mut t = String::from("<table><tr><th>answer</th><th>send calls</th></tr>");
            for (code, n) in &h.statuses {
                let answer = if *code == 0 { "no answer".to_owned() } else { code.to_string() };
                let _ = write!(t, "<tr><td>{answer}</td><td>{n}</td></tr>");
            }
            t.push_str("</table>");
            format!(
                "<h2>Send calls</h2><p>Through the {} door: send call latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
                 {} webhooks failed their signature check, {} could not be read.</p>{t}",
                esc(&h.door),
                h.send_p50_ms,
                h.send_p99_ms,
                h.send_max_ms,
                h.bad_signatures,
                h.unreadable
            )
        }
        None => String::new(),
    };
    let settings =
        run.settings.iter().map(|s| serde_json::to_string_pretty(s).unwrap_or_default()).collect::<Vec<_>>().join("\n");

    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Understudy run {id}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 920px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.figures {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; }}
.figures div {{ background: #f4f4f4; padding: 8px; border-radius: 4px; }} .figures b {{ display: block; font-size: 18px; }}
figure {{ margin: 16px 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
.tick {{ font-size: 11px; fill: #555; }} .axis {{ font-size: 12px; fill: #333; }}
.legend span {{ margin-right: 16px; }} .legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }}
td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) {{ text-align: left; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #c62828; font-weight: 600; }} .lost {{ color: #c62828; }}
pre {{ background: #f8f8f8; padding: 8px; overflow: auto; }}
</style></head><body>
<h1>Understudy load run <code>{id}</code></h1>
<p>{start} → {end} · {generators} generator process(es)</p>
<div class="figures">
<div>sent<b>{sent}</b>of {planned} planned</div>
<div>throughput<b>{rate:.0}/s</b>messages sent</div>
<div>outcomes<b>{resolved}</b>{events} ack events</div>
<div>lost<b>{lost_n}</b>late sends: {late}</div>
</div>
{gates}{lost}
{http}<h2>Throughput</h2>{throughput}
<h2>Latency</h2><p>From each message's intended send time to the status's arrival.</p>{table}{latency}
<h2>Outcomes</h2>{distribution}
<h2>Batches</h2>{batches}
<h2>Generator</h2>{lateness}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"#,
        id = esc(&run.run_id),
        start = summary.started_at,
        end = summary.ended_at,
        generators = run.generators,
        sent = summary.sent,
        planned = summary.planned,
        rate = summary.throughput_per_s,
        resolved = summary.resolved,
        events = summary.events,
        lost_n = summary.lost,
        late = summary.late,
        throughput = body,
        latency = latency_charts,
        distribution = distribution_chart,
        batches = batch_chart,
        lateness = lateness_chart,
        settings = esc(&settings),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1000.0), 200.0);
        assert_eq!(tick_step(37.0), 10.0);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(quantile(&[1000, 2000, 3000, 4000], 0.5), 2.0);
        assert_eq!(quantile(&[1000, 2000, 3000, 4000], 0.99), 4.0);
    }
}
