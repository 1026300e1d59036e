//! `understudy load`: an open-model load generator with ack correlation.
//!
//! Messages go out on a schedule (the rate profile), not when earlier ones finished, so a slow system
//! cannot hide its stalls; each send's lateness behind its intended time is recorded. A correlator reads
//! the ack topic (or the platform's own status topic) and matches every event to its payload by id,
//! recording the latency from the intended send time to each status in HdrHistograms. A payload with no
//! final outcome by the end of the wait is lost. The results go into the store's `runs` table, where
//! `understudy report` finds them again and merges the parts of several generator processes.

pub mod cli;
pub mod compare;
pub mod door;
pub mod error;
pub mod gate;
pub mod html;
pub mod message;
pub mod notify;
pub mod profile;
pub mod report;
pub mod results;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaSettings;
use crate::model::{Channel, Status};
use crate::wire::headers::{INTENDED_AT_HEADER, RUN_ID_HEADER};
pub use error::{LoadError, Result};
use gate::{Gate, Verdict};
use message::MessageFactory;
use profile::Profile;
use results::{Hist, LOST, LOST_LISTED, NOT_SENT, Results, Sample, Second, StatusFigures};

/// The most messages one generator process sends in one run.
pub const MAX_MESSAGES: u64 = 50_000_000;

/// Exit code of `load` and `report` when a gate fails.
pub const GATE_FAILED_EXIT: u8 = 3;

