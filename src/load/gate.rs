//! CI gates on a run's results: `p99(DELIVERY) < 5s`, `rate(BOUNCE) <= 5%`, `lost == 0`.
//!
//! A gate is `METRIC OP VALUE`. Metrics:
//! - latency from intended send to a status: `p50(S)`, `p90(S)`, `p99(S)`, `p99.9(S)`, any `pNN(S)`,
//!   `max(S)`, `mean(S)`; the value is a duration (`250ms`, `5s`, `2m`);
//! - `rate(S)`: the share of sent payloads with at least one S event (`0.05` or `5%`); `count(S)`: their number;
//! - run figures: `lost`, `lost_injected` (lost by the scenario's injected faults), `lost_late` (final ack
//!   planned after the wait ended), `lost_real` (the rest), `lost_rate`, `sent`, `send_errors`, `late`,
//!   `late_rate`, `throughput` (messages/s), `events`.
//!
//! `S` is a status (`DELIVERY`), optionally with a channel: `p99(DELIVERY, email)`. `OP` is one of
//! `<`, `<=`, `>`, `>=`, `==`, `!=`. Unknown metrics, statuses and channels are errors, not passes; a
//! latency gate on a status with no events fails.

use std::fmt;
use std::str::FromStr;

use crate::load::results::Results;
use crate::model::{Channel, Status};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn holds(self, measured: f64, limit: f64) -> bool {
        match self {
            Op::Lt => measured < limit,
            Op::Le => measured <= limit,
            Op::Gt => measured > limit,
            Op::Ge => measured >= limit,
            Op::Eq => (measured - limit).abs() < 1e-9,
            Op::Ne => (measured - limit).abs() >= 1e-9,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LatencyStat {
    Quantile(f64),
    Max,
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Metric {
    Latency {
        stat: LatencyStat,
        status: Status,
        channel: Option<Channel>,
    },
    Rate {
        status: Status,
        channel: Option<Channel>,
    },
    Count {
        status: Status,
        channel: Option<Channel>,
    },
    Lost,
    LostInjected,
    LostLate,
    LostReal,
    LostRate,
    Sent,
    SendErrors,
    Late,
    LateRate,
    Throughput,
    Events,
    /// Through a door: the send calls' latency.
    SendCall(LatencyStat),
    /// Through a door: send calls answered with this status (0: none), or this class (`4` for `4xx`).
    Http {
        code: u16,
        class: bool,
    },
    BadSignatures,
}

/// Unit of a gate's value, for reading and printing.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Unit {
    /// Milliseconds.
    Duration,
    /// A share, 0–1.
    Share,
    Number,
}

/// One parsed gate.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    text: String,
    metric: Metric,
    op: Op,
    /// In the metric's unit (milliseconds for latencies, 0–1 for rates).
    limit: f64,
}

/// The verdict of one gate.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub gate: String,
    pub passed: bool,
    /// The measured value, with its unit.
    pub measured: String,
    /// How far a failed gate missed (`over by 2.1 s`), or why it could not be measured.
    pub detail: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("gate `{text}`: {message}")]
pub struct GateError {
    text: String,
    message: String,
}

const METRICS: &str = "pNN(STATUS), max(STATUS), mean(STATUS), rate(STATUS), count(STATUS), lost, lost_injected, \
                       lost_late, lost_real, lost_rate, sent, \
                       send_errors, late, late_rate, throughput, events; through a door pNN(send_call), \
                       max(send_call), mean(send_call), http(CODE), http(4xx), http(none), bad_signatures";

impl FromStr for Gate {
    type Err = GateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |message: String| GateError { text: text.to_owned(), message };
        let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
        let (at, op_text, op) = ops
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|i| (i, *s, *op)))
            .min_by_key(|(i, s, _)| (*i, std::cmp::Reverse(s.len())))
            .ok_or_else(|| err("no comparison: write METRIC OP VALUE with OP one of < <= > >= == !=".into()))?;
        let (lhs, rhs) = (text[..at].trim(), text[at + op_text.len()..].trim());
        let metric = parse_metric(lhs).map_err(err)?;
        let limit = parse_value(rhs, unit_of(metric)).map_err(err)?;
        Ok(Gate { text: text.trim().to_owned(), metric, op, limit })
    }
}

