//! The emitter: produces ack events to the ack topic and hands each delivered event on to the persister.
//!
//! It is a shared handle rather than a mailbox actor: each lifecycle actor produces straight into
//! librdkafka's queue, which already is the emitter's mailbox. Delivery reports come back on the
//! producer's own thread, which never blocks, and are forwarded in batches to the persister (see
//! [`forward_deliveries`]).
//!
//! The backpressure is one bound: at most [`IN_FLIGHT_EVENTS`] events between produce and their hand-off
//! to the persister. While the store is slow or away, acks keep flowing to Kafka until that many wait to
//! be stored; then `emit` waits. Memory stays bounded and Kafka keeps receiving what it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use chrono::Utc;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{Semaphore, mpsc};

use super::Envelope;
use super::webhook::Joint;
use crate::actors::persister::{PersistEvents, Persister};
use crate::model::AckEvent;
use crate::store::EventRow;
use crate::telemetry;
use crate::wire::headers::{ACK_HEADER, EVENT_ID_HEADER, EVENT_IDS_HEADER, STATUS_HEADER};
use crate::wire::{self, AckFormat, Batching};

/// Producer callbacks: delivered events go to the persister's queue.
pub struct EmitterContext {
    delivered: mpsc::UnboundedSender<EventRow>,
    /// Delivered events not yet handed to the persister.
    unforwarded: Arc<AtomicI64>,
    /// Room for events between produce and the persister; a permit comes back when a delivered event is
    /// handed to the persister, or at once when its delivery failed.
    room: Arc<Semaphore>,
}

impl ClientContext for EmitterContext {}

/// What one record carries: one event (with the joint of a webhook that delivers it too), or a batch
/// of them (a batched vendor format).
pub enum Carried {
    One(AckEvent, Option<Arc<Joint>>),
    Batch(Vec<AckEvent>),
}

impl Carried {
    fn events(self) -> Vec<AckEvent> {
        match self {
            Carried::One(e, _) => vec![e],
            Carried::Batch(v) => v,
        }
    }

    fn events_and_joint(self) -> (Vec<AckEvent>, Option<Arc<Joint>>) {
        match self {
            Carried::One(e, j) => (vec![e], j),
            Carried::Batch(v) => (v, None),
        }
    }
}

impl ProducerContext for EmitterContext {
    type DeliveryOpaque = Box<Carried>;

    fn delivery(&self, result: &DeliveryResult<'_>, carried: Self::DeliveryOpaque) {
        use rdkafka::message::Message;
        let (events, joint) = carried.events_and_joint();
        for event in events {
            match result {
                Ok(m) => {
                    let lag = (event.emitted_at - event.scheduled_at).to_std().unwrap_or(Duration::ZERO);
                    telemetry::event_emitted(event.channel, event.status, lag);
                    if event.fault == Some(crate::model::Fault::Duplicate) {
                        // An injected copy: Kafka sees the event twice, the store keeps it once (the
                        // original's row; the message's `faults` say it was duplicated). Handing the copy on
                        // would only make its batch's `COPY` fail on the key and be written again.
                        self.room.add_permits(1);
                        continue;
                    }
                    if let Some(j) = &joint {
                        // Also posted as a webhook: stored by whichever side is done last.
                        j.kafka_delivered(m.partition(), m.offset());
                        if j.finish().is_none() {
                            self.room.add_permits(1);
                            continue;
                        }
                    }
                    let row = EventRow { event, ack_partition: m.partition(), ack_offset: m.offset() };
                    // Never blocks: the queue holds at most the events `room` lets through.
                    self.unforwarded.fetch_add(1, Ordering::SeqCst);
                    if self.delivered.send(row).is_err() {
                        self.unforwarded.fetch_sub(1, Ordering::SeqCst);
                        self.room.add_permits(1);
                        tracing::warn!(
                            "persister queue closed; an event delivered to Kafka will be re-emitted on resume"
                        );
                    }
                }
                Err((e, _)) => {
                    if let Some(j) = &joint {
                        j.fail();
                        j.finish();
                    }
                    self.room.add_permits(1);
                    telemetry::event_failed(event.channel);
                    tracing::error!(payload_id = %event.payload_id, status = %event.status, error = %e,
                        "ack event not delivered; it is re-emitted when the lifecycle resumes");
                }
            }
        }
    }
}