/// Whether `id` names a run: letters, digits, `.`, `_` and `-`.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new run's id: `run-YYYYMMDD-HHMMSS-` and six hex digits.
pub fn new_run_id() -> String {
    format!("run-{}-{}", Utc::now().format("%Y%m%d-%H%M%S"), &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// Everything a generator process was asked to do; stored with the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadSettings {
    pub run_id: String,
    /// This process's number within the run; processes of one run must use different numbers.
    pub generator: u32,
    pub profile: String,
    /// At most this many messages (the profile may call for more).
    pub max_messages: Option<u64>,
    pub batch_size: u64,
    /// Pause between batches, in milliseconds (the profile's clock stops meanwhile).
    pub batch_gap_ms: u64,
    pub mix: String,
    pub tenant_id: String,
    /// Body size in bytes (the template's `{{padding}}` fills up to it).
    pub payload_bytes: usize,
    /// The body template, when not the default.
    pub template: Option<String>,
    /// Listed recipients per channel, used in turn instead of generated ones.
    #[serde(default)]
    pub recipients: BTreeMap<Channel, Vec<String>>,
    pub topic: String,
    pub ack_topic: String,
    /// JSON pointers to the payload id and status in an ack.
    pub ack_payload_id: String,
    pub ack_status: String,
    /// How long to wait for final outcomes after the last send, in milliseconds.
    pub ack_timeout_ms: u64,
    /// How long to keep listening after every payload has its outcome (for OPEN, CLICK, READ), in ms.
    pub linger_ms: u64,
    /// A send more than this behind its intended time is late, in milliseconds.
    pub late_after_ms: f64,
}

/// The state of one message, as bits: one per status seen, and whether it was sent or failed.
struct Flags(Vec<AtomicU16>);

const SENT: u16 = 1 << 15;
const FAILED: u16 = 1 << 14;
/// Statuses that give a payload its final outcome.
const FINAL: u16 = {
    let mut m = 0u16;
    let mut i = 0;
    while i < Status::ALL.len() {
        if Status::ALL[i].can_end() {
            m |= 1 << i;
        }
        i += 1;
    }
    m
};

fn status_bit(s: Status) -> u16 {
    1 << (s as u16)
}

/// What the generator, the correlator and the progress display share.
struct Shared {
    flags: Flags,
    /// When message 0 is due.
    t0: Instant,
    /// Set when sending stops (done, or interrupted).
    sending_done: AtomicBool,
    stop_sending: AtomicBool,
    stop_correlating: AtomicBool,
    handed: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    late: AtomicU64,
    resolved: AtomicU64,
    events: AtomicU64,
    /// Latency so far per status (every channel), for the progress: refreshed by the correlator about
    /// once a second.
    live: std::sync::Mutex<Vec<LiveStatus>>,
}

/// One status's latency so far, as the progress shows it.
#[derive(Clone, Debug, serde::Serialize)]
struct LiveStatus {
    status: Status,
    events: u64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Shared {
    fn new(total: u64, t0: Instant) -> Self {
        Self {
            flags: Flags((0..total).map(|_| AtomicU16::new(0)).collect()),
            t0,
            sending_done: AtomicBool::new(false),
            stop_sending: AtomicBool::new(false),
            stop_correlating: AtomicBool::new(false),
            handed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            late: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            events: AtomicU64::new(0),
            live: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// A message's due time, in microseconds after `t0`.
struct Schedule {
    profile: Profile,
    batch_size: u64,
    gap_us: u64,
    total: u64,
}

impl Schedule {
    fn due_us(&self, seq: u64) -> Option<u64> {
        if seq >= self.total {
            return None;
        }
        let t = self.profile.time_of(seq)?;
        Some((t * 1e6) as u64 + (seq / self.batch_size) * self.gap_us)
    }
}

/// A finished load run.
pub struct Outcome {
    pub settings: LoadSettings,
    pub results: Results,
    /// One row per message and status (and one per lost or unsent message).
    pub samples: Vec<Sample>,
    pub verdicts: Vec<Verdict>,
}

/// How the progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Bar,
    Quiet,
    /// One JSON object a second on standard error (`{"progress": {…}}`), for programs: the control API.
    Json,
}

/// Where a run's messages go and its statuses come from.
pub enum Transport<'a> {
    /// Messages to a topic, acks from a topic.
    Kafka { kafka: &'a KafkaSettings, brokers: &'a str },
    /// Send calls to a vendor's front door, statuses from the webhooks this process receives.
    Door { target: Box<door::DoorTarget>, observed: std::sync::mpsc::Receiver<door::Observed> },
}

/// Run the generator and the correlator until every payload has its outcome or the wait ends.
pub async fn run(
    transport: Transport<'_>,
    settings: LoadSettings,
    template: message::Template,
    gates: &[Gate],
    progress: Progress,
) -> Result<Outcome> {
    let profile: Profile = settings.profile.parse()?;
    let mut total = profile.total();
    if let Some(max) = settings.max_messages {
        total = total.min(max);
    }
    if total > MAX_MESSAGES {
        return Err(LoadError::TooManyMessages { profile: settings.profile.clone(), total, max: MAX_MESSAGES });
    }
    let schedule = Arc::new(Schedule {
        profile,
        batch_size: settings.batch_size.max(1),
        gap_us: settings.batch_gap_ms * 1000,
        total,
    });
    let factory = Arc::new(message_factory(&settings, template)?);

    // Message 0 is due a moment from now, once both threads are running.
    let t0 = Instant::now() + Duration::from_millis(100);
    let started_at = Utc::now() + chrono::Duration::milliseconds(100);
    let shared = Arc::new(Shared::new(total, t0));
    let late_after_us = (settings.late_after_ms * 1000.0) as u64;
    let (correlator, generator) = match transport {
        Transport::Kafka { kafka, brokers } => {
            // The correlator starts reading where the ack topic ends now: this run's acks all come later.
            let consumer = ack_consumer(kafka, brokers, &settings.ack_topic)?;
            let producer: ThreadedProducer<Delivered> =
                producer_config(kafka, brokers).create_with_context(Delivered { shared: shared.clone() })?;
            let correlator = {
                let (shared, schedule, factory) = (shared.clone(), schedule.clone(), factory.clone());
                let pointers = (settings.ack_payload_id.clone(), settings.ack_status.clone());
                std::thread::Builder::new()
                    .name("load-correlator".into())
                    .spawn(move || correlate(consumer, &shared, &schedule, &factory, &pointers))
                    .map_err(LoadError::io("starting the correlator thread"))?
            };
            let generator = {
                let (shared, schedule, factory) = (shared.clone(), schedule.clone(), factory.clone());
                let topic = settings.topic.clone();
                let epoch_us = started_at.timestamp_micros();
                std::thread::Builder::new()
                    .name("load-generator".into())
                    .spawn(move || {
                        (generate(producer, &shared, &schedule, &factory, &topic, late_after_us, epoch_us), None)
                    })
                    .map_err(LoadError::io("starting the generator thread"))?
            };
            (correlator, generator)
        }
        Transport::Door { target, observed } => {
            let correlator = {
                let (shared, schedule, factory) = (shared.clone(), schedule.clone(), factory.clone());
                std::thread::Builder::new()
                    .name("load-correlator".into())
                    .spawn(move || correlate_observed(observed, &shared, &schedule, &factory))
                    .map_err(LoadError::io("starting the correlator thread"))?
            };
            let generator = {
                let (shared, schedule, factory) = (shared.clone(), schedule.clone(), factory.clone());
                std::thread::Builder::new()
                    .name("load-generator".into())
                    .spawn(move || {
                        let (sent, figures) = door::generate(&target, &shared, &schedule, &factory, late_after_us);
                        (sent, Some(figures))
                    })
                    .map_err(LoadError::io("starting the generator thread"))?
            };
            (correlator, generator)
        }
    };

    let bar = progress_bar(total, progress);
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let ack_timeout = Duration::from_millis(settings.ack_timeout_ms);
    let linger = Duration::from_millis(settings.linger_ms);
    let (mut sending_ended, mut all_resolved): (Option<Instant>, Option<Instant>) = (None, None);
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut interrupt => {
                if shared.stop_sending.swap(true, Ordering::Relaxed) {
                    shared.stop_correlating.store(true, Ordering::Relaxed);
                    bar.abandon();
                    return Err(LoadError::Interrupted);
                }
                bar.println("interrupted: sending stops; waiting for the acks of what was sent (Ctrl-C again to quit)");
                interrupt = Box::pin(tokio::signal::ctrl_c());
            }
        }
        let now = Instant::now();
        let handed = shared.handed.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let resolved = shared.resolved.load(Ordering::Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 1.0 {
            rate = (handed - last.1) as f64 / dt;
            last = (now, handed);
        }
        let elapsed = now.saturating_duration_since(t0).as_secs_f64();
        if progress == Progress::Json && dt >= 1.0 {
            let line = serde_json::json!({"progress": {
                "elapsed_s": (elapsed * 10.0).round() / 10.0,
                "planned": total,
                "sent": handed,
                "rate_per_s": rate.round(),
                "target_per_s": schedule.profile.rate_at(elapsed).round(),
                "resolved": resolved,
                "lag": delivered.saturating_sub(resolved),
                "late": shared.late.load(Ordering::Relaxed),
                "send_errors": failed,
                "sending": !shared.sending_done.load(Ordering::Acquire),
                "latency": *shared.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            }});
            eprintln!("{line}");
        }
        bar.set_position(handed);
        bar.set_message(format!(
            "{rate:.0}/s (target {:.0}/s) · acked {resolved} · lag {} · late {}{}",
            schedule.profile.rate_at(elapsed),
            delivered.saturating_sub(resolved),
            shared.late.load(Ordering::Relaxed),
            if failed > 0 { format!(" · send errors {failed}") } else { String::new() }
        ));
        if shared.sending_done.load(Ordering::Acquire) && delivered + failed >= handed {
            let ended = *sending_ended.get_or_insert(now);
            if resolved >= delivered {
                if now.duration_since(*all_resolved.get_or_insert(now)) >= linger {
                    break;
                }
            } else if now.duration_since(ended) >= ack_timeout {
                break;
            }
        }
    }
    bar.finish_and_clear();
    shared.stop_correlating.store(true, Ordering::Relaxed);
    let (sent, http) = generator.join().map_err(|_| LoadError::Panicked("generator"))?;
    let correlated = correlator.join().map_err(|_| LoadError::Panicked("correlator"))?;

    let mut results = Results::new(started_at, total, settings.late_after_ms);
    results.sending_ended_at = started_at + chrono::Duration::microseconds(sent.last_send_us as i64);
    results.ended_at = Utc::now();
    results.late = shared.late.load(Ordering::Relaxed);
    results.lateness_us = sent.lateness;
    results.send_errors = shared.failed.load(Ordering::Relaxed);
    results.events = correlated.events;
    results.unknown_events = correlated.unmatched;
    results.duplicate_acks = correlated.duplicates;
    results.undecodable_acks = correlated.undecodable;
    results.statuses = correlated.statuses;
    let epoch_us = started_at.timestamp_micros();
    let intended_at = |seq: u64| epoch_us + schedule.due_us(seq).unwrap_or(0) as i64;
    let mut samples: Vec<Sample> = correlated
        .samples
        .iter()
        .map(|&(seq, status, latency)| Sample {
            seq,
            channel: factory.mix.channel_of(seq),
            status: status.as_str(),
            intended_at_us: intended_at(seq),
            latency_us: Some(latency as i64),
        })
        .collect();
    for (seq, f) in shared.flags.0.iter().enumerate() {
        let f = f.load(Ordering::Relaxed);
        let seq = seq as u64;
        let missing = |status| Sample {
            seq,
            channel: factory.mix.channel_of(seq),
            status,
            intended_at_us: intended_at(seq),
            latency_us: None,
        };
        if f & SENT == 0 {
            continue;
        }
        if f & FAILED != 0 {
            samples.push(missing(NOT_SENT));
            continue;
        }
        if f & FINAL == 0 {
            samples.push(missing(LOST));
        }
        let seq = seq as usize;
        *results.sent.entry(factory.mix.channel_of(seq as u64)).or_default() += 1;
        if f & FINAL != 0 {
            results.resolved += 1;
        } else {
            results.lost += 1;
            if results.lost_ids.len() < LOST_LISTED {
                let mut id = String::new();
                factory.payload_id(seq as u64, &mut id);
                results.lost_ids.push(id);
            }
        }
    }
    results.timeline = sent.timeline;
    results.http = http;
    for (i, n) in correlated.resolved_per_second.iter().enumerate() {
        if results.timeline.len() <= i {
            results.timeline.resize(i + 1, Second::default());
        }
        results.timeline[i].resolved = *n;
    }
    let verdicts = gates.iter().map(|g| g.check(&results)).collect();
    Ok(Outcome { settings, results, samples, verdicts })
}

/// The messages of a generator process, as its settings describe them.
fn message_factory(settings: &LoadSettings, template: message::Template) -> Result<MessageFactory> {
    Ok(MessageFactory::new(
        &settings.run_id,
        settings.generator,
        &settings.tenant_id,
        settings.batch_size,
        settings.mix.parse()?,
        template,
        settings.payload_bytes,
    )
    .with_recipients(&settings.recipients))
}

/// The headers of a load message: the generator sends them, and a lost message is rebuilt with them.
fn message_headers<'a>(
    factory: &'a MessageFactory,
    payload_id: &'a str,
    batch_id: &'a str,
    intended_at_us: &'a str,
) -> [(&'static str, &'a [u8]); 5] {
    [
        (RUN_ID_HEADER, factory.run_id.as_bytes()),
        (INTENDED_AT_HEADER, intended_at_us.as_bytes()),
        ("tenant-id", factory.tenant_id.as_bytes()),
        ("correlation-id", payload_id.as_bytes()),
        ("batch-id", batch_id.as_bytes()),
    ]
}

/// With the scenario the mock ran (or the one the run names), tell the lost payloads of `outcome` apart:
/// those whose final ack the scenario's injected faults never send readable (dropped, skipped, or
/// corrupted with no readable duplicate), and those whose first readable final ack the scenario plans
/// after the run stopped waiting, or less than a second before (a long delay tail, a short
/// `--ack-timeout`). The rest are real losses. Then check `gates` again with those figures. Each lost
/// message is rebuilt as it was sent, decoded with `input` as the service would, and planned without its
/// receipt time (outage windows and throttles depend on when and how fast the service took it, which the
/// run does not know).
pub fn explain_lost(
    outcome: &mut Outcome,
    template: message::Template,
    scenario: &crate::scenario::Scenario,
    input: &crate::config::InputSettings,
    gates: &[Gate],
) -> Result<()> {
    use crate::kafka::decode::{Decoder, RawRecord};
    let factory = message_factory(&outcome.settings, template)?;
    let decoder = Decoder::new(input.clone()).with_rule_headers(scenario.rule_headers());
    let topic: Arc<str> = Arc::from(outcome.settings.topic.as_str());
    let (mut id, mut batch, mut body) = (String::new(), String::new(), Vec::new());
    // An ack due this close to the end may still be on its way (consumed, woken, produced, read back).
    const LATE_MARGIN_US: i64 = 1_000_000;
    let ended_us = outcome.results.ended_at.timestamp_micros();
    let (mut injected, mut late) = (0, 0);
    for sample in outcome.samples.iter().filter(|x| x.status == LOST) {
        let (seq, channel) = (sample.seq, sample.channel);
        factory.payload_id(seq, &mut id);
        batch.clear();
        factory.batch_id(seq, &mut batch);
        factory.body(seq, channel, &mut body);
        let mut intended = itoa::Buffer::new();
        let intended = intended.format(sample.intended_at_us);
        let raw = RawRecord {
            topic: topic.clone(),
            topic_id: topic.clone(),
            partition: 0,
            offset: seq as i64,
            payload: Some(&body),
            headers: message_headers(&factory, &id, &batch, intended).map(|(k, v)| (k, Some(v))).to_vec(),
        };
        let Ok(message) = decoder.decode(&raw, Utc::now()) else {
            continue;
        };
        let mut view = crate::scenario::rules::MessageView::of(&message);
        view.received_us = None;
        let Some(plan) = scenario.plan_for(&view) else {
            continue;
        };
        // The first final ack the platform could read, by its due time after the intended send.
        let first_final = plan
            .steps
            .iter()
            .filter(|st| st.status.can_end() && st.fault != Some(crate::model::Fault::Corrupt))
            .map(|st| st.due_us)
            .min();
        match first_final {
            None => injected += 1,
            Some(due_us) if sample.intended_at_us + due_us > ended_us - LATE_MARGIN_US => late += 1,
            Some(_) => {}
        }
    }
    outcome.results.lost_injected = injected;
    outcome.results.lost_late = late;
    outcome.verdicts = gates.iter().map(|g| g.check(&outcome.results)).collect();
    Ok(())
}

/// Store a finished run (this process's part of it).
pub async fn save(store: &crate::store::Store, outcome: &Outcome, scenario: Option<String>) -> Result<()> {
    let r = &outcome.results;
    store
        .save_run(&crate::store::RunRow {
            run_id: outcome.settings.run_id.clone(),
            generator: outcome.settings.generator as i32,
            started_at_us: r.started_at.timestamp_micros(),
            ended_at_us: r.ended_at.timestamp_micros(),
            settings: serde_json::to_string(&outcome.settings)?,
            scenario,
            results: serde_json::to_string(r)?,
        })
        .await?;
    let rows: Vec<crate::store::RunEventRow> = outcome
        .samples
        .iter()
        .map(|s| crate::store::RunEventRow {
            generator: outcome.settings.generator as i32,
            seq: s.seq as i64,
            channel: s.channel.as_str().to_owned(),
            status: s.status.to_owned(),
            intended_at_us: s.intended_at_us,
            latency_us: s.latency_us,
        })
        .collect();
    store.save_run_events(&outcome.settings.run_id, outcome.settings.generator as i32, &rows).await?;
    Ok(())
}

/// A stored run, its generator processes' parts merged.
pub struct StoredRun {
    pub run_id: String,
    /// Set when this is one generator process's part only.
    pub only_generator: Option<u32>,
    pub generators: usize,
    pub settings: Vec<LoadSettings>,
    pub scenario: Option<String>,
    pub results: Results,
}

/// Read a run back from the store.
pub async fn load(store: &crate::store::Store, run_id: &str) -> Result<StoredRun> {
    load_parts(store, run_id, None).await
}

/// Read a run back from the store: every generator process's part merged, or only `generator`'s.
pub async fn load_parts(store: &crate::store::Store, run_id: &str, generator: Option<u32>) -> Result<StoredRun> {
    match load_stored(store, run_id, generator).await? {
        Some(run) => Ok(run),
        None => Err(LoadError::NoRun(run_id.to_owned())),
    }
}

/// A run (or one generator's part of it) from the store; `None` when it has no such part.
pub async fn load_stored(
    store: &crate::store::Store,
    run_id: &str,
    generator: Option<u32>,
) -> Result<Option<StoredRun>> {
    let mut parts = store.run_parts(run_id).await?;
    if let Some(g) = generator {
        parts.retain(|p| p.generator == g as i32);
    }
    let Some(first) = parts.first() else { return Ok(None) };
    let unreadable = |source| LoadError::StoredRun { run_id: run_id.to_owned(), source };
    let mut results: Results = serde_json::from_str(&first.results).map_err(unreadable)?;
    let mut settings = vec![serde_json::from_str(&first.settings).map_err(unreadable)?];
    for p in &parts[1..] {
        results.merge(&serde_json::from_str(&p.results).map_err(unreadable)?);
        settings.push(serde_json::from_str(&p.settings).map_err(unreadable)?);
    }
    Ok(Some(StoredRun {
        run_id: run_id.to_owned(),
        only_generator: generator,
        generators: parts.len(),
        settings,
        scenario: parts.iter().find_map(|p| p.scenario.clone()),
        results,
    }))
}

fn progress_bar(total: u64, progress: Progress) -> ProgressBar {
    if progress != Progress::Bar {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix("load");
    bar
}

fn producer_config(kafka: &KafkaSettings, brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("client.id", "understudy-load")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none");
    for (k, v) in &kafka.librdkafka {
        cfg.set(k, v);
    }
    cfg
}

/// A consumer assigned every partition of the ack topic at its current end.
fn ack_consumer(kafka: &KafkaSettings, brokers: &str, topic: &str) -> Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("client.id", "understudy-load")
        .set("group.id", format!("understudy-load-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        // A drained prefetch queue is refilled after 20 ms, not librdkafka's 1 s (which would show as a
        // second of latency on acks arriving in a burst).
        .set("fetch.queue.backoff.ms", "20");
    for (k, v) in &kafka.librdkafka {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(LoadError::NoAckTopic(topic.to_owned()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        // Acks already in the topic belong to earlier runs; the correlator skips any it still reads (a
        // broker may report an end below the true one), since their payload ids are not this run's.
        let offset = match consumer.fetch_watermarks(topic, p, timeout) {
            Ok((_, high)) => Offset::Offset(high),
            Err(_) => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, p, offset)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Counts deliveries and marks the messages Kafka did not take.
struct Delivered {
    shared: Arc<Shared>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let shared = &self.shared;
        match result {
            Ok(_) => shared.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, seq, "a load message was not delivered");
                shared.flags.0[seq].fetch_or(FAILED, Ordering::Relaxed);
                shared.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What the generator thread measured.
struct Sent {
    lateness: Hist,
    /// Per second of the run: messages due, sent, late, and the largest lateness.
    timeline: Vec<Second>,
    /// When the last message was handed over, in microseconds after `t0`.
    last_send_us: u64,
}

impl Sent {
    /// Message `seq`, due `due` µs after `t0`, is handed off now: marked sent, its lateness recorded (late
    /// beyond `late_after_us`), counted in its seconds of the timeline.
    fn handed_off(&mut self, shared: &Shared, seq: u64, due: u64, late_after_us: u64) {
        shared.flags.0[seq as usize].fetch_or(SENT, Ordering::Relaxed);
        let sent_us = shared.t0.elapsed().as_micros() as u64;
        let late_us = sent_us.saturating_sub(due);
        self.lateness.record(late_us);
        if late_us > late_after_us {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        let (d, s) = ((due / 1_000_000) as usize, (sent_us / 1_000_000) as usize);
        if self.timeline.len() <= d.max(s) {
            self.timeline.resize(d.max(s) + 1, Second::default());
        }
        self.timeline[d].target += 1;
        let second = &mut self.timeline[s];
        second.sent += 1;
        second.lateness_max_us = second.lateness_max_us.max(late_us);
        if late_us > late_after_us {
            second.late += 1;
        }
        self.last_send_us = sent_us;
        shared.handed.fetch_add(1, Ordering::Relaxed);
    }
}

fn generate(
    producer: ThreadedProducer<Delivered>,
    shared: &Shared,
    schedule: &Schedule,
    factory: &MessageFactory,
    topic: &str,
    late_after_us: u64,
    epoch_us: i64,
) -> Sent {
    let mut out = Sent { lateness: Hist::default(), timeline: Vec::new(), last_send_us: 0 };
    let (mut body, mut id, mut batch_id) = (Vec::new(), String::new(), String::new());
    let mut seq = 0u64;
    while let Some(due_us) = schedule.due_us(seq) {
        if shared.stop_sending.load(Ordering::Relaxed) {
            break;
        }
        let now_us = shared.t0.elapsed().as_micros() as u64;
        let now_us = if now_us < due_us {
            // In slices, so that an interrupt during a long pause is seen (before `t0`, `elapsed` reads 0).
            let mut n = now_us;
            while n < due_us && !shared.stop_sending.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros((due_us - n).min(100_000)));
                n = shared.t0.elapsed().as_micros() as u64;
            }
            if n < due_us {
                break;
            }
            n
        } else {
            now_us
        };
        // Everything due by now goes out at once.
        let mut next = Some(due_us);
        while let Some(due) = next.filter(|d| *d <= now_us) {
            let channel = factory.mix.channel_of(seq);
            factory.payload_id(seq, &mut id);
            factory.body(seq, channel, &mut body);
            batch_id.clear();
            factory.batch_id(seq, &mut batch_id);
            let mut intended = itoa::Buffer::new();
            let intended = intended.format(epoch_us + due as i64);
            let mut headers = OwnedHeaders::new_with_capacity(5);
            for (key, value) in message_headers(factory, &id, &batch_id, intended) {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            let mut record = BaseRecord::with_opaque_to(topic, seq as usize).key(&id).payload(&body).headers(headers);
            let mut abandoned = false;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) =>
                    {
                        // Kafka is not taking messages (a broker down, say): an interrupt ends the wait, and
                        // the message counts as never sent.
                        if shared.stop_sending.load(Ordering::Relaxed) {
                            abandoned = true;
                            break;
                        }
                        record = r;
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Err((e, _)) => {
                        tracing::warn!(error = %e, seq, "a load message could not be produced");
                        shared.flags.0[seq as usize].fetch_or(FAILED, Ordering::Relaxed);
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            if abandoned {
                break;
            }
            out.handed_off(shared, seq, due, late_after_us);
            seq += 1;
            next = schedule.due_us(seq);
        }
    }
    shared.sending_done.store(true, Ordering::Release);
    // Deliveries are counted by the producer's own thread; wait for them before it is dropped.
    let _ = producer.flush(Duration::from_secs(60));
    out
}

/// What the correlator thread found.
struct Correlated {
    /// Acks in which the payload id or status could not be read (any run's).
    undecodable: u64,
    /// Every matched event: message, status, latency in microseconds.
    samples: Vec<(u64, Status, u64)>,
    events: u64,
    unmatched: u64,
    /// Acks of a payload and status already seen: Kafka's at-least-once copies (same event id).
    duplicates: u64,
    statuses: BTreeMap<Channel, BTreeMap<Status, StatusFigures>>,
    resolved_per_second: Vec<u64>,
}

/// An ack, as Understudy writes it; other fields are skipped.
#[derive(Deserialize)]
struct AckView<'a> {
    #[serde(borrow)]
    payload_id: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

fn read_ack<'a>(payload: &'a [u8], pointers: &(String, String)) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
    if pointers.0 == "/payload_id" && pointers.1 == "/status" {
        let a: AckView<'a> = serde_json::from_slice(payload).ok()?;
        return Some((a.payload_id, a.status));
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = v.pointer(&pointers.0)?.as_str()?.to_owned();
    let status = v.pointer(&pointers.1)?.as_str()?.to_owned();
    Some((Cow::Owned(id), Cow::Owned(status)))
}

fn correlate(
    consumer: BaseConsumer,
    shared: &Shared,
    schedule: &Schedule,
    factory: &MessageFactory,
    pointers: &(String, String),
) -> Correlated {
    let mut c = Correlator::new(shared, schedule, factory, pointers);
    while !shared.stop_correlating.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        match m {
            Ok(m) => c.observe_record(&m, shared.t0.elapsed().as_micros() as u64),
            Err(e) => tracing::debug!(error = %e, "ack consumer"),
        }
        c.publish_live();
    }
    c.out
}

/// The correlator of a run through a front door: the statuses the webhook receiver saw.
fn correlate_observed(
    observed: std::sync::mpsc::Receiver<door::Observed>,
    shared: &Shared,
    schedule: &Schedule,
    factory: &MessageFactory,
) -> Correlated {
    let pointers = (String::new(), String::new());
    let mut c = Correlator::new(shared, schedule, factory, &pointers);
    while !shared.stop_correlating.load(Ordering::Relaxed) {
        match observed.recv_timeout(Duration::from_millis(50)) {
            Ok(o) => {
                let received_us = o.at.saturating_duration_since(shared.t0).as_micros() as u64;
                c.record(&o.payload_id, o.status.as_str(), received_us);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
        }
        c.publish_live();
    }
    c.out
}

/// Matches acks to this process's payloads and records them.
struct Correlator<'a> {
    shared: &'a Shared,
    schedule: &'a Schedule,
    factory: &'a MessageFactory,
    pointers: &'a (String, String),
    out: Correlated,
    /// When the latency so far is next published to [`Shared::live`].
    next_live: Instant,
}

impl<'a> Correlator<'a> {
    fn new(
        shared: &'a Shared,
        schedule: &'a Schedule,
        factory: &'a MessageFactory,
        pointers: &'a (String, String),
    ) -> Self {
        let out = Correlated {
            undecodable: 0,
            samples: Vec::new(),
            events: 0,
            unmatched: 0,
            duplicates: 0,
            statuses: BTreeMap::new(),
            resolved_per_second: Vec::new(),
        };
        Self { shared, schedule, factory, pointers, out, next_live: Instant::now() }
    }

    /// About once a second: each status's latency so far, over every channel, into [`Shared::live`].
    fn publish_live(&mut self) {
        let now = Instant::now();
        if now < self.next_live {
            return;
        }
        self.next_live = now + Duration::from_secs(1);
        let mut per_status: BTreeMap<Status, Hist> = BTreeMap::new();
        for figures in self.out.statuses.values() {
            for (status, f) in figures {
                per_status.entry(*status).or_default().merge(&f.latency_us);
            }
        }
        let live = per_status
            .into_iter()
            .map(|(status, h)| LiveStatus {
                status,
                events: h.len(),
                p50_ms: (h.quantile_ms(0.5) * 10.0).round() / 10.0,
                p99_ms: (h.quantile_ms(0.99) * 10.0).round() / 10.0,
            })
            .collect();
        *self.shared.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = live;
    }

    /// One record of the ack topic, received `received_us` after `t0`: the acks its body holds (the
    /// native event, or the fields the pointers name), or, for a vendor format, the acks its headers name
    /// (`understudy-ack` on a batch, `understudy-status` with the key on one event).
    fn observe_record(&mut self, m: &impl Message, received_us: u64) {
        let mut status_header = None;
        if let Some(hs) = m.headers() {
            let mut batch = false;
            for h in hs.iter() {
                match h.key {
                    crate::wire::headers::ACK_HEADER => {
                        batch = true;
                        let ack = h.value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.split_once(' '));
                        match ack {
                            Some((status, payload_id)) => self.record(payload_id, status, received_us),
                            None => self.out.undecodable += 1,
                        }
                    }
                    crate::wire::headers::STATUS_HEADER => status_header = h.value,
                    _ => {}
                }
            }
            if batch {
                return;
            }
        }
        if let Some(status) = status_header {
            let (Some(id), Ok(status)) =
                (m.key().and_then(|k| std::str::from_utf8(k).ok()), std::str::from_utf8(status))
            else {
                self.out.undecodable += 1;
                return;
            };
            return self.record(id, status, received_us);
        }
        self.observe(m.payload().unwrap_or_default(), received_us)
    }

    /// One ack's body, received `received_us` after `t0`.
    fn observe(&mut self, payload: &[u8], received_us: u64) {
        let Some((payload_id, status)) = read_ack(payload, self.pointers) else {
            self.out.undecodable += 1;
            return;
        };
        self.record(&payload_id, &status, received_us)
    }

    /// One ack of `payload_id` with `status`.
    fn record(&mut self, payload_id: &str, status: &str, received_us: u64) {
        let (shared, factory, out) = (self.shared, self.factory, &mut self.out);
        if !payload_id.starts_with(factory.prefix()) {
            return; // another run's, or another process's
        }
        let (Some(seq), Ok(status)) = (factory.seq_of(&payload_id), status.parse::<Status>()) else {
            out.unmatched += 1;
            return;
        };
        let Some(due_us) = self.schedule.due_us(seq) else {
            out.unmatched += 1;
            return;
        };
        let bit = status_bit(status);
        let before = shared.flags.0[seq as usize].fetch_or(bit, Ordering::Relaxed);
        // A second ack of a payload and status is a redelivered copy (acks are at least once, with the same
        // event id); only DEFERRED may really happen more than once.
        if before & bit != 0 && status != Status::Deferred {
            out.duplicates += 1;
            return;
        }
        out.events += 1;
        shared.events.fetch_add(1, Ordering::Relaxed);
        let figures = out.statuses.entry(factory.mix.channel_of(seq)).or_default().entry(status).or_default();
        let latency_us = received_us.saturating_sub(due_us);
        figures.latency_us.record(latency_us);
        out.samples.push((seq, status, latency_us));
        if before & bit == 0 {
            figures.payloads += 1;
        }
        if bit & FINAL != 0 && before & FINAL == 0 {
            shared.resolved.fetch_add(1, Ordering::Relaxed);
            let s = (received_us / 1_000_000) as usize;
            if out.resolved_per_second.len() <= s {
                out.resolved_per_second.resize(s + 1, 0);
            }
            out.resolved_per_second[s] += 1;
        }
    }
}

/// For the benchmark: feed `acks` (ack JSON of run `run_id`, generator 0, messages `0..messages`) through
/// the correlator on this thread; returns `(events matched, payloads resolved)`.
#[doc(hidden)]
pub fn correlate_in_memory(run_id: &str, messages: u64, acks: &[Vec<u8>]) -> (u64, u64) {
    let schedule = Schedule {
        profile: Profile::constant(1e6, Duration::from_secs(3600)),
        batch_size: 1000,
        gap_us: 0,
        total: messages,
    };
    let factory =
        MessageFactory::new(run_id, 0, "load", 1000, message::Mix::default(), message::Template::default(), 0);
    let shared = Shared::new(messages, Instant::now());
    let pointers = ("/payload_id".to_owned(), "/status".to_owned());
    let mut c = Correlator::new(&shared, &schedule, &factory, &pointers);
    for (i, a) in acks.iter().enumerate() {
        c.observe(a, i as u64);
    }
    (c.out.events, shared.resolved.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_are_those_a_lifecycle_may_end_on() {
        for s in Status::ALL {
            assert_eq!(FINAL & status_bit(s) != 0, s.can_end(), "{s}");
        }
        assert_eq!(FINAL & (SENT | FAILED), 0);
    }

    #[test]
    fn batches_pause_the_schedule() {
        let s = Schedule {
            profile: Profile::constant(1000.0, Duration::from_secs(10)),
            batch_size: 100,
            gap_us: 50_000,
            total: 250,
        };
        assert_eq!(s.due_us(0), Some(0));
        assert_eq!(s.due_us(99), Some(99_000));
        assert_eq!(s.due_us(100), Some(150_000)); // 100 ms in, plus one 50 ms gap
        assert_eq!(s.due_us(249), Some(349_000));
        assert_eq!(s.due_us(250), None, "capped by max messages");
    }
}
