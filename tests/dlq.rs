//! No poison pills: a record the dead-letter topic cannot take as it is goes there as a copy (its body cut
//! to fit, or its headers only) carrying the reason, the original size and the source position, and a
//! dead-letter topic that is away holds back only the partition of the record waiting for it. On both
//! brokers, with good messages around the bad ones that must all be processed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use understudy::actors::pipeline::Pipeline;
use understudy::config::Settings;
use understudy::demo::{ReadRecord, publish, read_topic, sample_batch};
use understudy::store::Store;
use understudy::wire::headers::{DLQ_COPY_HEADER, DLQ_KIND_HEADER, DLQ_ORIGINAL_BYTES_HEADER, DLQ_REASON_HEADER};

/// Create `topic` with `partitions` and topic configs.
async fn create_topic(brokers: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res =
        admin.create_topics(&[t], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await.unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

/// Produce one record of `bytes` value bytes (valid JSON of an SMS message padded out) to `partition`.
async fn produce_large(brokers: &str, topic: &str, partition: i32, id: &str, bytes: usize, header_bytes: usize) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "16000000")
        .create()
        .unwrap();
    let head = format!(r#"{{"payload_id":"{id}","batch_id":"big","channel":"sms","recipient":"+15550000","pad":""#);
    let mut body = head.into_bytes();
    body.resize(bytes.saturating_sub(2), b'x');
    body.extend_from_slice(b"\"}");
    let blob = vec![b'h'; header_bytes];
    let mut headers = OwnedHeaders::new().insert(Header { key: "x-origin", value: Some("platform") });
    if header_bytes > 0 {
        headers = headers.insert(Header { key: "x-blob", value: Some(&blob) });
    }
    producer
        .send(
            FutureRecord::to(topic).partition(partition).key(id).payload(&body).headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce the {bytes}-byte record: {e}"));
}

fn header(r: &ReadRecord, name: &str) -> Option<String> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

struct World {
    settings: Settings,
    brokers: String,
    store: Store,
    pipeline: Pipeline,
}

/// A pipeline on its own topics: the input topic takes records of up to 16 MB, the DLQ those of up to
/// `dlq_max_bytes` (the broker's default when `None`).
async fn world(k: Kafka, dlq_max_bytes: Option<&str>) -> World {
    let url = common::postgres_url().await;
    let mut settings = common::settings(k, &url, 3);
    settings.kafka.create_topics = false;
    settings.input.max_message_bytes = 100 * 1024;
    let brokers = k.brokers();
    let kk = &settings.kafka;
    create_topic(&brokers, &kk.input_topics[0], 3, &[("max.message.bytes", "16000000")]).await;
    create_topic(&brokers, &kk.ack_topic, 3, &[]).await;
    let dlq_configs: Vec<(&str, &str)> = dlq_max_bytes.map(|b| ("max.message.bytes", b)).into_iter().collect();
    create_topic(&brokers, &kk.dlq_topic, 1, &dlq_configs).await;
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario = Arc::new(common::scenario("happy-path.yaml", 0.0001));
    let pipeline = Pipeline::start(&settings, scenario, &brokers).await.unwrap();
    World { settings, brokers, store, pipeline }
}

/// Good messages before and after, all processed; the bad ones' DLQ records by payload id.
async fn run_with_bad(w: &World, bad: &[(&str, usize, usize)]) -> HashMap<String, ReadRecord> {
    let input = &w.settings.kafka.input_topics[0];
    let good = sample_batch(&common::suffix(), 600);
    publish(&w.brokers, input, &good[..300], None).await.unwrap();
    for (i, (id, bytes, header_bytes)) in bad.iter().enumerate() {
        produce_large(&w.brokers, input, i as i32 % 3, id, *bytes, *header_bytes).await;
    }
    publish(&w.brokers, input, &good[300..], None).await.unwrap();
    common::all_finished(&w.store, 600, Duration::from_secs(60)).await;
    let (b, dlq, n) = (w.brokers.clone(), w.settings.kafka.dlq_topic.clone(), bad.len());
    let dead =
        tokio::task::spawn_blocking(move || read_topic(&b, &dlq, n, Duration::from_secs(20)).unwrap()).await.unwrap();
    assert_eq!(dead.len(), bad.len(), "every bad record in the DLQ once");
    dead.into_iter().map(|r| (String::from_utf8(r.key.clone().unwrap()).unwrap(), r)).collect()
}

/// A 2 MB record (over the producer's 1 MB `message.max.bytes`) and a 300 KB one (over the DLQ topic's
/// 200 KB): both go as copies with the body cut to 64 KiB, the reason saying why, the original size and
/// source position; the partitions move on.
async fn records_too_large_for_the_dlq_go_as_cut_copies(k: Kafka) {
    let w = world(k, Some("200000")).await;
    let run = common::suffix();
    let (huge, large) = (format!("{run}-huge"), format!("{run}-large"));
    let dead = run_with_bad(&w, &[(&huge, 2_000_000, 0), (&large, 300_000, 0)]).await;
    for (id, bytes) in [(&huge, 2_000_000usize), (&large, 300_000)] {
        let r = &dead[id.as_str()];
        let copy = header(r, DLQ_COPY_HEADER);
        if k == Kafka::Tansu && bytes < 1_000_000 && copy.is_none() {
            // tansu does not enforce a topic's `max.message.bytes`: the original fits there.
            assert_eq!(r.payload.len(), bytes);
            continue;
        }
        assert_eq!(copy.as_deref(), Some("body-cut"), "{id}");
        assert_eq!(r.payload.len(), 64 * 1024, "{id}: the body cut to 64 KiB");
        assert!(
            r.payload.starts_with(format!(r#"{{"payload_id":"{id}""#).as_bytes()),
            "{id}: the start of the original"
        );
        assert_eq!(header(r, DLQ_ORIGINAL_BYTES_HEADER), Some(bytes.to_string()), "{id}");
        assert_eq!(header(r, DLQ_KIND_HEADER).as_deref(), Some("too_large"), "{id}");
        let reason = header(r, DLQ_REASON_HEADER).unwrap();
        assert!(reason.contains("refused the original record") && reason.contains("body-cut copy"), "{id}: {reason}");
        assert_eq!(header(r, "x-origin").as_deref(), Some("platform"), "{id}: small original headers kept");
        assert!(header(r, "understudy-source-offset").is_some() && header(r, "understudy-source-topic").is_some());
    }
    w.pipeline.shutdown().await;
}

/// A DLQ topic that takes no more than 50 KB: a record with 2 MB of headers and a large body goes as
/// its headers only (the DLQ's own headers, without the original ones).
async fn a_record_nothing_of_which_fits_goes_as_headers_only(k: Kafka) {
    let w = world(k, Some("50000")).await;
    let id = format!("{}-headers", common::suffix());
    let dead = run_with_bad(&w, &[(&id, 1_500_000, 2_000_000)]).await;
    let r = &dead[id.as_str()];
    let copy = header(r, DLQ_COPY_HEADER);
    match k {
        Kafka::Apache => assert_eq!(copy.as_deref(), Some("headers-only")),
        // tansu does not enforce the topic's limit, so the body-cut copy fits there.
        Kafka::Tansu => assert!(matches!(copy.as_deref(), Some("headers-only" | "body-cut")), "{copy:?}"),
    }
    if copy.as_deref() == Some("headers-only") {
        assert!(r.payload.is_empty(), "no body");
    }
    assert!(header(r, "x-blob").is_none(), "the 2 MB header is not copied");
    assert_eq!(header(r, DLQ_ORIGINAL_BYTES_HEADER), Some("1500000".to_owned()));
    w.pipeline.shutdown().await;
}

/// The DLQ topic does not exist yet (and is not created automatically): the bad record waits for it,
/// holding back only its own partition's commits; every good message is processed and the other
/// partitions commit to their end. Once the topic exists, the record lands and its partition commits.
async fn a_dlq_that_is_away_holds_back_only_its_partition(k: Kafka) {
    let url = common::postgres_url().await;
    let mut settings = common::settings(k, &url, 3);
    settings.kafka.create_topics = false;
    settings.kafka.librdkafka.insert("allow.auto.create.topics".into(), "false".into());
    let brokers = k.brokers();
    let kk = settings.kafka.clone();
    create_topic(&brokers, &kk.input_topics[0], 3, &[]).await;
    create_topic(&brokers, &kk.ack_topic, 3, &[]).await;
    let store = Store::connect(&url, 2).await.unwrap();
    let pipeline =
        Pipeline::start(&settings, Arc::new(common::scenario("happy-path.yaml", 0.0001)), &brokers).await.unwrap();
    let input = &kk.input_topics[0];
    let good = sample_batch(&common::suffix(), 600);
    publish(&brokers, input, &good[..300], None).await.unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let bad = producer
        .send(FutureRecord::to(input).partition(0).key("bad-json").payload("{not json"), Duration::from_secs(10))
        .await
        .unwrap();
    publish(&brokers, input, &good[300..], None).await.unwrap();
    common::all_finished(&store, 600, Duration::from_secs(60)).await;

    // Every partition but the bad record's commits to its end; that one stops at the bad record.
    // From the records themselves, not the broker's high watermark (tansu's is approximate).
    let ends: Vec<i64> = {
        let (b, t) = (brokers.clone(), input.clone());
        let records = tokio::task::spawn_blocking(move || read_topic(&b, &t, 601, Duration::from_secs(10)).unwrap())
            .await
            .unwrap();
        assert_eq!(records.len(), 601);
        (0..3).map(|p| records.iter().filter(|r| r.partition == p).map(|r| r.offset + 1).max().unwrap_or(0)).collect()
    };
    let committed =
        common::eventually(Duration::from_secs(30), "partitions 1 and 2 committed to their end", || async {
            let c = common::committed_offsets(&brokers, &kk.group_id, input, 3);
            (c[1] == ends[1] && c[2] == ends[2]).then_some(c)
        })
        .await;
    assert!(committed[0] <= bad.offset, "partition 0 is held at the bad record ({} > {})", committed[0], bad.offset);

    create_topic(&brokers, &kk.dlq_topic, 1, &[]).await;
    let (b, dlq) = (brokers.clone(), kk.dlq_topic.clone());
    let dead =
        tokio::task::spawn_blocking(move || read_topic(&b, &dlq, 1, Duration::from_secs(40)).unwrap()).await.unwrap();
    assert_eq!(dead.len(), 1, "the bad record reached the DLQ once it existed");
    assert_eq!(header(&dead[0], DLQ_KIND_HEADER).as_deref(), Some("not_json"));
    common::eventually(Duration::from_secs(30), "partition 0 committed to its end", || async {
        (common::committed_offsets(&brokers, &kk.group_id, input, 3)[0] == ends[0]).then_some(())
    })
    .await;
    pipeline.shutdown().await;
}

crate::on_both_brokers!(
    actix::test,
    records_too_large_for_the_dlq_go_as_cut_copies,
    a_record_nothing_of_which_fits_goes_as_headers_only,
    a_dlq_that_is_away_holds_back_only_its_partition
);
