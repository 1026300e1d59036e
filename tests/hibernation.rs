//! Lifecycles that wait longer than `service.hibernate_after_ms` sleep as data in their channel actor
//! and are started again as actors ahead of their due time: they still emit every event, on time.

mod common;

use common::Kafka;

use std::sync::Arc;
use std::time::Duration;

use understudy::actors::pipeline::Pipeline;
use understudy::demo::{publish, read_topic, sample_batch};
use understudy::model::AckEvent;
use understudy::scenario::Scenario;
use understudy::store::Store;

const N: usize = 300;

/// SEND at once, DELIVERY 2.5 s later (asleep), READ/OPEN 1.5 s after that (asleep again).
const SCENARIO: &str = r#"
name: sleepy
seed: 7
channels:
  email:
    delays: { SEND: { dist: fixed, value: 0s }, DELIVERY: { dist: fixed, value: 2500ms }, OPEN: { dist: fixed, value: 1500ms } }
    paths: [ { name: opened, weight: 1, steps: [SEND, DELIVERY, OPEN] } ]
  sms:
    delays: { SEND: { dist: fixed, value: 0s }, DELIVERY: { dist: fixed, value: 2500ms } }
    paths: [ { name: delivered, weight: 1, steps: [SEND, DELIVERY] } ]
  whatsapp:
    delays: { SEND: { dist: fixed, value: 0s }, DELIVERY: { dist: fixed, value: 2500ms }, READ: { dist: fixed, value: 1500ms } }
    paths: [ { name: read, weight: 1, steps: [SEND, DELIVERY, READ] } ]
"#;

async fn sleeping_lifecycles_wake_in_time_and_finish(k: Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sleepy.yaml");
    std::fs::write(&path, SCENARIO).unwrap();
    let scenario = Arc::new(Scenario::load(&path).expect("valid scenario"));
    let url = common::postgres_url().await;
    let mut settings = common::settings(k, &url, 2);
    settings.service.hibernate_after_ms = 1000;
    let brokers = k.brokers();
    let store = Store::connect(&url, 2).await.unwrap();
    let pipeline = Pipeline::start(&settings, scenario.clone(), &brokers).await.expect("pipeline starts");

    let batch = sample_batch(&common::suffix(), N);
    let expected: usize = batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).unwrap().steps.len()).sum();
    publish(&brokers, &settings.kafka.input_topics[0], &batch, None).await.unwrap();

    // After SEND every lifecycle sleeps: none is held as an actor.
    common::eventually(Duration::from_secs(30), "every lifecycle asleep after SEND", || async {
        (pipeline.lifecycles_asleep() == N as i64 && pipeline.lifecycles_in_flight() == N as i64).then_some(())
    })
    .await;
    common::eventually(Duration::from_secs(60), "every planned event stored", || async {
        (store.totals().await.unwrap().events as usize == expected).then_some(())
    })
    .await;
    assert_eq!(store.unfinished_count().await.unwrap(), 0);
    common::eventually(Duration::from_secs(5), "no lifecycle left", || async {
        (pipeline.lifecycles_in_flight() == 0 && pipeline.lifecycles_asleep() == 0).then_some(())
    })
    .await;
    pipeline.shutdown().await;

    // Woken ahead of time, they emitted at their due time, not at the next wake-up tick.
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, expected, Duration::from_secs(10)).unwrap();
    assert_eq!(acks.len(), expected);
    let mut lags_ms: Vec<i64> = acks
        .iter()
        .map(|r| serde_json::from_slice::<AckEvent>(&r.payload).unwrap())
        .filter(|e| e.status != understudy::model::Status::Send)
        .map(|e| (e.emitted_at - e.scheduled_at).num_milliseconds())
        .collect();
    lags_ms.sort_unstable();
    assert!(lags_ms[0] >= 0, "nothing is emitted early: {:?}", &lags_ms[..5]);
    let median = lags_ms[lags_ms.len() / 2];
    assert!(median < 50, "median emission lag of woken lifecycles is {median} ms");
    store.close().await;
}

crate::on_both_brokers!(actix::test, sleeping_lifecycles_wake_in_time_and_finish);