/// Events gathered for batched formats, one open batch per batching setting.
#[derive(Default)]
struct Batches {
    open: std::sync::Mutex<std::collections::HashMap<Batching, Open>>,
    /// The thread that sends batches whose wait is over, and its stop flag ([`Emitter::close`]).
    ticker: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: std::sync::atomic::AtomicBool,
}

struct Open {
    /// The JSON array so far, without its closing bracket.
    body: Vec<u8>,
    events: Vec<AckEvent>,
    since: Instant,
}

impl Default for Open {
    fn default() -> Self {
        Self { body: Vec::new(), events: Vec::new(), since: Instant::now() }
    }
}

/// Events produced and not yet handed to the persister, at most (about 20 MB); below librdkafka's queue
/// size so that waiting happens here, in line, rather than in a retry loop.
pub const IN_FLIGHT_EVENTS: usize = 50_000;

enum Produced {
    Queued,
    /// librdkafka's queue is full: the event comes back.
    Full(AckEvent),
    /// Not produced and not retried here (logged, counted); the lifecycle's resume re-emits it.
    Failed,
}

/// Cheap to clone; every lifecycle actor holds one.
#[derive(Clone)]
pub struct Emitter {
    producer: Arc<ThreadedProducer<EmitterContext>>,
    topic: Arc<str>,
    unforwarded: Arc<AtomicI64>,
    room: Arc<Semaphore>,
    batches: Arc<Batches>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").field("topic", &self.topic).finish()
    }
}

