//! Vendor ack formats on a real broker and store: the shipped examples in `scenarios/formats/`, one tenant
//! each, and the acks read back from the ack topic with the vendor's own field names.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use understudy::actors::emitter::EVENT_ID_HEADER;
use understudy::actors::pipeline::Pipeline;
use understudy::demo::{SampleMessage, publish, read_topic};
use understudy::model::Channel;
use understudy::scenario::Scenario;
use understudy::store::Store;

fn msg(id: String, channel: Channel, tenant: &str, recipient: &str) -> SampleMessage {
    let body = json!({"payload_id": id, "batch_id": "b", "channel": channel.as_str(), "recipient": recipient, "tenant_id": tenant});
    SampleMessage { payload_id: id, channel, body: serde_json::to_vec(&body).unwrap(), headers: vec![] }
}

#[actix::test]
async fn vendor_formats_read_back_with_the_vendors_field_names() {
    let formats = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/formats");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("formats.yaml");
    let mut text = String::from(
        "name: formats\nseed: 1\ntime_scale: 0.0002\nchannels:\n  sms:\n    delays: { SEND: { dist: fixed, value: 1s }, DELIVERY: { dist: fixed, value: 2s } }\n    paths: [{ name: delivered, weight: 1, steps: [SEND, DELIVERY] }]\n  email:\n    delays: { SEND: { dist: fixed, value: 1s }, DELIVERY: { dist: fixed, value: 2s } }\n    paths: [{ name: delivered, weight: 1, steps: [SEND, DELIVERY] }]\n  whatsapp:\n    delays: { SEND: { dist: fixed, value: 1s }, DELIVERY: { dist: fixed, value: 2s } }\n    paths: [{ name: delivered, weight: 1, steps: [SEND, DELIVERY] }]\nrules:\n",
    );
    for name in ["twilio", "sendgrid", "ses", "whatsapp-cloud", "template"] {
        text.push_str(&format!(
            "  - {{ name: {name}, match: {{ tenant: {name} }}, scenario: {} }}\n",
            formats.join(format!("{name}.yaml")).display()
        ));
    }
    std::fs::write(&path, text).unwrap();
    let scenario = Arc::new(Scenario::load(&path).unwrap());
    let url = common::postgres_url().await;
    let settings = common::settings(&url, 3);
    let store = Store::connect(&url, 2).await.unwrap();
    let brokers = common::brokers();
    let pipeline = Pipeline::start(&settings, scenario.clone(), &brokers).await.unwrap();

    let run = common::suffix();
    let mut batch = Vec::new();
    for i in 0..40 {
        let id = |t: &str| format!("{run}-{t}-{i}");
        batch.push(msg(id("twilio-sms"), Channel::Sms, "twilio", if i < 5 { "+15005550002" } else { "+15557654321" }));
        batch.push(msg(id("twilio-wa"), Channel::Whatsapp, "twilio", "+15005551000"));
        batch.push(msg(
            id("sendgrid"),
            Channel::Email,
            "sendgrid",
            if i < 5 { "bounce@understudy.test" } else { "ann@example.com" },
        ));
        batch.push(msg(
            id("ses"),
            Channel::Email,
            "ses",
            if i < 5 { "bounce@understudy.test" } else { "ann@example.com" },
        ));
        batch.push(msg(
            id("cloud"),
            Channel::Whatsapp,
            "whatsapp-cloud",
            if i < 5 { "+15005551002" } else { "+15557654321" },
        ));
        batch.push(msg(id("template"), Channel::Sms, "template", "+15557654321"));
        batch.push(msg(id("native"), Channel::Sms, "other", "+15557654321"));
    }
    let total = batch.len() as i64;
    publish(&brokers, &settings.kafka.input_topics[0], &batch, None).await.unwrap();
    common::eventually(Duration::from_secs(120), "every lifecycle finished", || async {
        let t = store.totals().await.unwrap();
        (t.messages == total && store.unfinished_count().await.unwrap() == 0).then_some(())
    })
    .await;
    pipeline.shutdown().await;
    let events = store.totals().await.unwrap().events as usize;
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, usize::MAX, Duration::from_secs(5)).unwrap();

    // Kafka key → the acks' bodies, in order.
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::new();
    let mut ids = 0;
    for r in &acks {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        ids += r.headers.iter().find(|(k, _)| k == EVENT_ID_HEADER).map_or(0, |_| 1);
        by_key.entry(key).or_default().push(serde_json::from_slice(&r.payload).expect("every format is JSON"));
    }
    assert_eq!(ids, events, "every ack carries its event id");
    let kind = |k: &'static str| by_key.iter().filter(move |(key, _)| key.contains(&format!("-{k}-")));

    let n = |key: &str| key.rsplit('-').next().unwrap().parse::<u32>().unwrap();
    for (key, acks) in kind("twilio-sms") {
        let got: Vec<&str> = acks.iter().map(|a| a["MessageStatus"].as_str().unwrap()).collect();
        if n(key) < 5 {
            assert_eq!(got, ["sent", "undelivered"], "{key}");
            assert_eq!(acks[1]["ErrorCode"], "30003");
        } else {
            assert!(got == ["sent", "delivered"] || got == ["sent", "undelivered"], "{key}: {got:?}");
        }
        assert!(
            acks.iter().all(|a| a["MessageSid"].as_str().unwrap().starts_with("SM") && a["SmsSid"] == a["MessageSid"])
        );
        assert_eq!(acks[1]["RawDlrDoneDate"].as_str().unwrap().len(), 10);
    }
    for (key, acks) in kind("twilio-wa") {
        let got: Vec<&str> = acks.iter().map(|a| a["MessageStatus"].as_str().unwrap()).collect();
        assert_eq!(got, ["sent", "delivered", "read"], "{key}: the magic number that reads");
        assert_eq!(acks[0]["To"], "whatsapp:+15005551000");
    }
    for (key, acks) in kind("sendgrid") {
        let events: Vec<&str> = acks.iter().map(|a| a[0]["event"].as_str().unwrap()).collect();
        assert!(acks.iter().all(|a| a.as_array().unwrap().len() == 1 && a[0]["sg_event_id"].is_string()));
        if n(key) < 5 {
            assert_eq!(events, ["processed", "bounce"], "{key}");
            assert_eq!((acks[1][0]["status"].as_str(), acks[1][0]["type"].as_str()), (Some("5.1.1"), Some("bounce")));
        } else {
            assert!(events[0] == "processed" && ["delivered", "bounce"].contains(&events[1]), "{key}: {events:?}");
        }
    }
    for (key, acks) in kind("ses") {
        let types: Vec<&str> = acks.iter().map(|a| a["eventType"].as_str().unwrap()).collect();
        assert!(acks.iter().all(|a| a["mail"]["messageId"].is_string() && a["mail"]["destination"][0].is_string()));
        if n(key) < 5 {
            assert_eq!(types, ["Send", "Bounce"], "{key}");
            assert_eq!(acks[1]["bounce"]["bounceType"], "Permanent");
            assert_eq!(acks[1]["bounce"]["bouncedRecipients"][0]["status"], "5.1.1");
        } else {
            assert!(types[0] == "Send" && ["Delivery", "Bounce"].contains(&types[1]), "{key}: {types:?}");
        }
    }
    for (key, acks) in kind("cloud") {
        let s = |a: &Value| a["entry"][0]["changes"][0]["value"]["statuses"][0].clone();
        let got: Vec<String> = acks.iter().map(|a| s(a)["status"].as_str().unwrap().to_owned()).collect();
        if n(key) < 5 {
            assert_eq!(got, ["sent", "failed"], "{key}");
            assert_eq!(s(&acks[1])["errors"][0]["code"], 131026);
        } else {
            assert!(got[0] == "sent" && ["delivered", "failed"].contains(&got[1].as_str()), "{key}: {got:?}");
        }
        assert!(s(&acks[0])["id"].as_str().unwrap().starts_with("wamid."));
    }
    for (key, acks) in kind("template") {
        let states: Vec<&str> = acks.iter().map(|a| a["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["SEND", "DELIVERY"], "{key}");
        assert_eq!(acks[0]["msgId"].as_str(), Some(key.as_str()));
        assert_eq!(acks[0]["to"], "+15557654321");
    }
    for (key, acks) in kind("native") {
        assert_eq!(acks[0]["payload_id"].as_str(), Some(key.as_str()), "other tenants keep the native event");
    }
    assert_eq!(kind("template").count() + kind("native").count(), 80);
    store.close().await;
}
