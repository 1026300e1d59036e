//! The webhook sender: posts each ack as its vendor's own webhook (content type, body, signature) to the
//! lifecycle's callback URL, and hands each event it is done with on to the persister, as the Kafka
//! emitter does. One pooled HTTP client (keep-alive) with up to [`WebhookSender::max_in_flight`]
//! deliveries under way at once; beyond that `emit` waits (backpressure).
//!
//! An event is done when the receiver answered 2xx, or when the vendor's retry policy gave up (Twilio:
//! one retry after a connection failure, none after an HTTP error; SNS: 3 retries 20 s apart). Only then
//! is it stored, so a restart before that delivers it again, with the same event id. Every attempt is
//! logged, counted and stored ([`crate::sink::attempts`]); a resumed lifecycle's webhook goes on from
//! its last stored attempt: it waits for the retry that was due, numbers on, and is not posted again
//! when it was delivered (or given up on) before the restart.
//!
//! Before the first webhook to a URL comes the vendor's handshake: Meta's `hub.challenge`, SNS's
//! SubscriptionConfirmation (the receiver must visit its SubscribeURL, served by the doors).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use actix::ArbiterHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::config::SesDelivery;
use crate::model::AckEvent;
use crate::sink::attempts::AttemptLog;
use crate::sink::http;
use crate::sink::sns::Sns;
use crate::store::{AttemptRow, EventRow};
use crate::telemetry;
use crate::wire::{self, Vendor};

/// Where one lifecycle's acks are posted, and the key they are signed with. One per lifecycle.
#[derive(Debug)]
pub struct Target {
    pub vendor: Vendor,
    pub url: Arc<str>,
    /// `url`, parsed once for all of the lifecycle's webhooks.
    uri: http::Url,
    /// The signing key (Twilio: the account's auth token; WhatsApp: the app secret).
    pub key: Arc<str>,
    /// What every webhook echoes of the send call, read once per lifecycle.
    pub echo: Arc<Echo>,
    /// The receiver's concurrency limit, looked up on the first attempt.
    limit: std::sync::OnceLock<Arc<HostLimit>>,
    /// Whether the lifecycle was resumed from the store: its webhooks may have attempts already.
    pub resumed: bool,
    /// The lifecycle's previous delivery, done when this resolves: each event is posted only after the
    /// one before it was answered (or given up on), so that a receiver sees a message's statuses in the
    /// lifecycle's order however close together they are due.
    previous: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl Target {
    pub fn new(vendor: Vendor, url: Arc<str>, key: Arc<str>) -> Self {
        Self {
            vendor,
            uri: http::Url::parse(&url),
            url,
            key,
            echo: Arc::new(Echo::Nothing),
            limit: std::sync::OnceLock::new(),
            resumed: false,
            previous: std::sync::Mutex::new(None),
        }
    }

    /// Whether this lifecycle's `status` is called back: as its vendor does, and SES's `Send` once per
    /// message (by its first recipient's lifecycle).
    pub fn calls_back(&self, status: crate::model::Status) -> bool {
        let secondary = matches!(&*self.echo, Echo::Ses(s) if s.index > 0);
        self.vendor.calls_back(status) && !(secondary && status == crate::model::Status::Send)
    }
}

/// What a lifecycle's webhooks echo of its send call ([`crate::plan::Callback::data`], parsed).
#[derive(Debug)]
pub enum Echo {
    Nothing,
    /// WhatsApp's `biz_opaque_callback_data`.
    Text(Arc<str>),
    Sendgrid(wire::sendgrid::Sent),
    Ses(wire::ses::Sent),
}

impl Echo {
    fn of(vendor: Vendor, data: Option<&str>) -> Self {
        let Some(data) = data else { return Echo::Nothing };
        let parsed = match vendor {
            Vendor::Whatsapp => Some(Echo::Text(data.into())),
            Vendor::Sendgrid => serde_json::from_str(data).ok().map(Echo::Sendgrid),
            Vendor::Ses => serde_json::from_str(data).ok().map(Echo::Ses),
            Vendor::Twilio => None,
        };
        parsed.unwrap_or(Echo::Nothing)
    }
}

/// An event that goes to the ack topic and to a webhook: stored once both are done, with the ack's
/// position in Kafka, and not at all when the Kafka side failed (the resumed lifecycle sends it again).
#[derive(Debug, Default)]
pub struct Joint {
    left: AtomicU8,
    failed: AtomicBool,
    kafka_at: std::sync::Mutex<Option<(i32, i64)>>,
}

impl Joint {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { left: AtomicU8::new(2), ..Default::default() })
    }

    /// The Kafka side delivered the event at `partition`/`offset`.
    pub fn kafka_delivered(&self, partition: i32, offset: i64) {
        *self.kafka_at.lock().expect("joint lock") = Some((partition, offset));
    }

    /// One side could not deliver: the event is not stored.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// One side is done; whether it was the last and the event is to be stored, with its Kafka position.
    pub fn finish(&self) -> Option<(i32, i64)> {
        let last = self.left.fetch_sub(1, Ordering::AcqRel) == 1;
        (last && !self.failed.load(Ordering::Acquire))
            .then(|| self.kafka_at.lock().expect("joint lock").unwrap_or((-1, -1)))
    }
}