fn parse_metric(lhs: &str) -> Result<Metric, String> {
    if let Some((name, args)) = lhs.split_once('(') {
        let name = name.trim().to_ascii_lowercase();
        let args = args.strip_suffix(')').ok_or_else(|| format!("`{lhs}` lacks its closing parenthesis"))?;
        if name == "http" {
            let arg = args.trim().to_ascii_lowercase();
            let (code, class) = match arg.as_str() {
                "none" => (0, false),
                c if c.len() == 3 && c.ends_with("xx") => {
                    (c[..1].parse().map_err(|_| format!("`{c}` is no status class"))?, true)
                }
                c => (c.parse().map_err(|_| format!("`{c}` is no HTTP status: write `429`, `4xx` or `none`"))?, false),
            };
            return Ok(Metric::Http { code, class });
        }
        if args.trim().eq_ignore_ascii_case("send_call") {
            let stat = match name.as_str() {
                "max" => LatencyStat::Max,
                "mean" => LatencyStat::Mean,
                p if p.starts_with('p') => {
                    let q: f64 =
                        p[1..].parse().map_err(|_| format!("unknown metric `{name}`; metrics are {METRICS}"))?;
                    if !(0.0..=100.0).contains(&q) {
                        return Err(format!("percentile `{name}` is not between p0 and p100"));
                    }
                    LatencyStat::Quantile(q / 100.0)
                }
                _ => return Err(format!("`{name}(send_call)`: the send calls take pNN, max or mean")),
            };
            return Ok(Metric::SendCall(stat));
        }
        let mut parts = args.split(',').map(str::trim);
        let status: Status = parts
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|e| format!("{e} in `{lhs}`; statuses are {}", Status::ALL.map(Status::as_str).join(", ")))?;
        let channel = match parts.next() {
            Some(c) => Some(c.parse::<Channel>()?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(format!("`{lhs}` takes a status and at most a channel"));
        }
        return Ok(match name.as_str() {
            "max" => Metric::Latency { stat: LatencyStat::Max, status, channel },
            "mean" => Metric::Latency { stat: LatencyStat::Mean, status, channel },
            "rate" => Metric::Rate { status, channel },
            "count" => Metric::Count { status, channel },
            p if p.starts_with('p') => {
                let q: f64 = p[1..].parse().map_err(|_| format!("unknown metric `{name}`; metrics are {METRICS}"))?;
                if !(0.0..=100.0).contains(&q) {
                    return Err(format!("percentile `{name}` is not between p0 and p100"));
                }
                Metric::Latency { stat: LatencyStat::Quantile(q / 100.0), status, channel }
            }
            _ => return Err(format!("unknown metric `{name}`; metrics are {METRICS}")),
        });
    }
    Ok(match lhs.to_ascii_lowercase().as_str() {
        "lost" => Metric::Lost,
        "lost_injected" => Metric::LostInjected,
        "lost_late" => Metric::LostLate,
        "lost_real" => Metric::LostReal,
        "lost_rate" => Metric::LostRate,
        "sent" => Metric::Sent,
        "send_errors" => Metric::SendErrors,
        "late" => Metric::Late,
        "late_rate" => Metric::LateRate,
        "throughput" => Metric::Throughput,
        "events" => Metric::Events,
        "bad_signatures" => Metric::BadSignatures,
        _ => return Err(format!("unknown metric `{lhs}`; metrics are {METRICS}")),
    })
}

fn unit_of(metric: Metric) -> Unit {
    match metric {
        Metric::Latency { .. } | Metric::SendCall(_) => Unit::Duration,
        Metric::Rate { .. } | Metric::LostRate | Metric::LateRate => Unit::Share,
        _ => Unit::Number,
    }
}

fn parse_value(rhs: &str, unit: Unit) -> Result<f64, String> {
    match unit {
        Unit::Duration => {
            let d = humantime::parse_duration(rhs)
                .map_err(|_| format!("`{rhs}` is not a duration; latency gates take one, e.g. `250ms` or `5s`"))?;
            Ok(d.as_secs_f64() * 1000.0)
        }
        Unit::Share => parse_share(rhs),
        Unit::Number => rhs.replace('_', "").parse().map_err(|_| format!("`{rhs}` is not a number")),
    }
}

