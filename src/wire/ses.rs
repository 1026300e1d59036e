//! Amazon SES: its `eventType` names, and an event as SNS or Firehose delivers it.

use super::{hex_id, iso, smtp_status};
use crate::json::ObjectWriter;
use crate::model::{AckEvent, BounceType, Status};

/// SES `eventType` for a status.
pub fn event_type(status: Status) -> &'static str {
    match status {
        Status::Send => "Send",
        Status::Delivery => "Delivery",
        Status::Open | Status::Read => "Open",
        Status::Click => "Click",
        Status::Bounce | Status::Undelivered => "Bounce",
        Status::Complaint => "Complaint",
        Status::Reject => "Reject",
        Status::Deferred => "DeliveryDelay",
    }
}

pub(super) fn event(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let kind = event_type(e.status);
    let at = iso(e.scheduled_at);
    let message_id = format!("{}-000000", hex_id(&e.vendor_message_id));
    let mut w = ObjectWriter::new(out);
    w.str("eventType", kind);
    w.raw("mail", |out| {
        let mut m = ObjectWriter::new(out);
        m.str("timestamp", &at).str("messageId", &message_id).str("source", "sender@understudy.test");
        m.raw("destination", |out| {
            out.push(b'[');
            crate::json::write_str(out, recipient);
            out.push(b']');
        });
        m.end();
    });
    let recipients = |out: &mut Vec<u8>, extra: &dyn Fn(&mut ObjectWriter)| {
        out.push(b'[');
        let mut r = ObjectWriter::new(out);
        r.str("emailAddress", recipient);
        extra(&mut r);
        r.end();
        out.push(b']');
    };
    let (status, diagnostic) = smtp_status(e.error_code.as_deref(), e.error_reason.as_deref());
    match e.status {
        Status::Send => {
            w.raw("send", |out| out.extend_from_slice(b"{}"));
        }
        Status::Delivery => {
            w.raw("delivery", |out| {
                let mut d = ObjectWriter::new(out);
                d.str("timestamp", &at)
                    .str("smtpResponse", "250 2.6.0 Message received")
                    .str("reportingMTA", "a8-1.smtp-out.understudy.test");
                d.raw("recipients", |out| {
                    out.push(b'[');
                    crate::json::write_str(out, recipient);
                    out.push(b']');
                });
                d.end();
            });
        }
        Status::Bounce | Status::Undelivered => {
            let permanent = e.bounce_type != Some(BounceType::Soft);
            w.raw("bounce", |out| {
                let mut b = ObjectWriter::new(out);
                b.str("bounceType", if permanent { "Permanent" } else { "Transient" })
                    .str("bounceSubType", "General")
                    .str("timestamp", &at)
                    .str("feedbackId", &e.event_id.to_string());
                b.raw("bouncedRecipients", |out| {
                    recipients(out, &|r| {
                        r.str("action", "failed").str("status", &status).str("diagnosticCode", &diagnostic);
                    })
                });
                b.end();
            });
        }
        Status::Complaint => {
            w.raw("complaint", |out| {
                let mut c = ObjectWriter::new(out);
                c.str("timestamp", &at)
                    .str("feedbackId", &e.event_id.to_string())
                    .str("complaintFeedbackType", e.error_code.as_deref().unwrap_or("abuse"));
                c.raw("complainedRecipients", |out| recipients(out, &|_| {}));
                c.end();
            });
        }
        Status::Reject => {
            w.raw("reject", |out| {
                ObjectWriter::new(out).str("reason", e.error_reason.as_deref().unwrap_or("Bad content")).end();
            });
        }
        Status::Deferred => {
            w.raw("deliveryDelay", |out| {
                let mut d = ObjectWriter::new(out);
                d.str("timestamp", &at).str("delayType", "TransientCommunicationFailure");
                d.raw("delayedRecipients", |out| {
                    recipients(out, &|r| {
                        r.str("status", &status).str("diagnosticCode", &diagnostic);
                    })
                });
                d.end();
            });
        }
        Status::Open | Status::Read => {
            w.raw("open", |out| {
                ObjectWriter::new(out)
                    .str("timestamp", &at)
                    .str("ipAddress", "192.0.2.1")
                    .str("userAgent", "Mozilla/5.0")
                    .end();
            });
        }
        Status::Click => {
            w.raw("click", |out| {
                ObjectWriter::new(out)
                    .str("timestamp", &at)
                    .str("ipAddress", "192.0.2.1")
                    .str("userAgent", "Mozilla/5.0")
                    .str("link", "https://example.com/")
                    .end();
            });
        }
    }
    w.end();
}

#[cfg(test)]
mod tests {
    use super::super::AckFormat;
    use super::super::tests::{event, json};
    use crate::model::{Channel, Status};

    #[test]
    fn ses_events() {
        let v = json(
            &AckFormat::Ses,
            &event(Channel::Email, Status::Bounce, Some(("550 5.1.1", "user unknown"))),
            "a@x.test",
        );
        assert_eq!(v["eventType"], "Bounce");
        assert_eq!(v["bounce"]["bounceType"], "Permanent");
        assert_eq!(v["bounce"]["bouncedRecipients"][0]["status"], "5.1.1");
        assert_eq!(v["bounce"]["bouncedRecipients"][0]["diagnosticCode"], "smtp; 550 5.1.1 user unknown");
        assert_eq!(v["mail"]["destination"][0], "a@x.test");
        for (status, kind, key) in [
            (Status::Send, "Send", "send"),
            (Status::Delivery, "Delivery", "delivery"),
            (Status::Open, "Open", "open"),
            (Status::Click, "Click", "click"),
            (Status::Complaint, "Complaint", "complaint"),
            (Status::Reject, "Reject", "reject"),
            (Status::Deferred, "DeliveryDelay", "deliveryDelay"),
        ] {
            let v = json(&AckFormat::Ses, &event(Channel::Email, status, None), "a@x.test");
            assert_eq!(v["eventType"], kind);
            assert!(v[key].is_object(), "{kind}: {v}");
        }
    }
}
