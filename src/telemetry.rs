//! Tracing and metrics. Every metric Understudy exports is named here and recorded through a function,
//! never through a raw string at a call site.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::config::{LogFormat, TelemetrySettings};
use crate::model::{Channel, Status};

pub const MESSAGES_CONSUMED: &str = "understudy_messages_consumed_total";
pub const MESSAGES_DEAD_LETTERED: &str = "understudy_messages_dead_lettered_total";
pub const DEAD_LETTER_COPIES: &str = "understudy_dead_letter_copies_total";
pub const DEAD_LETTER_FAILED: &str = "understudy_dead_letter_failed_total";
pub const STAGE_FAILURES: &str = "understudy_stage_failures_total";
pub const MESSAGES_SKIPPED: &str = "understudy_messages_skipped_total";
pub const SCENARIO_RELOADS: &str = "understudy_scenario_reloads_total";
pub const EVENTS_EMITTED: &str = "understudy_events_emitted_total";
pub const EVENTS_FAILED: &str = "understudy_events_failed_total";
pub const LIFECYCLES_IN_FLIGHT: &str = "understudy_lifecycles_in_flight";
pub const LIFECYCLES_ASLEEP: &str = "understudy_lifecycles_asleep";
pub const LIFECYCLES_RESUMED: &str = "understudy_lifecycles_resumed_total";
pub const PERSIST_BATCH_ROWS: &str = "understudy_persist_batch_rows";
pub const PERSIST_SECONDS: &str = "understudy_persist_seconds";
pub const PERSIST_ERRORS: &str = "understudy_persist_errors_total";
pub const EMISSION_LAG_SECONDS: &str = "understudy_emission_lag_seconds";
pub const CONSUMER_LAG: &str = "understudy_consumer_lag_messages";
pub const BACKPRESSURE_SECONDS: &str = "understudy_backpressure_micros_total";
pub const OFFSETS_COMMITTED: &str = "understudy_offsets_committed_total";
pub const WEBHOOK_ATTEMPTS: &str = "understudy_webhook_attempts_total";
pub const RATE_LIMITED: &str = "understudy_http_rate_limited_total";
pub const HTTP_REQUESTS: &str = "understudy_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "understudy_http_request_seconds";
pub const WEBHOOK_SECONDS: &str = "understudy_webhook_seconds";
pub const WEBHOOK_RETRIES: &str = "understudy_webhook_retries_total";
pub const STAGE_UP: &str = "understudy_stage_up";

/// The stages whose waits on a full stage downstream [`backpressure`] counts.
pub const BACKPRESSURE_STAGES: [&str; 8] =
    ["channel", "dead_letter", "emitter", "lifecycles", "persister_events", "persister_messages", "store", "webhooks"];
/// Webhook attempts' outcomes, as [`webhook_attempt`] labels them.
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "refused", "unreachable"];

/// Handles of the per-message metrics, registered once: a handle records without the registry lookup
/// (hashing of name and labels) that a `counter!` call pays each time.
struct Hot {
    consumed: [Counter; 3],
    emitted: [[Counter; Status::ALL.len()]; 3],
    lag: [Histogram; 3],
    in_flight: [Gauge; 3],
    asleep: [Gauge; 3],
    /// By [`VENDORS`] and [`WEBHOOK_OUTCOMES`].
    webhook_attempts: [[Counter; 3]; 4],
    webhook_seconds: [Histogram; 4],
    webhook_retries: [Counter; 4],
    /// By [`DOORS`] and [`HTTP_STATUSES`].
    http_requests: [[Counter; HTTP_STATUSES.len()]; 5],
    http_seconds: [Histogram; 5],
}

/// The vendors' labels, in [`crate::wire::Vendor::ALL`]'s order.
const VENDORS: [&str; 4] = ["twilio", "whatsapp", "sendgrid", "ses"];
/// The doors' labels: the vendors', and `other` for a path of none.
const DOORS: [&str; 5] = ["twilio", "whatsapp", "sendgrid", "ses", "other"];
/// The HTTP statuses the doors answer most, with handles of their own; others are looked up.
const HTTP_STATUSES: [&str; 8] = ["200", "201", "202", "400", "401", "404", "413", "429"];

