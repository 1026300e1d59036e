//! Postgres: batched writes. The common case is a binary `COPY` per table in one transaction, the
//! cheapest way into Postgres for both sides. A row that is there already (a redelivery after a crash)
//! fails the `COPY` with a unique violation; that batch is then written again through `UNNEST` arrays
//! with `ON CONFLICT DO NOTHING`, so every row is stored exactly once either way.

use std::collections::HashSet;
use std::ops::DerefMut;
use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgCopyIn, PgPoolOptions, PgSslMode};
use uuid::Uuid;

use super::{EventRow, MessageRow, PendingRow, Result};

pub(super) fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options(url, std::env::var_os("PGSSLMODE").is_some())?))
}

/// The connection options of `url`. A Postgres on a loopback address is spoken to without TLS unless the
/// URL (or `PGSSLMODE`, `ssl_mode_set`) names an `sslmode`: there TLS protects nothing, and it cost the
/// front doors' small writes half their rate (sqlx's sockets have no `TCP_NODELAY`, and a TLS write is
/// several small writes). Any other host keeps the driver's default, `prefer`.
fn options(url: &str, ssl_mode_set: bool) -> Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url)?;
    let named = ssl_mode_set
        || url::Url::parse(url).is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "sslmode" || k == "ssl-mode"));
    let host = opts.get_host().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    Ok(if loopback && !named { opts.ssl_mode(PgSslMode::Disable) } else { opts })
}

pub(super) async fn write(pool: &PgPool, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
    // A small batch goes as one statement per table: COPY's extra round trips (start, data, done, each a
    // separate small write) cost a small write about 50–90 ms (measured: a front door's 1-row writes),
    // one statement of arrays about 1 ms. COPY pays off for the large batches of the Kafka door.
    if messages.len() + events.len() <= SMALL_BATCH_ROWS {
        return insert(pool, messages, events).await;
    }
    match copy(pool, messages, events).await {
        Err(super::StoreError::Sqlx(sqlx::Error::Database(e))) if e.code().as_deref() == Some("23505") => {
            tracing::debug!("rows already stored in this batch; writing it idempotently");
            insert(pool, messages, events).await
        }
        r => r,
    }
}

/// Batches of up to this many rows are written with INSERT rather than COPY.
const SMALL_BATCH_ROWS: usize = 1000;

/// Rows are encoded into a buffer of about this size and sent whenever it fills, so a batch never needs a
/// buffer (nor a socket write buffer) as large as itself.
const COPY_CHUNK_BYTES: usize = 128 * 1024;

