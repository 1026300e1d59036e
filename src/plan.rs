//! A message's planned lifecycle: what the scenario draws for it, what its lifecycle walks, and what the
//! store keeps beside it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{BounceType, Fault, Outbound, Status};
use crate::wire::{AckFormat, Vendor};

/// Where a lifecycle's acks are posted as its vendor's webhooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub vendor: Vendor,
    pub url: Arc<str>,
    /// Whether the acks also go to the ack topic.
    pub kafka: bool,
    /// What the sender asked to have echoed in every webhook (WhatsApp's `biz_opaque_callback_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Arc<str>>,
}

/// A planned step that is not sent, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotSent {
    pub status: Status,
    pub attempt: u16,
    pub fault: Fault,
}

/// One planned step of a lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub status: Status,
    pub attempt: u16,
    /// Offset of the due time from the message's `received_at`, in microseconds.
    pub due_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<BounceType>,
    /// The injected fault this step carries, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// The full, deterministic plan of one message's lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Name of the outcome path that was drawn (shared with the scenario).
    pub path: Arc<str>,
    /// The scenario rule (or `magic:` recipient) that chose the behaviour; none = the channel's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    pub vendor_message_id: Arc<str>,
    /// The steps to send, in the order they are sent.
    pub steps: Vec<PlannedStep>,
    /// Steps of the drawn path that are not sent (skipped or dropped faults).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_sent: Vec<NotSent>,
    /// How the acks are written.
    #[serde(default, skip_serializing_if = "AckFormat::is_default")]
    pub format: AckFormat,
    /// The outage window that rejected or held the message, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<Arc<str>>,
    /// Where the acks go as the vendor's own webhooks: a front door's message's callback (Twilio's
    /// `StatusCallback`). Kept with the plan, so a resumed lifecycle calls back where it was asked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

impl Plan {
    /// Whether the send call was answered with this plan's REJECT (a front door's refusal): the message
    /// was stored, with the step as not sent, but the vendor never took it.
    pub fn refused_at_send(&self) -> bool {
        self.steps.first().is_none_or(|s| s.status != Status::Reject)
            && self.not_sent.iter().any(|n| n.status == Status::Reject && n.attempt == 1)
    }

    /// Distinct events to store: distinct (status, attempt) among the steps, so a duplicate copy counts once.
    pub fn distinct_events(&self) -> usize {
        let mut seen: Vec<(Status, u16)> = self.steps.iter().map(|s| (s.status, s.attempt)).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// The kinds of fault injected, comma-separated in a fixed order (`messages.faults`); none: `None`.
    pub fn fault_kinds(&self) -> Option<String> {
        let mut kinds: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| s.fault)
            .chain(self.not_sent.iter().map(|n| n.fault))
            .chain(self.outage.is_some().then_some(Fault::Outage))
            .map(Fault::as_str)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        (!kinds.is_empty()).then(|| kinds.join(","))
    }
}

/// A message with its plan: what the persister stores and what a lifecycle actor walks.
#[derive(Clone, Debug)]
pub struct PlannedMessage {
    pub outbound: Outbound,
    pub plan: Plan,
}

impl Plan {
    /// The plan as JSON, as serde writes it, into `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = crate::json::ObjectWriter::new(out);
        w.str("path", &self.path).some_str("rule", self.rule.as_deref());
        w.str("vendor_message_id", &self.vendor_message_id).raw("steps", |out| {
            out.push(b'[');
            for (i, s) in self.steps.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::json::ObjectWriter::new(out)
                    .str("status", s.status.as_str())
                    .int("attempt", i64::from(s.attempt))
                    .int("due_us", s.due_us)
                    .some_str("error_code", s.error_code.as_deref())
                    .some_str("error_reason", s.error_reason.as_deref())
                    .some_str("bounce_type", s.bounce_type.map(BounceType::as_str))
                    .some_str("fault", s.fault.map(Fault::as_str))
                    .end();
            }
            out.push(b']');
        });
        if !self.not_sent.is_empty() {
            w.raw("not_sent", |out| {
                out.push(b'[');
                for (i, n) in self.not_sent.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    crate::json::ObjectWriter::new(out)
                        .str("status", n.status.as_str())
                        .int("attempt", i64::from(n.attempt))
                        .str("fault", n.fault.as_str())
                        .end();
                }
                out.push(b']');
            });
        }
        if !self.format.is_default() {
            w.raw("format", |out| serde_json::to_writer(out, &self.format).expect("a format serializes"));
        }
        w.some_str("outage", self.outage.as_deref());
        if let Some(c) = &self.callback {
            w.raw("callback", |out| {
                crate::json::ObjectWriter::new(out)
                    .str("vendor", c.vendor.as_str())
                    .str("url", &c.url)
                    .bool("kafka", c.kafka)
                    .some_str("data", c.data.as_deref())
                    .end();
            });
        }
        w.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_json_reads_back_as_serde_would() {
        let plan = Plan {
            path: "bounced".into(),
            rule: Some("magic:bounce@understudy.test".into()),
            vendor_message_id: "v".into(),
            steps: vec![
                PlannedStep {
                    status: Status::Send,
                    attempt: 1,
                    due_us: 5,
                    error_code: None,
                    error_reason: None,
                    bounce_type: None,
                    fault: Some(Fault::OutOfOrder),
                },
                PlannedStep {
                    status: Status::Bounce,
                    attempt: 1,
                    due_us: 9,
                    error_code: Some("5.1.1".into()),
                    error_reason: Some("gone".into()),
                    bounce_type: Some(BounceType::Soft),
                    fault: None,
                },
            ],
            not_sent: vec![NotSent { status: Status::Delivery, attempt: 1, fault: Fault::Skipped }],
            format: AckFormat::Template("{\"s\":\"{{status}}\"}".into()),
            outage: Some("carrier-down".into()),
            callback: Some(Callback {
                vendor: Vendor::Twilio,
                url: "http://127.0.0.1:9/s?a=\"1\"".into(),
                kafka: true,
                data: Some("d".into()),
            }),
        };
        let mut out = Vec::new();
        plan.write_json(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&plan).unwrap());
    }
}
