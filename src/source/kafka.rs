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

use crate::actors::channel::{ChannelActor, Dispatch, Resume};
use crate::actors::persister::{Flush, Persister};
use crate::actors::supervisor::{StageGuard, StopStage};
use crate::config::DuplicatePolicy;
use crate::kafka::decode::{Decoder, RawRecord, Rejection};
use crate::kafka::duplicates::DuplicateWindow;
use crate::kafka::offsets::{Assignments, Claim, OffsetTracker, PartitionMap};
use crate::model::{Channel, Outbound};
use crate::scenario::live::LiveScenario;
use crate::scenario::rules::glob_match;
use crate::sink::kafka::Emitter;
use crate::store::Store;
use crate::telemetry;
use crate::wire::headers::{
    DLQ_COPY_HEADER, DLQ_KIND_HEADER, DLQ_ORIGINAL_BYTES_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER,
};

/// Rebalance callbacks: on revoke, commit what is durable and give up the partition's lifecycles; on
/// assign, tell the consumer loop to resume the partition before dispatching from it.
pub struct RebalanceContext {
    tracker: Arc<OffsetTracker>,
    persister: Addr<Persister>,
    emitter: Emitter,
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
            flush_for_handover(&self.emitter, &self.persister, REVOKE_FLUSH_TIMEOUT);
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
                    Err(e) => {
                        tracing::warn!(error = %e, "final commit of revoked partitions failed")
                    }
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
            let parts: Vec<(String, i32)> =
                tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
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

/// Set `topic`'s incarnation key, adding the topic when it is new.
fn set_topic_key(topics: &mut TopicKeys, topic: &str, key: Arc<str>) {
    match topics.iter_mut().find(|(t, _)| &**t == topic) {
        Some(entry) => entry.1 = key,
        None => topics.push((Arc::from(topic), key)),
    }
}

/// Source topic names, each with its incarnation key ([`crate::model::SourcePosition::topic_id`]).
type TopicKeys = Vec<(Arc<str>, Arc<str>)>;

/// How often the assigned topics' ids are compared with those their messages are keyed by.
const INCARNATION_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Longest a revoke waits for the persister.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Make everything this instance did for the partitions durable before it lets them go: the acks its
/// lifecycles produced (delivered by Kafka, then handed to the persister) and every buffered row. The
/// next owner then resumes each lifecycle exactly after its last stored ack, so a clean handover emits no
/// ack twice. Runs from the rebalance callback, on the consumer's own thread inside its poll: the wait
/// happens on a helper thread, with a deadline.
fn flush_for_handover(emitter: &Emitter, persister: &Addr<Persister>, timeout: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (emitter, persister) = (emitter.clone(), persister.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        // Half the budget for the producer, so that the store gets the rest.
        emitter.flush(timeout / 2);
        while emitter.unforwarded() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Answers once every row handed over, the acks above included, is durable.
        let _ = futures::executor::block_on(persister.send(Flush));
        let _ = tx.send(());
    });
    let t = Instant::now();
    match rx.recv_timeout(timeout) {
        Ok(()) => {
            tracing::debug!(took = ?t.elapsed(), "acks and buffered rows written before the handover")
        }
        Err(_) => tracing::warn!(
            ?timeout,
            "the store did not take the buffered rows before the handover; the next owner consumes them again"
        ),
    }
}

/// Counters tests and reports read.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub consumed: AtomicU64,
    /// Records fetched under an earlier assignment of their partition, left for the current one.
    pub stale_skipped: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Rejected records of which the DLQ took nothing, not even a headers-only copy: skipped, logged.
    pub dead_letter_failed: AtomicU64,
    pub skipped_already_stored: AtomicU64,
    /// Records of the current assignment the broker delivered a second time, left out.
    pub redelivered_skipped: AtomicU64,
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
    /// Room for rejected records on their way to the DLQ ([`DLQ_IN_FLIGHT`]).
    pub dlq_room: Arc<tokio::sync::Semaphore>,
    /// The cluster's id, asked once.
    pub cluster_id: Arc<std::sync::OnceLock<String>>,
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
    emitter: Emitter,
) -> Result<(KafkaConsumer, tokio::sync::mpsc::UnboundedReceiver<Vec<(String, i32)>>), rdkafka::error::KafkaError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer: KafkaConsumer =
        config.create_with_context(RebalanceContext { tracker, persister, emitter, assignments, assigned: tx })?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok((consumer, rx))
}

