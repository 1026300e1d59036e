//! What the bench binaries share: the broker they run on and the part they run, from their arguments.
//!
//!     cargo bench --bench pipeline -- --broker apache latency
//!
//! `--broker tansu` (the default: the embedded broker, in the bench process), `--broker apache` (one
//! Apache Kafka node, KRaft, started from its Maven Central jars as the tests start it) or `--broker both`
//! (every part on tansu, then on Apache Kafka). `BENCH_BROKER` does the same. The first other argument
//! that is not an option selects the parts whose names contain it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sqlx::Connection;

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

pub fn ticks_per_sec() -> f64 {
    100.0
}

/// (user + system CPU seconds, RSS bytes) of a process, from /proc.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rss_pages: u64 = f.get(21).and_then(|v| v.parse().ok()).unwrap_or(0);
    (ticks / ticks_per_sec(), rss_pages * 4096)
}

pub fn metric(port: u16, name: &str) -> Option<f64> {
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
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drop a benchmark database once its part is done: repeated runs would otherwise leave hundreds of MB
/// each for Postgres to checkpoint and vacuum while the next run measures.
pub async fn drop_database(url: &str) {
    let base = base_url();
    let name = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("Postgres for the benchmark");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await
        .unwrap();
}

pub async fn fresh_database() -> String {
    let base = base_url();
    let name = format!("understudy_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("Postgres for the benchmark");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    url.to_string()
}

pub struct Service {
    pub child: Child,
    pub metrics_port: u16,
}

pub fn start_service(dir: &Path, brokers: &str, url: &str, scenario: &Path, tag: &str, extra: &str) -> Service {
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

pub fn stop(mut s: Service) {
    let _ = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status();
    let _ = s.child.wait();
}

pub async fn create_topics(brokers: &str, tag: &str) {
    let mut k = understudy::config::KafkaSettings::default();
    k.partitions = 6;
    let names = [format!("bench.{tag}.outbound"), format!("bench.{tag}.acks"), format!("bench.{tag}.dlq")];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    understudy::kafka::admin::ensure_topics(&k, brokers, &refs).await.unwrap();
}

/// WireMock's standalone jar, resolved from Maven Central through `mvn` on first use.
pub fn wiremock_jar() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../wiremock");
    let jar = dir.join("wiremock-standalone-3.13.2.jar");
    if !jar.exists() {
        let out = Command::new("mvn")
            .args(["-q", "-B", "dependency:copy", "-Dartifact=org.wiremock:wiremock-standalone:3.13.2"])
            .arg(format!("-DoutputDirectory={}", dir.display()))
            .output()
            .expect("mvn runs");
        assert!(out.status.success(), "mvn could not fetch WireMock: {}", String::from_utf8_lossy(&out.stdout));
    }
    jar
}
