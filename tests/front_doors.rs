//! The vendors' HTTP front doors, driven by the vendors' own client libraries from PyPI with only their
//! base URL changed, on a real broker and a real store.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use serde_json::Value;
use understudy::actors::pipeline::Pipeline;
use understudy::config::{RateLimit, TwilioAccount};
use understudy::demo::read_topic;
use understudy::model::{AckEvent, Status};
use understudy::store::Store;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "understudy-test-token";
const PHONE_NUMBER_ID: &str = "106540352242922";
const SENDGRID_API_KEY: &str = "SG.understudy-test.key";

/// The test's SendGrid signing key (a fixed scalar).
fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar")
}
const APP_SECRET: &str = "understudy-app-secret";
const AWS_KEY_ID: &str = "AKIAUNDERSTUDYTEST01";
const AWS_SECRET: &str = "understudy/test/secret+access+key0123456";
const VERIFY_TOKEN: &str = "understudy-verify-token";

/// Messages the script sends (and two more: WhatsApp, a messaging service).
const N: usize = 20;

async fn start(k: Kafka, store_url: &str, instance: &str) -> (Pipeline, String, understudy::config::Settings) {
    start_with(k, store_url, instance, "happy-path.yaml", 0.0001, |_| {}).await
}

async fn start_with(
    k: Kafka,
    store_url: &str,
    instance: &str,
    scenario: &str,
    time_scale: f64,
    tune: impl FnOnce(&mut understudy::config::Settings),
) -> (Pipeline, String, understudy::config::Settings) {
    start_on(k, store_url, instance, common::scenario(scenario, time_scale), tune).await
}

/// The doors of `instance` on `scenario`, its settings tuned by `tune`.
async fn start_on(
    k: Kafka,
    store_url: &str,
    instance: &str,
    scenario: understudy::scenario::Scenario,
    tune: impl FnOnce(&mut understudy::config::Settings),
) -> (Pipeline, String, understudy::config::Settings) {
    let mut settings = common::settings(k, store_url, 3);
    tune(&mut settings);
    settings.http.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.http.instance = Some(instance.into());
    settings.http.twilio.accounts = vec![TwilioAccount { sid: ACCOUNT.into(), auth_token: TOKEN.into() }];
    let scenario = Arc::new(scenario);
    let pipeline = Pipeline::start(&settings, scenario, &k.brokers()).await.expect("pipeline starts");
    let url = format!("http://{}", pipeline.http_addr().expect("the front doors listen"));
    (pipeline, url, settings)
}