struct Dead {
    topic: String,
    partition: i32,
    offset: i64,
    /// The tracking of the partition the offset belongs to ([`OffsetTracker::epoch`]).
    epoch: Option<u64>,
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
        // Source topic names and their incarnation keys, shared by every message read from them.
        let mut topics: TopicKeys = Vec::new();
        // Per partition: the assignment generation and the next offset expected under it.
        let mut next_offsets: PartitionMap<(u64, i64)> = PartitionMap::default();
        let mut seen = DuplicateWindow::new(match self.on_duplicate {
            DuplicatePolicy::DeadLetter => self.duplicate_window,
            DuplicatePolicy::Process => 0,
        });
        let mut incarnation_check = tokio::time::interval(INCARNATION_CHECK_EVERY);
        incarnation_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = incarnation_check.tick() => {
                    self.check_incarnations(&mut already, &mut topics, &mut next_offsets).await;
                    continue;
                }
                Some(parts) = self.assigned.recv() => {
                    // Resume even when no new record arrives for the partition.
                    self.on_assigned(&store, parts, &mut already, &mut topics).await;
                    continue;
                }
                c = stream.next() => match c { Some(c) => c, None => break },
            };
            // The assignment of a partition is announced before any of its records arrive.
            while let Ok(parts) = self.assigned.try_recv() {
                self.on_assigned(&store, parts, &mut already, &mut topics).await;
            }
            self.wait_for_room().await;
            if self.scenario.has_changed().unwrap_or(false) {
                // Headers the new version's rules match on.
                let names = self.scenario.borrow_and_update().rule_headers();
                self.decoder = self.decoder.clone().with_rule_headers(names);
            }
            // Offsets only grow within an assignment of a partition. When they go back, either the topic was
            // deleted and created again (a new topic id: its messages are keyed by the new incarnation, its
            // partitions read from the new log's start), or the broker delivered records again.
            let mut chunk = chunk;
            while let Some((i, topic, partition, generation, from, to)) =
                self.offsets_went_back(&chunk, &mut next_offsets)
            {
                let mut rest = chunk.split_off(i);
                if !chunk.is_empty() {
                    self.handle(chunk, &mut already, &mut topics, &mut seen).await;
                }
                match self.track_anew(&topic, partition, from, to, &mut already, &mut topics, &mut next_offsets).await {
                    // Records of the partitions read again from the new log's start that this chunk still
                    // holds were fetched before the seek: left out (librdkafka drops those it still holds).
                    Some(sought) => rest
                        .retain(|(m, _)| !matches!(m, Ok(m) if m.topic() == topic && sought.contains(&m.partition()))),
                    // The same log: records this assignment already delivered, delivered again (tansu 0.6
                    // does so now and then). Processing them again would plan their lifecycles twice.
                    None => {
                        let before = rest.len();
                        rest.retain(|(m, _)| {
                            !matches!(m, Ok(m) if m.topic() == topic && m.partition() == partition && m.offset() < from)
                        });
                        let again = (before - rest.len()) as u64;
                        self.stats.redelivered_skipped.fetch_add(again, Ordering::Relaxed);
                        telemetry::messages_skipped("redelivered", again);
                        tracing::debug!(
                            topic,
                            partition,
                            expected = from,
                            got = to,
                            records = again,
                            "the broker delivered records of this assignment again; left out"
                        );
                        next_offsets.insert(&topic, partition, (generation, from));
                    }
                }
                chunk = rest;
            }
            self.handle(chunk, &mut already, &mut topics, &mut seen).await;
        }
        tracing::info!("consumer stopped");
    }

    /// Whether an assigned topic was deleted and created again while assigned. librdkafka keeps the
    /// assignment and the fetch position across that; when the new log is already longer than the old
    /// position, offsets do not go back and the new log's first records would be skipped. A new topic id
    /// is the sign: what this instance holds is written, the topic's partitions are read again from the
    /// new log's start and tracked anew, under the new key.
    async fn check_incarnations(
        &self,
        already: &mut PartitionMap<HashSet<i64>>,
        topics: &mut TopicKeys,
        next_offsets: &mut PartitionMap<(u64, i64)>,
    ) {
        // The front doors' source is no Kafka topic.
        let owned: Vec<(String, i32)> =
            self.assignments.owned().into_iter().filter(|(t, _)| t != crate::source::http::SOURCE_TOPIC).collect();
        let mut names: Vec<String> = owned.iter().map(|(t, _)| t.clone()).collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return;
        }
        let Ok(Ok(keys)) = tokio::task::spawn_blocking(self.describe(names.clone(), Duration::from_secs(5))).await
        else {
            return;
        };
        for name in names {
            let Some(key) = keys.get(&name) else { continue };
            let Some(entry) = topics.iter().find(|(t, _)| **t == *name) else {
                continue;
            };
            if entry.1.is_empty() || &*entry.1 == key.as_str() {
                continue;
            }
            tracing::warn!(topic = %name, from = %entry.1, to = %key,
                "the topic was deleted and created again; reading it again from the start of its new log");
            let key = key.clone();
            self.adopt_incarnation(&name, &key, None, already, topics, next_offsets).await;
        }
    }

    /// Key `topic`'s messages by its new incarnation `key`: write what this instance holds first (no offset
    /// of the old log stays pending under a number the new log reuses), then track every owned partition of
    /// the topic anew and read it from the new log's start, that start committed at once (so that a
    /// restart does not begin at the old log's position, inside the new log). `regressed` is a partition
    /// already reading the new log from its start, at that offset. Returns the partitions sought.
    #[allow(clippy::too_many_arguments)]
    async fn adopt_incarnation(
        &self,
        topic: &str,
        key: &str,
        regressed: Option<(i32, i64)>,
        already: &mut PartitionMap<HashSet<i64>>,
        topics: &mut TopicKeys,
        next_offsets: &mut PartitionMap<(u64, i64)>,
    ) -> Vec<i32> {
        let _ = self.persister.send(Flush).await;
        set_topic_key(topics, topic, Arc::from(key));
        let partitions: Vec<i32> =
            self.assignments.owned().into_iter().filter(|(t, _)| t == topic).map(|(_, p)| p).collect();
        let mut sought = Vec::new();
        for partition in partitions {
            self.tracker.assign(topic, partition);
            already.remove(topic, partition);
            next_offsets.remove(topic, partition);
            let (consumer, name) = (self.consumer.clone(), topic.to_owned());
            let at = regressed.filter(|(p, _)| *p == partition).map(|(_, o)| o);
            let moved = tokio::task::spawn_blocking(move || {
                let start = match at {
                    Some(o) => o,
                    None => {
                        let start = consumer.fetch_watermarks(&name, partition, Duration::from_secs(10))?.0;
                        consumer.seek(&name, partition, Offset::Offset(start), Duration::from_secs(10))?;
                        start
                    }
                };
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&name, partition, Offset::Offset(start))?;
                consumer.commit(&tpl, CommitMode::Sync)?;
                Ok::<_, rdkafka::error::KafkaError>(at.is_none())
            })
            .await;
            match moved {
                Ok(Ok(true)) => sought.push(partition),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(topic, partition, error = %e, "cannot read the new log from its start"),
                Err(_) => {}
            }
        }
        sought
    }

    /// The first record of `chunk` whose offset is below the next one expected on its partition (under
    /// the current assignment), with its topic, partition, the offset expected and the one found. Records
    /// fetched under an earlier assignment are left out, as in [`Self::handle`].
    fn offsets_went_back(
        &self,
        chunk: &[(rdkafka::error::KafkaResult<BorrowedMessage<'_>>, u64)],
        next_offsets: &mut PartitionMap<(u64, i64)>,
    ) -> Option<(usize, String, i32, u64, i64, i64)> {
        // Claims of this chunk's partitions: one lookup per partition, not per record.
        let mut claims: Vec<(i32, &str, Option<Claim>)> = Vec::new();
        for (i, (m, read_at)) in chunk.iter().enumerate() {
            let Ok(m) = m else { continue };
            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
            let at = match claims.iter().position(|(p, t, _)| *p == partition && *t == topic) {
                Some(at) => at,
                None => {
                    claims.push((partition, topic, self.assignments.claim(topic, partition)));
                    claims.len() - 1
                }
            };
            let Some(claim) = &claims[at].2 else { continue };
            if claim.fetched_before(*read_at) {
                continue;
            }
            let generation = claim.generation();
            match next_offsets.get(topic, partition) {
                Some(&(g, next)) if g == generation && offset < next => {
                    next_offsets.remove(topic, partition);
                    return Some((i, topic.to_owned(), partition, g, next, offset));
                }
                _ => next_offsets.insert(topic, partition, (generation, offset + 1)),
            }
        }
        None
    }

    /// After offsets went back on a partition: learn the topic's incarnation again. A new one is adopted
    /// for the whole topic ([`Self::adopt_incarnation`]): `Some` of the partitions sought to the new log's
    /// start. The same one (or none learnt: the broker did not answer) means the broker delivered records of
    /// this assignment again: `None`, and the caller leaves them out.
    #[allow(clippy::too_many_arguments)]
    async fn track_anew(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        already: &mut PartitionMap<HashSet<i64>>,
        topics: &mut TopicKeys,
        next_offsets: &mut PartitionMap<(u64, i64)>,
    ) -> Option<Vec<i32>> {
        let keys = self.topic_keys(&[topic.to_owned()]).await;
        let before = topics.iter().find(|(t, _)| &**t == topic).map(|(_, k)| k.clone());
        match keys.get(topic) {
            Some(key) if before.as_deref() != Some(key.as_str()) => {
                tracing::warn!(topic, partition, expected = from, got = to, from = ?before, to = %key,
                    "offsets went back: the topic was created again; its messages are keyed by its new id");
                let key = key.clone();
                Some(self.adopt_incarnation(topic, &key, Some((partition, to)), already, topics, next_offsets).await)
            }
            _ => None,
        }
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

    /// Newly assigned partitions: learn their topics' incarnations (a topic may have been created again
    /// since it was last assigned), then resume each partition from the store.
    async fn on_assigned(
        &self,
        store: &Store,
        parts: Vec<(String, i32)>,
        already: &mut PartitionMap<HashSet<i64>>,
        topics: &mut TopicKeys,
    ) {
        let mut names: Vec<String> = parts.iter().map(|(t, _)| t.clone()).collect();
        names.sort();
        names.dedup();
        let keys = self.topic_keys(&names).await;
        for name in names {
            let key: Arc<str> = keys.get(&name).map(|k| Arc::from(k.as_str())).unwrap_or_else(|| Arc::from(""));
            if let Some((_, before)) = topics.iter().find(|(t, _)| **t == *name)
                && *before != key
            {
                tracing::info!(topic = %name, from = %before, to = %key, "the topic is a new incarnation (created again)");
            }
            set_topic_key(topics, &name, key);
        }
        for (topic, partition) in parts {
            let key =
                topics.iter().find(|(t, _)| **t == *topic).map(|(_, k)| k.clone()).unwrap_or_else(|| Arc::from(""));
            self.resume(store, &topic, &key, partition, already).await;
        }
    }

    /// The incarnation keys of `topics` ([`crate::kafka::admin::topic_keys`]), retried while the broker does
    /// not answer; a broker without DescribeTopics gives none (logged once), and messages are keyed by
    /// topic, partition and offset alone, as before.
    async fn topic_keys(&self, topics: &[String]) -> std::collections::HashMap<String, String> {
        let mut backoff = Duration::from_millis(200);
        for attempt in 0.. {
            let r = tokio::task::spawn_blocking(self.describe(topics.to_vec(), Duration::from_secs(10))).await;
            match r {
                Ok(Ok(keys)) => return keys,
                Ok(Err(e)) if attempt < 5 && !self.shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot learn the input topics' ids yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot learn the input topics' ids; messages are keyed by topic, partition and offset alone");
                    break;
                }
                Err(_) => break,
            }
        }
        Default::default()
    }

    /// A blocking call that learns the incarnation keys of `topics`; the cluster id is asked once.
    fn describe(
        &self,
        topics: Vec<String>,
        timeout: Duration,
    ) -> impl FnOnce() -> crate::kafka::Result<std::collections::HashMap<String, String>> + Send + 'static {
        let (consumer, cluster) = (self.consumer.clone(), self.cluster_id.clone());
        move || {
            let id = match cluster.get() {
                Some(id) => id.clone(),
                None => {
                    let id = crate::kafka::admin::cluster_id(consumer.client(), timeout)?;
                    cluster.get_or_init(|| id).clone()
                }
            };
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            crate::kafka::admin::topic_keys(consumer.client(), &id, &names, timeout)
        }
    }

    async fn resume(
        &self,
        store: &Store,
        topic: &str,
        topic_id: &str,
        partition: i32,
        already: &mut PartitionMap<HashSet<i64>>,
    ) {
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
        // Rows this instance still buffers for the partition are written first (`Flush` answers once they
        // are durable), so that every stored offset below is also either resumed or finished.
        let _ = self.persister.send(Flush).await;
        let mut backoff = Duration::from_millis(200);
        let (pending, stored) = loop {
            let r = async {
                let stored = store.stored_offsets(topic, topic_id, partition, committed).await?;
                Ok::<_, crate::store::StoreError>((store.pending(topic, topic_id, partition).await?, stored))
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
        let Some(claim) = self.assignments.claim(topic, partition) else {
            return;
        };
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
        topics: &mut TopicKeys,
        seen: &mut DuplicateWindow,
    ) {
        let now = Utc::now();
        let scenario = self.scenario.borrow().clone();
        let mut by_channel: [Vec<(Claim, Outbound)>; 3] = Default::default();
        // Claims of this chunk's partitions: one lookup per partition, not per record.
        let mut claims: Vec<(i32, (Arc<str>, Arc<str>), Option<Claim>)> = Vec::new(); // (partition, (topic, key), claim)
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
            let known = claims.iter().position(|(p, t, _)| *p == partition && &*t.0 == topic);
            let at = known.unwrap_or_else(|| {
                let t = match topics.iter().find(|t| &*t.0 == topic) {
                    Some(t) => t.clone(),
                    None => {
                        topics.push((topic.into(), Arc::from("")));
                        topics[topics.len() - 1].clone()
                    }
                };
                claims.push((partition, t, self.assignments.claim(topic, partition)));
                claims.len() - 1
            });
            // Fetched before a revoke: the partition's new owner processes it.
            let Some(claim) = claims[at].2.clone() else {
                continue;
            };
            // Fetched under an earlier assignment of the partition: not tracked, because tracking it could
            // move the committed position past offsets the new assignment has not delivered yet. The new
            // assignment's fetch starts at the committed position and delivers it again.
            if claim.fetched_before(read_at) {
                self.stats.stale_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (topic_arc, topic_id) = claims[at].1.clone();
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
            let raw = RawRecord { topic: topic_arc, topic_id, partition, offset, payload: m.payload(), headers };
            let decoded = self.decoder.decode(&raw, now).and_then(|o| {
                if !scenario.has_channel(o.channel) {
                    Err(Rejection::new(
                        "channel_not_in_scenario",
                        format!("the scenario `{}` has no `{}` channel", scenario.name(), o.channel),
                    ))
                } else if seen.is_duplicate(&o.payload_id, topic, partition, offset) {
                    Err(Rejection::new(
                        "duplicate_payload_id",
                        format!(
                            "payload id `{}` was already taken from another offset (`input.on_duplicate_payload_id: dead_letter`)",
                            o.payload_id
                        ),
                    ))
                } else {
                    Ok(o)
                }
            });
            match decoded {
                Ok(o) if !self.serves(o.tenant_id.as_deref()) => {
                    // Another instance's tenant: skipped, and committable at once.
                    self.stats.skipped_other_tenant.fetch_add(1, Ordering::Relaxed);
                    telemetry::messages_skipped("other_tenant", 1);
                    self.tracker.done(topic, partition, offset);
                }
                Ok(o) => by_channel[o.channel.index()].push((claim, o)),
                Err(rejection) => dead.push(Dead {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    epoch: self.tracker.epoch(topic, partition),
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
            let Some(addr) = &self.channels[i] else {
                continue;
            };
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

    /// Hand rejected records to the dead-letter writer, which runs beside the loop: a record the DLQ is
    /// slow to take holds back only its own partition's commits, never the other partitions. Waits only
    /// while [`DLQ_IN_FLIGHT`] records are already on their way.
    async fn dead_letter(&self, dead: Vec<Dead>) {
        let t = Instant::now();
        let permits = self.dlq_room.clone().acquire_many_owned(dead.len().min(DLQ_IN_FLIGHT) as u32).await;
        telemetry::backpressure("dead_letter", t.elapsed());
        let Ok(permits) = permits else { return };
        let writer = DeadLetterWriter {
            producer: self.dlq.clone(),
            topic: self.dlq_topic.clone(),
            tracker: self.tracker.clone(),
            stats: self.stats.clone(),
            shutdown: self.shutdown.clone(),
        };
        actix::spawn(async move {
            futures::future::join_all(dead.into_iter().map(|d| writer.write(d))).await;
            drop(permits);
        });
    }
}

/// Rejected records on their way to the DLQ, at most.
pub const DLQ_IN_FLIGHT: usize = 10_000;

/// The body of a dead-letter copy cut to fit, at most.
pub const DLQ_CUT_BYTES: usize = 64 * 1024;

/// Headers of the original kept on a cut copy only up to this many bytes in all.
const DLQ_CUT_HEADER_BYTES: usize = 16 * 1024;

/// What goes to the DLQ for a rejected record: the original, or, when the DLQ cannot take that, a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DlqForm {
    /// Untouched key, bytes and headers, plus the DLQ's headers.
    Original,
    /// The body cut to [`DLQ_CUT_BYTES`], the original headers only if small.
    BodyCut,
    /// No body, none of the original headers: the DLQ's headers and the key (cut to 1 KiB).
    HeadersOnly,
}

/// Writes rejected records to the dead-letter topic; a record's offset is released once the DLQ has it
/// (or, when even a headers-only copy cannot be written, once that is counted and logged).
struct DeadLetterWriter {
    producer: FutureProducer,
    topic: String,
    tracker: Arc<OffsetTracker>,
    stats: Arc<ConsumerStats>,
    shutdown: CancellationToken,
}

impl DeadLetterWriter {
    async fn write(&self, d: Dead) {
        let mut form = DlqForm::Original;
        let mut refused: Option<String> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let (body, headers, key) = dlq_record(&d, form, refused.as_deref());
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
            if let Some(b) = body {
                record = record.payload(b);
            }
            if let Some(k) = key {
                record = record.key(k);
            }
            // Retriable errors are retried inside librdkafka (`message.timeout.ms` 0 = until delivered); an
            // error here is about this record, or a timeout the user configured.
            match self.producer.send(record, rdkafka::util::Timeout::Never).await {
                Ok(_) => {
                    telemetry::message_dead_lettered(d.rejection.kind);
                    if form != DlqForm::Original {
                        telemetry::dead_letter_copy(form.label());
                        tracing::warn!(topic = %d.topic, partition = d.partition, offset = d.offset,
                            bytes = d.payload.len(), copy = form.label(), reason = refused.as_deref().unwrap_or_default(),
                            "the dead-letter topic refused the original record; a copy went instead");
                    }
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.rejection.reason, "dead-lettered");
                    self.release(&d);
                    return;
                }
                Err((e, _)) if refuses_record(&e) => match form.smaller() {
                    Some(next) => {
                        refused = Some(e.to_string());
                        form = next;
                    }
                    None => {
                        // Nothing of it fits: counted, logged with its position, and left behind so that
                        // the partition moves on.
                        telemetry::dead_letter_failed(d.rejection.kind);
                        self.stats.dead_letter_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(topic = %d.topic, partition = d.partition, offset = d.offset,
                            bytes = d.payload.len(), error = %e, reason = %d.rejection.reason,
                            "the dead-letter topic refused even a headers-only copy; the record is skipped");
                        self.release(&d);
                        return;
                    }
                },
                Err((e, _)) => {
                    if self.shutdown.is_cancelled() {
                        // Left uncommitted: consumed and dead-lettered again after the restart.
                        return;
                    }
                    tracing::warn!(error = %e, topic = %d.topic, partition = d.partition, offset = d.offset,
                        retry_in = ?backoff, "cannot dead-letter yet; retrying (only this record's partition waits)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl DeadLetterWriter {
    /// The record's offset is done, in the tracking it was taken under.
    fn release(&self, d: &Dead) {
        if let Some(epoch) = d.epoch {
            self.tracker.done_in(&d.topic, d.partition, epoch, d.offset);
        }
    }
}

impl DlqForm {
    fn smaller(self) -> Option<Self> {
        match self {
            DlqForm::Original => Some(DlqForm::BodyCut),
            DlqForm::BodyCut => Some(DlqForm::HeadersOnly),
            DlqForm::HeadersOnly => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            DlqForm::Original => "original",
            DlqForm::BodyCut => "body-cut",
            DlqForm::HeadersOnly => "headers-only",
        }
    }
}

/// Errors that say the DLQ will never take this record as it is (too large, or refused by the topic's
/// rules), as opposed to the broker being away.
fn refuses_record(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::MessageBatchTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::PolicyViolation
        )
    )
}

/// Body, headers and key of the DLQ record for `d` in `form`. `refused` is the error that refused the
/// larger form, said in the copy's reason.
fn dlq_record<'a>(
    d: &'a Dead,
    form: DlqForm,
    refused: Option<&str>,
) -> (Option<&'a [u8]>, OwnedHeaders, Option<&'a [u8]>) {
    let original_headers_bytes: usize =
        d.headers.as_ref().map(|h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum()).unwrap_or(0);
    let mut headers = match form {
        DlqForm::Original => d.headers.clone().unwrap_or_default(),
        DlqForm::BodyCut if original_headers_bytes <= DLQ_CUT_HEADER_BYTES => d.headers.clone().unwrap_or_default(),
        _ => OwnedHeaders::new(),
    };
    let reason = match (form, refused) {
        (DlqForm::Original, _) | (_, None) => d.rejection.reason.clone(),
        (_, Some(err)) => format!(
            "{}; the dead-letter topic refused the original record of {} bytes ({err}), so this is a {} copy",
            d.rejection.reason,
            d.payload.len(),
            form.label()
        ),
    };
    headers = headers
        .insert(Header { key: DLQ_REASON_HEADER, value: Some(reason.as_bytes()) })
        .insert(Header { key: DLQ_KIND_HEADER, value: Some(d.rejection.kind.as_bytes()) })
        .insert(Header { key: DLQ_SOURCE_TOPIC_HEADER, value: Some(d.topic.as_bytes()) })
        .insert(Header { key: DLQ_SOURCE_PARTITION_HEADER, value: Some(d.partition.to_string().as_bytes()) })
        .insert(Header { key: DLQ_SOURCE_OFFSET_HEADER, value: Some(d.offset.to_string().as_bytes()) });
    if form != DlqForm::Original {
        headers = headers
            .insert(Header { key: DLQ_COPY_HEADER, value: Some(form.label().as_bytes()) })
            .insert(Header { key: DLQ_ORIGINAL_BYTES_HEADER, value: Some(d.payload.len().to_string().as_bytes()) });
    }
    let body = match form {
        DlqForm::Original => Some(d.payload.as_slice()),
        DlqForm::BodyCut => Some(&d.payload[..d.payload.len().min(DLQ_CUT_BYTES)]),
        DlqForm::HeadersOnly => None,
    };
    let key = d.key.as_deref().map(|k| match form {
        DlqForm::HeadersOnly => &k[..k.len().min(1024)],
        _ => k,
    });
    (body, headers, key)
}

/// Runs the consumer loop inside the actor system; stops when the loop ends.
pub struct ConsumerActor {
    run: Option<ConsumerLoop>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    _guard: StageGuard,
}

impl ConsumerActor {
    pub fn new(run: ConsumerLoop, done: tokio::sync::oneshot::Sender<()>, guard: StageGuard) -> Self {
        Self { run: Some(run), done: Some(done), _guard: guard }
    }
}

impl Handler<StopStage> for ConsumerActor {
    type Result = ();
    fn handle(&mut self, _: StopStage, ctx: &mut Self::Context) {
        ctx.stop();
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
/// watermark late (tansu 0.6 answers the last batch's base offset + 1) make this read low. A partition
/// nothing has been taken from yet has no position: its lag is from the committed offset, or, with none,
/// from the log's start (`auto.offset.reset` earliest), so that the partition furthest behind is not the
/// one left out.
pub fn report_lag(consumer: &KafkaConsumer) {
    let Ok(position) = consumer.position() else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let mut unread = TopicPartitionList::new();
    for e in position.elements() {
        if !matches!(e.offset(), Offset::Offset(_)) {
            let _ = unread.add_partition(e.topic(), e.partition());
        }
    }
    let committed = if unread.count() > 0 { consumer.committed_offsets(unread, timeout).ok() } else { None };
    for e in position.elements() {
        let Ok((low, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout) else {
            continue;
        };
        let pos = match e.offset() {
            Offset::Offset(pos) => pos,
            _ => {
                match committed.as_ref().and_then(|c| c.find_partition(e.topic(), e.partition())).map(|c| c.offset()) {
                    Some(Offset::Offset(pos)) => pos,
                    _ => low,
                }
            }
        };
        telemetry::consumer_lag(e.topic(), e.partition(), (high - pos).max(0));
    }
}
