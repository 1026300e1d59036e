//! What the bench binaries share: the broker they run on and the part they run, from their arguments.
//!
//!     cargo bench --bench pipeline -- --broker apache latency
//!
//! `--broker tansu` (the default: the embedded broker, in the bench process), `--broker apache` (one
//! Apache Kafka node, KRaft, started from its Maven Central jars as the tests start it) or `--broker both`
//! (every part on tansu, then on Apache Kafka). `BENCH_BROKER` does the same. The first other argument
//! that is not an option selects the parts whose names contain it.

use crate::common::kafka::{Kafka, OwnBroker};
use understudy::load::LoadSettings;

/// The brokers asked for, in order.
pub fn brokers() -> Vec<Kafka> {
    let mut args = std::env::args().skip(1);
    let mut choice = std::env::var("BENCH_BROKER").ok();
    while let Some(a) = args.next() {
        if a == "--broker" {
            choice = args.next();
        } else if let Some(v) = a.strip_prefix("--broker=") {
            choice = Some(v.to_owned());
        }
    }
    match choice.as_deref().unwrap_or("tansu") {
        "tansu" => vec![Kafka::Tansu],
        "apache" | "apache-kafka" => vec![Kafka::Apache],
        "both" => vec![Kafka::Tansu, Kafka::Apache],
        other => {
            eprintln!("--broker takes tansu, apache or both, not `{other}`");
            std::process::exit(2);
        }
    }
}

/// The part filter: the first argument that is neither an option nor the value of `--broker`.
pub fn filter() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--broker" {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// Whether part `name` runs.
pub fn wanted(name: &str) -> bool {
    filter().is_none_or(|f| name.contains(&f))
}

/// A broker of the bench's own: tansu in this process, or an Apache Kafka node in a child process (its
/// log under `target/apache-kafka/runs/`).
pub fn start(k: Kafka) -> OwnBroker {
    OwnBroker::start(k, "bench")
}

/// How the broker is named in the figures.
pub fn describe(k: Kafka) -> &'static str {
    match k {
        Kafka::Tansu => "embedded tansu broker (in the bench process, memory storage)",
        Kafka::Apache => "Apache Kafka 4.1.1 (one KRaft node, its own process, log on local disk)",
    }
}

/// A load run of the benchmarks: the default mix, a template body, acks in the service's native format on
/// `bench.{tag}.acks`, outcomes awaited 30 s.
pub fn load_settings(run_id: &str, tag: &str, profile: &str) -> LoadSettings {
    LoadSettings {
        run_id: run_id.into(),
        generator: 0,
        profile: profile.into(),
        max_messages: None,
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
        ack_timeout_ms: 30_000,
        linger_ms: 200,
        late_after_ms: 10.0,
    }
}

/// CPU seconds (user + system) of this process's children that have exited and been waited for.
pub fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Extra librdkafka settings from the environment variable `var` (a YAML map, for experiments:
/// `BENCH_LIBRDKAFKA='{linger.ms: "20"}'`); none when it is unset.
pub fn librdkafka_from_env(var: &str) -> std::collections::BTreeMap<String, String> {
    match std::env::var(var) {
        Ok(m) => serde_yaml::from_str(&m).unwrap_or_else(|e| panic!("{var} is not a YAML map of strings: {e}")),
        Err(_) => Default::default(),
    }
}
