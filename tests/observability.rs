//! The dashboards and alerts against the real thing. promtool's unit tests of the alert rules; the
//! dashboards' JSON is what their generator writes with Grafana's typed builders (grafana-foundation-sdk);
//! and a real Prometheus (Debian's package, which `.ci/run` unpacks) scrapes a running service while a
//! load run over Kafka, a load run through the Twilio door, a webhook to a receiver that is down, a record
//! that is not a message and a scenario edit go through it. Then every Prometheus expression of every
//! panel and alert must return series, every alert must evaluate without error, and every SQL panel must
//! return rows from the service's Postgres store (`tests/observability/check.py`).
//!
//! Needs `prometheus` and `promtool` on PATH or in `target/ci-tools/usr/bin`, `psql`, and
//! `pip install grafana-foundation-sdk pyyaml`; fails, saying so, without them.

mod common;

use common::Kafka;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use understudy::demo::{SampleMessage, publish};
use understudy::model::Channel;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus tool: on PATH, or where `.ci/run` unpacks Debian's package.
fn prometheus_tool(name: &str) -> PathBuf {
    let unpacked = root().join("target/ci-tools/usr/bin").join(name);
    if unpacked.exists() {
        return unpacked;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!("`{name}` is needed (Debian's prometheus package: `.ci/run` unpacks it into target/ci-tools)")
    })
}

