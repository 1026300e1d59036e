//! The consumer: reads the platform's outbound topics in a consumer group, decodes each record, sends
//! bad ones to the dead-letter topic and good ones, per channel, to the channel actors.
//!
//! Before it dispatches anything from a newly assigned partition it resumes that partition's unfinished
//! lifecycles from the store and learns which of the partition's uncommitted offsets are already stored,
//! so that they are not planned twice (see `docs/offsets.md`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::channel::{ChannelActor, Dispatch, Resume};
use super::persister::{Flush, Persister};
use crate::config::DuplicatePolicy;
use crate::kafka::decode::{Decoder, RawRecord, Rejection};
use crate::kafka::duplicates::DuplicateWindow;
use crate::kafka::offsets::{Assignments, Claim, OffsetTracker, PartitionMap};
use crate::model::{Channel, Outbound};
use crate::scenario::live::LiveScenario;
use crate::scenario::rules::glob_match;
use crate::store::Store;
use crate::telemetry;

pub const DLQ_REASON_HEADER: &str = "understudy-dlq-reason";
pub const DLQ_KIND_HEADER: &str = "understudy-dlq-kind";

/// Rebalance callbacks: on revoke, commit what is durable and give up the partition's lifecycles; on
/// assign, tell the consumer loop to resume the partition before dispatching from it.
pub struct RebalanceContext {
    tracker: Arc<OffsetTracker>,
    persister: Addr<Persister>,
    assignments: Arc<Assignments>,
    assigned: tokio::sync::mpsc::UnboundedSender<Vec<(String, i32)>>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            for e in tpl.elements() {
                self.assignments.revoke(e.topic(), e.partition());
            }
            // Make what this instance took from the partitions durable before it lets them go, so that the
            // next owner resumes those messages from the store, at their original due times, instead of
            // planning them again from its own receipt. Bounded: a store that is away must not hold up the
            // group; what is not written by then is consumed again by the next owner.
            flush_for_handover(&self.persister, REVOKE_FLUSH_TIMEOUT);
            let mut commit = TopicPartitionList::new();
            for e in tpl.elements() {
                if let Some(pos) = self.tracker.revoke(e.topic(), e.partition()) {
                    let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(pos));
                }
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            if commit.count() > 0 {
                match consumer.commit(&commit, CommitMode::Sync) {
                    Ok(()) => telemetry::offsets_committed(commit.count()),
                    Err(e) => tracing::warn!(error = %e, "final commit of revoked partitions failed"),
                }
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Hand the positions out again at the next interval.
            let positions: Vec<(String, i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o)),
                    _ => None,
                })
                .collect();
            self.tracker.rollback(&positions);
            tracing::warn!(error = %e, "offset commit failed; retried at the next interval");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            for (t, p) in &parts {
                self.tracker.assign(t, *p);
                self.assignments.assign(t, *p);
            }
            tracing::info!(partitions = parts.len(), "partitions assigned");
            let _ = self.assigned.send(parts);
        }
    }
}

pub type KafkaConsumer = StreamConsumer<RebalanceContext>;

/// Longest a revoke waits for the persister.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Flush the persister from the rebalance callback, which runs on the consumer's own thread inside its
/// poll: the wait happens on a helper thread, with a deadline.
fn flush_for_handover(persister: &Addr<Persister>, timeout: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let persister = persister.clone();
    std::thread::spawn(move || {
        // Twice, as at shutdown: the answer to the first can come before the write it started holds a slot.
        let _ = futures::executor::block_on(persister.send(Flush));
        let _ = futures::executor::block_on(persister.send(Flush));
        let _ = tx.send(());
    });
    let t = Instant::now();
    match rx.recv_timeout(timeout) {
        Ok(()) => tracing::debug!(took = ?t.elapsed(), "buffered rows written before the handover"),
        Err(_) => tracing::warn!(?timeout, "the store did not take the buffered rows before the handover; the next owner consumes them again"),
    }
}

/// Counters tests and reports read.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub consumed: AtomicU64,
    /// Records fetched under an earlier assignment of their partition, left for the current one.
    pub stale_skipped: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped_already_stored: AtomicU64,
    /// Messages of tenants this instance does not serve (`input.tenants`).
    pub skipped_other_tenant: AtomicU64,
}

