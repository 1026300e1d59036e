//! A store that outlives its topics: an input topic deleted and created again mid-life starts its offsets at
//! 0 again, and its new messages must not be taken for the old ones stored at those offsets. Messages are
//! keyed by the topic's incarnation (cluster id and topic id) as well as topic, partition and offset.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use understudy::actors::pipeline::Pipeline;
use understudy::demo::{publish, sample_batch};
use understudy::store::Store;

const N: usize = 900;

/// The input topic deleted and created again while the service consumes it: librdkafka keeps the
/// assignment and resets the fetch to the new log's start, so offsets go back; the service notices, and the
/// new messages are keyed by the new topic id.
async fn a_topic_created_again_mid_life_is_a_new_topic(k: Kafka) {
    let url = common::postgres_url().await;
    let mut settings = common::settings(k, &url, 3);
    // Notice the topic's new incarnation within a second rather than librdkafka's default five minutes.
    settings.kafka.librdkafka.insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let brokers = k.brokers();
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario = Arc::new(common::scenario("happy-path.yaml", 0.0001));
    let pipeline = Pipeline::start(&settings, scenario, &brokers).await.unwrap();
    let input = settings.kafka.input_topics[0].clone();

    let first = sample_batch(&format!("{}-first", common::suffix()), N);
    publish(&brokers, &input, &first, None).await.unwrap();
    common::all_finished(&store, N as i64, Duration::from_secs(60)).await;

    // Delete the topic and create it again with the same name and partitions: offsets start at 0 again.
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.delete_topics(&[&input], &opts).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
    common::eventually(Duration::from_secs(60), "the topic created again", || async {
        let created = admin
            .create_topics(&[NewTopic::new(&input, 3, TopicReplication::Fixed(1))], &opts)
            .await
            .ok()?
            .into_iter()
            .all(|r| r.is_ok());
        created.then_some(())
    })
    .await;

    let second = sample_batch(&format!("{}-second", common::suffix()), N);
    publish(&brokers, &input, &second, None).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let distinct = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(DISTINCT payload_id) FROM messages").fetch_one(&pool).await.unwrap();
        n
    };
    common::eventually(Duration::from_secs(90), "every message of the new topic stored and finished", || async {
        (distinct().await == 2 * N as i64 && store.unfinished_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(
        pipeline.consumer_stats.skipped_already_stored.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no message of the new topic was taken for a stored one"
    );
    pipeline.shutdown().await;
    let keys: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT src_topic_id FROM messages ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(keys.len(), 2, "two incarnations of the topic in the store: {keys:?}");
    assert!(keys.iter().all(|(k,)| !k.is_empty()), "both known by cluster and topic id: {keys:?}");
    // Records of the new log fetched at the old position before the new id was seen are stored under the
    // old key as well: processed twice, never lost. Their events are stored once (same event ids).
    let rows = store.totals().await.unwrap().messages;
    eprintln!(
        "FIGURES topic created again [{}]: {} messages, {} rows ({} read twice in the switch)",
        k.name(),
        2 * N,
        rows,
        rows - 2 * N as i64
    );
    assert!(rows - 2 * (N as i64) < N as i64 / 10, "few read twice: {rows} rows for {} messages", 2 * N);
}

/// The store outlives its broker: the broker is replaced by a new, empty one (the embedded broker started
/// again over an old `understudy.db`, or a test environment's Kafka recreated) with the same topic names.
/// Offsets start at 0 again; the new messages are all processed, none taken for a stored one.
async fn a_new_broker_over_an_old_store_is_a_new_topic(k: Kafka) {
    let url = common::postgres_url().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario = Arc::new(common::scenario("happy-path.yaml", 0.0001));
    let mut settings = None;
    for (round, total) in [(0, N as i64), (1, 2 * N as i64)] {
        let broker = common::kafka::OwnBroker::start(k, "fresh");
        let brokers = broker.bootstrap();
        let s = settings.get_or_insert_with(|| common::settings_for(&brokers, &url, 3));
        s.kafka.brokers = Some(brokers.clone());
        let pipeline = Pipeline::start(s, scenario.clone(), &brokers).await.unwrap();
        let batch = sample_batch(&format!("{}-{round}", common::suffix()), N);
        publish(&brokers, &s.kafka.input_topics[0], &batch, None).await.unwrap();
        common::eventually(Duration::from_secs(90), "this broker's batch stored and finished", || async {
            let t = store.totals().await.unwrap();
            (t.messages == total && store.unfinished_count().await.unwrap() == 0).then_some(())
        })
        .await;
        assert_eq!(
            pipeline.consumer_stats.skipped_already_stored.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "no message of the new broker was taken for a stored one"
        );
        pipeline.shutdown().await;
    }
}

crate::on_both_brokers!(
    actix::test,
    a_topic_created_again_mid_life_is_a_new_topic,
    a_new_broker_over_an_old_store_is_a_new_topic
);