/// The outcome of one delivery attempt.
enum Attempt {
    Delivered,
    /// The receiver answered, but not 2xx.
    Refused(u16),
    /// No answer: connection refused or reset, or the timeout.
    Unreachable(String),
}

/// Cheap to clone (one reference count: a clone goes with every delivery); the lifecycles share one.
#[derive(Clone)]
pub struct WebhookSender {
    inner: Arc<Inner>,
}

struct Inner {
    client: http::Client,
    room: Arc<Semaphore>,
    max_in_flight: usize,
    delivered: mpsc::UnboundedSender<EventRow>,
    unforwarded: Arc<AtomicI64>,
    in_flight: AtomicI64,
    /// Where deliveries run: an arbiter of their own, so that shutdown can let them finish.
    arbiter: ArbiterHandle,
    time_scale: f64,
    /// Meta's verification handshake, per URL.
    handshakes: std::sync::Mutex<std::collections::HashMap<String, Arc<Handshake>>>,
    verify_token: Arc<str>,
    /// Open batches by URL (SendGrid).
    batches: std::sync::Mutex<std::collections::HashMap<String, OpenBatch>>,
    /// What SendGrid's event webhooks are signed with.
    sendgrid_key: p256::ecdsa::SigningKey,
    /// SNS's signer and subscriptions (SES events), and how SES events go out.
    sns: Arc<Sns>,
    ses_delivery: SesDelivery,
    /// SNS's subscription handshake, per URL.
    subscriptions: std::sync::Mutex<std::collections::HashMap<String, Arc<Handshake>>>,
    /// How long a receiver has to confirm an SNS subscription.
    confirm_within: Duration,
    /// Requests under way per receiver (scheme, host and port), each with a limit of its own.
    limits: std::sync::Mutex<std::collections::HashMap<String, Arc<HostLimit>>>,
    /// Where every attempt is stored; none: logged and counted only.
    attempts: Option<AttemptLog>,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender").field("max_in_flight", &self.inner.max_in_flight).finish()
    }
}