fn python() -> Command {
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// The alert rules pass `promtool check rules` and their unit tests.
#[test]
fn alert_rules_pass_their_unit_tests() {
    let promtool = prometheus_tool("promtool");
    let mut check = Command::new(&promtool);
    check.arg("check").arg("rules").arg(root().join("helm/understudy/alerts/understudy.rules.yaml"));
    assert!(run(check, "promtool check rules").contains("SUCCESS: 6 rules found"));
    let mut test = Command::new(&promtool);
    test.arg("test").arg("rules").arg("alerts.test.yaml").current_dir(root().join("tests/observability"));
    let text = run(test, "promtool test rules");
    assert!(text.contains("SUCCESS") && !text.contains("FAILED"), "{text}");
}

/// The dashboards' JSON is what `generate.py` writes from Grafana's typed builders: hand edits, or a
/// generator change without regenerating, fail here.
#[test]
fn dashboards_are_what_their_generator_writes() {
    let mut cmd = python();
    cmd.arg(root().join("helm/understudy/dashboards/generate.py")).arg("--check").current_dir(root());
    run(cmd, "generate.py --check (needs `pip install grafana-foundation-sdk`)");
}

/// The queries `check.py` must run: each dashboard's query variables and panel targets (rows' panels
/// too), and each alert's comparisons (`a > 1 and b > 0` is two).
fn queries_in_dashboards_and_alerts() -> usize {
    fn targets(panels: &serde_json::Value) -> usize {
        panels.as_array().map_or(0, |ps| {
            ps.iter().map(|p| p["targets"].as_array().map_or(0, Vec::len) + targets(&p["panels"])).sum()
        })
    }
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("helm/understudy/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let variables =
                d["templating"]["list"].as_array().map_or(0, |vs| vs.iter().filter(|v| v["type"] == "query").count());
            n += variables + targets(&d["panels"]);
        }
    }
    let rules = std::fs::read_to_string(root().join("helm/understudy/alerts/understudy.rules.yaml")).unwrap();
    let exprs = rules.lines().filter_map(|l| l.trim_start().strip_prefix("expr:"));
    n + exprs.map(|e| e.matches(" and ").count() + 1).sum::<usize>()
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scraping `target` every second as job `understudy`, with the chart's alert rules loaded.
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = root().join("helm/understudy/alerts/understudy.rules.yaml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: understudy\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = common::faults::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query with one series, if it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let body = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
        body["data"]["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Email, SMS and WhatsApp with failures that carry error codes, and a share of each channel whose final
/// status comes an hour later: lost to a load run that waits seconds, and lifecycles asleep meanwhile.
const SCENARIO: &str = "name: observability
seed: 7
channels:
  email:
    delays:
      SEND: { dist: fixed, value: 20ms }
      DELIVERY: { dist: uniform, min: 20ms, max: 300ms }
      OPEN: { dist: fixed, value: 100ms }
      BOUNCE: { dist: fixed, value: 50ms }
    paths:
      - { name: opened, weight: 60, steps: [SEND, DELIVERY, OPEN] }
      - name: hard_bounce
        weight: 20
        steps: [SEND, BOUNCE]
        bounce_type: hard
        errors:
          - { code: \"550 5.1.1\", reason: \"recipient address rejected: user unknown\" }
      - name: late
        weight: 20
        steps: [SEND, DELIVERY]
        delays:
          DELIVERY: { dist: fixed, value: 1h }
  sms:
    delays:
      SEND: { dist: fixed, value: 20ms }
      DELIVERY: { dist: uniform, min: 20ms, max: 300ms }
      UNDELIVERED: { dist: fixed, value: 50ms }
    paths:
      - { name: delivered, weight: 70, steps: [SEND, DELIVERY] }
      - name: undelivered
        weight: 20
        steps: [SEND, UNDELIVERED]
        errors:
          - { code: \"30003\", reason: \"Unreachable destination handset\" }
      - name: late
        weight: 10
        steps: [SEND, DELIVERY]
        delays:
          DELIVERY: { dist: fixed, value: 1h }
  whatsapp:
    delays:
      SEND: { dist: fixed, value: 20ms }
      DELIVERY: { dist: uniform, min: 20ms, max: 300ms }
      READ: { dist: fixed, value: 100ms }
    paths:
      - { name: read, weight: 1, steps: [SEND, DELIVERY, READ] }
";

async fn every_dashboard_panel_and_alert_returns_data(k: Kafka) {
    let store_url = common::postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("observability.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let metrics_port = common::faults::free_port();
    let doors_port = common::faults::free_port();
    let mut settings = common::settings(k, &store_url, 3);
    settings.telemetry.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into());
    settings.http.listen_addr = Some(([127, 0, 0, 1], doors_port).into());
    settings.scenario.reload_interval_ms = 200;
    let config = common::write_config(dir.path(), &settings);
    let mut service = common::faults::Service::spawn(&config, &scenario, &dir.path().join("service.log"));
    let prometheus = Prometheus::start(([127, 0, 0, 1], metrics_port).into());

    // Up and scraped: the service's stages run, Prometheus sees them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus.value("sum(understudy_stage_up)").await.is_none_or(|v| v < 1.0) {
        service.assert_alive("before Prometheus scraped it");
        assert!(Instant::now() < deadline, "Prometheus did not scrape the service:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A record that is no message: a dead letter.
    let bad =
        SampleMessage { payload_id: "bad".into(), channel: Channel::Sms, body: b"not json".to_vec(), headers: vec![] };
    publish(&k.brokers(), &settings.kafka.input_topics[0], &[bad], None).await.unwrap();

    // A webhook to a receiver that is down: Twilio's one retry on a connection failure.
    let down = common::faults::free_port();
    let sent = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{doors_port}/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        ))
        .basic_auth("AC0123456789abcdef0123456789abcdef", Some("token"))
        .form(&[
            ("To", "+15551230000"),
            ("From", "+15005550006"),
            ("Body", "to a receiver that is down"),
            ("StatusCallback", &format!("http://127.0.0.1:{down}/status")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status().as_u16(), 201);

    // A load run through the Twilio door (its webhooks to the run's own receiver), then one over Kafka,
    // last, so that it is the load-run dashboard's default run.
    let load = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(["load", "--config", config.to_str().unwrap(), "--quiet"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "load {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let suffix = common::suffix();
    load(&[
        "--door",
        "twilio",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--ack-timeout",
        "5s",
        "--run-id",
        &format!("door-{suffix}"),
    ]);
    load(&[
        "--rate",
        "150",
        "--duration",
        "3s",
        "--ack-timeout",
        "3s",
        "--linger",
        "0s",
        "--run-id",
        &format!("kafka-{suffix}"),
    ]);

    // A scenario edit, picked up while running.
    std::fs::write(&scenario, SCENARIO.replace("seed: 7", "seed: 8")).unwrap();

    // Everything above is in Prometheus before the queries run.
    for (query, what) in [
        ("sum(understudy_scenario_reloads_total{result=\"loaded\"})", "the scenario reload"),
        ("sum(understudy_webhook_retries_total)", "the webhook retry"),
        ("sum(understudy_messages_dead_lettered_total)", "the dead letter"),
        ("sum(understudy_http_requests_total{vendor=\"twilio\",status=\"201\"})", "the door's 201s"),
        ("sum(understudy_webhook_attempts_total{outcome=\"delivered\"})", "the delivered webhooks"),
        ("sum(understudy_lifecycles_asleep)", "lifecycles asleep"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while prometheus.value(query).await.is_none_or(|v| v <= 0.0) {
            service.assert_alive(what);
            assert!(Instant::now() < deadline, "{what}: {query} stayed 0 for 60 s:\n{}", service.log_text());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Rates need two samples after the last change, and the rules a few evaluations.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut check = python();
    check.arg(root().join("tests/observability/check.py")).arg(&prometheus.url).arg(&store_url).current_dir(root());
    let text = run(check, "tests/observability/check.py");
    println!("{text}");
    let ok = text.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(text.contains(&format!("{ok} queries returned data, 0 did not")), "{text}");
    // Every panel query of the dashboards, their query variables, and each part of each alert.
    assert_eq!(ok, queries_in_dashboards_and_alerts(), "not every query was checked:\n{text}");
    service.terminate();
}

crate::on_both_brokers!(actix::test, every_dashboard_panel_and_alert_returns_data);
