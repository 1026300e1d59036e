//! The control API's web console, driven in headless Chromium by Playwright (`tests/console/check.mjs`,
//! playwright-core from npm with the machine's `/usr/bin/chromium`) against a running service on a real
//! broker and Postgres: a run started from the form, its progress moving, its report opened, a second run,
//! the two compared; nothing fetched from anywhere but the service.
//!
//! Needs `npm ci --prefix tests/console` (`.ci/run` does it) and Chromium; fails, saying so, without.

mod common;

use common::Kafka;

use std::path::Path;

const TOKEN: &str = "console-token-0123456789";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

async fn the_console_starts_follows_reports_and_compares_runs(k: Kafka) {
    let common::ControlService { mut service, base, dir: _dir, .. } = common::control_service(k, TOKEN, 2000).await;
    assert!(
        root().join("tests/console/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/console`"
    );
    let shots = root().join("target/console");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("console-{}.png", common::suffix()));
    let out = tokio::process::Command::new("node")
        .arg(root().join("tests/console/check.mjs"))
        .args([&base, TOKEN, shot.to_str().unwrap()])
        .current_dir(root().join("tests/console"))
        .output()
        .await
        .expect("node runs tests/console/check.mjs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the console check failed:\n{text}\n{}", service.log_text());
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 7, "{text}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot of the console");
    service.assert_alive("after the console check");
    service.terminate();
}

crate::on_both_brokers!(actix::test, the_console_starts_follows_reports_and_compares_runs);
