//! Fault injection on a real broker and store: the acks each kind of fault produces, read back from the
//! ack topic (counts within tolerance, order, codes, invalid JSON), the marks in the store, and the
//! determinism of per-message faults.

mod common;

use common::Kafka;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use understudy::demo::{SampleMessage, publish, read_topic};
use understudy::model::{AckEvent, Channel, Status};
use understudy::scenario::{MessageView, Scenario};
use understudy::store::Store;
use understudy::wire::headers::EVENT_ID_HEADER;

use Status::*;

const SCENARIO: &str = r#"
name: faults
seed: 9
time_scale: 0.001
channels:
  email:
    delays:
      SEND: { dist: fixed, value: 1s }
      DELIVERY: { dist: fixed, value: 2s }
      OPEN: { dist: fixed, value: 3s }
    paths:
      - { name: opened, weight: 1, steps: [SEND, DELIVERY, OPEN] }
    faults: { duplicate: 0.2, corrupt: 0.1 }
  whatsapp:
    delays:
      SEND: { dist: fixed, value: 1s }
      DELIVERY: { dist: fixed, value: 2s }
      READ: { dist: fixed, value: 3s }
      REJECT: { dist: fixed, value: 10ms }
    paths:
      - { name: read, weight: 1, steps: [SEND, DELIVERY, READ] }
    faults: { out_of_order: 0.3, skip: { DELIVERY: 0.2 }, drop: 0.05 }
  sms:
    delays:
      SEND: { dist: fixed, value: 1s }
      DELIVERY: { dist: fixed, value: 4s }
    paths:
      - { name: delivered, weight: 1, steps: [SEND, DELIVERY] }
    faults:
      deferrals: { probability: 0.3, retries: 2, backoff: 10s, multiplier: 3 }
      expiry: { after: 15s }
rules:
  # Batches `clean-*`: no faults at all (a rule's faults replace the channel's).
  - name: clean
    match: { batch: "clean-*" }
    faults: {}
outages:
  - { name: carrier-down, match: { channels: [sms], batch: "outage-*" }, from: 0s, for: 10000h, code: "30008", reason: "carrier down" }
  - { name: held, match: { channels: [email], batch: "held-*" }, from: 0s, for: 20000s, mode: delay }
throttles:
  - { name: wa-rate, match: { channels: [whatsapp], batch: "burst-*" }, rate: 50, burst: 10 }
"#;

fn msg(id: String, channel: Channel, batch: &str) -> SampleMessage {
    let recipient = if channel == Channel::Email { "kim@example.com" } else { "+15557654321" };
    let body = json!({"payload_id": id, "batch_id": batch, "channel": channel.as_str(), "recipient": recipient});
    SampleMessage { payload_id: id, channel, body: serde_json::to_vec(&body).unwrap(), headers: vec![] }
}

/// Whether `n` of `total` is within 5 standard deviations of the share `p`.
fn near(n: usize, total: usize, p: f64) -> bool {
    let sd = (total as f64 * p * (1.0 - p)).sqrt();
    (n as f64 - total as f64 * p).abs() <= 5.0 * sd + 1.0
}

