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

/// The status a SendGrid event reports (the receiving side of [`event_name`]).
pub fn status_of(event: &str) -> Option<Status> {
    Some(match event {
        "processed" => Status::Send,
        "delivered" => Status::Delivery,
        "open" => Status::Open,
        "click" => Status::Click,
        "bounce" => Status::Bounce,
        "deferred" => Status::Deferred,
        "dropped" => Status::Reject,
        "spamreport" => Status::Complaint,
        _ => return None,
    })
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
    /// The links of the mail's HTML content, in order (at most [`MAX_LINKS`]): what a `click` clicks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// Links of a mail kept for its `click` events, at most.
pub const MAX_LINKS: usize = 20;

/// The `href`s of `html`'s links, in order, at most [`MAX_LINKS`] (http and https only).
pub fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while out.len() < MAX_LINKS {
        let Some(i) = lower[at..].find("href=") else { break };
        let start = at + i + 5;
        let quote = html[start..].chars().next();
        let (from, end) = match quote {
            Some(q @ ('"' | '\'')) => (start + 1, html[start + 1..].find(q).map(|e| start + 1 + e)),
            _ => (start, html[start..].find(|c: char| c.is_whitespace() || c == '>').map(|e| start + e)),
        };
        let Some(end) = end else { break };
        let url = html[from..end].trim();
        if url.starts_with("http://") || url.starts_with("https://") {
            out.push(url.to_owned());
        }
        at = end;
    }
    out
}

/// SendGrid's fixed list of reasons for a `dropped` event.
pub const DROP_REASONS: [&str; 7] = [
    "Bounced Address",
    "Unsubscribed Address",
    "Spam Reporting Address",
    "Invalid",
    "Spam Content",
    "Invalid SMTPAPI header",
    "Recipient List over Package Quota",
];

/// The reason from SendGrid's list a scenario's REJECT reason comes to: the entry it names (any case),
/// else the one its words point to, else `Bounced Address` (a suppressed address).
pub fn drop_reason(reason: Option<&str>) -> &'static str {
    let r = reason.unwrap_or("").to_ascii_lowercase();
    if let Some(listed) = DROP_REASONS.iter().find(|d| d.to_ascii_lowercase() == r.trim()) {
        return listed;
    }
    if r.contains("unsubscri") {
        "Unsubscribed Address"
    } else if r.contains("spam") && (r.contains("report") || r.contains("complain")) {
        "Spam Reporting Address"
    } else if r.contains("spam") || r.contains("content") {
        "Spam Content"
    } else if r.contains("smtpapi") {
        "Invalid SMTPAPI header"
    } else if r.contains("quota") {
        "Recipient List over Package Quota"
    } else if r.contains("invalid") {
        "Invalid"
    } else {
        "Bounced Address"
    }
}

/// SendGrid's `bounce_classification` for a bounce's enhanced status code (`5.1.1`) and reason.
pub fn bounce_classification(status: &str, reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("spam") || r.contains("content") || r.contains("virus") {
        return "Content";
    }
    match status.split('.').take(2).collect::<Vec<_>>()[..] {
        [_, "1"] => "Invalid Address",
        [_, "2"] => "Mailbox Unavailable",
        ["4", "7"] => "Frequency or Volume Too High",
        [_, "7"] => "Reputation",
        [_, "3" | "4" | "5" | "6"] => "Technical Failure",
        _ => "Unclassified",
    }
}

/// The user agents opens and clicks come from, one picked per event.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
];

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
            let reason = reason();
            w.str("reason", &reason)
                .str("status", &status)
                .str("type", if e.bounce_type == Some(BounceType::Soft) { "blocked" } else { "bounce" })
                .str("bounce_classification", bounce_classification(&status, &reason));
        }
        // Where the open or click came from: the same on every rerun (from the event id), in the
        // documentation ranges.
        Status::Open | Status::Read | Status::Click => {
            let n = e.event_id.as_u128();
            w.str("useragent", USER_AGENTS[(n % USER_AGENTS.len() as u128) as usize])
                .str("ip", &format!("203.0.113.{}", (n >> 8) % 254 + 1));
            if e.status == Status::Click {
                let urls = sent.map_or(&[][..], |s| &s.urls[..]);
                let index = if urls.is_empty() { 0 } else { ((n >> 16) % urls.len() as u128) as usize };
                let url = urls.get(index).map_or("https://understudy.test/link", String::as_str);
                w.str("url", url).raw("url_offset", |out| {
                    let mut o = ObjectWriter::new(out);
                    o.int("index", index as i64).str("type", "html");
                    o.end();
                });
            } else {
                w.bool("sg_machine_open", false);
            }
        }
        Status::Deferred => {
            w.str("response", &reason()).str("attempt", &e.attempt.to_string());
        }
        Status::Reject => {
            w.str("reason", drop_reason(e.error_reason.as_deref())).str("status", "5.0.0");
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

/// Whether `signature` (base64 of DER, as in `X-Twilio-Email-Event-Webhook-Signature`) is `key`'s over
/// `timestamp` followed by `body`: the receiving side of [`signature`].
pub fn verify(key: &p256::ecdsa::VerifyingKey, timestamp: &str, body: &[u8], signature: &str) -> bool {
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;
    let Some(signature) = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()
        .and_then(|der| p256::ecdsa::DerSignature::try_from(der.as_slice()).ok())
    else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &signature).is_ok()
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
        assert_eq!(v[0]["bounce_classification"], "Invalid Address");
        let v = json(
            &AckFormat::Sendgrid(Batching::default()),
            &event(Channel::Email, Status::Reject, Some(("550 5.7.1", "recipient unsubscribed"))),
            "a@x.test",
        );
        assert_eq!(
            (v[0]["event"].as_str(), v[0]["reason"].as_str(), v[0]["status"].as_str()),
            (Some("dropped"), Some("Unsubscribed Address"), Some("5.0.0"))
        );
        let v =
            json(&AckFormat::Sendgrid(Batching::default()), &event(Channel::Email, Status::Click, None), "a@x.test");
        assert!(
            v[0]["url"].as_str().unwrap().starts_with("https://")
                && v[0]["useragent"].is_string()
                && v[0]["ip"].is_string(),
            "{v}"
        );
    }

    #[test]
    fn drop_reasons_and_bounce_classes_are_sendgrids() {
        use super::*;
        assert_eq!(drop_reason(Some("spam reporting address")), "Spam Reporting Address");
        assert_eq!(drop_reason(Some("address on the suppression list")), "Bounced Address");
        assert_eq!(drop_reason(Some("invalid recipient")), "Invalid");
        assert_eq!(drop_reason(None), "Bounced Address");
        assert!(DROP_REASONS.contains(&drop_reason(Some("anything at all"))));
        assert_eq!(bounce_classification("5.2.2", "mailbox full"), "Mailbox Unavailable");
        assert_eq!(bounce_classification("4.7.0", "slow down"), "Frequency or Volume Too High");
        assert_eq!(bounce_classification("5.7.1", "blocked by policy"), "Reputation");
        assert_eq!(bounce_classification("5.7.1", "spam detected"), "Content");
        assert_eq!(bounce_classification("4.4.1", "no answer"), "Technical Failure");
        assert_eq!(bounce_classification("", "unable to get mx info"), "Unclassified");
        assert_eq!(
            links(
                r#"<p><a href="https://shop.example/a?x=1">a</a> <A HREF='http://b.example/'>b</A> <a href=mailto:x@y>m</a> <a href=https://c.example/c>c</a></p>"#
            ),
            vec!["https://shop.example/a?x=1", "http://b.example/", "https://c.example/c"]
        );
    }
}
