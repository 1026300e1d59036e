//! Load runs started by the control API: each is `understudy load` as a child process of the service (the
//! same binary, the service's own settings, `--progress-json`), followed through its standard error and
//! stored in the store as any run is. A stop is the child's Ctrl-C: sending stops, the acks of what was
//! sent are awaited, and the run is stored.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

/// Options of `understudy load` the API does not take: the service decides them (`config`, `run_id` is its
/// own field), they would start a second mock inside the service's host (`mock`, `time_scale`), or they
/// change what the API reads back (`quiet`, `format`, `html`, `progress_json`, `dry_run`).
const NOT_OFFERED: [&str; 9] =
    ["config", "mock", "time_scale", "quiet", "format", "html", "progress_json", "dry_run", "run_id"];

/// What a run is doing, or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Asked to stop: sending stopped; the acks of what was sent are awaited, then the run is stored.
    Stopping,
    /// Ended, every gate passed (or none given).
    Passed,
    /// Ended, a gate failed.
    Failed,
    /// Ended after a stop; its results, up to the stop, are stored.
    Stopped,
    /// Ended without results: see `error`.
    Error,
    /// Not started here: a run read from the store.
    Stored,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub state: RunState,
    /// The options it was started with, as `understudy load` arguments.
    pub args: Vec<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// The latest of the run's progress lines while it runs (sent, target and achieved rate, resolved,
    /// lag, late, send errors).
    pub progress: Option<serde_json::Value>,
    /// The run's summary once it ended (as `understudy load --format json` prints it).
    pub summary: Option<serde_json::Value>,
    pub exit_code: Option<i32>,
    /// Why it ended without results.
    pub error: Option<String>,
}

struct Entry {
    view: RunView,
    /// Asks the task that owns the child to stop it; taken by the first stop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    log: VecDeque<String>,
}

/// The runs this service started, by run id.
pub struct Runs {
    exe: PathBuf,
    config: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadOptions(String),
    #[error("run `{0}` is running: one load run at a time (stop it, or wait for it to end)")]
    Busy(String),
    #[error("run id `{0}` is taken")]
    Taken(String),
    #[error("cannot start `understudy load`: {0}")]
    Spawn(std::io::Error),
}

/// `understudy load`'s long options and whether each takes a value, from its own argument definitions.
fn load_options() -> HashMap<String, bool> {
    let cmd = <crate::load::cli::LoadArgs as clap::Args>::augment_args(clap::Command::new("load"));
    cmd.get_arguments()
        .filter_map(|a| {
            let takes_value = a.get_action().takes_values();
            a.get_long().map(|l| (l.replace('-', "_"), takes_value))
        })
        .collect()
}

/// The JSON options of a start request as `understudy load` arguments: `{"rate": 500, "gate": ["lost ==
/// 0"], "duration": "10s"}` is `--rate 500 --gate 'lost == 0' --duration 10s`. Keys are the long options,
/// `snake_case` or `kebab-case`; a list repeats the option; `true` sets a flag.
pub fn arguments(options: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<String>, String> {
    let known = load_options();
    let mut args = Vec::new();
    for (key, value) in options {
        let name = key.replace('-', "_");
        let Some(&takes_value) = known.get(&name).filter(|_| !NOT_OFFERED.contains(&name.as_str())) else {
            let mut offered: Vec<&str> =
                known.keys().map(String::as_str).filter(|k| !NOT_OFFERED.contains(k)).collect();
            offered.sort_unstable();
            return Err(format!("`{key}` is not an option of a load run; the options are {}", offered.join(", ")));
        };
        let flag = format!("--{}", name.replace('_', "-"));
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("`{key}`: {other} is not a string or a number")),
        };
        match (takes_value, value) {
            (false, serde_json::Value::Bool(true)) => args.push(flag),
            (false, serde_json::Value::Bool(false)) => {}
            (false, other) => return Err(format!("`{key}` is a flag: true or false, not {other}")),
            (true, serde_json::Value::Array(items)) => {
                for item in items {
                    args.extend([flag.clone(), scalar(item)?]);
                }
            }
            (true, v) => args.extend([flag, scalar(v)?]),
        }
    }
    Ok(args)
}

