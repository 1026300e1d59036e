//! The audit store: every consumed message with its plan, every delivered ack event, written in batches.
//! Postgres is the production store; SQLite is the zero-setup default, with the same semantics.

mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{AckEvent, Channel, Outbound, SourcePosition, micros_to_time};
use crate::plan::{Plan, PlannedMessage};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("store: migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: `{url}` is not a postgres:// or sqlite:// URL")]
    UnsupportedUrl { url: String },
    #[error("store: row of `{payload_id}` cannot be read back: {reason}")]
    Corrupt { payload_id: String, reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A message row, ready to write.
#[derive(Clone, Debug)]
pub struct MessageRow {
    pub topic: Arc<str>,
    /// The topic's incarnation ([`SourcePosition::topic_id`]); part of the key with topic, partition, offset.
    pub topic_id: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub payload_id: Arc<str>,
    pub batch_id: Arc<str>,
    pub channel: &'static str,
    pub recipient: Arc<str>,
    pub tenant_id: Option<Arc<str>>,
    pub received_at_us: i64,
    pub scenario: Arc<str>,
    pub path: Arc<str>,
    pub planned_events: i32,
    pub plan: String,
    pub headers: String,
    pub body: Vec<u8>,
    /// Version of the scenario that planned the message ([`crate::scenario::Scenario::version`]).
    pub scenario_version: Arc<str>,
    /// The rule that chose the behaviour; none = the channel's own paths.
    pub rule: Option<Arc<str>>,
    /// Kinds of injected fault in the plan, comma-separated.
    pub faults: Option<String>,
    /// The id the vendor gave the message ([`Plan::vendor_message_id`]).
    pub vendor_message_id: Arc<str>,
}

impl MessageRow {
    /// The row of a planned message; the body is moved out of the message (lifecycles do not need it),
    /// the ids are shared with it.
    pub fn new(m: &mut PlannedMessage, scenario: &Arc<str>, scenario_version: &Arc<str>) -> Self {
        let body = std::mem::take(&mut m.outbound.body);
        let mut plan = Vec::with_capacity(256);
        m.plan.write_json(&mut plan);
        let o = &m.outbound;
        Self {
            topic: o.source.topic.clone(),
            topic_id: o.source.topic_id.clone(),
            partition: o.source.partition,
            offset: o.source.offset,
            payload_id: o.payload_id.clone(),
            batch_id: o.batch_id.clone(),
            channel: o.channel.as_str(),
            recipient: o.recipient.clone(),
            tenant_id: o.tenant_id.clone(),
            received_at_us: o.received_at.timestamp_micros(),
            scenario: scenario.clone(),
            path: m.plan.path.clone(),
            planned_events: m.plan.distinct_events() as i32,
            plan: crate::json::into_string(plan),
            headers: encode_headers(&o.headers),
            body,
            scenario_version: scenario_version.clone(),
            rule: m.plan.rule.clone(),
            faults: m.plan.fault_kinds(),
            vendor_message_id: m.plan.vendor_message_id.clone(),
        }
    }
}

/// An event row, ready to write: the event plus where it landed in the ack topic.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub event: AckEvent,
    pub ack_partition: i32,
    pub ack_offset: i64,
}

/// One webhook delivery attempt ([`Store::write_attempts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    pub event_id: Uuid,
    /// 1, 2, …: numbered on across restarts.
    pub attempt: i32,
    pub payload_id: Arc<str>,
    pub vendor: &'static str,
    pub url: Arc<str>,
    /// `delivered`, `refused` (an answer, not 2xx) or `unreachable`.
    pub outcome: &'static str,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub attempted_at_us: i64,
    /// When the next attempt is due; none when this was the last (delivered, or given up).
    pub next_attempt_at_us: Option<i64>,
}

/// An event's latest webhook attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastAttempt {
    pub attempt: i32,
    pub outcome: String,
    pub next_attempt_at_us: Option<i64>,
}

