//! Live reload: the running scenario's files are checked every interval. A valid new version replaces the
//! running one for messages planned from then on (lifecycles already planned keep their plan); an invalid
//! one is logged with its file, line and field, and the running version stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Scenario;
use crate::telemetry;

/// The running scenario, as every stage sees it.
pub type LiveScenario = watch::Receiver<Arc<Scenario>>;

/// Counters tests and reports read.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// New versions taken.
    pub loaded: AtomicU64,
    /// Changed files that did not validate (counted once per distinct error).
    pub rejected: AtomicU64,
}

/// Hash of the files' paths and contents; `None` if one cannot be read.
fn fingerprint(files: &[PathBuf]) -> Option<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(&std::fs::read(f).ok()?);
    }
    Some(h.digest())
}

/// Check the scenario files every `every` until `stop`, publishing each valid new version on `tx`.
pub async fn watch_files(
    tx: watch::Sender<Arc<Scenario>>,
    every: Duration,
    stats: Arc<ReloadStats>,
    stop: CancellationToken,
) {
    let mut current = tx.borrow().clone();
    let files = current.files();
    let mut seen = tokio::task::spawn_blocking(move || fingerprint(&files)).await.ok().flatten();
    // The last error logged: a file that stays invalid is retried every interval (it may be fixed by a
    // file it includes, which is not watched until it loads) but logged once.
    let mut failing: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let files = current.files();
        let now = tokio::task::spawn_blocking(move || fingerprint(&files)).await.ok().flatten();
        if now == seen && failing.is_none() {
            continue;
        }
        seen = now;
        let (source, scale) = (current.source.clone(), current.time_scale_override());
        let loaded = tokio::task::spawn_blocking(move || {
            Scenario::load(&source).and_then(|s| match scale {
                Some(t) => s.rescaled(t),
                None => Ok(s),
            })
        })
        .await;
        match loaded {
            Ok(Ok(s)) => {
                failing = None;
                if s.version() == current.version() {
                    continue;
                }
                tracing::info!(
                    scenario = %s.name(),
                    from = %current.version(),
                    to = %s.version(),
                    "scenario reloaded; messages from now on are planned by the new version"
                );
                stats.loaded.fetch_add(1, Ordering::Relaxed);
                telemetry::scenario_reload("loaded");
                current = Arc::new(s);
                tx.send_replace(current.clone());
            }
            Ok(Err(e)) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, version = %current.version(), "the changed scenario is invalid; the running version stays");
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    telemetry::scenario_reload("rejected");
                    failing = Some(text);
                }
            }
            Err(e) => tracing::warn!(error = %e, "scenario reload task failed"),
        }
    }
}
