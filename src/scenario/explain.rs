//! `understudy scenario explain`: what a scenario does with one sample message, and why.

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::rules::MAGIC;
use super::{Chosen, MessageView, Scenario};
use crate::config::InputSettings;
use crate::kafka::decode::{Decoder, RawRecord};
use crate::model::Outbound;
use crate::plan::Plan;

/// A sample message decoded the way the service decodes it, with its plan and what chose it.
pub struct Explained {
    pub message: Outbound,
    pub chosen: Chosen,
    pub plan: Plan,
}

/// Decode `body` (with `headers`) as if consumed from `topic` at `at`, and plan it. Errors are the reason the service
/// would dead-letter the message.
pub fn explain(
    scenario: &Scenario,
    input: &InputSettings,
    topic: &str,
    body: &[u8],
    headers: &[(String, String)],
    at: DateTime<Utc>,
) -> Result<Explained, String> {
    let decoder = Decoder::new(input.clone()).with_rule_headers(scenario.rule_headers());
    let raw = RawRecord {
        topic: Arc::from(topic),
        topic_id: Arc::from(""),
        partition: 0,
        offset: 0,
        payload: Some(body),
        headers: headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))).collect(),
    };
    let message =
        decoder.decode(&raw, at).map_err(|r| format!("the service would dead-letter it ({}): {}", r.kind, r.reason))?;
    let view = MessageView::of(&message);
    let (chosen, _, _) = scenario.choose(&view).ok_or_else(|| {
        format!(
            "the scenario `{}` has no `{}` channel: the service would dead-letter it",
            scenario.name(),
            message.channel
        )
    })?;
    let plan = scenario.plan_for(&view).expect("the channel exists");
    Ok(Explained { message, chosen, plan })
}

impl Explained {
    /// One line on what chose the behaviour.
    pub fn decided_by(&self, scenario: &Scenario) -> String {
        match &self.chosen {
            Chosen::Rule(i, name) => format!("rule `{name}` (rules[{i}] of {})", scenario.source.display()),
            Chosen::Magic(i, name) => {
                format!("magic recipient `{}`: {}", name.trim_start_matches("magic:"), MAGIC[*i].what)
            }
            Chosen::Channel => format!("no rule: the {} channel's own paths", self.message.channel),
        }
    }

    /// The full printout.
    pub fn render(&self, scenario: &Scenario) -> String {
        let m = &self.message;
        let mut out = format!(
            "{}: scenario `{}`, seed {}, time_scale {}\n",
            scenario.source.display(),
            scenario.name(),
            scenario.seed(),
            scenario.file.time_scale
        );
        out.push_str(&format!("message    {} · {} · to {}\n", m.payload_id, m.channel, m.recipient));
        out.push_str(&format!(
            "           batch {} · tenant {}\n",
            m.batch_id,
            m.tenant_id.as_deref().unwrap_or("(none)")
        ));
        out.push_str(&format!("decided by {}\n", self.decided_by(scenario)));
        let steps: Vec<&str> = self.plan.steps.iter().map(|s| s.status.as_str()).collect();
        out.push_str(&format!("path       {} ({})\n", self.plan.path, steps.join(" → ")));
        out.push_str(&format!("vendor id  {}\n", self.plan.vendor_message_id));
        out.push_str(&format!("lifecycle  received at {}\n", m.received_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")));
        for s in &self.plan.steps {
            let due = m.received_at + ChronoDuration::microseconds(s.due_us);
            let mut line =
                format!("  {:>12}  {}  {:<11}", offset(s.due_us), due.format("%H:%M:%S%.3f"), s.status.as_str());
            if s.attempt > 1 {
                line.push_str(&format!(" attempt {}", s.attempt));
            }
            if let (Some(code), Some(reason)) = (&s.error_code, &s.error_reason) {
                line.push_str(&format!(" {code}: {reason}"));
            }
            if let Some(b) = s.bounce_type {
                line.push_str(&format!(" ({} bounce)", b.as_str()));
            }
            if let Some(f) = s.fault {
                line.push_str(&format!(" [injected: {}]", f.as_str()));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for n in &self.plan.not_sent {
            out.push_str(&format!(
                "  {:>12}  {:<12}  {:<11} attempt {} [injected: {}]\n",
                "not sent",
                "",
                n.status.as_str(),
                n.attempt,
                n.fault.as_str()
            ));
        }
        out
    }
}

/// `+1.565s`, `+5m 03.120s`, `+2h 01m 03.120s`: to the millisecond, truncated like the due time beside it.
fn offset(us: i64) -> String {
    let ms = us.max(0) / 1000;
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    match (h, m) {
        (0, 0) => format!("+{s}.{frac:03}s"),
        (0, _) => format!("+{m}m {s:02}.{frac:03}s"),
        _ => format!("+{h}h {m:02}m {s:02}.{frac:03}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_truncate_to_the_millisecond() {
        assert_eq!(super::offset(169_600), "+0.169s");
        assert_eq!(super::offset(303_120_000), "+5m 03.120s");
        assert_eq!(super::offset(7_263_120_999), "+2h 01m 03.120s");
    }
}
