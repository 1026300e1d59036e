//! Amazon SES: its `eventType` names, an event as SES publishes it (through SNS, raw, or as an
//! EventBridge event), the SNS envelope and what its signature covers, SigV4 (the signature of the API
//! requests), and the SESv2 API's error body.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{hex_id, iso, smtp_status};
use crate::json::ObjectWriter;
use crate::model::{AckEvent, BounceType, Status};

/// The account every event names (`mail.sendingAccountId`, the EventBridge `account`).
pub const ACCOUNT_ID: &str = "123456789012";
/// The region every event names.
pub const REGION: &str = "us-east-1";

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

/// The status an SES `eventType` reports (the receiving side of [`event_type`]).
pub fn status_of(event_type: &str) -> Option<Status> {
    Some(match event_type {
        "Send" => Status::Send,
        "Delivery" => Status::Delivery,
        "Open" => Status::Open,
        "Click" => Status::Click,
        "Bounce" => Status::Bounce,
        "Complaint" => Status::Complaint,
        "Reject" => Status::Reject,
        "DeliveryDelay" => Status::Deferred,
        _ => return None,
    })
}

/// The EventBridge `detail-type` of an event.
pub fn detail_type(e: &AckEvent) -> &'static str {
    if suppressed(e) {
        return "Email Bounced";
    }
    match e.status {
        Status::Send => "Email Sent",
        Status::Delivery => "Email Delivered",
        Status::Open | Status::Read => "Email Opened",
        Status::Click => "Email Clicked",
        Status::Bounce | Status::Undelivered => "Email Bounced",
        Status::Complaint => "Email Complaint Received",
        Status::Reject => "Email Rejected",
        Status::Deferred => "Email Delivery Delayed",
    }
}

/// What a message taken by the SES door carries into its events: the send call's `MessageId` and time,
/// the sender, every destination, the subject, the configuration set and the `EmailTags`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    pub message_id: String,
    /// The send call's time (`mail.timestamp` on every event).
    pub timestamp: String,
    pub source: String,
    pub destination: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_set: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// The access key id the request was signed with (`ses:caller-identity`).
    #[serde(default)]
    pub caller: String,
    /// This recipient's place among the destinations: SES sends one `Send` event per message, which the
    /// first recipient's lifecycle stands for.
    #[serde(default)]
    pub index: usize,
}

/// Whether the event is a suppression: SES reports an address on the suppression list as a permanent
/// bounce, never as a rejection.
fn suppressed(e: &AckEvent) -> bool {
    e.status == Status::Reject && e.error_reason.as_deref().is_some_and(|r| r.contains("suppression"))
}

/// `bounceType` and `bounceSubType` from the SMTP code: 4.2.2 is a full mailbox, 5.3.4 a message too
/// large, 5.7.x content rejected, a soft bounce otherwise `Transient`/`General`.
fn bounce_kind(e: &AckEvent, enhanced: &str) -> (&'static str, &'static str) {
    if suppressed(e) {
        return ("Permanent", "OnAccountSuppressionList");
    }
    match enhanced {
        "4.2.2" | "5.2.2" => ("Transient", "MailboxFull"),
        "5.3.4" | "5.2.3" => ("Transient", "MessageTooLarge"),
        s if s.starts_with("5.7.") && e.bounce_type == Some(BounceType::Soft) => ("Transient", "ContentRejected"),
        _ if e.bounce_type == Some(BounceType::Soft) => ("Transient", "General"),
        "5.1.1" | "5.1.0" => ("Permanent", "General"),
        s if s.starts_with("5.1.") => ("Permanent", "NoEmail"),
        _ => ("Permanent", "General"),
    }
}

/// `delayType` from the SMTP code of a deferral.
fn delay_type(enhanced: &str) -> &'static str {
    match enhanced {
        "4.2.2" => "MailboxFull",
        s if s.starts_with("4.7.") => "SpamDetected",
        s if s.starts_with("4.4.") => "TransientCommunicationFailure",
        _ => "TransientCommunicationFailure",
    }
}

pub(super) fn event(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    event_with(e, recipient, None, out)
}

