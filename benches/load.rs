//! Load-run benchmarks: generator throughput beside Apache Kafka's own producer perf tool, rate accuracy,
//! correlation; on the embedded broker or Apache Kafka.
//!
//! ```text
//! cargo bench --bench load                          # every part, on tansu
//! cargo bench --bench load -- --broker apache       # on Apache Kafka (or `--broker both`)
//! cargo bench --bench load -- generator             # or: rate, correlation
//! BENCH_MESSAGES=500000 BENCH_RATE_SECONDS=60 cargo bench --bench load
//! ```
//!
//! Parts:
//! - `generator`: one `understudy load` process (this one) sends `BENCH_MESSAGES` (default 1,000,000)
//!   messages of 512 bytes as fast as it can; messages/s over the sending span, and the process's CPU per
//!   message (on tansu the broker runs in this process and its CPU is in the figure). Then, in the same
//!   run, Apache Kafka's `kafka-producer-perf-test` (`ProducerPerformance`, from the broker's jars) sends
//!   as many records of the same size with the same acks (all), linger (5 ms), batch size (1 MB) and no
//!   compression, to a topic of as many partitions; the ratio of the two.
//! - `rate`: 20,000 messages/s for `BENCH_RATE_SECONDS` (default 60) s; the achieved rate over the run,
//!   the worst full second, and how late sends were.
//! - `correlation`: acks matched to their payloads and recorded (HdrHistogram, per-message record) per
//!   second on one thread, from the ack bytes (the Kafka consumer's own cost is not in it).

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)] // shared with the pipeline bench, which uses all of it
mod support;

use std::time::{Duration, Instant};

use common::kafka::Kafka;
use understudy::config::KafkaSettings;
use understudy::kafka::admin::ensure_topics;
use understudy::load::message::{PayloadId, Template};
use understudy::load::{self, LoadSettings, Progress};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn settings(tag: &str, profile: &str, max: Option<u64>) -> LoadSettings {
    // 512-byte bodies, as the perf tool's records; no wait for acks (nothing answers here).
    let s = support::load_settings(&format!("bench-{tag}"), tag, profile);
    LoadSettings { max_messages: max, payload_bytes: 512, ack_timeout_ms: 0, linger_ms: 0, ..s }
}

