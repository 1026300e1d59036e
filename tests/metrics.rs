//! The Prometheus exporter of the real binary: every metric the service promises is there, histograms
//! export as histograms, and no payload content leaks into labels.

mod common;

use common::Kafka;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use understudy::demo::{SampleMessage, publish, sample_batch};
use understudy::model::Channel;

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

async fn exporter_serves_every_metric(k: Kafka) {
    let (url, dir) = common::sqlite_url();
    let mut settings = common::settings(k, &url, 2);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    settings.telemetry.metrics_addr = Some(([127, 0, 0, 1], port).into());
    let config = common::write_config(dir.path(), &settings);
    let brokers = k.brokers();
    let k = &settings.kafka;
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/zero-delay.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--scenario")
        .arg(&scenario)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut batch = sample_batch(&common::suffix(), 300);
    batch.push(SampleMessage {
        payload_id: "bad".into(),
        channel: Channel::Sms,
        body: b"not json".to_vec(),
        headers: vec![],
    });
    publish(&brokers, &k.input_topics[0], &batch, None).await.unwrap();

    // Every metric the service promises, each registered on first use: waited for all together, since
    // the acks can be counted and the first offsets committed before the persister's first write.
    let promised = [
        "understudy_messages_consumed_total",
        "understudy_messages_dead_lettered_total",
        "understudy_events_emitted_total",
        "understudy_lifecycles_in_flight",
        "understudy_persist_batch_rows",
        "understudy_persist_seconds",
        "understudy_emission_lag_seconds",
        "understudy_offsets_committed_total",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (body, missing, counted) = loop {
        let body = scrape(port).unwrap_or_default();
        let missing: Vec<&str> = promised.iter().copied().filter(|n| !body.contains(&format!("# TYPE {n} "))).collect();
        let counted = body.contains(r#"understudy_messages_dead_lettered_total{reason="not_json"} 1"#);
        if (missing.is_empty() && counted) || std::time::Instant::now() > deadline {
            break (body, missing, counted);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(missing.is_empty(), "{missing:?} missing after 60 s:\n{body}");
    assert!(counted, "the dead letter was not counted in 60 s:\n{body}");
    for h in ["understudy_emission_lag_seconds", "understudy_persist_seconds", "understudy_persist_batch_rows"] {
        assert!(body.contains(&format!("# TYPE {h} histogram")), "{h} is not a histogram");
        assert!(body.contains(&format!("{h}_bucket{{")) && body.contains("le=\"+Inf\""), "{h} has no buckets");
    }
    assert!(body.contains(r#"understudy_events_emitted_total{channel="email",status="DELIVERY"}"#), "{body}");
    assert!(!body.contains("example.com") && !body.contains("+1555"), "no recipients in metrics");
    let run = batch[0].payload_id.split('-').next().unwrap();
    assert!(
        !body.contains(run) && !body.contains("Ada") && !body.contains("welcome"),
        "no payload ids or content in metrics"
    );
    // Kept for `promtool check metrics` in CI.
    std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.txt"), &body).unwrap();
}

crate::on_both_brokers!(actix::test, exporter_serves_every_metric);
