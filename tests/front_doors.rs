//! The vendors' HTTP front doors, driven by the vendors' own client libraries from PyPI with only their
//! base URL changed, on a real broker and a real store.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use serde_json::Value;
use understudy::actors::pipeline::Pipeline;
use understudy::config::TwilioAccount;
use understudy::demo::read_topic;
use understudy::model::{AckEvent, Status};
use understudy::store::Store;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "understudy-test-token";
/// Messages the script sends (and two more: WhatsApp, a messaging service).
const N: usize = 20;

async fn start(k: Kafka, store_url: &str, instance: &str) -> (Pipeline, String, understudy::config::Settings) {
    let mut settings = common::settings(k, store_url, 3);
    settings.http.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.http.instance = Some(instance.into());
    settings.http.twilio.accounts = vec![TwilioAccount { sid: ACCOUNT.into(), auth_token: TOKEN.into() }];
    let scenario = Arc::new(common::scenario("happy-path.yaml", 0.0001));
    let pipeline = Pipeline::start(&settings, scenario, &k.brokers()).await.expect("pipeline starts");
    let url = format!("http://{}", pipeline.http_addr().expect("the front doors listen"));
    (pipeline, url, settings)
}

/// Run the Twilio library's script against `url`; its JSON output.
async fn twilio_script(url: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/front_doors/twilio_send.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("UNDERSTUDY_URL", url)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .env("N", N.to_string())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Twilio client script failed (is PyPI `twilio` installed? `.ci/run` installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

async fn twilio_messages_are_created_answered_and_acked(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("twilio-{}", common::suffix());
    let (pipeline, url, settings) = start(k, &store_url, &instance).await;
    let out = twilio_script(&url).await;

    let created = out["created"].as_array().expect("created messages");
    assert_eq!(created.len(), N + 2);
    let sids: Vec<&str> = created.iter().map(|m| m["sid"].as_str().expect("a sid")).collect();
    assert_eq!(sids.iter().collect::<HashSet<_>>().len(), N + 2, "every message has its own SID");
    for (m, sid) in created.iter().zip(&sids) {
        assert!(understudy::wire::twilio::is_sid(sid, "SM"), "{m}");
        assert_eq!(m["account_sid"], ACCOUNT);
        assert_eq!(m["direction"], "outbound-api");
        assert_eq!(m["uri"], format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"));
        assert!(m["date_created"].is_string(), "the library parsed Twilio's date: {m}");
    }
    assert_eq!((created[0]["status"].as_str(), created[0]["num_segments"].as_str()), (Some("queued"), Some("1")));
    assert_eq!(created[N]["to"], "whatsapp:+15005559001");
    let service = &created[N + 1];
    assert_eq!((service["status"].as_str(), service["from"].is_null()), (Some("accepted"), true), "{service}");

    // Twilio's errors, as its library raises them.
    let errors = &out["errors"];
    let error = |case: &str| (errors[case]["code"].as_i64(), errors[case]["status"].as_i64());
    assert_eq!(error("bad_token"), (Some(20003), Some(401)), "{errors}");
    assert_eq!(error("no_body"), (Some(21602), Some(400)), "{errors}");
    assert_eq!(error("bad_to"), (Some(21211), Some(400)), "{errors}");
    assert_eq!(error("long_body"), (Some(21617), Some(400)), "{errors}");
    assert_eq!(error("too_large").1, Some(413), "{errors}");
    assert_eq!(error("other_account"), (Some(20003), Some(401)), "{errors}");
    // A scenario's REJECT (here Twilio's test numbers) is the send call's error, not an ack.
    assert_eq!(error("magic_invalid"), (Some(21211), Some(400)), "{errors}");
    assert_eq!(error("magic_cannot_route"), (Some(21612), Some(400)), "{errors}");
    assert_eq!(error("magic_unsubscribed"), (Some(21610), Some(400)), "{errors}");

    // Each answer came once the message was stored: a stored message for every 201 and every refusal of
    // the scenario's (the audit trail), none for a request Twilio itself would refuse.
    let stored = store.totals().await.expect("totals").messages;
    assert_eq!(stored, (N + 2 + 3) as i64);
    common::all_finished(&store, (N + 2 + 3) as i64, Duration::from_secs(60)).await;

    // The lifecycles' acks carry the SIDs the door answered with; the first is SEND.
    let events = store.totals().await.expect("totals").events as usize;
    let acks: Vec<AckEvent> = read_topic(&k.brokers(), &settings.kafka.ack_topic, events, Duration::from_secs(10))
        .expect("read the acks")
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a native ack"))
        .collect();
    let acked: HashSet<String> = acks
        .iter()
        .filter(|a| a.status == Status::Send)
        .map(|a| understudy::wire::twilio::message_sid(&a.vendor_message_id))
        .collect();
    assert_eq!(acked, sids.iter().map(|s| s.to_string()).collect::<HashSet<_>>());
    assert!(acks.iter().all(|a| a.status != Status::Reject), "a refused send has no ack");
    assert!(acks.iter().all(|a| a.tenant_id.as_deref() == Some(ACCOUNT)));
    pipeline.shutdown().await;

    // A rerun of the same test against a fresh store gets the same SIDs.
    let store_url = common::postgres_url().await;
    let (pipeline, url, _) = start(k, &store_url, &instance).await;
    let again = twilio_script(&url).await;
    let again: Vec<&str> = again["created"].as_array().unwrap().iter().map(|m| m["sid"].as_str().unwrap()).collect();
    assert_eq!(again, sids, "the same requests get the same SIDs on a rerun");
    pipeline.shutdown().await;
}

crate::on_both_brokers!(actix::test, twilio_messages_are_created_answered_and_acked);