/// A webhook receiver checking signatures with the vendor's own validator, writing what it got to `out`.
struct Receiver {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &std::path::Path) -> Self {
        Self::start_failing(dir, 0)
    }

    /// A receiver that answers its first `fail_first` webhooks 500.
    fn start_failing(dir: &std::path::Path, fail_first: usize) -> Self {
        Self::start_with(dir, fail_first, 0)
    }

    /// A receiver on `port` (0: any free one).
    fn start_with(dir: &std::path::Path, fail_first: usize, port: u16) -> Self {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/front_doors/webhook_receiver.py");
        let out = dir.join("callbacks.jsonl");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .env("OUT", &out)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("META_APP_SECRET", APP_SECRET)
            .env("META_VERIFY_TOKEN", VERIFY_TOKEN)
            .env("FAIL_FIRST", fail_first.to_string())
            .env("PORT", port.to_string())
            .env("SENDGRID_VERIFICATION_KEY", understudy::wire::sendgrid::verification_key(&sendgrid_key()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the receiver's port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the receiver did not start: {line:?}"));
        Self { child, port, out }
    }

    /// Every callback received so far.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new store: a Postgres database, or a SQLite file (with the directory that holds it).
async fn fresh_store(sqlite: bool) -> (String, Option<tempfile::TempDir>) {
    if sqlite {
        let (url, dir) = common::sqlite_url();
        (url, Some(dir))
    } else {
        (common::postgres_url().await, None)
    }
}

/// The stored webhook attempts, once there are `n` (the attempt log writes them in batches, off the
/// delivery path).
async fn stored_attempts(store: &Store, n: usize) -> Vec<understudy::store::StoredAttempt> {
    let attempts = common::eventually(Duration::from_secs(30), "the webhook attempts stored", || async {
        let a = store.attempts().await.expect("attempts");
        (a.len() >= n).then_some(a)
    })
    .await;
    assert_eq!(attempts.len(), n, "{attempts:?}");
    attempts
}

/// Run the Twilio library's script against `url`; its JSON output.
async fn twilio_script(url: &str, callback: Option<&str>) -> Value {
    twilio_script_with(url, callback, false).await
}

async fn twilio_script_with(url: &str, callback: Option<&str>, bulk_only: bool) -> Value {
    let n = N.to_string();
    let envs = [
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("N", n.as_str()),
        ("CALLBACK_URL", callback.unwrap_or("")),
        ("BULK_ONLY", if bulk_only { "1" } else { "" }),
    ];
    client_script("twilio_send.py", url, &envs).await
}

/// Run a vendor client script of `tests/front_doors/` against the doors at `url`; its JSON output.
async fn client_script(name: &str, url: &str, envs: &[(&str, &str)]) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/front_doors").join(name);
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("UNDERSTUDY_URL", url)
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{name} failed (are the vendors' PyPI libraries installed? `.ci/run` installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

async fn twilio_messages_are_created_answered_and_acked(k: Kafka, sqlite: bool) {
    let (store_url, _db) = fresh_store(sqlite).await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("twilio-{}", common::suffix());
    let (pipeline, url, settings) = start(k, &store_url, &instance).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let callback = format!("http://127.0.0.1:{}/twilio/status?run=1", receiver.port);
    let out = twilio_script(&url, Some(&callback)).await;

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
    assert_eq!(error("bad_callback"), (Some(21609), Some(400)), "{errors}");
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

    // And every ack was called back to the message's StatusCallback, form-encoded, signed as Twilio
    // signs (its own RequestValidator says so), in the lifecycle's order: sent, delivered (and read on
    // WhatsApp); never the first status (`queued`), which was the send call's answer.
    let callbacks = common::eventually(Duration::from_secs(30), "every status callback", || async {
        let got = receiver.received();
        (got.len() >= acks.len()).then_some(got)
    })
    .await;
    assert_eq!(callbacks.len(), acks.len(), "one callback per ack");
    for c in &callbacks {
        assert_eq!(c["valid"], true, "a signature Twilio's validator accepts: {c}");
        assert_eq!(c["content_type"], "application/x-www-form-urlencoded");
        assert_eq!(c["path"], "/twilio/status?run=1");
        assert_eq!(c["params"]["AccountSid"], ACCOUNT);
    }
    for sid in &sids {
        let statuses: Vec<&str> = callbacks
            .iter()
            .filter(|c| c["params"]["MessageSid"] == *sid)
            .map(|c| c["params"]["MessageStatus"].as_str().unwrap())
            .collect();
        let whatsapp = callbacks
            .iter()
            .any(|c| c["params"]["MessageSid"] == *sid && c["params"]["To"].as_str().unwrap().starts_with("whatsapp:"));
        let expected: &[&str] = if whatsapp { &["sent", "delivered", "read"] } else { &["sent", "delivered"] };
        assert_eq!(statuses, expected, "{sid}");
    }
    // Stored once each, whether it went to Kafka, to the webhook, or both.
    assert_eq!(store.totals().await.unwrap().events as usize, acks.len());

    // Twilio's library fetches each message as its lifecycle stands: finished here, so delivered (read
    // on WhatsApp), with the time it was sent; a SID nobody was given is Twilio's 20404.
    let list = sids.join(",");
    let fetched = client_script(
        "twilio_fetch.py",
        &url,
        &[("TWILIO_ACCOUNT_SID", ACCOUNT), ("TWILIO_AUTH_TOKEN", TOKEN), ("SIDS", &list)],
    )
    .await;
    for (m, sid) in created.iter().zip(&sids) {
        let f = &fetched["fetched"][*sid];
        let expected = if m["to"].as_str().unwrap().starts_with("whatsapp:") { "read" } else { "delivered" };
        assert_eq!((f["sid"].as_str(), f["status"].as_str()), (Some(*sid), Some(expected)), "{f}");
        assert_eq!((&f["to"], &f["body"], &f["date_created"]), (&m["to"], &m["body"], &m["date_created"]), "{f}");
        assert!(f["date_sent"].is_string() && f["error_code"].is_null(), "{f}");
    }
    let errors = &fetched["errors"];
    let error = |case: &str| (errors[case]["code"].as_i64(), errors[case]["status"].as_i64());
    assert_eq!(error("unknown_sid"), (Some(20404), Some(404)), "{errors}");
    assert_eq!(error("not_a_sid"), (Some(20404), Some(404)), "{errors}");
    assert_eq!(error("bad_token"), (Some(20003), Some(401)), "{errors}");
    pipeline.shutdown().await;

    // A rerun of the same test against a fresh store gets the same SIDs.
    let (store_url, _db2) = fresh_store(sqlite).await;
    let (pipeline, url, _) = start(k, &store_url, &instance).await;
    let again = twilio_script(&url, None).await;
    let again: Vec<&str> = again["created"].as_array().unwrap().iter().map(|m| m["sid"].as_str().unwrap()).collect();
    assert_eq!(again, sids, "the same requests get the same SIDs on a rerun");
    pipeline.shutdown().await;
}

async fn twilio_messages_are_created_answered_and_acked_on_postgres(k: Kafka) {
    twilio_messages_are_created_answered_and_acked(k, false).await
}

async fn twilio_messages_are_created_answered_and_acked_on_sqlite(k: Kafka) {
    twilio_messages_are_created_answered_and_acked(k, true).await
}

/// Lifecycles of messages a door took resume after a restart under the same instance name, and call
/// back where they were asked to: each status once, in order.
async fn twilio_lifecycles_resume_after_a_restart(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("resume-{}", common::suffix());
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let callback = format!("http://127.0.0.1:{}/status", receiver.port);
    // SEND after ~40 ms, DELIVERY after ~400 ms (p99 4 s); no grace at shutdown, so most DELIVERY steps
    // are left to the restarted instance.
    let no_grace = |s: &mut understudy::config::Settings| s.service.shutdown_grace_ms = 0;
    let (pipeline, url, settings) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.2, no_grace).await;
    let created = twilio_script_with(&url, Some(&callback), true).await;
    let sids: Vec<String> =
        created["created"].as_array().unwrap().iter().map(|m| m["sid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sids.len(), N);
    common::eventually(Duration::from_secs(20), "every SEND called back", || async {
        let sent = receiver.received().iter().filter(|c| c["params"]["MessageStatus"] == "sent").count();
        (sent >= N).then_some(())
    })
    .await;
    pipeline.shutdown().await;
    let unfinished = store.unfinished_count().await.unwrap();
    assert!(unfinished > 0, "the test needs lifecycles left for the restart");

    let (pipeline, _, _) =
        start_with(k, &store_url, &instance, "happy-path.yaml", 0.2, |s| *s = settings.clone()).await;
    common::all_finished(&store, N as i64, Duration::from_secs(60)).await;
    let resumed = pipeline.channel_stats.resumed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(resumed, unfinished as u64, "every unfinished lifecycle resumed");
    let callbacks = common::eventually(Duration::from_secs(20), "every DELIVERY called back", || async {
        let got = receiver.received();
        (got.len() >= 2 * N).then_some(got)
    })
    .await;
    for sid in &sids {
        let statuses: Vec<&str> = callbacks
            .iter()
            .filter(|c| c["params"]["MessageSid"] == sid.as_str())
            .map(|c| c["params"]["MessageStatus"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["sent", "delivered"], "{sid}");
    }
    assert!(callbacks.iter().all(|c| c["valid"] == true));
    // Every callback has one delivered attempt stored, before the restart or after it: none was posted
    // again once delivered.
    let attempts = stored_attempts(&store, 2 * N).await;
    let delivered: Vec<_> = attempts.iter().filter(|a| a.outcome == "delivered").map(|a| &a.event_id).collect();
    assert_eq!(delivered.iter().collect::<HashSet<_>>().len(), 2 * N, "{attempts:?}");
    assert_eq!(delivered.len(), 2 * N, "one delivered attempt per callback: {attempts:?}");
    // The same requests again, to the restarted instance and its store: new messages, new SIDs (the
    // counters go on from what is stored), never an id given twice.
    let url = format!("http://{}", pipeline.http_addr().unwrap());
    let again = twilio_script_with(&url, None, true).await;
    let again: HashSet<String> =
        again["created"].as_array().unwrap().iter().map(|m| m["sid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(again.len(), N);
    assert!(again.iter().all(|s| !sids.contains(s)), "a SID given twice after the restart");
    common::all_finished(&store, 2 * N as i64, Duration::from_secs(60)).await;
    pipeline.shutdown().await;
}

/// The WhatsApp Cloud API door, driven with Meta's own payloads; statuses as signed webhooks after the
/// verification handshake.
async fn whatsapp_messages_are_sent_answered_and_acked(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let dir = tempfile::tempdir().unwrap();
    // The receiver fails its first five webhooks: Meta retries them, and nothing is lost or reordered.
    let receiver = Receiver::start_failing(dir.path(), 5);
    let webhook = format!("http://127.0.0.1:{}/meta", receiver.port);
    let tune = |s: &mut understudy::config::Settings| {
        s.http.whatsapp.access_tokens = vec![TOKEN.into()];
        s.http.whatsapp.app_secret = APP_SECRET.into();
        s.http.whatsapp.verify_token = VERIFY_TOKEN.into();
        s.http.whatsapp.webhook_url = Some(webhook.clone());
    };
    let instance = format!("wa-{}", common::suffix());
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, tune).await;
    let n = N.to_string();
    let envs = [("PHONE_NUMBER_ID", PHONE_NUMBER_ID), ("ACCESS_TOKEN", TOKEN), ("N", n.as_str())];
    let out = client_script("whatsapp_send.py", &url, &envs).await;

    let sent = out["sent"].as_array().unwrap();
    assert_eq!(sent.len(), N + 1);
    let mut ids = Vec::new();
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s[0], 200, "{s}");
        let body = &s[1];
        assert_eq!(body["messaging_product"], "whatsapp");
        let id = body["messages"][0]["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("wamid."), "{body}");
        if i < N {
            assert_eq!(body["contacts"][0]["wa_id"], format!("1555010{i:04}"));
        } else {
            assert_eq!(body["messages"][0]["message_status"], "accepted", "a template is accepted");
        }
        ids.push(id);
    }
    let errors = &out["errors"];
    let error = |case: &str| (errors[case]["status"].as_i64(), errors[case]["error"]["code"].as_i64());
    assert_eq!(error("bad_token"), (Some(401), Some(190)), "{errors}");
    assert_eq!(errors["bad_token"]["error"]["type"], "OAuthException");
    assert!(errors["bad_token"]["error"]["fbtrace_id"].is_string());
    assert_eq!(error("no_to"), (Some(400), Some(100)), "{errors}");
    assert_eq!(error("not_json"), (Some(400), Some(100)), "{errors}");
    assert_eq!(error("no_product"), (Some(400), Some(100)), "{errors}");
    assert_eq!(error("too_large").0, Some(413), "{errors}");
    assert_eq!(error("bad_version"), (Some(400), Some(2500)), "{errors}");
    assert_eq!(error("rate_limited"), (Some(400), Some(130429)), "{errors}");
    assert_eq!(error("recipient_is_sender"), (Some(400), Some(131021)), "{errors}");
    common::all_finished(&store, (N + 1 + 2) as i64, Duration::from_secs(60)).await;

    // One handshake, then every status signed, in order: sent, delivered, read; pricing on each, and the
    // sender's biz_opaque_callback_data echoed.
    let got = common::eventually(Duration::from_secs(30), "every status webhook", || async {
        let got = receiver.received();
        let delivered = got.iter().filter(|c| c["handshake"].is_null() && c["failed"].is_null()).count();
        (delivered >= 3 * (N + 1)).then_some(got)
    })
    .await;
    let handshakes: Vec<&Value> = got.iter().filter(|c| c["handshake"] == true).collect();
    assert_eq!(handshakes.len(), 1, "one verification handshake");
    assert_eq!(handshakes[0]["valid"], true);
    assert_eq!(got.iter().filter(|c| c["failed"] == true).count(), 5, "five answered 500, then retried");
    // Every attempt stored: the five refused with their 500 and the retry each scheduled, and one
    // delivered attempt per status.
    let attempts = stored_attempts(&store, 3 * (N + 1) + 5).await;
    let refused: Vec<_> = attempts.iter().filter(|a| a.outcome == "refused").collect();
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(refused.iter().all(|a| a.http_status == Some(500) && a.next_attempt_at_us.is_some()), "{refused:?}");
    // A status refused k times has attempts 1..=k refused, then k + 1 delivered.
    for r in &refused {
        let mine: Vec<_> = attempts.iter().filter(|a| a.event_id == r.event_id).collect();
        let numbers: Vec<i32> = mine.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (1..=mine.len() as i32).collect::<Vec<_>>(), "{mine:?}");
        assert_eq!(mine.last().unwrap().outcome, "delivered", "{mine:?}");
    }
    let mut delivered = HashSet::new();
    for a in attempts.iter().filter(|a| a.outcome == "delivered") {
        assert!(delivered.insert(a.event_id.clone()), "delivered twice: {a:?}");
        assert!(a.next_attempt_at_us.is_none());
    }
    assert_eq!(delivered.len(), 3 * (N + 1));
    let webhooks: Vec<&Value> = got.iter().filter(|c| c["handshake"].is_null() && c["failed"].is_null()).collect();
    assert_eq!(webhooks.len(), 3 * (N + 1), "each status delivered once");
    for w in &webhooks {
        assert_eq!(w["valid"], true, "X-Hub-Signature-256 checks out: {w}");
        assert_eq!(w["json"]["object"], "whatsapp_business_account");
        let value = &w["json"]["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"]["phone_number_id"], PHONE_NUMBER_ID);
        assert_eq!(value["statuses"][0]["pricing"]["billable"], true);
    }
    let status = |w: &Value| w["json"]["entry"][0]["changes"][0]["value"]["statuses"][0].clone();
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<Value> = webhooks.iter().map(|w| status(w)).filter(|s| s["id"] == id.as_str()).collect();
        let statuses: Vec<&str> = mine.iter().map(|s| s["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["sent", "delivered", "read"], "{id}");
        if i < N {
            assert!(mine.iter().all(|s| s["biz_opaque_callback_data"] == format!("run-7/{i}")), "{mine:?}");
        }
    }
    pipeline.shutdown().await;
}

/// SendGrid's Mail Send door, driven by SendGrid's own library: one lifecycle per recipient, 202 with
/// X-Message-Id; events in signed batches that SendGrid's own EventWebhook verifies, custom args echoed.
async fn sendgrid_mail_is_accepted_and_its_events_are_signed(k: Kafka) {
    use p256::pkcs8::EncodePrivateKey as _;
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let webhook = format!("http://127.0.0.1:{}/sendgrid/events", receiver.port);
    let pem = sendgrid_key().to_pkcs8_pem(Default::default()).unwrap().to_string();
    let tune = |s: &mut understudy::config::Settings| {
        s.http.sendgrid.api_keys = vec![SENDGRID_API_KEY.into()];
        s.http.sendgrid.webhook_url = Some(webhook.clone());
        s.http.sendgrid.signing_key_pem = Some(pem.clone());
    };
    let instance = format!("sg-{}", common::suffix());
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, tune).await;
    let out = client_script("sendgrid_send.py", &url, &[("SENDGRID_API_KEY", SENDGRID_API_KEY), ("N", "10")]).await;
    let sent = out["sent"].as_array().unwrap();
    assert_eq!(sent.len(), 10);
    let mut message_ids = HashSet::new();
    for s in sent {
        assert_eq!((s["status"].as_i64(), s["body"].as_str()), (Some(202), Some("")), "{s}");
        message_ids.insert(s["message_id"].as_str().expect("X-Message-Id").to_owned());
    }
    assert_eq!(message_ids.len(), 10, "an X-Message-Id per request");
    assert_eq!(out["magic"]["status"], 202);
    message_ids.insert(out["magic"]["message_id"].as_str().unwrap().to_owned());
    let errors = &out["errors"];
    assert_eq!(errors["bad_key"]["status"], 401, "{errors}");
    assert!(errors["bad_key"]["body"]["errors"][0]["message"].as_str().unwrap().contains("authorization grant"));
    assert_eq!(errors["no_personalizations"]["status"], 400);
    assert_eq!(errors["no_personalizations"]["body"]["errors"][0]["field"], "personalizations");
    assert_eq!(errors["bad_address"]["body"]["errors"][0]["field"], "personalizations.0.to.0.email");
    assert_eq!(errors["no_content"]["body"]["errors"][0]["field"], "content");
    assert_eq!(errors["too_large"]["status"], 413);
    // Two recipients (to and cc) per request, and the three magic ones: a lifecycle each.
    common::all_finished(&store, 23, Duration::from_secs(60)).await;

    // happy-path email: SEND, DELIVERY, OPEN → processed, delivered, open; batched, signed.
    let got = common::eventually(Duration::from_secs(30), "every event", || async {
        let got = receiver.received();
        let events: usize = got.iter().map(|b| b["json"].as_array().map_or(0, Vec::len)).sum();
        (events >= 60).then_some(got)
    })
    .await;
    for batch in &got {
        assert_eq!(batch["valid"], true, "SendGrid's EventWebhook accepts the signature");
        assert_eq!(batch["content_type"], "application/json");
    }
    let events: Vec<&Value> = got.iter().flat_map(|b| b["json"].as_array().unwrap()).collect();
    // 20 × processed, delivered, open; click@: those and a click; bounce@: processed, bounce;
    // suppressed@: dropped.
    assert_eq!(events.len(), 60 + 4 + 2 + 1);
    let mut by_recipient: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for e in &events {
        let sg = e["sg_message_id"].as_str().unwrap();
        assert!(
            message_ids.contains(sg.split('.').next().unwrap()),
            "sg_message_id starts with the X-Message-Id: {sg}"
        );
        assert_eq!(e["campaign"], "winter", "custom args echoed: {e}");
        by_recipient.entry(e["email"].as_str().unwrap().to_owned()).or_default().push(e["event"].as_str().unwrap());
    }
    assert_eq!(by_recipient.len(), 23);
    for (who, kinds) in &by_recipient {
        let expected: &[&str] = match who.as_str() {
            "click@understudy.test" => &["processed", "delivered", "open", "click"],
            "bounce@understudy.test" => &["processed", "bounce"],
            "suppressed@understudy.test" => &["dropped"],
            _ => &["processed", "delivered", "open"],
        };
        assert_eq!(kinds, expected, "{who}");
    }
    // As SendGrid writes them: a click's link from the mail, with where it came from; a bounce's
    // classification; a drop's reason from SendGrid's list and its 5.0.0.
    let of = |who: &str, kind: &str| *events.iter().find(|e| e["email"] == who && e["event"] == kind).unwrap();
    let click = of("click@understudy.test", "click");
    assert_eq!(click["url"], "https://shop.example/winter?utm=1", "{click}");
    assert!(click["useragent"].is_string() && click["ip"].as_str().unwrap().starts_with("203.0.113."), "{click}");
    let bounce = of("bounce@understudy.test", "bounce");
    assert_eq!(
        (bounce["status"].as_str(), bounce["bounce_classification"].as_str()),
        (Some("5.1.1"), Some("Invalid Address"))
    );
    let dropped = of("suppressed@understudy.test", "dropped");
    assert_eq!((dropped["reason"].as_str(), dropped["status"].as_str()), (Some("Bounced Address"), Some("5.0.0")));
    pipeline.shutdown().await;
}

/// The SES door, driven by boto3's `sesv2` client: SigV4 checked (a wrong secret and an unknown key get
/// SES's 403s), one lifecycle per recipient, `200 {MessageId}`; events through SNS, after a
/// SubscriptionConfirmation the receiver confirms, each signed and checked by `aws-sns-message-validator`
/// against the certificate the door serves; the send time, EmailTags and configuration set in every event;
/// one `Send` per message; a suppressed address a permanent `OnAccountSuppressionList` bounce.
async fn ses_mail_is_sent_and_its_events_come_signed_through_sns(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let webhook = format!("http://127.0.0.1:{}/ses/events", receiver.port);
    let tune = |s: &mut understudy::config::Settings| {
        s.http.ses.credentials = vec![understudy::config::AwsCredential {
            access_key_id: AWS_KEY_ID.into(),
            secret_access_key: AWS_SECRET.into(),
        }];
        s.http.ses.webhook_url = Some(webhook.clone());
    };
    let instance = format!("ses-{}", common::suffix());
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, tune).await;
    let out =
        client_script("ses_send.py", &url, &[("AWS_KEY_ID", AWS_KEY_ID), ("AWS_SECRET", AWS_SECRET), ("N", "10")])
            .await;
    let sent = out["sent"].as_array().unwrap();
    let message_ids: HashSet<&str> = sent.iter().map(|s| s["message_id"].as_str().unwrap()).collect();
    assert!(sent.iter().all(|s| s["status"] == 200), "{out}");
    assert_eq!(message_ids.len(), 10, "a MessageId per message");
    let errors = &out["errors"];
    let case = |name: &str| (errors[name]["status"].as_i64().unwrap_or(0), errors[name]["code"].as_str().unwrap_or(""));
    assert_eq!(case("bad_secret"), (403, "InvalidSignatureException"), "{errors}");
    assert_eq!(case("unknown_key"), (403, "UnrecognizedClientException"));
    assert_eq!(case("bad_address"), (400, "BadRequestException"));
    assert_eq!(case("too_many"), (400, "BadRequestException"));
    assert_eq!(errors["too_many"]["message"], "Recipient count exceeds 50.");
    assert_eq!(case("bad_tag"), (400, "BadRequestException"));
    assert_eq!(case("too_large"), (413, "MessageRejected"));
    // 10 messages to two recipients, the suppressed address and the raw message: a lifecycle each.
    common::all_finished(&store, 22, Duration::from_secs(60)).await;
    assert_eq!(store.totals().await.unwrap().events, 20 * 3 + 3 + 1, "SEND, DELIVERY, OPEN each; the suppression");

    // One Send per message; a Delivery and an Open per recipient; the raw message's three; the bounce.
    let got = common::eventually(Duration::from_secs(30), "every notification", || async {
        let got = receiver.received();
        (got.iter().filter(|r| r["sns"] == "Notification").count() >= 54).then_some(got)
    })
    .await;
    assert_eq!(got[0]["sns"], "SubscriptionConfirmation", "the subscription is confirmed before any notification");
    assert_eq!((got[0]["valid"].as_bool(), got[0]["confirmed"].as_i64()), (Some(true), Some(200)), "{}", got[0]);
    let notes: Vec<&Value> = got.iter().filter(|r| r["sns"] == "Notification").collect();
    assert_eq!(notes.len(), 54);
    assert_eq!(got.iter().filter(|r| r["sns"] == "SubscriptionConfirmation").count(), 1);
    for n in &notes {
        assert_eq!(n["valid"], true, "SNSMessageValidator accepts the signature: {n}");
        assert_eq!(n["content_type"], "text/plain; charset=UTF-8");
        assert_eq!(n["envelope"]["TopicArn"], "arn:aws:sns:us-east-1:123456789012:understudy-ses-events");
    }
    let mut by_message: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for n in &notes {
        by_message.entry(n["json"]["mail"]["messageId"].as_str().unwrap().to_owned()).or_default().push(&n["json"]);
    }
    for id in &message_ids {
        let events = &by_message[*id];
        let kinds: Vec<&str> = events.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "Send").count(), 1, "{id}: {kinds:?}");
        assert_eq!(kinds.len(), 5, "{id}: {kinds:?}");
        let sent_at = &events[0]["mail"]["timestamp"];
        for e in events {
            let mail = &e["mail"];
            assert_eq!(&mail["timestamp"], sent_at, "the send time on every event");
            assert_eq!(mail["tags"]["campaign"][0], "winter");
            assert_eq!(mail["tags"]["ses:configuration-set"][0], "events");
            assert_eq!(mail["tags"]["ses:caller-identity"][0], AWS_KEY_ID);
            assert_eq!(mail["destination"].as_array().unwrap().len(), 2);
            assert_eq!(mail["source"], "news@shop.example");
            assert!(mail["commonHeaders"]["subject"].as_str().unwrap().starts_with("issue "));
        }
    }
    let suppressed = &by_message[out["suppressed"].as_str().unwrap()];
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["eventType"], "Bounce");
    assert_eq!(
        (suppressed[0]["bounce"]["bounceType"].as_str(), suppressed[0]["bounce"]["bounceSubType"].as_str()),
        (Some("Permanent"), Some("OnAccountSuppressionList"))
    );
    let raw = &by_message[out["raw"].as_str().unwrap()];
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[0]["mail"]["destination"][0], "raw@example.com");
    pipeline.shutdown().await;
}