async fn copy(pool: &PgPool, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
    let mut tx = pool.begin().await?;
    let mut b = CopyBinary::with_capacity(COPY_CHUNK_BYTES + 8 * 1024);
    if !messages.is_empty() {
        let mut c = tx.copy_in_raw(include_str!("sql/postgres/message_copy.sql")).await?;
        b.header();
        for r in messages {
            b.row(20)
                .text(&r.topic)
                .int4(r.partition)
                .int8(r.offset)
                .text(&r.payload_id)
                .text(&r.batch_id)
                .text(r.channel)
                .text(&r.recipient)
                .opt_text(r.tenant_id.as_deref())
                .int8(r.received_at_us)
                .text(&r.scenario)
                .text(&r.path)
                .int4(r.planned_events)
                .text(&r.plan)
                .text(&r.headers)
                .bytes(&r.body)
                .text(&r.scenario_version)
                .opt_text(r.rule.as_deref())
                .opt_text(r.faults.as_deref())
                .text(&r.topic_id)
                .text(&r.vendor_message_id);
            b.send_if_full(&mut c).await?;
        }
        b.finish(c).await?;
    }
    if !events.is_empty() {
        let mut c = tx.copy_in_raw(include_str!("sql/postgres/event_copy.sql")).await?;
        b.header();
        for r in events {
            let e = &r.event;
            b.row(16)
                .bytes(e.event_id.as_bytes())
                .text(&e.payload_id)
                .text(&e.batch_id)
                .text(e.channel.as_str())
                .text(e.status.as_str())
                .int4(i32::from(e.attempt))
                .text(&e.vendor_message_id)
                .int8(e.scheduled_at.timestamp_micros())
                .int8(e.emitted_at.timestamp_micros())
                .opt_text(e.error_code.as_deref())
                .opt_text(e.error_reason.as_deref())
                .opt_text(e.bounce_type.map(crate::model::BounceType::as_str))
                .opt_text(e.tenant_id.as_deref())
                .int4(r.ack_partition)
                .int8(r.ack_offset)
                .opt_text(e.fault.map(crate::model::Fault::as_str));
            b.send_if_full(&mut c).await?;
        }
        b.finish(c).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Postgres' binary `COPY` format: a signature, then per row a field count and length-prefixed fields,
/// then a trailer; written a chunk at a time.
struct CopyBinary(Vec<u8>);

impl CopyBinary {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    fn header(&mut self) {
        self.0.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        self.0.extend_from_slice(&0i32.to_be_bytes()); // flags
        self.0.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    }

    fn row(&mut self, fields: i16) -> &mut Self {
        self.0.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    fn text(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => {
                self.0.extend_from_slice(&(-1i32).to_be_bytes());
                self
            }
        }
    }

    fn int4(&mut self, v: i32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    fn int8(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Send what is written once it reaches [`COPY_CHUNK_BYTES`].
    async fn send_if_full<C: DerefMut<Target = PgConnection>>(&mut self, c: &mut PgCopyIn<C>) -> Result<()> {
        if self.0.len() >= COPY_CHUNK_BYTES {
            c.send(self.0.as_slice()).await?;
            self.0.clear();
        }
        Ok(())
    }

    /// Write the trailer, send the rest and end the `COPY`; the buffer is ready for the next one.
    async fn finish<C: DerefMut<Target = PgConnection>>(&mut self, mut c: PgCopyIn<C>) -> Result<()> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        c.send(self.0.as_slice()).await?;
        self.0.clear();
        c.finish().await?;
        Ok(())
    }
}

/// The idempotent write: rows already stored are left as they are.
async fn insert(pool: &PgPool, messages: &[MessageRow], events: &[EventRow]) -> Result<()> {
    // One statement for both tables, one round trip in one implicit transaction: a transaction around
    // two statements takes four, and on a loaded machine each waits for both processes to be scheduled.
    let (m, e) = (messages, events);
    sqlx::query(include_str!("sql/postgres/rows_insert.sql"))
        .bind(m.iter().map(|r| &*r.topic).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.offset).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.payload_id).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.batch_id).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.channel).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.recipient).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.tenant_id.as_deref()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.received_at_us).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.scenario).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.path).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.planned_events).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.plan.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.headers.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.body.as_slice()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.scenario_version).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.rule.as_deref()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.faults.as_deref()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.topic_id).collect::<Vec<_>>())
        .bind(m.iter().map(|r| &*r.vendor_message_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.event_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| &*r.event.payload_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| &*r.event.batch_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.channel.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.status.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| i32::from(r.event.attempt)).collect::<Vec<_>>())
        .bind(e.iter().map(|r| &*r.event.vendor_message_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.scheduled_at.timestamp_micros()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.emitted_at.timestamp_micros()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.error_code.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.error_reason.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.bounce_type.map(crate::model::BounceType::as_str)).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.tenant_id.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.ack_partition).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.ack_offset).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.fault.map(crate::model::Fault::as_str)).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn pending(pool: &PgPool, topic: &str, topic_id: &str, partition: i32) -> Result<Vec<PendingRow>> {
    Ok(sqlx::query_as(include_str!("sql/postgres/lifecycle_pending_by_partition.sql"))
        .bind(topic)
        .bind(partition)
        .bind(topic_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str, env: bool) -> String {
        format!("{:?}", options(url, env).unwrap().get_ssl_mode())
    }

    #[test]
    fn a_loopback_store_goes_without_tls_unless_the_url_asks_for_it() {
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/test", false), "Disable");
        assert_eq!(mode("postgres://u:p@localhost/db", false), "Disable");
        assert_eq!(mode("postgres://u@[::1]:5432/db", false), "Disable");
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/test?sslmode=require", false), "Require");
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/test?sslmode=prefer", false), "Prefer");
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/test", true), "Prefer", "PGSSLMODE is the user's");
        assert_eq!(mode("postgres://u@db.internal:5432/db", false), "Prefer", "another host keeps the default");
    }
}
