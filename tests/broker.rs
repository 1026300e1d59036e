//! The embedded broker serves a fetch from inside a record batch: the consumer gets the records from its
//! position on, not from the next batch (tansu 0.6.0 skipped the rest of the batch; see vendor/README.md).

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

crate::on_both_brokers!(actix::test, a_fetch_from_inside_a_batch_starts_at_its_offset);
