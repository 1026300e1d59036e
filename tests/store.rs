//! The store on its own, against real Postgres and SQLite: every column survives the batched write
//! (Postgres' binary COPY included), and a batch that repeats stored rows (a redelivery after a crash)
//! stores each row exactly once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use understudy::model::{AckEvent, Channel, Outbound, SourcePosition, event_id};
use understudy::plan::PlannedMessage;
use understudy::store::{EventRow, MessageRow, Store};

fn message(i: usize, channel: Channel) -> PlannedMessage {
    let scenario = common::scenario("failure-heavy.yaml", 1.0);
    let payload_id = format!("pay-{i}-\"quoted\"");
    let plan = scenario.plan(channel, &payload_id).expect("channel in scenario");
    PlannedMessage {
        outbound: Outbound {
            source: SourcePosition {
                topic: "store.outbound".into(),
                topic_id: "cluster/topic".into(),
                partition: (i % 3) as i32,
                offset: i as i64,
            },
            payload_id: payload_id.into(),
            batch_id: format!("batch-{}", i % 2).into(),
            channel,
            recipient: format!("user{i}@example.com").into(),
            tenant_id: (i % 2 == 0).then(|| "acme".into()),
            headers: vec![
                ("traceparent".into(), format!("00-{i:032x}-{i:016x}-01").into_bytes()),
                ("bin".into(), vec![0xff, i as u8]),
            ],
            rule_headers: Vec::new(),
            body: format!(r#"{{"payload_id":"pay-{i}","n":{i}}}"#).into_bytes(),
            received_at: Utc.timestamp_micros(1_700_000_000_000_000 + i as i64 * 1_001).unwrap(),
        },
        plan,
    }
}

fn events(m: &PlannedMessage) -> Vec<EventRow> {
    let o = &m.outbound;
    m.plan
        .steps
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let at = o.received_at + chrono::Duration::microseconds(s.due_us);
            EventRow {
                event: AckEvent {
                    event_id: event_id(&o.payload_id, s.status, s.attempt),
                    payload_id: o.payload_id.clone(),
                    batch_id: o.batch_id.clone(),
                    channel: o.channel,
                    status: s.status,
                    vendor_message_id: m.plan.vendor_message_id.clone(),
                    attempt: s.attempt,
                    scheduled_at: at,
                    emitted_at: at,
                    error_code: s.error_code.clone(),
                    error_reason: s.error_reason.clone(),
                    bounce_type: s.bounce_type,
                    tenant_id: o.tenant_id.as_deref().map(Into::into),
                    fault: (k == 1).then_some(understudy::model::Fault::Corrupt),
                },
                ack_partition: 0,
                ack_offset: k as i64,
            }
        })
        .collect()
}

async fn exactly_once_and_faithful(store: Store) {
    store.migrate().await.unwrap();
    let scenario_name: Arc<str> = "failure-heavy".into();
    let planned: Vec<PlannedMessage> = (0..300).map(|i| message(i, Channel::ALL[i % 3])).collect();
    let rows: Vec<MessageRow> =
        planned.iter().map(|m| MessageRow::new(&mut m.clone(), &scenario_name, &"v1".into())).collect();
    // All but the last step of every lifecycle: every message is unfinished.
    let all_events: Vec<Vec<EventRow>> = planned.iter().map(events).collect();
    let first: Vec<EventRow> = all_events.iter().flat_map(|e| e[..e.len() - 1].to_vec()).collect();

    store.write(&rows[..200], &first[..first.len() / 2]).await.unwrap();
    // The same rows again, with the rest: stored rows are kept, new ones added.
    store.write(&rows, &first).await.unwrap();
    let totals = store.totals().await.unwrap();
    assert_eq!((totals.messages, totals.events), (300, first.len() as i64));
    let ids: HashSet<String> = store.all_event_ids().await.unwrap().into_iter().collect();
    assert_eq!(ids, first.iter().map(|e| e.event.event_id.to_string()).collect::<HashSet<_>>());

    // Every message of partition 1 reads back as it was planned, minus what lifecycles do not need.
    let pending = store.pending("store.outbound", "cluster/topic", 1).await.unwrap();
    assert_eq!(pending.len(), 100);
    // Another incarnation of the topic (created again, offsets from 0) has none of them.
    assert!(store.pending("store.outbound", "cluster/other", 1).await.unwrap().is_empty());
    assert!(store.stored_offsets("store.outbound", "cluster/other", 1, 0).await.unwrap().is_empty());
    assert_eq!(store.stored_offsets("store.outbound", "cluster/topic", 1, 0).await.unwrap().len(), 100);
    for p in &pending {
        let original = &planned[p.message.outbound.source.offset as usize];
        let (a, b) = (&p.message.outbound, &original.outbound);
        assert_eq!(
            (&a.source, &a.payload_id, &a.batch_id, a.channel, &a.recipient, &a.tenant_id, &a.headers, a.received_at),
            (&b.source, &b.payload_id, &b.batch_id, b.channel, &b.recipient, &b.tenant_id, &b.headers, b.received_at)
        );
        assert_eq!(p.message.plan, original.plan);
        assert_eq!(p.stored_events.len(), original.plan.steps.len() - 1, "every step but the last is stored");
    }

    // Finishing every lifecycle, with repeats, leaves nothing pending and every event once.
    let rest: Vec<EventRow> = all_events.iter().flatten().cloned().collect();
    store.write(&rows[100..], &rest).await.unwrap();
    assert_eq!(store.unfinished_count().await.unwrap(), 0);
    assert_eq!(store.totals().await.unwrap().events, rest.len() as i64);
    store.close().await;
}

#[tokio::test]
async fn postgres_stores_every_row_once_and_faithfully() {
    let url = common::postgres_url().await;
    exactly_once_and_faithful(Store::connect(&url, 2).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_stores_every_row_once_and_faithfully() {
    let (url, _dir) = common::sqlite_url();
    exactly_once_and_faithful(Store::connect(&url, 1).await.unwrap()).await;
}