/// A share written `0.05` or `5%`, between 0 and 1 (also `compare --noise`).
pub fn parse_share(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (text, 1.0),
    };
    let v: f64 = number.trim().parse().map_err(|_| format!("`{text}` is not a share; write `0.05` or `5%`"))?;
    if !(0.0..=1.0).contains(&(v * scale)) {
        return Err(format!("`{text}` is not a share between 0 and 1 (did you mean `{text}%`?)"));
    }
    Ok(v * scale)
}

fn show(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Duration if value >= 1000.0 => format!("{:.3} s", value / 1000.0),
        Unit::Duration => format!("{value:.1} ms"),
        Unit::Share => format!("{:.3}%", value * 100.0),
        Unit::Number if value.fract() == 0.0 => format!("{value:.0}"),
        Unit::Number => format!("{value:.1}"),
    }
}

impl Gate {
    /// The measured value, or why there is none.
    fn measure(&self, r: &Results) -> Result<f64, String> {
        let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        Ok(match self.metric {
            Metric::Latency { stat, status, channel } => {
                let f = r.status(channel, status);
                if f.latency_us.is_empty() {
                    let on = channel.map(|c| format!(" on {c}")).unwrap_or_default();
                    return Err(format!("no {status} events{on} to measure"));
                }
                match stat {
                    LatencyStat::Quantile(q) => f.latency_us.quantile_ms(q),
                    LatencyStat::Max => f.latency_us.max_ms(),
                    LatencyStat::Mean => f.latency_us.mean_ms(),
                }
            }
            Metric::Rate { status, channel } => share(r.status(channel, status).payloads, r.sent_of(channel)),
            Metric::Count { status, channel } => r.status(channel, status).payloads as f64,
            Metric::Lost => r.lost as f64,
            Metric::LostInjected => r.lost_injected as f64,
            Metric::LostLate => r.lost_late as f64,
            Metric::LostReal => r.lost.saturating_sub(r.lost_injected + r.lost_late) as f64,
            Metric::LostRate => share(r.lost, r.sent_total()),
            Metric::Sent => r.sent_total() as f64,
            Metric::SendErrors => r.send_errors as f64,
            Metric::Late => r.late as f64,
            Metric::LateRate => share(r.late, r.sent_total() + r.send_errors),
            Metric::Throughput => r.throughput(),
            Metric::Events => r.events as f64,
            Metric::SendCall(stat) => {
                let h = &r.http.as_ref().ok_or("not a run through a door (--door)")?.send_latency_us;
                if h.is_empty() {
                    return Err("no send calls to measure".into());
                }
                match stat {
                    LatencyStat::Quantile(q) => h.quantile_ms(q),
                    LatencyStat::Max => h.max_ms(),
                    LatencyStat::Mean => h.mean_ms(),
                }
            }
            Metric::Http { code, class } => {
                let h = r.http.as_ref().ok_or("not a run through a door (--door)")?;
                let matches = |s: u16| if class { s / 100 == code } else { s == code };
                h.statuses.iter().filter(|(s, _)| matches(**s)).map(|(_, n)| *n).sum::<u64>() as f64
            }
            Metric::BadSignatures => r.http.as_ref().ok_or("not a run through a door (--door)")?.bad_signatures as f64,
        })
    }

