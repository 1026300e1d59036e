//! The persister: buffers message and event rows and writes them in batches, on size or on time.
//!
//! While a write is under way the actor takes no new rows (`ctx.wait`), so a slow or unavailable store
//! fills its mailbox and slows everything upstream instead of growing memory. A failed write is retried
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
}

impl Persister {
    pub fn new(store: Store, tracker: Arc<OffsetTracker>, batch_rows: usize, flush_interval: Duration) -> Self {
        Self {
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

    /// Write the buffers; the actor handles nothing else until the write has succeeded.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(write) = self.write() {
            ctx.wait(write);
        }
    }

    /// The write of everything buffered, retried until it succeeds; then its offsets are released.
    fn write(&mut self) -> Option<impl ActorFuture<Self, Output = ()> + 'static> {
        if self.buffered() == 0 {
            return None;
        }
        let messages = std::mem::take(&mut self.messages);
        let events = std::mem::take(&mut self.events);
        let store = self.store.clone();
        let stats = self.stats.clone();
        let fut = async move {
            let rows = messages.len() + events.len();
            let mut backoff = Duration::from_millis(100);
            loop {
                let t = Instant::now();
                match store.write(&messages, &events).await {
                    Ok(()) => {
                        telemetry::persisted(rows, t.elapsed());
                        stats.writes.fetch_add(1, Ordering::Relaxed);
                        stats.messages_written.fetch_add(messages.len() as u64, Ordering::Relaxed);
                        stats.events_written.fetch_add(events.len() as u64, Ordering::Relaxed);
                        return messages;
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
        };
        Some(fut.into_actor(self).map(|messages, act, _| {
            act.tracker.done_many(messages.iter().map(|m| (m.topic.as_str(), m.partition, m.offset)));
        }))
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
        ctx.run_interval(self.flush_interval, |act, ctx| act.flush(ctx));
    }
}

impl Handler<PersistMessages> for Persister {
    type Result = ();
    fn handle(&mut self, msg: PersistMessages, ctx: &mut Self::Context) {
        self.messages.extend(msg.0);
        if self.buffered() >= self.batch_rows {
            self.flush(ctx);
        }
    }
}

impl Handler<PersistEvents> for Persister {
    type Result = ();
    fn handle(&mut self, msg: PersistEvents, ctx: &mut Self::Context) {
        self.events.extend(msg.0);
        if self.buffered() >= self.batch_rows {
            self.flush(ctx);
        }
    }
}

impl Handler<Flush> for Persister {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        // Answered only once the write is durable.
        match self.write() {
            Some(write) => AtomicResponse::new(Box::pin(write)),
            None => AtomicResponse::new(Box::pin(actix::fut::ready(()))),
        }
    }
}