impl Emitter {
    /// Create the producer. Delivered events arrive on the returned receiver.
    pub fn new(
        config: &rdkafka::ClientConfig,
        topic: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<EventRow>), KafkaError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let unforwarded = Arc::new(AtomicI64::new(0));
        let room = Arc::new(Semaphore::new(IN_FLIGHT_EVENTS));
        let producer: ThreadedProducer<EmitterContext> = config.create_with_context(EmitterContext {
            delivered: tx,
            unforwarded: unforwarded.clone(),
            room: room.clone(),
        })?;
        let emitter =
            Self { producer: Arc::new(producer), topic: topic.into(), unforwarded, room, batches: Arc::default() };
        // Sends batches whose wait is over; ends at `close`, or when the last emitter handle is gone.
        let (weak, ticker) = (Arc::downgrade(&emitter.batches), emitter.clone_without_batches());
        let thread = std::thread::Builder::new()
            .name("ack-batches".into())
            .spawn(move || {
                while let Some(batches) = weak.upgrade() {
                    if batches.stop.load(Ordering::Acquire) {
                        break;
                    }
                    ticker.send_batches(&batches, false);
                    drop(batches);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("spawn the batch thread");
        *emitter.batches.ticker.lock().expect("ticker lock") = Some(thread);
        Ok((emitter, rx))
    }

    /// A handle for the batch thread, which must not keep the batches alive.
    fn clone_without_batches(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            topic: self.topic.clone(),
            unforwarded: self.unforwarded.clone(),
            room: self.room.clone(),
            batches: Arc::default(),
        }
    }

    /// Add an event to its open batch (its room already taken); send the batch once it is full.
    fn add_to_batch(&self, event: AckEvent, envelope: &Envelope, batching: Batching) {
        let full = {
            let mut open = self.batches.open.lock().expect("batch lock");
            let b = open.entry(batching).or_default();
            if b.events.is_empty() {
                b.body.push(b'[');
                b.since = Instant::now();
            } else {
                b.body.push(b',');
            }
            let at = b.body.len();
            wire::sendgrid::event(&event, &envelope.recipient, &mut b.body);
            if event.fault == Some(crate::model::Fault::Corrupt) {
                let cut = at + (b.body.len() - at) / 2;
                b.body.truncate(cut);
                b.body.push(b'\x7f');
            }
            b.events.push(event);
            (b.events.len() >= batching.max_events || b.body.len() >= batching.max_bytes).then(|| std::mem::take(b))
        };
        if let Some(b) = full {
            self.send_batch(b);
        }
    }

    /// Send the batches whose wait is over (all of them with `all`).
    fn send_batches(&self, batches: &Batches, all: bool) {
        let due: Vec<Open> = {
            let mut open = batches.open.lock().expect("batch lock");
            open.iter_mut()
                .filter(|(b, o)| !o.events.is_empty() && (all || o.since.elapsed().as_micros() as u64 >= b.max_wait_us))
                .map(|(_, o)| std::mem::take(o))
                .collect()
        };
        for b in due {
            self.send_batch(b);
        }
    }

    /// Produce one batch record, keyed by its first event's payload id, waiting while librdkafka is full.
    fn send_batch(&self, mut b: Open) {
        b.body.push(b']');
        let mut ids = String::with_capacity(b.events.len() * 37);
        for (i, e) in b.events.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            ids.push_str(&e.event_id.hyphenated().to_string());
        }
        let acks: Vec<String> = b
            .events
            .iter()
            .filter(|e| e.fault != Some(crate::model::Fault::Corrupt))
            .map(|e| format!("{} {}", e.status.as_str(), e.payload_id))
            .collect();
        let key = b.events[0].payload_id.clone();
        let timestamp = Utc::now().timestamp_millis();
        let mut carried = Box::new(Carried::Batch(b.events));
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(1 + acks.len())
                .insert(Header { key: EVENT_IDS_HEADER, value: Some(ids.as_bytes()) });
            for a in &acks {
                headers = headers.insert(Header { key: ACK_HEADER, value: Some(a.as_bytes()) });
            }
            let record = BaseRecord::with_opaque_to(&*self.topic, carried)
                .key(key.as_bytes())
                .payload(&b.body)
                .headers(headers)
                .timestamp(timestamp);
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                    carried = rec.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, rec)) => {
                    let events = rec.delivery_opaque.events();
                    self.room.add_permits(events.len());
                    tracing::error!(error = %e, events = events.len(), "cannot produce a batch of acks; they are re-emitted on resume");
                    return;
                }
            }
        }
    }

    /// Produce one event now if the producer has room; otherwise hand the event back (then
    /// [`Emitter::emit`] waits for room). The caller has set `emitted_at`.
    pub fn try_emit(&self, event: AckEvent, envelope: &Envelope) -> Result<(), AckEvent> {
        let Ok(permit) = self.room.try_acquire() else {
            return Err(event);
        };
        if let Some(b) = envelope.format.batching() {
            permit.forget();
            self.add_to_batch(event, envelope, b);
            return Ok(());
        }
        match self.produce(event, envelope, None) {
            Produced::Queued => {
                // Returned by the delivery report.
                permit.forget();
                Ok(())
            }
            Produced::Full(event) => Err(event),
            Produced::Failed => Ok(()),
        }
    }

    /// Produce one event, keyed by payload id. Waits (in line, without polling) while
    /// [`IN_FLIGHT_EVENTS`] events are undelivered or unstored. The event's `emitted_at` is when it is produced.
    pub async fn emit(&self, event: AckEvent, envelope: &Envelope) {
        self.emit_with(event, envelope, None).await
    }

    /// As [`Emitter::emit`], for an event a webhook delivers too (`joint`): not batched, whatever the
    /// format.
    pub async fn emit_with(&self, mut event: AckEvent, envelope: &Envelope, joint: Option<Arc<Joint>>) {
        let t = Instant::now();
        let permit = self.room.acquire().await.expect("never closed");
        let mut waited = (t.elapsed() > Duration::from_millis(1)).then_some(t);
        if let Some(b) = envelope.format.batching().filter(|_| joint.is_none()) {
            event.emitted_at = Utc::now();
            permit.forget();
            self.add_to_batch(event, envelope, b);
            if let Some(t) = waited {
                telemetry::backpressure("emitter", t.elapsed());
            }
            return;
        }
        loop {
            if joint.is_none() {
                event.emitted_at = Utc::now();
            }
            match self.produce(event, envelope, joint.clone()) {
                Produced::Queued => {
                    permit.forget();
                    break;
                }
                Produced::Full(e) => {
                    event = e;
                    waited.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Produced::Failed => break,
            }
        }
        if let Some(t) = waited {
            telemetry::backpressure("emitter", t.elapsed());
        }
    }

    /// Hand one event to librdkafka (which copies key, value and headers).
    fn produce(&self, event: AckEvent, envelope: &Envelope, joint: Option<Arc<Joint>>) -> Produced {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            wire::write(&envelope.format, &event, &envelope.recipient, buf);
            if event.fault == Some(crate::model::Fault::Corrupt) {
                // An injected fault: the ack as invalid JSON (cut short, with a stray byte).
                buf.truncate(buf.len() / 2);
                buf.push(b'\x7f');
            }
            let value_len = buf.len();
            buf.extend_from_slice(event.payload_id.as_bytes());
            let (payload, key) = buf.split_at(value_len);
            let mut id = uuid::Uuid::encode_buffer();
            let id = event.event_id.hyphenated().encode_lower(&mut id);
            let mut hs = OwnedHeaders::new_with_capacity(envelope.headers.len() + 1);
            for (k, v) in envelope.headers.iter() {
                hs = hs.insert(Header { key: k, value: Some(v) });
            }
            hs = hs.insert(Header { key: EVENT_ID_HEADER, value: Some(id.as_bytes()) });
            if !matches!(envelope.format, AckFormat::Understudy) && event.fault != Some(crate::model::Fault::Corrupt) {
                hs = hs.insert(Header { key: STATUS_HEADER, value: Some(event.status.as_str().as_bytes()) });
            }
            // The record's timestamp is the event's `emitted_at` (and librdkafka need not read the clock).
            let timestamp = event.emitted_at.timestamp_millis();
            let record = BaseRecord::with_opaque_to(&*self.topic, Box::new(Carried::One(event, joint)))
                .key(key)
                .payload(payload)
                .headers(hs)
                .timestamp(timestamp);
            match self.producer.send(record) {
                Ok(()) => Produced::Queued,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                    Produced::Full(rec.delivery_opaque.events().pop().expect("one event"))
                }
                Err((e, rec)) => {
                    let (events, joint) = rec.delivery_opaque.events_and_joint();
                    if let Some(j) = joint {
                        j.fail();
                        j.finish();
                    }
                    for event in events {
                        telemetry::event_failed(event.channel);
                        tracing::error!(error = %e, payload_id = %event.payload_id, "cannot produce ack event; it is re-emitted on resume");
                    }
                    Produced::Failed
                }
            }
        })
    }

    /// Send the open batches, then wait for every queued event to be delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) {
        self.send_batches(&self.batches, true);
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not finish");
        }
    }

    /// Stop the batch thread and wait for it (it holds the producer): once the other handles are dropped
    /// too, so is the producer, at once and not whenever that thread next wakes. Call after the last
    /// event, and after [`flush`](Self::flush).
    pub fn close(&self) {
        self.batches.stop.store(true, Ordering::Release);
        let thread = self.batches.ticker.lock().expect("ticker lock").take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub fn in_queue(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Delivered events still on their way to the persister's mailbox.
    pub fn unforwarded(&self) -> i64 {
        self.unforwarded.load(Ordering::SeqCst)
    }

    /// The counter [`forward_deliveries`] decrements.
    pub fn unforwarded_counter(&self) -> Arc<AtomicI64> {
        self.unforwarded.clone()
    }

    /// The room [`forward_deliveries`] gives back.
    pub fn room(&self) -> Arc<Semaphore> {
        self.room.clone()
    }
}

/// Move delivered events to the persister in batches, waiting on its mailbox, and give their room back
/// once the persister has them.
pub async fn forward_deliveries(
    mut rx: mpsc::UnboundedReceiver<EventRow>,
    persister: Addr<Persister>,
    batch: usize,
    unforwarded: Arc<AtomicI64>,
    room: Arc<Semaphore>,
    guard: crate::actors::supervisor::StageGuard,
) {
    let _guard = guard;
    let mut buf = Vec::with_capacity(batch);
    while rx.recv_many(&mut buf, batch).await > 0 {
        let rows = std::mem::replace(&mut buf, Vec::with_capacity(batch));
        let n = rows.len() as i64;
        let t = Instant::now();
        let sent = persister.send(PersistEvents(rows)).await;
        unforwarded.fetch_sub(n, Ordering::SeqCst);
        room.add_permits(n as usize);
        if sent.is_err() {
            tracing::error!("persister stopped; delivered events will be re-emitted on resume");
            return;
        }
        telemetry::backpressure("persister_events", t.elapsed());
    }
}