/// Everything the consumer loop needs.
pub struct ConsumerLoop {
    pub consumer: Arc<KafkaConsumer>,
    pub assigned: tokio::sync::mpsc::UnboundedReceiver<Vec<(String, i32)>>,
    pub decoder: Decoder,
    pub on_duplicate: DuplicatePolicy,
    pub duplicate_window: usize,
    pub scenario: LiveScenario,
    pub channels: [Option<Addr<ChannelActor>>; 3],
    pub dlq: FutureProducer,
    pub dlq_topic: String,
    pub tracker: Arc<OffsetTracker>,
    pub assignments: Arc<Assignments>,
    pub persister: Addr<Persister>,
    pub store_url: String,
    pub max_batch: usize,
    pub max_in_flight: usize,
    /// `input.tenants`: empty = every tenant.
    pub tenants: Vec<String>,
    pub in_flight: Arc<dyn Fn() -> usize + Send + Sync>,
    pub stats: Arc<ConsumerStats>,
    pub shutdown: CancellationToken,
}

/// Create the group consumer and subscribe.
pub fn create(
    config: &rdkafka::ClientConfig,
    topics: &[String],
    tracker: Arc<OffsetTracker>,
    assignments: Arc<Assignments>,
    persister: Addr<Persister>,
) -> Result<(KafkaConsumer, tokio::sync::mpsc::UnboundedReceiver<Vec<(String, i32)>>), rdkafka::error::KafkaError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer: KafkaConsumer =
        config.create_with_context(RebalanceContext { tracker, persister, assignments, assigned: tx })?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok((consumer, rx))
}