fn position(labels: &[&str], label: &str) -> Option<usize> {
    labels.iter().position(|l| *l == label)
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// Registered on first use, which is after the exporter is installed (or never, in library use: then
/// they record nowhere, as the macros would).
fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        consumed: Channel::ALL.map(|c| counter!(MESSAGES_CONSUMED, "channel" => c.as_str())),
        emitted: Channel::ALL
            .map(|c| Status::ALL.map(|s| counter!(EVENTS_EMITTED, "channel" => c.as_str(), "status" => s.as_str()))),
        lag: Channel::ALL.map(|c| histogram!(EMISSION_LAG_SECONDS, "channel" => c.as_str())),
        in_flight: Channel::ALL.map(|c| gauge!(LIFECYCLES_IN_FLIGHT, "channel" => c.as_str())),
        asleep: Channel::ALL.map(|c| gauge!(LIFECYCLES_ASLEEP, "channel" => c.as_str())),
        webhook_attempts: VENDORS
            .map(|v| WEBHOOK_OUTCOMES.map(|o| counter!(WEBHOOK_ATTEMPTS, "vendor" => v, "outcome" => o))),
        webhook_seconds: VENDORS.map(|v| histogram!(WEBHOOK_SECONDS, "vendor" => v)),
        webhook_retries: VENDORS.map(|v| counter!(WEBHOOK_RETRIES, "vendor" => v)),
        http_requests: DOORS.map(|d| HTTP_STATUSES.map(|s| counter!(HTTP_REQUESTS, "vendor" => d, "status" => s))),
        http_seconds: DOORS.map(|d| histogram!(HTTP_REQUEST_SECONDS, "vendor" => d)),
    })
}

pub fn messages_consumed(channel: Channel, n: u64) {
    hot().consumed[channel.index()].increment(n);
}

pub fn scenario_reload(result: &'static str) {
    counter!(SCENARIO_RELOADS, "result" => result).increment(1);
}

pub fn messages_skipped(reason: &'static str, n: u64) {
    counter!(MESSAGES_SKIPPED, "reason" => reason).increment(n);
}

pub fn message_dead_lettered(reason_kind: &'static str) {
    counter!(MESSAGES_DEAD_LETTERED, "reason" => reason_kind).increment(1);
}

/// A pipeline stage stopped while the pipeline was running (the service then exits non-zero).
pub fn stage_failed() {
    counter!(STAGE_FAILURES).increment(1);
}

/// A rejected record the DLQ would not take whole went as a copy (`body-cut` or `headers-only`).
pub fn dead_letter_copy(form: &'static str) {
    counter!(DEAD_LETTER_COPIES, "copy" => form).increment(1);
}

/// A rejected record of which the DLQ took nothing: skipped so that its partition moves on.
pub fn dead_letter_failed(reason_kind: &'static str) {
    counter!(DEAD_LETTER_FAILED, "reason" => reason_kind).increment(1);
}

pub fn event_emitted(channel: Channel, status: Status, lag: Duration) {
    let h = hot();
    h.emitted[channel.index()][status as usize].increment(1);
    h.lag[channel.index()].record(lag.as_secs_f64());
}

pub fn event_failed(channel: Channel) {
    counter!(EVENTS_FAILED, "channel" => channel.as_str()).increment(1);
}

pub fn lifecycles_in_flight(channel: Channel, delta: f64) {
    hot().in_flight[channel.index()].increment(delta);
}

pub fn lifecycles_asleep(channel: Channel, delta: f64) {
    hot().asleep[channel.index()].increment(delta);
}

pub fn lifecycles_resumed(n: u64) {
    counter!(LIFECYCLES_RESUMED).increment(n);
}

pub fn persisted(rows: usize, took: Duration) {
    histogram!(PERSIST_BATCH_ROWS).record(rows as f64);
    histogram!(PERSIST_SECONDS).record(took.as_secs_f64());
}

pub fn persist_error() {
    counter!(PERSIST_ERRORS).increment(1);
}

pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string()).set(lag as f64);
}

/// Time a data path spent waiting on a full mailbox or queue downstream.
pub fn backpressure(stage: &'static str, waited: Duration) {
    debug_assert!(BACKPRESSURE_STAGES.contains(&stage), "{stage} is not in BACKPRESSURE_STAGES");
    counter!(BACKPRESSURE_SECONDS, "stage" => stage).increment(waited.as_micros() as u64);
}

pub fn offsets_committed(n: usize) {
    counter!(OFFSETS_COMMITTED).increment(n as u64);
}

