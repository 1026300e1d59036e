//! The control API, on the front doors' port (`http.listen_addr`) under `/api/v1/`, behind the bearer token
//! `http.control_token`: load runs started with the options `understudy load` takes, listed, followed live
//! and stopped; their summaries, HTML reports and comparisons; the running scenario read, validated and
//! replaced. Described by [`OPENAPI`] (served at `/api/v1/openapi.yaml`). Every error is JSON:
//! `{"error": "…", "reason": "…"}`. The web console, [`CONSOLE`], is served at `/console`; it asks for the
//! token and calls the API with it.
//!
//! - [`runs`]: the runs this service started, as `understudy load` child processes.

pub mod runs;

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;

use crate::scenario::{Scenario, ScenarioError};
use crate::store::Store;
use runs::{RunState, RunView, Runs, StartError};

/// The API's OpenAPI 3 description.
pub const OPENAPI: &str = include_str!("openapi.yaml");

/// What the control API works with.
pub struct Control {
    token: String,
    store: Store,
    scenario_path: PathBuf,
    scenario: tokio::sync::watch::Receiver<Arc<Scenario>>,
    reload_interval_ms: u64,
    runs: Arc<Runs>,
    /// One scenario replacement at a time.
    writing: tokio::sync::Mutex<()>,
}

/// The largest scenario a request may carry.
const MAX_SCENARIO_BYTES: usize = 4 << 20;

impl Control {
    /// `settings` as the service runs them (with `brokers`, the broker it uses): what its load runs are
    /// started with, from a file only this user can read (it holds the service's secrets).
    pub fn new(
        settings: &crate::config::Settings,
        brokers: &str,
        store: Store,
        scenario: tokio::sync::watch::Receiver<Arc<Scenario>>,
    ) -> std::io::Result<Option<Self>> {
        let Some(token) = settings.http.control_token.as_deref().map(|t| t.trim().to_owned()) else {
            return Ok(None);
        };
        let mut for_runs = settings.clone();
        for_runs.kafka.brokers = Some(brokers.to_owned());
        for_runs.http.control_token = None;
        // A new file under a name nobody can guess (O_EXCL: never one, or a link, made before).
        let path = std::env::temp_dir().join(format!(
            "understudy-control-{}-{}.yaml",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let yaml = serde_yaml::to_string(&for_runs).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            f.write_all(yaml.as_bytes())?;
        }
        Ok(Some(Self {
            token,
            store,
            scenario_path: settings.scenario.path.clone(),
            scenario,
            reload_interval_ms: settings.scenario.reload_interval_ms,
            runs: Arc::new(Runs::new(path)),
            writing: tokio::sync::Mutex::new(()),
        }))
    }
}

/// An error, as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
    /// Where a scenario is invalid.
    at: Option<(PathBuf, usize, String)>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self { status, error, reason: reason.into(), at: None }
    }

    fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.reason)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({"error": self.error, "reason": self.reason});
        if let Some((file, line, field)) = &self.at {
            body["file"] = file.display().to_string().into();
            body["line"] = (*line).into();
            body["field"] = field.clone().into();
        }
        let mut answer = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            answer.insert_header(("WWW-Authenticate", "Bearer realm=\"understudy\""));
        }
        answer.json(body)
    }
}

type Answer = Result<HttpResponse, ApiError>;

/// Every route: `Authorization: Bearer <http.control_token>`, or 401.
async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let control = req.app_data::<web::Data<Control>>().cloned();
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&control, given) {
        (Some(c), Some(t)) => crate::wire::constant_time_eq(t.as_bytes(), c.token.as_bytes()),
        _ => false,
    };
    if !ok {
        let reason = if given.is_none() {
            "an `Authorization: Bearer <token>` header is required (the token is `http.control_token`)"
        } else {
            "the bearer token is not `http.control_token`"
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into());
    }
    next.call(req).await
}

fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// The web console (`/console`): one page, no build step; it fetches nothing but the API.
pub const CONSOLE: &str = include_str!("console.html");

