//! Which ack format a channel writes, as a scenario names it (`twilio`, `{ sendgrid: { ... } }`,
//! `{ template: "..." }`), and what each format can carry.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Channel, Status};

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
    max_wait: Option<crate::model::Dur>,
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
                let wait = crate::model::Dur(std::time::Duration::from_micros(b.max_wait_us));
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

#[cfg(test)]
mod tests {
    use super::*;

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
