//! `understudy load` against the mock on a real broker and a real store: the schedule sends exactly the
//! planned messages with their ids, correlation finds every ack, runs are stored and reported again,
//! gates pass and fail with their exit codes, and payloads without an outcome are listed as lost.

mod common;

use common::Kafka;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use understudy::actors::pipeline::Pipeline;
use understudy::demo::read_topic;
use understudy::load::html;
use understudy::load::message::{MessageFactory, Mix, Template};
use understudy::load::{self, LoadSettings, Progress};
use understudy::model::{Channel, Status};
use understudy::store::Store;
use understudy::wire::headers::INTENDED_AT_HEADER;

/// The machine, shared by this file's load runs and had alone by the one test that judges noise between
/// runs: with the others' load runs alongside on two cores, one run's every latency drifts by a third of a
/// second against the next run's, and `compare` rightly calls that a change.
static MACHINE: RwLock<()> = RwLock::new(());

fn machine_shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(PoisonError::into_inner)
}

fn machine_alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(PoisonError::into_inner)
}

fn understudy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_understudy"))
}

fn scenario_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(file)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn load_run_correlate_report_and_gate(k: Kafka, store_url: String) {
    let _machine = machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::settings(k, &store_url, 3);
    settings.scenario.path = scenario_path("happy-path.yaml");
    let config = common::write_config(dir.path(), &settings);
    let config = config.to_str().unwrap();
    let run = format!("t-{}", common::suffix());

    // 500 messages/s for 4 s, with the mock in the same process.
    let out = understudy()
        .args(["load", "--config", config, "--mock", "--time-scale", "0.0001", "--rate", "500", "--duration", "4s"])
        .args(["--batch-size", "250", "--linger", "2s", "--run-id", &run, "--format", "json", "--quiet"])
        .args(["--gate", "lost == 0", "--gate", "p99(DELIVERY) < 30s", "--gate", "rate(DELIVERY) >= 99%"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = json(&out);
    assert_eq!(summary["planned"], 2000);
    assert_eq!(summary["sent"], 2000);
    assert_eq!(summary["resolved"], 2000);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["gates"].as_array().unwrap().len(), 3);

    // Correlation found every ack the scenario plans for these payloads.
    let scenario = common::scenario("happy-path.yaml", 0.0001);
    let factory = MessageFactory::new(&run, 0, "load", 250, Mix::default(), Template::default(), 0);
    let mut ids = HashSet::new();
    let mut planned_events = 0;
    for seq in 0..2000 {
        let mut id = String::new();
        factory.payload_id(seq, &mut id);
        planned_events += scenario.plan(factory.mix.channel_of(seq), &id).unwrap().steps.len();
        ids.insert(id);
    }
    assert_eq!(summary["events"], planned_events);
    let statuses = summary["statuses"].as_array().unwrap();
    let delivered: u64 =
        statuses.iter().filter(|r| r["status"] == "DELIVERY").map(|r| r["payloads"].as_u64().unwrap()).sum();
    assert_eq!(delivered, 2000);

    // The outbound topic holds exactly the run's messages, with their ids and intended send times.
    let records = read_topic(&k.brokers(), &settings.kafka.input_topics[0], 2000, Duration::from_secs(5)).unwrap();
    assert_eq!(records.len(), 2000);
    let sent: HashSet<String> = records.iter().map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap()).collect();
    assert_eq!(sent, ids);
    let intended: Vec<i64> = records
        .iter()
        .map(|r| {
            let h = r.headers.iter().find(|(k, _)| k == INTENDED_AT_HEADER).expect("intended send time header");
            std::str::from_utf8(&h.1).unwrap().parse().unwrap()
        })
        .collect();
    let span_s = (intended.iter().max().unwrap() - intended.iter().min().unwrap()) as f64 / 1e6;
    assert!((span_s - 3.998).abs() < 0.01, "2000 messages at 500/s are due over 3.998 s, not {span_s}");
    let body: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert!(body["batch_id"].as_str().unwrap().starts_with(&format!("{run}-g0-b")));

    // The run is in the store: `report` prints the same figures, and gates apply afterwards too.
    let out = understudy().args(["report", "--config", config, &run, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let again = json(&out);
    for key in ["planned", "sent", "events", "resolved", "lost"] {
        assert_eq!(again[key], summary[key], "{key}");
    }
    let out = understudy()
        .args(["report", "--config", config, &run, "--gate", "lost > 0", "--gate", "sent == 2000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(load::GATE_FAILED_EXIT as i32));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gate FAILED  lost > 0  (measured 0: equal to 0)"), "{text}");
    assert!(text.contains("gate passed  sent == 2000"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 gates failed"));

    // An unknown metric is an error, not a pass.
    let out = understudy().args(["report", "--config", config, &run, "--gate", "p99(DELIVERD) < 1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown status `DELIVERD`"));

    // The record: one CSV row per message and status; here every message has its outcome, so no LOST rows.
    let out = understudy().args(["report", "--config", config, &run, "--format", "csv"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("run_id,generator,payload_id,batch_id,channel,status,intended_at,latency_ms"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), planned_events);
    assert!(rows.iter().all(|r| r.len() == 8 && ids.contains(r[2]) && r[7].parse::<f64>().unwrap() >= 0.0));
    let csv_ids: HashSet<&str> = rows.iter().map(|r| r[2]).collect();
    assert_eq!(csv_ids.len(), 2000);

    // The HTML report renders in headless Chromium, with every chart drawn from data.
    let html = dir.path().join("report.html");
    let out =
        understudy().args(["report", "--config", config, &run, "--html", html.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    check_rendered(&html);

    // Without a run id, `report` lists the stored runs.
    let out = understudy().args(["report", "--config", config]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&run));
}

async fn load_run_on_postgres(k: Kafka) {
    load_run_correlate_report_and_gate(k, common::postgres_url().await).await;
}

async fn load_run_on_sqlite(k: Kafka) {
    let (url, _dir) = common::sqlite_url();
    load_run_correlate_report_and_gate(k, url).await;
}

/// Acks in vendor formats (a SendGrid batch for email, Twilio callbacks for SMS, WhatsApp Cloud API
/// webhooks) are correlated by the headers Understudy puts on them: every planned ack found, none lost.
async fn load_run_correlates_vendor_formats(k: Kafka) {
    let _machine = machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let (url, _db) = common::sqlite_url();
    let text = std::fs::read_to_string(scenario_path("happy-path.yaml")).unwrap();
    let text = text
        .replace("  email:\n", "  email:\n    ack_format: { sendgrid: { max_events: 50 } }\n")
        .replace("  sms:\n", "  sms:\n    ack_format: twilio\n")
        .replace("  whatsapp:\n", "  whatsapp:\n    ack_format: whatsapp_cloud\n");
    assert_eq!(text.matches("ack_format").count(), 3, "the shipped scenario changed shape");
    let scenario_file = dir.path().join("vendors.yaml");
    std::fs::write(&scenario_file, &text).unwrap();
    let mut settings = common::settings(k, &url, 3);
    settings.scenario.path = scenario_file.clone();
    let config = common::write_config(dir.path(), &settings);
    let run = format!("v-{}", common::suffix());
    let out = understudy()
        .args(["load", "--config", config.to_str().unwrap(), "--mock", "--time-scale", "0.0001", "--rate", "500"])
        .args(["--duration", "2s", "--run-id", &run, "--format", "json", "--quiet", "--gate", "lost == 0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = json(&out);
    let scenario = understudy::scenario::Scenario::load(&scenario_file).unwrap().rescaled(0.0001).unwrap();
    let factory = MessageFactory::new(&run, 0, "load", 1000, Mix::default(), Template::default(), 0);
    let planned_events: usize = (0..1000)
        .map(|seq| {
            let mut id = String::new();
            factory.payload_id(seq, &mut id);
            scenario.plan(factory.mix.channel_of(seq), &id).unwrap().steps.len()
        })
        .sum();
    assert_eq!((summary["sent"].as_u64(), summary["lost"].as_u64()), (Some(1000), Some(0)), "{summary}");
    assert_eq!(summary["events"], planned_events, "{summary}");
    assert_eq!(summary["undecodable_acks"], 0, "{summary}");
}

/// Lost payloads told apart with the scenario: email's acks are all dropped (injected), SMS's DELIVERY is
/// due a minute after the send (after the wait ends), WhatsApp's arrive. Nothing is lost for real, so a
/// `lost_real == 0` gate passes where `lost == 0` fails.
async fn lost_payloads_are_told_apart_by_the_scenario(k: Kafka) {
    let _machine = machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let (url, _db) = common::sqlite_url();
    let fixed = |v: &str| format!("{{ dist: fixed, value: {v} }}");
    let channel = |name: &str, delivery: &str, faults: &str| {
        format!(
            "  {name}:\n    delays:\n      SEND: {}\n      DELIVERY: {}\n{faults}    paths:\n      - {{ name: delivered, weight: 1, steps: [SEND, DELIVERY] }}\n",
            fixed("5ms"),
            fixed(delivery)
        )
    };
    let text = format!(
        "name: lost\nseed: 5\nchannels:\n{}{}{}",
        channel("email", "5ms", "    faults: { drop: 1.0 }\n"),
        channel("sms", "60s", ""),
        channel("whatsapp", "5ms", "")
    );
    let scenario_file = dir.path().join("lost.yaml");
    std::fs::write(&scenario_file, text).unwrap();
    let mut settings = common::settings(k, &url, 3);
    settings.scenario.path = scenario_file;
    let config = common::write_config(dir.path(), &settings);
    let run = format!("l-{}", common::suffix());
    let out = understudy()
        .args(["load", "--config", config.to_str().unwrap(), "--mock", "--rate", "300", "--duration", "1s"])
        .args(["--ack-timeout", "3s", "--linger", "0s", "--run-id", &run, "--format", "json", "--quiet"])
        .args(["--gate", "lost_real == 0", "--gate", "lost == 0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(load::GATE_FAILED_EXIT as i32), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json(&out);
    let gates = s["gates"].as_array().unwrap();
    assert_eq!((gates[0]["passed"].as_bool(), gates[1]["passed"].as_bool()), (Some(true), Some(false)), "{s}");
    let factory = MessageFactory::new(&run, 0, "load", 1000, Mix::default(), Template::default(), 0);
    let of = |c: Channel| (0..300).filter(|seq| factory.mix.channel_of(*seq) == c).count() as u64;
    assert_eq!(s["sent"], 300, "{s}");
    assert_eq!(s["lost_injected"], of(Channel::Email), "{s}");
    assert_eq!(s["lost_late"], of(Channel::Sms), "{s}");
    assert_eq!(s["lost"], of(Channel::Email) + of(Channel::Sms), "{s}");
    assert_eq!(s["resolved"], of(Channel::Whatsapp), "{s}");
}

/// The mock stops part way through: the payloads sent after it stopped get no outcome and are lost,
/// listed by id, and a `lost == 0` gate fails by their number.
async fn payloads_without_an_outcome_are_lost(k: Kafka) {
    let _machine = machine_shared();
    let (url, _dir) = common::sqlite_url();
    let settings = common::settings(k, &url, 3);
    let scenario = Arc::new(common::scenario("happy-path.yaml", 0.0001));
    let brokers = k.brokers();
    let _store = Store::connect(&url, 2).await.unwrap(); // migrated before the mock starts
    let pipeline = Pipeline::start(&settings, scenario, &brokers).await.unwrap();
    common::eventually(Duration::from_secs(30), "the mock owns its partitions", || async {
        (pipeline.owned_partitions() == 3).then_some(())
    })
    .await;

    let run = format!("t-{}", common::suffix());
    let load_settings = LoadSettings {
        run_id: run.clone(),
        generator: 0,
        profile: "400@5s".into(),
        max_messages: None,
        batch_size: 100,
        batch_gap_ms: 0,
        mix: "email=0.5,sms=0.3,whatsapp=0.2".into(),
        tenant_id: "load".into(),
        payload_bytes: 0,
        template: None,
        recipients: Default::default(),
        topic: settings.kafka.input_topics[0].clone(),
        ack_topic: settings.kafka.ack_topic.clone(),
        ack_payload_id: "/payload_id".into(),
        ack_status: "/status".into(),
        ack_timeout_ms: 3000,
        linger_ms: 500,
        late_after_ms: 10.0,
    };
    let gates: [load::gate::Gate; 1] = ["lost == 0".parse().unwrap()];
    let stop_mock = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        pipeline.shutdown().await;
    };
    let (outcome, ()) = tokio::join!(
        load::run(
            load::Transport::Kafka { kafka: &settings.kafka, brokers: &brokers },
            load_settings,
            Template::default(),
            &gates,
            Progress::Quiet
        ),
        stop_mock
    );
    let r = outcome.unwrap().results;
    assert_eq!(r.sent_total(), 2000, "sending goes on without the mock");
    assert!(r.resolved > 0 && r.lost > 0, "resolved {} lost {}", r.resolved, r.lost);
    assert_eq!(r.resolved + r.lost, 2000);
    assert_eq!(r.lost_ids.len() as u64, r.lost.min(1000));

    // The lost ids are exactly the payloads with no final outcome in the ack topic.
    let acks = read_topic(&brokers, &settings.kafka.ack_topic, usize::MAX, Duration::from_secs(3)).unwrap();
    let resolved: HashSet<String> = acks
        .iter()
        .filter_map(|a| {
            let v: serde_json::Value = serde_json::from_slice(&a.payload).ok()?;
            let status: Status = v["status"].as_str()?.parse().ok()?;
            status.can_end().then(|| v["payload_id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(resolved.len() as u64, r.resolved);
    assert!(r.lost_ids.iter().all(|id| id.starts_with(&run) && !resolved.contains(id)));

    let verdict = gates[0].check(&r);
    assert!(!verdict.passed);
    assert_eq!(verdict.detail, format!("over by {}", r.lost));
}

/// Headless Chromium, which the HTML report test needs (`apt-get install chromium`; `.ci/run` installs it).
fn chromium() -> Command {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut c = Command::new(bin);
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,4000"]);
    c
}

/// The report's DOM after Chromium loaded it has every chart with data points, and a screenshot shows
/// them drawn: pixels in the colours of the sent, outcome and latency series.
fn check_rendered(html: &Path) {
    let url = format!("file://{}", html.display());
    let out = chromium().arg("--dump-dom").arg(&url).output().unwrap_or_else(|e| {
        panic!("headless Chromium is needed for this test (apt-get install chromium, or set CHROMIUM): {e}")
    });
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    for chart in ["throughput", "latency-send", "latency-delivery", "statuses", "batches", "lateness"] {
        let at = dom.find(&format!(r#"data-chart="{chart}""#)).unwrap_or_else(|| panic!("no {chart} chart"));
        let points: usize = dom[at..].split('"').nth(3).unwrap().parse().unwrap();
        assert!(points >= 3, "{chart} chart has {points} data points");
    }
    assert!(dom.matches("<polyline").count() >= 8 && dom.matches("<rect").count() >= 10, "lines and bars drawn");

    let shot = html.with_extension("png");
    let out = chromium().arg(format!("--screenshot={}", shot.display())).arg(&url).output().unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let count = |hex: &str| {
        let rgb: Vec<u8> = (0..3).map(|i| u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()).collect();
        pixels.iter().filter(|p| p[..3] == rgb[..]).count()
    };
    for (name, colour) in [("sent / p50", html::BLUE), ("outcomes / acked", html::GREEN), ("p99", html::RED)] {
        let n = count(colour);
        assert!(n > 500, "{name} ({colour}) drawn in only {n} pixels");
    }
}

/// An SMS-only scenario whose DELIVERY takes `delivery`.
fn sms_scenario(dir: &Path, name: &str, seed: u64, delivery: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nseed: {seed}\nchannels:\n  sms:\n    delays:\n      SEND: {{ dist: fixed, value: 5ms }}\n      DELIVERY: {delivery}\n    paths:\n      - {{ name: delivered, weight: 1, steps: [SEND, DELIVERY] }}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `compare` finds the real difference between a fast and a slow vendor, and none between two runs of the
/// same slow vendor with different seeds.
async fn compare_tells_a_real_difference_from_noise(k: Kafka) {
    let _machine = machine_alone();
    let dir = tempfile::tempdir().unwrap();
    let (url, _db) = common::sqlite_url();
    // Two seconds of vendor time: well above what the mock itself adds, which varies with the machine's load.
    let slow = "{ dist: uniform, min: 1500ms, max: 2500ms }";
    let runs = [
        // Not compared: the first run on a fresh Apache Kafka broker meets its cold JVM. The broker spent
        // 8 s of CPU in that run's 5.5 s (the JIT compiling its hot paths, on the same two cores) and 4 s
        // in each later one; over seven fresh brokers SEND p50 was 45 – 406 ms in the first run against
        // 15 – 40 ms after it (CI once saw 1,554 ms).
        // Not `__consumer_offsets`: with it created before the runs, the first run was as late.
        ("warm-up", sms_scenario(dir.path(), "warm-up", 3, slow)),
        ("slow-a", sms_scenario(dir.path(), "slow-a", 1, slow)),
        ("slow-b", sms_scenario(dir.path(), "slow-b", 2, slow)),
        ("fast", sms_scenario(dir.path(), "fast", 1, "{ dist: fixed, value: 5ms }")),
    ];
    let mut config = PathBuf::new();
    let mut ids = Vec::new();
    for (name, scenario) in &runs {
        // Each run its own topics and group, one store.
        let mut settings = common::settings(k, &url, 3);
        settings.scenario.path = scenario.clone();
        let run_dir = dir.path().join(name);
        std::fs::create_dir_all(&run_dir).unwrap();
        config = common::write_config(&run_dir, &settings);
        let id = format!("{name}-{}", common::suffix());
        let out = understudy()
            .args(["load", "--config", config.to_str().unwrap(), "--mock", "--rate", "200", "--duration", "2s"])
            .args(["--mix", "sms=1", "--linger", "0s", "--run-id", &id, "--quiet", "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(json(&out)["resolved"], 400, "{name}");
        ids.push(id);
    }
    // Only DELIVERY is judged here: SEND latency is the mock's own, which swings with the load of the
    // machine (other tests run alongside), and `compare` rightly reports such swings.
    let compare = |a: &str, b: &str| {
        understudy()
            .args(["compare", "--config", config.to_str().unwrap(), a, b, "--noise", "10%", "--format", "json"])
            .output()
            .unwrap()
    };
    let delivery = |v: &serde_json::Value| -> Vec<(f64, String)> {
        v["latency"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["status"] == "DELIVERY")
            .map(|l| (l["percentile"].as_f64().unwrap(), l["verdict"].as_str().unwrap().to_owned()))
            .collect()
    };

    // The same vendor, another seed: no significant change in DELIVERY, and nothing to fail on.
    let ids = &ids[1..];
    let out = compare(&ids[0], &ids[1]);
    let same = json(&out);
    let verdicts = delivery(&same);
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|(_, v)| v == "no_significant_change"), "{same:#}");

    // Slow → fast: DELIVERY improved at every percentile, by about two seconds at the median.
    let out = compare(&ids[0], &ids[2]);
    assert_eq!(out.status.code(), Some(0));
    let better = json(&out);
    assert!(delivery(&better).iter().all(|(_, v)| v == "improved"), "{better:#}");
    let p50 = better["latency"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["status"] == "DELIVERY" && l["percentile"] == 50.0)
        .unwrap();
    let diff = p50["diff_ms"].as_f64().unwrap();
    assert!((-2300.0..-1700.0).contains(&diff), "median difference {diff} ms");
    let shift = better["shifts"].as_array().unwrap().iter().find(|s| s["status"] == "DELIVERY").unwrap();
    assert!(shift["p_value"].as_f64().unwrap() < 1e-6);

    // Fast → slow: regressed, and `--fail-on-regression` fails.
    let out = understudy()
        .args(["compare", "--config", config.to_str().unwrap(), &ids[2], &ids[0], "--noise", "10%"])
        .args(["--format", "json", "--fail-on-regression"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(load::GATE_FAILED_EXIT as i32));
    assert!(delivery(&json(&out)).iter().all(|(_, v)| v == "regressed"));

    // The text form names the verdicts.
    let out = understudy().args(["compare", "--config", config.to_str().unwrap(), &ids[2], &ids[0]]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "without --fail-on-regression");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sms       DELIVERY") && text.contains("regressed") && text.contains("Mann-Whitney"),
        "{text}"
    );
}

/// The mock (`happy-path`, 10,000× faster) on broker `k` and a fresh Postgres database, owning its
/// partitions, for `understudy load` processes to run against: the pipeline, their config file, its
/// directory.
async fn mock_for_load_processes(k: Kafka) -> (Pipeline, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::postgres_url().await;
    let settings = common::settings(k, &url, 3);
    Store::connect(&url, 2).await.unwrap().close().await; // migrated before the mock starts
    let pipeline =
        Pipeline::start(&settings, Arc::new(common::scenario("happy-path.yaml", 0.0001)), &k.brokers()).await.unwrap();
    common::eventually(Duration::from_secs(30), "the mock owns its partitions", || async {
        (pipeline.owned_partitions() == 3).then_some(())
    })
    .await;
    let config = common::write_config(dir.path(), &settings);
    (pipeline, config, dir)
}

/// Two generator processes join one run: each sends its share under its own payload ids, and `report`
/// merges their counts and histograms.
async fn generator_processes_of_one_run_merge(k: Kafka) {
    let _machine = machine_shared();
    let (pipeline, config, _dir) = mock_for_load_processes(k).await;
    let config = config.to_str().unwrap();
    let run = format!("t-{}", common::suffix());
    let spawn = |generator: &str| {
        understudy()
            .args(["load", "--config", config, "--rate", "400", "--duration", "3s", "--run-id", &run])
            .args(["--generator", generator, "--quiet", "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0"), spawn("1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    pipeline.shutdown().await;
    let parts = [json(&a), json(&b)];
    for (out, part) in [(&a, &parts[0]), (&b, &parts[1])] {
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            (part["sent"].as_u64(), part["lost"].as_u64()),
            (Some(1200), Some(0)),
            "lost: {}, per status: {}",
            part["lost_ids"],
            part["statuses"]
        );
    }

    let out = understudy().args(["report", "--config", config, &run, "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let merged = json(&out);
    assert_eq!(merged["generators"], 2);
    for key in ["planned", "sent", "events", "resolved"] {
        let sum = parts[0][key].as_u64().unwrap() + parts[1][key].as_u64().unwrap();
        assert_eq!(merged[key].as_u64().unwrap(), sum, "{key}");
    }
    // Histograms merge: the merged DELIVERY count per channel is the sum of the parts'.
    let delivery = |v: &serde_json::Value, channel: &str| {
        v["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "DELIVERY" && r["channel"] == channel)
            .map_or(0, |r| r["events"].as_u64().unwrap())
    };
    for channel in ["email", "sms", "whatsapp"] {
        assert_eq!(delivery(&merged, channel), delivery(&parts[0], channel) + delivery(&parts[1], channel));
    }
    // The CSV holds both processes' payloads, told apart by their ids.
    let out = understudy().args(["report", "--config", config, &run, "--format", "csv"]).output().unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    let ids: HashSet<&str> = csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap()).collect();
    assert_eq!(ids.len(), 2400);
    assert_eq!(ids.iter().filter(|id| id.starts_with(&format!("{run}-g1-"))).count(), 1200);
}

/// A run of two generators (`--generators 2`): generator 0 stores its part, waits for generator 1's (started
/// only once generator 0 says it waits, so the two never produce at once), then prints, gates and notifies
/// the merged run, once; generator 1 prints its own part and neither gates nor notifies. `report --notify`
/// tells of a failed gate the same way.
async fn generator_0_gates_and_notifies_the_merged_run(k: Kafka) {
    use tokio::io::AsyncBufReadExt as _;
    let _machine = machine_shared();
    let (pipeline, config, _dir) = mock_for_load_processes(k).await;
    let config = config.to_str().unwrap();
    let run = format!("t-{}", common::suffix());

    // A webhook receiver: every POST's JSON, and the path it came to.
    let (tx, mut notified) = tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value)>();
    let server = actix_web::HttpServer::new(move || {
        let tx = tx.clone();
        actix_web::App::new().default_service(actix_web::web::to(
            move |req: actix_web::HttpRequest, body: actix_web::web::Json<serde_json::Value>| {
                let _ = tx.send((req.path().to_owned(), body.into_inner()));
                async { actix_web::HttpResponse::Ok().body("ok") }
            },
        ))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let receiver = format!("http://{}/services/T0/B0/notify-token", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix::spawn(server);

    let generator = |g: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(["load", "--config", config, "--rate", "400", "--duration", "2s", "--run-id", &run])
            .args(["--generators", "2", "--generator", g, "--wait-for-parts", "60s", "--notify", &receiver])
            .args(["--gate", "sent == 1600", "--gate", "lost == 0", "--quiet", "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = generator("0");
    let mut first_err = tokio::io::BufReader::new(first.stderr.take().unwrap()).lines();
    let mut told = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), first_err.next_line()).await;
        let line = line
            .expect("generator 0 says it waits within 60 s")
            .unwrap()
            .unwrap_or_else(|| panic!("generator 0 ended without waiting for generator 1:\n{}", told.join("\n")));
        let waits = line.contains("waiting up to 1m for 1 more of 2 generators");
        told.push(line);
        if waits {
            break;
        }
    }
    let second = generator("1").wait_with_output().await.unwrap();
    let first = first.wait_with_output().await.unwrap();
    pipeline.shutdown().await;
    assert_eq!(second.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(first.status.code(), Some(0), "generator 0: {}", told.join("\n"));

    // Generator 1 prints its part, ungated; generator 0 the merged run, gated: each part alone has 800.
    let (part, merged) = (json(&second), json(&first));
    assert_eq!((part["sent"].as_u64(), part["generators"].as_u64()), (Some(800), Some(1)), "{part}");
    assert_eq!(part["gates"], serde_json::json!([]));
    assert_eq!((merged["sent"].as_u64(), merged["generators"].as_u64()), (Some(1600), Some(2)), "{merged}");
    assert_eq!(merged["passed"], true, "{merged}");
    assert_eq!(merged["gates"].as_array().unwrap().len(), 2);

    // One notification, generator 0's, of the merged run: Slack's `text` and `blocks`, and the summary.
    let (path, message) = tokio::time::timeout(Duration::from_secs(5), notified.recv()).await.unwrap().unwrap();
    assert_eq!(path, "/services/T0/B0/notify-token");
    let text = message["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("Understudy load run `{run}` passed: 1600 sent")), "{text}");
    assert!(text.contains("✅ `sent == 1600`: 1600") && text.contains("✅ `lost == 0`: 0"), "{text}");
    assert_eq!(message["blocks"][0]["type"], "section");
    assert_eq!(message["blocks"][0]["text"]["type"], "mrkdwn");
    assert_eq!(message["understudy"]["sent"], 1600);
    assert_eq!(message["understudy"]["generators"], 2);

    // The stored run, judged again with a gate it fails: exit 3, and a notification that says so.
    let out = understudy()
        .args(["report", "--config", config, &run, "--gate", "sent > 1600", "--notify", &receiver])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let (_, message) = tokio::time::timeout(Duration::from_secs(5), notified.recv()).await.unwrap().unwrap();
    let text = message["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("Understudy load run `{run}` FAILED")), "{text}");
    assert!(text.contains("❌ `sent > 1600`: 1600"), "{text}");
    assert!(notified.try_recv().is_err(), "one notification each, none from generator 1");
    // The token in the URL's path is not printed anywhere.
    for out in [&first.stdout, &second.stdout, &second.stderr, &out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(out).contains("notify-token"));
    }
    assert!(!told.join("\n").contains("notify-token"));
    handle.stop(true).await;
}

/// `--mock` on the embedded broker, twice with one store: the second run is as complete as the first (the
/// broker starts empty each time; the store remembers the offsets of the first run's messages).
#[test]
fn repeated_mock_runs_on_the_embedded_broker_share_a_store() {
    let _machine = machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let (url, _db) = common::sqlite_url();
    let mut settings = understudy::config::Settings::default();
    settings.store.url = Some(url);
    settings.scenario.path = scenario_path("happy-path.yaml");
    let config = common::write_config(dir.path(), &settings);
    for _ in 0..2 {
        let out = understudy()
            .args(["load", "--config", config.to_str().unwrap(), "--mock", "--time-scale", "0.0001"])
            .args(["--rate", "500", "--duration", "2s", "--quiet", "--format", "json", "--gate", "lost == 0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let summary = json(&out);
        assert_eq!((summary["sent"].as_u64(), summary["resolved"].as_u64()), (Some(1000), Some(1000)));
    }
}

/// `understudy load --door …` with the mock: every message is the vendor's send call, answered 2xx, and
/// every status comes back as the vendor's signed webhook to the run's own receiver (signatures checked:
/// Twilio's with the account's token, Meta's with the app secret after its handshake, SendGrid's ECDSA,
/// SNS's RSA after the subscription is confirmed; SES calls SigV4-signed), correlated into the report.
async fn load_runs_through_each_door(k: Kafka) {
    let _machine = machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let store_url = common::postgres_url().await;
    let mut settings = common::settings(k, &store_url, 3);
    settings.scenario.path = scenario_path("happy-path.yaml");
    settings.http.twilio.accounts = vec![understudy::config::TwilioAccount {
        sid: "AC0123456789abcdef0123456789abcdef".into(),
        auth_token: "load-token".into(),
    }];
    settings.http.whatsapp.app_secret = "load-app-secret".into();
    settings.http.whatsapp.verify_token = "load-verify".into();
    settings.http.whatsapp.access_tokens = vec!["load-bearer".into()];
    settings.http.sendgrid.api_keys = vec!["SG.load".into()];
    settings.http.ses.credentials = vec![understudy::config::AwsCredential {
        access_key_id: "AKIALOADTEST00000000".into(),
        secret_access_key: "load/secret".into(),
    }];
    let config = common::write_config(dir.path(), &settings);
    // Statuses per message on the happy path, as each vendor calls back.
    for (door, code, statuses) in
        [("twilio", "201", 2), ("whatsapp", "200", 3), ("sendgrid", "202", 3), ("ses", "200", 3)]
    {
        let out = understudy()
            .args(["load", "--config", config.to_str().unwrap(), "--mock", "--door", door, "--time-scale", "0.0001"])
            .args(["--rate", "200", "--duration", "2s", "--linger", "1s", "--quiet", "--format", "json"])
            .args(["--gate", "lost == 0", "--gate", "http(2xx) == 400", "--gate", "bad_signatures == 0"])
            .args([
                "--gate",
                "p99(send_call) < 5s",
                "--html",
                dir.path().join(format!("{door}.html")).to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{door}: stderr: {}", String::from_utf8_lossy(&out.stderr));
        let summary = json(&out);
        assert_eq!(
            (summary["sent"].as_u64(), summary["resolved"].as_u64()),
            (Some(400), Some(400)),
            "{door}: {summary}"
        );
        assert_eq!(summary["events"], 400 * statuses, "{door}: {summary}");
        let http = &summary["http"];
        assert_eq!(http["door"], door);
        assert_eq!(http["statuses"], serde_json::json!({ code: 400 }), "{door}: {http}");
        assert_eq!(
            (http["bad_signatures"].as_u64(), http["unreadable"].as_u64()),
            (Some(0), Some(0)),
            "{door}: {http}"
        );
        assert!(http["send_p99_ms"].as_f64().unwrap() > 0.0);
        let html = std::fs::read_to_string(dir.path().join(format!("{door}.html"))).unwrap();
        assert!(
            html.contains("<h2>Send calls</h2>") && html.contains(&format!("<td>{code}</td><td>400</td>")),
            "{door}"
        );
    }
}

crate::on_both_brokers!(
    actix::test,
    load_runs_through_each_door,
    load_run_on_postgres,
    load_run_on_sqlite,
    load_run_correlates_vendor_formats,
    lost_payloads_are_told_apart_by_the_scenario,
    payloads_without_an_outcome_are_lost,
    compare_tells_a_real_difference_from_noise,
    generator_0_gates_and_notifies_the_merged_run
);

/// On Apache Kafka only, for now: on the embedded broker two generator processes producing into one
/// partition at once still, now and then, leave a batch that consumers skip (seen: offsets 443–445 of a
/// partition never consumed, the batches around them consumed; about one full-suite run in two). That is a
/// defect of the embedded broker's storage, not of the merge this test is about; see `vendor/README.md`
/// ("Known defect"). Put `tansu` back here once it is fixed.
mod generator_processes_of_one_run_merge {
    #[actix::test]
    async fn apache() {
        super::generator_processes_of_one_run_merge(crate::common::kafka::Kafka::Apache).await
    }
}
