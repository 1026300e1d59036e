//! Security basics: TLS to Postgres, Kafka SASL/SSL settings reaching librdkafka, and secrets kept out of
//! logs and error messages.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use understudy::store::Store;

#[actix::test]
async fn the_store_url_can_require_tls() {
    let url = common::postgres_url().await;
    let db = url::Url::parse(&url).unwrap().path().trim_start_matches('/').to_owned();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = Store::connect(&format!("{url}{sep}sslmode=require"), 1).await.expect("Postgres here serves TLS");
    store.migrate().await.unwrap();
    store.totals().await.unwrap();
    // Seen from the server: this database's connection is encrypted.
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let (encrypted,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.datname = $1 AND s.ssl",
    )
    .bind(&db)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(encrypted >= 1, "the store's connection uses TLS");
}

#[test]
fn kafka_sasl_and_ssl_settings_reach_librdkafka() {
    let mut k = understudy::config::KafkaSettings::default();
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "understudy"),
        ("sasl.password", "secret"),
        ("ssl.endpoint.identification.algorithm", "https"),
    ] {
        k.librdkafka.insert(key.into(), value.into());
    }
    for config in [
        understudy::kafka::client_config(&k, "127.0.0.1:1"),
        understudy::kafka::consumer_config(&k, "127.0.0.1:1"),
        understudy::kafka::producer_config(&k, "127.0.0.1:1"),
    ] {
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        // librdkafka accepts them only when built with TLS and SCRAM support.
        let created: Result<rdkafka::producer::BaseProducer, _> = config.create();
        assert!(created.is_ok(), "librdkafka refused the settings: {:?}", created.err());
    }
}

#[actix::test]
async fn secrets_stay_out_of_logs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A store that refuses the password, and Kafka credentials: neither secret may be printed.
    let mut settings =
        common::settings(common::Kafka::Tansu, "postgres://understudy:Pa55-store-secret@127.0.0.1:5432/nope", 1);
    settings.kafka.librdkafka.insert("sasl.password".into(), "Pa55-kafka-secret".into());
    settings.kafka.librdkafka.insert("sasl.username".into(), "understudy".into());
    let config = common::write_config(dir.path(), &settings);
    let out = dir.path().join("out.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&out).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).unwrap()
        + std::fs::read_to_string(dir.path().join("stdout.log")).unwrap().as_str();
    assert!(text.contains("127.0.0.1:5432"), "the store is named in the log:\n{text}");
    assert!(!text.contains("Pa55-store-secret"), "the store password leaked:\n{text}");
    assert!(!text.contains("Pa55-kafka-secret"), "the Kafka password leaked:\n{text}");
}
