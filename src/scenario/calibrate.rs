//! `understudy scenario calibrate`: a scenario fitted to recorded vendor events. Each payload's events,
//! in time order, make its path; the observed paths become weighted paths, and the delays between a
//! payload's events become each status's delay: a lognormal fitted to them (median and p99 from the
//! logarithms' mean and deviation) or, with `--empirical`, their quantiles. A goodness-of-fit table
//! compares each fit with the data (Kolmogorov–Smirnov distance and percentiles).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::distribution::{Delay, Dur, interpolate, show};
use super::{ChannelSpec, PathSpec, ScenarioFile};
use crate::model::{Channel, Status};

/// z-score of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874_040_840_8;

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub payload_id: String,
    pub channel: Channel,
    pub status: Status,
    pub at: DateTime<Utc>,
}

/// What the CSV held, and what was left out (with the reasons, counted).
pub struct Input {
    pub events: Vec<Recorded>,
    /// Payloads' submission times, from an optional `sent_at` column: the first event's delay.
    pub sent_at: HashMap<String, DateTime<Utc>>,
    pub skipped: BTreeMap<String, usize>,
}

/// A timestamp as RFC 3339, or Unix seconds or milliseconds (by size).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let n: f64 = s.parse().ok()?;
    let secs = if n > 1e11 { n / 1000.0 } else { n };
    DateTime::from_timestamp_micros((secs * 1e6).round() as i64)
}

/// Read events from a CSV with a header naming `payload_id`, `status`, `timestamp`, `channel` (any order,
/// any case; other columns are ignored) and optionally `sent_at`. Vendor status names (`delivered`,
/// `bounce`, `failed`) are read as Understudy's.
pub fn read_csv(path: &Path) -> Result<Input, String> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let headers: Vec<String> =
        r.headers().map_err(|e| format!("{}: {e}", path.display()))?.iter().map(|h| h.to_ascii_lowercase()).collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| format!("{}:1: no `{name}` column (columns: {})", path.display(), headers.join(", ")))
    };
    let (pid, st, ts, ch) = (need("payload_id")?, need("status")?, need("timestamp")?, need("channel")?);
    let sent = col("sent_at");
    let mut input = Input { events: Vec::new(), sent_at: HashMap::new(), skipped: BTreeMap::new() };
    for (i, row) in r.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| format!("{}:{line}: {e}", path.display()))?;
        let field = |c: usize| row.get(c).unwrap_or("");
        let mut skip = |why: String| *input.skipped.entry(why).or_default() += 1;
        let Ok(channel) = field(ch).parse::<Channel>() else {
            skip(format!("unknown channel `{}`", field(ch)));
            continue;
        };
        let Some(status) = vendor_status(field(st)) else {
            skip(format!("unknown status `{}`", field(st)));
            continue;
        };
        let Some(at) = parse_time(field(ts)) else {
            skip(format!("unreadable timestamp (line {line} and others)"));
            continue;
        };
        if field(pid).is_empty() {
            skip("no payload id".into());
            continue;
        }
        if let Some(t) = sent.and_then(|c| parse_time(field(c))) {
            input.sent_at.insert(field(pid).to_owned(), t);
        }
        input.events.push(Recorded { payload_id: field(pid).to_owned(), channel, status, at });
    }
    if input.events.is_empty() {
        return Err(format!("{}: no usable events", path.display()));
    }
    Ok(input)
}

/// Understudy's status for a vendor's name of it.
fn vendor_status(s: &str) -> Option<Status> {
    if let Ok(st) = s.parse::<Status>() {
        return Some(st);
    }
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "sent" | "processed" | "accepted" => Status::Send,
        "delivered" => Status::Delivery,
        "opened" => Status::Open,
        "clicked" => Status::Click,
        "deferred" | "queued" | "deliverydelay" => Status::Deferred,
        "bounced" => Status::Bounce,
        "rejected" | "dropped" | "failed" => Status::Reject,
        "spamreport" | "complained" => Status::Complaint,
        _ => return None,
    })
}

/// How well a fitted delay matches the data.
#[derive(Clone, Debug)]
pub struct Fit {
    pub channel: Channel,
    pub status: Status,
    pub n: usize,
    /// Kolmogorov–Smirnov distance between the data and the fit (0: identical; below about 1.36/√n the
    /// fit is not rejected at 5%).
    pub ks: f64,
    /// (percentile, data, fit), seconds.
    pub percentiles: Vec<(f64, f64, f64)>,
}

