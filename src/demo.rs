//! `understudy demo`: a zero-setup showcase on the embedded broker and SQLite, and the helpers it shares
//! with the tests and benchmarks (sample batches, reading a topic back).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::actors::pipeline::Pipeline;
use crate::config::{Settings, redact};
use crate::kafka::embedded::EmbeddedBroker;
use crate::model::Channel;
use crate::scenario::Scenario;
use crate::store::Store;

/// What can stop the demo, or the helpers it shares.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("publishing the sample batch: {0}")]
    Publish(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("opening the store at {url}: {source}")]
    OpenStore { url: String, source: crate::store::StoreError },
    #[error(transparent)]
    Pipeline(#[from] crate::actors::pipeline::PipelineError),
    #[error("the demo's check failed: Kafka and the store disagree")]
    CheckFailed,
}

pub type Result<T, E = DemoError> = std::result::Result<T, E>;

/// The default scenario, built in so the demo runs from any directory.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.yaml");

pub struct DemoOptions {
    pub messages: usize,
    pub time_scale: f64,
    pub scenario: Option<PathBuf>,
}

/// One sample outbound message of a notification platform.
#[derive(Clone, Debug)]
pub struct SampleMessage {
    pub payload_id: String,
    pub channel: Channel,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// `n` messages over the three channels (50% email, 30% SMS, 20% WhatsApp), in batches of 1,000.
pub fn sample_batch(run: &str, n: usize) -> Vec<SampleMessage> {
    (0..n)
        .map(|i| {
            let channel = match i % 10 {
                0..=4 => Channel::Email,
                5..=7 => Channel::Sms,
                _ => Channel::Whatsapp,
            };
            let payload_id = format!("{run}-{i:07}");
            let recipient = match channel {
                Channel::Email => format!("user{i}@example.com"),
                _ => format!("+1555{:07}", i % 10_000_000),
            };
            let body = serde_json::json!({
                "payload_id": payload_id,
                "batch_id": format!("{run}-batch-{:04}", i / 1000),
                "channel": channel.as_str(),
                "recipient": recipient,
                "tenant_id": "demo",
                "template_id": "welcome",
                "params": {"name": "Ada"},
            });
            SampleMessage {
                payload_id,
                channel,
                body: serde_json::to_vec(&body).expect("json"),
                headers: vec![
                    ("traceparent".into(), format!("00-{:032x}-{:016x}-01", i + 1, i + 1)),
                    ("correlation-id".into(), format!("corr-{i}")),
                ],
            }
        })
        .collect()
}

/// Publish raw records; waits for every delivery.
pub async fn publish(
    brokers: &str,
    topic: &str,
    messages: &[SampleMessage],
    progress: Option<&ProgressBar>,
) -> Result<()> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "lz4")
        .create()?;
    for chunk in messages.chunks(5000) {
        let sends = chunk.iter().map(|m| {
            let mut h = OwnedHeaders::new();
            for (k, v) in &m.headers {
                h = h.insert(Header { key: k, value: Some(v) });
            }
            producer.send(
                FutureRecord::to(topic).key(&m.payload_id).payload(&m.body).headers(h),
                rdkafka::util::Timeout::After(Duration::from_secs(30)),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| DemoError::Publish(e))?;
        }
        if let Some(p) = progress {
            p.inc(chunk.len() as u64);
        }
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Read a topic from the beginning until `want` records have arrived or nothing came for `idle`.
/// Does not rely on the broker's high watermark.
pub fn read_topic(brokers: &str, topic: &str, want: usize, idle: Duration) -> Result<Vec<ReadRecord>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("understudy-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < want && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                        .unwrap_or_default(),
                });
            }
            Some(Err(e)) => tracing::debug!(error = %e, "reader"),
            None => {}
        }
    }
    Ok(out)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_owned());
    b
}

