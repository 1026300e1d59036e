//! SendGrid's event webhook: its event names, and one event object (an element of the webhook's array).

use super::hex_id;
use super::smtp_status;
use crate::json::ObjectWriter;
use crate::model::{AckEvent, BounceType, Status};

/// SendGrid's event name for a status.
pub fn event_name(status: Status) -> &'static str {
    match status {
        Status::Send => "processed",
        Status::Delivery => "delivered",
        Status::Open | Status::Read => "open",
        Status::Click => "click",
        Status::Bounce | Status::Undelivered => "bounce",
        Status::Deferred => "deferred",
        Status::Reject => "dropped",
        Status::Complaint => "spamreport",
    }
}

/// One SendGrid event object (an element of the webhook's array).
pub fn event(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let hex = hex_id(&e.vendor_message_id);
    let mut w = ObjectWriter::new(out);
    w.str("email", recipient)
        .int("timestamp", e.scheduled_at.timestamp())
        .str("event", event_name(e.status))
        .str("sg_event_id", &e.event_id.simple().to_string())
        .str("sg_message_id", &format!("{hex}.filterdrecv-understudy-1"))
        .str("smtp-id", &format!("<{hex}@understudy.test>"))
        // The message's custom args, as SendGrid returns them on every event.
        .str("payload_id", &e.payload_id)
        .str("batch_id", &e.batch_id)
        .some_str("tenant_id", e.tenant_id.as_deref());
    let (status, _) = smtp_status(e.error_code.as_deref(), e.error_reason.as_deref());
    let reason = || {
        format!("{} {}", e.error_code.as_deref().unwrap_or(""), e.error_reason.as_deref().unwrap_or(""))
            .trim()
            .to_owned()
    };
    match e.status {
        Status::Bounce | Status::Undelivered => {
            w.str("reason", &reason())
                .str("status", &status)
                .str("type", if e.bounce_type == Some(BounceType::Soft) { "blocked" } else { "bounce" });
        }
        Status::Deferred => {
            w.str("response", &reason()).str("attempt", &e.attempt.to_string());
        }
        Status::Reject => {
            w.str("reason", e.error_reason.as_deref().unwrap_or("Bounced Address"));
        }
        Status::Delivery => {
            w.str("response", "250 OK");
        }
        _ => {}
    }
    w.end();
}

#[cfg(test)]
mod tests {
    use super::super::tests::{event, json};
    use super::super::{AckFormat, Batching};
    use crate::model::{Channel, Status};

    #[test]
    fn sendgrid_events() {
        let v = json(
            &AckFormat::Sendgrid(Batching::default()),
            &event(Channel::Email, Status::Bounce, Some(("550 5.1.1", "user unknown"))),
            "a@x.test",
        );
        assert_eq!(
            (v[0]["event"].as_str(), v[0]["status"].as_str(), v[0]["type"].as_str()),
            (Some("bounce"), Some("5.1.1"), Some("bounce"))
        );
        assert_eq!(v[0]["timestamp"], 1_764_064_800);
    }
}
