//! What a load run measured, in a form that merges: counts add up and latency histograms (HdrHistogram,
//! microseconds, three significant digits) merge bucket by bucket, so the results of several generator
//! processes of one run combine exactly, never by averaging percentiles.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::model::{Channel, Status};

/// A latency histogram in microseconds; serialized as its non-empty buckets `[[value, count], …]`.
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new(3).expect("3 significant digits are valid"))
    }
}

impl Hist {
    pub fn record(&mut self, micros: u64) {
        // Auto-resizing: `record` grows the range (`saturating_record` would clamp to it).
        if self.0.record(micros.max(1)).is_err() {
            self.0.saturating_record(micros.max(1));
        }
    }

    pub fn merge(&mut self, other: &Hist) {
        self.0.add(&other.0).expect("auto-resizing histograms always merge");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0–1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        self.0.mean() / 1000.0
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets: Vec<(u64, u64)> =
            self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        buckets.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buckets = Vec::<(u64, u64)>::deserialize(d)?;
        let mut h = Hist::default();
        for (value, count) in buckets {
            h.0.record_n(value, count).map_err(serde::de::Error::custom)?;
        }
        Ok(h)
    }
}

/// Latency from a message's intended send time to one status, for one channel.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusFigures {
    /// Payloads with at least one event of this status.
    pub payloads: u64,
    /// Every event of this status (a status may repeat, e.g. DEFERRED).
    pub latency_us: Hist,
}

/// A run through a vendor's front door: the send calls' answers, how long they took, and the webhooks
/// that could not be counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpFigures {
    /// The vendor whose door the run sent through.
    pub door: String,
    /// Send calls by HTTP status (0: no answer: refused, reset, timed out).
    pub statuses: BTreeMap<u16, u64>,
    /// From a send call's hand-off to its answer.
    pub send_latency_us: Hist,
    /// Webhooks whose signature the vendor's check refused: not counted as events.
    pub bad_signatures: u64,
    /// Webhooks that could not be read (no payload id, an unknown status).
    pub unreadable: u64,
}

impl HttpFigures {
    pub fn merge(&mut self, other: &HttpFigures) {
        if self.door.is_empty() {
            self.door = other.door.clone();
        }
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.send_latency_us.merge(&other.send_latency_us);
        self.bad_signatures += other.bad_signatures;
        self.unreadable += other.unreadable;
    }
}

/// Results of one generator process, or of several merged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// First intended send time of the run (the start of its schedule).
    pub started_at: DateTime<Utc>,
    /// When the last message was handed to Kafka.
    pub sending_ended_at: DateTime<Utc>,
    /// When correlation stopped.
    pub ended_at: DateTime<Utc>,
    /// Messages the schedule called for.
    pub planned: u64,
    /// Messages handed to Kafka and delivered, per channel.
    pub sent: BTreeMap<Channel, u64>,
    /// Messages Kafka did not take (delivery failed).
    pub send_errors: u64,
    /// Sends later than `late_after_ms` behind their intended time.
    pub late: u64,
    pub late_after_ms: f64,
    /// How far behind its intended time each send was.
    pub lateness_us: Hist,
    /// Ack events of this run correlated to their payloads.
    pub events: u64,
    /// Acks with this run's payload ids that could not be matched: an unknown status, or an id this run
    /// never sent.
    pub unknown_events: u64,
    /// Acks on the topic whose payload id or status could not be read at the configured pointers.
    #[serde(default)]
    pub undecodable_acks: u64,
    /// Copies of acks already counted (same payload and status): not events, not latency samples.
    #[serde(default)]
    pub duplicate_acks: u64,
    /// Payloads with a final outcome (DELIVERY, BOUNCE, REJECT, UNDELIVERED, or anything after DELIVERY).
    pub resolved: u64,
    /// Payloads sent without a final outcome by the end of the wait.
    pub lost: u64,
    /// Of those, payloads whose final ack the scenario's injected faults never send readable (dropped,
    /// skipped or corrupted): known only when the run knows the scenario (`--mock`, or `--scenario`).
    #[serde(default)]
    pub lost_injected: u64,
    /// Of those, payloads whose first readable final ack the scenario plans after the wait ended.
    #[serde(default)]
    pub lost_late: u64,
    /// The first lost payload ids (at most [`LOST_LISTED`]).
    pub lost_ids: Vec<String>,
    /// Per channel, per status.
    pub statuses: BTreeMap<Channel, BTreeMap<Status, StatusFigures>>,
    /// Intended messages per second of the schedule, and how many were sent in that second.
    pub timeline: Vec<Second>,
    /// Through a front door: its HTTP figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFigures>,
}

