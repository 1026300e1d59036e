//! What the embedded broker was patched for (vendor/README.md), checked against Apache Kafka as well: a
//! fetch from inside a record batch starts at its offset (tansu 0.6.0 skipped the rest of the batch), and
//! a fetch waiting for records answers when one arrives (tansu 0.6.0 always waited its whole
//! `fetch.wait.max.ms`), and a consumer group member that stops without leaving (static membership, or a
//! crash) hands its partitions to the others once its session times out (tansu 0.6.0 kept them with it
//! for good when it had led the group).

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

/// Two static members share a topic's four partitions; the one that led the group stops (a static member
/// sends no LeaveGroup). Once its 10 s session is over (the service's) the group forms again and the other owns all four.
async fn a_stopped_leader_s_partitions_go_to_the_others_after_its_session(k: Kafka) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let brokers = k.brokers();
    let settings = common::settings(k, "sqlite://unused", 4);
    let topic = settings.kafka.input_topics[0].clone();
    understudy::kafka::admin::ensure_topics(&settings.kafka, &brokers, &[&topic]).await.unwrap();
    let group = format!("static-{}", common::suffix());
    // A member polls on a thread of its own until told to stop.
    let member = |name: &str| {
        let c: BaseConsumer<Dbg> = ClientConfig::new().set("debug","cgrp,broker")
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("group.instance.id", format!("{group}-{name}"))
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .create_with_context(Dbg)
            .unwrap();
        c.subscribe(&[&topic]).unwrap();
        let (c, stop) = (Arc::new(c), Arc::new(AtomicBool::new(false)));
        let (polled, stopped) = (c.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let _ = polled.poll(Duration::from_millis(50));
            }
        });
        (c, stop, thread)
    };
    let owned = |c: &BaseConsumer<Dbg>| c.assignment().map(|a| a.count()).unwrap_or(0);
    let (leader, stop_leader, leader_thread) = member("leader");
    common::eventually(Duration::from_secs(60), "the first member owns the four partitions", || async {
        (owned(&leader) == 4).then_some(())
    })
    .await;
    let (other, stop_other, other_thread) = member("other");
    common::eventually(Duration::from_secs(60), "two partitions each", || async {
        (owned(&leader) == 2 && owned(&other) == 2).then_some(())
    })
    .await;

    stop_leader.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || leader_thread.join().unwrap()).await.unwrap();
    drop(leader);
    let stopped = std::time::Instant::now();
    common::eventually(Duration::from_secs(60), "the other member owns the four partitions", || async {
        (owned(&other) == 4).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    stop_other.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || other_thread.join().unwrap()).await.unwrap();
    assert!(took >= Duration::from_secs(8), "a static member's partitions wait for its session to end ({took:?})");
}

crate::on_both_brokers!(
    actix::test,
    a_fetch_from_inside_a_batch_starts_at_its_offset,
    a_waiting_fetch_answers_when_a_record_arrives,
    a_stopped_leader_s_partitions_go_to_the_others_after_its_session
);

struct Dbg;
impl rdkafka::ClientContext for Dbg {
    fn log(&self, _l: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("RDK {fac} {log_message}");
    }
}
impl rdkafka::consumer::ConsumerContext for Dbg {}