/// `args` as a run's view shows them: a `--notify` URL without its path, where a webhook keeps its token.
fn shown(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut notify = false;
    for a in args {
        out.push(if notify { crate::load::notify::redact_url(a) } else { a.clone() });
        notify = a == "--notify";
    }
    out
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Runs {
    /// `config`: the service's settings as a file, which every run is started with.
    pub fn new(config: PathBuf) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("understudy"));
        Self { exe, config, entries: Mutex::new(HashMap::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Check `args` with `understudy load --dry-run` (every check the command makes), then start the run.
    pub async fn start(self: &Arc<Self>, run_id: Option<String>, args: Vec<String>) -> Result<RunView, StartError> {
        let run_id = run_id.unwrap_or_else(crate::load::new_run_id);
        let mut base = vec!["load".to_owned(), "--config".into(), self.config.display().to_string()];
        base.extend(["--run-id".into(), run_id.clone()]);
        let dry = tokio::process::Command::new(&self.exe)
            .args(&base)
            .args(&args)
            .arg("--dry-run")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(StartError::Spawn)?;
        if !dry.status.success() {
            let text = String::from_utf8_lossy(&dry.stderr);
            let error = text.lines().find_map(|l| l.strip_prefix("error: "));
            let reason = error.or_else(|| text.lines().find(|l| !l.trim().is_empty()));
            return Err(StartError::BadOptions(reason.unwrap_or("the options are refused").trim().to_owned()));
        }
        let view = RunView {
            run_id: run_id.clone(),
            state: RunState::Running,
            args: shown(&args),
            started_at: Some(now()),
            ended_at: None,
            progress: None,
            summary: None,
            exit_code: None,
            error: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        {
            let mut entries = self.entries();
            if let Some((id, _)) =
                entries.iter().find(|(_, e)| matches!(e.view.state, RunState::Running | RunState::Stopping))
            {
                return Err(StartError::Busy(id.clone()));
            }
            if entries.contains_key(&run_id) {
                return Err(StartError::Taken(run_id));
            }
            entries.insert(run_id.clone(), Entry { view: view.clone(), stop: Some(stop_tx), log: VecDeque::new() });
        }
        // The child is spawned and followed on a thread and runtime of its own, which own it: the HTTP
        // worker that started it may stop first, and only its owner signals it (never a reaped pid).
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(&base)
            .args(&args)
            .args(["--progress-json", "--format", "json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let (runs, id) = (self.clone(), run_id.clone());
        let thread = std::thread::Builder::new().name("control-run".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            // Spawned in this runtime: its pipes and its reaping belong to it.
            let child = {
                let _in_runtime = rt.enter();
                command.spawn()
            };
            match child {
                Ok(child) => {
                    let _ = started_tx.send(Ok(()));
                    rt.block_on(runs.follow(id, child, stop_rx));
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        });
        let started = match thread {
            Ok(_) => started_rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the run's thread ended"))),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            self.entries().remove(&run_id);
            return Err(StartError::Spawn(e));
        }
        tracing::info!(run_id, "load run started by the control API");
        Ok(view)
    }

    /// Follow the child until it ends: its progress and log from standard error, its summary from
    /// standard output, a stop request as its Ctrl-C.
    async fn follow(
        self: Arc<Self>,
        run_id: String,
        mut child: tokio::process::Child,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let lines = async {
            let Some(stderr) = stderr else { return };
            let mut reader = tokio::io::BufReader::new(stderr);
            let mut line = Vec::new();
            // Every line, read to the end whatever it holds: a pipe closed early would fail the child's
            // next write.
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                let mut entries = self.entries();
                let Some(e) = entries.get_mut(&run_id) else { continue };
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) if v.get("progress").is_some() => e.view.progress = v.get("progress").cloned(),
                    _ => {
                        if e.log.len() == 20 {
                            e.log.pop_front();
                        }
                        e.log.push_back(text.to_owned());
                    }
                }
            }
        };
        let output = async {
            let mut text = String::new();
            if let Some(mut stdout) = stdout {
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text).await;
            }
            text
        };
        let status = async {
            let mut asked_once = false;
            loop {
                tokio::select! {
                    status = child.wait() => break status,
                    asked = &mut stop, if !asked_once => {
                        asked_once = true;
                        if asked.is_ok()
                            && let Some(pid) = child.id()
                        {
                            // SAFETY: kill(2) on our own child, not yet reaped: `Child::id` is `None` once
                            // it has been waited for, and only this task waits for it.
                            unsafe {
                                libc::kill(pid as libc::pid_t, libc::SIGINT);
                            }
                        }
                    }
                }
            }
        };
        let ((), text, status) = tokio::join!(lines, output, status);
        let mut entries = self.entries();
        let Some(e) = entries.get_mut(&run_id) else { return };
        let code = status.as_ref().ok().and_then(|s| s.code());
        e.view.exit_code = code;
        e.view.ended_at = Some(now());
        e.view.summary = serde_json::from_str(&text).ok();
        let stopped = e.stop.is_none();
        e.view.state = match (code, e.view.summary.is_some(), stopped) {
            (_, true, true) => RunState::Stopped,
            (Some(0), true, false) => RunState::Passed,
            (Some(c), true, false) if c == i32::from(crate::load::GATE_FAILED_EXIT) => RunState::Failed,
            _ => {
                let why = match e.log.iter().rev().find_map(|l| l.strip_prefix("error: ")) {
                    Some(error) => error.to_owned(),
                    None if e.log.is_empty() => "it printed nothing".to_owned(),
                    None => e.log.iter().rev().take(5).rev().cloned().collect::<Vec<_>>().join(" | "),
                };
                let how = match (&status, code) {
                    (Err(err), _) => format!("could not be waited for ({err})"),
                    (Ok(_), Some(c)) => format!("exited with {c}"),
                    (Ok(_), None) => "was killed by a signal".to_owned(),
                };
                e.view.error = Some(format!("`understudy load` {how}: {why}"));
                RunState::Error
            }
        };
        tracing::info!(run_id, state = ?e.view.state, "load run ended");
    }

    pub fn get(&self, run_id: &str) -> Option<RunView> {
        self.entries().get(run_id).map(|e| e.view.clone())
    }

    pub fn list(&self) -> Vec<RunView> {
        self.entries().values().map(|e| e.view.clone()).collect()
    }

    /// Ask a running run to stop (its Ctrl-C). `None`: no such run; `Some(Err(state))`: it is not running.
    pub fn stop(&self, run_id: &str) -> Option<Result<RunView, RunState>> {
        let mut entries = self.entries();
        let e = entries.get_mut(run_id)?;
        if e.view.state != RunState::Running {
            return Some(Err(e.view.state));
        }
        if let Some(stop) = e.stop.take() {
            let _ = stop.send(());
        }
        e.view.state = RunState::Stopping;
        Some(Ok(e.view.clone()))
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::arguments;

    #[test]
    fn start_options_become_load_arguments_and_unknown_ones_are_named() {
        let options =
            serde_json::json!({"rate": 500, "duration": "2s", "gate": ["lost == 0", "sent > 10"], "mix": "sms=1"});
        let args = arguments(options.as_object().unwrap()).unwrap();
        let joined = args.join(" ");
        assert!(joined.contains("--rate 500") && joined.contains("--duration 2s"), "{joined}");
        assert!(joined.contains("--gate lost == 0 --gate sent > 10"), "{joined}");
        let err = arguments(serde_json::json!({"rat": 5}).as_object().unwrap()).unwrap_err();
        assert!(err.contains("`rat` is not an option") && err.contains("rate"), "{err}");
        assert!(arguments(serde_json::json!({"mock": true}).as_object().unwrap()).is_err());
        assert!(
            arguments(serde_json::json!({"rate": {"x": 1}}).as_object().unwrap()).unwrap_err().contains("not a string")
        );
    }
}