/// One event as SES publishes it; `sent` when the message came in by the SES door.
pub fn event_with(e: &AckEvent, recipient: &str, sent: Option<&Sent>, out: &mut Vec<u8>) {
    let kind = if suppressed(e) { "Bounce" } else { event_type(e.status) };
    let at = iso(e.scheduled_at);
    let derived_id;
    let message_id = match sent {
        Some(s) => s.message_id.as_str(),
        None => {
            derived_id = format!("{}-000000", hex_id(&e.vendor_message_id));
            derived_id.as_str()
        }
    };
    let source = sent.map_or("sender@understudy.test", |s| s.source.as_str());
    let strs = |out: &mut Vec<u8>, list: &mut dyn Iterator<Item = &str>| {
        out.push(b'[');
        for (i, v) in list.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            crate::json::write_str(out, v);
        }
        out.push(b']');
    };
    let mut w = ObjectWriter::new(out);
    w.str("eventType", kind);
    w.raw("mail", |out| {
        let mut m = ObjectWriter::new(out);
        // The send time on every event, as SES has it.
        m.str("timestamp", sent.map_or(at.as_str(), |s| s.timestamp.as_str()))
            .str("source", source)
            .str("sendingAccountId", ACCOUNT_ID)
            .str("messageId", message_id);
        let domain = source.rsplit_once('@').map_or(source, |(_, d)| d);
        m.str("sourceArn", &format!("arn:aws:ses:{REGION}:{ACCOUNT_ID}:identity/{domain}"));
        match sent {
            Some(s) => m.raw("destination", |out| strs(out, &mut s.destination.iter().map(String::as_str))),
            None => m.raw("destination", |out| strs(out, &mut std::iter::once(recipient))),
        };
        m.bool("headersTruncated", false);
        let to = sent.map_or(recipient.to_owned(), |s| s.destination.join(", "));
        let subject = sent.and_then(|s| s.subject.as_deref());
        m.raw("headers", |out| {
            out.push(b'[');
            let mut first = true;
            let mut header = |out: &mut Vec<u8>, name: &str, value: &str| {
                if !first {
                    out.push(b',');
                }
                first = false;
                ObjectWriter::new(out).str("name", name).str("value", value).end();
            };
            header(out, "From", source);
            header(out, "To", &to);
            if let Some(s) = subject {
                header(out, "Subject", s);
            }
            header(out, "MIME-Version", "1.0");
            out.push(b']');
        });
        m.raw("commonHeaders", |out| {
            let mut c = ObjectWriter::new(out);
            c.raw("from", |out| strs(out, &mut std::iter::once(source)));
            match sent {
                Some(s) => c.raw("to", |out| strs(out, &mut s.destination.iter().map(String::as_str))),
                None => c.raw("to", |out| strs(out, &mut std::iter::once(recipient))),
            };
            c.str("messageId", message_id).some_str("subject", subject);
            c.end();
        });
        m.raw("tags", |out| {
            let mut t = ObjectWriter::new(out);
            if let Some(set) = sent.and_then(|s| s.configuration_set.as_deref()) {
                t.raw("ses:configuration-set", |out| strs(out, &mut std::iter::once(set)));
            }
            t.raw("ses:source-ip", |out| strs(out, &mut std::iter::once("192.0.2.10")));
            t.raw("ses:from-domain", |out| strs(out, &mut std::iter::once(domain)));
            if let Some(caller) = sent.map(|s| s.caller.as_str()).filter(|c| !c.is_empty()) {
                t.raw("ses:caller-identity", |out| strs(out, &mut std::iter::once(caller)));
            }
            for (name, value) in sent.map_or(&[][..], |s| &s.tags[..]) {
                t.raw(name, |out| strs(out, &mut std::iter::once(value.as_str())));
            }
            t.end();
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
    let bounce = |w: &mut ObjectWriter| {
        let (bounce_type, sub_type) = bounce_kind(e, &status);
        w.raw("bounce", |out| {
            let mut b = ObjectWriter::new(out);
            b.str("bounceType", bounce_type)
                .str("bounceSubType", sub_type)
                .str("timestamp", &at)
                .str("feedbackId", &format!("{}-000000", e.event_id.simple()))
                .str("reportingMTA", "dns; a8-1.smtp-out.understudy.test");
            b.raw("bouncedRecipients", |out| {
                recipients(out, &|r| {
                    r.str("action", "failed").str("status", &status).str("diagnosticCode", &diagnostic);
                })
            });
            b.end();
        });
    };
    match e.status {
        _ if suppressed(e) => bounce(&mut w),
        Status::Send => {
            w.raw("send", |out| out.extend_from_slice(b"{}"));
        }
        Status::Delivery => {
            w.raw("delivery", |out| {
                let mut d = ObjectWriter::new(out);
                d.str("timestamp", &at)
                    .int("processingTimeMillis", (e.scheduled_at - e.emitted_at).num_milliseconds().abs().min(600_000))
                    .str("smtpResponse", "250 2.6.0 Message received")
                    .str("reportingMTA", "a8-1.smtp-out.understudy.test");
                d.raw("recipients", |out| strs(out, &mut std::iter::once(recipient)));
                d.end();
            });
        }
        Status::Bounce | Status::Undelivered => bounce(&mut w),
        Status::Complaint => {
            w.raw("complaint", |out| {
                let mut c = ObjectWriter::new(out);
                c.str("timestamp", &at)
                    .str("feedbackId", &format!("{}-000000", e.event_id.simple()))
                    .str("complaintSubType", "")
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
                d.str("timestamp", &at)
                    .str("delayType", delay_type(&status))
                    .str("expirationTime", &iso(e.scheduled_at + chrono::Duration::hours(14)))
                    .str("reportingMTA", "a8-1.smtp-out.understudy.test");
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
                let mut c = ObjectWriter::new(out);
                c.str("timestamp", &at)
                    .str("ipAddress", "192.0.2.1")
                    .str("userAgent", "Mozilla/5.0")
                    .str("link", "https://example.com/");
                c.raw("linkTags", |out| out.extend_from_slice(b"{}"));
                c.end();
            });
        }
    }
    w.end();
}

/// An event as EventBridge delivers it (`source` `aws.ses`, the event as `detail`).
pub fn eventbridge(e: &AckEvent, recipient: &str, sent: Option<&Sent>, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::new(out);
    w.str("version", "0")
        .str("id", &e.event_id.to_string())
        .str("detail-type", detail_type(e))
        .str("source", "aws.ses")
        .str("account", ACCOUNT_ID)
        .str("time", &e.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .str("region", REGION);
    w.raw("resources", |out| {
        out.push(b'[');
        if let Some(set) = sent.and_then(|s| s.configuration_set.as_deref()) {
            crate::json::write_str(out, &format!("arn:aws:ses:{REGION}:{ACCOUNT_ID}:configuration-set/{set}"));
        }
        out.push(b']');
    });
    w.raw("detail", |out| event_with(e, recipient, sent, out));
    w.end();
}

/// One SNS message over HTTP: a `Notification` or a `SubscriptionConfirmation`.
pub struct Envelope<'a> {
    pub kind: &'a str,
    pub message_id: &'a str,
    pub topic_arn: &'a str,
    pub message: &'a str,
    pub timestamp: &'a str,
    /// A `SubscriptionConfirmation`'s token and the URL that confirms it.
    pub token: Option<&'a str>,
    pub subscribe_url: Option<&'a str>,
}

impl Envelope<'_> {
    /// What SNS signs: the message's fields in a fixed order, each as its name, a newline, its value and a
    /// newline (`Subject` only when there is one; this has none).
    pub fn string_to_sign(&self) -> String {
        sns_string_to_sign(self.kind, |k| match k {
            "Message" => Some(self.message),
            "MessageId" => Some(self.message_id),
            "SubscribeURL" => self.subscribe_url,
            "Timestamp" => Some(self.timestamp),
            "Token" => self.token,
            "TopicArn" => Some(self.topic_arn),
            "Type" => Some(self.kind),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// The envelope as SNS posts it, with its signature.
    pub fn write(
        &self,
        signature_version: u8,
        signature: &str,
        cert_url: &str,
        unsubscribe_url: &str,
        out: &mut Vec<u8>,
    ) {
        let mut w = ObjectWriter::new(out);
        w.str("Type", self.kind).str("MessageId", self.message_id);
        if let Some(token) = self.token {
            w.str("Token", token);
        }
        w.str("TopicArn", self.topic_arn).str("Message", self.message);
        if let Some(url) = self.subscribe_url {
            w.str("SubscribeURL", url);
        }
        w.str("Timestamp", self.timestamp)
            .str("SignatureVersion", &signature_version.to_string())
            .str("Signature", signature)
            .str("SigningCertURL", cert_url);
        if self.kind == "Notification" {
            w.str("UnsubscribeURL", unsubscribe_url);
        }
        w.end();
    }
}

/// The SESv2 API's error body, `{"message": …}` (its type goes in `x-amzn-ErrorType`).
pub fn write_error(message: &str, out: &mut Vec<u8>) {
    ObjectWriter::new(out).str("message", message).end();
}

/// AWS's URI encoding: every byte but the unreserved ones (and `/` when `keep_slash`) as `%XX`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What SNS signs of a message of type `kind`: its fields in SNS's fixed order, each as its name, a
/// newline, its value and a newline, those it lacks (`Subject`, say) left out. `None` for a type SNS
/// does not sign.
pub fn sns_string_to_sign<'a>(kind: &str, field: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    let keys: &[&str] = match kind {
        "Notification" => &["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
            &["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        }
        _ => return None,
    };
    let mut s = String::with_capacity(field("Message").map_or(0, str::len) + 256);
    for k in keys {
        if let Some(v) = field(k) {
            s.push_str(k);
            s.push('\n');
            s.push_str(v);
            s.push('\n');
        }
    }
    Some(s)
}

/// SigV4's canonical request. `path` and `query` as they were sent (percent-encoded); `headers` the
/// signed ones, lower-case names, in `signed_headers`' order.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    signed_headers: &str,
    payload_sha256: &str,
) -> String {
    // Services other than S3 encode the path once more.
    let path = if path.is_empty() { "/".to_owned() } else { uri_encode(path, true) };
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for (name, value) in headers {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&value.split_whitespace().collect::<Vec<_>>().join(" "));
        canonical_headers.push('\n');
    }
    format!("{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}", query.join("&"))
}

/// SigV4's signature of `canonical_request`: hex of the HMAC chain over date, region, service and
/// `aws4_request`.
pub fn sigv4_signature(secret: &str, amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hmac = |key: &[u8], data: &str| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request)));
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part);
    }
    hex(&hmac(&key, &string_to_sign))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::AckFormat;
    use super::super::tests::{event, json};
    use crate::model::{Channel, Status};

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn sigv4_matches_aws_test_suite() {
        let headers = [
            ("host".to_owned(), "example.amazonaws.com".to_owned()),
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let canonical = super::canonical_request("GET", "/", "", &headers, "host;x-amz-date", empty);
        assert_eq!(
            canonical,
            format!("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{empty}")
        );
        let signature = super::sigv4_signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical,
        );
        assert_eq!(signature, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    }

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
