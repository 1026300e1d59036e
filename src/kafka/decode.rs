//! Turning a consumed record into an [`Outbound`] message, or into a dead-letter reason.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{ChannelSource, InputSettings};
use crate::model::{Channel, Outbound, SourcePosition};

/// Why a record cannot be processed. The `kind` is a metric label; the message goes into the DLQ header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub reason: String,
}

impl Rejection {
    fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into() }
    }
}

/// A raw record, borrowed from the consumer.
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Decoder for one input configuration.
#[derive(Clone, Debug)]
pub struct Decoder {
    settings: InputSettings,
    propagate: Vec<String>,
}

impl Decoder {
    pub fn new(settings: InputSettings) -> Self {
        let propagate = settings.propagate_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        Self { settings, propagate }
    }

    pub fn decode(&self, rec: &RawRecord<'_>, received_at: DateTime<Utc>) -> Result<Outbound, Rejection> {
        let body = rec.payload.unwrap_or_default();
        if body.is_empty() {
            return Err(Rejection::new("empty", "the message has no value"));
        }
        if body.len() > self.settings.max_message_bytes {
            return Err(Rejection::new(
                "too_large",
                format!("the message is {} bytes, above `input.max_message_bytes` ({})", body.len(), self.settings.max_message_bytes),
            ));
        }
        let json: Value = serde_json::from_slice(body).map_err(|e| {
            if std::str::from_utf8(body).is_err() {
                Rejection::new("not_utf8", "the message is not valid UTF-8")
            } else {
                Rejection::new("not_json", format!("the message is not JSON: {e}"))
            }
        })?;
        if !json.is_object() {
            return Err(Rejection::new("not_object", "the message is JSON but not an object"));
        }
        let f = &self.settings.fields;
        let payload_id = required(&json, &f.payload_id, "payload_id")?;
        let batch_id = required(&json, &f.batch_id, "batch_id")?;
        let recipient = required(&json, &f.recipient, "recipient")?;
        let header = |name: &str| {
            rec.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| *v)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let channel_text = match self.settings.channel_source {
            ChannelSource::Field => required(&json, &f.channel, "channel")?,
            ChannelSource::Header => header(&self.settings.channel_header).ok_or_else(|| {
                Rejection::new("missing_field", format!("header `{}` (the channel) is missing", self.settings.channel_header))
            })?,
            ChannelSource::Topic => match self.settings.topic_channels.get(rec.topic) {
                Some(c) => c.as_str().to_owned(),
                None => return Err(Rejection::new("unknown_channel", format!("topic `{}` has no channel", rec.topic))),
            },
        };
        let channel: Channel = channel_text.parse().map_err(|e: String| Rejection::new("unknown_channel", e))?;
        let tenant_id = header(&self.settings.tenant_header).or_else(|| optional(&json, &f.tenant_id));
        let headers = rec
            .headers
            .iter()
            .filter(|(k, _)| self.propagate.iter().any(|p| p.eq_ignore_ascii_case(k)))
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v.to_vec())))
            .collect();
        Ok(Outbound {
            source: SourcePosition { topic: rec.topic.to_owned(), partition: rec.partition, offset: rec.offset },
            payload_id,
            batch_id,
            channel,
            recipient,
            tenant_id,
            headers,
            body: body.to_vec(),
            received_at,
        })
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn required(json: &Value, pointer: &str, name: &str) -> Result<String, Rejection> {
    match json.pointer(pointer) {
        None | Some(Value::Null) => Err(Rejection::new("missing_field", format!("`{name}` (at `{pointer}`) is missing"))),
        Some(v) => scalar(v).ok_or_else(|| {
            Rejection::new("wrong_type", format!("`{name}` (at `{pointer}`) must be a non-empty string or a number"))
        }),
    }
}

fn optional(json: &Value, pointer: &str) -> Option<String> {
    if pointer.is_empty() {
        return None;
    }
    json.pointer(pointer).and_then(scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(payload: &'a [u8], headers: Vec<(&'a str, Option<&'a [u8]>)>) -> RawRecord<'a> {
        RawRecord { topic: "t", partition: 0, offset: 7, payload: Some(payload), headers }
    }

    fn decode(body: &str) -> Result<Outbound, Rejection> {
        Decoder::new(InputSettings::default()).decode(&rec(body.as_bytes(), vec![]), Utc::now())
    }

    #[test]
    fn decodes_the_default_shape_and_keeps_the_body() {
        let body = r#"{"payload_id":"p1","batch_id":42,"channel":"SMS","recipient":"+15550001","extra":{"a":1}}"#;
        let m = decode(body).unwrap();
        assert_eq!((m.payload_id.as_str(), m.batch_id.as_str(), m.channel), ("p1", "42", Channel::Sms));
        assert_eq!(m.body, body.as_bytes());
        assert_eq!(m.source.offset, 7);
    }

    #[test]
    fn rejections_say_why() {
        assert_eq!(decode("{nope").unwrap_err().kind, "not_json");
        assert_eq!(decode("[1]").unwrap_err().kind, "not_object");
        let e = decode(r#"{"batch_id":"b","channel":"sms","recipient":"r"}"#).unwrap_err();
        assert_eq!(e.kind, "missing_field");
        assert!(e.reason.contains("payload_id"), "{}", e.reason);
        let e = decode(r#"{"payload_id":"p","batch_id":"b","channel":"fax","recipient":"r"}"#).unwrap_err();
        assert_eq!(e.kind, "unknown_channel");
        let e = decode(r#"{"payload_id":{},"batch_id":"b","channel":"sms","recipient":"r"}"#).unwrap_err();
        assert_eq!(e.kind, "wrong_type");
        let bad = Decoder::new(InputSettings::default()).decode(&rec(&[0xff, 0xfe], vec![]), Utc::now());
        assert_eq!(bad.unwrap_err().kind, "not_utf8");
    }

    #[test]
    fn pointers_headers_and_tenants_are_configurable() {
        let mut s = InputSettings::default();
        s.fields.payload_id = "/meta/id".into();
        s.channel_source = ChannelSource::Header;
        let d = Decoder::new(s);
        let body = br#"{"meta":{"id":"x"},"batch_id":"b","recipient":"r","tenant_id":"from-body"}"#;
        let headers = vec![
            ("channel", Some(&b"whatsapp"[..])),
            ("Tenant-Id", Some(&b"acme"[..])),
            ("traceparent", Some(&b"00-abc-def-01"[..])),
            ("x-private", Some(&b"no"[..])),
        ];
        let m = d.decode(&rec(body, headers), Utc::now()).unwrap();
        assert_eq!(m.payload_id, "x");
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.tenant_id.as_deref(), Some("acme"));
        let names: Vec<&str> = m.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Tenant-Id", "traceparent"]);
    }
}
