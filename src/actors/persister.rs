//! The persister: buffers message and event rows and writes them in batches, on size or on time.
//!
//! Up to three writes (one on SQLite) run at once. While all of them are under way the actor takes no new
//! rows (`ctx.wait`), so a slow or unavailable store fills its mailbox and slows everything upstream
//! instead of growing memory. A failed write is retried
//! until it succeeds; nothing is dropped. Offsets of messages become committable only after their write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::kafka::offsets::OffsetTracker;
use crate::store::{EventRow, MessageRow, Store};
use crate::telemetry;

/// Message rows to store; their offsets become committable once written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistMessages(pub Vec<MessageRow>);

/// Delivered event rows to store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistEvents(pub Vec<EventRow>);

/// Write everything buffered now; answers when it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// What tests and status pages can read.
#[derive(Debug, Default)]
pub struct PersisterStats {
    pub messages_written: AtomicU64,
    pub events_written: AtomicU64,
    pub writes: AtomicU64,
    pub failed_writes: AtomicU64,
}

pub struct Persister {
    store: Store,
    tracker: Arc<OffsetTracker>,
    messages: Vec<MessageRow>,
    events: Vec<EventRow>,
    batch_rows: usize,
    flush_interval: Duration,
    stats: Arc<PersisterStats>,
    /// One permit per concurrent write.
    slots: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
}

impl Persister {
    pub fn new(store: Store, tracker: Arc<OffsetTracker>, batch_rows: usize, flush_interval: Duration) -> Self {
        // SQLite has one writer at a time; Postgres takes concurrent batches.
        let concurrency = match &store {
            Store::Postgres(_) => 3,
            Store::Sqlite(_) => 1,
        };
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            concurrency,
            store,
            tracker,
            messages: Vec::new(),
            events: Vec::new(),
            batch_rows,
            flush_interval,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<PersisterStats> {
        self.stats.clone()
    }

    fn buffered(&self) -> usize {
        self.messages.len() + self.events.len()
    }

    /// Hand the buffers to a writer. Up to `concurrency` writes run at once; when all are busy the actor
    /// waits for a free one and takes no new rows meanwhile (backpressure).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.buffered() == 0 {
            return;
        }
        // The next batch gets buffers of full size at once rather than growing (and copying) its way there.
        let messages = std::mem::replace(&mut self.messages, Vec::with_capacity(self.batch_rows));
        let events = std::mem::replace(&mut self.events, Vec::with_capacity(self.batch_rows));
        let slots = self.slots.clone();
        let wait_started = Instant::now();
        ctx.wait(async move { slots.acquire_owned().await.expect("never closed") }.into_actor(self).map(
            move |slot, act, _| {
                if wait_started.elapsed() > Duration::from_millis(1) {
                    telemetry::backpressure("store", wait_started.elapsed());
                }
                let (store, stats, tracker) = (act.store.clone(), act.stats.clone(), act.tracker.clone());
                // A task of its own, not an actor item: items are not polled while the actor waits for
                // a slot, and the slot is freed by this very write.
                actix::spawn(async move {
                    write_until_done(&store, &stats, &messages, &events).await;
                    tracker.done_many(messages.iter().map(|m| (&*m.topic, m.partition, m.offset)));
                    drop(slot);
                });
            },
        ));
    }
}

/// Write one batch, retrying until it succeeds: nothing is dropped while the store is away.
async fn write_until_done(store: &Store, stats: &PersisterStats, messages: &[MessageRow], events: &[EventRow]) {
    let rows = messages.len() + events.len();
    let mut backoff = Duration::from_millis(100);
    loop {
        let t = Instant::now();
        match store.write(messages, events).await {
            Ok(()) => {
                telemetry::persisted(rows, t.elapsed());
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats.messages_written.fetch_add(messages.len() as u64, Ordering::Relaxed);
                stats.events_written.fetch_add(events.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                telemetry::persist_error();
                stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, rows, retry_in = ?backoff, "store write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
        ctx.run_interval(self.flush_interval, |act, ctx| act.flush(ctx));
    }
}

/// Add `rows` to a buffer: taken over whole when the buffer is empty and smaller, moved over otherwise.
fn take_rows<T>(buffer: &mut Vec<T>, mut rows: Vec<T>) {
    if buffer.is_empty() && rows.capacity() >= buffer.capacity() {
        std::mem::swap(buffer, &mut rows);
    } else {
        buffer.append(&mut rows);
    }
}

impl Handler<PersistMessages> for Persister {
    type Result = ();
    fn handle(&mut self, msg: PersistMessages, ctx: &mut Self::Context) {
        take_rows(&mut self.messages, msg.0);
        if self.buffered() >= self.batch_rows {
            self.flush(ctx);
        }
    }
}

impl Handler<PersistEvents> for Persister {
    type Result = ();
    fn handle(&mut self, msg: PersistEvents, ctx: &mut Self::Context) {
        take_rows(&mut self.events, msg.0);
        if self.buffered() >= self.batch_rows {
            self.flush(ctx);
        }
    }
}

impl Handler<Flush> for Persister {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        self.flush(ctx);
        // Answered once every write, this one included, is durable: all slots free again.
        let (slots, n) = (self.slots.clone(), self.concurrency);
        AtomicResponse::new(Box::pin(
            async move {
                let _all = slots.acquire_many(n as u32).await;
            }
            .into_actor(self),
        ))
    }
}