/// A callback URL nobody listens on: Twilio tries each callback twice (one retry after a connection
/// failure) and gives up; the lifecycles finish, every ack is stored and still on the ack topic, and the
/// door goes on answering.
async fn twilio_callbacks_to_a_dead_receiver_stop_nothing(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("dead-{}", common::suffix());
    let (pipeline, url, settings) = start(k, &store_url, &instance).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = twilio_script_with(&url, Some(&format!("http://127.0.0.1:{dead}/status")), true).await;
    assert_eq!(out["created"].as_array().unwrap().len(), N);
    common::all_finished(&store, N as i64, Duration::from_secs(60)).await;
    let events = store.totals().await.unwrap().events as usize;
    assert_eq!(events, 2 * N, "SEND and DELIVERY of every message, stored though their callbacks failed");
    let acks = read_topic(&k.brokers(), &settings.kafka.ack_topic, events, Duration::from_secs(10)).unwrap();
    assert_eq!(acks.len(), events);
    // Both attempts of every callback are stored: the first with the retry it scheduled, the last
    // without (Twilio gave up), each with the connection error.
    let attempts = stored_attempts(&store, 2 * events).await;
    for pair in attempts.chunks(2) {
        assert_eq!(pair[0].event_id, pair[1].event_id, "{pair:?}");
        assert_eq!((pair[0].attempt, pair[1].attempt), (1, 2), "{pair:?}");
        assert!(
            pair.iter().all(|a| a.outcome == "unreachable" && a.vendor == "twilio" && a.error.is_some()),
            "{pair:?}"
        );
        assert!(
            pair[0].next_attempt_at_us.is_some_and(|t| t > pair[0].attempted_at_us)
                && pair[1].next_attempt_at_us.is_none()
        );
    }
    // Still serving.
    let again = twilio_script_with(&url, None, true).await;
    assert_eq!(again["created"].as_array().unwrap().len(), N);
    pipeline.shutdown().await;
}

