//! A platform's own ack format: `{{field}}` placeholders ([`super::FIELDS`]) filled with the event's
//! values, JSON-escaped.

use super::iso;
use crate::model::{AckEvent, BounceType};

pub(super) fn write(t: &str, e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        out.extend_from_slice(&rest.as_bytes()[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.extend_from_slice(&rest.as_bytes()[start..]);
            return;
        };
        let value: String = match after[..end].trim() {
            "event_id" => e.event_id.to_string(),
            "payload_id" => e.payload_id.to_string(),
            "batch_id" => e.batch_id.to_string(),
            "channel" => e.channel.as_str().into(),
            "status" => e.status.as_str().into(),
            "vendor_message_id" => e.vendor_message_id.to_string(),
            "attempt" => e.attempt.to_string(),
            "scheduled_at" => iso(e.scheduled_at),
            "emitted_at" => iso(e.emitted_at),
            "error_code" => e.error_code.clone().unwrap_or_default(),
            "error_reason" => e.error_reason.clone().unwrap_or_default(),
            "bounce_type" => e.bounce_type.map(BounceType::as_str).unwrap_or_default().into(),
            "tenant_id" => e.tenant_id.as_deref().unwrap_or_default().into(),
            "recipient" => recipient.into(),
            _ => String::new(),
        };
        crate::json::write_escaped(out, &value);
        rest = &after[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::AckFormat;
    use super::super::tests::{event, json};
    use crate::model::{Channel, Status};

    #[test]
    fn templates_fill_placeholders() {
        let t = AckFormat::Template(r#"{"s":"{{status}}","r":"{{ error_reason }}","n":{{attempt}}}"#.into());
        let v = json(&t, &event(Channel::Sms, Status::Reject, Some(("21610", "say \"stop\""))), "+1");
        assert_eq!(v, serde_json::json!({"s": "REJECT", "r": "say \"stop\"", "n": 1}));
    }
}
