//! A finished run's summary and gates, posted to a webhook URL as Slack-compatible JSON (`--notify`):
//! `text` for any receiver (and Slack's notification line), `blocks` for Slack's message layout, and the
//! summary itself under `understudy` for receivers that read figures, not prose. Slack ignores what it does
//! not know.

use std::time::Duration;

use crate::load::report::Summary;

/// The message for `summary`; `missing` names generator parts the run still lacks.
pub fn message(summary: &Summary<'_>, missing: &[u32]) -> serde_json::Value {
    let verdict = if !missing.is_empty() {
        "incomplete"
    } else if summary.passed {
        "passed"
    } else {
        "FAILED"
    };
    let headline = format!(
        "Understudy load run `{}` {verdict}: {} sent at {:.0}/s, {} resolved, {} lost",
        summary.run_id, summary.sent, summary.throughput_per_s, summary.resolved, summary.lost
    );
    let mut facts = vec![
        format!("*Generators* {}", summary.generators),
        format!("*From* {} *to* {}", summary.started_at, summary.ended_at),
        format!(
            "*Sent* {} of {} planned ({} send errors, {} late)",
            summary.sent, summary.planned, summary.send_errors, summary.late
        ),
        format!("*Resolved* {} · *lost* {}", summary.resolved, summary.lost),
    ];
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(u32::to_string).collect();
        facts.push(format!("*Missing parts* generators {}", names.join(", ")));
    }
    let gates: Vec<String> = summary
        .gates
        .iter()
        .map(|v| {
            let mark = if v.passed { "✅" } else { "❌" };
            let detail = if v.detail.is_empty() { String::new() } else { format!(" ({})", v.detail) };
            format!("{mark} `{}`: {}{detail}", v.gate, v.measured)
        })
        .collect();
    let statuses: Vec<String> = summary
        .statuses
        .iter()
        .map(|s| format!("{} {}: {} ({:.1}%), p99 {:.0} ms", s.channel, s.status, s.payloads, s.rate * 100.0, s.p99_ms))
        .collect();
    let mut text = format!("{headline}\n{}", facts.join("\n"));
    if !gates.is_empty() {
        text.push_str(&format!("\n*Gates*\n{}", gates.join("\n")));
    }
    let mut sections = vec![headline, facts.join("\n")];
    if !gates.is_empty() {
        sections.push(format!("*Gates*\n{}", gates.join("\n")));
    }
    if !statuses.is_empty() {
        sections.push(format!("*Statuses*\n{}", statuses.join("\n")));
    }
    let blocks: Vec<serde_json::Value> = sections
        .into_iter()
        .map(|s| serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(s, 2900)}}))
        .collect();
    // Slack takes a message's `text` up to 40,000 characters.
    serde_json::json!({ "text": clip(text, 39_000), "blocks": blocks, "understudy": summary })
}

/// `s` cut to at most `max` bytes at a character boundary, marked `…` where cut: Slack refuses a message
/// whose section text is over 3,000 characters.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Post `message` to `url`: once, and once more after a second on a failure. A notification that cannot
/// be delivered is a warning on standard error, not a failed run.
pub async fn post(url: &str, message: &serde_json::Value) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build();
    let Ok(client) = client else {
        eprintln!("warning: the run's notification was not sent: no HTTP client");
        return;
    };
    let body = message.to_string();
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let request = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
        match request.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.without_url().to_string(),
        }
    }
    eprintln!("warning: the run's notification to {} was not delivered: {last}", redact_url(url));
}

/// `url` without its path and query, where webhook URLs keep their secret (Slack's
/// `https://hooks.slack.com/services/T…/B…/token`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "the --notify URL".into(),
    }
}

/// `--notify`'s value: an `http` or `https` URL.
pub fn parse_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(s.to_owned()),
        Ok(u) => Err(format!("`{}` is no http or https URL", u.scheme())),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_url_is_http_and_its_secret_path_is_never_printed() {
        assert!(parse_url("https://hooks.slack.com/services/T0/B0/secret").is_ok());
        assert!(parse_url("ftp://x/y").unwrap_err().contains("no http"));
        assert!(parse_url("hooks.slack.com/services").unwrap_err().contains("not a URL"));
        assert_eq!(redact_url("https://hooks.slack.com/services/T0/B0/secret"), "https://hooks.slack.com/…");
    }
}