impl WebhookSender {
    /// A sender running its deliveries on `arbiter`, retrying on the scenario's `time_scale`, signing SNS
    /// messages with `sns`, storing every attempt in `store`; delivered events arrive on the returned
    /// receiver.
    pub fn new(
        arbiter: ArbiterHandle,
        time_scale: f64,
        http: &crate::config::HttpSettings,
        sns: Arc<Sns>,
        store: Option<crate::store::Store>,
    ) -> (Self, mpsc::UnboundedReceiver<EventRow>) {
        let attempts = store.map(|s| AttemptLog::new(s, &arbiter));
        let (max_in_flight, timeout) = (http.webhooks_in_flight, Duration::from_millis(http.webhook_timeout_ms));
        let (tx, rx) = mpsc::unbounded_channel();
        let client = http::Client::new(max_in_flight, timeout);
        let sender = Self {
            inner: Arc::new(Inner {
                client,
                room: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                delivered: tx,
                unforwarded: Arc::new(AtomicI64::new(0)),
                in_flight: AtomicI64::new(0),
                arbiter,
                time_scale,
                handshakes: Default::default(),
                verify_token: http.whatsapp.verify_token.as_str().into(),
                batches: Default::default(),
                sendgrid_key: sendgrid_key(http),
                sns,
                ses_delivery: http.ses.delivery,
                subscriptions: Default::default(),
                confirm_within: timeout,
                limits: Default::default(),
                attempts,
            }),
        };
        // Sends SendGrid's batches whose wait is over.
        let ticker = sender.clone();
        sender.inner.arbiter.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                ticker.send_due_batches();
            }
        });
        (sender, rx)
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// Wait until every attempt made so far is stored.
    pub async fn flush_attempts(&self) {
        if let Some(log) = &self.inner.attempts {
            log.flush().await;
        }
    }

    /// Deliveries under way.
    pub fn in_flight(&self) -> i64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Delivered events still on their way to the persister's mailbox.
    pub fn unforwarded(&self) -> i64 {
        self.inner.unforwarded.load(Ordering::SeqCst)
    }

    /// The counter and room [`crate::sink::kafka::forward_deliveries`] hands back.
    pub fn forwarding(&self) -> (Arc<AtomicI64>, Arc<Semaphore>) {
        (self.inner.unforwarded.clone(), self.inner.room.clone())
    }

    /// Room for one more delivery, waiting while [`max_in_flight`](Self::max_in_flight) are under way.
    pub async fn room(&self) -> OwnedSemaphorePermit {
        let t = Instant::now();
        let permit = self.inner.room.clone().acquire_owned().await.expect("never closed");
        if t.elapsed() > Duration::from_millis(1) {
            telemetry::backpressure("webhooks", t.elapsed());
        }
        permit
    }

    /// Deliver `event` to `target` (its room taken); `joint` when it also goes to Kafka. Posted after
    /// the lifecycle's previous event was done; alone, or in the vendor's batch (SendGrid).
    pub fn deliver(
        &self,
        permit: OwnedSemaphorePermit,
        event: AckEvent,
        recipient: Arc<str>,
        target: Arc<Target>,
        joint: Option<Arc<Joint>>,
    ) {
        let t = target.clone();
        self.after_previous(&t, move |this, done| async move {
            let item = Pending { event, recipient, echo: target.echo.clone(), permit, joint, done: Some(done) };
            if target.vendor == Vendor::Sendgrid {
                this.batch(target, item);
            } else {
                this.post(target, vec![item]).await;
            }
        });
    }

    /// Run `then` once the lifecycle's previous event is done with, counted in flight; it gets the signal
    /// to give when this event is done with.
    fn after_previous<F>(
        &self,
        target: &Target,
        then: impl FnOnce(Self, tokio::sync::oneshot::Sender<()>) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let (done, next) = tokio::sync::oneshot::channel();
        let previous = target.previous.lock().expect("order lock").replace(next);
        let this = self.clone();
        self.inner.arbiter.spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            then(this, done).await
        });
    }

    /// Add an item to its URL's open batch; the batch goes out when full, or from the ticker once its
    /// wait is over.
    fn batch(&self, target: Arc<Target>, mut item: Pending) {
        // The batches keep the order: the lifecycle's next event may join this batch or a later one.
        if let Some(done) = item.done.take() {
            let _ = done.send(());
        }
        let full = {
            let mut open = self.inner.batches.lock().expect("batch lock");
            let b = open.entry(target.url.to_string()).or_insert_with(|| OpenBatch {
                target: target.clone(),
                items: Vec::new(),
                since: Instant::now(),
                turn: Arc::default(),
            });
            if b.items.is_empty() {
                b.since = Instant::now();
            }
            b.items.push(item);
            (b.items.len() >= SENDGRID_BATCH_EVENTS).then(|| (std::mem::take(&mut b.items), b.turn.clone()))
        };
        if let Some((items, turn)) = full {
            self.post_in_turn(target, items, turn);
        }
    }

    /// Send every open batch now (shutdown).
    pub fn send_open_batches(&self) {
        self.send_batches(Duration::ZERO);
    }

    /// Send the batches whose wait is over.
    fn send_due_batches(&self) {
        self.send_batches(Duration::from_secs(30).mul_f64(self.inner.time_scale.max(0.0)));
    }

    /// Send the batches open for `wait` or longer.
    fn send_batches(&self, wait: Duration) {
        let due: Vec<(Arc<Target>, Vec<Pending>, Turn)> = {
            let mut open = self.inner.batches.lock().expect("batch lock");
            open.values_mut()
                .filter(|b| !b.items.is_empty() && b.since.elapsed() >= wait)
                .map(|b| (b.target.clone(), std::mem::take(&mut b.items), b.turn.clone()))
                .collect()
        };
        for (target, items, turn) in due {
            self.post_in_turn(target, items, turn);
        }
    }

    /// Post a batch after the URL's batches before it: one batch per URL at a time, in order, so that a
    /// lifecycle's events in two batches arrive in order.
    fn post_in_turn(&self, target: Arc<Target>, items: Vec<Pending>, turn: Turn) {
        let this = self.clone();
        self.inner.arbiter.spawn(async move {
            let _turn = turn.lock().await;
            this.post(target, items).await
        });
    }

    /// Post `items` as one webhook, retrying as the vendor does; then each is done.
    async fn post(&self, target: Arc<Target>, mut items: Vec<Pending>) {
        let mut attempt = 1u32;
        if target.resumed {
            let Some(resumed) = self.resume(items).await else { return };
            (items, attempt) = resumed;
        }
        let body = self.render(&items, &target);
        let outcome = loop {
            let started = std::time::Instant::now();
            let outcome = self.attempt(&target, &body).await;
            let vendor = target.vendor.as_str();
            telemetry::webhook_attempt(vendor, outcome_label(&outcome));
            telemetry::webhook_took(vendor, started.elapsed());
            let retry = (attempt <= retries(target.vendor, &outcome))
                .then(|| retry_delay(target.vendor, attempt, self.inner.time_scale));
            if retry.is_some() {
                telemetry::webhook_retry(vendor);
            }
            self.store_attempt(&target, &items, attempt, &outcome, retry);
            let Some(delay) = retry else { break outcome };
            tracing::debug!(url = %target.url, attempt, "webhook not delivered; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        match &outcome {
            Attempt::Delivered => {}
            Attempt::Refused(code) => {
                tracing::warn!(url = %target.url, status = code, attempts = attempt, events = items.len(), "webhook refused; the vendor gave up")
            }
            Attempt::Unreachable(e) => {
                tracing::warn!(url = %target.url, error = %e, attempts = attempt, events = items.len(), "webhook receiver unreachable; the vendor gave up")
            }
        }
        for item in items {
            self.done(item);
        }
    }

    /// Go on from the stored attempts of a resumed lifecycle's `items`: those delivered or given up on
    /// before the restart are done with now; the others are posted at the attempt after the last, once
    /// the retry that was due is. `None`: nothing is left to post.
    async fn resume(&self, items: Vec<Pending>) -> Option<(Vec<Pending>, u32)> {
        let Some(log) = &self.inner.attempts else { return Some((items, 1)) };
        let ids: Vec<uuid::Uuid> = items.iter().map(|i| i.event.event_id).collect();
        let last = match log.last(&ids).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stored webhook attempts; posting from the first");
                return Some((items, 1));
            }
        };
        let (finished, open): (Vec<Pending>, Vec<Pending>) = items
            .into_iter()
            .partition(|i| last.get(&i.event.event_id).is_some_and(|l| l.next_attempt_at_us.is_none()));
        for item in finished {
            self.done(item);
        }
        if open.is_empty() {
            return None;
        }
        let latest = open.iter().filter_map(|i| last.get(&i.event.event_id)).max_by_key(|l| l.attempt);
        let attempt = latest.map_or(1, |l| l.attempt.max(0) as u32 + 1);
        if let Some(at) = latest.and_then(|l| l.next_attempt_at_us) {
            let wait = at - chrono::Utc::now().timestamp_micros();
            if wait > 0 {
                tokio::time::sleep(Duration::from_micros(wait as u64)).await;
            }
        }
        Some((open, attempt))
    }

    /// Store one attempt of `items` (one row each), with when the next is due.
    fn store_attempt(
        &self,
        target: &Target,
        items: &[Pending],
        attempt: u32,
        outcome: &Attempt,
        retry: Option<Duration>,
    ) {
        let Some(log) = &self.inner.attempts else { return };
        let now = chrono::Utc::now().timestamp_micros();
        let (http_status, error) = match outcome {
            Attempt::Delivered => (None, None),
            Attempt::Refused(code) => (Some(i32::from(*code)), None),
            Attempt::Unreachable(e) => (None, Some(e.clone())),
        };
        for item in items {
            log.record(AttemptRow {
                event_id: item.event.event_id,
                attempt: attempt as i32,
                payload_id: item.event.payload_id.clone(),
                vendor: target.vendor.as_str(),
                url: target.url.clone(),
                outcome: outcome_label(outcome),
                http_status,
                error: error.clone(),
                attempted_at_us: now,
                next_attempt_at_us: retry.map(|d| now + d.as_micros() as i64),
            });
        }
    }

    /// One event is done with: stored (by whichever side of a joint is last), its room given back.
    fn done(&self, item: Pending) {
        let Pending { event, permit, joint, done, .. } = item;
        let store_at = match &joint {
            Some(j) => j.finish(),
            // An injected copy is not stored: the original's row stands for both, as on Kafka.
            None if event.fault == Some(crate::model::Fault::Duplicate) => None,
            None => Some((-1, -1)),
        };
        match store_at {
            Some((ack_partition, ack_offset)) => {
                self.inner.unforwarded.fetch_add(1, Ordering::SeqCst);
                let row = EventRow { event, ack_partition, ack_offset };
                if self.inner.delivered.send(row).is_err() {
                    self.inner.unforwarded.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                } else {
                    // Given back by the forwarder once the persister has the row.
                    permit.forget();
                }
            }
            None => drop(permit),
        }
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// The webhook's body and headers (its signature among them), the vendor's way.
    fn render(&self, items: &[Pending], target: &Target) -> Body {
        match target.vendor {
            Vendor::Twilio => {
                let item = &items[0];
                let params = wire::twilio::callback_fields(&item.event, &item.recipient);
                let signature = wire::twilio::signature(&target.key, &target.url, &params);
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &params {
                    form.append_pair(k, v);
                }
                Body {
                    content_type: "application/x-www-form-urlencoded",
                    bytes: form.finish().into(),
                    headers: vec![("X-Twilio-Signature", signature)],
                }
            }
            Vendor::Whatsapp => {
                let item = &items[0];
                let mut bytes = Vec::with_capacity(1024);
                let data = match &*target.echo {
                    Echo::Text(t) => Some(&**t),
                    _ => None,
                };
                wire::whatsapp::webhook_with(&item.event, &item.recipient, data, &mut bytes);
                let signature = wire::whatsapp::signature(&target.key, &bytes);
                Body {
                    content_type: "application/json",
                    bytes: bytes.into(),
                    headers: vec![("X-Hub-Signature-256", signature)],
                }
            }
            Vendor::Sendgrid => {
                let mut bytes = Vec::with_capacity(512 * items.len());
                bytes.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        bytes.push(b',');
                    }
                    let sent = match &*item.echo {
                        Echo::Sendgrid(s) => Some(s),
                        _ => None,
                    };
                    wire::sendgrid::event_with(&item.event, &item.recipient, sent, &mut bytes);
                }
                bytes.push(b']');
                let timestamp = chrono::Utc::now().timestamp().to_string();
                let signature = wire::sendgrid::signature(&self.inner.sendgrid_key, &timestamp, &bytes);
                Body {
                    content_type: "application/json",
                    bytes: bytes.into(),
                    headers: vec![
                        ("X-Twilio-Email-Event-Webhook-Signature", signature),
                        ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp),
                    ],
                }
            }
            Vendor::Ses => {
                let item = &items[0];
                let sent = match &*item.echo {
                    Echo::Ses(s) => Some(s),
                    _ => None,
                };
                let mut event = Vec::with_capacity(2048);
                match self.inner.ses_delivery {
                    SesDelivery::Eventbridge => {
                        wire::ses::eventbridge(&item.event, &item.recipient, sent, &mut event);
                        return Body { content_type: "application/json", bytes: event.into(), headers: Vec::new() };
                    }
                    SesDelivery::Sns | SesDelivery::Raw => {
                        wire::ses::event_with(&item.event, &item.recipient, sent, &mut event)
                    }
                }
                let message_id = item.event.event_id.to_string();
                let mut headers = vec![
                    ("x-amz-sns-message-type", "Notification".to_owned()),
                    ("x-amz-sns-message-id", message_id.clone()),
                    ("x-amz-sns-topic-arn", self.inner.sns.topic_arn.clone()),
                    ("x-amz-sns-subscription-arn", format!("{}:understudy", self.inner.sns.topic_arn)),
                ];
                if self.inner.ses_delivery == SesDelivery::Raw {
                    headers.push(("x-amz-sns-rawdelivery", "true".to_owned()));
                    return Body { content_type: "text/plain; charset=UTF-8", bytes: event.into(), headers };
                }
                let message = String::from_utf8(event).expect("JSON is UTF-8");
                let timestamp = wire::iso(chrono::Utc::now());
                let envelope = wire::ses::Envelope {
                    kind: "Notification",
                    message_id: &message_id,
                    topic_arn: &self.inner.sns.topic_arn,
                    message: &message,
                    timestamp: &timestamp,
                    token: None,
                    subscribe_url: None,
                };
                let signature = self.inner.sns.sign(&envelope.string_to_sign());
                let mut bytes = Vec::with_capacity(message.len() + 1024);
                envelope.write(
                    self.inner.sns.signature_version,
                    &signature,
                    &self.inner.sns.cert_url(),
                    &self.inner.sns.unsubscribe_url(),
                    &mut bytes,
                );
                Body { content_type: "text/plain; charset=UTF-8", bytes: bytes.into(), headers }
            }
        }
    }

    /// Store `event` without delivering it (its room taken): a status its vendor does not call back for.
    /// In its lifecycle's order too, after the webhooks before it are done.
    pub fn record(&self, permit: OwnedSemaphorePermit, event: AckEvent, target: Arc<Target>) {
        let echo = target.echo.clone();
        self.after_previous(&target, move |this, done| async move {
            let recipient: Arc<str> = Arc::from("");
            this.done(Pending { event, recipient, echo, permit, joint: None, done: Some(done) });
        });
    }

    async fn attempt(&self, target: &Target, body: &Body) -> Attempt {
        if target.vendor == Vendor::Whatsapp
            && let Err(failed) = self.verified(target).await
        {
            return failed;
        }
        if target.vendor == Vendor::Ses
            && self.inner.ses_delivery == SesDelivery::Sns
            && let Err(failed) = self.subscribed(target).await
        {
            return failed;
        }
        let limit = target.limit.get_or_init(|| self.limit_for(target)).clone();
        let _slot = limit.acquire().await;
        let started = Instant::now();
        let sent = self.inner.client.post(&target.uri, body.content_type, &body.headers, body.bytes.clone()).await;
        limit.sample(started.elapsed(), self.inner.max_in_flight);
        match sent {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered,
            Ok(status) => Attempt::Refused(status),
            Err(e) => Attempt::Unreachable(e),
        }
    }
}