async fn console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Nothing from elsewhere: the page, its inline script and style, and the API on this origin.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; frame-src 'self'; base-uri 'none'; form-action 'none'",
        ))
        .body(CONSOLE)
}

/// The routes: the API under `/api/v1`, the console at `/console`.
pub fn routes(cfg: &mut web::ServiceConfig, control: web::Data<Control>) {
    cfg.route("/console", web::get().to(console));
    cfg.service(
        web::scope("/api/v1")
            .app_data(control)
            .app_data(web::JsonConfig::default().limit(1 << 20).error_handler(|e, _| bad_request(e.to_string()).into()))
            .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request(e.to_string()).into()))
            .app_data(web::PathConfig::default().error_handler(|e, _| bad_request(e.to_string()).into()))
            .wrap(actix_web::middleware::from_fn(authorize))
            .route("/runs", web::get().to(list_runs))
            .route("/runs", web::post().to(start_run))
            .route("/runs/{run_id}", web::get().to(get_run))
            .route("/runs/{run_id}/stop", web::post().to(stop_run))
            .route("/runs/{run_id}/report", web::get().to(report))
            .route("/compare", web::get().to(compare))
            .route("/scenario", web::get().to(get_scenario))
            .route("/scenario", web::put().to(put_scenario))
            .route("/scenario/validate", web::post().to(validate_scenario))
            .route("/openapi.yaml", web::get().to(openapi))
            .default_service(web::to(unknown_route)),
    );
}

async fn unknown_route(req: HttpRequest) -> Answer {
    Err(ApiError::not_found(format!("no route {} {} (see /api/v1/openapi.yaml)", req.method(), req.path())))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/yaml").body(OPENAPI)
}

fn run_id_ok(id: &str) -> Result<(), ApiError> {
    let ok = id.len() <= 200 && crate::load::is_run_id(id);
    ok.then_some(()).ok_or_else(|| bad_request(format!("run id `{id}`: letters, digits, `.`, `_` and `-` only")))
}

/// A stored run, as a view.
async fn stored(c: &Control, run_id: &str) -> Result<Option<RunView>, ApiError> {
    let Some(run) = crate::load::load_stored(&c.store, run_id, None).await.map_err(ApiError::internal)? else {
        return Ok(None);
    };
    let summary = crate::load::report::summary(&run.run_id, run.generators, &run.results, &[]);
    let value = serde_json::to_value(&summary).map_err(ApiError::internal)?;
    Ok(Some(RunView {
        run_id: run_id.to_owned(),
        state: RunState::Stored,
        args: Vec::new(),
        started_at: Some(summary.started_at.clone()),
        ended_at: Some(summary.ended_at.clone()),
        progress: None,
        summary: Some(value),
        exit_code: None,
        error: None,
    }))
}

async fn list_runs(c: web::Data<Control>) -> Answer {
    let mut runs = c.runs.list();
    let listed = c.store.list_runs(100).await.map_err(ApiError::internal)?;
    for r in listed {
        if runs.iter().any(|v| v.run_id == r.run_id) {
            continue;
        }
        let time = |us: i64| crate::model::micros_to_time(us).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        runs.push(RunView {
            run_id: r.run_id,
            state: RunState::Stored,
            args: Vec::new(),
            started_at: Some(time(r.started_at_us)),
            ended_at: Some(time(r.ended_at_us)),
            progress: None,
            summary: None,
            exit_code: None,
            error: None,
        });
    }
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "runs": runs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    run_id: Option<String>,
    #[serde(default)]
    options: serde_json::Map<String, serde_json::Value>,
}

