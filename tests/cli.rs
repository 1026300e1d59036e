//! The `understudy` binary refuses bad scenarios and config with file, line and field, before it starts
//! anything.

mod common;

use std::process::Command;

use common::Kafka;

fn understudy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_understudy"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn scenario_check_summarises_shipped_scenarios() {
    let out = understudy()
        .args([
            "scenario",
            "check",
            "scenarios/default.yaml",
            "scenarios/happy-path.yaml",
            "scenarios/failure-heavy.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scenario `default`"), "{text}");
    assert!(text.contains("SEND → DELIVERY → OPEN"), "{text}");
    assert!(text.contains("lognormal   median"), "{text}");
}

#[test]
fn scenario_check_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        &dir,
        "bad.yaml",
        "seed: 1\nchannels:\n  sms:\n    delays:\n      SEND: { dist: fixed, value: 1s }\n      DELIVERY: { dist: fixed, value: 1s }\n    paths:\n      - { name: a, weight: 1, steps: [SEND, OPEN] }\n",
    );
    let out = understudy().args(["scenario", "check", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{bad}:8: `channels.sms.paths[0].steps[1]`: OPEN cannot come after SEND on sms")),
        "{err}"
    );
}

/// `scenario explain` prints the rule, the path and every ack with its due time and code; `scenario
/// check --message` names the rule that catches the sample.
#[test]
fn scenario_explain_and_check_name_the_rule() {
    let run = |args: &[&str]| {
        let out = understudy().args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let at = "2026-11-25T10:00:00Z";
    let text =
        run(&["scenario", "explain", "scenarios/rules.yaml", "scenarios/samples/email-magic-bounce.json", "--at", at]);
    assert!(text.contains("decided by magic recipient `bounce@understudy.test`: hard bounce"), "{text}");
    assert!(text.contains("path       magic:bounce@understudy.test (SEND → BOUNCE)"), "{text}");
    assert!(text.contains("BOUNCE      550 5.1.1: recipient address rejected: user unknown (hard bounce)"), "{text}");
    assert!(text.contains("received at 2026-11-25 10:00:00.000 UTC"), "{text}");
    // Deterministic: the same command prints the same plan.
    assert_eq!(
        text,
        run(&["scenario", "explain", "scenarios/rules.yaml", "scenarios/samples/email-magic-bounce.json", "--at", at])
    );

    let text = run(&[
        "scenario",
        "explain",
        "scenarios/rules.yaml",
        "scenarios/samples/whatsapp-gold.json",
        "--header",
        "x-priority=high",
    ]);
    assert!(text.contains("decided by rule `gold-always-read` (rules[4]"), "{text}");
    let text = run(&["scenario", "explain", "scenarios/rules.yaml", "scenarios/samples/whatsapp-gold.json"]);
    assert!(text.contains("decided by no rule: the whatsapp channel's own paths"), "{text}");

    let text = run(&["scenario", "check", "scenarios/rules.yaml", "--message", "scenarios/samples/email-otp.json"]);
    assert!(text.contains("sample message: rule `otp-fast`"), "{text}");
    assert!(text.contains("fraud-team-bounces"), "{text}");

    let out = understudy()
        .args(["scenario", "explain", "scenarios/rules.yaml", "Cargo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would dead-letter it (not_json)"));
}

#[test]
fn run_refuses_an_invalid_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "s.yaml", "seed: 1\ntime_scale: -2\nchannels: {}\n");
    let out = understudy().args(["run", "--scenario", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad}:2: `time_scale`: must be a positive number")), "{err}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "u.yaml", "kafka:\n  group_id: g\nstore:\n  flush_interval: 5\n");
    let out = understudy().args(["run", "--config", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad}:4: `store.flush_interval`: unknown field `flush_interval`")), "{err}");

    let bad = write(&dir, "v.yaml", "store:\n  url: mysql://x\n");
    let out = understudy().args(["run", "--config", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`store.url`: use a `postgres://…` or `sqlite://…` URL"), "{err}");
}

#[test]
fn a_failing_command_says_its_error_and_each_cause_once() {
    // A store that cannot be opened: sqlx's errors repeat their causes in their own messages.
    let out = understudy()
        .args(["report"])
        .env("UNDERSTUDY__STORE__URL", "sqlite:///nonexistent/dir/store.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: opening the store at sqlite:///nonexistent/dir/store.db: "), "{err}");
    assert_eq!(err.matches("unable to open database file").count(), 1, "{err}");

    // A cause kept only behind the error's source is told.
    let out = understudy().args(["load", "--template", "/nonexistent/template.json", "--mock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: reading the template /nonexistent/template.json: No such file"), "{err}");
}

#[test]
fn environment_overrides_are_checked_too() {
    let out = understudy()
        .args(["run"])
        .env("UNDERSTUDY__KAFKA__PARTITIONS", "zero")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("environment:") && err.contains("partitions"), "{err}");
}