/// A stored webhook attempt, as [`Store::attempts`] reads it back.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAttempt {
    pub event_id: String,
    pub attempt: i32,
    pub payload_id: String,
    pub vendor: String,
    pub url: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub attempted_at_us: i64,
    pub next_attempt_at_us: Option<i64>,
}

/// A stored message whose lifecycle has not finished, with the ids of the events already stored.
#[derive(Clone, Debug)]
pub struct PendingLifecycle {
    pub message: PlannedMessage,
    pub stored_events: HashSet<Uuid>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HeaderJson {
    n: String,
    v: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hex: bool,
}

fn encode_headers(headers: &[(String, Vec<u8>)]) -> String {
    if headers.is_empty() {
        return "[]".into();
    }
    let mut out = Vec::with_capacity(64 * headers.len());
    out.push(b'[');
    for (i, (n, v)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut w = crate::json::ObjectWriter::new(&mut out);
        match std::str::from_utf8(v) {
            Ok(s) => w.str("n", n).str("v", s),
            Err(_) => {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                w.str("n", n).str("v", &hex).bool("hex", true)
            }
        }
        .end();
    }
    out.push(b']');
    crate::json::into_string(out)
}

fn decode_headers(text: &str) -> Vec<(String, Vec<u8>)> {
    let list: Vec<HeaderJson> = serde_json::from_str(text).unwrap_or_default();
    list.into_iter()
        .map(|h| {
            let v = if h.hex {
                (0..h.v.len() / 2).filter_map(|i| u8::from_str_radix(&h.v[2 * i..2 * i + 2], 16).ok()).collect()
            } else {
                h.v.into_bytes()
            };
            (h.n, v)
        })
        .collect()
}

/// The columns the pending-lifecycle queries return.
#[derive(sqlx::FromRow)]
struct PendingRow {
    src_topic: String,
    src_topic_id: String,
    src_partition: i32,
    src_offset: i64,
    payload_id: String,
    batch_id: String,
    channel: String,
    recipient: String,
    tenant_id: Option<String>,
    received_at_us: i64,
    plan: String,
    headers: String,
}

impl PendingRow {
    fn into_message(self) -> Result<PlannedMessage> {
        let corrupt = |reason: String| StoreError::Corrupt { payload_id: self.payload_id.clone(), reason };
        let plan: Plan = serde_json::from_str(&self.plan).map_err(|e| corrupt(e.to_string()))?;
        let channel = Channel::from_str(&self.channel).map_err(corrupt)?;
        Ok(PlannedMessage {
            outbound: Outbound {
                source: SourcePosition {
                    topic: self.src_topic.into(),
                    topic_id: self.src_topic_id.into(),
                    partition: self.src_partition,
                    offset: self.src_offset,
                },
                payload_id: self.payload_id.into(),
                batch_id: self.batch_id.into(),
                channel,
                recipient: self.recipient.into(),
                tenant_id: self.tenant_id.map(Arc::from),
                headers: decode_headers(&self.headers),
                rule_headers: Vec::new(),
                body: Vec::new(),
                received_at: micros_to_time(self.received_at_us),
            },
            plan,
        })
    }
}

/// A stored message found by the id its vendor gave it, with its events stored so far, oldest first.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub payload_id: String,
    pub channel: Channel,
    pub recipient: String,
    pub tenant_id: Option<String>,
    pub received_at_us: i64,
    /// The request as it came (empty for a request's second and later messages).
    pub body: Vec<u8>,
    pub plan: Plan,
    pub events: Vec<StoredEvent>,
}

/// One stored event of a [`StoredMessage`].
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub status: crate::model::Status,
    pub attempt: i32,
    pub emitted_at_us: i64,
    pub error_code: Option<String>,
    pub error_reason: Option<String>,
}

/// The columns a [`StoredMessage`] is read from.
#[derive(sqlx::FromRow)]
struct StoredMessageRow {
    payload_id: String,
    channel: String,
    recipient: String,
    tenant_id: Option<String>,
    received_at_us: i64,
    body: Vec<u8>,
    plan: String,
}