/// The fitted scenario and its report.
pub struct Calibrated {
    pub file: ScenarioFile,
    pub fits: Vec<Fit>,
    /// Paths seen that the state machine does not allow, by channel and path (left out).
    pub invalid: BTreeMap<String, usize>,
    pub payloads: usize,
}

/// Fit a scenario to the events.
pub fn calibrate(input: &Input, name: &str, seed: u64, empirical: bool) -> Calibrated {
    let mut by_payload: HashMap<(&str, Channel), Vec<&Recorded>> = HashMap::new();
    for e in &input.events {
        by_payload.entry((e.payload_id.as_str(), e.channel)).or_default().push(e);
    }
    let mut paths: BTreeMap<(Channel, Vec<Status>), usize> = BTreeMap::new();
    let mut delays: BTreeMap<(Channel, Status), Vec<f64>> = BTreeMap::new();
    let mut invalid = BTreeMap::new();
    for ((payload, channel), mut events) in by_payload.iter().map(|(k, v)| (*k, v.clone())) {
        events.sort_by_key(|e| e.at);
        let steps: Vec<Status> = events.iter().map(|e| e.status).collect();
        let mut prev = None;
        let valid = steps.iter().all(|s| {
            let ok = channel.allows(prev, *s);
            prev = Some(*s);
            ok
        }) && prev.is_some_and(|s| s.can_end());
        if !valid {
            *invalid.entry(format!("{channel}: {}", names(&steps))).or_default() += 1;
            continue;
        }
        let mut last = input.sent_at.get(payload).copied();
        for e in &events {
            if let Some(t) = last {
                delays
                    .entry((channel, e.status))
                    .or_default()
                    .push(((e.at - t).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0));
            }
            last = Some(e.at);
        }
        *paths.entry((channel, steps)).or_default() += 1;
    }
    let mut channels: BTreeMap<String, ChannelSpec> = BTreeMap::new();
    for ((channel, steps), n) in &paths {
        let spec = channels.entry(channel.as_str().to_owned()).or_insert_with(|| ChannelSpec {
            delays: BTreeMap::new(),
            paths: Vec::new(),
            faults: None,
            ack_format: Default::default(),
        });
        spec.paths.push(PathSpec {
            name: names(steps).to_ascii_lowercase().replace(" → ", "_"),
            weight: *n as f64,
            steps: steps.clone(),
            delays: BTreeMap::new(),
            errors: Vec::new(),
            bounce_type: None,
        });
    }
    let mut fits = Vec::new();
    for (name, spec) in channels.iter_mut() {
        let channel: Channel = name.parse().expect("a channel name");
        let statuses: Vec<Status> = {
            let mut s: Vec<Status> = spec.paths.iter().flat_map(|p| p.steps.iter().copied()).collect();
            s.sort();
            s.dedup();
            s
        };
        for status in statuses {
            let mut xs = delays.remove(&(channel, status)).unwrap_or_default();
            xs.sort_by(f64::total_cmp);
            let (delay, fit) = fit(channel, status, &xs, empirical);
            spec.delays.insert(status.as_str().to_owned(), delay);
            fits.extend(fit);
        }
    }
    let payloads = paths.values().sum();
    let file = ScenarioFile {
        name: Some(name.to_owned()),
        description: Some(format!(
            "Calibrated from {} events of {payloads} payloads by `understudy scenario calibrate`.",
            input.events.len()
        )),
        seed,
        time_scale: 1.0,
        channels,
        rules: Vec::new(),
        magic_recipients: true,
        outages: Vec::new(),
        throttles: Vec::new(),
    };
    Calibrated { file, fits, invalid, payloads }
}

fn names(steps: &[Status]) -> String {
    steps.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" → ")
}

/// A fitted duration, to 3 significant digits and at least the millisecond (`4.04s`, not `4.036799s`).
fn dur(secs: f64) -> Dur {
    let secs = secs.max(0.0);
    let step = if secs > 0.0 { 10f64.powf((secs.log10().floor() - 2.0).max(-3.0)) } else { 0.001 };
    Dur(Duration::from_millis(((secs / step).round() * step * 1000.0).round() as u64))
}

