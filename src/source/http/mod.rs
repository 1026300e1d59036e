//! The vendors' HTTP front doors: their own REST APIs at their own paths, on `http.listen_addr`. A door
//! parses and checks a request the vendor's way, turns it into the same [`Outbound`] the Kafka consumer
//! makes, and answers only once the message is durable in the store (many requests share one write).
//! Errors are the vendor's own, with its HTTP statuses; no request can stop the server.
//!
//! Every message a door takes is stored under this instance's source key (`http.instance`): a restart
//! under the same name resumes their lifecycles, as a partition's new owner does for Kafka.
//!
//! - [`twilio`]: Twilio Programmable Messaging.
//! - [`whatsapp`]: the WhatsApp Cloud API.
//! - [`sendgrid`]: SendGrid's Mail Send API.
//! - [`ses`]: Amazon SES (API v2), and SNS's certificate and SubscribeURL for its events.
//!
//! [`limit`] holds the vendors' rate limits all doors answer 429 by.

pub mod limit;
pub mod sendgrid;
pub mod ses;
pub mod twilio;
pub mod whatsapp;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use actix::Addr;
use actix_web::{App, HttpServer, web};
use chrono::Utc;
use futures::StreamExt;

use crate::actors::channel::{Accept, ChannelActor, Refuse, Resume, Taken};
use crate::config::HttpSettings;
use crate::kafka::offsets::{Assignments, Claim};
use crate::model::{Channel, Outbound, SourcePosition};
use crate::plan::{Callback, Plan, PlannedStep};
use crate::scenario::Scenario;
use crate::store::{Store, StoreError};

/// The source topic every front door's messages are stored under; not a legal Kafka topic name, so it
/// never meets a consumed one.
pub const SOURCE_TOPIC: &str = "understudy:http";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on `{addr}` for the front doors: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the control API's run settings: {0}")]
    Control(std::io::Error),
}