/// One webhook delivery attempt, by vendor and outcome (`delivered`, `refused`, `unreachable`).
pub fn webhook_attempt(vendor: &'static str, outcome: &'static str) {
    match (position(&VENDORS, vendor), position(&WEBHOOK_OUTCOMES, outcome)) {
        (Some(v), Some(o)) => hot().webhook_attempts[v][o].increment(1),
        _ => counter!(WEBHOOK_ATTEMPTS, "vendor" => vendor, "outcome" => outcome).increment(1),
    }
}

/// How long one webhook attempt took, from the request to the receiver's answer (or the failure).
pub fn webhook_took(vendor: &'static str, took: Duration) {
    match position(&VENDORS, vendor) {
        Some(v) => hot().webhook_seconds[v].record(took.as_secs_f64()),
        None => histogram!(WEBHOOK_SECONDS, "vendor" => vendor).record(took.as_secs_f64()),
    }
}

/// A webhook attempt that failed and is retried by the vendor's policy.
pub fn webhook_retry(vendor: &'static str) {
    match position(&VENDORS, vendor) {
        Some(v) => hot().webhook_retries[v].increment(1),
        None => counter!(WEBHOOK_RETRIES, "vendor" => vendor).increment(1),
    }
}

/// One request to the front doors, by the vendor whose path it asked for (`other`: none) and HTTP status.
pub fn http_request(vendor: &'static str, status: u16, took: Duration) {
    let mut code = itoa::Buffer::new();
    let code = code.format(status);
    let door = position(&DOORS, vendor);
    match (door, position(&HTTP_STATUSES, code)) {
        (Some(d), Some(s)) => hot().http_requests[d][s].increment(1),
        _ => counter!(HTTP_REQUESTS, "vendor" => vendor, "status" => code.to_owned()).increment(1),
    }
    match door {
        Some(d) => hot().http_seconds[d].record(took.as_secs_f64()),
        None => histogram!(HTTP_REQUEST_SECONDS, "vendor" => vendor).record(took.as_secs_f64()),
    }
}