impl WebhookSender {
    /// The limit of the target's receiver (all URLs of one scheme, host and port share it).
    fn limit_for(&self, target: &Target) -> Arc<HostLimit> {
        let key = target.uri.origin().unwrap_or_else(|| target.url.to_string());
        self.inner.limits.lock().expect("limit lock").entry(key).or_insert_with(|| Arc::new(HostLimit::new())).clone()
    }

    /// Meta's verification handshake, once per URL before its first webhook: `GET` with `hub.mode`,
    /// `hub.verify_token` and `hub.challenge`, answered with the challenge.
    async fn verified(&self, target: &Target) -> Result<(), Attempt> {
        let retry_after = Duration::from_secs(15);
        Self::once_per_url(
            &self.inner.handshakes,
            target,
            self.scaled(retry_after),
            "the verification handshake failed",
            || self.handshake(target),
        )
        .await
    }

    /// SNS's subscription, once per URL before its first notification: a signed
    /// `SubscriptionConfirmation`, then the receiver's visit to its SubscribeURL.
    async fn subscribed(&self, target: &Target) -> Result<(), Attempt> {
        let retry_after = Duration::from_secs(20);
        Self::once_per_url(
            &self.inner.subscriptions,
            target,
            self.scaled(retry_after),
            "the SNS subscription is not confirmed",
            || self.subscribe(target),
        )
        .await
    }