/// What every door shares: where messages go, and how they are numbered.
pub struct Door {
    channels: [Addr<ChannelActor>; 3],
    scenario: tokio::sync::watch::Receiver<Arc<Scenario>>,
    claim: Claim,
    topic: Arc<str>,
    topic_id: Arc<str>,
    next_offset: AtomicI64,
    /// Requests seen per key, for ids that are the same on every rerun ([`Door::payload_id`]).
    keys: Mutex<HashMap<u64, u32>>,
    settings: HttpSettings,
    /// SNS's signer, whose certificate and SubscribeURL the SES door serves.
    sns: Arc<crate::sink::sns::Sns>,
    /// Where the doors look up the messages they took (Twilio's fetch).
    store: Store,
    limits: limit::RateLimits,
    /// Striped over lifecycle keys: a call with a key waits while another with the same key is under
    /// way, so that a repeated key always finds the first call's messages.
    key_locks: Box<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Door::key_locks`].
const KEY_STRIPES: usize = 256;

/// One message of a request.
pub struct Item {
    pub payload_id: String,
    pub recipient: Arc<str>,
    pub callback: Option<Callback>,
}

/// Why a taken message got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// The scenario has no behaviour for the message's channel.
    NoBehaviour,
    /// The pipeline is stopping: nothing was made durable.
    Unavailable,
}

impl Door {
    /// The door of this instance: claims its source partition, numbers on from what the store holds,
    /// and resumes the unfinished lifecycles stored under it.
    pub async fn open(
        settings: &HttpSettings,
        store: &Store,
        assignments: &Assignments,
        channels: [Addr<ChannelActor>; 3],
        scenario: tokio::sync::watch::Receiver<Arc<Scenario>>,
        sns: Arc<crate::sink::sns::Sns>,
    ) -> Result<Arc<Self>, HttpError> {
        let topic_id: Arc<str> = format!("http/{}", settings.instance_or_host()).into();
        assignments.assign(SOURCE_TOPIC, 0);
        let claim = assignments.claim(SOURCE_TOPIC, 0).expect("just assigned");
        let next = store.max_offset(SOURCE_TOPIC, &topic_id, 0).await? + 1;
        let pending = store.pending(SOURCE_TOPIC, &topic_id, 0).await?;
        // The counters go on from what is stored, so that no id is given twice under this instance.
        let mut keys = HashMap::new();
        for id in store.payload_ids(SOURCE_TOPIC, &topic_id).await? {
            let mut parts = id.rsplitn(3, '-');
            let (Some(n), Some(key)) = (parts.next().and_then(|n| n.parse::<u32>().ok()), parts.next()) else {
                continue;
            };
            if let Ok(key) = u64::from_str_radix(key, 16) {
                let seen = keys.entry(key).or_insert(0);
                *seen = (*seen).max(n);
            }
        }
        if !pending.is_empty() {
            tracing::info!(source = %topic_id, lifecycles = pending.len(), "resuming unfinished lifecycles of the front doors");
        }
        let mut by_channel: [Vec<_>; 3] = Default::default();
        for p in pending {
            by_channel[p.message.outbound.channel.index()].push(p);
        }
        for (i, list) in by_channel.into_iter().enumerate() {
            if !list.is_empty() {
                let _ = channels[i].send(Resume { claim: claim.clone(), lifecycles: list }).await;
            }
        }
        Ok(Arc::new(Self {
            channels,
            scenario,
            claim,
            topic: SOURCE_TOPIC.into(),
            topic_id,
            next_offset: AtomicI64::new(next),
            keys: Mutex::new(keys),
            settings: settings.clone(),
            sns,
            store: store.clone(),
            limits: limit::RateLimits::new(&settings.rate_limits),
            key_locks: (0..KEY_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }))
    }

    /// A payload id that is the same on every rerun of the same test: the vendor's name, a hash of the
    /// fields that make the request what it is, and how many requests with that hash came before.
    pub fn payload_id(&self, vendor: &str, fields: &[&[u8]]) -> String {
        let key = fields_hash(fields);
        let n = {
            let mut keys = self.keys.lock().expect("key lock");
            let n = keys.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        format!("{vendor}-{key:016x}-{n}")
    }

    /// A send call of `tenant` to `vendor`, costing `cost` (SES: its recipients), against
    /// `http.rate_limits`: `None` when no limit applies; a refusal is counted.
    pub fn quota(&self, vendor: crate::wire::Vendor, tenant: &str, cost: usize) -> Option<limit::Quota> {
        let q = self.limits.check(vendor, tenant, cost as f64)?;
        if !q.allowed {
            crate::telemetry::rate_limited(vendor.as_str());
        }
        Some(q)
    }

    /// The payload id of a lifecycle key the request gave (`http.<vendor>.lifecycle_key`): the vendor's
    /// name, a hash of the key's fields, and `k`. The same key is the same message, on every call.
    pub fn keyed_payload_id(&self, vendor: &str, fields: &[&[u8]]) -> String {
        format!("{vendor}-{:016x}-k", fields_hash(fields))
    }

    /// Hold the locks of these keyed payload ids until the guards drop (in stripe order, so that two
    /// calls never wait for each other).
    async fn lock_keys(&self, payload_ids: &[&str]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> =
            payload_ids.iter().map(|id| xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as usize % KEY_STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.key_locks[s].lock().await);
        }
        guards
    }

    /// Of a request's keyed payload ids, the messages an earlier call took ([`Store::taken_messages`]),
    /// looked up under the keys' locks, which the returned guards hold until the request is answered.
    pub async fn repeated(
        &self,
        keyed: &[String],
    ) -> Result<(Vec<tokio::sync::MutexGuard<'_, ()>>, Vec<crate::store::StoredMessage>), StoreError> {
        if keyed.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let held = self.lock_keys(&keyed.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let taken = self.store.taken_messages(keyed).await?;
        Ok((held, taken))
    }

    /// The next source position of this instance.
    fn position(&self) -> SourcePosition {
        SourcePosition {
            topic: self.topic.clone(),
            topic_id: self.topic_id.clone(),
            partition: 0,
            offset: self.next_offset.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Take one message: planned, durable, its lifecycle started; what it came to comes back. A REJECT
    /// is the send call's error.
    #[allow(clippy::too_many_arguments)]
    pub async fn take(
        &self,
        channel: Channel,
        payload_id: String,
        batch_id: &str,
        recipient: &str,
        tenant_id: &str,
        body: Vec<u8>,
        callback: Option<Callback>,
    ) -> Result<Taken, NotTaken> {
        let item = Item { payload_id, recipient: recipient.into(), callback };
        let mut taken = self.take_all(channel, batch_id, tenant_id, body.into(), vec![item], Refuse::Rejects).await?;
        taken.pop().flatten().ok_or(NotTaken::NoBehaviour)
    }

    /// Take the messages of one request (SendGrid: one per recipient), durable together; what each came
    /// to comes back, in order. The first message keeps the request's body; the others, of the same
    /// batch, are stored without it (a 1 MB request to 1,000 recipients is not stored 1,000 times).
    pub async fn take_all(
        &self,
        channel: Channel,
        batch_id: &str,
        tenant_id: &str,
        body: bytes::Bytes,
        items: Vec<Item>,
        refuse: Refuse,
    ) -> Result<Vec<Option<Taken>>, NotTaken> {
        let (batch_id, tenant_id): (Arc<str>, Arc<str>) = (batch_id.into(), tenant_id.into());
        let received_at = Utc::now();
        let batch = items
            .into_iter()
            .enumerate()
            .map(|(n, i)| {
                let outbound = Outbound {
                    source: self.position(),
                    payload_id: i.payload_id.into(),
                    batch_id: batch_id.clone(),
                    channel,
                    recipient: i.recipient,
                    tenant_id: Some(tenant_id.clone()),
                    headers: Vec::new(),
                    rule_headers: Vec::new(),
                    body: if n == 0 { body.to_vec() } else { Vec::new() },
                    received_at,
                };
                (outbound, i.callback)
            })
            .collect();
        let scenario = self.scenario.borrow().clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let accept = Accept { scenario, claim: self.claim.clone(), batch, reply, refuse };
        self.channels[channel.index()].send(accept).await.map_err(|_| NotTaken::Unavailable)?;
        answer.await.map_err(|_| NotTaken::Unavailable)
    }
}

fn fields_hash(fields: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in fields {
        h.update(&(f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.digest()
}

/// A request header's value, when the door's lifecycle key is one and the request has it.
pub fn header_key<'a>(req: &'a actix_web::HttpRequest, key: Option<&crate::config::LifecycleKey>) -> Option<&'a str> {
    match key {
        Some(crate::config::LifecycleKey::Header(name)) => {
            req.headers().get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
        }
        _ => None,
    }
}

/// The plan of a message a door took, or the vendor's error: `refused` for a REJECT that is the send
/// call's answer, `not_taken` when the message was not taken.
pub fn plan_or<E>(
    taken: Result<Taken, NotTaken>,
    refused: impl FnOnce(&PlannedStep) -> E,
    not_taken: impl FnOnce(NotTaken) -> E,
) -> Result<Plan, E> {
    match taken {
        Ok(Taken { refused: Some(step), .. }) => Err(refused(&step)),
        Ok(Taken { plan, refused: None, .. }) => Ok(plan),
        Err(n) => Err(not_taken(n)),
    }
}

/// A JSON answer with status `status` (400 if it is no HTTP status); `challenge`, the vendor's
/// `WWW-Authenticate` on a 401.
pub fn json_answer(status: u16, body: Vec<u8>, challenge: Option<&str>) -> actix_web::HttpResponse {
    use actix_web::http::StatusCode;
    let mut r = actix_web::HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST));
    if let Some(c) = challenge.filter(|_| status == 401) {
        r.insert_header(("WWW-Authenticate", c));
    }
    r.content_type("application/json").body(body)
}

/// Whether the request's Bearer token is one of `accepted` (any non-empty token when none are set),
/// compared in constant time.
pub fn bearer_accepted(req: &actix_web::HttpRequest, accepted: &[String]) -> bool {
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => {
            accepted.is_empty()
                || accepted.iter().any(|t| crate::wire::constant_time_eq(t.as_bytes(), token.as_bytes()))
        }
        None => false,
    }
}

/// Read a request body of at most `limit` bytes; `None` when it is larger.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Option<web::Bytes>, actix_web::Error> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The vendor whose API a request path belongs to, as a metric label; `other` for none of them.
fn vendor_of_path(path: &str) -> &'static str {
    use crate::wire::Vendor;
    let twilio = path.strip_prefix('/').and_then(|p| p.strip_prefix(crate::wire::twilio::API_VERSION));
    let vendor = if twilio.is_some_and(|rest| rest.starts_with('/')) {
        Some(Vendor::Twilio)
    } else if path.starts_with("/v3/") {
        Some(Vendor::Sendgrid)
    } else if path.starts_with("/v2/email/") || path.starts_with(crate::sink::sns::PATH) {
        Some(Vendor::Ses)
    } else {
        // Meta's Graph API: `/v{NN}.0/…`.
        let version = path.strip_prefix("/v").and_then(|p| p.split_once('/')).map(|(v, _)| v);
        version
            .and_then(|v| v.strip_suffix(".0"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|_| Vendor::Whatsapp)
    };
    vendor.map_or("other", Vendor::as_str)
}

/// The running server; [`Server::stop`] ends it gracefully.
pub struct Server {
    handle: actix_web::dev::ServerHandle,
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Serve every door on `http.listen_addr`.
    pub fn start(door: Arc<Door>, control: Option<crate::control::Control>) -> Result<Self, HttpError> {
        let control = control.map(web::Data::new);
        let addr = door.settings.listen_addr.expect("started only with a listen address");
        let workers = door.settings.workers;
        let sns = door.sns.clone();
        let data = web::Data::from(door);
        let server = HttpServer::new(move || {
            App::new()
                .wrap_fn(|req, srv| {
                    use actix_web::dev::Service as _;
                    let (vendor, started) = (vendor_of_path(req.path()), std::time::Instant::now());
                    let answer = srv.call(req);
                    async move {
                        let answer = answer.await;
                        let status = match &answer {
                            Ok(r) => r.status(),
                            Err(e) => e.as_response_error().status_code(),
                        };
                        crate::telemetry::http_request(vendor, status.as_u16(), started.elapsed());
                        answer
                    }
                })
                .app_data(data.clone())
                .configure(twilio::routes)
                .configure(whatsapp::routes)
                .configure(sendgrid::routes)
                .configure(ses::routes)
                .configure(|cfg| {
                    if let Some(c) = &control {
                        crate::control::routes(cfg, c.clone());
                    }
                })
                .default_service(web::to(twilio::not_found))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5)
        .bind(addr)
        .map_err(|source| HttpError::Bind { addr, source })?;
        let addr = server.addrs().first().copied().unwrap_or(addr);
        sns.listening_on(addr);
        let server = server.run();
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the front doors' server stopped");
            }
        });
        tracing::info!(%addr, "front doors listening");
        Ok(Self { handle, addr })
    }

    /// Stop taking requests, finish the ones under way.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::vendor_of_path;

    #[test]
    fn a_request_is_counted_for_the_vendor_whose_path_it_asks_for() {
        assert_eq!(vendor_of_path("/2010-04-01/Accounts/AC1/Messages.json"), "twilio");
        assert_eq!(vendor_of_path("/v3/mail/send"), "sendgrid");
        assert_eq!(vendor_of_path("/v2/email/outbound-emails"), "ses");
        assert_eq!(vendor_of_path("/understudy/sns/cert.pem"), "ses");
        assert_eq!(vendor_of_path("/v19.0/1234/messages"), "whatsapp");
        for other in ["/ready", "/", "/v.0/1/messages", "/vx.0/1/messages", "/2010-04-01", "/v19.1/1/messages"] {
            assert_eq!(vendor_of_path(other), "other", "{other}");
        }
    }
}
