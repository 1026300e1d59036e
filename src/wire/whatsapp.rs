//! The WhatsApp Cloud API (Meta): its status names, a webhook body with one `statuses[]` entry, the
//! send call's answer and its errors, and the webhook signature.

use crate::json::ObjectWriter;
use crate::model::{AckEvent, Status};

/// The business phone number id a message was sent from: the tenant, when it is one (a message taken by
/// the WhatsApp front door); otherwise a fixed one.
fn phone_number_id(tenant: Option<&str>) -> &str {
    match tenant {
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t,
        _ => "106540352242922",
    }
}

/// An error as the Graph API answers it: `{error: {message, type, code, error_data, fbtrace_id}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub http_status: u16,
    pub code: i64,
    pub message: String,
}

impl ApiError {
    pub fn new(http_status: u16, code: i64, message: impl Into<String>) -> Self {
        Self { http_status, code, message: message.into() }
    }

    /// Code 190: the access token is missing or wrong.
    pub fn bad_token() -> Self {
        Self::new(401, 190, "Invalid OAuth access token - Cannot parse access token")
    }

    /// Code 100: a parameter is missing or wrong.
    pub fn parameter(message: impl Into<String>) -> Self {
        Self::new(400, 100, message)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let mut w = ObjectWriter::new(out);
        w.raw("error", |out| {
            let mut e = ObjectWriter::new(out);
            e.str("message", &self.message)
                .str(
                    "type",
                    if self.code == 190 || self.code == 100 { "OAuthException" } else { "WhatsAppBusinessApiError" },
                )
                .int("code", self.code);
            if self.code != 190 {
                e.raw("error_data", |out| {
                    ObjectWriter::new(out).str("messaging_product", "whatsapp").str("details", &self.message).end();
                });
            }
            e.str("fbtrace_id", "AUnderstudy0000000000000").end();
        });
        w.end();
    }
}

/// The send call's answer: `{messaging_product, contacts: [{input, wa_id}], messages: [{id}]}`.
pub fn write_sent(input: &str, message_id: &str, template: bool, out: &mut Vec<u8>) {
    let wa_id: String = input.chars().filter(char::is_ascii_digit).collect();
    let mut w = ObjectWriter::new(out);
    w.str("messaging_product", "whatsapp");
    w.raw("contacts", |out| {
        out.push(b'[');
        ObjectWriter::new(out).str("input", input).str("wa_id", &wa_id).end();
        out.push(b']');
    });
    w.raw("messages", |out| {
        out.push(b'[');
        let mut m = ObjectWriter::new(out);
        m.str("id", message_id);
        if template {
            m.str("message_status", "accepted");
        }
        m.end();
        out.push(b']');
    });
    w.end();
}

/// `X-Hub-Signature-256`: `sha256=` and the hex of HMAC-SHA256 of the body, keyed by the app secret.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Meta's canonical title of a Cloud API error code, as its error webhooks carry it.
pub fn error_title(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "0" => "AuthException",
        "131000" => "Something went wrong",
        "131005" => "Access denied",
        "131008" => "Required parameter is missing",
        "131009" => "Parameter value is not valid",
        "131016" => "Service unavailable",
        "131021" => "Recipient cannot be sender",
        "131026" => "Message undeliverable",
        "131031" => "Account has been locked",
        "131042" => "Business eligibility payment issue",
        "131045" => "Incorrect certificate",
        "131047" => "Re-engagement message",
        "131048" => "Spam rate limit hit",
        "131049" => "This message was not delivered to maintain healthy ecosystem engagement.",
        "131051" => "Unsupported message type",
        "131052" => "Media download error",
        "131053" => "Media upload error",
        "131056" => "(Business Account, Consumer Account) pair rate limit hit",
        "130429" => "Rate limit hit",
        "130472" => "User's number is part of an experiment",
        "132000" => "Number of parameters does not match the expected number of params",
        "132001" => "Template does not exist",
        _ => return None,
    })
}

/// WhatsApp Cloud API `status` for a status.
pub fn status(status: Status) -> &'static str {
    match status {
        Status::Send => "sent",
        Status::Delivery => "delivered",
        Status::Read | Status::Open | Status::Click => "read",
        _ => "failed",
    }
}

/// The status a WhatsApp `status` reports (the receiving side of [`status`]): `failed` is a final
/// failure, UNDELIVERED.
pub fn status_of(status: &str) -> Option<Status> {
    Some(match status {
        "sent" => Status::Send,
        "delivered" => Status::Delivery,
        "read" => Status::Read,
        "failed" => Status::Undelivered,
        _ => return None,
    })
}

pub(super) fn webhook(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    webhook_with(e, recipient, None, out)
}

/// The webhook body, echoing the sender's `biz_opaque_callback_data` when it gave one.
pub fn webhook_with(e: &AckEvent, recipient: &str, opaque: Option<&str>, out: &mut Vec<u8>) {
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
                        .str("phone_number_id", phone_number_id(e.tenant_id.as_deref()))
                        .end();
                });
                v.raw("statuses", |out| {
                    out.push(b'[');
                    let mut s = ObjectWriter::new(out);
                    s.str("id", &e.vendor_message_id)
                        .str("status", status(e.status))
                        .str("timestamp", &timestamp)
                        .str("recipient_id", &digits);
                    if matches!(e.status, Status::Send | Status::Delivery | Status::Read) {
                        s.raw("conversation", |out| {
                            let mut c = ObjectWriter::new(out);
                            c.str("id", super::hex_id(&e.vendor_message_id));
                            c.raw("origin", |out| ObjectWriter::new(out).str("type", "service").end());
                            c.end();
                        });
                        s.raw("pricing", |out| {
                            ObjectWriter::new(out)
                                .bool("billable", true)
                                .str("pricing_model", "PMP")
                                .str("category", "service")
                                .end();
                        });
                    }
                    s.some_str("biz_opaque_callback_data", opaque);
                    if e.status.is_failure() {
                        s.raw("errors", |out| {
                            out.push(b'[');
                            let mut err = ObjectWriter::new(out);
                            let code = e.error_code.as_deref().unwrap_or("131000");
                            match code.parse::<i64>() {
                                Ok(n) => err.int("code", n),
                                Err(_) => err.str("code", code),
                            };
                            // Meta's own title for the code; the scenario's reason as the details.
                            let title =
                                error_title(code).or(e.error_reason.as_deref()).unwrap_or("Something went wrong");
                            let details = e.error_reason.as_deref().unwrap_or(title);
                            err.str("title", title).str("message", title);
                            err.raw("error_data", |out| ObjectWriter::new(out).str("details", details).end());
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
        assert_eq!(s["errors"][0]["title"], "Message undeliverable", "Meta's title for the code");
        assert_eq!(s["errors"][0]["error_data"]["details"], "undeliverable", "the scenario's reason");
        assert!(s["id"].as_str().unwrap().starts_with("wamid."));
    }
}
