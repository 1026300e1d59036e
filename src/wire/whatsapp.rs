//! The WhatsApp Cloud API (Meta): its status names, and a webhook body with one `statuses[]` entry.

use crate::json::ObjectWriter;
use crate::model::{AckEvent, Status};

/// WhatsApp Cloud API `status` for a status.
pub fn status(status: Status) -> &'static str {
    match status {
        Status::Send => "sent",
        Status::Delivery => "delivered",
        Status::Read | Status::Open | Status::Click => "read",
        _ => "failed",
    }
}

pub(super) fn webhook(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let digits: String = recipient.chars().filter(char::is_ascii_digit).collect();
    let timestamp = e.scheduled_at.timestamp().to_string();
    let mut w = ObjectWriter::new(out);
    w.str("object", "whatsapp_business_account");
    w.raw("entry", |out| {
        out.push(b'[');
        let mut entry = ObjectWriter::new(out);
        entry.str("id", "102290129340398");
        entry.raw("changes", |out| {
            out.push(b'[');
            let mut change = ObjectWriter::new(out);
            change.str("field", "messages");
            change.raw("value", |out| {
                let mut v = ObjectWriter::new(out);
                v.str("messaging_product", "whatsapp");
                v.raw("metadata", |out| {
                    ObjectWriter::new(out)
                        .str("display_phone_number", "15005550006")
                        .str("phone_number_id", "106540352242922")
                        .end();
                });
                v.raw("statuses", |out| {
                    out.push(b'[');
                    let mut s = ObjectWriter::new(out);
                    s.str("id", &e.vendor_message_id)
                        .str("status", status(e.status))
                        .str("timestamp", &timestamp)
                        .str("recipient_id", &digits);
                    if e.status.is_failure() {
                        s.raw("errors", |out| {
                            out.push(b'[');
                            let mut err = ObjectWriter::new(out);
                            let code = e.error_code.as_deref().unwrap_or("131000");
                            match code.parse::<i64>() {
                                Ok(n) => err.int("code", n),
                                Err(_) => err.str("code", code),
                            };
                            let title = e.error_reason.as_deref().unwrap_or("Something went wrong");
                            err.str("title", title).str("message", title);
                            err.raw("error_data", |out| ObjectWriter::new(out).str("details", title).end());
                            err.end();
                            out.push(b']');
                        });
                    }
                    s.end();
                    out.push(b']');
                });
                v.end();
            });
            change.end();
            out.push(b']');
        });
        entry.end();
        out.push(b']');
    });
    w.end();
}

#[cfg(test)]
mod tests {
    use super::super::AckFormat;
    use super::super::tests::{event, json};
    use crate::model::{Channel, Status};

    #[test]
    fn whatsapp_cloud_statuses() {
        let v = json(
            &AckFormat::WhatsappCloud,
            &event(Channel::Whatsapp, Status::Undelivered, Some(("131026", "undeliverable"))),
            "+1 500 555 1002",
        );
        let s = &v["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(v["object"], "whatsapp_business_account");
        assert_eq!(
            (s["status"].as_str(), s["recipient_id"].as_str(), s["timestamp"].as_str()),
            (Some("failed"), Some("15005551002"), Some("1764064800"))
        );
        assert_eq!(s["errors"][0]["code"], 131026);
        assert!(s["id"].as_str().unwrap().starts_with("wamid."));
    }
}
