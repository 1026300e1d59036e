//! The terminal and JSON summaries of a run, for `understudy load` and `understudy report`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::gate::Verdict;
use crate::load::results::Results;
use crate::model::{Channel, Status};

/// Latency figures of one channel and status, in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatusRow {
    pub channel: Channel,
    pub status: Status,
    /// Payloads with at least one such event.
    pub payloads: u64,
    /// Share of the channel's sent payloads.
    pub rate: f64,
    pub events: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The send calls of a run through a front door.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HttpRow {
    pub door: String,
    /// Send calls by HTTP status (0: no answer).
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub send_p50_ms: f64,
    pub send_p99_ms: f64,
    pub send_max_ms: f64,
    /// Webhooks whose signature did not check out, and webhooks that could not be read.
    pub bad_signatures: u64,
    pub unreadable: u64,
}

/// A run's summary, as `--format json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<'a> {
    pub run_id: &'a str,
    /// Generator processes whose results are merged here.
    pub generators: usize,
    pub started_at: String,
    pub ended_at: String,
    pub planned: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub throughput_per_s: f64,
    pub late: u64,
    pub late_after_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
    pub events: u64,
    /// Acks with this run's ids that matched nothing: an unknown status, or an id never sent.
    pub unmatched_events: u64,
    /// Acks whose payload id or status could not be read at the configured pointers.
    pub undecodable_acks: u64,
    /// Redelivered copies of acks already counted.
    pub duplicate_acks: u64,
    pub resolved: u64,
    pub lost: u64,
    /// Of `lost`, those the scenario's injected faults explain.
    pub lost_injected: u64,
    /// Of `lost`, those the scenario plans after the wait ended.
    pub lost_late: u64,
    pub lost_ids: &'a [String],
    pub statuses: Vec<StatusRow>,
    pub gates: &'a [Verdict],
    pub passed: bool,
    /// Through a front door: its send calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRow>,
}

/// What the lost payloads come from, when the scenario explains some: `3 by the scenario's injected faults, 1
/// planned after the wait ended, 0 unexplained`.
pub fn lost_causes(lost: u64, injected: u64, late: u64) -> Option<String> {
    (injected + late > 0).then(|| {
        format!(
            "{injected} by the scenario's injected faults, {late} planned after the wait ended, {} unexplained",
            lost.saturating_sub(injected + late)
        )
    })
}

pub fn status_rows(r: &Results) -> Vec<StatusRow> {
    let mut rows = Vec::new();
    for (channel, per) in &r.statuses {
        let sent = r.sent_of(Some(*channel));
        for (status, f) in per {
            let h = &f.latency_us;
            rows.push(StatusRow {
                channel: *channel,
                status: *status,
                payloads: f.payloads,
                rate: if sent == 0 { 0.0 } else { f.payloads as f64 / sent as f64 },
                events: h.len(),
                p50_ms: h.quantile_ms(0.5),
                p90_ms: h.quantile_ms(0.9),
                p99_ms: h.quantile_ms(0.99),
                max_ms: h.max_ms(),
            });
        }
    }
    rows
}

pub fn summary<'a>(run_id: &'a str, generators: usize, r: &'a Results, verdicts: &'a [Verdict]) -> Summary<'a> {
    Summary {
        run_id,
        generators,
        started_at: r.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ended_at: r.ended_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        planned: r.planned,
        sent: r.sent_total(),
        send_errors: r.send_errors,
        throughput_per_s: r.throughput(),
        late: r.late,
        late_after_ms: r.late_after_ms,
        lateness_p99_ms: r.lateness_us.quantile_ms(0.99),
        lateness_max_ms: r.lateness_us.max_ms(),
        events: r.events,
        unmatched_events: r.unknown_events,
        undecodable_acks: r.undecodable_acks,
        duplicate_acks: r.duplicate_acks,
        resolved: r.resolved,
        lost: r.lost,
        lost_injected: r.lost_injected,
        lost_late: r.lost_late,
        lost_ids: &r.lost_ids,
        statuses: status_rows(r),
        gates: verdicts,
        passed: verdicts.iter().all(|v| v.passed),
        http: r.http.as_ref().map(|h| HttpRow {
            door: h.door.clone(),
            statuses: h.statuses.clone(),
            send_p50_ms: h.send_latency_us.quantile_ms(0.5),
            send_p99_ms: h.send_latency_us.quantile_ms(0.99),
            send_max_ms: h.send_latency_us.max_ms(),
            bad_signatures: h.bad_signatures,
            unreadable: h.unreadable,
        }),
    }
}

fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The human summary.
pub fn text(s: &Summary<'_>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "run {}{}",
        s.run_id,
        if s.generators > 1 { format!(" ({} generators)", s.generators) } else { String::new() }
    );
    let _ = writeln!(o, "  {} → {}", s.started_at, s.ended_at);
    let _ = writeln!(
        o,
        "  sent      {} of {} planned · {:.0} messages/s{}",
        s.sent,
        s.planned,
        s.throughput_per_s,
        if s.send_errors > 0 { format!(" · {} send errors", s.send_errors) } else { String::new() }
    );
    let _ = writeln!(
        o,
        "  schedule  {} late (over {} behind) · lateness p99 {} · max {}",
        s.late,
        ms(s.late_after_ms),
        ms(s.lateness_p99_ms),
        ms(s.lateness_max_ms)
    );
    if let Some(h) = &s.http {
        let statuses: Vec<String> = h
            .statuses
            .iter()
            .map(|(code, n)| if *code == 0 { format!("no answer ×{n}") } else { format!("{code} ×{n}") })
            .collect();
        let _ = writeln!(
            o,
            "  http      {} door · {} · send call p50 {} · p99 {} · max {}",
            h.door,
            statuses.join(", "),
            ms(h.send_p50_ms),
            ms(h.send_p99_ms),
            ms(h.send_max_ms)
        );
        if h.bad_signatures > 0 || h.unreadable > 0 {
            let _ = writeln!(
                o,
                "  warning: {} webhooks failed the vendor's signature check and {} could not be read; neither was counted",
                h.bad_signatures, h.unreadable
            );
        }
    }
    let injected = lost_causes(s.lost, s.lost_injected, s.lost_late).map(|c| format!(" ({c})")).unwrap_or_default();
    let _ = writeln!(
        o,
        "  acks      {} events · {} payloads with an outcome · {} lost{injected}",
        s.events, s.resolved, s.lost
    );
    if s.duplicate_acks > 0 {
        let _ = writeln!(
            o,
            "            {} redelivered copies of acks already counted (same event id), left out",
            s.duplicate_acks
        );
    }
    if s.unmatched_events > 0 {
        let _ = writeln!(
            o,
            "  warning: {} acks carried this run's payload ids but matched nothing (a status other than Understudy's, \
             or an id never sent)",
            s.unmatched_events
        );
    }
    if s.undecodable_acks > 0 && s.resolved < s.sent {
        let _ = writeln!(
            o,
            "  warning: {} acks had no readable payload id or status at the configured pointers \
             (--ack-payload-id, --ack-status)",
            s.undecodable_acks
        );
    }
    if !s.statuses.is_empty() {
        let _ = writeln!(
            o,
            "\n  {:<9} {:<12} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "channel", "status", "payloads", "rate", "p50", "p90", "p99", "max"
        );
        for r in &s.statuses {
            let _ = writeln!(
                o,
                "  {:<9} {:<12} {:>9} {:>7.2}% {:>10} {:>10} {:>10} {:>10}",
                r.channel.as_str(),
                r.status.as_str(),
                r.payloads,
                r.rate * 100.0,
                ms(r.p50_ms),
                ms(r.p90_ms),
                ms(r.p99_ms),
                ms(r.max_ms)
            );
        }
        let _ = writeln!(o, "  (latency from each message's intended send time to the status's arrival)");
    }
    if s.lost > 0 {
        let shown: Vec<&str> = s.lost_ids.iter().take(10).map(String::as_str).collect();
        let more = if s.lost as usize > shown.len() {
            format!(" … and {} more", s.lost as usize - shown.len())
        } else {
            String::new()
        };
        let _ = writeln!(o, "\n  lost: {}{more}", shown.join(", "));
    }
    if !s.gates.is_empty() {
        let _ = writeln!(o);
        for v in s.gates {
            if v.passed {
                let _ = writeln!(o, "  gate passed  {}  (measured {})", v.gate, v.measured);
            } else {
                let _ = writeln!(o, "  gate FAILED  {}  (measured {}: {})", v.gate, v.measured, v.detail);
            }
        }
    }
    o
}

/// The run's record as CSV: one row per message and status, plus a `LOST` row for each message without a
/// final status and a `NOT_SENT` row for each message Kafka refused.
pub fn csv(
    run: &crate::load::StoredRun,
    events: &[crate::store::RunEventRow],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use crate::load::message::{BatchId, PayloadId};
    let batch_size: std::collections::BTreeMap<i32, u64> =
        run.settings.iter().map(|s| (s.generator as i32, s.batch_size.max(1))).collect();
    writeln!(out, "run_id,generator,payload_id,batch_id,channel,status,intended_at,latency_ms")?;
    for e in events {
        let (generator, seq) = (e.generator as u32, e.seq as u64);
        let size = batch_size.get(&e.generator).copied().unwrap_or(1000);
        let intended =
            crate::model::micros_to_time(e.intended_at_us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            out,
            "{},{generator},{},{},{},{},{intended},",
            run.run_id,
            PayloadId(&run.run_id, generator, seq),
            BatchId(&run.run_id, generator, seq / size),
            e.channel,
            e.status
        )?;
        match e.latency_us {
            Some(us) => writeln!(out, "{:.3}", us as f64 / 1000.0)?,
            None => writeln!(out)?,
        }
    }
    Ok(())
}