async fn start_run(c: web::Data<Control>, body: web::Json<StartRequest>) -> Answer {
    let body = body.into_inner();
    if let Some(id) = &body.run_id {
        run_id_ok(id)?;
        if !c.store.run_parts(id).await.map_err(ApiError::internal)?.is_empty() {
            return Err(ApiError::new(StatusCode::CONFLICT, "run_id_taken", format!("run `{id}` is in the store")));
        }
    }
    let args = runs::arguments(&body.options).map_err(bad_request)?;
    match c.runs.start(body.run_id, args).await {
        Ok(view) => {
            Ok(HttpResponse::Created().insert_header(("Location", format!("/api/v1/runs/{}", view.run_id))).json(view))
        }
        Err(e @ StartError::BadOptions(_)) => Err(bad_request(e.to_string())),
        Err(e @ StartError::Busy(_)) => Err(ApiError::new(StatusCode::CONFLICT, "busy", e.to_string())),
        Err(e @ StartError::Taken(_)) => Err(ApiError::new(StatusCode::CONFLICT, "run_id_taken", e.to_string())),
        Err(e @ StartError::Spawn(_)) => Err(ApiError::internal(e)),
    }
}

async fn get_run(c: web::Data<Control>, id: web::Path<String>) -> Answer {
    run_id_ok(&id)?;
    if let Some(view) = c.runs.get(&id) {
        return Ok(HttpResponse::Ok().json(view));
    }
    match stored(&c, &id).await? {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::not_found(format!("no run `{id}`"))),
    }
}

async fn stop_run(c: web::Data<Control>, id: web::Path<String>) -> Answer {
    run_id_ok(&id)?;
    match c.runs.stop(&id) {
        Some(Ok(view)) => Ok(HttpResponse::Accepted().json(view)),
        Some(Err(state)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("run `{id}` is not running (it is {})", serde_json::to_value(state).unwrap_or_default()),
        )),
        None if stored(&c, &id).await?.is_some() => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("run `{id}` is not running: it is in the store"),
        )),
        None => Err(ApiError::not_found(format!("no run `{id}` started here"))),
    }
}

async fn report(c: web::Data<Control>, id: web::Path<String>) -> Answer {
    run_id_ok(&id)?;
    let Some(run) = crate::load::load_stored(&c.store, &id, None).await.map_err(ApiError::internal)? else {
        let why = match c.runs.get(&id) {
            Some(v) if matches!(v.state, RunState::Running | RunState::Stopping) => "is still running",
            _ => "is not in the store",
        };
        return Err(ApiError::not_found(format!("run `{id}` {why}: its report comes once it is stored")));
    };
    let events = c.store.run_events(&id).await.map_err(ApiError::internal)?;
    // The gates the run was started with, as it judged them.
    let verdicts: Vec<crate::load::gate::Verdict> = c
        .runs
        .get(&id)
        .and_then(|v| v.summary)
        .and_then(|s| serde_json::from_value(s["gates"].clone()).ok())
        .unwrap_or_default();
    let html =
        web::block(move || crate::load::html::render(&run, &events, &verdicts)).await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareQuery {
    a: String,
    b: String,
    noise: Option<String>,
}

async fn compare(c: web::Data<Control>, q: web::Query<CompareQuery>) -> Answer {
    run_id_ok(&q.a)?;
    run_id_ok(&q.b)?;
    let noise = match &q.noise {
        Some(n) => crate::load::gate::parse_share(n).map_err(|e| bad_request(format!("noise: {e}")))?,
        None => 0.05,
    };
    let mut runs = Vec::new();
    for id in [&q.a, &q.b] {
        let Some(run) = crate::load::load_stored(&c.store, id, None).await.map_err(ApiError::internal)? else {
            return Err(ApiError::not_found(format!("no run `{id}` in the store")));
        };
        let events = c.store.run_events(id).await.map_err(ApiError::internal)?;
        runs.push((run, events));
    }
    let (b, a) = (runs.pop().expect("two runs"), runs.pop().expect("two runs"));
    // Resampling thousands of latencies: off the HTTP worker, which also serves the front doors.
    let body = web::block(move || {
        let comparison = crate::load::compare::compare(&a.0, &a.1, &b.0, &b.1, noise);
        let mut body = serde_json::to_value(&comparison)?;
        body["regressed"] = comparison.regressed().into();
        body["text"] = crate::load::compare::text(&comparison).into();
        Ok::<_, serde_json::Error>(body)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(body))
}

fn scenario_view(s: &Scenario, path: &std::path::Path, text: Option<&str>) -> serde_json::Value {
    let channels: Vec<&str> =
        crate::model::Channel::ALL.into_iter().filter(|c| s.has_channel(*c)).map(|c| c.as_str()).collect();
    let mut v = serde_json::json!({
        "path": path.display().to_string(),
        "name": s.name(),
        "version": s.version().as_ref(),
        "seed": s.seed(),
        "channels": channels,
    });
    if let Some(t) = text {
        v["text"] = t.into();
    }
    v
}

async fn get_scenario(c: web::Data<Control>) -> Answer {
    let running = c.scenario.borrow().clone();
    let text = std::fs::read_to_string(&c.scenario_path)
        .map_err(|e| ApiError::internal(format!("cannot read the scenario file {}: {e}", c.scenario_path.display())))?;
    Ok(HttpResponse::Ok().json(scenario_view(&running, &c.scenario_path, Some(&text))))
}

/// The request's body, at most [`MAX_SCENARIO_BYTES`].
async fn scenario_body(payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let body =
        crate::source::http::read_body(payload, MAX_SCENARIO_BYTES).await.map_err(|e| bad_request(e.to_string()))?;
    body.ok_or_else(|| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a scenario is at most {} MiB", MAX_SCENARIO_BYTES >> 20),
        )
    })
}

