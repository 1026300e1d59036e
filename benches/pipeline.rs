//! Service benchmarks with Postgres, on the embedded broker or Apache Kafka, printing the figures the
//! README quotes.
//!
//! The service runs as the real binary in a child process, so its CPU time and memory are its own; tansu
//! runs in this process, Apache Kafka in its own. Input is loaded into the topic before the service
//! starts, so the throughput figure is the service's, not the publisher's.
//!
//! Parts:
//! - `throughput`: end to end, zero delays.
//! - `floor`: librdkafka alone with the same traffic (the floor under the service's CPU figure).
//! - `consumer`: consuming alone, librdkafka with the service's consumer settings beside Apache Kafka's own
//!   `kafka-consumer-perf-test` (`ConsumerPerformance`, from the same jars as the broker), same records.
//! - `latency`: the pipeline's own overhead: `understudy load` at 2,000 messages/s into a running service
//!   with every step due at once; from each message's intended send to its SEND ack's arrival.
//! - `memory`: pending lifecycles, asleep and as actors.
//!
//!     cargo bench --bench pipeline                          # every part on tansu, 200,000 messages
//!     cargo bench --bench pipeline -- --broker apache       # on Apache Kafka (or `--broker both`)
//!     BENCH_MESSAGES=50000 cargo bench --bench pipeline -- floor
//!     BENCH_RATE=2000 BENCH_RATE_SECONDS=30 cargo bench --bench pipeline -- --broker both latency

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)] // shared with the other benches
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{create_topics, drop_database, fresh_database, metric, proc_usage, start_service, stop};
use understudy::demo::{publish, sample_batch};
use understudy::load::{self, Progress};
use understudy::model::Status;
use understudy::scenario::Scenario;
use understudy::store::Store;

async fn throughput(dir: &Path, brokers: &str, n: usize) {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/zero-delay.yaml");
    let scenario = Scenario::load(&scenario_path).unwrap();
    let batch = sample_batch("tp", n);
    let events: usize = batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).unwrap().steps.len()).sum();
    create_topics(brokers, "tp").await;
    let t = Instant::now();
    publish(brokers, "bench.tp.outbound", &batch, None).await.unwrap();
    println!("  loaded {n} messages into the input topic in {:.1} s", t.elapsed().as_secs_f64());

    let svc = start_service(dir, brokers, &url, &scenario_path, "tp", "");
    let pid = svc.child.id();
    // Progress from the service's own metrics (rows written), so that polling does not load Postgres.
    let mut start: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let rows = (n + events) as f64;
    loop {
        let written = metric(svc.metrics_port, "understudy_persist_batch_rows_sum").unwrap_or(0.0);
        if start.is_none() && metric(svc.metrics_port, "understudy_messages_consumed_total").unwrap_or(0.0) > 0.0 {
            start = Some((Instant::now(), proc_usage(pid).0));
        }
        if written >= rows {
            break;
        }
        assert!(Instant::now() < deadline, "benchmark did not finish: {written} of {rows} rows");
        // Each scrape renders every metric: scraping at 100 Hz the whole run would bill the service for
        // work a Prometheus scraping every 15 s never asks of it. Fine-grained only near the end.
        let poll_ms = if written >= rows * 0.97 { 5 } else { 100 };
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
    let t = store.totals().await.unwrap();
    assert_eq!((t.messages as usize, t.events as usize), (n, events), "everything stored once");
    let (t0, cpu0) = start.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_usage(pid);
    let cpu = cpu1 - cpu0;
    stop(svc);
    println!("  end to end, zero delays: {n} messages, {events} acks in {secs:.2} s");
    println!(
        "    throughput        {:>10.0} outbound messages/s ({:.0} acks/s)",
        n as f64 / secs,
        events as f64 / secs
    );
    println!("    service CPU       {:>10.2} µs per outbound message ({cpu:.2} s CPU)", cpu * 1e6 / n as f64);
    println!("    service RSS       {:>10.1} MiB at the end", rss as f64 / 1048576.0);
    store.close().await;
    drop_database(&url).await;
}