/// Bad configuration and scenario files of many kinds: each stops `understudy run` before it starts
/// anything, with exit 2 and a message naming file, line and field.
#[test]
fn every_kind_of_bad_file_names_file_line_and_field() {
    const SCENARIO: &str = "name: s\nseed: 1\nchannels:\n  sms:\n    delays:\n      SEND: { dist: fixed, value: 1s }\n      DELIVERY: { dist: lognormal, median: 1s, p99: 5s }\n    paths:\n      - { name: ok, weight: 1, steps: [SEND, DELIVERY] }\n";
    // (which file, its text, the line and field the error must name, a word of the message)
    let configs: &[(&str, usize, &str, &str)] = &[
        ("store:\n  flush_interval: 5\n", 2, "store.flush_interval", "unknown field"),
        ("kafka:\n  partitions: many\n", 2, "kafka.partitions", "invalid type"),
        ("kafka:\n  group_id: g\n  partitions: 0\n", 3, "kafka.partitions", "at least 1"),
        ("kafka:\n  group_id: \" \"\n", 2, "kafka.group_id", "must not be empty"),
        ("kafka:\n  input_topics: []\n", 2, "kafka.input_topics", "at least one topic"),
        ("input:\n  fields:\n    payload_id: id\n", 3, "input.fields.payload_id", "JSON pointer"),
        ("input:\n  channel_source: topic\n", 2, "input.channel_source", "has no channel"),
        ("input:\n  on_duplicate_payload_id: keep\n", 2, "input.on_duplicate_payload_id", "unknown variant"),
        ("store:\n  url: mysql://x\n", 2, "store.url", "postgres://"),
        ("store:\n  batch_rows: 0\n", 2, "store.batch_rows", "at least 1"),
        ("telemetry:\n  metrics_addr: localhost\n", 2, "telemetry.metrics_addr", "invalid"),
        ("telemetry:\n  log_format: xml\n", 2, "telemetry.log_format", "unknown variant"),
        ("service:\n  hibernate_after_ms: 500\n", 2, "service.hibernate_after_ms", "at least 1000"),
        ("service:\n  max_batch: 0\n", 2, "service.max_batch", "at least 1"),
        ("kafka:\n  brokers: [a, b]\n", 2, "kafka.brokers", "invalid type"),
    ];
    let scenarios: &[(&str, usize, &str, &str)] = &[
        ("seed: 1\ntime_scale: -2\nchannels: {}\n", 2, "time_scale", "positive"),
        ("seed: 1\nchannels: {}\n", 2, "channels", "at least one channel"),
        ("seed: 1\nsede: 2\nchannels: {}\n", 2, "sede", "unknown field"),
        ("seed: x\nchannels: {}\n", 1, "seed", "invalid"),
        (
            &SCENARIO.replace("steps: [SEND, DELIVERY]", "steps: [SEND, OPEN]"),
            9,
            "channels.sms.paths[0].steps[1]",
            "OPEN",
        ),
        (&SCENARIO.replace("weight: 1", "weight: -1"), 9, "channels.sms.paths[0].weight", "zero or more"),
        (&SCENARIO.replace("dist: lognormal", "dist: gamma"), 7, "channels.sms.delays.DELIVERY.dist", "gamma"),
        (&SCENARIO.replace(", p99: 5s", ""), 7, "channels.sms.delays.DELIVERY", "p99"),
        (&SCENARIO.replace("value: 1s", "value: soon"), 6, "channels.sms.delays.SEND", "soon"),
        (
            &SCENARIO.replace(
                "{ name: ok, weight: 1, steps: [SEND, DELIVERY] }",
                "{ name: ok, weight: 1, steps: [SEND, DELIVERY], bounce_type: hard }",
            ),
            9,
            "channels.sms.paths[0].bounce_type",
            "BOUNCE",
        ),
        (&SCENARIO.replace("  sms:", "  fax:"), 4, "channels.fax", "unknown channel"),
        (
            &format!("{SCENARIO}      - {{ name: ok, weight: 1, steps: [SEND] }}\n"),
            10,
            "channels.sms.paths[1].name",
            "used twice",
        ),
        (&SCENARIO.replace("weight: 1", "weight: 0"), 8, "channels.sms.paths", "add up to zero"),
        (
            &format!("{SCENARIO}rules:\n  - name: r\n    match: {{ recipient: {{ regex: '+1' }} }}\n    path: ok\n"),
            12,
            "rules[0].match.recipient",
            "regular expression",
        ),
        (
            &format!("{SCENARIO}rules:\n  - name: r\n    match: {{ channels: [sms] }}\n    path: nope\n"),
            13,
            "rules[0].path",
            "no path `nope`",
        ),
        (
            &format!("{SCENARIO}throttles:\n  - {{ name: t, rate: 5, per: sender }}\n"),
            11,
            "throttles[0].per",
            "expected `channel`, `tenant` or `{ field: /json/pointer }`",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let scenario_ok = write(&dir, "ok.yaml", SCENARIO);
    let mut kinds = 0;
    for (i, (text, line, field, word)) in configs.iter().enumerate() {
        let file = write(&dir, &format!("config{i}.yaml"), text);
        let out = understudy()
            .args(["run", "--config", &file, "--scenario", &scenario_ok])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(&format!("{file}:{line}: `{field}`: ")) && err.contains(word),
            "config {i}: {text}\n{err}"
        );
        kinds += 1;
    }
    for (i, (text, line, field, word)) in scenarios.iter().enumerate() {
        let file = write(&dir, &format!("scenario{i}.yaml"), text);
        let out = understudy().args(["run", "--scenario", &file]).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(&format!("{file}:{line}: `{field}`: ")) && err.contains(word),
            "scenario {i}: {text}\n{err}"
        );
        kinds += 1;
    }
    assert!(kinds >= 15);
}