async fn injected_faults_shape_the_acks_and_are_marked_in_the_store(k: Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.yaml");
    std::fs::write(&path, SCENARIO).unwrap();
    let loaded = chrono::Utc::now();
    let scenario = Arc::new(Scenario::load(&path).unwrap());
    let common::Running { settings, store, brokers, pipeline } = common::start(k, scenario.clone()).await;

    let run = common::suffix();
    let id = |kind: &str, i: usize| format!("{run}-{kind}-{i}");
    let mut batch = Vec::new();
    for i in 0..600 {
        batch.push(msg(id("email", i), Channel::Email, "b"));
        batch.push(msg(id("wa", i), Channel::Whatsapp, "b"));
        batch.push(msg(id("sms", i), Channel::Sms, "b"));
    }
    for i in 0..100 {
        batch.push(msg(id("clean", i), Channel::Whatsapp, "clean-1"));
        batch.push(msg(id("outage", i), Channel::Sms, "outage-1"));
        batch.push(msg(id("held", i), Channel::Email, "held-1"));
    }
    for i in 0..300 {
        batch.push(msg(id("burst", i), Channel::Whatsapp, "burst-1"));
    }
    let total = batch.len() as i64;
    publish(&brokers, &settings.kafka.input_topics[0], &batch, None).await.unwrap();
    common::all_finished(&store, total, Duration::from_secs(120)).await;
    pipeline.shutdown().await;

    // The ack topic, in order per partition (all acks of a payload share one).
    // Everything on the topic, duplicates included: read until it has been quiet for 5 s.
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, usize::MAX, Duration::from_secs(5)).unwrap();
    let mut by_payload: HashMap<String, Vec<(i64, Option<AckEvent>, String)>> = HashMap::new();
    let mut corrupt = 0;
    for r in &acks {
        let event_id =
            r.headers.iter().find(|(k, _)| k == EVENT_ID_HEADER).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let parsed: Option<AckEvent> = serde_json::from_slice(&r.payload).ok();
        corrupt += usize::from(parsed.is_none());
        by_payload.entry(key).or_default().push((r.offset, parsed, event_id.expect("every ack has its event id")));
    }
    for evs in by_payload.values_mut() {
        evs.sort_by_key(|e| e.0);
    }
    let statuses = |id: &str| -> Vec<Status> {
        by_payload
            .get(id)
            .map_or(Vec::new(), |e| e.iter().filter_map(|(_, a, _)| a.as_ref().map(|a| a.status)).collect())
    };
    let Store::Postgres(pool) = &store else { unreachable!() };
    let faults: HashMap<String, Option<String>> =
        sqlx::query_as("SELECT payload_id, faults FROM messages").fetch_all(pool).await.unwrap().into_iter().collect();
    let event_faults: HashMap<String, i64> =
        sqlx::query_as("SELECT coalesce(fault, 'none'), count(*) FROM events GROUP BY 1")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let marked = |id: &str, kind: &str| faults[id].as_deref().is_some_and(|f| f.split(',').any(|k| k == kind));

    // Email: duplicates (the same event id twice in Kafka, once in the store) and corrupted acks.
    let (mut dup_acks, mut email_acks) = (0, 0);
    for i in 0..600 {
        let evs = &by_payload[&id("email", i)];
        email_acks += evs.len();
        let mut ids: Vec<&str> = evs.iter().map(|e| e.2.as_str()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        dup_acks += n - ids.len();
        assert_eq!(ids.len(), 3, "three distinct events");
        assert_eq!(n > 3, marked(&id("email", i), "duplicate"));
    }
    assert!(near(dup_acks, 1800, 0.2), "duplicates: {dup_acks} of 1800");
    assert!(near(corrupt, email_acks, 0.1), "corrupt: {corrupt} of {email_acks}");
    assert!(event_faults.get("corrupt").copied().unwrap_or(0) as usize <= corrupt);
    assert!(event_faults.get("corrupt").copied().unwrap_or(0) > 0, "corrupt events are marked in the store");

    // WhatsApp: READ before DELIVERY, DELIVERY skipped, acks dropped; the plan the scenario gives here.
    let (mut reversed, mut skipped, mut dropped) = (0, 0, 0);
    for i in 0..600 {
        let pid = id("wa", i);
        let got = statuses(&pid);
        let plan = scenario.plan_for(&MessageView::new(Channel::Whatsapp, &pid)).unwrap();
        assert_eq!(got, plan.steps.iter().map(|s| s.status).collect::<Vec<_>>(), "{pid}: as planned");
        let pos = |s| got.iter().position(|g| *g == s);
        if let (Some(d), Some(r)) = (pos(Delivery), pos(Read))
            && r < d
        {
            reversed += 1;
            assert!(marked(&pid, "out_of_order"));
        }
        if got.contains(&Read) && !got.contains(&Delivery) && marked(&pid, "skipped") {
            skipped += 1;
        }
        dropped += usize::from(marked(&pid, "dropped"));
    }
    assert!(reversed > 50, "READ before DELIVERY: {reversed} of 600");
    assert!(near(skipped, 600, 0.2 * 0.95), "DELIVERY skipped: {skipped} of 600");
    assert!(near(dropped, 600, 1.0 - 0.95f64.powi(3) * 0.8 - 0.95f64.powi(2) * 0.2), "dropped: {dropped} of 600");
    for i in 0..100 {
        assert_eq!(statuses(&id("clean", i)), [Send, Delivery, Read], "a rule's empty faults turn them off");
    }

    // SMS: two deferrals with backoff (10 ms, then 30 ms, scaled), then the outcome; a deferred message's
    // DELIVERY would come after the 15 ms validity period, so it expires then.
    let mut deferred = 0;
    for i in 0..600 {
        let pid = id("sms", i);
        let evs: Vec<AckEvent> = by_payload[&pid].iter().filter_map(|e| e.1.clone()).collect();
        let got: Vec<(Status, u16)> = evs.iter().map(|e| (e.status, e.attempt)).collect();
        if got == [(Send, 1), (Delivery, 1)] {
            continue;
        }
        deferred += 1;
        assert_eq!(got, [(Send, 1), (Deferred, 1), (Undelivered, 2)], "{pid}");
        let gap = |a: usize, b: usize| (evs[b].scheduled_at - evs[a].scheduled_at).num_microseconds().unwrap();
        assert_eq!(gap(0, 1), 10_000, "{pid}: first retry 10 s (scaled) after SEND");
        assert_eq!(evs[2].error_code.as_deref(), Some("30036"));
        assert!(marked(&pid, "deferred") && marked(&pid, "expired"));
    }
    assert!(near(deferred, 600, 0.3), "deferred: {deferred} of 600");

    // Outages: rejected with the outage's code; held until the window's end (20 s after the scenario
    // was loaded, which was after `loaded`): every message received before `loaded` + 20 s was in it.
    let window_end = loaded + chrono::Duration::seconds(20);
    let received: HashMap<String, i64> =
        sqlx::query_as("SELECT payload_id, received_at_us FROM messages WHERE batch_id = 'held-1'")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut in_window = 0;
    for i in 0..100 {
        let evs: Vec<AckEvent> = by_payload[&id("outage", i)].iter().filter_map(|e| e.1.clone()).collect();
        assert_eq!((evs.len(), evs[0].status, evs[0].error_code.as_deref()), (1, Reject, Some("30008")));
        if received[&id("held", i)] < window_end.timestamp_micros() {
            in_window += 1;
            // Email corrupts each ack with probability 0.1, so all three acks of a message are unreadable
            // about once in a thousand (once in ten runs of these 100): such a message has nothing to time.
            let first = by_payload[&id("held", i)].iter().filter_map(|e| e.1.as_ref()).map(|e| e.scheduled_at).min();
            assert!(first.is_none_or(|first| first >= window_end), "held until the window ends");
            assert!(marked(&id("held", i), "outage"));
        }
    }
    assert!(in_window >= 90, "{in_window} of 100 held messages received in the window");

    // Throttle: 50 a second with bursts of 10, counted by receipt time.
    let received: Vec<i64> =
        sqlx::query_scalar("SELECT received_at_us FROM messages WHERE batch_id = 'burst-1' ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let span_s = (received[received.len() - 1] - received[0]) as f64 / 1e6;
    let throttled: Vec<String> = (0..300).map(|i| id("burst", i)).filter(|p| statuses(p) == [Reject]).collect();
    let admitted = 300 - throttled.len();
    assert!(admitted >= 10 && admitted as f64 <= 11.0 + 50.0 * span_s, "admitted {admitted} in {span_s:.2} s");
    for p in &throttled {
        let e = by_payload[p][0].1.as_ref().unwrap();
        assert_eq!(e.error_code.as_deref(), Some("130429"));
        assert!(marked(p, "throttled"));
    }
    assert_eq!(event_faults["throttled"] as usize, throttled.len());
    store.close().await;
}

crate::on_both_brokers!(actix::test, injected_faults_shape_the_acks_and_are_marked_in_the_store);
