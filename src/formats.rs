//! Ack formats: the native Understudy event, or the shape a real vendor's webhook has (Twilio status
//! callbacks, Amazon SES events, WhatsApp Cloud API `statuses[]`, SendGrid's event webhook), or a
//! platform's own template. Each maps the lifecycle's statuses and error codes to the vendor's own names.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::json::ObjectWriter;
use crate::model::{AckEvent, BounceType, Channel, Status};

/// How acks are written, per channel. Written in a scenario as a name (`twilio`) or `{ template: "..." }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AckFormat {
    /// The native Understudy event (see the README's Acks section).
    #[default]
    Understudy,
    /// A Twilio status callback's fields as a JSON object (SMS, WhatsApp).
    Twilio,
    /// SendGrid's event webhook: JSON arrays of events, batched (email).
    Sendgrid(Batching),
    /// An Amazon SES event, as SNS or Firehose delivers it (email).
    Ses,
    /// A WhatsApp Cloud API webhook body with one `statuses[]` entry (WhatsApp).
    WhatsappCloud,
    /// A platform's own format: `{{field}}` placeholders filled with the event's values, JSON-escaped
    /// (write the quotes around text fields yourself).
    Template(Arc<str>),
}

/// How events are gathered into one record: a batch goes out when it holds `max_events` events or
/// `max_bytes` bytes, or `max_wait_us` after its first event, whichever comes first. SendGrid's own:
/// about 30 s or 768 KB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Batching {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_wait_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self { max_events: 1000, max_bytes: 768 * 1024, max_wait_us: 30_000_000 }
    }
}

/// `{ sendgrid: { ... } }` as written.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BatchingSpec {
    #[serde(default)]
    max_events: Option<usize>,
    #[serde(default)]
    max_bytes: Option<usize>,
    #[serde(default)]
    max_wait: Option<crate::scenario::Dur>,
}

const NAMES: [(&str, AckFormat); 5] = [
    ("understudy", AckFormat::Understudy),
    ("twilio", AckFormat::Twilio),
    ("sendgrid", AckFormat::Sendgrid(Batching { max_events: 1000, max_bytes: 768 * 1024, max_wait_us: 30_000_000 })),
    ("ses", AckFormat::Ses),
    ("whatsapp_cloud", AckFormat::WhatsappCloud),
];

impl Serialize for AckFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            AckFormat::Template(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("template", &**t)?;
                m.end()
            }
            AckFormat::Sendgrid(b) if *b != Batching::default() => {
                let mut m = s.serialize_map(Some(1))?;
                let wait = crate::scenario::Dur(std::time::Duration::from_micros(b.max_wait_us));
                let spec =
                    BatchingSpec { max_events: Some(b.max_events), max_bytes: Some(b.max_bytes), max_wait: Some(wait) };
                m.serialize_entry("sendgrid", &spec)?;
                m.end()
            }
            other => s.serialize_str(other.name()),
        }
    }
}

