//! The webhook attempt log: every delivery attempt of the webhook sender, written to the store in
//! batches off the delivery path (`webhook_attempts`), and read back when a resumed lifecycle's webhook
//! goes on from where the last run left it.
//!
//! A write that fails is kept and tried again; the log never holds deliveries up. Shutdown flushes it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store::{AttemptRow, LastAttempt, Store, StoreError};

/// Rows written at once, at most.
const BATCH_ROWS: usize = 2000;
/// How long rows wait for more before they are written.
const LINGER: Duration = Duration::from_millis(20);
/// Rows kept while the store does not take them; beyond this the oldest are dropped (and counted as
/// lost in the log): attempts are an audit trail, and a store that is down must not take the memory.
const MAX_KEPT: usize = 1_000_000;

enum Entry {
    Row(AttemptRow),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
pub struct AttemptLog {
    tx: mpsc::UnboundedSender<Entry>,
    store: Store,
}

impl AttemptLog {
    /// A log writing to `store` from a task on `arbiter` (the sender's).
    pub fn new(store: Store, arbiter: &actix::ArbiterHandle) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        arbiter.spawn(write_loop(store.clone(), rx));
        Self { tx, store }
    }

    pub fn record(&self, row: AttemptRow) {
        let _ = self.tx.send(Entry::Row(row));
    }

    /// Wait until every row recorded so far is written (or the store gave up on them).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Entry::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The latest attempt of each of these events that has one.
    pub async fn last(&self, event_ids: &[Uuid]) -> Result<HashMap<Uuid, LastAttempt>, StoreError> {
        self.store.last_attempts(event_ids).await
    }
}

async fn write_loop(store: Store, mut rx: mpsc::UnboundedReceiver<Entry>) {
    let mut rows: Vec<AttemptRow> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut failures = 0u32;
    loop {
        // Wait for the first entry, then gather what comes within the linger.
        if rows.is_empty() && waiting.is_empty() {
            match rx.recv().await {
                Some(e) => take(e, &mut rows, &mut waiting),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while rows.len() < BATCH_ROWS && waiting.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => take(e, &mut rows, &mut waiting),
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(e) = rx.try_recv() {
            take(e, &mut rows, &mut waiting);
        }
        while !rows.is_empty() {
            let n = rows.len().min(BATCH_ROWS);
            match store.write_attempts(&rows[..n]).await {
                Ok(()) => {
                    rows.drain(..n);
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, rows = rows.len(), "cannot store webhook attempts; trying again");
                    if rows.len() > MAX_KEPT {
                        let lost = rows.len() - MAX_KEPT;
                        rows.drain(..lost);
                        tracing::error!(lost, "webhook attempts dropped: the store has not taken them for long");
                    }
                    // A flush waits at most a few tries (shutdown must end); the rows stay for later.
                    if failures >= 3 && !waiting.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))).await;
                }
            }
        }
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
    }
}

fn take(e: Entry, rows: &mut Vec<AttemptRow>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match e {
        Entry::Row(r) => rows.push(r),
        Entry::Flush(done) => waiting.push(done),
    }
}
