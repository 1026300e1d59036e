//! What the embedded broker was patched for (vendor/README.md), checked against Apache Kafka as well: a
//! fetch from inside a record batch starts at its offset (tansu 0.6.0 skipped the rest of the batch), and
//! a fetch waiting for records answers when one arrives (tansu 0.6.0 always waited its whole
//! `fetch.wait.max.ms`).

mod common;

use common::Kafka;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

async fn a_fetch_from_inside_a_batch_starts_at_its_offset(k: Kafka) {
    let brokers = k.brokers();
    let settings = common::settings(k, "sqlite://unused", 1);
    let topic = settings.kafka.input_topics[0].clone();
    understudy::kafka::admin::ensure_topics(&settings.kafka, &brokers, &[&topic]).await.unwrap();
    // Ten records in one produce request, so in one batch.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "200").create().unwrap();
    let sends = (0..10).map(|i| {
        let payload = format!("r{i}");
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(FutureRecord::<(), _>::to(topic).partition(0).payload(&payload), Duration::from_secs(10))
                .await
                .map(|d| d.offset)
        }
    });
    let offsets: Vec<i64> = futures::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("fetch-{}", common::suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5)).unwrap();
    consumer.assign(&tpl).unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < 5 && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                got.push((m.offset(), String::from_utf8_lossy(m.payload().unwrap()).into_owned()));
            }
        }
        got
    })
    .await
    .unwrap();
    let want: Vec<(i64, String)> = (5..10).map(|i| (i, format!("r{i}"))).collect();
    assert_eq!(got, want, "records 5 to 9 of the batch");
}

/// A consumer whose fetches may wait 5 s for records gets each record as it is produced, not when the
/// wait is over. The bound (1 s for the slowest of five records) is far from both: a broker that waits
/// out `fetch.wait.max.ms` answers 2.5 s late on average, and one that answers on arrival in milliseconds.
async fn a_waiting_fetch_answers_when_a_record_arrives(k: Kafka) {
    let brokers = k.brokers();
    let settings = common::settings(k, "sqlite://unused", 1);
    let topic = settings.kafka.input_topics[0].clone();
    understudy::kafka::admin::ensure_topics(&settings.kafka, &brokers, &[&topic]).await.unwrap();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "0").create().unwrap();
    let send = |i: usize| {
        let (producer, topic) = (&producer, &topic);
        async move {
            let payload = format!("r{i}");
            producer
                .send(FutureRecord::<(), _>::to(topic).partition(0).payload(&payload), Duration::from_secs(10))
                .await
                .unwrap();
        }
    };
    send(0).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("wait-{}", common::suffix()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(0)).unwrap();
    consumer.assign(&tpl).unwrap();
    let consumer = std::sync::Arc::new(consumer);
    let poll_one = |within: Duration| {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            while t.elapsed() < within {
                if let Some(m) = consumer.poll(Duration::from_millis(50)) {
                    return Some(String::from_utf8_lossy(m.unwrap().payload().unwrap()).into_owned());
                }
            }
            None
        })
    };
    assert_eq!(poll_one(Duration::from_secs(30)).await.unwrap().as_deref(), Some("r0"));
    let mut waits = Vec::new();
    for i in 1..=5 {
        // The consumer is idle, its next fetch waiting at the broker, when the record is produced.
        let polling = poll_one(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        send(i).await;
        assert_eq!(polling.await.unwrap().as_deref(), Some(format!("r{i}").as_str()));
        waits.push(t.elapsed());
    }
    let slowest = waits.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "records waited for the fetch's whole wait: {waits:?}");
}

crate::on_both_brokers!(
    actix::test,
    a_fetch_from_inside_a_batch_starts_at_its_offset,
    a_waiting_fetch_answers_when_a_record_arrives
);