/// Lost payload ids listed in the results; the count is always complete.
pub const LOST_LISTED: usize = 1000;

/// One second of the run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Second {
    /// Messages the profile called for in this second.
    pub target: u64,
    /// Messages sent in this second.
    pub sent: u64,
    /// Final outcomes received in this second.
    pub resolved: u64,
    /// Sends in this second later than `late_after_ms`.
    pub late: u64,
    /// The latest send in this second, behind its intended time, in microseconds.
    pub lateness_max_us: u64,
}

/// One row of a run's record: one status of one message, or the lack of any.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub seq: u64,
    pub channel: Channel,
    /// A status, or [`LOST`] (no final status by the end of the wait), or [`NOT_SENT`] (Kafka refused it).
    pub status: &'static str,
    /// The message's intended send time, in microseconds since the epoch.
    pub intended_at_us: i64,
    /// From the intended send time to the status's arrival; none for LOST and NOT_SENT.
    pub latency_us: Option<i64>,
}

pub const LOST: &str = "LOST";
pub const NOT_SENT: &str = "NOT_SENT";

impl Results {
    pub fn new(started_at: DateTime<Utc>, planned: u64, late_after_ms: f64) -> Self {
        Self {
            started_at,
            sending_ended_at: started_at,
            ended_at: started_at,
            planned,
            sent: BTreeMap::new(),
            send_errors: 0,
            late: 0,
            late_after_ms,
            lateness_us: Hist::default(),
            events: 0,
            unknown_events: 0,
            undecodable_acks: 0,
            duplicate_acks: 0,
            resolved: 0,
            lost: 0,
            lost_injected: 0,
            lost_late: 0,
            lost_ids: Vec::new(),
            statuses: BTreeMap::new(),
            timeline: Vec::new(),
            http: None,
        }
    }

    pub fn sent_total(&self) -> u64 {
        self.sent.values().sum()
    }

