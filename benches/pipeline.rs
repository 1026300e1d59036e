//! Service benchmarks on the embedded broker with Postgres, printing the figures the README quotes.
//!
//! The service runs as the real binary in a child process, so its CPU time and memory are its own; the
//! broker runs in this process. Input is loaded into the topic before the service starts, so the
//! throughput figure is the service's, not the publisher's.
//!
//! Parts: `throughput` (end to end, zero delays), `floor` (librdkafka alone with the same traffic: the
//! floor under the service's CPU figure), `memory` (pending lifecycles, asleep and as actors).
//!
//!     cargo bench --bench pipeline              # 200,000 messages each part
//!     BENCH_MESSAGES=50000 cargo bench --bench pipeline floor

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use understudy::demo::{publish, sample_batch};
use understudy::kafka::embedded::EmbeddedBroker;
use understudy::scenario::Scenario;
use understudy::store::Store;

fn ticks_per_sec() -> f64 {
    100.0
}

/// (user + system CPU seconds, RSS bytes) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rss_pages: u64 = f.get(21).and_then(|v| v.parse().ok()).unwrap_or(0);
    (ticks / ticks_per_sec(), rss_pages * 4096)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let total: f64 = body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(total)
}

/// The server the benchmark databases are made on: `DATABASE_URL`, or the local Postgres.
fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drop a benchmark database once its part is done: repeated runs would otherwise leave hundreds of MB
/// each for Postgres to checkpoint and vacuum while the next run measures.
async fn drop_database(url: &str) {
    let base = base_url();
    let name = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("Postgres for the benchmark");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await.unwrap();
}

async fn fresh_database() -> String {
    let base = base_url();
    let name = format!("understudy_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("Postgres for the benchmark");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    url.to_string()
}

struct Service {
    child: Child,
    metrics_port: u16,
}

fn start_service(dir: &Path, brokers: &str, url: &str, scenario: &Path, tag: &str, extra: &str) -> Service {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join(format!("{tag}.yaml"));
    // Extra librdkafka settings for the service, for experiments: `BENCH_LIBRDKAFKA='{linger.ms: "20"}'`.
    let librdkafka = std::env::var("BENCH_LIBRDKAFKA").map(|m| format!("  librdkafka: {m}\n")).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: \"{brokers}\"\n  group_id: bench-{tag}\n  input_topics: [bench.{tag}.outbound]\n  ack_topic: bench.{tag}.acks\n  dlq_topic: bench.{tag}.dlq\n  partitions: 6\n{librdkafka}store:\n  url: \"{url}\"\ntelemetry:\n  metrics_addr: \"127.0.0.1:{metrics_port}\"\n  log_level: warn\n{extra}"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--scenario")
        .arg(scenario)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("service starts");
    Service { child, metrics_port }
}

fn stop(mut s: Service) {
    let _ = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status();
    let _ = s.child.wait();
}

async fn create_topics(brokers: &str, tag: &str) {
    let mut k = understudy::config::KafkaSettings::default();
    k.partitions = 6;
    let names = [format!("bench.{tag}.outbound"), format!("bench.{tag}.acks"), format!("bench.{tag}.dlq")];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    understudy::kafka::admin::ensure_topics(&k, brokers, &refs).await.unwrap();
}

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
    println!("    throughput        {:>10.0} outbound messages/s ({:.0} acks/s)", n as f64 / secs, events as f64 / secs);
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
    println!("  librdkafka alone, the same traffic: {n} records consumed, {events} produced with delivery reports in {secs:.2} s");
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
    if let Ok(m) = std::env::var("BENCH_LIBRDKAFKA") {
        k.librdkafka = serde_yaml::from_str(&m).expect("BENCH_LIBRDKAFKA is a YAML map");
    }
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
    // `cargo bench` passes `--bench`; a filter argument selects a part.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let n: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let broker = EmbeddedBroker::start(0).expect("embedded broker");
    let brokers = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("understudy benchmarks ({} cores), embedded tansu broker, Postgres", std::thread::available_parallelism().map_or(0, |n| n.get()));
    rt.block_on(async {
        if filter.as_deref().is_none_or(|f| "throughput".contains(f)) {
            throughput(dir.path(), &brokers, n).await;
        }
        if filter.as_deref().is_none_or(|f| "floor".contains(f)) {
            floor(&brokers, n).await;
        }
        if filter.as_deref().is_none_or(|f| "memory".contains(f)) {
            pending_memory(dir.path(), &brokers, n, true).await;
            pending_memory(dir.path(), &brokers, n, false).await;
        }
    });
}
