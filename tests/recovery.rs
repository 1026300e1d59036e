//! The real binary, killed with SIGKILL mid-run and restarted, finishes every lifecycle with no
//! duplicate rows; then it shuts down cleanly on SIGTERM.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use understudy::demo::{publish, read_topic, sample_batch};
use understudy::scenario::Scenario;
use understudy::store::Store;

fn spawn(config: &Path, scenario: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--scenario")
        .arg(scenario)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts")
}

#[actix::test]
async fn killed_service_resumes_without_duplicates() {
    let url = common::postgres_url().await;
    let settings = common::settings(&url, 4);
    let dir = tempfile::tempdir().unwrap();
    // Compressed so a lifecycle spans seconds: kills land while many are waiting.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/default.yaml"))
        .unwrap()
        .replace("time_scale: 1\n", "time_scale: 0.00005\n");
    let scenario_path = dir.path().join("scenario.yaml");
    std::fs::write(&scenario_path, &text).unwrap();
    let scenario = Scenario::load(&scenario_path).unwrap();
    let config_path = common::write_config(dir.path(), &settings);
    let k = &settings.kafka;
    let log = dir.path().join("service.log");
    let store = Store::connect(&url, 2).await.unwrap();

    let n = 4000;
    let batch = sample_batch(&common::suffix(), n);
    let expected: usize = batch.iter().map(|m| scenario.plan(m.channel, &m.payload_id).unwrap().steps.len()).sum();

    let mut child = spawn(&config_path, &scenario_path, &log);
    publish(&common::brokers(), &k.input_topics[0], &batch, None).await.unwrap();
    common::eventually(Duration::from_secs(60), "a third of the events stored", || async {
        let t = store.totals().await.unwrap();
        (t.events as usize > expected / 3).then_some(())
    })
    .await;
    child.kill().unwrap(); // SIGKILL: no flush, no commit
    child.wait().unwrap();
    let at_kill = store.totals().await.unwrap();
    assert!((at_kill.events as usize) < expected, "killed before the end");

    let mut child = spawn(&config_path, &scenario_path, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let t = store.totals().await.unwrap();
        if t.events as usize >= expected {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "not finished after the restart: {} of {expected} events, {} of {n} messages, {} unfinished\n{}",
                t.events,
                t.messages,
                store.unfinished_count().await.unwrap(),
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");

    let totals = store.totals().await.unwrap();
    assert_eq!(totals.messages as usize, n, "every message stored once");
    assert_eq!(totals.events as usize, expected, "every event stored once");
    assert_eq!(store.unfinished_count().await.unwrap(), 0);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("resuming unfinished lifecycles"), "the restart resumed lifecycles:\n{logs}");

    // Kafka may hold duplicates from the crash, each with an event id the store has.
    // Duplicates are possible, so read until the topic goes quiet rather than up to a count.
    let acks = read_topic(&common::brokers(), &k.ack_topic, usize::MAX, Duration::from_secs(5)).unwrap();
    let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &acks {
        let id = r.headers.iter().find(|(h, _)| h == "understudy-event-id").map(|(_, v)| v.clone()).unwrap();
        *ids.entry(id).or_default() += 1;
    }
    let stored: HashSet<Vec<u8>> = store.all_event_ids().await.unwrap().into_iter().map(String::into_bytes).collect();
    let in_kafka: HashSet<Vec<u8>> = ids.keys().cloned().collect();
    let missing = stored.difference(&in_kafka).count();
    let unknown = in_kafka.difference(&stored).count();
    assert_eq!((missing, unknown), (0, 0), "stored events missing from Kafka, acks not stored");
    let dups: usize = ids.values().map(|c| c - 1).sum();
    eprintln!("killed at {} of {expected} events; {dups} duplicate acks in Kafka, all with known event ids", at_kill.events);
}
