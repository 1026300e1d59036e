//! The `understudy` binary refuses bad scenarios and config with file, line and field, before it starts
//! anything.

use std::process::Command;

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
        .args(["scenario", "check", "scenarios/default.yaml", "scenarios/happy-path.yaml", "scenarios/failure-heavy.yaml"])
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
    assert!(err.contains(&format!("{bad}:8: `channels.sms.paths[0].steps[1]`: OPEN cannot come after SEND on sms")), "{err}");
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
