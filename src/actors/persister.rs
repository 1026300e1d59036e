//! The persister: buffers message and event rows and writes them in batches, on size or on time.
//!
//! # Durability contract
//! - Every row handed over ([`PersistMessages`], [`PersistEvents`]) is written exactly once as far as the
//!   store can tell (a repeated row is skipped by the store's keys), in a batch that starts when the
//!   buffer holds `batch_rows` rows or at the next `flush_interval`, whichever comes first; rows a front
//!   door waits for as soon as a write slot is free (group commit: what came meanwhile shares the write).
//! - A failed write is retried until it succeeds; nothing is dropped while the store is away.
//! - The offsets of a batch's messages become committable ([`OffsetTracker::done_many`]) only after the
//!   batch's transaction committed.
//! - The waiter in [`PersistMessages::durable`] is told only after the batch holding its rows committed; a
//!   front door answers its request then, not before.
//! - [`Flush`] answers only when every row handed over before it is durable: it writes what is buffered
//!   and awaits that write itself, then waits until every earlier write has finished. By construction,
//!   not by the order in which actix polls its waiting futures.
//! - Up to three writes (one on SQLite) run at once. While all of them are under way the actor takes no
//!   new rows, so a slow or unavailable store fills its mailbox and slows everything upstream instead of
//!   growing memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::supervisor::{StageGuard, StopStage};
use crate::kafka::offsets::OffsetTracker;
use crate::store::{EventRow, MessageRow, Store};
use crate::telemetry;

/// Message rows to store; their offsets become committable once written. `durable`, when given (a front
/// door's request), is told once the batch holding them committed (dropped unsent if the persister stops
/// first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistMessages {
    pub rows: Vec<MessageRow>,
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PersistMessages {
    pub fn new(rows: Vec<MessageRow>) -> Self {
        Self { rows, durable: None }
    }
}

/// Delivered event rows to store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistEvents(pub Vec<EventRow>);

/// Write everything buffered now; answers when it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// A write ended and freed its slot: rows someone waits for go now.
#[derive(Message)]
#[rtype(result = "()")]
struct Written;

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
    /// Waiting for the buffered messages to be durable ([`PersistMessages::durable`]).
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    batch_rows: usize,
    flush_interval: Duration,
    stats: Arc<PersisterStats>,
    /// One permit per concurrent write.
    slots: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
    /// Fails the pipeline when the persister stops while it runs.
    _guard: Option<StageGuard>,
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
            waiters: Vec::new(),
            batch_rows,
            flush_interval,
            stats: Arc::default(),
            _guard: None,
        }
    }

    /// Supervised: stopping outside a shutdown fails the pipeline.
    pub fn supervised(mut self, guard: StageGuard) -> Self {
        self._guard = Some(guard);
        self
    }

    pub fn stats(&self) -> Arc<PersisterStats> {
        self.stats.clone()
    }

    fn buffered(&self) -> usize {
        self.messages.len() + self.events.len()
    }

    /// The buffered rows, handed out whole; the next batch gets buffers of full size at once rather than
    /// growing (and copying) its way there.
    fn take_buffers(&mut self) -> Batch {
        Batch {
            messages: std::mem::replace(&mut self.messages, Vec::with_capacity(self.batch_rows)),
            events: std::mem::replace(&mut self.events, Vec::with_capacity(self.batch_rows)),
            waiters: std::mem::take(&mut self.waiters),
        }
    }

    /// One batch's write, to run holding a write slot: written (retried until it succeeds), then its
    /// messages' offsets released and its waiters told.
    fn write_batch(&self, batch: Batch) -> impl Future<Output = ()> + 'static {
        let (store, stats, tracker) = (self.store.clone(), self.stats.clone(), self.tracker.clone());
        async move {
            let Batch { messages, events, waiters } = batch;
            write_until_done(&store, &stats, &messages, &events).await;
            tracker.done_many(messages.iter().map(|m| (&*m.topic, m.partition, m.offset)));
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    /// Write now if someone waits for buffered rows and a write slot is free.
    fn flush_for_waiters(&mut self, ctx: &mut Context<Self>) {
        if !self.waiters.is_empty() && self.slots.available_permits() > 0 {
            self.flush(ctx);
        }
    }

    /// Hand the buffers to a writer. Up to `concurrency` writes run at once; when all are busy the actor
    /// waits for a free one and takes no new rows meanwhile (backpressure).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.buffered() == 0 {
            return;
        }
        let batch = self.take_buffers();
        let write = self.write_batch(batch);
        let slots = self.slots.clone();
        let me = ctx.address();
        let wait_started = Instant::now();
        ctx.wait(async move { slots.acquire_owned().await.expect("never closed") }.into_actor(self).map(
            move |slot, _, _| {
                if wait_started.elapsed() > Duration::from_millis(1) {
                    telemetry::backpressure("store", wait_started.elapsed());
                }
                // A task of its own, not an actor item: items are not polled while the actor waits for
                // a slot, and the slot is freed by this very write.
                actix::spawn(async move {
                    write.await;
                    drop(slot);
                    me.do_send(Written);
                });
            },
        ));
    }
}