impl StoredMessageRow {
    fn into_stored(self, events: Vec<StoredEvent>) -> Result<StoredMessage> {
        let corrupt = |reason: String| StoreError::Corrupt { payload_id: self.payload_id.clone(), reason };
        let plan: Plan = serde_json::from_str(&self.plan).map_err(|e| corrupt(e.to_string()))?;
        let channel = Channel::from_str(&self.channel).map_err(corrupt)?;
        Ok(StoredMessage {
            payload_id: self.payload_id,
            channel,
            recipient: self.recipient,
            tenant_id: self.tenant_id,
            received_at_us: self.received_at_us,
            body: self.body,
            plan,
            events,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventStateRow {
    status: String,
    attempt: i32,
    emitted_at_us: i64,
    error_code: Option<String>,
    error_reason: Option<String>,
}

/// Per channel and status counts, for reports.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusCount {
    pub channel: String,
    pub status: String,
    pub n: i64,
}

/// Totals, for reports.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct Totals {
    pub messages: i64,
    pub events: i64,
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
}

/// One generator process's part of a load run (`runs` table).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunRow {
    pub run_id: String,
    pub generator: i32,
    pub started_at_us: i64,
    pub ended_at_us: i64,
    /// The generator's settings, JSON.
    pub settings: String,
    /// The scenario file the mock ran, when known.
    pub scenario: Option<String>,
    /// Counts and latency histograms, JSON.
    pub results: String,
}

/// One row of a load run's record (`run_events` table).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunEventRow {
    pub generator: i32,
    pub seq: i64,
    pub channel: String,
    /// A status, `LOST` or `NOT_SENT`.
    pub status: String,
    pub intended_at_us: i64,
    pub latency_us: Option<i64>,
}

/// A load run in the list of runs.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunListing {
    pub run_id: String,
    pub generators: i64,
    pub started_at_us: i64,
    pub ended_at_us: i64,
}