/// `http.rate_limits`: beyond a tenant's limit each door answers the vendor's 429 (Twilio's 20429,
/// SendGrid's with its `X-RateLimit-*` headers, SES's TooManyRequestsException counting recipients,
/// Meta's 130429), as the vendors' own clients read them, and takes nothing.
async fn each_door_answers_429_beyond_its_rate_limit(k: Kafka) {
    use understudy::wire::Vendor;
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("limits-{}", common::suffix());
    // Refilling a token every 1,000 s: only the bursts get through.
    let limit = |vendor, tenant: Option<&str>, burst| RateLimit {
        vendor,
        tenant: tenant.map(str::to_owned),
        per_second: 0.001,
        burst: Some(burst),
    };
    let limits = |s: &mut understudy::config::Settings| {
        s.http.rate_limits = vec![
            limit(Vendor::Twilio, Some(ACCOUNT), 3.0),
            limit(Vendor::Sendgrid, None, 2.0),
            // Three recipients a call: two calls fit in seven.
            limit(Vendor::Ses, Some("limited.example"), 7.0),
            limit(Vendor::Whatsapp, None, 1.0),
        ]
    };
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, limits).await;
    let envs = [
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("SENDGRID_API_KEY", SENDGRID_API_KEY),
        ("PHONE_NUMBER_ID", PHONE_NUMBER_ID),
        ("ACCESS_TOKEN", TOKEN),
        ("CALLS", "5"),
    ];
    let out = client_script("rate_limits.py", &url, &envs).await;
    let field = |door: &str, f: &str| -> Vec<Value> {
        out[door].as_array().expect("calls").iter().map(|c| c[f].clone()).collect()
    };
    let ints = |v: &[i64]| v.iter().map(|i| Value::from(*i)).collect::<Vec<_>>();
    let null = Value::Null;
    assert_eq!(field("twilio", "status"), ints(&[201, 201, 201, 429, 429]), "{out}");
    assert_eq!(field("twilio", "code")[3..], ints(&[20429, 20429]), "{out}");
    assert_eq!(field("sendgrid", "status"), ints(&[202, 202, 429, 429, 429]), "{out}");
    let texts = |v: &[&str]| v.iter().map(|s| Value::from(*s)).collect::<Vec<_>>();
    assert_eq!(field("sendgrid", "limit"), texts(&["2"; 5]), "{out}");
    assert_eq!(field("sendgrid", "remaining"), texts(&["1", "0", "0", "0", "0"]), "{out}");
    let now = chrono::Utc::now().timestamp();
    for reset in field("sendgrid", "reset") {
        let reset: i64 = reset.as_str().expect("X-RateLimit-Reset").parse().expect("Unix seconds");
        assert!((now..now + 3_000).contains(&reset), "reset {reset}, now {now}");
    }
    assert_eq!(field("sendgrid", "body")[2]["errors"][0]["message"], "too many requests", "{out}");
    assert_eq!(field("sendgrid", "body")[0], null);
    assert_eq!(field("ses", "status"), ints(&[200, 200, 429, 429, 429]), "{out}");
    assert_eq!(field("ses", "code")[2..], texts(&["TooManyRequestsException"; 3]), "{out}");
    assert_eq!(field("ses", "message")[2], "Maximum sending rate exceeded.", "{out}");
    assert_eq!(field("whatsapp", "status"), ints(&[200, 429, 429, 429, 429]), "{out}");
    assert_eq!(field("whatsapp", "code")[1..], ints(&[130429; 4]), "{out}");
    // Nothing was taken beyond the limits: the messages stored are the calls let through.
    assert_eq!(store.totals().await.expect("totals").messages, 3 + 2 + 2 * 3 + 1);
    pipeline.shutdown().await;
}