    pub fn check(&self, r: &Results) -> Verdict {
        let unit = unit_of(self.metric);
        match self.measure(r) {
            Err(why) => Verdict { gate: self.text.clone(), passed: false, measured: "none".into(), detail: why },
            Ok(v) => {
                let passed = self.op.holds(v, self.limit);
                let detail = if passed {
                    String::new()
                } else if v > self.limit {
                    format!("over by {}", show(v - self.limit, unit))
                } else if v < self.limit {
                    format!("under by {}", show(self.limit - v, unit))
                } else {
                    format!("equal to {}", show(self.limit, unit))
                };
                Verdict { gate: self.text.clone(), passed, measured: show(v, unit), detail }
            }
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn results() -> Results {
        let mut r = Results::new(Utc::now(), 1000, 10.0);
        r.sent.insert(Channel::Email, 600);
        r.sent.insert(Channel::Sms, 400);
        r.lost = 2;
        r.lost_injected = 1;
        let email = r.statuses.entry(Channel::Email).or_default();
        let d = email.entry(Status::Delivery).or_default();
        for i in 1..=580u64 {
            d.payloads += 1;
            d.latency_us.record(i * 10_000); // 10 ms … 5.8 s
        }
        email.entry(Status::Bounce).or_default().payloads = 18;
        r
    }

    fn check(text: &str) -> Verdict {
        text.parse::<Gate>().unwrap().check(&results())
    }

    #[test]
    fn door_runs_gate_on_their_send_calls() {
        let mut r = results();
        assert!(!check("p99(send_call) < 1s").passed, "not a door run: no pass");
        let mut h = crate::load::results::HttpFigures::default();
        h.statuses.insert(201, 98);
        h.statuses.insert(429, 2);
        for ms in 1..=100 {
            h.send_latency_us.record(ms * 1000);
        }
        r.http = Some(h);
        let check = |t: &str| t.parse::<Gate>().unwrap().check(&r);
        assert!(check("p99(send_call) < 150ms").passed && !check("p50(send_call) < 10ms").passed);
        assert!(check("http(429) == 2").passed && check("http(4xx) == 2").passed && check("http(2xx) == 98").passed);
        assert!(check("http(none) == 0").passed && check("bad_signatures == 0").passed);
        assert!("http(abc) == 0".parse::<Gate>().is_err() && "count(send_call) == 0".parse::<Gate>().is_err());
    }

    #[test]
    fn latency_gates_compare_durations() {
        let v = check("p99(DELIVERY) < 5s");
        assert!(!v.passed);
        assert!(v.measured.ends_with(" s") && v.detail.starts_with("over by 7") && v.detail.ends_with(" ms"), "{v:?}");
        assert!(check("p50(DELIVERY) <= 3s").passed);
        assert!(check("p99.9(DELIVERY, email) < 6s").passed);
        assert!(check("max(delivery) < 5900ms").passed);
        // No events of the status: the gate fails and says why.
        let v = check("p99(DELIVERY, sms) < 5s");
        assert!(!v.passed && v.detail == "no DELIVERY events on sms to measure", "{v:?}");
    }

    #[test]
    fn rates_counts_and_run_figures() {
        assert!(check("rate(BOUNCE) <= 0.05").passed); // 18 of 1000
        assert!(check("rate(BOUNCE, email) <= 5%").passed); // 18 of 600 = 3%
        assert!(!check("rate(BOUNCE, email) < 2%").passed);
        assert!(check("count(BOUNCE) == 18").passed);
        let v = check("lost == 0");
        assert!(!v.passed && v.measured == "2" && v.detail == "over by 2", "{v:?}");
        assert!(check("sent >= 1_000").passed);
        assert!(check("lost_rate < 0.5%").passed);
        assert!(check("lost_injected == 1").passed && check("lost_late == 0").passed && check("lost_real == 1").passed);
    }

    #[test]
    fn unknown_metrics_and_bad_values_are_errors() {
        let e = "p99(DELIVERED) < 5s".parse::<Gate>().unwrap_err().to_string();
        assert!(e.contains("unknown status `DELIVERED`") && e.contains("DELIVERY"), "{e}");
        let e = "latency < 5s".parse::<Gate>().unwrap_err().to_string();
        assert!(e.contains("unknown metric `latency`"), "{e}");
        let e = "p99(DELIVERY) < 5".parse::<Gate>().unwrap_err().to_string();
        assert!(e.contains("is not a duration"), "{e}");
        let e = "rate(BOUNCE, fax) < 1%".parse::<Gate>().unwrap_err().to_string();
        assert!(e.contains("unknown channel `fax`"), "{e}");
        assert!("lost 0".parse::<Gate>().unwrap_err().to_string().contains("no comparison"));
        let e = "rate(BOUNCE) <= 5".parse::<Gate>().unwrap_err().to_string();
        assert!(e.contains("did you mean `5%`"), "{e}");
    }
}
