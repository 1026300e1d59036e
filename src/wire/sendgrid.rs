//! SendGrid's event webhook: its event names, one event object (an element of the webhook's array) and
//! the webhook's signature; the Mail Send API's errors.

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
    event_with(e, recipient, None, out)
}

/// What a message taken by the SendGrid door carries into its events: the send call's `X-Message-Id`
/// and the sender's `custom_args`, as SendGrid echoes them.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    pub message_id: String,
    pub index: usize,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub custom_args: serde_json::Map<String, serde_json::Value>,
}

/// One event object; `sent` when the message came in by the SendGrid door.
pub fn event_with(e: &AckEvent, recipient: &str, sent: Option<&Sent>, out: &mut Vec<u8>) {
    let hex = hex_id(&e.vendor_message_id);
    let sg_message_id = match sent {
        Some(s) => format!("{}.filterdrecv-understudy-{}", s.message_id, s.index),
        None => format!("{hex}.filterdrecv-understudy-1"),
    };
    let mut w = ObjectWriter::new(out);
    w.str("email", recipient)
        .int("timestamp", e.scheduled_at.timestamp())
        .str("event", event_name(e.status))
        .str("sg_event_id", &e.event_id.simple().to_string())
        .str("sg_message_id", &sg_message_id)
        .str("smtp-id", &format!("<{hex}@understudy.test>"));
    match sent {
        // The sender's custom args, as SendGrid returns them on every event.
        Some(s) => {
            for (k, v) in &s.custom_args {
                match v {
                    serde_json::Value::String(t) => w.str(k, t),
                    other => w.raw(k, |out| out.extend_from_slice(other.to_string().as_bytes())),
                };
            }
        }
        // A Kafka message's ids, as custom args.
        None => {
            w.str("payload_id", &e.payload_id)
                .str("batch_id", &e.batch_id)
                .some_str("tenant_id", e.tenant_id.as_deref());
        }
    }
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

/// One entry of the Mail Send API's `{errors: [{message, field, help}]}`.
pub fn write_errors(errors: &[(&str, Option<&str>)], out: &mut Vec<u8>) {
    let mut w = ObjectWriter::new(out);
    w.raw("errors", |out| {
        out.push(b'[');
        for (i, (message, field)) in errors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut e = ObjectWriter::new(out);
            e.str("message", message).opt_str("field", *field);
            match field {
                Some(_) => e.str("help", "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"),
                None => e.null("help"),
            };
            e.end();
        }
        out.push(b']');
    });
    w.end();
}

/// `X-Twilio-Email-Event-Webhook-Signature`: base64 of the DER ECDSA P-256 SHA-256 signature of the
/// timestamp followed by the body.
pub fn signature(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    let sig: p256::ecdsa::DerSignature = key.sign(&signed);
    base64::engine::general_purpose::STANDARD.encode(sig.as_bytes())
}

/// The verification key SendGrid shows for its signed event webhook: base64 of the public key's DER.
pub fn verification_key(key: &p256::ecdsa::SigningKey) -> String {
    use base64::Engine as _;
    use p256::pkcs8::EncodePublicKey as _;
    let der = key.verifying_key().to_public_key_der().expect("a P-256 key encodes");
    base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
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