/// `http.<vendor>.lifecycle_key`: the request names its message (Twilio by a header, SendGrid by a
/// custom arg, SES by an EmailTag, WhatsApp by `biz_opaque_callback_data`). A repeated key is answered
/// as the first call was, with the same ids, and takes nothing more, even five calls at once.
async fn a_repeated_lifecycle_key_gets_the_first_answer(k: Kafka, sqlite: bool) {
    use understudy::config::LifecycleKey;
    let (store_url, _db) = fresh_store(sqlite).await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("keys-{}", common::suffix());
    let keys = |s: &mut understudy::config::Settings| {
        s.http.twilio.lifecycle_key = Some(LifecycleKey::Header("Idempotency-Key".into()));
        s.http.sendgrid.lifecycle_key = Some(LifecycleKey::CustomArg("msg_id".into()));
        s.http.ses.lifecycle_key = Some(LifecycleKey::Tag("msg_id".into()));
        s.http.whatsapp.lifecycle_key = Some(LifecycleKey::OpaqueData);
    };
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, keys).await;
    let envs = [
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("SENDGRID_API_KEY", SENDGRID_API_KEY),
        ("PHONE_NUMBER_ID", PHONE_NUMBER_ID),
        ("ACCESS_TOKEN", TOKEN),
    ];
    let out = client_script("lifecycle_keys.py", &url, &envs).await;
    let t = &out["twilio"];
    assert_eq!(t[1], t[0], "a repeated key is answered as the first call was, whatever its body");
    assert_eq!((t[0]["status"].as_str(), t[0]["body"].as_str()), (Some("queued"), Some("keyed")));
    assert_ne!(t[2]["sid"], t[0]["sid"], "another key is another message");
    let at_once: HashSet<&str> =
        out["twilio_at_once"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(at_once.len(), 1, "five calls at once with one key are one message: {out}");
    for door in ["sendgrid", "ses", "whatsapp"] {
        let ids = &out[door];
        assert!(ids[0].is_string() && ids[1] == ids[0] && ids[2] != ids[0], "{door}: {ids}");
    }
    // Stored once per key (SendGrid's: two recipients each), and every lifecycle ran once.
    let expected = 3 + 2 * 2 + 2 + 2;
    assert_eq!(store.totals().await.expect("totals").messages, expected);
    common::all_finished(&store, expected, Duration::from_secs(60)).await;
    pipeline.shutdown().await;

    // A rerun against a fresh store gets the same ids.
    let (store_url, _db2) = fresh_store(sqlite).await;
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, keys).await;
    let again = client_script("lifecycle_keys.py", &url, &envs).await;
    for door in ["twilio", "twilio_at_once", "sendgrid", "ses", "whatsapp"] {
        let ids = |v: &Value| -> Vec<Value> {
            v[door].as_array().unwrap().iter().map(|m| m.get("sid").unwrap_or(m).clone()).collect()
        };
        assert_eq!(ids(&again), ids(&out), "{door}");
    }
    pipeline.shutdown().await;
}