async fn generator(k: Kafka, brokers: &str, kafka: &KafkaSettings, n: u64) {
    let s = settings("gen", "100000000@1h", Some(n));
    ensure_topics(kafka, brokers, &[&s.topic, &s.ack_topic, "bench.java.perf"]).await.unwrap();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let outcome = load::run(load::Transport::Kafka { kafka, brokers }, s, Template::default(), &[], Progress::Quiet)
        .await
        .unwrap();
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let r = &outcome.results;
    assert_eq!(r.sent_total(), n, "every message delivered");
    let ours = r.throughput();
    let whose = match k {
        Kafka::Tansu => "generator and broker",
        Kafka::Apache => "generator alone",
    };
    println!("  generator: {n} messages of 512 bytes (a key and 5 headers too), as fast as it goes");
    println!("    throughput        {:>10.0} messages/s over the sending span", ours);
    println!("    whole run         {:>10.2} s (including the final flush)", secs);
    println!("    process CPU       {:>10.2} µs per message ({whose})", cpu * 1e6 / n as f64);

    // The same records' worth with Apache Kafka's own producer, in a process of its own.
    let cpu0 = support::children_cpu();
    let out = common::kafka::kafka_java("org.apache.kafka.tools.ProducerPerformance")
        .args(["--topic", "bench.java.perf", "--num-records", &n.to_string(), "--record-size", "512"])
        .args(["--throughput", "-1", "--producer-props"])
        .arg(format!("bootstrap.servers={brokers}"))
        .args(["acks=all", "linger.ms=5", "batch.size=1048576", "compression.type=none", "enable.idempotence=false"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("kafka-producer-perf-test runs (Java 17 and the Apache Kafka jars)");
    let cpu = support::children_cpu() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kafka-producer-perf-test failed: {text}");
    // The last line: "N records sent, R records/sec (M MB/sec), A ms avg latency, …".
    let last = text.lines().rev().find(|l| l.contains("records sent")).unwrap_or_else(|| panic!("`{text}`"));
    let java: f64 = last
        .split(", ")
        .nth(1)
        .and_then(|f| f.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read `{last}`"));
    println!(
        "    kafka-producer-perf-test {java:>5.0} records/s (JVM process CPU {:.2} µs per record, start-up included)",
        cpu * 1e6 / n as f64
    );
    println!("    ratio             {:>10.2} (understudy load / kafka-producer-perf-test)", ours / java);
}

async fn rate(brokers: &str, kafka: &KafkaSettings, seconds: u64) {
    let target = 20_000.0;
    let s = settings("rate", &format!("{target}@{seconds}s"), None);
    ensure_topics(kafka, brokers, &[&s.topic, &s.ack_topic]).await.unwrap();
    let outcome = load::run(load::Transport::Kafka { kafka, brokers }, s, Template::default(), &[], Progress::Quiet)
        .await
        .unwrap();
    let r = &outcome.results;
    let planned = target * seconds as f64;
    // Full seconds only: the last one may hold the tail of the run.
    let seconds_sent: Vec<u64> = r.timeline.iter().take(seconds as usize).map(|s| s.sent).collect();
    let worst = seconds_sent.iter().map(|n| (*n as f64 - target).abs() / target).fold(0.0, f64::max);
    println!("  rate accuracy: {target:.0} messages/s for {seconds} s");
    println!(
        "    sent              {:>10} of {planned:.0} ({:+.3}%)",
        r.sent_total(),
        (r.sent_total() as f64 - planned) / planned * 100.0
    );
    println!(
        "    achieved rate     {:>10.1} messages/s ({:+.3}% of target)",
        r.throughput(),
        (r.throughput() - target) / target * 100.0
    );
    println!("    worst second      {:>10.2}% off target", worst * 100.0);
    println!(
        "    lateness          p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} sends over 10 ms late",
        r.lateness_us.quantile_ms(0.5),
        r.lateness_us.quantile_ms(0.99),
        r.lateness_us.max_ms(),
        r.late
    );
}

fn correlation(n: u64) {
    let run = "bench-corr";
    // Acks as the mock writes them (about 330 bytes): two or three per message.
    let mut acks = Vec::new();
    for seq in 0..n {
        let id = PayloadId(run, 0, seq).to_string();
        let statuses: &[&str] = if seq % 2 == 0 { &["SEND", "DELIVERY", "OPEN"] } else { &["SEND", "DELIVERY"] };
        for status in statuses {
            acks.push(
                serde_json::to_vec(&serde_json::json!({
                    "event_id": "5b0f3c1e-8d2a-5e4f-9a10-3c5b7d2e4f61",
                    "payload_id": id,
                    "batch_id": format!("{run}-g0-b{:07}", seq / 1000),
                    "channel": "email",
                    "status": status,
                    "vendor_message_id": "<9c1e0b7a5d3f4e21@understudy.email>",
                    "attempt": 1,
                    "scheduled_at": "2026-11-25T10:00:03.120Z",
                    "emitted_at": "2026-11-25T10:00:03.121Z",
                    "error_code": null,
                    "error_reason": null,
                    "tenant_id": "bench"
                }))
                .unwrap(),
            );
        }
    }
    let t = Instant::now();
    let (events, resolved) = load::correlate_in_memory(run, n, &acks);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!((events as usize, resolved), (acks.len(), n));
    println!("  correlation: {} acks of {n} messages, one thread, from bytes", acks.len());
    println!(
        "    throughput        {:>10.0} acks/s ({:.2} µs per ack)",
        events as f64 / secs,
        secs * 1e6 / events as f64
    );
}

fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seconds: u64 = std::env::var("BENCH_RATE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for k in support::brokers() {
        rt.block_on(async {
            let broker = support::start(k);
            let brokers = broker.bootstrap();
            let kafka = KafkaSettings { partitions: 6, ..KafkaSettings::default() };
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!("understudy load benchmarks ({}, {brokers})", support::describe(k));
            if support::wanted("generator") {
                generator(k, &brokers, &kafka, n).await;
            }
            if support::wanted("rate") {
                rate(&brokers, &kafka, seconds).await;
            }
            if support::wanted("correlation") {
                correlation(n / 2);
            }
        });
    }
}
