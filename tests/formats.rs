//! Vendor ack formats on a real broker and store: the shipped examples in `scenarios/formats/`, one tenant
//! each, and the acks read back from the ack topic with the vendor's own field names.

mod common;

use common::Kafka;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use understudy::demo::{SampleMessage, publish, read_topic};
use understudy::model::{Channel, Status};
use understudy::scenario::Scenario;
use understudy::wire::headers::{ACK_HEADER, EVENT_ID_HEADER, EVENT_IDS_HEADER, STATUS_HEADER};
use understudy::wire::sendgrid::event_name as sendgrid_event_name;

fn msg(id: String, channel: Channel, tenant: &str, recipient: &str) -> SampleMessage {
    let body = json!({"payload_id": id, "batch_id": "b", "channel": channel.as_str(), "recipient": recipient, "tenant_id": tenant});
    SampleMessage { payload_id: id, channel, body: serde_json::to_vec(&body).unwrap(), headers: vec![] }
}

async fn vendor_formats_read_back_with_the_vendors_field_names(k: Kafka) {
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
    let common::Running { settings, store, brokers, pipeline } =
        common::start(k, Arc::new(Scenario::load(&path).unwrap())).await;

    let run = common::suffix();
    let mut batch = Vec::new();
    for i in 0..40 {
        let id = |t: &str| format!("{run}-{t}-{i}");
        batch.push(msg(id("twilio-sms"), Channel::Sms, "twilio", if i < 5 { "+15005550005" } else { "+15557654321" }));
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
    common::all_finished(&store, total, Duration::from_secs(120)).await;
    pipeline.shutdown().await;
    let events = store.totals().await.unwrap().events as usize;
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, usize::MAX, Duration::from_secs(5)).unwrap();

    // Kafka key → the acks' bodies, in order.
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::new();
    // SendGrid batches: payload id (a custom arg on every event) → its events, and the batch sizes.
    let mut sendgrid: HashMap<String, Vec<Value>> = HashMap::new();
    let mut batch_sizes = Vec::new();
    let mut ids = 0;
    for r in &acks {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let header = |name: &str| {
            r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let body: Value = serde_json::from_slice(&r.payload).expect("every format is JSON");
        if let Some(list) = header(EVENT_IDS_HEADER) {
            let events = body.as_array().unwrap();
            assert_eq!(list.split(',').count(), events.len(), "one id per event of the batch");
            // One `understudy-ack: STATUS payload-id` header per event, in the body's order.
            let named: Vec<(&str, &str)> = r
                .headers
                .iter()
                .filter(|(k, _)| k == ACK_HEADER)
                .map(|(_, v)| {
                    let (status, id) = std::str::from_utf8(v).unwrap().split_once(' ').unwrap();
                    (sendgrid_event_name(status.parse().unwrap()), id)
                })
                .collect();
            let bodies: Vec<(&str, &str)> =
                events.iter().map(|e| (e["event"].as_str().unwrap(), e["payload_id"].as_str().unwrap())).collect();
            assert_eq!(named, bodies, "understudy-ack headers of a SendGrid batch");
            ids += events.len();
            batch_sizes.push(events.len());
            for e in events {
                sendgrid.entry(e["payload_id"].as_str().unwrap().to_owned()).or_default().push(e.clone());
            }
            continue;
        }
        ids += usize::from(header(EVENT_ID_HEADER).is_some());
        // A vendor format names the status in a header (the key is the payload id); the native body has both.
        let native = key.contains("-native-");
        match header(STATUS_HEADER) {
            Some(status) => assert!(!native && status.parse::<Status>().is_ok(), "{key}: {status}"),
            None => assert!(native, "{key}: a vendor-format ack without its status header"),
        }
        by_key.entry(key).or_default().push(body);
    }
    assert_eq!(ids, events, "every ack carries its event id");
    assert!(batch_sizes.iter().any(|n| *n > 1), "SendGrid events come in batches: {batch_sizes:?}");
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
    assert_eq!(sendgrid.len(), 40);
    for (key, events) in &sendgrid {
        let mut names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
        names.sort_unstable();
        assert!(
            events.iter().all(|e| e["sg_event_id"].is_string() && e["email"].is_string() && e["timestamp"].is_i64())
        );
        if n(key) < 5 {
            assert_eq!(names, ["bounce", "processed"], "{key}");
            let bounce = events.iter().find(|e| e["event"] == "bounce").unwrap();
            assert_eq!((bounce["status"].as_str(), bounce["type"].as_str()), (Some("5.1.1"), Some("bounce")));
        } else {
            assert!(
                names.contains(&"processed") && (names.contains(&"delivered") || names.contains(&"bounce")),
                "{key}: {names:?}"
            );
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

crate::on_both_brokers!(actix::test, vendor_formats_read_back_with_the_vendors_field_names);