struct Dead {
    topic: String,
    partition: i32,
    offset: i64,
    rejection: Rejection,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl ConsumerLoop {
    pub async fn run(mut self) {
        let store = match Store::connect_lazy(&self.store_url, 2) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "consumer cannot open the store");
                return;
            }
        };
        let consumer = self.consumer.clone();
        // Each record is tagged with the assignment generation current when the stream yielded it. A
        // rebalance runs inside the stream's poll, so one chunk can hold records fetched under an earlier
        // assignment of a partition next to records of its new one; the tag tells them apart.
        let generations = self.assignments.clone();
        let mut stream = consumer.stream().map(move |m| (m, generations.current())).ready_chunks(self.max_batch);
        // Offsets of an assigned partition that are already stored: skipped, not planned again.
        let mut already: PartitionMap<HashSet<i64>> = PartitionMap::default();
        // Source topic names, shared by every message read from them.
        let mut topics: Vec<Arc<str>> = Vec::new();
        let mut seen = DuplicateWindow::new(match self.on_duplicate {
            DuplicatePolicy::DeadLetter => self.duplicate_window,
            DuplicatePolicy::Process => 0,
        });
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(parts) = self.assigned.recv() => {
                    // Resume even when no new record arrives for the partition.
                    for (topic, partition) in parts {
                        self.resume(&store, &topic, partition, &mut already).await;
                    }
                    continue;
                }
                c = stream.next() => match c { Some(c) => c, None => break },
            };
            // The assignment of a partition is announced before any of its records arrive.
            while let Ok(parts) = self.assigned.try_recv() {
                for (topic, partition) in parts {
                    self.resume(&store, &topic, partition, &mut already).await;
                }
            }
            self.wait_for_room().await;
            if self.scenario.has_changed().unwrap_or(false) {
                // Headers the new version's rules match on.
                let names = self.scenario.borrow_and_update().rule_headers();
                self.decoder = self.decoder.clone().with_rule_headers(names);
            }
            self.handle(chunk, &mut already, &mut topics, &mut seen).await;
        }
        tracing::info!("consumer stopped");
    }

    /// Whether this instance serves the tenant (`input.tenants`).
    fn serves(&self, tenant: Option<&str>) -> bool {
        self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.iter().any(|g| glob_match(g, t)))
    }

    /// Pause while too many lifecycles are waiting.
    async fn wait_for_room(&self) {
        let t = Instant::now();
        while (self.in_flight)() > self.max_in_flight && !self.shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if t.elapsed() > Duration::from_millis(1) {
            telemetry::backpressure("lifecycles", t.elapsed());
        }
    }

    async fn resume(&self, store: &Store, topic: &str, partition: i32, already: &mut PartitionMap<HashSet<i64>>) {
        let committed = {
            let consumer = self.consumer.clone();
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition(topic, partition);
            tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, Duration::from_secs(10)))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|tpl| tpl.elements().first().map(|e| e.offset()))
                .and_then(|o| if let Offset::Offset(n) = o { Some(n) } else { None })
                .unwrap_or(0)
        };
        // Rows this instance still buffers for the partition are written first, so that every stored
        // offset below is also either resumed or finished.
        let _ = self.persister.send(Flush).await;
        let mut backoff = Duration::from_millis(200);
        let (pending, stored) = loop {
            let r = async {
                let stored = store.stored_offsets(topic, partition, committed).await?;
                Ok::<_, crate::store::StoreError>((store.pending(topic, partition).await?, stored))
            }
            .await;
            match r {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(error = %e, topic, partition, "cannot read unfinished lifecycles; retrying");
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        // Revoked again while reading: the next owner resumes it.
        let Some(claim) = self.assignments.claim(topic, partition) else { return };
        if !pending.is_empty() {
            tracing::info!(topic, partition, lifecycles = pending.len(), "resuming unfinished lifecycles");
        }
        let mut by_channel: [Vec<_>; 3] = Default::default();
        for p in pending {
            by_channel[p.message.outbound.channel.index()].push(p);
        }
        for (i, list) in by_channel.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            if let Some(addr) = &self.channels[i] {
                let _ = addr.send(Resume { claim: claim.clone(), lifecycles: list }).await;
            }
        }
        // Kept only while non-empty.
        if stored.is_empty() {
            already.remove(topic, partition);
        } else {
            already.insert(topic, partition, stored);
        }
    }

    async fn handle(
        &self,
        chunk: Vec<(rdkafka::error::KafkaResult<BorrowedMessage<'_>>, u64)>,
        already: &mut PartitionMap<HashSet<i64>>,
        topics: &mut Vec<Arc<str>>,
        seen: &mut DuplicateWindow,
    ) {
        let now = Utc::now();
        let scenario = self.scenario.borrow().clone();
        let mut by_channel: [Vec<(Claim, Outbound)>; 3] = Default::default();
        // Claims of this chunk's partitions: one lookup per partition, not per record.
        let mut claims: Vec<(i32, Arc<str>, Option<Claim>)> = Vec::new();
        let mut dead: Vec<Dead> = Vec::new();
        for (m, read_at) in chunk {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    continue;
                }
            };
            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
            self.stats.consumed.fetch_add(1, Ordering::Relaxed);
            let known = claims.iter().position(|(p, t, _)| *p == partition && &**t == topic);
            let at = known.unwrap_or_else(|| {
                let t = match topics.iter().find(|t| &***t == topic) {
                    Some(t) => t.clone(),
                    None => {
                        topics.push(topic.into());
                        topics[topics.len() - 1].clone()
                    }
                };
                claims.push((partition, t, self.assignments.claim(topic, partition)));
                claims.len() - 1
            });
            // Fetched before a revoke: the partition's new owner processes it.
            let Some(claim) = claims[at].2.clone() else { continue };
            // Fetched under an earlier assignment of the partition: not tracked, because tracking it could
            // move the committed position past offsets the new assignment has not delivered yet. The new
            // assignment's fetch starts at the committed position and delivers it again.
            if claim.fetched_before(read_at) {
                self.stats.stale_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let topic_arc = claims[at].1.clone();
            if let Some(set) = already.get_mut(topic, partition) {
                let skip = set.remove(&offset);
                if set.is_empty() {
                    already.remove(topic, partition);
                }
                if skip {
                    // Stored before the restart and resumed from the store: durable, so committable.
                    self.stats.skipped_already_stored.fetch_add(1, Ordering::Relaxed);
                    self.tracker.track(topic, partition, offset);
                    self.tracker.done(topic, partition, offset);
                    continue;
                }
            }
            self.tracker.track(topic, partition, offset);
            let headers: Vec<(&str, Option<&[u8]>)> =
                m.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
            let raw = RawRecord { topic: topic_arc, partition, offset, payload: m.payload(), headers };
            let decoded = self.decoder.decode(&raw, now).and_then(|o| {
                if !scenario.has_channel(o.channel) {
                    Err(Rejection {
                        kind: "channel_not_in_scenario",
                        reason: format!("the scenario `{}` has no `{}` channel", scenario.name(), o.channel),
                    })
                } else if seen.is_duplicate(&o.payload_id, topic, partition, offset) {
                    Err(Rejection {
                        kind: "duplicate_payload_id",
                        reason: format!(
                            "payload id `{}` was already taken from another offset (`input.on_duplicate_payload_id: dead_letter`)",
                            o.payload_id
                        ),
                    })
                } else {
                    Ok(o)
                }
            });
            match decoded {
                Ok(o) if !self.serves(o.tenant_id.as_deref()) => {
                    // Another instance's tenant: skipped, and committable at once.
                    self.stats.skipped_other_tenant.fetch_add(1, Ordering::Relaxed);
                    telemetry::message_skipped("other_tenant");
                    self.tracker.done(topic, partition, offset);
                }
                Ok(o) => by_channel[o.channel.index()].push((claim, o)),
                Err(rejection) => dead.push(Dead {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    rejection,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m.headers().map(|h| h.detach()),
                }),
            }
        }
        for (i, batch) in by_channel.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let Some(addr) = &self.channels[i] else { continue };
            let t = Instant::now();
            if addr.send(Dispatch { scenario: scenario.clone(), batch }).await.is_err() {
                tracing::error!(channel = %Channel::ALL[i], "channel actor stopped");
            }
            telemetry::backpressure("channel", t.elapsed());
        }
        if !dead.is_empty() {
            self.dead_letter(dead).await;
        }
    }

    /// Produce rejected records, untouched, to the dead-letter topic; their offsets are released once
    /// the DLQ has them.
    async fn dead_letter(&self, mut dead: Vec<Dead>) {
        let mut backoff = Duration::from_millis(200);
        while !dead.is_empty() {
            dead = self.dead_letter_once(dead).await;
            if dead.is_empty() || self.shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One attempt; returns the records the DLQ did not take.
    async fn dead_letter_once(&self, dead: Vec<Dead>) -> Vec<Dead> {
        let sends = dead.iter().map(|d| {
            let mut headers = d.headers.clone().unwrap_or_default();
            headers = headers
                .insert(Header { key: DLQ_REASON_HEADER, value: Some(d.rejection.reason.as_bytes()) })
                .insert(Header { key: DLQ_KIND_HEADER, value: Some(d.rejection.kind.as_bytes()) })
                .insert(Header { key: "understudy-source-topic", value: Some(d.topic.as_bytes()) })
                .insert(Header { key: "understudy-source-partition", value: Some(d.partition.to_string().as_bytes()) })
                .insert(Header { key: "understudy-source-offset", value: Some(d.offset.to_string().as_bytes()) });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.dlq_topic).payload(d.payload.as_slice()).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            self.dlq.send(record, rdkafka::util::Timeout::Never)
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = Vec::new();
        for (d, r) in dead.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    telemetry::message_dead_lettered(d.rejection.kind);
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.rejection.reason, "dead-lettered");
                    self.tracker.done(&d.topic, d.partition, d.offset);
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, offset = d.offset, "cannot dead-letter yet; retrying");
                    failed.push(d);
                }
            }
        }
        failed
    }
}