/// A pipeline stage started (`up`) or stopped.
pub fn stage_up(stage: &str, up: bool) {
    gauge!(STAGE_UP, "stage" => stage.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// Every series whose labels are known in advance, at zero: a counter that appears only with its first
/// increment hides that increment from `rate()` and `increase()`, and a dashboard panel or alert over it
/// shows "no data" where the answer is 0.
fn register_known_series() {
    for vendor in crate::wire::Vendor::ALL.map(crate::wire::Vendor::as_str) {
        for outcome in WEBHOOK_OUTCOMES {
            counter!(WEBHOOK_ATTEMPTS, "vendor" => vendor, "outcome" => outcome).increment(0);
        }
        counter!(WEBHOOK_RETRIES, "vendor" => vendor).increment(0);
        counter!(RATE_LIMITED, "vendor" => vendor).increment(0);
    }
    for reason in crate::kafka::decode::REJECTION_KINDS {
        counter!(MESSAGES_DEAD_LETTERED, "reason" => reason).increment(0);
        counter!(DEAD_LETTER_FAILED, "reason" => reason).increment(0);
    }
    for copy in ["body-cut", "headers-only"] {
        counter!(DEAD_LETTER_COPIES, "copy" => copy).increment(0);
    }
    for reason in ["other_tenant", "redelivered"] {
        counter!(MESSAGES_SKIPPED, "reason" => reason).increment(0);
    }
    for result in ["loaded", "rejected"] {
        counter!(SCENARIO_RELOADS, "result" => result).increment(0);
    }
    for stage in BACKPRESSURE_STAGES {
        counter!(BACKPRESSURE_SECONDS, "stage" => stage).increment(0);
    }
    for channel in Channel::ALL {
        counter!(EVENTS_FAILED, "channel" => channel.as_str()).increment(0);
    }
    for name in [STAGE_FAILURES, LIFECYCLES_RESUMED, PERSIST_ERRORS, OFFSETS_COMMITTED] {
        counter!(name).increment(0);
    }
    // The per-message handles: every channel and status at zero.
    hot();
}

/// A front door's send call answered 429 by `http.rate_limits`, by vendor.
pub fn rate_limited(vendor: &'static str) {
    counter!(RATE_LIMITED, "vendor" => vendor).increment(1);
}

/// Install the tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init_tracing(settings: &TelemetrySettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Start the Prometheus exporter on `addr`.
/// The Prometheus exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the metrics exporter on {addr}: {source} (check `telemetry.metrics_addr`)")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    pub source: metrics_exporter_prometheus::BuildError,
}

/// Start the Prometheus exporter on `addr`.
pub fn init_metrics(addr: SocketAddr) -> Result<(), MetricsError> {
    let lag_buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let rows_buckets = [1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0];
    let http_buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let error = |source| MetricsError { addr, source };
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for (name, buckets) in [
        (EMISSION_LAG_SECONDS, &lag_buckets[..]),
        (PERSIST_SECONDS, &lag_buckets),
        (PERSIST_BATCH_ROWS, &rows_buckets),
        (HTTP_REQUEST_SECONDS, &http_buckets),
        (WEBHOOK_SECONDS, &http_buckets),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets).map_err(error)?;
    }
    builder.install().map_err(error)?;
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "Requests to the front doors, by vendor (the path's; `other` for none) and HTTP status."
    );
    metrics::describe_histogram!(HTTP_REQUEST_SECONDS, "Front doors' response time, by vendor.");
    metrics::describe_histogram!(WEBHOOK_SECONDS, "Duration of one webhook attempt, by vendor.");
    metrics::describe_counter!(WEBHOOK_RETRIES, "Webhook attempts that failed and are retried, by vendor.");
    metrics::describe_gauge!(STAGE_UP, "1 while a pipeline stage runs, 0 once it stopped, by stage.");
    metrics::describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts, by vendor and outcome (delivered, refused, unreachable)."
    );
    metrics::describe_counter!(RATE_LIMITED, "Front doors' send calls answered 429 by http.rate_limits, by vendor.");
    metrics::describe_counter!(MESSAGES_CONSUMED, "Outbound messages consumed and decoded, by channel.");
    metrics::describe_counter!(MESSAGES_DEAD_LETTERED, "Outbound messages sent to the dead-letter topic, by reason.");
    metrics::describe_counter!(
        DEAD_LETTER_COPIES,
        "Rejected records the dead-letter topic would not take whole, sent as a copy instead, by copy (`body-cut`, `headers-only`)."
    );
    metrics::describe_counter!(
        DEAD_LETTER_FAILED,
        "Rejected records of which the dead-letter topic took nothing, skipped so that their partition moves on, by reason."
    );
    metrics::describe_counter!(
        STAGE_FAILURES,
        "Pipeline stages that stopped while the pipeline was running; the service then exits non-zero."
    );
    metrics::describe_counter!(
        MESSAGES_SKIPPED,
        "Outbound messages taken and committed without a lifecycle, by reason (`other_tenant`: not one of `input.tenants`; `redelivered`: a record of the current assignment the broker delivered again)."
    );
    metrics::describe_counter!(
        SCENARIO_RELOADS,
        "Scenario file changes seen while running, by result (`loaded`, `rejected`: invalid, the running version stays)."
    );
    metrics::describe_counter!(EVENTS_EMITTED, "Ack events delivered to the ack topic, by channel and status.");
    metrics::describe_counter!(EVENTS_FAILED, "Ack events the producer could not deliver.");
    metrics::describe_gauge!(LIFECYCLES_IN_FLIGHT, "Lifecycles not finished, running as actors or asleep.");
    metrics::describe_gauge!(
        LIFECYCLES_ASLEEP,
        "Lifecycles asleep in their channel actor's queue until shortly before their next step."
    );
    metrics::describe_counter!(LIFECYCLES_RESUMED, "Unfinished lifecycles resumed from the store.");
    metrics::describe_histogram!(PERSIST_BATCH_ROWS, "Rows per store write.");
    metrics::describe_histogram!(PERSIST_SECONDS, "Duration of one store write.");
    metrics::describe_counter!(PERSIST_ERRORS, "Failed store writes (retried).");
    metrics::describe_histogram!(EMISSION_LAG_SECONDS, "Emitted minus scheduled time of ack events.");
    metrics::describe_gauge!(CONSUMER_LAG, "High watermark minus consumed position, per partition.");
    metrics::describe_counter!(
        BACKPRESSURE_SECONDS,
        "Microseconds spent waiting on a full stage downstream, by stage."
    );
    metrics::describe_counter!(OFFSETS_COMMITTED, "Partition offsets committed.");
    register_known_series();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_handles_labels_are_the_vendors_and_doors() {
        assert_eq!(VENDORS, crate::wire::Vendor::ALL.map(crate::wire::Vendor::as_str));
        assert_eq!(DOORS[..4], VENDORS);
        assert_eq!(DOORS[4], "other");
        assert!(HTTP_STATUSES.iter().all(|s| s.parse::<u16>().is_ok()));
    }
}
