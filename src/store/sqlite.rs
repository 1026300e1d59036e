//! SQLite: the zero-setup default. Multi-row inserts in chunks below SQLite's parameter limit, WAL mode.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use uuid::Uuid;

use super::{EventRow, MessageRow, PendingRow, Result};

/// At most 20 columns a row (messages); SQLite allows 32,766 parameters.
const ROWS_PER_INSERT: usize = 1500;

pub(super) fn connect_lazy(url: &str) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new().max_connections(4).connect_lazy_with(opts))
}

pub(super) async fn write(pool: &SqlitePool, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for chunk in messages.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO messages (src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, \
             tenant_id, received_at_us, scenario, path, planned_events, plan, headers, body, scenario_version, rule, faults, \
             src_topic_id, vendor_message_id) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(&*r.topic)
                .push_bind(r.partition)
                .push_bind(r.offset)
                .push_bind(&*r.payload_id)
                .push_bind(&*r.batch_id)
                .push_bind(r.channel)
                .push_bind(&*r.recipient)
                .push_bind(r.tenant_id.as_deref())
                .push_bind(r.received_at_us)
                .push_bind(&*r.scenario)
                .push_bind(&*r.path)
                .push_bind(r.planned_events)
                .push_bind(&r.plan)
                .push_bind(&r.headers)
                .push_bind(&r.body)
                .push_bind(&*r.scenario_version)
                .push_bind(r.rule.as_deref())
                .push_bind(r.faults.as_deref())
                .push_bind(&*r.topic_id)
                .push_bind(&*r.vendor_message_id);
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *tx).await?;
    }
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (event_id, payload_id, batch_id, channel, status, attempt, vendor_message_id, \
             scheduled_at_us, emitted_at_us, error_code, error_reason, bounce_type, tenant_id, ack_partition, ack_offset, fault) ",
        );
        q.push_values(chunk, |mut b, r| {
            let e = &r.event;
            b.push_bind(e.event_id.to_string())
                .push_bind(&*e.payload_id)
                .push_bind(&*e.batch_id)
                .push_bind(e.channel.as_str())
                .push_bind(e.status.as_str())
                .push_bind(i32::from(e.attempt))
                .push_bind(&*e.vendor_message_id)
                .push_bind(e.scheduled_at.timestamp_micros())
                .push_bind(e.emitted_at.timestamp_micros())
                .push_bind(&e.error_code)
                .push_bind(&e.error_reason)
                .push_bind(e.bounce_type.map(crate::model::BounceType::as_str))
                .push_bind(e.tenant_id.as_deref())
                .push_bind(r.ack_partition)
                .push_bind(r.ack_offset)
                .push_bind(e.fault.map(crate::model::Fault::as_str));
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn pending(pool: &SqlitePool, topic: &str, topic_id: &str, partition: i32) -> Result<Vec<PendingRow>> {
    Ok(sqlx::query_as(include_str!("sql/sqlite/lifecycle_pending_by_partition.sql"))
        .bind(topic)
        .bind(partition)
        .bind(topic_id)
        .fetch_all(pool)
        .await?)
}

pub(super) async fn event_ids(pool: &SqlitePool, payload_ids: &[String]) -> Result<HashSet<Uuid>> {
    let mut out = HashSet::new();
    for chunk in payload_ids.chunks(500) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT event_id FROM events WHERE payload_id IN (");
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(id);
        }
        q.push(")");
        let rows: Vec<(String,)> = q.build_query_as().fetch_all(pool).await?;
        out.extend(rows.into_iter().filter_map(|r| Uuid::parse_str(&r.0).ok()));
    }
    Ok(out)
}
