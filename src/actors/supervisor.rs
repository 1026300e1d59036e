//! Supervision: a stage that stops while the pipeline is running is seen, and the pipeline is marked
//! failed. A half-alive service would go on consuming with offsets that never commit (a stopped persister
//! releases none), so `understudy run` then shuts down what is left and exits non-zero, and the
//! orchestrator restarts it; the restarted instance rebuilds its state from the committed offsets and the
//! store, as after a crash.
//!
//! Each long-lived stage (the persister, the three channel actors, the consumer loop, the hand-off of
//! delivered acks to the persister, the commit ticker) holds a [`StageGuard`]. The guard is dropped with
//! the stage however it ends — stopped, its task returned, or unwound by a panic — and, unless the
//! pipeline is shutting down, that marks the pipeline failed with the stage's name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

/// The pipeline's health, shared by every stage's guard.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    failure: OnceLock<String>,
    failed: CancellationToken,
    stopping: AtomicBool,
}

impl Health {
    /// A guard for the stage `name`: dropping it outside a shutdown fails the pipeline.
    pub fn stage(&self, name: impl Into<String>) -> StageGuard {
        let name = name.into();
        crate::telemetry::stage_up(&name, true);
        StageGuard { name, health: self.clone() }
    }

    /// The pipeline is shutting down: stages stop on purpose from now on.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// Mark the pipeline failed (the first reason is kept).
    pub fn fail(&self, reason: String) {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        if self.inner.failure.set(reason.clone()).is_ok() {
            crate::telemetry::stage_failed();
            tracing::error!(reason = %reason, "a pipeline stage stopped; the service is not healthy and exits");
        }
        self.inner.failed.cancel();
    }

    /// Why the pipeline failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.get().cloned()
    }

    /// Resolves when the pipeline fails, with the reason.
    pub async fn failed(&self) -> String {
        self.inner.failed.cancelled().await;
        self.failure().unwrap_or_default()
    }
}

/// Held by a stage for as long as it runs.
#[derive(Debug)]
pub struct StageGuard {
    name: String,
    health: Health,
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        crate::telemetry::stage_up(&self.name, false);
        let how = if std::thread::panicking() { "panicked" } else { "stopped" };
        self.health.fail(format!("the {} stage {how}", self.name));
    }
}

/// Stop a stage's actor now. Operators and tests use it (through [`super::pipeline::Pipeline::stop_stage`])
/// to see that a lost stage fails the pipeline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopStage;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stage_that_stops_fails_the_pipeline_unless_it_is_shutting_down() {
        let health = Health::default();
        drop(health.stage("persister"));
        let reason = tokio::time::timeout(std::time::Duration::from_secs(1), health.failed()).await.unwrap();
        assert_eq!(reason, "the persister stage stopped");
        drop(health.stage("consumer"));
        assert_eq!(health.failure().as_deref(), Some("the persister stage stopped"), "the first reason is kept");

        let calm = Health::default();
        calm.stopping();
        drop(calm.stage("persister"));
        assert_eq!(calm.failure(), None, "stages stopped by a shutdown are not failures");
    }

    #[test]
    fn a_panicking_stage_says_so() {
        let health = Health::default();
        let guard = health.stage("channel sms");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _g = guard;
            panic!("boom");
        }));
        assert_eq!(health.failure().as_deref(), Some("the channel sms stage panicked"));
    }
}