impl<'de> Deserialize<'de> for AckFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "`understudy`, `twilio`, `sendgrid`, `ses`, `whatsapp_cloud`, `{ sendgrid: { max_events, max_bytes, max_wait } }` or `{ template: \"...\" }`";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AckFormat;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AckFormat, E> {
                NAMES
                    .iter()
                    .find(|(n, _)| *n == v)
                    .map(|(_, f)| f.clone())
                    .ok_or_else(|| E::custom(format!("unknown ack format `{v}`; expected {EXPECTED}")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AckFormat, A::Error> {
                let mut format = None;
                while let Some(key) = map.next_key::<String>()? {
                    if format.is_some() {
                        return Err(serde::de::Error::custom(format!("one key only; expected {EXPECTED}")));
                    }
                    format = Some(match key.as_str() {
                        "template" => AckFormat::Template(map.next_value::<String>()?.into()),
                        "sendgrid" => {
                            let spec: BatchingSpec = map.next_value()?;
                            let d = Batching::default();
                            AckFormat::Sendgrid(Batching {
                                max_events: spec.max_events.unwrap_or(d.max_events).max(1),
                                max_bytes: spec.max_bytes.unwrap_or(d.max_bytes).max(1),
                                max_wait_us: spec.max_wait.map_or(d.max_wait_us, |w| w.0.as_micros() as u64),
                            })
                        }
                        _ => return Err(serde::de::Error::custom(format!("unknown key `{key}`; expected {EXPECTED}"))),
                    });
                }
                format.ok_or_else(|| serde::de::Error::custom(format!("expected {EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for AckFormat {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AckFormat".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How the channel's acks are written: a vendor's webhook format, or a template with `{{field}}` placeholders.",
            "anyOf": [
                { "type": "string", "enum": ["understudy", "twilio", "sendgrid", "ses", "whatsapp_cloud"] },
                {
                    "type": "object",
                    "properties": {
                        "sendgrid": {
                            "type": "object",
                            "properties": {
                                "max_events": { "type": "integer", "minimum": 1 },
                                "max_bytes": { "type": "integer", "minimum": 1 },
                                "max_wait": { "type": "string", "description": "A duration: `30s`." }
                            },
                            "additionalProperties": false
                        }
                    },
                    "required": ["sendgrid"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "template": { "type": "string" } },
                    "required": ["template"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl AckFormat {
    pub fn is_default(&self) -> bool {
        *self == AckFormat::Understudy
    }

    pub fn name(&self) -> &'static str {
        match self {
            AckFormat::Understudy => "understudy",
            AckFormat::Twilio => "twilio",
            AckFormat::Sendgrid(_) => "sendgrid",
            AckFormat::Ses => "ses",
            AckFormat::WhatsappCloud => "whatsapp_cloud",
            AckFormat::Template(_) => "template",
        }
    }

    /// Whether this format can carry `channel`'s acks, and `status` (`None`: any status).
    pub fn check(&self, channel: Channel, status: Option<Status>) -> Result<(), String> {
        let ok = match self {
            AckFormat::Understudy | AckFormat::Template(_) => true,
            AckFormat::Twilio => channel != Channel::Email,
            AckFormat::Sendgrid(_) | AckFormat::Ses => channel == Channel::Email,
            AckFormat::WhatsappCloud => channel == Channel::Whatsapp,
        };
        if !ok {
            return Err(format!("the `{}` format is not for {channel} acks", self.name()));
        }
        if *self == AckFormat::WhatsappCloud && status == Some(Status::Deferred) {
            return Err("the WhatsApp Cloud API has no status for DEFERRED; leave DEFERRED out of this channel".into());
        }
        if let AckFormat::Template(t) = self
            && let Some(bad) = placeholders(t).find(|p| !FIELDS.contains(p))
        {
            return Err(format!("unknown placeholder `{{{{{bad}}}}}`; the fields are {}", FIELDS.join(", ")));
        }
        Ok(())
    }

    /// How events are batched, for a batched format.
    pub fn batching(&self) -> Option<Batching> {
        match self {
            AckFormat::Sendgrid(b) => Some(*b),
            _ => None,
        }
    }

    /// The format with its batching wait scaled like every delay of the scenario.
    pub fn scaled(&self, time_scale: f64) -> Self {
        match self {
            AckFormat::Sendgrid(b) => {
                AckFormat::Sendgrid(Batching { max_wait_us: (b.max_wait_us as f64 * time_scale).round() as u64, ..*b })
            }
            other => other.clone(),
        }
    }
}

/// Placeholders of a template.
pub const FIELDS: &[&str] = &[
    "event_id",
    "payload_id",
    "batch_id",
    "channel",
    "status",
    "vendor_message_id",
    "attempt",
    "scheduled_at",
    "emitted_at",
    "error_code",
    "error_reason",
    "bounce_type",
    "tenant_id",
    "recipient",
];

fn placeholders(t: &str) -> impl Iterator<Item = &str> {
    t.split("{{").skip(1).filter_map(|p| p.split_once("}}").map(|(name, _)| name.trim()))
}

/// Write `event` (to `recipient`) in `format` into `out`.
pub fn write(format: &AckFormat, event: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    match format {
        AckFormat::Understudy => event.write_json(out),
        AckFormat::Twilio => twilio(event, recipient, out),
        AckFormat::Ses => ses(event, recipient, out),
        AckFormat::WhatsappCloud => whatsapp_cloud(event, recipient, out),
        AckFormat::Sendgrid(_) => {
            out.push(b'[');
            sendgrid_event(event, recipient, out);
            out.push(b']');
        }
        AckFormat::Template(t) => template(t, event, recipient, out),
    }
}

/// The hex of a vendor message id (`SM…`, `wamid.…`, `<…@understudy.email>`).
fn hex_id(vendor_message_id: &str) -> &str {
    let s = vendor_message_id.trim_start_matches('<').trim_start_matches("wamid.").trim_start_matches("SM");
    s.split('@').next().unwrap_or(s)
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Twilio's `MessageStatus` for a status.
pub fn twilio_status(status: Status) -> &'static str {
    match status {
        Status::Send => "sent",
        Status::Delivery => "delivered",
        Status::Read => "read",
        Status::Undelivered => "undelivered",
        Status::Reject | Status::Bounce | Status::Complaint => "failed",
        Status::Deferred => "queued",
        Status::Open | Status::Click => "read",
    }
}

fn twilio(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let sid = format!("SM{}", hex_id(&e.vendor_message_id));
    let account = format!(
        "AC{}",
        &hex_id(&crate::model::vendor_message_id(Channel::Sms, e.tenant_id.as_deref().unwrap_or("")))[..32]
    );
    let status = twilio_status(e.status);
    let whatsapp = e.channel == Channel::Whatsapp;
    let to = if whatsapp && !recipient.starts_with("whatsapp:") {
        format!("whatsapp:{recipient}")
    } else {
        recipient.to_owned()
    };
    let from = if whatsapp { "whatsapp:+15005550006" } else { "+15005550006" };
    let mut w = ObjectWriter::new(out);
    w.str("AccountSid", &account)
        .str("ApiVersion", "2010-04-01")
        .str("MessageSid", &sid)
        .str("SmsSid", &sid)
        .str("MessageStatus", status)
        .str("SmsStatus", status)
        .str("To", &to)
        .str("From", from);
    if whatsapp {
        w.str("ChannelPrefix", "whatsapp").str("ChannelToAddress", recipient.trim_start_matches("whatsapp:"));
    }
    if let Some(code) = e.error_code.as_deref().filter(|_| e.status.is_failure()) {
        w.str("ErrorCode", code);
    }
    if !whatsapp && matches!(e.status, Status::Delivery | Status::Undelivered) {
        // The carrier's delivery-receipt time, YYMMDDhhmm.
        w.str("RawDlrDoneDate", &e.scheduled_at.format("%y%m%d%H%M").to_string());
    }
    w.end();
}

/// SES `eventType` for a status.
pub fn ses_event_type(status: Status) -> &'static str {
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

/// `("5.1.1", "smtp; 550 5.1.1 user unknown")` from a code like `550 5.1.1` and its reason.
fn smtp_status(code: Option<&str>, reason: Option<&str>) -> (String, String) {
    let code = code.unwrap_or("");
    let enhanced = code.split_whitespace().find(|p| p.split('.').count() == 3).unwrap_or("5.0.0").to_owned();
    (enhanced, format!("smtp; {} {}", code, reason.unwrap_or("")).trim_end().to_owned())
}

fn ses(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let kind = ses_event_type(e.status);
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

/// WhatsApp Cloud API `status` for a status.
pub fn whatsapp_status(status: Status) -> &'static str {
    match status {
        Status::Send => "sent",
        Status::Delivery => "delivered",
        Status::Read | Status::Open | Status::Click => "read",
        _ => "failed",
    }
}

fn whatsapp_cloud(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
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
                        .str("status", whatsapp_status(e.status))
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

/// SendGrid's event name for a status.
pub fn sendgrid_event_name(status: Status) -> &'static str {
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
pub fn sendgrid_event(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let hex = hex_id(&e.vendor_message_id);
    let mut w = ObjectWriter::new(out);
    w.str("email", recipient)
        .int("timestamp", e.scheduled_at.timestamp())
        .str("event", sendgrid_event_name(e.status))
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

fn template(t: &str, e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
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
    use super::*;
    use crate::model::{event_id, micros_to_time, vendor_message_id};
    use serde_json::Value;

    fn event(channel: Channel, status: Status, code: Option<(&str, &str)>) -> AckEvent {
        AckEvent {
            event_id: event_id("p-1", status, 1),
            payload_id: "p-1".into(),
            batch_id: "b".into(),
            channel,
            status,
            vendor_message_id: vendor_message_id(channel, "p-1"),
            attempt: 1,
            scheduled_at: micros_to_time(1_764_064_800_000_000),
            emitted_at: micros_to_time(1_764_064_800_100_000),
            error_code: code.map(|c| c.0.into()),
            error_reason: code.map(|c| c.1.into()),
            bounce_type: (status == Status::Bounce).then_some(BounceType::Hard),
            tenant_id: Some("acme".into()),
            fault: None,
        }
    }

    fn json(format: &AckFormat, e: &AckEvent, to: &str) -> Value {
        let mut out = Vec::new();
        write(format, e, to, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn twilio_status_callbacks() {
        let v = json(
            &AckFormat::Twilio,
            &event(Channel::Sms, Status::Undelivered, Some(("30003", "unreachable"))),
            "+15005550002",
        );
        assert_eq!(v["MessageStatus"], "undelivered");
        assert_eq!(v["ErrorCode"], "30003");
        assert!(v["MessageSid"].as_str().unwrap().starts_with("SM") && v["MessageSid"].as_str().unwrap().len() == 34);
        assert_eq!(v["RawDlrDoneDate"], "2511251000");
        assert_eq!(v["To"], "+15005550002");
        let v = json(&AckFormat::Twilio, &event(Channel::Whatsapp, Status::Read, None), "+15005551000");
        assert_eq!((v["MessageStatus"].as_str(), v["To"].as_str()), (Some("read"), Some("whatsapp:+15005551000")));
        assert!(v.get("ErrorCode").is_none() && v.get("RawDlrDoneDate").is_none());
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

    #[test]
    fn sendgrid_events_and_templates() {
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
        let t = AckFormat::Template(r#"{"s":"{{status}}","r":"{{ error_reason }}","n":{{attempt}}}"#.into());
        let v = json(&t, &event(Channel::Sms, Status::Reject, Some(("21610", "say \"stop\""))), "+1");
        assert_eq!(v, serde_json::json!({"s": "REJECT", "r": "say \"stop\"", "n": 1}));
    }

    #[test]
    fn formats_name_what_they_cannot_carry() {
        assert!(AckFormat::Twilio.check(Channel::Email, None).unwrap_err().contains("not for email"));
        assert!(AckFormat::Ses.check(Channel::Sms, None).is_err());
        assert!(
            AckFormat::WhatsappCloud.check(Channel::Whatsapp, Some(Status::Deferred)).unwrap_err().contains("DEFERRED")
        );
        assert!(
            AckFormat::Template("{{nope}}".into())
                .check(Channel::Sms, None)
                .unwrap_err()
                .contains("unknown placeholder `{{nope}}`")
        );
        let f: AckFormat = serde_yaml::from_str("{ template: 'x' }").unwrap();
        assert_eq!(f, AckFormat::Template("x".into()));
        let f: AckFormat = serde_yaml::from_str("{ sendgrid: { max_events: 10, max_wait: 5s } }").unwrap();
        let b = Batching { max_events: 10, max_bytes: 768 * 1024, max_wait_us: 5_000_000 };
        assert_eq!(f, AckFormat::Sendgrid(b));
        assert_eq!(f.scaled(0.01).batching().unwrap().max_wait_us, 50_000);
        // A plan stores the format it was planned with, and reads it back.
        let text = serde_json::to_string(&f.scaled(0.01)).unwrap();
        assert_eq!(serde_json::from_str::<AckFormat>(&text).unwrap(), f.scaled(0.01));
        let e = serde_yaml::from_str::<AckFormat>("mailgun").unwrap_err().to_string();
        assert!(e.contains("unknown ack format `mailgun`"), "{e}");
    }
}
