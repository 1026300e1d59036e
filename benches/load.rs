//! Load-run benchmarks: generator throughput into the embedded broker, rate accuracy, correlation.
//!
//! ```text
//! cargo bench --bench load                          # every part
//! cargo bench --bench load generator                # or: rate, correlation
//! BENCH_MESSAGES=500000 BENCH_RATE_SECONDS=60 cargo bench --bench load
//! ```
//!
//! Parts:
//! - `generator`: one `understudy load` process (this one) sends `BENCH_MESSAGES` (default 1,000,000)
//!   messages as fast as it can to the embedded broker, which runs in the same process; messages/s over the
//!   sending span, and the process's CPU per message (generator and broker together).
//! - `rate`: 20,000 messages/s for `BENCH_RATE_SECONDS` (default 60) s; the achieved rate over the run,
//!   the worst full second, and how late sends were.
//! - `correlation`: acks matched to their payloads and recorded (HdrHistogram, per-message record) per
//!   second on one thread, from the ack bytes (the Kafka consumer's own cost is not in it).

use std::time::{Duration, Instant};

use understudy::config::KafkaSettings;
use understudy::kafka::admin::ensure_topics;
use understudy::kafka::embedded::EmbeddedBroker;
use understudy::load::message::{PayloadId, Template};
use understudy::load::{self, LoadSettings, Progress};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn settings(tag: &str, profile: &str, max: Option<u64>) -> LoadSettings {
    LoadSettings {
        run_id: format!("bench-{tag}"),
        generator: 0,
        profile: profile.into(),
        max_messages: max,
        batch_size: 1000,
        batch_gap_ms: 0,
        mix: "email=0.5,sms=0.3,whatsapp=0.2".into(),
        tenant_id: "bench".into(),
        payload_bytes: 0,
        template: None,
        recipients: Default::default(),
        topic: format!("bench.{tag}.outbound"),
        ack_topic: format!("bench.{tag}.acks"),
        ack_payload_id: "/payload_id".into(),
        ack_status: "/status".into(),
        ack_timeout_ms: 0,
        linger_ms: 0,
        late_after_ms: 10.0,
    }
}

async fn generator(brokers: &str, kafka: &KafkaSettings, n: u64) {
    let s = settings("gen", "100000000@1h", Some(n));
    ensure_topics(kafka, brokers, &[&s.topic, &s.ack_topic]).await.unwrap();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let outcome = load::run(kafka, brokers, s, Template::default(), &[], Progress::Quiet).await.unwrap();
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let r = &outcome.results;
    assert_eq!(r.sent_total(), n, "every message delivered");
    println!("  generator: {n} messages to the embedded broker (same process), as fast as it goes");
    println!("    throughput        {:>10.0} messages/s over the sending span", r.throughput());
    println!("    whole run         {:>10.2} s (including the final flush)", secs);
    println!("    process CPU       {:>10.2} µs per message (generator and broker)", cpu * 1e6 / n as f64);
}

async fn rate(brokers: &str, kafka: &KafkaSettings, seconds: u64) {
    let target = 20_000.0;
    let s = settings("rate", &format!("{target}@{seconds}s"), None);
    ensure_topics(kafka, brokers, &[&s.topic, &s.ack_topic]).await.unwrap();
    let outcome = load::run(kafka, brokers, s, Template::default(), &[], Progress::Quiet).await.unwrap();
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
    println!("    throughput        {:>10.0} acks/s ({:.2} µs per ack)", events as f64 / secs, secs * 1e6 / events as f64);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |part: &str| filter.as_deref().is_none_or(|f| part.contains(f));
    let n: u64 = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seconds: u64 = std::env::var("BENCH_RATE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let broker = EmbeddedBroker::start(0).unwrap();
        let brokers = broker.bootstrap();
        let kafka = KafkaSettings { partitions: 6, ..KafkaSettings::default() };
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("understudy load benchmarks (embedded broker {brokers})");
        if want("generator") {
            generator(&brokers, &kafka, n).await;
        }
        if want("rate") {
            rate(&brokers, &kafka, seconds).await;
        }
        if want("correlation") {
            correlation(n / 2);
        }
    });
}