async fn a_repeated_lifecycle_key_gets_the_first_answer_on_postgres(k: Kafka) {
    a_repeated_lifecycle_key_gets_the_first_answer(k, false).await
}

async fn a_repeated_lifecycle_key_gets_the_first_answer_on_sqlite(k: Kafka) {
    a_repeated_lifecycle_key_gets_the_first_answer(k, true).await
}

/// On SendGrid's and SES's doors a scenario's throttle or outage refuses the whole call (429, 503), as
/// those vendors refuse it, while its other REJECTs stay events; a refused call's messages are stored for
/// the audit trail, with no lifecycle.
async fn sendgrid_and_ses_refuse_throttled_and_outage_calls(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("refused-{}", common::suffix());
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/happy-path.yaml")).unwrap();
    let file = dir.path().join("refusing.yaml");
    let faults = r#"
throttles:
  - { name: sender-limit, match: { tenant: "*.throttled.example" }, rate: 0.001, burst: 2, per: tenant }
outages:
  - { name: down, match: { tenant: down.example }, from: 0s, for: 100000h, mode: reject }
"#;
    std::fs::write(&file, format!("{base}{faults}")).unwrap();
    let scenario = understudy::scenario::Scenario::load(&file).expect("scenario").rescaled(0.0001).expect("rescaled");
    let mut settings = common::settings(k, &store_url, 3);
    settings.http.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.http.instance = Some(instance);
    let pipeline = Pipeline::start(&settings, Arc::new(scenario), &k.brokers()).await.expect("pipeline starts");
    let url = format!("http://{}", pipeline.http_addr().expect("the front doors listen"));
    let out = client_script("refused_calls.py", &url, &[("SENDGRID_API_KEY", SENDGRID_API_KEY)]).await;
    // Two recipients a call, a burst of two: the first call goes through, the next two are refused.
    assert_eq!(out["sendgrid"], serde_json::json!([202, 429, 429, 503, 202]), "{out}");
    assert_eq!(
        out["ses"],
        serde_json::json!([
            [200, null],
            [429, "TooManyRequestsException"],
            [429, "TooManyRequestsException"],
            [503, "ServiceUnavailable"],
            [200, null]
        ]),
        "{out}"
    );
    // Every recipient of every call is stored; only those of the four calls taken have lifecycles.
    assert_eq!(store.totals().await.expect("totals").messages, 20);
    common::all_finished(&store, 20, Duration::from_secs(60)).await;
    let sends: i64 = store.status_counts().await.unwrap().iter().filter(|c| c.status == "SEND").map(|c| c.n).sum();
    assert_eq!(sends, 8, "a SEND for each recipient of the calls taken, none for the refused");
    pipeline.shutdown().await;
}

