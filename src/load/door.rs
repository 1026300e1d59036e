//! Load runs through a vendor's front door (`understudy load --door twilio|whatsapp|sendgrid|ses`): the
//! generator makes each message the vendor's own send call, open model, over a keep-alive pool, and
//! counts the answers (HTTP status, send-call latency); this process serves the webhook receiver
//! itself, checks every webhook the vendor's way (Twilio's `X-Twilio-Signature`, Meta's
//! `X-Hub-Signature-256` after its `hub.challenge`, SendGrid's ECDSA signature, SNS's RSA signature after
//! its SubscriptionConfirmation) and hands each status to the same correlator as the Kafka acks: the
//! same histograms, reports, gates and comparisons.
//!
//! The webhooks name their load message by what the send call gave the vendor to echo: Twilio's
//! `StatusCallback` URL (`?payload_id=`), WhatsApp's `biz_opaque_callback_data`, SendGrid's
//! `custom_args.payload_id`, SES's EmailTag `payload_id`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::message::MessageFactory;
use super::results::{Hist, HttpFigures};
use super::{FAILED, Schedule, Sent, Shared};
use crate::model::{Channel, Status};
use crate::wire::{self, Vendor};

/// The key of the tag, custom arg and query parameter a webhook names its load message by.
pub const PAYLOAD_ID_FIELD: &str = "payload_id";

/// The sender of the load messages' send calls.
pub const FROM_NUMBER: &str = "+15005550006";

/// Where and how the run sends.
#[derive(Clone, Debug)]
pub struct DoorTarget {
    pub vendor: Vendor,
    /// The doors' base URL, such as `http://understudy:8080`.
    pub url: String,
    /// Where the vendor's webhooks reach this process (the receiver's public base URL).
    pub receiver_url: String,
    pub credentials: Credentials,
    /// Send calls under way at once, at most.
    pub concurrency: usize,
}

/// What the send calls authenticate with, and what the webhooks are checked against.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub twilio_account: String,
    pub twilio_token: String,
    /// WhatsApp's access token, SendGrid's API key.
    pub bearer: String,
    pub phone_number_id: String,
    /// SES's access key and secret; an empty secret leaves the requests unsigned for the signature's
    /// value (any SigV4 header is taken by a door with no credentials).
    pub aws_key: String,
    pub aws_secret: String,
    pub meta_app_secret: String,
    pub meta_verify_token: String,
    /// SendGrid's verification key (the signing key's public half); none: its webhooks are not checked.
    pub sendgrid_key: Option<p256::ecdsa::VerifyingKey>,
}

/// One status a webhook reported.
#[derive(Debug)]
pub struct Observed {
    pub payload_id: String,
    pub status: Status,
    pub at: Instant,
}

/// The vendor's channels: what a run through its door may send.
pub fn channels(vendor: Vendor) -> &'static [Channel] {
    match vendor {
        Vendor::Twilio => &[Channel::Sms, Channel::Whatsapp],
        Vendor::Whatsapp => &[Channel::Whatsapp],
        Vendor::Sendgrid | Vendor::Ses => &[Channel::Email],
    }
}

/// The path under the receiver a vendor's webhooks go to.
pub fn webhook_path(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Twilio => "/twilio",
        Vendor::Whatsapp => "/whatsapp",
        Vendor::Sendgrid => "/sendgrid",
        Vendor::Ses => "/ses",
    }
}

// ---------------------------------------------------------------------------------------------------
// The receiver.

/// The webhook receiver of a run; stopped with [`Receiver::stop`].
pub struct Receiver {
    handle: actix_web::dev::ServerHandle,
    pub addr: SocketAddr,
    state: web::Data<ReceiverState>,
}

struct ReceiverState {
    tx: std::sync::mpsc::Sender<Observed>,
    credentials: Credentials,
    /// The receiver's public base URL: what Twilio signed (set once the receiver is bound).
    public_url: std::sync::OnceLock<String>,
    bad_signatures: AtomicU64,
    unreadable: AtomicU64,
    client: reqwest::Client,
    /// SNS signing certificates' public keys, by URL.
    certs: tokio::sync::Mutex<HashMap<String, openssl::pkey::PKey<openssl::pkey::Public>>>,
}

