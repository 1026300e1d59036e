//! Postgres: batched writes through `UNNEST` arrays, one round trip per table per batch.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::{EventRow, MessageRow, PendingRow, Result};

pub(super) fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(url)?)
}

pub(super) async fn write(pool: &PgPool, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
    let mut tx = pool.begin().await?;
    if !messages.is_empty() {
        let m = messages;
        sqlx::query(include_str!("sql/postgres/message_insert.sql"))
            .bind(m.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.partition).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.offset).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.payload_id.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.batch_id.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.channel).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.tenant_id.as_deref()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.received_at_us).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.scenario.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.path.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.planned_events).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.plan.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.headers.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    if !events.is_empty() {
        let e = events;
        sqlx::query(include_str!("sql/postgres/event_insert.sql"))
            .bind(e.iter().map(|r| r.event.event_id).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.payload_id.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.batch_id.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.channel.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.status.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| i32::from(r.event.attempt)).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.vendor_message_id.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.scheduled_at.timestamp_micros()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.emitted_at.timestamp_micros()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.error_code.as_deref()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.error_reason.as_deref()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.bounce_type.map(bounce)).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.event.tenant_id.as_deref()).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.ack_partition).collect::<Vec<_>>())
            .bind(e.iter().map(|r| r.ack_offset).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) fn bounce(b: crate::model::BounceType) -> &'static str {
    match b {
        crate::model::BounceType::Hard => "hard",
        crate::model::BounceType::Soft => "soft",
    }
}

pub(super) async fn pending(pool: &PgPool, topic: &str, partition: i32) -> Result<Vec<PendingRow>> {
    Ok(sqlx::query_as(include_str!("sql/postgres/lifecycle_pending_by_partition.sql"))
        .bind(topic)
        .bind(partition)
        .fetch_all(pool)
        .await?)
}

pub(super) async fn event_ids(pool: &PgPool, payload_ids: &[String]) -> Result<HashSet<Uuid>> {
    let mut out = HashSet::new();
    for chunk in payload_ids.chunks(10_000) {
        let rows: Vec<(String,)> =
            sqlx::query_as(include_str!("sql/postgres/event_ids_by_payload.sql")).bind(chunk).fetch_all(pool).await?;
        out.extend(rows.into_iter().filter_map(|r| Uuid::parse_str(&r.0).ok()));
    }
    Ok(out)
}