    /// Messages sent per second, over the sending span.
    pub fn throughput(&self) -> f64 {
        let secs = (self.sending_ended_at - self.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if secs <= 0.0 { 0.0 } else { self.sent_total() as f64 / secs }
    }

    /// Figures of one status over every channel (or one), merged.
    pub fn status(&self, channel: Option<Channel>, status: Status) -> StatusFigures {
        let mut out = StatusFigures::default();
        for (c, per) in &self.statuses {
            if channel.is_some_and(|ch| ch != *c) {
                continue;
            }
            if let Some(f) = per.get(&status) {
                out.payloads += f.payloads;
                out.latency_us.merge(&f.latency_us);
            }
        }
        out
    }

    pub fn sent_of(&self, channel: Option<Channel>) -> u64 {
        match channel {
            Some(c) => self.sent.get(&c).copied().unwrap_or(0),
            None => self.sent_total(),
        }
    }

    /// Fold another process's results of the same run into these.
    pub fn merge(&mut self, other: &Results) {
        // Timelines are aligned on each process's own start: put both on the earlier one.
        let offset = ((other.started_at - self.started_at).num_milliseconds() as f64 / 1000.0).round() as i64;
        if offset < 0 {
            let mut shifted = vec![Second::default(); (-offset) as usize];
            shifted.append(&mut self.timeline);
            self.timeline = shifted;
        }
        let shift = offset.max(0) as usize;
        self.started_at = self.started_at.min(other.started_at);
        self.sending_ended_at = self.sending_ended_at.max(other.sending_ended_at);
        self.ended_at = self.ended_at.max(other.ended_at);
        self.planned += other.planned;
        for (c, n) in &other.sent {
            *self.sent.entry(*c).or_default() += n;
        }
        self.send_errors += other.send_errors;
        self.late += other.late;
        self.late_after_ms = self.late_after_ms.max(other.late_after_ms);
        self.lateness_us.merge(&other.lateness_us);
        self.events += other.events;
        self.unknown_events += other.unknown_events;
        self.duplicate_acks += other.duplicate_acks;
        self.undecodable_acks += other.undecodable_acks;
        self.resolved += other.resolved;
        self.lost += other.lost;
        self.lost_injected += other.lost_injected;
        self.lost_late += other.lost_late;
        for id in &other.lost_ids {
            if self.lost_ids.len() < LOST_LISTED {
                self.lost_ids.push(id.clone());
            }
        }
        for (c, per) in &other.statuses {
            let mine = self.statuses.entry(*c).or_default();
            for (s, f) in per {
                let m = mine.entry(*s).or_default();
                m.payloads += f.payloads;
                m.latency_us.merge(&f.latency_us);
            }
        }
        if let Some(h) = &other.http {
            self.http.get_or_insert_with(HttpFigures::default).merge(h);
        }
        if self.timeline.len() < other.timeline.len() + shift {
            self.timeline.resize(other.timeline.len() + shift, Second::default());
        }
        for (i, s) in other.timeline.iter().enumerate() {
            let m = &mut self.timeline[i + shift];
            m.target += s.target;
            m.sent += s.sent;
            m.resolved += s.resolved;
            m.late += s.late;
            m.lateness_max_us = m.lateness_max_us.max(s.lateness_max_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results_with(latencies_ms: &[u64]) -> Results {
        let mut r = Results::new(Utc::now(), latencies_ms.len() as u64, 10.0);
        r.sent.insert(Channel::Email, latencies_ms.len() as u64);
        let f = r.statuses.entry(Channel::Email).or_default().entry(Status::Delivery).or_default();
        for ms in latencies_ms {
            f.payloads += 1;
            f.latency_us.record(ms * 1000);
        }
        r
    }

    #[test]
    fn merging_histograms_is_exact_not_an_average_of_percentiles() {
        // One process saw only fast deliveries, the other only slow ones: the merged p50 is where the
        // combined samples put it, which averaging the two p50s would not give.
        let fast: Vec<u64> = (1..=900).collect();
        let slow: Vec<u64> = (1..=100).map(|i| 10_000 + i).collect();
        let mut a = results_with(&fast);
        let b = results_with(&slow);
        let mut all = fast.clone();
        all.extend(&slow);
        a.merge(&b);
        let merged = a.status(None, Status::Delivery);
        let direct = results_with(&all).status(None, Status::Delivery);
        assert_eq!(merged.payloads, 1000);
        for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
            assert_eq!(merged.latency_us.quantile_ms(q), direct.latency_us.quantile_ms(q), "q {q}");
        }
        let p50 = merged.latency_us.quantile_ms(0.5);
        assert!((p50 - 500.0).abs() < 1.0, "p50 {p50}");
    }

    #[test]
    fn merged_timelines_line_up_on_the_earlier_start() {
        let t = Utc::now();
        let mut late = Results::new(t + chrono::Duration::seconds(5), 0, 10.0);
        late.timeline = vec![Second { sent: 7, ..Default::default() }];
        let mut early = Results::new(t, 0, 10.0);
        early.timeline = vec![Second { sent: 3, ..Default::default() }];
        let mut a = late.clone();
        a.merge(&early);
        let mut b = early.clone();
        b.merge(&late);
        for m in [a, b] {
            assert_eq!(m.started_at, t);
            assert_eq!(m.timeline.iter().map(|s| s.sent).collect::<Vec<_>>(), vec![3, 0, 0, 0, 0, 7]);
        }
    }

    #[test]
    fn results_round_trip_through_json() {
        let mut r = results_with(&[1, 2, 3, 250, 7000]);
        r.timeline = vec![Second { target: 5, sent: 5, resolved: 4, late: 1, lateness_max_us: 12_000 }];
        let text = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        let (x, y) = (r.status(None, Status::Delivery), back.status(None, Status::Delivery));
        assert_eq!(x.latency_us.len(), y.latency_us.len());
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(x.latency_us.quantile_ms(q), y.latency_us.quantile_ms(q));
        }
        assert_eq!(back.timeline, r.timeline);
    }
}