/// Webhook retries go on across a restart: with the receiver down in the first run and up in the second,
/// each status is delivered once, at the attempt after the last one stored, no sooner than it was due.
async fn webhook_retries_go_on_after_a_restart(k: Kafka, sqlite: bool) {
    let (store_url, _db) = fresh_store(sqlite).await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let instance = format!("retry-{}", common::suffix());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let webhook = format!("http://127.0.0.1:{port}/meta");
    let tune = |s: &mut understudy::config::Settings| {
        s.http.whatsapp.access_tokens = vec![TOKEN.into()];
        s.http.whatsapp.app_secret = APP_SECRET.into();
        s.http.whatsapp.verify_token = VERIFY_TOKEN.into();
        s.http.whatsapp.webhook_url = Some(webhook.clone());
        s.service.shutdown_grace_ms = 0;
    };
    // Meta retries 15 s after a failure, 7.5 s here: the first run stops before any retry is due. Sent
    // and delivered within about a second.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quick.yaml");
    std::fs::write(
        &file,
        "name: quick\nseed: 1\nchannels:\n  whatsapp:\n    delays:\n      SEND: { dist: fixed, value: 100ms }\n      DELIVERY: { dist: fixed, value: 1s }\n    paths:\n      - { name: delivered, weight: 1, steps: [SEND, DELIVERY] }\n",
    )
    .unwrap();
    let scenario = || understudy::scenario::Scenario::load(&file).expect("scenario").rescaled(0.5).expect("rescaled");
    let (pipeline, url, _) = start_on(k, &store_url, &instance, scenario(), tune).await;
    let envs = [("PHONE_NUMBER_ID", PHONE_NUMBER_ID), ("ACCESS_TOKEN", TOKEN), ("N", "5")];
    client_script("whatsapp_send.py", &url, &envs).await;
    common::eventually(Duration::from_secs(30), "every message's first webhook tried", || async {
        let a = store.attempts().await.expect("attempts");
        (a.len() >= 6).then_some(())
    })
    .await;
    pipeline.shutdown().await;
    let before = store.attempts().await.expect("attempts");
    assert!(before.iter().all(|a| a.outcome == "unreachable" && a.next_attempt_at_us.is_some()), "{before:?}");

    let receiver = Receiver::start_with(dir.path(), 0, port);
    let (pipeline, _, _) = start_on(k, &store_url, &instance, scenario(), tune).await;
    let messages = store.totals().await.unwrap().messages;
    common::all_finished(&store, messages, Duration::from_secs(90)).await;
    let events = store.totals().await.unwrap().events as usize;
    let attempts = common::eventually(Duration::from_secs(30), "every webhook delivered", || async {
        let a = store.attempts().await.expect("attempts");
        (a.iter().filter(|a| a.outcome == "delivered").count() >= events).then_some(a)
    })
    .await;
    let mut by_event: std::collections::BTreeMap<&str, Vec<&understudy::store::StoredAttempt>> = Default::default();
    for a in &attempts {
        by_event.entry(&a.event_id).or_default().push(a);
    }
    assert_eq!(by_event.len(), events, "an event's webhook is stored with its attempts");
    for (id, mine) in &by_event {
        let numbers: Vec<i32> = mine.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (1..=mine.len() as i32).collect::<Vec<_>>(), "numbered on: {mine:?}");
        assert_eq!(mine.iter().filter(|a| a.outcome == "delivered").count(), 1, "{mine:?}");
        assert_eq!(mine.last().unwrap().outcome, "delivered", "{mine:?}");
        for w in mine.windows(2) {
            assert!(w[1].attempted_at_us >= w[0].next_attempt_at_us.unwrap(), "not before it was due: {w:?}");
        }
        if before.iter().any(|b| b.event_id == **id) {
            assert!(mine.len() >= 2, "the first run's attempt counts: {mine:?}");
        }
    }
    let statuses =
        receiver.received().into_iter().filter(|c| c["handshake"].is_null() && c["failed"].is_null()).count();
    assert_eq!(statuses, events, "each status delivered once");
    pipeline.shutdown().await;
}

async fn webhook_retries_go_on_after_a_restart_on_postgres(k: Kafka) {
    webhook_retries_go_on_after_a_restart(k, false).await
}

async fn webhook_retries_go_on_after_a_restart_on_sqlite(k: Kafka) {
    webhook_retries_go_on_after_a_restart(k, true).await
}