impl Receiver {
    /// Listen on `listen`; webhooks reach it at `public_url` (default: `http://` and the bound address).
    pub fn start(
        listen: SocketAddr,
        public_url: Option<String>,
        credentials: Credentials,
        tx: std::sync::mpsc::Sender<Observed>,
    ) -> std::io::Result<Self> {
        let state = web::Data::new(ReceiverState {
            tx,
            credentials,
            public_url: std::sync::OnceLock::new(),
            bad_signatures: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client"),
            certs: tokio::sync::Mutex::new(HashMap::new()),
        });
        let data = state.clone();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/twilio", web::post().to(twilio))
                .route("/whatsapp", web::get().to(whatsapp_handshake))
                .route("/whatsapp", web::post().to(whatsapp))
                .route("/sendgrid", web::post().to(sendgrid))
                .route("/ses", web::post().to(ses))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(listen)?;
        let addr = server.addrs().first().copied().unwrap_or(listen);
        let public_url = public_url.unwrap_or_else(|| format!("http://{addr}")).trim_end_matches('/').to_owned();
        state.public_url.set(public_url).expect("set once, here");
        let server = server.run();
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the load run's webhook receiver stopped");
            }
        });
        Ok(Self { handle, addr, state })
    }

    /// The base URL webhooks reach this receiver at.
    pub fn public_url(&self) -> String {
        self.state.public_url().to_owned()
    }

    /// Webhooks refused by their signature check, and webhooks that could not be read.
    pub fn refused(&self) -> (u64, u64) {
        (self.state.bad_signatures.load(Ordering::Relaxed), self.state.unreadable.load(Ordering::Relaxed))
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

impl ReceiverState {
    fn public_url(&self) -> &str {
        self.public_url.get().map_or("", String::as_str)
    }

    fn observed(&self, payload_id: Option<&str>, status: Option<Status>) {
        match (payload_id, status) {
            (Some(id), Some(status)) => {
                let o = Observed { payload_id: id.to_owned(), status, at: Instant::now() };
                let _ = self.tx.send(o);
            }
            _ => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn bad_signature(&self) -> HttpResponse {
        self.bad_signatures.fetch_add(1, Ordering::Relaxed);
        HttpResponse::Forbidden().finish()
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Twilio's status callback: form-encoded, `X-Twilio-Signature` over the URL it was posted to and the
/// sorted parameters, keyed by the account's auth token.
async fn twilio(req: HttpRequest, body: web::Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    let url = format!("{}{}", state.public_url(), req.uri().path_and_query().map_or("", |p| p.as_str()));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let signed: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let expected = wire::twilio::signature(&state.credentials.twilio_token, &url, &signed);
    if !wire::constant_time_eq(expected.as_bytes(), header(&req, "x-twilio-signature").as_bytes()) {
        return state.bad_signature();
    }
    let payload_id = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == PAYLOAD_ID_FIELD)
        .map(|(_, v)| v.into_owned());
    let status = params.iter().find(|(k, _)| k == "MessageStatus").and_then(|(_, v)| wire::twilio::status_of(v));
    state.observed(payload_id.as_deref(), status);
    HttpResponse::Ok().finish()
}

/// Meta's verification handshake: answer `hub.challenge` when the verify token is ours.
async fn whatsapp_handshake(req: HttpRequest, state: web::Data<ReceiverState>) -> HttpResponse {
    let q: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && q.get("hub.verify_token") == Some(&state.credentials.meta_verify_token);
    match (ok, q.get("hub.challenge")) {
        (true, Some(c)) => HttpResponse::Ok().content_type("text/plain").body(c.clone()),
        _ => HttpResponse::Forbidden().finish(),
    }
}

/// Meta's status webhook: `X-Hub-Signature-256` over the body with the app secret; each of
/// `entry[].changes[].value.statuses[]`.
async fn whatsapp(req: HttpRequest, body: web::Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    let expected = wire::whatsapp::signature(&state.credentials.meta_app_secret, &body);
    if !wire::constant_time_eq(expected.as_bytes(), header(&req, "x-hub-signature-256").as_bytes()) {
        return state.bad_signature();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        state.observed(None, None);
        return HttpResponse::Ok().finish();
    };
    let entries = v["entry"].as_array().into_iter().flatten();
    let changes = entries.flat_map(|e| e["changes"].as_array().into_iter().flatten());
    for s in changes.flat_map(|c| c["value"]["statuses"].as_array().into_iter().flatten()) {
        let status = s["status"].as_str().and_then(wire::whatsapp::status_of);
        state.observed(s["biz_opaque_callback_data"].as_str(), status);
    }
    HttpResponse::Ok().finish()
}

/// SendGrid's event webhook: an array of events, signed ECDSA P-256 over the timestamp header and the
/// body (checked when the verification key is known).
async fn sendgrid(req: HttpRequest, body: web::Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    if let Some(key) = &state.credentials.sendgrid_key {
        let timestamp = header(&req, "x-twilio-email-event-webhook-timestamp");
        let signature = header(&req, "x-twilio-email-event-webhook-signature");
        if !wire::sendgrid::verify(key, timestamp, &body, signature) {
            return state.bad_signature();
        }
    }
    let Ok(events) = serde_json::from_slice::<Vec<Value>>(&body) else {
        state.observed(None, None);
        return HttpResponse::Ok().finish();
    };
    for e in &events {
        state.observed(e[PAYLOAD_ID_FIELD].as_str(), e["event"].as_str().and_then(wire::sendgrid::status_of));
    }
    HttpResponse::Ok().finish()
}

/// SES's events: through SNS (a SubscriptionConfirmation to confirm at its SubscribeURL, then signed
/// notifications; the signature checked with the certificate at `SigningCertURL`), raw, or
/// EventBridge-shaped.
async fn ses(req: HttpRequest, body: web::Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        state.observed(None, None);
        return HttpResponse::Ok().finish();
    };
    let event = if header(&req, "x-amz-sns-rawdelivery") == "true" {
        v
    } else if v.get("detail").is_some() {
        v["detail"].clone()
    } else {
        if !sns_signature_ok(&v, &state).await {
            return state.bad_signature();
        }
        match v["Type"].as_str() {
            Some("SubscriptionConfirmation") => {
                let url = v["SubscribeURL"].as_str().unwrap_or("");
                let confirmed = state.client.get(url).send().await.is_ok_and(|r| r.status().is_success());
                return if confirmed { HttpResponse::Ok().finish() } else { HttpResponse::BadGateway().finish() };
            }
            Some("Notification") => match v["Message"].as_str().map(serde_json::from_str::<Value>) {
                Some(Ok(m)) => m,
                _ => {
                    state.observed(None, None);
                    return HttpResponse::Ok().finish();
                }
            },
            _ => return HttpResponse::Ok().finish(),
        }
    };
    let kind = event["eventType"].as_str().or_else(|| event["notificationType"].as_str());
    let id = event["mail"]["tags"][PAYLOAD_ID_FIELD][0].as_str();
    state.observed(id, kind.and_then(wire::ses::status_of));
    HttpResponse::Ok().finish()
}

/// Whether an SNS message's `Signature` checks out against the certificate at its `SigningCertURL`
/// (SHA1withRSA for `SignatureVersion` 1, SHA256withRSA for 2).
async fn sns_signature_ok(v: &Value, state: &ReceiverState) -> bool {
    use base64::Engine as _;
    let field = |k: &str| v[k].as_str();
    let Some(signed) = wire::ses::sns_string_to_sign(field("Type").unwrap_or(""), field) else { return false };
    let (Some(url), Some(signature)) = (field("SigningCertURL"), field("Signature")) else { return false };
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature) else { return false };
    let digest = match field("SignatureVersion") {
        Some("2") => openssl::hash::MessageDigest::sha256(),
        _ => openssl::hash::MessageDigest::sha1(),
    };
    let key = {
        let mut certs = state.certs.lock().await;
        match certs.get(url) {
            Some(k) => k.clone(),
            None => {
                let pem = match state.client.get(url).send().await {
                    Ok(r) => r.bytes().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                let Ok(key) = openssl::x509::X509::from_pem(&pem).and_then(|c| c.public_key()) else { return false };
                certs.insert(url.to_owned(), key.clone());
                key
            }
        }
    };
    openssl::sign::Verifier::new(digest, &key)
        .and_then(|mut verifier| {
            verifier.update(signed.as_bytes())?;
            verifier.verify(&signature)
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------------
// The generator.

/// One send call, ready to go.
struct Call {
    url: String,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// The send call of message `seq` to `recipient` on `channel`, the vendor's way.
fn call(
    target: &DoorTarget,
    factory: &MessageFactory,
    payload_id: &str,
    seq: u64,
    channel: Channel,
    recipient: &str,
) -> Call {
    use base64::Engine as _;
    let c = &target.credentials;
    let base = target.url.trim_end_matches('/');
    let from_email = {
        let t = &factory.tenant_id;
        if t.contains('.') { format!("load@{t}") } else { format!("load@{t}.example") }
    };
    match target.vendor {
        Vendor::Twilio => {
            let whatsapp = channel == Channel::Whatsapp;
            let prefix = if whatsapp { "whatsapp:" } else { "" };
            let callback = format!(
                "{}{}?{PAYLOAD_ID_FIELD}={}",
                target.receiver_url,
                webhook_path(Vendor::Twilio),
                url::form_urlencoded::byte_serialize(payload_id.as_bytes()).collect::<String>()
            );
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", &format!("{prefix}{recipient}"))
                .append_pair("From", &format!("{prefix}{FROM_NUMBER}"))
                .append_pair("Body", &format!("load message {seq}"))
                .append_pair("StatusCallback", &callback)
                .finish();
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.twilio_account, c.twilio_token));
            Call {
                url: format!("{base}/{}/Accounts/{}/Messages.json", wire::twilio::API_VERSION, c.twilio_account),
                content_type: "application/x-www-form-urlencoded",
                body: body.into_bytes(),
                headers: vec![("authorization", format!("Basic {auth}"))],
            }
        }
        Vendor::Whatsapp => {
            let body = serde_json::json!({
                "messaging_product": "whatsapp",
                "to": recipient.trim_start_matches('+'),
                "type": "text",
                "text": {"body": format!("load message {seq}")},
                "biz_opaque_callback_data": payload_id,
            });
            Call {
                url: format!("{base}/v21.0/{}/messages", c.phone_number_id),
                content_type: "application/json",
                body: body.to_string().into_bytes(),
                headers: vec![("authorization", format!("Bearer {}", c.bearer))],
            }
        }
        Vendor::Sendgrid => {
            let body = serde_json::json!({
                "personalizations": [{"to": [{"email": recipient}], "custom_args": {PAYLOAD_ID_FIELD: payload_id}}],
                "from": {"email": from_email},
                "subject": format!("load message {seq}"),
                "content": [{"type": "text/plain", "value": format!("load message {seq}")}],
            });
            Call {
                url: format!("{base}/v3/mail/send"),
                content_type: "application/json",
                body: body.to_string().into_bytes(),
                headers: vec![("authorization", format!("Bearer {}", c.bearer))],
            }
        }
        Vendor::Ses => {
            let body = serde_json::json!({
                "FromEmailAddress": from_email,
                "Destination": {"ToAddresses": [recipient]},
                "Content": {"Simple": {"Subject": {"Data": format!("load message {seq}")}, "Body": {"Text": {"Data": "load"}}}},
                "EmailTags": [{"Name": PAYLOAD_ID_FIELD, "Value": payload_id}],
            })
            .to_string()
            .into_bytes();
            let url = format!("{base}/v2/email/outbound-emails");
            let headers = sigv4_headers(&url, &body, &c.aws_key, &c.aws_secret);
            Call { url, content_type: "application/json", body, headers }
        }
    }
}

/// SigV4 headers of an SES `POST` to `url` with `body`, signed with `secret` (`host;x-amz-date`).
fn sigv4_headers(url: &str, body: &[u8], key: &str, secret: &str) -> Vec<(&'static str, String)> {
    use sha2::Digest as _;
    let parsed = url::Url::parse(url).expect("a door URL");
    let host = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or("")),
        None => parsed.host_str().unwrap_or("").to_owned(),
    };
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{}/{}/ses/aws4_request", now.format("%Y%m%d"), wire::ses::REGION);
    let payload = wire::ses::hex(&sha2::Sha256::digest(body));
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = wire::ses::canonical_request(
        "POST",
        parsed.path(),
        parsed.query().unwrap_or(""),
        &[
            ("host".into(), host),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ],
        signed_headers,
        &payload,
    );
    let signature = wire::ses::sigv4_signature(secret, &amz_date, &scope, &canonical);
    vec![
        (
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"),
        ),
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", payload),
    ]
}

/// Send every message of the schedule as a send call, open model: each is handed off at its due time
/// (late only when `concurrency` calls are all still under way), its answer counted when it comes.
pub(super) fn generate(
    target: &DoorTarget,
    shared: &Arc<Shared>,
    schedule: &Schedule,
    factory: &MessageFactory,
    late_after_us: u64,
) -> (Sent, HttpFigures) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let figures = Arc::new(Mutex::new(HttpFigures { door: target.vendor.as_str().to_owned(), ..Default::default() }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(target.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let room = Arc::new(tokio::sync::Semaphore::new(target.concurrency.max(1)));
    let sent = runtime.block_on(async {
        let mut out = Sent { lateness: Hist::default(), timeline: Vec::new(), last_send_us: 0 };
        let (mut id, mut recipient) = (String::new(), Vec::new());
        let mut seq = 0u64;
        let t0 = tokio::time::Instant::from_std(shared.t0);
        while let Some(due) = schedule.due_us(seq) {
            if shared.stop_sending.load(Ordering::Relaxed) {
                break;
            }
            let at = t0 + Duration::from_micros(due);
            while tokio::time::Instant::now() < at && !shared.stop_sending.load(Ordering::Relaxed) {
                tokio::time::sleep_until(at.min(tokio::time::Instant::now() + Duration::from_millis(100))).await;
            }
            if shared.stop_sending.load(Ordering::Relaxed) {
                break;
            }
            let permit = room.clone().acquire_owned().await.expect("never closed");
            let channel = factory.mix.channel_of(seq);
            factory.payload_id(seq, &mut id);
            recipient.clear();
            factory.recipient_into(seq, channel, &mut recipient);
            let c = call(target, factory, &id, seq, channel, std::str::from_utf8(&recipient).unwrap_or(""));
            out.handed_off(shared, seq, due, late_after_us);
            let (client, shared, figures) = (client.clone(), shared.clone(), figures.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut request = client.post(&c.url).header("content-type", c.content_type).body(c.body);
                for (k, v) in &c.headers {
                    request = request.header(*k, v);
                }
                let answer = request.send().await;
                let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
                // The answer's body is read, so that the connection goes back to the pool.
                if let Ok(r) = answer {
                    let _ = r.bytes().await;
                }
                {
                    let mut f = figures.lock().expect("figures lock");
                    *f.statuses.entry(status).or_default() += 1;
                    f.send_latency_us.record(started.elapsed().as_micros() as u64);
                }
                if (200..300).contains(&status) {
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.flags.0[seq as usize].fetch_or(FAILED, Ordering::Relaxed);
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
            seq += 1;
        }
        shared.sending_done.store(true, Ordering::Release);
        // The calls still under way finish.
        let _ = room.acquire_many(target.concurrency.max(1) as u32).await;
        out
    });
    let figures = figures.lock().expect("figures lock").clone();
    (sent, figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_statuses_read_back_as_understudys() {
        for s in [Status::Send, Status::Delivery, Status::Read, Status::Undelivered] {
            assert_eq!(wire::twilio::status_of(wire::twilio::message_status(s)), Some(s));
        }
        for s in [
            Status::Send,
            Status::Delivery,
            Status::Open,
            Status::Click,
            Status::Bounce,
            Status::Deferred,
            Status::Reject,
            Status::Complaint,
        ] {
            assert_eq!(wire::sendgrid::status_of(wire::sendgrid::event_name(s)), Some(s));
            assert_eq!(wire::ses::status_of(wire::ses::event_type(s)), Some(s));
        }
        for s in [Status::Send, Status::Delivery, Status::Read] {
            assert_eq!(wire::whatsapp::status_of(wire::whatsapp::status(s)), Some(s));
        }
    }

    fn state(credentials: Credentials) -> (web::Data<ReceiverState>, std::sync::mpsc::Receiver<Observed>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let state = web::Data::new(ReceiverState {
            tx,
            credentials,
            public_url: "http://me:9000".to_owned().into(),
            bad_signatures: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            client: reqwest::Client::new(),
            certs: tokio::sync::Mutex::new(HashMap::new()),
        });
        (state, rx)
    }

    #[actix::test]
    async fn webhooks_with_a_wrong_signature_are_refused_and_counted() {
        use actix_web::test::TestRequest;
        let (state, rx) =
            state(Credentials { twilio_token: "tok".into(), meta_app_secret: "sec".into(), ..Default::default() });
        let body = "MessageSid=SM1&MessageStatus=delivered";
        let params = vec![("MessageSid", "SM1".to_owned()), ("MessageStatus", "delivered".to_owned())];
        let good = wire::twilio::signature("tok", "http://me:9000/twilio?payload_id=p-1", &params);
        for (signature, expected) in [("forged", 403), (good.as_str(), 200)] {
            let req = TestRequest::post()
                .uri("/twilio?payload_id=p-1")
                .insert_header(("x-twilio-signature", signature))
                .to_http_request();
            assert_eq!(twilio(req, web::Bytes::from(body), state.clone()).await.status().as_u16(), expected);
        }
        let o = rx.try_recv().expect("the signed callback is observed");
        assert_eq!((o.payload_id.as_str(), o.status), ("p-1", Status::Delivery));
        assert!(rx.try_recv().is_err(), "the forged one is not");
        let meta =
            br#"{"entry":[{"changes":[{"value":{"statuses":[{"status":"read","biz_opaque_callback_data":"p-2"}]}}]}]}"#;
        let req = TestRequest::post().insert_header(("x-hub-signature-256", "sha256=00")).to_http_request();
        assert_eq!(whatsapp(req, web::Bytes::from_static(meta), state.clone()).await.status().as_u16(), 403);
        let signed = wire::whatsapp::signature("sec", meta);
        let req = TestRequest::post().insert_header(("x-hub-signature-256", signed)).to_http_request();
        assert_eq!(whatsapp(req, web::Bytes::from_static(meta), state.clone()).await.status().as_u16(), 200);
        assert_eq!(rx.try_recv().unwrap().status, Status::Read);
        assert_eq!(state.bad_signatures.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn send_calls_are_the_vendors() {
        let factory =
            MessageFactory::new("run-1", 0, "shop.example", 10, "email=1".parse().unwrap(), Default::default(), 0);
        let target = |vendor| DoorTarget {
            vendor,
            url: "http://doors:8080/".into(),
            receiver_url: "http://me:9000".into(),
            credentials: Credentials {
                twilio_account: "AC1".into(),
                phone_number_id: "106".into(),
                ..Default::default()
            },
            concurrency: 1,
        };
        let c = call(&target(Vendor::Twilio), &factory, "run-1-g0-0000000007", 7, Channel::Whatsapp, "+15550001");
        assert_eq!(c.url, "http://doors:8080/2010-04-01/Accounts/AC1/Messages.json");
        let form: HashMap<String, String> = url::form_urlencoded::parse(&c.body).into_owned().collect();
        assert_eq!(form["To"], "whatsapp:+15550001");
        assert_eq!(form["StatusCallback"], "http://me:9000/twilio?payload_id=run-1-g0-0000000007");
        let c = call(&target(Vendor::Ses), &factory, "run-1-g0-0000000007", 7, Channel::Email, "a@b.test");
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(v["EmailTags"][0]["Value"], "run-1-g0-0000000007");
        assert_eq!(v["FromEmailAddress"], "load@shop.example");
        assert!(c.headers[0].1.starts_with("AWS4-HMAC-SHA256 Credential="));
        let c = call(&target(Vendor::Whatsapp), &factory, "p", 7, Channel::Whatsapp, "+15550001");
        assert_eq!(c.url, "http://doors:8080/v21.0/106/messages");
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!((v["to"].as_str(), v["biz_opaque_callback_data"].as_str()), (Some("15550001"), Some("p")));
    }
}