/// librdkafka alone, as the floor under the service's CPU figure: the same traffic as the throughput run
/// (every input record consumed in a group with the service's consumer settings; the same number of acks,
/// of the same size, keyed by payload id, with the propagated headers and the event-id header, produced
/// with the service's producer settings, each with a delivery report) and none of Understudy's work: no
/// decoding, planning, actors, JSON or store. Runs in a child process (this binary again) so that its CPU
/// is its own.
async fn floor(brokers: &str, n: usize) {
    let scenario_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/zero-delay.yaml");
    let scenario = Scenario::load(&scenario_path).unwrap();
    let batch = sample_batch("fl", n);
    let events: usize = batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).unwrap().steps.len()).sum();
    create_topics(brokers, "fl").await;
    publish(brokers, "bench.fl.outbound", &batch, None).await.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_FLOOR", format!("{brokers} {n} {events}"))
        // The service's allocator setting (see `tune_allocator` in main.rs).
        .env("MIMALLOC_PURGE_DELAY", std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "10000".into()))
        .stderr(Stdio::inherit())
        .output()
        .expect("floor child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [cpu, secs] = figures[..] else { panic!("floor child printed `{text}`") };
    println!(
        "  librdkafka alone, the same traffic: {n} records consumed, {events} produced with delivery reports in {secs:.2} s"
    );
    println!("    client CPU        {:>10.2} µs per outbound message ({cpu:.2} s CPU)", cpu * 1e6 / n as f64);
}

/// The floor's child: consume `n` records, produce `events` acks, exit when all are delivered; prints
/// `CPU-seconds elapsed-seconds` from the first record on.
fn floor_child(spec: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl rdkafka::ClientContext for Count {}
    impl ProducerContext for Count {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
            assert!(r.is_ok(), "floor ack not delivered");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut it = spec.split(' ');
    let brokers = it.next().unwrap();
    let n: usize = it.next().unwrap().parse().unwrap();
    let events: usize = it.next().unwrap().parse().unwrap();
    let mut k = understudy::config::KafkaSettings::default();
    k.group_id = "bench-floor".into();
    k.librdkafka = support::librdkafka_from_env("BENCH_LIBRDKAFKA");
    let consumer: BaseConsumer = understudy::kafka::consumer_config(&k, brokers).create().unwrap();
    consumer.subscribe(&["bench.fl.outbound"]).unwrap();
    let producer: ThreadedProducer<Count> =
        understudy::kafka::producer_config(&k, brokers).create_with_context(Count(AtomicUsize::new(0))).unwrap();
    let ack = vec![b'x'; 330]; // an ack event's JSON is about this long
    let event_id = "5b0f3c1e-8d2a-5e4f-9a10-3c5b7d2e4f61";
    // As many acks per record as the service produces: three for the first `extra` records, then two.
    let extra = events - 2 * n;
    let (mut consumed, mut produced) = (0usize, 0usize);
    let mut start: Option<(Instant, f64)> = None;
    while consumed < n {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap();
        start.get_or_insert_with(|| (Instant::now(), proc_usage(std::process::id()).0));
        let key = m.key().unwrap_or_default();
        let acks = if consumed < extra { 3 } else { 2 };
        for _ in 0..acks {
            let mut h = OwnedHeaders::new_with_capacity(3);
            if let Some(hs) = m.headers() {
                for x in hs.iter() {
                    h = h.insert(Header { key: x.key, value: x.value });
                }
            }
            h = h.insert(Header { key: "understudy-event-id", value: Some(event_id) });
            let mut record = BaseRecord::to("bench.fl.acks").key(key).payload(&ack[..]).headers(h);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
            produced += 1;
        }
        consumed += 1;
    }
    assert_eq!(produced, events);
    while producer.context().0.load(Ordering::Relaxed) < events {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (t0, cpu0) = start.unwrap();
    println!("{} {}", proc_usage(std::process::id()).0 - cpu0, t0.elapsed().as_secs_f64());
}

/// Consuming alone, the same records two ways: librdkafka with the service's consumer settings (this
/// binary again, as a child), and Apache Kafka's `kafka-consumer-perf-test` (`ConsumerPerformance`, from
/// the broker's jars, its default consumer settings). Both from the assignment to the last record; each
/// in a process of its own, its CPU from `getrusage` (the JVM's start-up included).
async fn consumer(brokers: &str, n: usize) {
    let batch = sample_batch("co", n);
    create_topics(brokers, "co").await;
    publish(brokers, "bench.co.outbound", &batch, None).await.unwrap();
    let bytes: usize = batch.iter().map(|m| m.body.len() + m.payload_id.len()).sum();
    println!("  consuming alone: {n} records of {} bytes on average (key and value), 6 partitions", bytes / n);

    let cpu0 = support::children_cpu();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_CONSUME", format!("{brokers} {n}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("consumer child runs");
    let cpu = support::children_cpu() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text.trim().parse().unwrap_or_else(|_| panic!("consumer child printed `{text}`"));
    let ours = n as f64 / secs;
    println!(
        "    librdkafka        {:>10.0} records/s from the assignment ({:.2} µs CPU per record; the service's consumer settings)",
        ours,
        cpu * 1e6 / n as f64
    );

    let cpu0 = support::children_cpu();
    let out = common::kafka::kafka_java("org.apache.kafka.tools.ConsumerPerformance")
        .args(["--bootstrap-server", brokers, "--topic", "bench.co.outbound", "--group", "bench-co-java"])
        .args(["--messages", &n.to_string(), "--timeout", "120000"])
        .stderr(Stdio::inherit())
        .output()
        .expect("kafka-consumer-perf-test runs (Java 17 and the Apache Kafka jars)");
    let cpu = support::children_cpu() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kafka-consumer-perf-test failed: {text}");
    // A header line and a line of figures, comma separated.
    let mut lines = text.lines().filter(|l| l.contains(','));
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').map(str::trim).collect();
    let values: Vec<&str> = lines.next().unwrap_or_default().split(',').map(str::trim).collect();
    let field = |name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no `{name}` in `{text}`"));
        values[i].parse().unwrap()
    };
    assert_eq!(field("data.consumed.in.nMsg") as usize, n, "kafka-consumer-perf-test consumed every record");
    let java = field("fetch.nMsg.sec");
    println!(
        "    kafka-consumer-perf-test {:>5.0} records/s from the assignment (fetch.nMsg.sec; {:.2} µs CPU per record, JVM start-up included)",
        java,
        cpu * 1e6 / n as f64
    );
    println!("    ratio             {:>10.2} (librdkafka / kafka-consumer-perf-test)", ours / java);
}

/// The consumer child: consume `n` records; prints the seconds from the assignment (the end of the group
/// join, where `kafka-consumer-perf-test`'s fetch time starts too) to the last record.
fn consume_child(spec: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Assigned(Mutex<Option<Instant>>);
    impl rdkafka::ClientContext for Assigned {}
    impl ConsumerContext for Assigned {
        fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
            if matches!(r, Rebalance::Assign(_)) {
                self.0.lock().unwrap().get_or_insert_with(Instant::now);
            }
        }
    }
    let mut it = spec.split(' ');
    let brokers = it.next().unwrap();
    let n: usize = it.next().unwrap().parse().unwrap();
    let mut k = understudy::config::KafkaSettings::default();
    k.group_id = "bench-co-librdkafka".into();
    k.librdkafka = support::librdkafka_from_env("BENCH_LIBRDKAFKA");
    let consumer: BaseConsumer<Assigned> =
        understudy::kafka::consumer_config(&k, brokers).create_with_context(Assigned::default()).unwrap();
    consumer.subscribe(&["bench.co.outbound"]).unwrap();
    let mut consumed = 0usize;
    while consumed < n {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        m.unwrap();
        consumed += 1;
    }
    let assigned = consumer.context().0.lock().unwrap().expect("assigned before the first record");
    println!("{}", assigned.elapsed().as_secs_f64());
}