/// `kill -9` of the service mid-run: every message answered `201` is stored, and after a restart under the
/// same instance every status of every message is called back (at least once, in order), stored once, with
/// a delivered attempt on record.
async fn a_killed_instance_loses_no_message_and_no_webhook(k: Kafka) {
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let callback = format!("http://127.0.0.1:{}/status", receiver.port);
    let port = common::faults::free_port();
    let mut settings = common::settings(k, &store_url, 3);
    settings.http.listen_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    settings.http.instance = Some(format!("killed-{}", common::suffix()));
    settings.http.twilio.accounts = vec![TwilioAccount { sid: ACCOUNT.into(), auth_token: TOKEN.into() }];
    let config = common::write_config(dir.path(), &settings);
    // Sent after 100 ms, delivered within 0.5 – 4 s: most DELIVERY steps are due after the kill.
    let scenario = dir.path().join("sms.yaml");
    std::fs::write(
        &scenario,
        "name: sms\nseed: 3\nchannels:\n  sms:\n    delays:\n      SEND: { dist: fixed, value: 100ms }\n      DELIVERY: { dist: uniform, min: 500ms, max: 4s }\n    paths:\n      - { name: delivered, weight: 1, steps: [SEND, DELIVERY] }\n",
    )
    .unwrap();
    let mut service = common::faults::Service::spawn(&config, &scenario, &dir.path().join("service.log"));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        service.assert_alive("before its doors listened");
        assert!(std::time::Instant::now() < deadline, "the doors did not listen within 60 s:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = twilio_script_with(&url, Some(&callback), true).await;
    let sids: Vec<String> =
        created["created"].as_array().unwrap().iter().map(|m| m["sid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sids.len(), N);
    tokio::time::sleep(Duration::from_millis(700)).await;
    service.kill();
    // Every 201 was for a stored message; the kill came mid-run.
    let at_kill = store.totals().await.unwrap();
    assert_eq!(at_kill.messages, N as i64);
    assert!(at_kill.events < 2 * N as i64, "killed before the lifecycles finished: {} events", at_kill.events);
    service.restart();
    common::all_finished(&store, N as i64, Duration::from_secs(90)).await;
    let events = store.totals().await.unwrap().events as usize;
    assert_eq!(events, 2 * N, "SEND and DELIVERY of every message, each stored once");
    let callbacks = common::eventually(Duration::from_secs(30), "every status called back", || async {
        let got = receiver.received();
        let all = sids.iter().all(|sid| {
            let mine: Vec<&str> = got
                .iter()
                .filter(|c| c["params"]["MessageSid"] == sid.as_str())
                .map(|c| c["params"]["MessageStatus"].as_str().unwrap())
                .collect();
            mine.contains(&"sent") && mine.contains(&"delivered")
        });
        all.then_some(got)
    })
    .await;
    for sid in &sids {
        let mine: Vec<&str> = callbacks
            .iter()
            .filter(|c| c["params"]["MessageSid"] == sid.as_str())
            .map(|c| c["params"]["MessageStatus"].as_str().unwrap())
            .collect();
        let first_delivered = mine.iter().position(|s| *s == "delivered").unwrap();
        assert!(mine[..first_delivered].contains(&"sent"), "sent before delivered: {sid} {mine:?}");
    }
    assert!(callbacks.iter().all(|c| c["valid"] == true), "every callback signed");
    let attempts = common::eventually(Duration::from_secs(30), "a delivered attempt of every event", || async {
        let a = store.attempts().await.expect("attempts");
        let delivered: HashSet<String> =
            a.iter().filter(|a| a.outcome == "delivered").map(|a| a.event_id.clone()).collect();
        (delivered.len() >= events).then_some(delivered)
    })
    .await;
    assert_eq!(attempts.len(), events);
    service.terminate();
}

/// `http.<vendor>.tenant_webhook_urls`: a tenant's webhooks go to its own URL (SendGrid's tenant is the
/// sender's domain), everyone else's to the vendor's `webhook_url`; both signed.
async fn webhooks_go_to_a_tenant_s_own_url(k: Kafka) {
    use p256::pkcs8::EncodePrivateKey as _;
    let store_url = common::postgres_url().await;
    let store = Store::connect(&store_url, 2).await.expect("store");
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let base = format!("http://127.0.0.1:{}", receiver.port);
    let pem = sendgrid_key().to_pkcs8_pem(Default::default()).unwrap().to_string();
    let tune = |s: &mut understudy::config::Settings| {
        s.http.sendgrid.signing_key_pem = Some(pem.clone());
        s.http.sendgrid.webhook_url = Some(format!("{base}/sendgrid/default"));
        s.http.sendgrid.tenant_webhook_urls.insert("vip.example".into(), format!("{base}/sendgrid/vip"));
    };
    let instance = format!("tenant-urls-{}", common::suffix());
    let (pipeline, url, _) = start_with(k, &store_url, &instance, "happy-path.yaml", 0.0001, tune).await;
    let out = client_script("tenant_urls.py", &url, &[("SENDGRID_API_KEY", SENDGRID_API_KEY)]).await;
    assert_eq!(out, serde_json::json!([202, 202]));
    common::all_finished(&store, 2, Duration::from_secs(60)).await;
    // processed, delivered, open for each.
    let got = common::eventually(Duration::from_secs(30), "every event", || async {
        let got = receiver.received();
        let n: usize = got.iter().map(|b| b["json"].as_array().map_or(0, Vec::len)).sum();
        (n >= 6).then_some(got)
    })
    .await;
    for batch in &got {
        assert_eq!(batch["valid"], true, "signed: {batch}");
        let expected = if batch["path"] == "/sendgrid/vip" { "a@example.com" } else { "b@example.com" };
        assert!(batch["path"] == "/sendgrid/vip" || batch["path"] == "/sendgrid/default", "{batch}");
        for e in batch["json"].as_array().unwrap() {
            assert_eq!(e["email"], expected, "{batch}");
        }
    }
    assert!(got.iter().any(|b| b["path"] == "/sendgrid/vip") && got.iter().any(|b| b["path"] == "/sendgrid/default"));
    pipeline.shutdown().await;
}

crate::on_both_brokers!(
    actix::test,
    webhooks_go_to_a_tenant_s_own_url,
    a_killed_instance_loses_no_message_and_no_webhook,
    webhook_retries_go_on_after_a_restart_on_postgres,
    webhook_retries_go_on_after_a_restart_on_sqlite,
    sendgrid_and_ses_refuse_throttled_and_outage_calls,
    a_repeated_lifecycle_key_gets_the_first_answer_on_postgres,
    a_repeated_lifecycle_key_gets_the_first_answer_on_sqlite,
    each_door_answers_429_beyond_its_rate_limit,
    twilio_callbacks_to_a_dead_receiver_stop_nothing,
    sendgrid_mail_is_accepted_and_its_events_are_signed,
    ses_mail_is_sent_and_its_events_come_signed_through_sns,
    whatsapp_messages_are_sent_answered_and_acked,
    twilio_messages_are_created_answered_and_acked_on_postgres,
    twilio_messages_are_created_answered_and_acked_on_sqlite,
    twilio_lifecycles_resume_after_a_restart
);