/// The rows of one write, and who waits for it.
struct Batch {
    messages: Vec<MessageRow>,
    events: Vec<EventRow>,
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
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

/// How often the persister looks for rows someone waits for while every write slot was busy.
const GROUP_COMMIT_TICK: Duration = Duration::from_millis(2);

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
        ctx.run_interval(self.flush_interval, |act, ctx| act.flush(ctx));
        // Group commit for the front doors: rows someone waits for are written as soon as a write slot is
        // free ([`Written`]), together with whatever came meanwhile, not at the next interval. The tick
        // is a backstop.
        ctx.run_interval(GROUP_COMMIT_TICK, |act, ctx| act.flush_for_waiters(ctx));
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
        if let Some(durable) = msg.durable {
            if msg.rows.is_empty() {
                let _ = durable.send(());
                return;
            }
            self.waiters.push(durable);
        }
        take_rows(&mut self.messages, msg.rows);
        if self.buffered() >= self.batch_rows {
            self.flush(ctx);
        } else {
            self.flush_for_waiters(ctx);
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

impl Handler<Written> for Persister {
    type Result = ();
    fn handle(&mut self, _: Written, ctx: &mut Self::Context) {
        self.flush_for_waiters(ctx);
    }
}

impl Handler<StopStage> for Persister {
    type Result = ();
    fn handle(&mut self, _: StopStage, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Flush> for Persister {
    type Result = AtomicResponse<Self, ()>;
    /// Writes what is buffered and answers once it, and every write before it, is durable. Atomic: no
    /// other message is handled meanwhile.
    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        let write = (self.buffered() > 0).then(|| {
            let batch = self.take_buffers();
            self.write_batch(batch)
        });
        let (slots, n) = (self.slots.clone(), self.concurrency as u32);
        AtomicResponse::new(Box::pin(
            async move {
                if let Some(write) = write {
                    let _slot = slots.acquire().await.expect("never closed");
                    write.await;
                }
                // Every earlier write holds a slot until it is durable: all slots free = all done.
                let _all = slots.acquire_many(n).await.expect("never closed");
            }
            .into_actor(self),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The contract against a real SQLite store in a temp dir.

    use super::*;
    use crate::model::{Outbound, SourcePosition};
    use crate::plan::PlannedMessage;

    fn row(i: i64) -> MessageRow {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/default.yaml");
        let scenario = crate::scenario::Scenario::load(&path).unwrap();
        let payload_id: Arc<str> = format!("p-{i}").into();
        let plan = scenario.plan(crate::model::Channel::Sms, &payload_id).unwrap();
        let mut pm = PlannedMessage {
            outbound: Outbound {
                source: SourcePosition { topic: "in".into(), topic_id: "c/in".into(), partition: 0, offset: i },
                payload_id,
                batch_id: "b".into(),
                channel: crate::model::Channel::Sms,
                recipient: "+15550000".into(),
                tenant_id: None,
                headers: Vec::new(),
                rule_headers: Vec::new(),
                body: b"{}".to_vec(),
                received_at: chrono::Utc::now(),
            },
            plan,
        };
        MessageRow::new(&mut pm, scenario.name_arc(), scenario.version())
    }

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        (Store::connect(&url, 1).await.unwrap(), dir)
    }

    fn tracker(n: i64) -> Arc<OffsetTracker> {
        let t = Arc::new(OffsetTracker::default());
        t.assign("in", 0);
        for i in 0..n {
            t.track("in", 0, i);
        }
        t
    }

    /// A `Flush` right after rows arrive answers only once they are in the store and committable:
    /// repeated many times, with writes already under way, so that an answer overtaking its write would
    /// show.
    #[actix::test]
    async fn flush_answers_after_the_rows_are_durable() {
        let (store, _dir) = store().await;
        let n = 400;
        let tracker = tracker(n);
        // Large batch and long interval: only `Flush` (and the size trigger, every 7 rows) writes.
        let persister = Persister::new(store.clone(), tracker.clone(), 7, Duration::from_secs(3600)).start();
        for i in 0..n {
            persister.send(PersistMessages::new(vec![row(i)])).await.unwrap();
            if i % 5 == 0 {
                persister.send(Flush).await.unwrap();
                assert_eq!(store.totals().await.unwrap().messages, i + 1, "every row before the Flush is stored");
                let pos = tracker.commitable();
                assert_eq!(pos, vec![("in".to_owned(), 0, i + 1)], "and its offset committable");
            }
        }
        persister.send(Flush).await.unwrap();
        assert_eq!(store.totals().await.unwrap().messages, n);
    }

    /// Without a `Flush`, rows are written on size and on time; offsets follow their write.
    #[actix::test]
    async fn rows_are_written_on_size_and_on_time() {
        let (store, _dir) = store().await;
        let tracker = tracker(10);
        let persister = Persister::new(store.clone(), tracker.clone(), 4, Duration::from_millis(50)).start();
        persister.send(PersistMessages::new((0..4).map(row).collect())).await.unwrap();
        persister.send(PersistMessages::new((4..6).map(row).collect())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.totals().await.unwrap().messages < 6 {
            assert!(Instant::now() < deadline, "rows under the batch size are written at the interval");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracker.pending() > 4 {
            assert!(Instant::now() < deadline, "offsets released after the write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A store that is away: the write is retried until it succeeds and `Flush` waits for it.
    #[actix::test]
    async fn a_failed_write_is_retried_and_flush_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.db");
        // A store whose tables do not exist yet: writes fail until the migration runs.
        let lazy = Store::connect_lazy(&format!("sqlite://{}", path.display()), 1).unwrap();
        let tracker = tracker(3);
        let persister = Persister::new(lazy.clone(), tracker.clone(), 100, Duration::from_secs(3600));
        let stats = persister.stats();
        let persister = persister.start();
        persister.send(PersistMessages::new((0..3).map(row).collect())).await.unwrap();
        let flushed = tokio::spawn(persister.send(Flush));
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.failed_writes.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the write failed at least once");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tracker.pending(), 3, "no offset released by a failed write");
        lazy.migrate().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), flushed).await.expect("flush answers").unwrap().unwrap();
        assert_eq!(lazy.totals().await.unwrap().messages, 3);
        assert_eq!(tracker.pending(), 0, "offsets released after the write");
    }
}
