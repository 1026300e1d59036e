//! Scenario rules and magic recipients on a real broker and store: the acks each message gets, read back
//! from the ack topic, against what each rule and recipient promises, and against the plan the same
//! scenario gives the same message locally (determinism).

mod common;

use common::Kafka;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use understudy::actors::pipeline::Pipeline;
use understudy::config::InputSettings;
use understudy::demo::{SampleMessage, publish, read_topic};
use understudy::model::{AckEvent, BounceType, Channel, Status, event_id};
use understudy::scenario::explain::explain;
use understudy::scenario::rules::{MAGIC, MAGIC_EMAIL_DOMAIN};
use understudy::store::Store;

use Status::*;

/// What a test message must get, independent of the scenario code: its rule, and its statuses and error
/// code when the rule fixes them.
struct Want {
    rule: Option<String>,
    steps: Option<Vec<Status>>,
    code: Option<String>,
    bounce: Option<BounceType>,
}

fn msg(
    id: String,
    channel: Channel,
    recipient: &str,
    fields: serde_json::Value,
    headers: &[(&str, &str)],
) -> SampleMessage {
    let mut body = serde_json::json!({
        "payload_id": id, "batch_id": "b-1", "channel": channel.as_str(), "recipient": recipient,
        "tenant_id": "shop", "template_id": "welcome",
    });
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    SampleMessage {
        payload_id: id,
        channel,
        body: serde_json::to_vec(&body).unwrap(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn want(rule: Option<&str>, steps: Option<&[Status]>, code: Option<&str>) -> Want {
    Want {
        rule: rule.map(str::to_owned),
        steps: steps.map(<[Status]>::to_vec),
        code: code.map(str::to_owned),
        bounce: None,
    }
}

/// The test messages: every rule of `scenarios/rules.yaml` (and a near miss of each), every magic
/// recipient, and 400 messages of team B's weighted sub-scenario.
fn messages(run: &str) -> Vec<(SampleMessage, Want)> {
    let id = |s: &str, i: usize| format!("{run}-{s}-{i}");
    let mut out = Vec::new();
    for i in 0..5 {
        let mut w = want(Some("fraud-team-bounces"), Some(&[Send, Bounce]), Some("550 5.7.1"));
        w.bounce = Some(BounceType::Hard);
        out.push((msg(id("fraud", i), Channel::Email, "Eve@Fraud.Example.COM", json!({}), &[]), w));
        out.push((
            msg(id("fraud-miss", i), Channel::Email, "eve@fraud.example.com.evil", json!({}), &[]),
            want(None, None, None),
        ));
        out.push((
            msg(id("otp", i), Channel::Email, "ann@example.com", json!({"template_id": "otp-login"}), &[]),
            want(Some("otp-fast"), None, None),
        ));
        out.push((
            msg(id("otp-miss", i), Channel::Email, "ann@example.com", json!({"template_id": "login-otp"}), &[]),
            want(None, None, None),
        ));
        out.push((
            msg(id("canary", i), Channel::Sms, "+15557654321", json!({"batch_id": "canary-42"}), &[]),
            want(Some("canary-sms-undelivered"), Some(&[Send, Undelivered]), Some("30005")),
        ));
        // The canary rule is for SMS only.
        out.push((
            msg(id("canary-wa", i), Channel::Whatsapp, "+15557654321", json!({"batch_id": "canary-42"}), &[]),
            want(None, None, None),
        ));
        out.push((
            msg(id("uk", i), Channel::Sms, "+447700900123", json!({}), &[]),
            want(Some("uk-blocked"), Some(&[Reject]), Some("21408")),
        ));
        out.push((msg(id("uk-miss", i), Channel::Sms, "+4477009001234", json!({}), &[]), want(None, None, None)));
        out.push((
            msg(
                id("gold", i),
                Channel::Whatsapp,
                "+447700900123",
                json!({"customer": {"tier": "gold"}}),
                &[("X-Priority", "high")],
            ),
            want(Some("gold-always-read"), Some(&[Send, Delivery, Read]), None),
        ));
        out.push((
            msg(
                id("gold-no-header", i),
                Channel::Whatsapp,
                "+447700900123",
                json!({"customer": {"tier": "gold"}}),
                &[],
            ),
            want(None, None, None),
        ));
        out.push((
            msg(
                id("silver", i),
                Channel::Whatsapp,
                "+447700900123",
                json!({"customer": {"tier": "silver"}}),
                &[("x-priority", "high")],
            ),
            want(None, None, None),
        ));
    }
    for i in 0..3 {
        out.push((
            msg(id("probe", i), Channel::Email, "ann@example.com", json!({}), &[]),
            want(Some("probe-rejected"), Some(&[Reject]), Some("554 5.7.1")),
        ));
    }
    for i in 0..400 {
        out.push((
            msg(id("team-b", i), Channel::Email, "bob@example.com", json!({"tenant_id": "team-b"}), &[]),
            want(Some("team-b"), None, None),
        ));
    }
    for (k, m) in MAGIC.iter().enumerate() {
        let recipients: Vec<String> = match m.channel {
            Channel::Email => vec![
                format!("{}@{MAGIC_EMAIL_DOMAIN}", m.recipient),
                format!("{}+label-{k}@{}", m.recipient.to_uppercase(), MAGIC_EMAIL_DOMAIN.to_uppercase()),
            ],
            Channel::Whatsapp => vec![m.recipient.to_owned(), format!("whatsapp:{}", m.recipient)],
            Channel::Sms => vec![
                m.recipient.to_owned(),
                format!("{} {}-{}", &m.recipient[..2], &m.recipient[2..5], &m.recipient[5..]),
            ],
        };
        for (j, r) in recipients.iter().enumerate() {
            let mut w = want(Some(&m.rule_name()), Some(m.steps), m.error.map(|e| e.0));
            w.bounce = m.bounce_type;
            out.push((msg(id(&format!("magic{k}"), j), m.channel, r, json!({}), &[]), w));
        }
    }
    out
}

async fn rules_and_magic_recipients_shape_the_acks(k: Kafka) {
    let scenario = Arc::new(common::scenario("rules.yaml", 0.0002));
    let common::Running { settings, store, brokers, pipeline } = common::start(k, scenario.clone()).await;

    let run = common::suffix();
    let cases = messages(&run);
    // The plan the same scenario gives each message here; the service must produce exactly its acks.
    let input = InputSettings::default();
    let topic = &settings.kafka.input_topics[0];
    let local: HashMap<String, _> = cases
        .iter()
        .map(|(m, _)| {
            let headers: Vec<(String, String)> = m.headers.clone();
            let x = explain(&scenario, &input, topic, &m.body, &headers, chrono::Utc::now()).unwrap();
            (m.payload_id.clone(), x)
        })
        .collect();
    let expected: usize = local.values().map(|x| x.plan.steps.len()).sum();
    let batch: Vec<SampleMessage> = cases.iter().map(|(m, _)| m.clone()).collect();
    publish(&brokers, topic, &batch, None).await.unwrap();
    common::eventually(Duration::from_secs(120), "every planned event stored", || async {
        let t = store.totals().await.unwrap();
        (t.events as usize >= expected).then_some(())
    })
    .await;
    pipeline.shutdown().await;
    assert_eq!(store.unfinished_count().await.unwrap(), 0);

    let acks = read_topic(&brokers, &settings.kafka.ack_topic, expected, Duration::from_secs(10)).unwrap();
    assert_eq!(acks.len(), expected);
    let mut by_payload: HashMap<String, Vec<(i64, AckEvent)>> = HashMap::new();
    for r in &acks {
        let e: AckEvent = serde_json::from_slice(&r.payload).unwrap();
        by_payload.entry(e.payload_id.to_string()).or_default().push((r.offset, e));
    }
    // Stored plans name their rule.
    let Store::Postgres(pool) = &store else { unreachable!() };
    let stored: HashMap<String, serde_json::Value> =
        sqlx::query_as::<_, (String, String, Option<String>)>("SELECT payload_id, plan, rule FROM messages")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, plan, rule)| {
                let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
                assert_eq!(plan["rule"].as_str(), rule.as_deref(), "{id}: the rule column");
                (id, plan)
            })
            .collect();

    let mut team_b_bounces = 0;
    for (m, want) in &cases {
        let id = &m.payload_id;
        let mut events = by_payload.remove(id).unwrap_or_else(|| panic!("{id}: no acks"));
        events.sort_by_key(|(o, _)| *o);
        let got: Vec<Status> = events.iter().map(|(_, e)| e.status).collect();
        let plan = &local[id].plan;
        // Determinism: the service's acks are the locally planned lifecycle, event ids and codes included.
        let planned: Vec<(Status, u16, Option<&str>)> =
            plan.steps.iter().map(|s| (s.status, s.attempt, s.error_code.as_deref())).collect();
        let acked: Vec<(Status, u16, Option<&str>)> =
            events.iter().map(|(_, e)| (e.status, e.attempt, e.error_code.as_deref())).collect();
        assert_eq!(acked, planned, "{id}");
        for (_, e) in &events {
            assert_eq!(e.event_id, event_id(id, e.status, e.attempt));
        }
        // What the rule promises, checked without the scenario code.
        assert_eq!(plan.rule.as_deref(), want.rule.as_deref(), "{id}: rule");
        assert_eq!(stored[id]["rule"].as_str(), want.rule.as_deref(), "{id}: stored rule");
        if let Some(steps) = &want.steps {
            assert_eq!(&got, steps, "{id}");
        }
        if let Some(code) = &want.code {
            let failure = events.iter().find(|(_, e)| e.status.is_failure()).expect("a failure step");
            assert_eq!(failure.1.error_code.as_deref(), Some(code.as_str()), "{id}");
        }
        if let Some(b) = want.bounce {
            let bounce = events.iter().find(|(_, e)| e.status == Bounce).unwrap();
            assert_eq!(bounce.1.bounce_type, Some(b), "{id}");
        }
        if want.rule.as_deref() == Some("otp-fast") {
            // SEND is fixed at 50 ms, scaled by 0.0002: 10 µs after receipt.
            assert_eq!(plan.steps[0].due_us, 10, "{id}");
        }
        if want.rule.as_deref() == Some("team-b") {
            assert!(got == [Send, Delivery] || got == [Send, Bounce], "{id}: {got:?}");
            team_b_bounces += usize::from(got == [Send, Bounce]);
        }
    }
    assert!(by_payload.is_empty(), "acks of unknown payloads: {:?}", by_payload.keys().take(3).collect::<Vec<_>>());
    // Team B's sub-scenario weighs its two paths 1:1; 400 messages, 4 standard deviations = ±40.
    assert!((160..=240).contains(&team_b_bounces), "team B bounces: {team_b_bounces} of 400");
    store.close().await;
}

fn tenant_msg(id: String, channel: Channel, tenant: Option<&str>, by_header: bool) -> SampleMessage {
    let recipient = if channel == Channel::Email { "pat@example.com" } else { "+15557654321" };
    let mut body = json!({"payload_id": id, "batch_id": "b-t", "channel": channel.as_str(), "recipient": recipient});
    let mut headers = Vec::new();
    match (tenant, by_header) {
        (Some(t), true) => headers.push(("tenant-id".to_owned(), t.to_owned())),
        (Some(t), false) => body["tenant_id"] = json!(t),
        (None, _) => {}
    }
    SampleMessage { payload_id: id, channel, body: serde_json::to_vec(&body).unwrap(), headers }
}

/// Two deployments on one Kafka, each limited to its tenants (`input.tenants`) with its own group and
/// store: each payload is acked by the instance that serves its tenant, by that tenant's scenario file
/// (`scenario:` rules of `scenarios/tenants.yaml`), with the tenant on the ack; the others are skipped and
/// committed by each instance, not left behind.
async fn tenants_share_one_kafka_without_seeing_each_other(k: Kafka) {
    let (url_a, url_b) = (common::postgres_url().await, common::postgres_url().await);
    let mut a = common::settings(k, &url_a, 3);
    a.input.tenants = vec!["payments".into(), "marketing-*".into()];
    let mut b = a.clone();
    b.store.url = Some(url_b.clone());
    b.kafka.group_id = format!("{}-b", a.kafka.group_id);
    b.input.tenants = vec!["shop".into()];
    let scenario = Arc::new(common::scenario("tenants.yaml", 0.0002));
    let brokers = k.brokers();
    let (store_a, store_b) = (Store::connect(&url_a, 2).await.unwrap(), Store::connect(&url_b, 2).await.unwrap());
    let pa = Pipeline::start(&a, scenario.clone(), &brokers).await.unwrap();
    let pb = Pipeline::start(&b, scenario.clone(), &brokers).await.unwrap();

    let run = common::suffix();
    let id = |s: &str, i: usize| format!("{run}-{s}-{i}");
    let mut batch = Vec::new();
    for i in 0..300 {
        let channel = if i % 2 == 0 { Channel::Email } else { Channel::Sms };
        batch.push(tenant_msg(id("payments", i), channel, Some("payments"), i % 3 == 0));
        batch.push(tenant_msg(
            id("marketing", i),
            Channel::Email,
            Some(if i % 2 == 0 { "marketing-eu" } else { "marketing-us" }),
            i % 3 == 1,
        ));
    }
    for i in 0..100 {
        batch.push(tenant_msg(id("shop", i), Channel::Whatsapp, Some("shop"), i % 2 == 0));
    }
    for i in 0..50 {
        batch.push(tenant_msg(id("none", i), Channel::Sms, None, false));
    }
    let input = InputSettings::default();
    let topic = &a.kafka.input_topics[0];
    let plans: HashMap<String, _> = batch
        .iter()
        .filter(|m| !m.payload_id.contains("-none-"))
        .map(|m| {
            (m.payload_id.clone(), explain(&scenario, &input, topic, &m.body, &m.headers, chrono::Utc::now()).unwrap())
        })
        .collect();
    let served_by_a: usize = plans.iter().filter(|(k, _)| !k.contains("-shop-")).map(|(_, x)| x.plan.steps.len()).sum();
    let served_by_b: usize = plans.iter().filter(|(k, _)| k.contains("-shop-")).map(|(_, x)| x.plan.steps.len()).sum();
    publish(&brokers, topic, &batch, None).await.unwrap();
    for (store, n) in [(&store_a, served_by_a), (&store_b, served_by_b)] {
        common::eventually(Duration::from_secs(120), "every planned event stored", || async {
            (store.totals().await.unwrap().events as usize >= n).then_some(())
        })
        .await;
    }
    // Skipped messages are committed as they are read: each group's committed offsets reach the end.
    for (p, skipped) in [(&pa, 150), (&pb, 650)] {
        common::eventually(Duration::from_secs(30), "all input committed", || async {
            (p.uncommitted() == 0).then_some(())
        })
        .await;
        assert_eq!(p.consumer_stats.skipped_other_tenant.load(std::sync::atomic::Ordering::Relaxed), skipped);
    }
    pa.shutdown().await;
    pb.shutdown().await;
    for (group, want) in [(&a.kafka.group_id, batch.len() as i64), (&b.kafka.group_id, batch.len() as i64)] {
        assert_eq!(committed_total(&brokers, group, topic, 3), want, "group {group}");
    }
    assert_eq!(store_a.totals().await.unwrap().messages, 600);
    assert_eq!(store_b.totals().await.unwrap().messages, 100);

    let acks = read_topic(&brokers, &a.kafka.ack_topic, served_by_a + served_by_b, Duration::from_secs(10)).unwrap();
    assert_eq!(acks.len(), served_by_a + served_by_b);
    let mut by_payload: HashMap<String, Vec<AckEvent>> = HashMap::new();
    for r in &acks {
        let e: AckEvent = serde_json::from_slice(&r.payload).unwrap();
        by_payload.entry(e.payload_id.to_string()).or_default().push(e);
    }
    let mut marketing_paths: HashMap<Vec<Status>, usize> = HashMap::new();
    for (id, x) in &plans {
        let events = &by_payload[id];
        let statuses: Vec<Status> = events.iter().map(|e| e.status).collect();
        assert_eq!(statuses, x.plan.steps.iter().map(|s| s.status).collect::<Vec<_>>(), "{id}");
        let tenant = events[0].tenant_id.as_deref().unwrap();
        assert!(events.iter().all(|e| e.tenant_id.as_deref() == Some(tenant)), "{id}: tenant on every ack");
        let rule = x.plan.rule.as_deref();
        match tenant {
            "payments" => assert_eq!(rule.map(|r| r.split('/').next().unwrap()), Some("payments"), "{id}"),
            "marketing-eu" | "marketing-us" => {
                assert_eq!(rule, Some("marketing"), "{id}");
                *marketing_paths.entry(statuses).or_default() += 1;
            }
            "shop" => assert_eq!((rule, statuses.as_slice()), (None, &[Send, Delivery][..]), "{id}"),
            other => panic!("{id}: tenant {other}"),
        }
    }
    // marketing.yaml's paths by weight (20/50/28/2 of 300): clicks and opens both show up.
    assert!(marketing_paths.get(&vec![Send, Delivery, Open, Click]).copied().unwrap_or(0) > 30, "{marketing_paths:?}");
    assert!(marketing_paths.get(&vec![Send, Delivery, Open]).copied().unwrap_or(0) > 110, "{marketing_paths:?}");
    // Payments email bounces by payments.yaml (1 in 3); the default channels never bounce.
    let bounced = by_payload.values().filter(|evs| evs.iter().any(|e| e.status == Bounce)).count();
    assert!((25..=75).contains(&bounced), "payments bounces: {bounced} of 150");
    store_a.close().await;
    store_b.close().await;
}

/// Sum of the group's committed offsets over the topic's partitions.
fn committed_total(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    common::committed_offsets(brokers, group, topic, partitions).iter().sum()
}

/// Replace a file at once, the way a ConfigMap mount changes (write aside, then rename).
fn replace_file(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The scenario file is edited during a run: a valid new version plans the messages that come after it
/// (and is stored with them), lifecycles planned before keep their plan, and an invalid version is
/// rejected while the running one stays.
async fn scenario_file_edited_during_a_run(k: Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.yaml");
    let v1_text = "name: live\nseed: 5\nchannels:\n  email:\n    delays:\n      SEND: { dist: fixed, value: 10ms }\n      DELIVERY: { dist: fixed, value: 4s }\n    paths:\n      - { name: delivered, weight: 1, steps: [SEND, DELIVERY] }\n";
    let v2_text = "name: live\nseed: 5\nchannels:\n  email:\n    delays:\n      REJECT: { dist: fixed, value: 10ms }\n    paths:\n      - { name: rejected, weight: 1, steps: [REJECT] }\n";
    std::fs::write(&path, v1_text).unwrap();
    let url = common::postgres_url().await;
    let mut settings = common::settings(k, &url, 3);
    settings.scenario.reload_interval_ms = 100;
    let v1 = understudy::scenario::Scenario::load(&path).unwrap();
    let v1_version = v1.version().to_string();
    let store = Store::connect(&url, 2).await.unwrap();
    let brokers = k.brokers();
    let pipeline = Pipeline::start(&settings, Arc::new(v1), &brokers).await.unwrap();
    let topic = &settings.kafka.input_topics[0];
    let run = common::suffix();
    let batch = |name: &str| -> Vec<SampleMessage> {
        (0..100).map(|i| msg(format!("{run}-{name}-{i}"), Channel::Email, "ann@example.com", json!({}), &[])).collect()
    };
    let messages_stored = |n: i64| {
        let store = &store;
        async move {
            common::eventually(Duration::from_secs(60), "messages stored", || async {
                (store.totals().await.unwrap().messages >= n).then_some(())
            })
            .await
        }
    };

    publish(&brokers, topic, &batch("one"), None).await.unwrap();
    messages_stored(100).await;
    // Batch one's DELIVERY is 4 s away; the file changes now.
    replace_file(&path, v2_text);
    let v2_version = understudy::scenario::Scenario::load(&path).unwrap().version().to_string();
    assert_ne!(v1_version, v2_version);
    common::eventually(Duration::from_secs(10), "the new version runs", || async {
        (**pipeline.scenario().version() == *v2_version).then_some(())
    })
    .await;
    let reloaded_at = chrono::Utc::now();
    publish(&brokers, topic, &batch("two"), None).await.unwrap();
    messages_stored(200).await;
    // An invalid edit is rejected; version two stays.
    replace_file(&path, &v2_text.replace("weight: 1", "weight: -1"));
    common::eventually(Duration::from_secs(10), "the invalid version rejected", || async {
        (pipeline.reload_stats.rejected.load(std::sync::atomic::Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(**pipeline.scenario().version(), *v2_version);
    publish(&brokers, topic, &batch("three"), None).await.unwrap();
    common::eventually(Duration::from_secs(60), "every event stored", || async {
        (store.totals().await.unwrap().events >= 400).then_some(())
    })
    .await;
    pipeline.shutdown().await;
    assert_eq!(
        pipeline_reloads(&store).await,
        [
            ("one".to_owned(), v1_version.clone()),
            ("three".into(), v2_version.clone()),
            ("two".into(), v2_version.clone())
        ]
    );

    let acks = read_topic(&brokers, &settings.kafka.ack_topic, 400, Duration::from_secs(10)).unwrap();
    assert_eq!(acks.len(), 400);
    for r in &acks {
        let e: AckEvent = serde_json::from_slice(&r.payload).unwrap();
        let name = e.payload_id.split('-').nth(1).unwrap();
        match (name, e.status) {
            ("one", Send) => {}
            // Planned by version one before the reload, emitted after it.
            ("one", Delivery) => assert!(e.emitted_at > reloaded_at, "{}", e.payload_id),
            ("two" | "three", Reject) => {}
            other => panic!("{}: {other:?}", e.payload_id),
        }
    }
    store.close().await;
}

/// Each test batch's stored scenario versions: (batch name, version), one row per distinct pair.
async fn pipeline_reloads(store: &Store) -> Vec<(String, String)> {
    let Store::Postgres(pool) = store else { unreachable!() };
    sqlx::query_as("SELECT DISTINCT split_part(payload_id, '-', 2), scenario_version FROM messages ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

crate::on_both_brokers!(
    actix::test,
    rules_and_magic_recipients_shape_the_acks,
    tenants_share_one_kafka_without_seeing_each_other,
    scenario_file_edited_during_a_run
);