/// The pipeline's own overhead: `understudy load` (in this process) sends at `rate` messages/s for
/// `seconds` s to the service (a child process) running a scenario with every step due at once; latency
/// is from each message's intended send time to its ack's arrival at the generator's consumer. A warm-up
/// run first, so that the group has settled and the figures hold no assignment.
async fn latency(dir: &Path, brokers: &str, rate: u64, seconds: u64) {
    use understudy::load::results::Hist;
    let url = fresh_database().await;
    let scenario_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/zero-delay.yaml");
    create_topics(brokers, "lat").await;
    let svc = start_service(dir, brokers, &url, &scenario_path, "lat", "");
    let mut kafka = understudy::config::KafkaSettings { partitions: 6, ..Default::default() };
    // Extra librdkafka settings for the generator's clients, for experiments.
    kafka.librdkafka = support::librdkafka_from_env("BENCH_LOAD_LIBRDKAFKA");
    let template = understudy::load::message::Template::default();
    let warm = load::run(
        load::Transport::Kafka { kafka: &kafka, brokers },
        support::load_settings("lat-warm", "lat", "500@2s"),
        template.clone(),
        &[],
        Progress::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(warm.results.lost, 0, "the warm-up's payloads all have their outcome");
    let profile = format!("{rate}@{seconds}s");
    let out = load::run(
        load::Transport::Kafka { kafka: &kafka, brokers },
        support::load_settings("lat", "lat", &profile),
        template,
        &[],
        Progress::Quiet,
    )
    .await
    .unwrap();
    let (_, rss) = proc_usage(svc.child.id());
    stop(svc);
    let r = &out.results;
    let of = |status: Status| {
        let mut h = Hist::default();
        for by in r.statuses.values() {
            if let Some(f) = by.get(&status) {
                h.merge(&f.latency_us);
            }
        }
        h
    };
    let (send, delivery) = (of(Status::Send), of(Status::Delivery));
    println!("  latency floor: {rate} messages/s for {seconds} s into the running service, every step due at once");
    for (name, h) in [("SEND", &send), ("DELIVERY", &delivery)] {
        println!(
            "    {name:<9} ack     p50 {:>6.1} ms, p90 {:>6.1} ms, p99 {:>6.1} ms, max {:>7.1} ms ({} acks)",
            h.quantile_ms(0.5),
            h.quantile_ms(0.9),
            h.quantile_ms(0.99),
            h.max_ms(),
            h.len()
        );
    }
    println!(
        "    generator         {:.0} messages/s achieved; sends p99 {:.2} ms behind schedule; {} lost; service RSS {:.0} MiB",
        r.throughput(),
        r.lateness_us.quantile_ms(0.99),
        r.lost,
        rss as f64 / 1048576.0
    );
    assert_eq!(r.lost, 0, "every payload has its outcome");
    assert_eq!(send.len(), r.sent_total(), "one SEND per message");
    drop_database(&url).await;
}

/// Memory per pending lifecycle: asleep (the default for waits over `hibernate_after_ms`) or, with
/// hibernation off, each one an actor with its timer.
async fn pending_memory(dir: &Path, brokers: &str, n: usize, asleep: bool) {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pending.yaml");
    let tag = if asleep { "mem" } else { "memactors" };
    create_topics(brokers, tag).await;
    let extra = if asleep { "" } else { "service:\n  hibernate_after_ms: 0\n" };
    let svc = start_service(dir, brokers, &url, &scenario_path, tag, extra);
    let pid = svc.child.id();
    // Idle baseline once the service is up and assigned.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(svc.metrics_port, "understudy_offsets_committed_total").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, rss0) = proc_usage(pid);
    let batch = sample_batch(tag, n);
    publish(brokers, &format!("bench.{tag}.outbound"), &batch, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let in_flight = metric(svc.metrics_port, "understudy_lifecycles_in_flight").unwrap_or(0.0);
        if in_flight as usize >= n && store.totals().await.unwrap().messages as usize >= n {
            break;
        }
        assert!(Instant::now() < deadline, "lifecycles did not all start ({in_flight})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss1) = proc_usage(pid);
    stop(svc);
    let how = if asleep { "asleep, the default" } else { "each an actor: hibernate_after_ms: 0" };
    println!("  {n} pending lifecycles (nothing due for an hour; {how})");
    println!("    RSS idle          {:>10.1} MiB", rss0 as f64 / 1048576.0);
    println!("    RSS with pending  {:>10.1} MiB", rss1 as f64 / 1048576.0);
    println!("    per lifecycle     {:>10.0} bytes", (rss1.saturating_sub(rss0)) as f64 / n as f64);
    store.close().await;
    drop_database(&url).await;
}

fn main() {
    if let Ok(spec) = std::env::var("BENCH_FLOOR") {
        return floor_child(&spec);
    }
    if let Ok(spec) = std::env::var("BENCH_CONSUME") {
        return consume_child(&spec);
    }
    let n: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rate: u64 = std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seconds: u64 = std::env::var("BENCH_RATE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    for k in support::brokers() {
        let broker = support::start(k);
        let brokers = broker.bootstrap();
        println!("understudy benchmarks ({cores} cores), {}, Postgres", support::describe(k));
        rt.block_on(async {
            if support::wanted("throughput") {
                throughput(dir.path(), &brokers, n).await;
            }
            if support::wanted("floor") {
                floor(&brokers, n).await;
            }
            if support::wanted("consumer") {
                consumer(&brokers, n).await;
            }
            if support::wanted("latency") {
                latency(dir.path(), &brokers, rate, seconds).await;
            }
            if support::wanted("memory") {
                pending_memory(dir.path(), &brokers, n, true).await;
                pending_memory(dir.path(), &brokers, n, false).await;
            }
        });
        drop(broker);
    }
}