pub async fn run(mut settings: Settings, opts: DemoOptions) -> Result<()> {
    let run_id = format!("demo{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let base = match &opts.scenario {
        Some(p) => Scenario::load(p)?,
        None if std::path::Path::new("scenarios/default.yaml").exists() => Scenario::load("scenarios/default.yaml")?,
        None => Scenario::parse(DEFAULT_SCENARIO, std::path::Path::new("default.yaml (built in)"))?,
    };
    let scenario = Arc::new(base.rescaled(opts.time_scale)?);

    // Embedded defaults, own topics and group per run so a shared broker is not disturbed.
    let (_broker, brokers, broker_label) = match &settings.kafka.brokers {
        Some(b) => (None, b.clone(), b.clone()),
        None => {
            let b = EmbeddedBroker::start(0)?;
            let addr = b.bootstrap();
            (Some(b), addr.clone(), format!("{addr} (embedded tansu, memory)"))
        }
    };
    let k = &mut settings.kafka;
    k.input_topics = vec![format!("understudy.{run_id}.outbound")];
    k.ack_topic = format!("understudy.{run_id}.acks");
    k.dlq_topic = format!("understudy.{run_id}.dlq");
    k.group_id = format!("understudy-{run_id}");
    if settings.store.url.is_none() {
        let path = std::env::temp_dir().join(format!("understudy-{run_id}.db"));
        settings.store.url = Some(format!("sqlite://{}", path.display()));
    }
    let url = settings.store.url_or_default();
    let store = Store::connect(&url, 2).await.map_err(|source| DemoError::OpenStore { url: redact(&url), source })?;

    println!("Understudy demo");
    println!("  scenario  {} (time_scale {})", scenario.name(), scenario.file.time_scale);
    println!("  broker    {broker_label}");
    println!("  store     {}", redact(&url));
    println!("  messages  {} over email, sms, whatsapp\n", opts.messages);

    let batch = sample_batch(&run_id, opts.messages);
    let expected_events: usize =
        batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).map_or(0, |p| p.steps.len())).sum();

    let pipeline = Pipeline::start(&settings, scenario.clone(), &brokers).await?;
    let started = Instant::now();
    let p = bar(batch.len() as u64, "publish");
    publish(&brokers, &settings.kafka.input_topics[0], &batch, Some(&p)).await?;
    p.finish();

    let p = bar(expected_events as u64, "acks");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut totals = store.totals().await?;
    while (totals.events as usize) < expected_events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        totals = store.totals().await?;
        p.set_position(totals.events as u64);
    }
    p.finish();
    let elapsed = started.elapsed();
    pipeline.shutdown().await;

    let acks = read_topic(&brokers, &settings.kafka.ack_topic, expected_events, Duration::from_secs(5))?;
    let mut in_kafka: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &acks {
        if let Some((_, id)) = r.headers.iter().find(|(k, _)| k == "understudy-event-id") {
            *in_kafka.entry(id.clone()).or_default() += 1;
        }
    }
    let stored = store.all_event_ids().await?;
    let missing_in_kafka = stored.iter().filter(|id| !in_kafka.contains_key(id.as_bytes())).count();
    let duplicates: usize = in_kafka.values().map(|n| n - 1).sum();
    let counts = store.status_counts().await?;
    totals = store.totals().await?;
    let unfinished = store.unfinished_count().await?;

    let mut table: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for c in counts {
        table.entry(c.channel).or_default().push((c.status, c.n));
    }
    println!("\n  {:<9} {:<12} {:>8}", "channel", "status", "events");
    for (channel, rows) in &table {
        for (status, n) in rows {
            println!("  {channel:<9} {status:<12} {n:>8}");
        }
    }
    let secs = elapsed.as_secs_f64();
    println!(
        "\n  {} messages · {} events · {:.1} s · {:.0} events/s · {:.0} messages/s",
        totals.messages,
        totals.events,
        secs,
        totals.events as f64 / secs,
        totals.messages as f64 / secs
    );
    let ok = missing_in_kafka == 0
        && in_kafka.len() == stored.len()
        && unfinished == 0
        && totals.events as usize == expected_events;
    println!(
        "  check: {} acks in Kafka ({} distinct), {} events in the store, {} planned; {} stored but not in Kafka, {} unfinished lifecycles, {} duplicate acks {}",
        acks.len(),
        in_kafka.len(),
        stored.len(),
        expected_events,
        missing_in_kafka,
        unfinished,
        duplicates,
        if ok { "✓" } else { "✗" }
    );
    store.close().await;
    if !ok {
        return Err(DemoError::CheckFailed);
    }
    Ok(())
}