    /// `d` on the scenario's time scale, at least 10 ms.
    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.inner.time_scale.max(0.0)).max(Duration::from_millis(10))
    }

    /// Run a vendor's handshake with the target's URL once: one at a time per URL; a failed one is not
    /// tried again for `retry_after` (the deliveries waiting for it fail at once with `failed`, and retry
    /// on their own schedule).
    async fn once_per_url<F, Fut>(
        map: &std::sync::Mutex<std::collections::HashMap<String, Arc<Handshake>>>,
        target: &Target,
        retry_after: Duration,
        failed: &str,
        run: F,
    ) -> Result<(), Attempt>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), Attempt>>,
    {
        let handshake = map.lock().expect("handshake lock").entry(target.url.to_string()).or_default().clone();
        if handshake.done.initialized() {
            return Ok(());
        }
        handshake
            .done
            .get_or_try_init(|| async {
                let failed_at = *handshake.failed_at.lock().expect("handshake lock");
                if failed_at.is_some_and(|at| at.elapsed() < retry_after) {
                    return Err(Attempt::Unreachable(failed.to_owned()));
                }
                let r = run().await;
                if r.is_err() {
                    *handshake.failed_at.lock().expect("handshake lock") = Some(Instant::now());
                }
                r
            })
            .await
            .map(|_| ())
    }

    async fn subscribe(&self, target: &Target) -> Result<(), Attempt> {
        if self.inner.sns.is_confirmed(&target.url) {
            return Ok(());
        }
        let (token, subscribe_url) = self.inner.sns.new_subscription(&target.url);
        let message = format!(
            "You have chosen to subscribe to the topic {}.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
            self.inner.sns.topic_arn
        );
        let (message_id, timestamp) = (uuid::Uuid::new_v4().to_string(), wire::iso(chrono::Utc::now()));
        let envelope = wire::ses::Envelope {
            kind: "SubscriptionConfirmation",
            message_id: &message_id,
            topic_arn: &self.inner.sns.topic_arn,
            message: &message,
            timestamp: &timestamp,
            token: Some(&token),
            subscribe_url: Some(&subscribe_url),
        };
        let signature = self.inner.sns.sign(&envelope.string_to_sign());
        let mut body = Vec::with_capacity(1024);
        envelope.write(self.inner.sns.signature_version, &signature, &self.inner.sns.cert_url(), "", &mut body);
        let headers = [
            ("x-amz-sns-message-type", "SubscriptionConfirmation".to_owned()),
            ("x-amz-sns-message-id", message_id.clone()),
            ("x-amz-sns-topic-arn", self.inner.sns.topic_arn.to_string()),
        ];
        let sent = self.inner.client.post(&target.uri, "text/plain; charset=UTF-8", &headers, body.into()).await;
        telemetry::webhook_attempt("ses", if sent.is_ok() { "subscription" } else { "unreachable" });
        if let Err(e) = sent {
            return Err(Attempt::Unreachable(e));
        }
        if self.inner.sns.confirmed(&token, self.inner.confirm_within).await {
            tracing::info!(url = %target.url, "SNS subscription confirmed");
            Ok(())
        } else {
            tracing::warn!(url = %target.url, "the webhook receiver did not visit the SubscribeURL; SES events wait");
            Err(Attempt::Unreachable("the SNS subscription was not confirmed".into()))
        }
    }

    async fn handshake(&self, target: &Target) -> Result<(), Attempt> {
        let challenge = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let mut url = url::Url::parse(&target.url).map_err(|e| Attempt::Unreachable(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.verify_token", &self.inner.verify_token)
            .append_pair("hub.challenge", &challenge);
        match self.inner.client.get(&http::Url::parse(url.as_str())).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                if String::from_utf8_lossy(&body).trim() != challenge {
                    tracing::warn!(url = %target.url, "the webhook receiver did not answer the verification challenge");
                    return Err(Attempt::Refused(200));
                }
                Ok(())
            }
            Ok((status, _)) => Err(Attempt::Refused(status)),
            Err(e) => Err(Attempt::Unreachable(e)),
        }
    }
}

