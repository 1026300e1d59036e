//! End to end on a real broker and a real store: publish a batch over three channels, let every
//! lifecycle finish, and check the acks in Kafka against the events in the store.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use understudy::actors::pipeline::Pipeline;
use understudy::demo::{SampleMessage, publish, read_topic, sample_batch};
use understudy::model::{AckEvent, Channel, Status};
use understudy::store::Store;
use understudy::wire::headers::{DLQ_KIND_HEADER, DLQ_REASON_HEADER};

const N: usize = 3000;

fn bad_messages() -> Vec<(SampleMessage, &'static str)> {
    let msg = |id: &str, body: Vec<u8>| SampleMessage {
        payload_id: id.into(),
        channel: Channel::Email,
        body,
        headers: vec![("x-origin".into(), "platform".into())],
    };
    vec![
        (msg("bad-json", b"{\"payload_id\": \"x\", ".to_vec()), "not_json"),
        (msg("bad-missing", br#"{"batch_id":"b","channel":"sms","recipient":"+1"}"#.to_vec()), "missing_field"),
        (
            msg("bad-channel", br#"{"payload_id":"p","batch_id":"b","channel":"fax","recipient":"r"}"#.to_vec()),
            "unknown_channel",
        ),
        (msg("bad-utf8", vec![b'{', 0xff, 0xfe, b'}']), "not_utf8"),
        (
            msg(
                "bad-large",
                format!(
                    r#"{{"payload_id":"big","batch_id":"b","channel":"sms","recipient":"r","pad":"{}"}}"#,
                    "x".repeat(5000)
                )
                .into_bytes(),
            ),
            "too_large",
        ),
        (
            msg("bad-type", br#"{"payload_id":["a"],"batch_id":"b","channel":"sms","recipient":"r"}"#.to_vec()),
            "wrong_type",
        ),
    ]
}

async fn end_to_end(k: Kafka, store_url: String) {
    let mut settings = common::settings(k, &store_url, 3);
    settings.input.max_message_bytes = 4096;
    let scenario = Arc::new(common::scenario("default.yaml", 0.00002));
    let store = Store::connect(&store_url, 2).await.expect("store");
    let brokers = k.brokers();
    let pipeline = Pipeline::start(&settings, scenario.clone(), &brokers).await.expect("pipeline starts");

    let run = common::suffix();
    let batch = sample_batch(&run, N);
    let plans: HashMap<String, _> =
        batch.iter().map(|m| (m.payload_id.clone(), scenario.plan(m.channel, &m.payload_id).unwrap())).collect();
    let expected: usize = plans.values().map(|p| p.steps.len()).sum();
    let input = settings.kafka.input_topics[0].clone();
    let bad = bad_messages();
    let (first, rest) = batch.split_at(N / 2);
    publish(&brokers, &input, first, None).await.unwrap();
    publish(&brokers, &input, &bad.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(), None).await.unwrap();
    publish(&brokers, &input, rest, None).await.unwrap();

    common::eventually(Duration::from_secs(90), "every planned event stored", || async {
        let t = store.totals().await.unwrap();
        (t.events as usize == expected).then_some(())
    })
    .await;
    pipeline.shutdown().await;

    // Every payload reached its terminal state and the store holds exactly the planned events.
    assert_eq!(store.unfinished_count().await.unwrap(), 0);
    let totals = store.totals().await.unwrap();
    assert_eq!(totals.messages as usize, N, "bad messages are not stored as messages");
    let mut planned_counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (id, plan) in &plans {
        let channel = batch.iter().find(|m| &m.payload_id == id).unwrap().channel;
        for s in &plan.steps {
            *planned_counts.entry((channel.to_string(), s.status.to_string())).or_default() += 1;
        }
    }
    let stored_counts: BTreeMap<(String, String), i64> =
        store.status_counts().await.unwrap().into_iter().map(|c| ((c.channel, c.status), c.n)).collect();
    assert_eq!(stored_counts, planned_counts);

    // The outcome mix follows the scenario's weights (within statistical tolerance).
    let email = N as f64 * 0.5;
    let delivered_email = stored_counts[&("email".into(), "DELIVERY".into())] as f64;
    let expected_share = scenario
        .path_shares(Channel::Email)
        .iter()
        .filter(|(_, steps, _)| steps.contains(&Status::Delivery))
        .map(|(_, _, share)| share)
        .sum::<f64>();
    let tolerance = 4.0 * (expected_share * (1.0 - expected_share) / email).sqrt();
    assert!((delivered_email / email - expected_share).abs() < tolerance, "{delivered_email} of {email}");

    // Acks in Kafka and events in the store agree one for one.
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, expected, Duration::from_secs(10)).unwrap();
    let events: Vec<(i32, i64, AckEvent, Vec<(String, Vec<u8>)>)> = acks
        .iter()
        .map(|r| (r.partition, r.offset, serde_json::from_slice(&r.payload).expect("ack is JSON"), r.headers.clone()))
        .collect();
    let kafka_ids: HashSet<String> = events.iter().map(|e| e.2.event_id.to_string()).collect();
    assert_eq!(events.len(), expected, "no duplicate or missing acks in a clean run");
    let stored_ids: HashSet<String> = store.all_event_ids().await.unwrap().into_iter().collect();
    assert_eq!(kafka_ids, stored_ids);

    // Per-payload order holds in the ack topic, matching the plan; keys are payload ids.
    let mut by_payload: HashMap<&str, Vec<&(i32, i64, AckEvent, Vec<(String, Vec<u8>)>)>> = HashMap::new();
    for e in &events {
        by_payload.entry(&*e.2.payload_id).or_default().push(e);
    }
    for (id, mut evs) in by_payload {
        let partitions: HashSet<i32> = evs.iter().map(|e| e.0).collect();
        assert_eq!(partitions.len(), 1, "{id}: all events on one partition");
        evs.sort_by_key(|e| e.1);
        let got: Vec<(Status, u16)> = evs.iter().map(|e| (e.2.status, e.2.attempt)).collect();
        let want: Vec<(Status, u16)> = plans[id].steps.iter().map(|s| (s.status, s.attempt)).collect();
        assert_eq!(got, want, "{id}: order in the ack topic");
        let first = &evs[0].2;
        assert_eq!(*first.vendor_message_id, *plans[id].vendor_message_id);
        assert_eq!(first.tenant_id.as_deref(), Some("demo"));
        if first.status.is_failure() {
            assert!(first.error_code.is_some(), "{id}: failures carry a code");
        }
    }

    // Headers of the outbound message are propagated onto its acks.
    let sample = &batch[17];
    let want_tp = &sample.headers.iter().find(|(k, _)| k == "traceparent").unwrap().1;
    for e in events.iter().filter(|e| *e.2.payload_id == *sample.payload_id) {
        let tp = e.3.iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v.clone());
        assert_eq!(tp.as_deref(), Some(want_tp.as_bytes()));
        let id = e.3.iter().find(|(k, _)| k == "understudy-event-id").map(|(_, v)| v.clone());
        assert_eq!(id, Some(e.2.event_id.to_string().into_bytes()));
    }

    // Bad messages land in the DLQ untouched, with reasons.
    let dlq = read_topic(&brokers, &settings.kafka.dlq_topic, bad.len(), Duration::from_secs(10)).unwrap();
    assert_eq!(dlq.len(), bad.len());
    for (m, kind) in &bad {
        let rec = dlq.iter().find(|r| r.key.as_deref() == Some(m.payload_id.as_bytes())).expect("in DLQ");
        assert_eq!(rec.payload, m.body, "original bytes untouched");
        let header =
            |k: &str| rec.headers.iter().find(|(h, _)| h == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(header(DLQ_KIND_HEADER).as_deref(), Some(*kind));
        assert!(!header(DLQ_REASON_HEADER).unwrap_or_default().is_empty());
        assert_eq!(header("x-origin").as_deref(), Some("platform"), "original headers kept");
    }
    store.close().await;
}

async fn end_to_end_on_postgres(k: Kafka) {
    end_to_end(k, common::postgres_url().await).await;
}

async fn end_to_end_on_sqlite(k: Kafka) {
    let (url, _dir) = common::sqlite_url();
    end_to_end(k, url).await;
}

/// Two instances in one consumer group split the partitions and together store every event once.
async fn two_instances_share_the_work_exactly_once(k: Kafka) {
    let url = common::postgres_url().await;
    let settings = common::settings(k, &url, 6);
    let scenario = Arc::new(common::scenario("default.yaml", 0.00002));
    let store = Store::connect(&url, 2).await.unwrap();
    let brokers = k.brokers();
    let a = Pipeline::start(&settings, scenario.clone(), &brokers).await.unwrap();
    let b = Pipeline::start(&settings, scenario.clone(), &brokers).await.unwrap();
    // Let the group settle so both members own partitions before the batch arrives.
    common::eventually(Duration::from_secs(30), "both instances own partitions", || async {
        (a.owned_partitions() > 0 && b.owned_partitions() > 0 && a.owned_partitions() + b.owned_partitions() == 6)
            .then_some(())
    })
    .await;

    let batch = sample_batch(&common::suffix(), N);
    let expected: usize = batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).unwrap().steps.len()).sum();
    publish(&brokers, &settings.kafka.input_topics[0], &batch, None).await.unwrap();
    common::eventually(Duration::from_secs(90), "every planned event stored", || async {
        let t = store.totals().await.unwrap();
        (t.events as usize >= expected && t.messages as usize == N).then_some(())
    })
    .await;
    let (ca, cb) = (
        a.consumer_stats.consumed.load(std::sync::atomic::Ordering::Relaxed),
        b.consumer_stats.consumed.load(std::sync::atomic::Ordering::Relaxed),
    );
    a.shutdown().await;
    b.shutdown().await;
    assert!(ca > 0 && cb > 0, "both instances consumed: {ca} and {cb}");
    let totals = store.totals().await.unwrap();
    assert_eq!(totals.events as usize, expected, "every event stored exactly once");
    assert_eq!(store.unfinished_count().await.unwrap(), 0);
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, expected, Duration::from_secs(10)).unwrap();
    let ids: HashSet<Vec<u8>> = acks
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "understudy-event-id").map(|(_, v)| v.clone()))
        .collect();
    assert_eq!(ids.len(), expected);
}

crate::on_both_brokers!(
    actix::test,
    end_to_end_on_postgres,
    end_to_end_on_sqlite,
    two_instances_share_the_work_exactly_once
);