/// Fit one status's delays. Without data (a first step and no `sent_at`), a fixed 0 s.
fn fit(channel: Channel, status: Status, xs: &[f64], empirical: bool) -> (Delay, Option<Fit>) {
    if xs.is_empty() {
        return (Delay::Fixed { value: dur(0.0) }, None);
    }
    let quantile = |u: f64| interpolate(xs, u);
    let n = xs.len() as f64;
    let ks_of = |cdf: &dyn Fn(f64) -> f64| {
        xs.iter()
            .enumerate()
            .map(|(i, x)| {
                let f = cdf(*x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    };
    if empirical || xs.len() < 3 {
        let q: Vec<f64> = (0..=20).map(|i| quantile(i as f64 / 20.0)).collect();
        let cdf = |x: f64| table_cdf(&q, x);
        let percentiles =
            [50.0, 90.0, 99.0].iter().map(|p| (*p, quantile(p / 100.0), interpolate(&q, p / 100.0))).collect();
        let fit = Fit { channel, status, n: xs.len(), ks: ks_of(&cdf), percentiles };
        return (Delay::Empirical { quantiles: q.into_iter().map(dur).collect() }, Some(fit));
    }
    // Lognormal by the logarithms' moments; zeros count as 1 ms.
    let logs: Vec<f64> = xs.iter().map(|x| x.max(0.001).ln()).collect();
    let mu = logs.iter().sum::<f64>() / n;
    let sigma = (logs.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / (n - 1.0)).sqrt().max(1e-3);
    let (median, p99) = (mu.exp(), (mu + Z99 * sigma).exp());
    let cdf =
        |x: f64| if x <= 0.0 { 0.0 } else { 0.5 * (1.0 + erf((x.ln() - mu) / (sigma * std::f64::consts::SQRT_2))) };
    let ks = ks_of(&cdf);
    let percentiles =
        [50.0, 90.0, 99.0].iter().map(|p| (*p, quantile(p / 100.0), (mu + z(p / 100.0) * sigma).exp())).collect();
    let delay = Delay::Lognormal { median: dur(median), p99: dur(p99.max(median * 1.0001)), max: None };
    (delay, Some(Fit { channel, status, n: xs.len(), ks, percentiles }))
}

/// The CDF of equally spaced quantiles `q`, linear between them.
fn table_cdf(q: &[f64], x: f64) -> f64 {
    let last = q.len() - 1;
    if x < q[0] {
        return 0.0;
    }
    if x >= q[last] {
        return 1.0;
    }
    let i = q.partition_point(|v| *v <= x).saturating_sub(1).min(last - 1);
    let within = if q[i + 1] > q[i] { (x - q[i]) / (q[i + 1] - q[i]) } else { 1.0 };
    (i as f64 + within) / last as f64
}

/// z-score of a few percentiles.
fn z(u: f64) -> f64 {
    match (u * 100.0).round() as u32 {
        50 => 0.0,
        90 => 1.281_551_565_545,
        99 => Z99,
        _ => 0.0,
    }
}

/// The error function (Abramowitz and Stegun 7.1.26; error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

impl Calibrated {
    /// The goodness-of-fit summary.
    pub fn report(&self) -> String {
        let mut out = format!("{} payloads\n", self.payloads);
        for (ch, spec) in &self.file.channels {
            let total: f64 = spec.paths.iter().map(|p| p.weight).sum();
            out.push_str(&format!("  {ch} paths\n"));
            for p in &spec.paths {
                out.push_str(&format!("    {:>6.2}%  {}\n", p.weight / total * 100.0, names(&p.steps)));
            }
        }
        out.push_str("  delays: data vs fit (p50, p90, p99); KS distance (below the 5% critical value ≈ 1.36/√n: not rejected)\n");
        for f in &self.fits {
            let crit = 1.36 / (f.n as f64).sqrt();
            let pct: Vec<String> =
                f.percentiles.iter().map(|(p, d, m)| format!("p{p:.0} {} / {}", show(*d), show(*m))).collect();
            out.push_str(&format!(
                "    {:<8} {:<11} n={:<7} KS {:.3} ({})  {}\n",
                f.channel.as_str(),
                f.status.as_str(),
                f.n,
                f.ks,
                if f.ks <= crit { "good" } else { "poor: try --empirical" },
                pct.join(", ")
            ));
        }
        for (path, n) in &self.invalid {
            out.push_str(&format!("  left out: {n} payloads with a path the state machine does not allow: {path}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_is_close() {
        for (x, want) in [(0.0, 0.0), (0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (-2.0, -0.995_322_265)] {
            assert!((super::erf(x) - want).abs() < 1e-6, "{x}");
        }
    }
}