fn outcome_label(a: &Attempt) -> &'static str {
    match a {
        Attempt::Delivered => "delivered",
        Attempt::Refused(_) => "refused",
        Attempt::Unreachable(_) => "unreachable",
    }
}

/// The key SendGrid's webhooks are signed with: `http.sendgrid.signing_key_pem`, or one made for this
/// run (its verification key is logged).
fn sendgrid_key(http: &crate::config::HttpSettings) -> p256::ecdsa::SigningKey {
    use p256::pkcs8::DecodePrivateKey as _;
    let key = match http.sendgrid.signing_key_pem.as_deref() {
        Some(pem) => p256::ecdsa::SigningKey::from_pkcs8_pem(pem).expect("checked with the settings"),
        None => loop {
            let bytes: [u8; 32] = rand::random();
            if let Ok(k) = p256::ecdsa::SigningKey::from_bytes(&bytes.into()) {
                break k;
            }
        },
    };
    if http.sendgrid.webhook_url.is_some() {
        tracing::info!(verification_key = %wire::sendgrid::verification_key(&key), "SendGrid event webhooks are signed; check them with this verification key");
    }
    key
}

/// Retries after a failed attempt: Twilio retries once, after a connection failure only; Meta and
/// SendGrid retry any failure, backing off (for days, or 24 hours; here 8 times); SNS 3 times.
fn retries(vendor: Vendor, outcome: &Attempt) -> u32 {
    match (vendor, outcome) {
        (_, Attempt::Delivered) => 0,
        (Vendor::Twilio, Attempt::Unreachable(_)) => 1,
        (Vendor::Twilio, Attempt::Refused(_)) => 0,
        (Vendor::Whatsapp | Vendor::Sendgrid, _) => 8,
        (Vendor::Ses, _) => 3,
    }
}