/// `scenario calibrate` recovers a known scenario from events it generated: path weights, and delays by
/// their median and p99; `--empirical` gives quantiles; a CSV without a needed column is refused.
#[test]
fn scenario_calibrate_recovers_a_known_scenario() {
    use std::fmt::Write as _;
    use understudy::model::Channel;
    use understudy::scenario::Scenario;
    let dir = tempfile::tempdir().unwrap();
    let known = Scenario::parse(
        "seed: 5\nchannels:\n  email:\n    delays:\n      SEND: { dist: lognormal, median: 200ms, p99: 2s }\n      DELIVERY: { dist: lognormal, median: 2s, p99: 20s }\n      BOUNCE: { dist: lognormal, median: 5s, p99: 1m }\n    paths:\n      - { name: delivered, weight: 70, steps: [SEND, DELIVERY] }\n      - { name: bounced, weight: 30, steps: [SEND, BOUNCE] }\n",
        std::path::Path::new("known.yaml"),
    )
    .unwrap();
    let mut csv = String::from("payload_id,channel,status,timestamp,sent_at\n");
    let base = 1_764_064_800_000_000i64;
    for i in 0..4000 {
        let id = format!("p-{i}");
        let plan = known.plan(Channel::Email, &id).unwrap();
        for s in &plan.steps {
            let at = chrono::DateTime::from_timestamp_micros(base + s.due_us).unwrap().to_rfc3339();
            let sent = chrono::DateTime::from_timestamp_micros(base).unwrap().to_rfc3339();
            writeln!(csv, "{id},email,{},{at},{sent}", s.status.as_str().to_lowercase()).unwrap();
        }
    }
    let events = write(&dir, "events.csv", &csv);
    let out_path = dir.path().join("calibrated.yaml");
    let out = understudy()
        .args(["scenario", "calibrate", &events, "--out", out_path.to_str().unwrap(), "--name", "vendor-x"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    let fitted = Scenario::load(&out_path).unwrap();
    let shares = fitted.path_shares(Channel::Email);
    let delivered = shares.iter().find(|(_, steps, _)| steps.len() == 2 && steps[1].as_str() == "DELIVERY").unwrap().2;
    assert!((delivered - 0.7).abs() < 0.03, "{delivered}\n{report}");
    let delay = |status: &str| fitted.file.channels["email"].delays[status].median_p99();
    let (m, p) = delay("DELIVERY");
    assert!((m / 2.0 - 1.0).abs() < 0.1 && (p / 20.0 - 1.0).abs() < 0.2, "DELIVERY median {m} p99 {p}\n{report}");
    let (m, p) = delay("SEND");
    assert!((m / 0.2 - 1.0).abs() < 0.1 && (p / 2.0 - 1.0).abs() < 0.2, "SEND median {m} p99 {p}\n{report}");
    assert!(report.contains("email    DELIVERY    n=") && report.contains("(good)"), "{report}");

    let out = understudy().args(["scenario", "calibrate", &events, "--empirical"]).output().unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("dist: empirical"), "{yaml}");
    Scenario::parse(&yaml, std::path::Path::new("empirical.yaml")).unwrap();

    let bad = write(&dir, "bad.csv", "payload_id,channel,when\np,email,1\n");
    let out = understudy().args(["scenario", "calibrate", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{bad}:1: no `status` column")));
}

#[test]
fn check_prints_the_effective_settings_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "u.yaml",
        "kafka:\n  brokers: k:9092\n  librdkafka:\n    sasl.password: kafka-pass-1\nstore:\n  url: postgres://u:store-pass-2@db/x\n",
    );
    let out = understudy()
        .args(["check", "--config", &file, "--group-id", "from-flag"])
        .env("UNDERSTUDY__KAFKA__PARTITIONS", "12")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // File, environment and flag layered as `run` layers them.
    for want in [
        "brokers: k:9092",
        "partitions: 12",
        "group_id: from-flag",
        "url: postgres://u:***@db/x",
        "sasl.password: '***'",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert!(!text.contains("kafka-pass-1") && !text.contains("store-pass-2"), "{text}");
    assert!(text.contains("# scenario scenarios/default.yaml: version "), "{text}");

    let bad = write(&dir, "bad.yaml", "scenario:\n  path: nowhere.yaml\n");
    let out = understudy().args(["check", "--config", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.yaml"));
}

/// `check --connect` reaches the real broker and Postgres and says what `run` would find there; a
/// configuration that could not start (topics missing with creation off, no broker) exits 1 saying why.
async fn check_connect_reaches_kafka_and_the_store(k: Kafka) {
    let brokers = k.brokers();
    let store = common::postgres_url().await;
    let topic = format!("check-{}", common::suffix());
    let check = |brokers: &str, create_topics: &str| {
        understudy()
            .args(["check", "--connect", "--brokers", brokers, "--database-url", &store])
            .env("UNDERSTUDY__KAFKA__INPUT_TOPICS", &topic)
            .env("UNDERSTUDY__KAFKA__CREATE_TOPICS", create_topics)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let out = check(&brokers, "true");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!(" broker(s) at {brokers}")), "{text}");
    assert!(text.contains(&format!("#   topic {topic}: missing; `run` creates it")), "{text}");
    assert!(text.contains("# store: Postgres at ") && text.contains("empty; `run` creates the tables"), "{text}");

    let out = check(&brokers, "false");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("topics missing and `kafka.create_topics` is off") && err.contains(&topic), "{err}");

    let out = check("127.0.0.1:1", "true");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach Kafka at `127.0.0.1:1`"));
}

/// `run` refuses, before it starts anything (the SQLite store is not even created), a cluster it could not
/// work with, naming the setting: Kafka unreachable, topics missing with `kafka.create_topics` off, and a
/// replication factor above the cluster's broker count.
async fn run_refuses_a_cluster_it_cannot_work_with(k: Kafka) {
    let brokers = k.brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("refuse-{}", common::suffix());
    let run = |brokers: &str, env: &[(&str, &str)]| {
        let db = dir.path().join(format!("{}.db", common::suffix()));
        let mut cmd = understudy();
        cmd.args(["run", "--brokers", brokers, "--database-url"])
            .arg(format!("sqlite://{}", db.display()))
            .env("UNDERSTUDY__KAFKA__INPUT_TOPICS", &topic)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let t = std::time::Instant::now();
        let out = cmd.output().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(40), "refused in {:?}", t.elapsed());
        assert!(!db.exists(), "nothing started: no store created");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("127.0.0.1:1", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Kafka at `127.0.0.1:1`") && err.contains("`kafka.brokers`"), "{err}");

    let (code, err) = run(&brokers, &[("UNDERSTUDY__KAFKA__CREATE_TOPICS", "false")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("topics missing and `kafka.create_topics` is off") && err.contains(&topic), "{err}");

    let (code, err) = run(&brokers, &[("UNDERSTUDY__KAFKA__REPLICATION_FACTOR", "3")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`kafka.replication_factor` is 3 but the cluster has 1 broker(s)"), "{err}");
}

crate::on_both_brokers!(
    tokio::test,
    check_connect_reaches_kafka_and_the_store,
    run_refuses_a_cluster_it_cannot_work_with
);

/// Wrong SASL credentials: `run` refuses before anything starts, saying that authentication failed and
/// naming the SASL settings; `check --connect` with the right ones reaches the cluster. Apache Kafka only:
/// the embedded broker has no SASL listener.
#[tokio::test]
async fn run_refuses_wrong_sasl_credentials() {
    use common::kafka::{ApacheKafka, SASL_PASSWORD, SASL_USER};
    let cluster = ApacheKafka::start("sasl", 1);
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("sasl-{}", common::suffix());
    let config = |password: &str| {
        let db = dir.path().join(format!("{}.db", common::suffix()));
        let mut s = common::settings_for(&cluster.sasl_bootstrap(), &format!("sqlite://{}", db.display()), 1);
        s.kafka.input_topics = vec![topic.clone()];
        for (k, v) in [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", SASL_USER),
            ("sasl.password", password),
        ] {
            s.kafka.librdkafka.insert(k.into(), v.into());
        }
        let d = dir.path().join(common::suffix());
        std::fs::create_dir_all(&d).unwrap();
        (common::write_config(&d, &s), db)
    };

    let (good, _) = config(SASL_PASSWORD);
    let out = understudy().args(["check", "--connect", "--config"]).arg(&good).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!(" broker(s) at {}", cluster.sasl_bootstrap())), "{text}");

    let (bad, db) = config("not-the-password");
    let t = std::time::Instant::now();
    let out = understudy().args(["run", "--config"]).arg(&bad).output().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(40), "refused in {:?}", t.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach Kafka at") && err.contains("`sasl.username`"), "{err}");
    assert!(err.to_lowercase().contains("authentication"), "the reason says authentication failed: {err}");
    eprintln!("FIGURES wrong SASL credentials: exit {:?}, {}", out.status.code(), err.trim());
    assert!(!db.exists(), "nothing started: no store created");
}
