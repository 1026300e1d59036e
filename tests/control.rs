//! The control API against a running service on a real broker and Postgres: the token on every route of
//! the OpenAPI document, load runs started, followed live (the progress moves), refused while one runs,
//! stopped, reported and compared, the scenario read, refused with file, line and field, and replaced and
//! running; then `schemathesis` (PyPI) checks the running API against `src/control/openapi.yaml`.
//!
//! Needs `pip install schemathesis` for the last part (`.ci/run` installs it); fails, saying so, without.

mod common;

use common::Kafka;

use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "control-token-0123456789";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let answer = req.send().await.unwrap();
        let status = answer.status().as_u16();
        let bytes = answer.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into()))
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn text(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, serde_json::Value) {
        let req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        let answer = req.header("content-type", "application/yaml").body(body.to_owned()).send().await.unwrap();
        let status = answer.status().as_u16();
        (status, answer.json_value().await)
    }

    /// The run, once `done` says so (within 60 s).
    async fn until(&self, run_id: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, run) = self.get(&format!("/api/v1/runs/{run_id}")).await;
            assert_eq!(status, 200, "{run}");
            if done(&run) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {run_id}: {what} within 60 s: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into())
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

async fn control_api_runs_reports_compares_and_steers_the_scenario(k: Kafka) {
    let common::ControlService { mut service, base, scenario, dir } = common::control_service(k, TOKEN, 200).await;
    let api = Api { base, http: reqwest::Client::new() };

    // The token, on every route the OpenAPI document names: 401 and a JSON reason without it or with
    // another.
    let doc: serde_yaml::Value = serde_yaml::from_str(understudy::control::OPENAPI).unwrap();
    let mut routes = 0;
    for (path, ops) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap().replace("{run_id}", "some-run");
        for method in ["get", "post", "put"].into_iter().filter(|m| ops.get(m).is_some()) {
            for token in [None, Some("not-the-token-at-all")] {
                let mut req = api.http.request(method.to_uppercase().parse().unwrap(), format!("{}{path}", api.base));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let answer = req.send().await.unwrap();
                assert_eq!(answer.status().as_u16(), 401, "{method} {path} with {token:?}");
                assert!(answer.headers().contains_key("www-authenticate"));
                let body = answer.json_value().await;
                assert_eq!(body["error"], "unauthorized", "{body}");
            }
            routes += 1;
        }
    }
    assert_eq!(routes, 10);

    // Bad options: the option, or the command's own check, named.
    let (status, body) = api.post("/api/v1/runs", serde_json::json!({"options": {"rat": 500}})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("`rat` is not an option"), "{body}");
    let (status, body) = api.post("/api/v1/runs", serde_json::json!({"options": {"gate": ["p99(NOPE) < 1s"]}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("NOPE"), "{body}");

    // A run: started, its progress moving, refused company, then passed with every message resolved.
    let suffix = common::suffix();
    let (a, b) = (format!("api-a-{suffix}"), format!("api-b-{suffix}"));
    let options =
        serde_json::json!({"rate": 200, "duration": "3s", "gate": ["lost == 0"], "ack_timeout": "20s", "linger": "0s"});
    let (status, run) = api.post("/api/v1/runs", serde_json::json!({"run_id": a, "options": options})).await;
    assert_eq!((status, run["state"].as_str()), (201, Some("running")), "{run}");
    let (status, body) = api.post("/api/v1/runs", serde_json::json!({"options": {"rate": 10}})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("busy")), "{body}");
    let first = api.until(&a, "progress", |r| r["progress"]["sent"].as_u64().is_some_and(|s| s > 0)).await;
    let sent = first["progress"]["sent"].as_u64().unwrap();
    let later = api
        .until(&a, "progress moving", |r| {
            r["progress"]["sent"].as_u64().is_some_and(|s| s > sent) || r["state"] != "running"
        })
        .await;
    assert!(later["progress"]["target_per_s"].as_f64().is_some(), "{later}");
    let done = api.until(&a, "the end", |r| r["state"] != "running").await;
    assert_eq!(done["state"], "passed", "{done}");
    assert_eq!((done["summary"]["sent"].as_u64(), done["summary"]["lost"].as_u64()), (Some(600), Some(0)), "{done}");
    assert_eq!(done["exit_code"], 0);

    // Its HTML report.
    let report = api.http.get(format!("{}/api/v1/runs/{a}/report", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(report.status().as_u16(), 200);
    assert!(report.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = report.text().await.unwrap();
    assert!(html.contains(&a) && html.contains("lost == 0"), "the report names the run and its gate");

    // A second run, stopped as soon as it sends: stored with what it sent.
    let options = serde_json::json!({"rate": 200, "duration": "60s", "ack_timeout": "20s", "linger": "0s"});
    let (status, _) = api.post("/api/v1/runs", serde_json::json!({"run_id": b, "options": options})).await;
    assert_eq!(status, 201);
    api.until(&b, "progress", |r| r["progress"]["sent"].as_u64().is_some_and(|s| s >= 200)).await;
    let (status, run) = api.post(&format!("/api/v1/runs/{b}/stop"), serde_json::json!({})).await;
    assert_eq!((status, run["state"].as_str()), (202, Some("stopping")), "{run}");
    let stopped = api.until(&b, "the stop", |r| r["state"] != "stopping").await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let sent = stopped["summary"]["sent"].as_u64().unwrap();
    assert!((200..12_000).contains(&sent), "{stopped}");
    let (status, body) = api.post(&format!("/api/v1/runs/{b}/stop"), serde_json::json!({})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("not_running")), "{body}");

    // Both listed; compared.
    let (status, list) = api.get("/api/v1/runs").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["runs"].as_array().unwrap().iter().filter_map(|r| r["run_id"].as_str()).collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()), "{list}");
    let (status, c) = api.get(&format!("/api/v1/compare?a={a}&b={b}")).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!((c["run_a"].as_str(), c["run_b"].as_str()), (Some(a.as_str()), Some(b.as_str())));
    assert!(c["text"].as_str().unwrap().contains(&b), "{c}");
    let (status, body) = api.get(&format!("/api/v1/compare?a={a}&b=no-such-run")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");

    // The scenario: read; an invalid one refused with where; a valid one replaced and running.
    let (status, current) = api.get("/api/v1/scenario").await;
    assert_eq!((status, current["name"].as_str()), (200, Some("happy-path")), "{current}");
    let text = current["text"].as_str().unwrap().to_owned();
    let broken = text.replace("dist: lognormal, median: 2s", "dist: lognormall, median: 2s");
    let (status, body) = api.text(reqwest::Method::POST, "/api/v1/scenario/validate", &broken).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid_scenario")), "{body}");
    assert!(body["line"].as_u64().unwrap() > 1 && body["field"].as_str().unwrap().contains("sms"), "{body}");
    assert!(body["file"].as_str().unwrap().ends_with("scenario.yaml"), "{body}");
    let (status, body) = api.text(reqwest::Method::PUT, "/api/v1/scenario", &broken).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(std::fs::read_to_string(&scenario).unwrap(), text, "an invalid scenario is not written");
    let reseeded = text.replace("seed: 1\n", "seed: 2\n");
    let (status, body) = api.text(reqwest::Method::POST, "/api/v1/scenario/validate", &reseeded).await;
    assert_eq!((status, body["valid"].as_bool()), (200, Some(true)), "{body}");
    let (status, body) = api.text(reqwest::Method::PUT, "/api/v1/scenario", &reseeded).await;
    assert_eq!((status, body["running"].as_bool()), (200, Some(true)), "{body}");
    let (_, now) = api.get("/api/v1/scenario").await;
    assert_eq!((now["seed"].as_u64(), now["version"].clone()), (Some(2), body["version"].clone()), "{now}");
    assert_ne!(now["version"], current["version"]);

    // schemathesis, against the document: every answer conforms (status, content type, schema,
    // headers), no 5xx, and the token is enforced. A long run holds the one slot so that the examples
    // that would start a run are refused (409) instead of running loads.
    let hold = format!("api-hold-{suffix}");
    let hold = serde_json::json!({"run_id": hold, "options": {"rate": 5, "duration": "10m"}});
    let (status, _) = api.post("/api/v1/runs", hold).await;
    assert_eq!(status, 201);
    let schemathesis = tokio::process::Command::new(std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into()))
        .arg("run")
        .arg(root().join("src/control/openapi.yaml"))
        .args(["--url", &api.base, "--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth"])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its own working files (`.schemathesis/`) in the test's directory, not the checkout.
        .current_dir(dir.path())
        .output()
        .await
        .expect("schemathesis runs (pip install schemathesis)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&schemathesis.stdout), String::from_utf8_lossy(&schemathesis.stderr));
    println!("{text}");
    assert!(schemathesis.status.success(), "schemathesis found problems:\n{text}");
    // Whatever still runs (schemathesis's stateful phase may have stopped the held run and started
    // another), stopped; then nothing runs.
    let (_, list) = api.get("/api/v1/runs").await;
    for run in list["runs"].as_array().unwrap().iter().filter(|r| r["state"] == "running") {
        let id = run["run_id"].as_str().unwrap();
        let (status, body) = api.post(&format!("/api/v1/runs/{id}/stop"), serde_json::json!({})).await;
        assert!(status == 202 || status == 409, "{body}");
        api.until(id, "the stop", |r| !matches!(r["state"].as_str(), Some("running" | "stopping"))).await;
    }
    service.assert_alive("after schemathesis");
    service.terminate();
}

crate::on_both_brokers!(actix::test, control_api_runs_reports_compares_and_steers_the_scenario);