/// The wait before retry `n` (1, 2, …), scaled like the scenario's delays (at least 1 ms).
fn retry_delay(vendor: Vendor, n: u32, time_scale: f64) -> Duration {
    let base = match vendor {
        Vendor::Twilio => Duration::from_secs(1),
        Vendor::Whatsapp => Duration::from_secs(15) * 2u32.pow(n.saturating_sub(1).min(10)),
        Vendor::Sendgrid => Duration::from_secs(10) * 2u32.pow(n.saturating_sub(1).min(10)),
        // SNS's default HTTP delivery policy: 3 retries, 20 s apart.
        Vendor::Ses => Duration::from_secs(20),
    };
    base.mul_f64(time_scale.max(0.0)).max(Duration::from_millis(1))
}

struct Body {
    content_type: &'static str,
    bytes: bytes::Bytes,
    /// The vendor's headers: its signature, and what the signature covers.
    headers: Vec<(&'static str, String)>,
}

/// An event waiting for its delivery.
struct Pending {
    event: AckEvent,
    recipient: Arc<str>,
    /// Its lifecycle's [`Target::echo`].
    echo: Arc<Echo>,
    permit: OwnedSemaphorePermit,
    joint: Option<Arc<Joint>>,
    /// Told when the event is done with (or, in a batch, once it has its place): the lifecycle's next
    /// event may go.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How many requests go to one receiver at once. The limit adapts as TCP Vegas does: while the requests
/// of a window (as many as the limit) take not much longer than the fastest seen, it grows (doubling
/// while they take no longer); once they take more than twice as long, the receiver is queueing and it
/// shrinks. A fast receiver is then served over a few dozen kept-alive connections instead of one per
/// delivery waiting (measured: 20,000 webhooks/s with 10,000 connections, against 42,000 with 256), and
/// a slow one gets as many at once as `http.webhooks_in_flight` allows (a receiver answering in 500 ms
/// needs 10,000 at once for 20,000/s). Requests get their slots in the order they asked for them.
#[derive(Debug)]
struct HostLimit {
    /// As many permits as the limit (FIFO: requests go in the order they asked).
    slots: Arc<Semaphore>,
    limit: std::sync::atomic::AtomicUsize,
    window: std::sync::Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    min_rtt: Duration,
    sum: Duration,
    samples: usize,
}

/// The smallest limit: enough for any receiver to be worth a try.
const MIN_LIMIT: usize = 16;

impl HostLimit {
    fn new() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MIN_LIMIT)),
            limit: std::sync::atomic::AtomicUsize::new(MIN_LIMIT),
            window: std::sync::Mutex::new(Window { min_rtt: Duration::MAX, sum: Duration::ZERO, samples: 0 }),
        }
    }

    /// A slot for one request, waiting (in turn) while the limit is reached.
    async fn acquire(&self) -> OwnedSemaphorePermit {
        self.slots.clone().acquire_owned().await.expect("never closed")
    }

    /// One request took `rtt`; at the end of a window, the limit moves.
    fn sample(&self, rtt: Duration, max: usize) {
        let mut w = self.window.lock().expect("limit lock");
        w.min_rtt = w.min_rtt.min(rtt);
        w.sum += rtt;
        w.samples += 1;
        let limit = self.limit.load(Ordering::Acquire);
        if w.samples < limit {
            return;
        }
        let avg = w.sum / w.samples as u32;
        // A millisecond of tolerance: a receiver answering in microseconds is not congested at 1 ms.
        let base = w.min_rtt + Duration::from_millis(1);
        let next = if avg <= base + base / 4 {
            limit * 2
        } else if avg <= base * 2 {
            limit + limit / 4
        } else {
            limit * 3 / 4
        };
        let next = next.clamp(MIN_LIMIT, max.max(MIN_LIMIT));
        let next = if next >= limit {
            self.slots.add_permits(next - limit);
            next
        } else {
            // Only free permits can go; the limit is what is left.
            limit - self.slots.forget_permits(limit - next)
        };
        self.limit.store(next, Ordering::Release);
        (w.sum, w.samples) = (Duration::ZERO, 0);
    }
}