/// Runs the consumer loop inside the actor system; stops when the loop ends.
pub struct ConsumerActor {
    run: Option<ConsumerLoop>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ConsumerActor {
    pub fn new(run: ConsumerLoop, done: tokio::sync::oneshot::Sender<()>) -> Self {
        Self { run: Some(run), done: Some(done) }
    }
}

impl Actor for ConsumerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(run) = self.run.take() {
            ctx.spawn(run.run().into_actor(self).map(|_, act, ctx| {
                if let Some(done) = act.done.take() {
                    let _ = done.send(());
                }
                ctx.stop();
            }));
        }
    }
}

/// Commit every position that advanced. `mode` Sync for the final commit.
pub fn commit(consumer: &KafkaConsumer, tracker: &OffsetTracker, mode: CommitMode) {
    let positions = tracker.commitable();
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, pos) in &positions {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos));
    }
    // Failures of async commits arrive in `commit_callback`, which rolls them back.
    match consumer.commit(&tpl, mode) {
        Ok(()) => telemetry::offsets_committed(positions.len()),
        Err(e) => {
            tracker.rollback(&positions);
            tracing::warn!(error = %e, "offset commit failed; retried at the next interval");
        }
    }
}

/// Publish consumer lag per owned partition: high watermark minus position. Brokers that report the high
/// watermark late (tansu 0.6 answers the last batch's base offset + 1) make this read low.
pub fn report_lag(consumer: &KafkaConsumer) {
    let Ok(position) = consumer.position() else { return };
    for e in position.elements() {
        let Offset::Offset(pos) = e.offset() else { continue };
        if let Ok((_, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2)) {
            telemetry::consumer_lag(e.topic(), e.partition(), (high - pos).max(0));
        }
    }
}