/// A store connection pool, Postgres or SQLite.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Store {
    /// Connect (lazily: connections are made on first use, on the caller's runtime) and run migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let store = Self::connect_lazy(url, max_connections)?;
        store.migrate().await?;
        Ok(store)
    }

    /// A pool whose connections are opened on first use; no migrations.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::connect_lazy(url, max_connections).map(Store::Postgres)
        } else if url.starts_with("sqlite:") {
            sqlite::connect_lazy(url).map(Store::Sqlite)
        } else {
            Err(StoreError::UnsupportedUrl { url: crate::config::redact(url) })
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Postgres(p) => sqlx::migrate!("src/store/migrations/postgres").run(p).await?,
            Store::Sqlite(p) => sqlx::migrate!("src/store/migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Write messages then events in one transaction. Rows already stored are skipped.
    pub async fn write(&self, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::write(p, messages, events).await,
            Store::Sqlite(p) => sqlite::write(p, messages, events).await,
        }
    }

    /// Unfinished lifecycles of one partition of one incarnation of a topic.
    pub async fn pending(&self, topic: &str, topic_id: &str, partition: i32) -> Result<Vec<PendingLifecycle>> {
        let rows = match self {
            Store::Postgres(p) => postgres::pending(p, topic, topic_id, partition).await?,
            Store::Sqlite(p) => sqlite::pending(p, topic, topic_id, partition).await?,
        };
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            messages.push(row.into_message()?);
        }
        let ids: Vec<String> = messages.iter().map(|m| m.outbound.payload_id.to_string()).collect();
        let stored = match self {
            Store::Postgres(p) => postgres::event_ids(p, &ids).await?,
            Store::Sqlite(p) => sqlite::event_ids(p, &ids).await?,
        };
        Ok(messages
            .into_iter()
            .map(|message| {
                let stored_events = message
                    .plan
                    .steps
                    .iter()
                    .map(|s| crate::model::event_id(&message.outbound.payload_id, s.status, s.attempt))
                    .filter(|id| stored.contains(id))
                    .collect();
                PendingLifecycle { message, stored_events }
            })
            .collect())
    }

    /// Offsets of stored messages of one partition of one incarnation of a topic, at or after `from`.
    pub async fn stored_offsets(&self, topic: &str, topic_id: &str, partition: i32, from: i64) -> Result<HashSet<i64>> {
        let q = match self {
            Store::Postgres(_) => include_str!("sql/postgres/message_offsets_from.sql"),
            Store::Sqlite(_) => include_str!("sql/sqlite/message_offsets_from.sql"),
        };
        let rows: Vec<(i64,)> = match self {
            Store::Postgres(p) => {
                sqlx::query_as(q).bind(topic).bind(partition).bind(from).bind(topic_id).fetch_all(p).await?
            }
            Store::Sqlite(p) => {
                sqlx::query_as(q).bind(topic).bind(partition).bind(from).bind(topic_id).fetch_all(p).await?
            }
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The payload ids stored from one source (every partition).
    pub async fn payload_ids(&self, topic: &str, topic_id: &str) -> Result<Vec<String>> {
        let q = match self {
            Store::Postgres(_) => include_str!("sql/postgres/message_payload_ids.sql"),
            Store::Sqlite(_) => include_str!("sql/sqlite/message_payload_ids.sql"),
        };
        let rows: Vec<(String,)> = match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(topic).bind(topic_id).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(topic).bind(topic_id).fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The highest offset stored for one partition of one source, or -1 when it has none.
    pub async fn max_offset(&self, topic: &str, topic_id: &str, partition: i32) -> Result<i64> {
        let q = match self {
            Store::Postgres(_) => include_str!("sql/postgres/message_max_offset.sql"),
            Store::Sqlite(_) => include_str!("sql/sqlite/message_max_offset.sql"),
        };
        let (max,): (i64,) = match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(topic).bind(partition).bind(topic_id).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(topic).bind(partition).bind(topic_id).fetch_one(p).await?,
        };
        Ok(max)
    }

    /// The latest migration applied, or `None` when `run` has not set this store up yet (no tables). A
    /// query, so it also tells whether the store answers.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let exists: bool = match self {
            Store::Postgres(p) => {
                sqlx::query_scalar(include_str!("sql/postgres/migrations_table_exists.sql")).fetch_one(p).await?
            }
            Store::Sqlite(p) => {
                sqlx::query_scalar(include_str!("sql/sqlite/migrations_table_exists.sql")).fetch_one(p).await?
            }
        };
        if !exists {
            return Ok(None);
        }
        let q = include_str!("sql/schema_version.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await?,
        })
    }

    pub async fn status_counts(&self) -> Result<Vec<StatusCount>> {
        let q = include_str!("sql/status_counts.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).fetch_all(p).await?,
        })
    }

    pub async fn totals(&self) -> Result<Totals> {
        let q = include_str!("sql/totals.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).fetch_one(p).await?,
        })
    }

    /// The message stored under either of two vendor ids (one id, written the ways its channels write it:
    /// Twilio's `SM…` is an SMS's id and a WhatsApp message's `wamid.…`), and its events so far.
    pub async fn message_by_vendor_id(&self, ids: [&str; 2]) -> Result<Option<StoredMessage>> {
        let q = include_str!("sql/message_by_vendor_id.sql");
        let row: Option<StoredMessageRow> = match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(ids[0]).bind(ids[1]).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(ids[0]).bind(ids[1]).fetch_optional(p).await?,
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let q = include_str!("sql/events_by_payload.sql");
        let events: Vec<EventStateRow> = match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(&row.payload_id).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(&row.payload_id).fetch_all(p).await?,
        };
        let events = events
            .into_iter()
            .filter_map(|e| {
                Some(StoredEvent {
                    status: e.status.parse().ok()?,
                    attempt: e.attempt,
                    emitted_at_us: e.emitted_at_us,
                    error_code: e.error_code,
                    error_reason: e.error_reason,
                })
            })
            .collect();
        Ok(Some(row.into_stored(events)?))
    }

    /// The stored messages of these payload ids that a front door took (not refused at the send call),
    /// one each, without their events: what a repeated lifecycle key is answered from.
    pub async fn taken_messages(&self, payload_ids: &[String]) -> Result<Vec<StoredMessage>> {
        let mut rows: Vec<StoredMessageRow> = Vec::new();
        for chunk in payload_ids.chunks(500) {
            rows.extend(match self {
                Store::Postgres(p) => {
                    sqlx::query_as(include_str!("sql/postgres/messages_by_payload_ids.sql")).bind(chunk).fetch_all(p).await?
                }
                Store::Sqlite(p) => {
                    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                        "SELECT payload_id, channel, recipient, tenant_id, received_at_us, body, plan FROM messages WHERE payload_id IN (",
                    );
                    let mut sep = q.separated(", ");
                    for id in chunk {
                        sep.push_bind(id);
                    }
                    q.push(") ORDER BY received_at_us");
                    q.build_query_as().fetch_all(p).await?
                }
            });
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for row in rows {
            let m = row.into_stored(Vec::new())?;
            if !m.plan.refused_at_send() && seen.insert(m.payload_id.clone()) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Store webhook attempts; one already stored (the same event and attempt) is left as it is.
    pub async fn write_attempts(&self, rows: &[AttemptRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(p) => {
                sqlx::query(include_str!("sql/postgres/attempt_insert.sql"))
                    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| &*r.payload_id).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.vendor).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| &*r.url).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.outcome).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.http_status).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.attempted_at_us).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.next_attempt_at_us).collect::<Vec<_>>())
                    .execute(p)
                    .await?;
            }
            Store::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for chunk in rows.chunks(3000) {
                    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                        "INSERT INTO webhook_attempts (event_id, attempt, payload_id, vendor, url, outcome, http_status, \
                         error, attempted_at_us, next_attempt_at_us) ",
                    );
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(r.event_id.to_string())
                            .push_bind(r.attempt)
                            .push_bind(&*r.payload_id)
                            .push_bind(r.vendor)
                            .push_bind(&*r.url)
                            .push_bind(r.outcome)
                            .push_bind(r.http_status)
                            .push_bind(r.error.as_deref())
                            .push_bind(r.attempted_at_us)
                            .push_bind(r.next_attempt_at_us);
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The latest webhook attempt of each of these events that has one.
    pub async fn last_attempts(&self, event_ids: &[Uuid]) -> Result<HashMap<Uuid, LastAttempt>> {
        let mut out = HashMap::new();
        for chunk in event_ids.chunks(500) {
            let rows: Vec<(String, i32, String, Option<i64>)> = match self {
                Store::Postgres(p) => {
                    sqlx::query_as(include_str!("sql/postgres/attempts_last.sql")).bind(chunk).fetch_all(p).await?
                }
                Store::Sqlite(p) => {
                    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                        "SELECT event_id, max(attempt) AS attempt, outcome, next_attempt_at_us FROM webhook_attempts \
                         WHERE event_id IN (",
                    );
                    let mut sep = q.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.to_string());
                    }
                    q.push(") GROUP BY event_id");
                    q.build_query_as().fetch_all(p).await?
                }
            };
            for (id, attempt, outcome, next_attempt_at_us) in rows {
                if let Ok(id) = Uuid::parse_str(&id) {
                    out.insert(id, LastAttempt { attempt, outcome, next_attempt_at_us });
                }
            }
        }
        Ok(out)
    }

    /// Every stored webhook attempt, by message and time.
    pub async fn attempts(&self) -> Result<Vec<StoredAttempt>> {
        let q = include_str!("sql/attempts_all.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).fetch_all(p).await?,
        })
    }

    /// All stored event ids, for checks against the ack topic.
    pub async fn all_event_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = match self {
            Store::Postgres(p) => sqlx::query_as("SELECT event_id::text FROM events").fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as("SELECT event_id FROM events").fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Messages whose lifecycle has not finished, over all partitions.
    pub async fn unfinished_count(&self) -> Result<i64> {
        let q = "SELECT count(*) FROM messages m WHERE m.planned_events > \
                 (SELECT count(*) FROM events e WHERE e.payload_id = m.payload_id)";
        let (n,): (i64,) = match self {
            Store::Postgres(p) => sqlx::query_as(q).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).fetch_one(p).await?,
        };
        Ok(n)
    }

    /// Store (or replace) one generator process's part of a load run.
    pub async fn save_run(&self, run: &RunRow) -> Result<()> {
        let q = include_str!("sql/run_insert.sql");
        macro_rules! bind {
            ($q:expr) => {
                $q.bind(&run.run_id)
                    .bind(run.generator)
                    .bind(run.started_at_us)
                    .bind(run.ended_at_us)
                    .bind(&run.settings)
                    .bind(run.scenario.as_deref())
                    .bind(&run.results)
            };
        }
        match self {
            Store::Postgres(p) => {
                bind!(sqlx::query(q)).execute(p).await?;
            }
            Store::Sqlite(p) => {
                bind!(sqlx::query(q)).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Every stored part of a load run, by generator number.
    pub async fn run_parts(&self, run_id: &str) -> Result<Vec<RunRow>> {
        let q = include_str!("sql/run_parts.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(run_id).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(run_id).fetch_all(p).await?,
        })
    }

    /// The latest load runs, newest first.
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunListing>> {
        let q = include_str!("sql/run_list.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(limit).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(limit).fetch_all(p).await?,
        })
    }

    /// Store (or replace) one generator process's record of a load run.
    pub async fn save_run_events(&self, run_id: &str, generator: i32, rows: &[RunEventRow]) -> Result<()> {
        let delete = "DELETE FROM run_events WHERE run_id = $1 AND generator = $2";
        match self {
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(delete).bind(run_id).bind(generator).execute(&mut *tx).await?;
                for chunk in rows.chunks(50_000) {
                    sqlx::query(include_str!("sql/postgres/run_events_insert.sql"))
                        .bind(run_id)
                        .bind(generator)
                        .bind(chunk.iter().map(|r| r.seq).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|r| r.channel.as_str()).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|r| r.intended_at_us).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|r| r.latency_us).collect::<Vec<_>>())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Store::Sqlite(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(delete).bind(run_id).bind(generator).execute(&mut *tx).await?;
                // 7 parameters a row; SQLite allows 32,766.
                for chunk in rows.chunks(4000) {
                    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(
                        "INSERT INTO run_events (run_id, generator, seq, channel, status, intended_at_us, latency_us) ",
                    );
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(run_id)
                            .push_bind(generator)
                            .push_bind(r.seq)
                            .push_bind(&r.channel)
                            .push_bind(&r.status)
                            .push_bind(r.intended_at_us)
                            .push_bind(r.latency_us);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The record of a load run, every generator process's, in message order.
    pub async fn run_events(&self, run_id: &str) -> Result<Vec<RunEventRow>> {
        let q = include_str!("sql/run_events.sql");
        Ok(match self {
            Store::Postgres(p) => sqlx::query_as(q).bind(run_id).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(q).bind(run_id).fetch_all(p).await?,
        })
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(p) => p.close().await,
            Store::Sqlite(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_their_json() {
        let headers = vec![
            ("traceparent".to_owned(), b"00-abc-01".to_vec()),
            ("quote\"d".to_owned(), b"line\nbreak".to_vec()),
            ("binary".to_owned(), vec![0xff, 0x00, 0x10]),
        ];
        let text = encode_headers(&headers);
        assert_eq!(decode_headers(&text), headers);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()[2]["hex"], true);
        assert_eq!(encode_headers(&[]), "[]");
    }
}