/// `body` as the scenario, checked as the service would load it (its rules' files beside the running one).
fn checked(c: &Control, body: &[u8]) -> Result<(String, Scenario), ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("the scenario is not UTF-8 text"))?;
    let parsed = Scenario::parse(text, &c.scenario_path);
    let scenario = parsed.map_err(|e| {
        let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_scenario", e.to_string());
        if let ScenarioError::Invalid { file, line, field, message } = e {
            err.reason = message;
            err.at = Some((file, line, field));
        }
        err
    })?;
    Ok((text.to_owned(), scenario))
}

async fn validate_scenario(c: web::Data<Control>, payload: web::Payload) -> Answer {
    let body = scenario_body(payload).await?;
    let (_, scenario) = checked(&c, &body)?;
    let mut view = scenario_view(&scenario, &c.scenario_path, None);
    view["valid"] = true.into();
    Ok(HttpResponse::Ok().json(view))
}

/// Replace the scenario file (atomically: a sibling file renamed over it) once it is valid, and wait for
/// the service's live reload to run it.
async fn put_scenario(c: web::Data<Control>, payload: web::Payload) -> Answer {
    let body = scenario_body(payload).await?;
    let (text, scenario) = checked(&c, &body)?;
    let path = &c.scenario_path;
    let _one_at_a_time = c.writing.lock().await;
    let sibling = path.with_file_name(format!(
        ".{}.{}.new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("scenario"),
        uuid::Uuid::new_v4().simple()
    ));
    let written = std::fs::write(&sibling, &text).and_then(|()| std::fs::rename(&sibling, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&sibling);
        let why = format!("cannot replace {}: {e}", path.display());
        return Err(match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => ApiError::new(
                StatusCode::CONFLICT,
                "scenario_read_only",
                format!("{why} (a scenario mounted from a ConfigMap is changed with the ConfigMap)"),
            ),
            _ => ApiError::internal(why),
        });
    }
    // The running version: the reload interval, and a second more, at most.
    let wanted = match c.scenario.borrow().time_scale_override() {
        Some(t) => scenario.rescaled(t).map(|s| s.version().clone()).unwrap_or_else(|_| scenario.version().clone()),
        None => scenario.version().clone(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(c.reload_interval_ms * 2 + 1000);
    let mut scenario_rx = c.scenario.clone();
    let running = loop {
        if *scenario_rx.borrow_and_update().version() == wanted {
            break true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !matches!(tokio::time::timeout(left, scenario_rx.changed()).await, Ok(Ok(()))) {
            break *scenario_rx.borrow().version() == wanted;
        }
    };
    let mut view = scenario_view(&scenario, path, None);
    view["running"] = running.into();
    tracing::info!(scenario = %scenario.name(), version = %wanted, running, "scenario replaced through the control API");
    Ok(HttpResponse::Ok().json(view))
}