/// The state of Meta's verification handshake with one URL.
#[derive(Default)]
struct Handshake {
    done: tokio::sync::OnceCell<()>,
    failed_at: std::sync::Mutex<Option<Instant>>,
}

/// Events gathered for one URL (SendGrid).
struct OpenBatch {
    target: Arc<Target>,
    items: Vec<Pending>,
    since: Instant,
    /// Held while one of this URL's batches is being posted.
    turn: Turn,
}

/// A URL's turn to post a batch.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// Events per SendGrid webhook, at most (SendGrid: about 30 s or 768 KB, whichever comes first).
const SENDGRID_BATCH_EVENTS: usize = 1000;

/// The signing keys of the vendors' accounts, by tenant (Twilio: account SID → auth token).
#[derive(Debug, Default)]
pub struct Keys {
    pub twilio: std::collections::HashMap<String, Arc<str>>,
    pub whatsapp_app_secret: Arc<str>,
}

impl Keys {
    pub fn from_settings(http: &crate::config::HttpSettings) -> Self {
        let twilio = http.twilio.accounts.iter().map(|a| (a.sid.clone(), Arc::from(a.auth_token.as_str()))).collect();
        Self { twilio, whatsapp_app_secret: http.whatsapp.app_secret.as_str().into() }
    }

    /// The target of `callback` for a message of `tenant`. An account with no configured key signs with
    /// an empty one.
    pub fn target(&self, callback: &crate::plan::Callback, tenant: Option<&str>, resumed: bool) -> Target {
        let key = match callback.vendor {
            Vendor::Twilio => tenant.and_then(|t| self.twilio.get(t)).cloned(),
            Vendor::Whatsapp => Some(self.whatsapp_app_secret.clone()),
            Vendor::Sendgrid | Vendor::Ses => None,
        };
        let mut target = Target::new(callback.vendor, callback.url.clone(), key.unwrap_or_else(|| Arc::from("")));
        target.echo = Arc::new(Echo::of(callback.vendor, callback.data.as_deref()));
        target.resumed = resumed;
        target
    }
}
