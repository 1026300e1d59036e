//! Shared helpers: a real broker (the embedded tansu or Apache Kafka, see [`kafka`]), a fresh Postgres
//! database or SQLite file per test, unique topics per test, and polling with a deadline.
#![allow(dead_code)]

pub mod faults;
pub mod kafka;

pub use kafka::Kafka;

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;
use understudy::config::Settings;
use understudy::scenario::Scenario;

pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// A new, empty Postgres database. Fails loudly when Postgres is not reachable.
pub async fn postgres_url() -> String {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("understudy_test_{}", suffix());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {base} is needed for this test (set DATABASE_URL): {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// A new SQLite file in a temp dir that lives as long as the returned guard.
pub fn sqlite_url() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("understudy.db").display());
    (url, dir)
}

/// Settings with this test's own topics and group on broker `k`.
pub fn settings(k: Kafka, store_url: &str, partitions: i32) -> Settings {
    settings_for(&k.brokers(), store_url, partitions)
}

/// Settings with this test's own topics and group on the brokers at `brokers`.
pub fn settings_for(brokers: &str, store_url: &str, partitions: i32) -> Settings {
    let s = suffix();
    let mut settings = Settings::default();
    settings.kafka.brokers = Some(brokers.to_owned());
    settings.kafka.input_topics = vec![format!("t.{s}.outbound")];
    settings.kafka.ack_topic = format!("t.{s}.acks");
    settings.kafka.dlq_topic = format!("t.{s}.dlq");
    settings.kafka.group_id = format!("g-{s}");
    settings.kafka.partitions = partitions;
    settings.kafka.commit_interval_ms = 200;
    settings.store.url = Some(store_url.to_owned());
    settings.store.flush_interval_ms = 50;
    settings.telemetry.metrics_addr = None;
    settings
}

/// Write `settings` as a config file for the real binary (every key, as the loader reads them).
pub fn write_config(dir: &Path, settings: &Settings) -> std::path::PathBuf {
    let path = dir.join("understudy.yaml");
    std::fs::write(&path, serde_yaml::to_string(settings).expect("settings serialize")).expect("write config");
    path
}

/// A shipped scenario, compressed by `time_scale`.
pub fn scenario(file: &str, time_scale: f64) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(file);
    Scenario::load(&path).expect("shipped scenario is valid").rescaled(time_scale).expect("rescaled")
}

/// Poll `f` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pipeline on a fresh Postgres database and this test's own topics, with its store.
pub struct Running {
    pub settings: Settings,
    pub store: understudy::store::Store,
    pub brokers: String,
    pub pipeline: understudy::actors::pipeline::Pipeline,
}

/// Start a pipeline on broker `k` running `scenario` (3 partitions).
pub async fn start(k: Kafka, scenario: std::sync::Arc<Scenario>) -> Running {
    let url = postgres_url().await;
    let settings = settings(k, &url, 3);
    let store = understudy::store::Store::connect(&url, 2).await.expect("store");
    let brokers = k.brokers();
    let pipeline =
        understudy::actors::pipeline::Pipeline::start(&settings, scenario, &brokers).await.expect("pipeline starts");
    Running { settings, store, brokers, pipeline }
}

/// Wait until `messages` messages are stored and every lifecycle has finished.
pub async fn all_finished(store: &understudy::store::Store, messages: i64, within: Duration) {
    eventually(within, "every lifecycle finished", || async {
        let t = store.totals().await.unwrap();
        (t.messages == messages && store.unfinished_count().await.unwrap() == 0).then_some(())
    })
    .await;
}

/// Committed offsets of `group` on each of `topic`'s partitions (0 where none is committed).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements().iter().map(|e| if let rdkafka::Offset::Offset(o) = e.offset() { o } else { 0 }).collect()
}

/// The service as a child process with its front doors and the control API (`token`) on a free port, on
/// broker `k` and a fresh Postgres database, running `happy-path` a thousand times faster from a file of
/// its own (which the control API may replace).
pub struct ControlService {
    pub service: faults::Service,
    pub base: String,
    pub scenario: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

pub async fn control_service(k: Kafka, token: &str, reload_interval_ms: u64) -> ControlService {
    let store_url = postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.yaml");
    let happy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/happy-path.yaml")).unwrap();
    std::fs::write(&scenario, happy.replace("time_scale: 1\n", "time_scale: 0.001\n")).unwrap();
    let port = faults::free_port();
    let mut settings = settings(k, &store_url, 3);
    settings.http.listen_addr = Some(([127, 0, 0, 1], port).into());
    settings.http.control_token = Some(token.into());
    settings.scenario.reload_interval_ms = reload_interval_ms;
    let config = write_config(dir.path(), &settings);
    let service = faults::Service::spawn(&config, &scenario, &dir.path().join("service.log"));
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(60), "the control API answers", || async {
        let answer = reqwest::Client::new().get(format!("{base}/api/v1/openapi.yaml")).bearer_auth(token).send().await;
        answer.ok().filter(|a| a.status() == 200).map(|_| ())
    })
    .await;
    ControlService { service, base, scenario, dir }
}
