//! Turning a consumed record into an [`Outbound`] message, or into a dead-letter reason.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::{ChannelSource, InputSettings};
use crate::model::{Channel, Outbound, SourcePosition};

/// Why a record cannot be processed. The `kind` is a metric label; the message goes into the DLQ header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub reason: String,
}

/// Every [`Rejection::kind`]: the metrics start each at zero.
pub const REJECTION_KINDS: [&str; 12] = [
    "bad_field",
    "bad_header",
    "channel_not_in_scenario",
    "duplicate_payload_id",
    "empty",
    "missing_field",
    "not_json",
    "not_object",
    "not_utf8",
    "too_large",
    "unknown_channel",
    "wrong_type",
];

impl Rejection {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        debug_assert!(REJECTION_KINDS.contains(&kind), "{kind} is not in REJECTION_KINDS");
        Self { kind, reason: reason.into() }
    }
}

/// A raw record, borrowed from the consumer.
pub struct RawRecord<'a> {
    /// Shared by every record of the topic.
    pub topic: Arc<str>,
    /// The topic's incarnation ([`crate::model::SourcePosition::topic_id`]).
    pub topic_id: Arc<str>,
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
    /// Headers scenario rules match on, kept with the message (not copied onto acks).
    rule_headers: Vec<String>,
    /// The configured JSON pointers, merged into one tree: a message is read in one pass that
    /// captures those fields and skips everything else without building a document.
    fields: Trie,
}

/// Longest payload id or batch id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest tenant id (header or field), in bytes.
pub const MAX_TENANT_BYTES: usize = 256;
/// Longest value of a header that is copied onto acks, in bytes.
pub const MAX_PROPAGATED_HEADER_BYTES: usize = 8 * 1024;

/// Text that is safe as an id: not too long, no control characters.
fn check_id(value: &str, name: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("`{name}` is {} bytes; at most {max} are allowed", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{name}` contains control characters"));
    }
    Ok(())
}

/// Slot of each field in the capture.
const PAYLOAD_ID: usize = 0;
const BATCH_ID: usize = 1;
const RECIPIENT: usize = 2;
const CHANNEL: usize = 3;
const TENANT_ID: usize = 4;
/// The document itself: anything captured here means it is not an object.
const ROOT: usize = 5;
const FIELDS: usize = 6;

impl Decoder {
    pub fn new(settings: InputSettings) -> Self {
        let propagate = settings.propagate_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let f = &settings.fields;
        let mut fields = Trie { slots: vec![ROOT], children: Vec::new() };
        fields.add(&f.payload_id, PAYLOAD_ID);
        fields.add(&f.batch_id, BATCH_ID);
        fields.add(&f.recipient, RECIPIENT);
        if settings.channel_source == ChannelSource::Field {
            fields.add(&f.channel, CHANNEL);
        }
        if !f.tenant_id.is_empty() {
            fields.add(&f.tenant_id, TENANT_ID);
        }
        Self { settings, propagate, rule_headers: Vec::new(), fields }
    }

    /// Also keep these headers (any case), for scenario rules to match on.
    pub fn with_rule_headers(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.rule_headers = names.into_iter().collect();
        self
    }

    pub fn decode(&self, rec: &RawRecord<'_>, received_at: DateTime<Utc>) -> Result<Outbound, Rejection> {
        let body = rec.payload.unwrap_or_default();
        if body.is_empty() {
            return Err(Rejection::new("empty", "the message has no value"));
        }
        if body.len() > self.settings.max_message_bytes {
            return Err(Rejection::new(
                "too_large",
                format!(
                    "the message is {} bytes, above `input.max_message_bytes` ({})",
                    body.len(),
                    self.settings.max_message_bytes
                ),
            ));
        }
        let mut captured: [Captured; FIELDS] = Default::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = de.deserialize_any(Capture { node: &self.fields, slots: &mut captured }).and_then(|()| de.end());
        match read {
            Ok(()) => {}
            Err(_) if std::str::from_utf8(body).is_err() => {
                return Err(Rejection::new("not_utf8", "the message is not valid UTF-8"));
            }
            Err(e) => {
                return Err(Rejection::new("not_json", format!("the message is not JSON: {e}")));
            }
        }
        let [payload_id, batch_id, recipient, channel_field, tenant_field, root] = captured;
        if !matches!(root, Captured::Missing) {
            return Err(Rejection::new("not_object", "the message is JSON but not an object"));
        }
        let f = &self.settings.fields;
        let payload_id = payload_id.required(&f.payload_id, "payload_id")?;
        let batch_id = batch_id.required(&f.batch_id, "batch_id")?;
        let recipient = recipient.required(&f.recipient, "recipient")?;
        for (value, name) in [(&payload_id, "payload_id"), (&batch_id, "batch_id")] {
            check_id(value, name, MAX_ID_BYTES).map_err(|e| Rejection::new("bad_field", e))?;
        }
        let header = |name: &str| {
            rec.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| *v)
                .map(|v| Arc::from(String::from_utf8_lossy(v)))
        };
        let tenant_header = match rec.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(&self.settings.tenant_header))
        {
            Some((_, Some(v))) => {
                let name = &self.settings.tenant_header;
                let text = std::str::from_utf8(v)
                    .map_err(|_| Rejection::new("bad_header", format!("header `{name}` (the tenant) is not UTF-8")))?;
                check_id(text, &format!("header {name}"), MAX_TENANT_BYTES)
                    .map_err(|e| Rejection::new("bad_header", e))?;
                Some(Arc::from(text))
            }
            _ => None,
        };
        let channel_text = match self.settings.channel_source {
            ChannelSource::Field => channel_field.required(&f.channel, "channel")?,
            ChannelSource::Header => header(&self.settings.channel_header).ok_or_else(|| {
                Rejection::new(
                    "missing_field",
                    format!("header `{}` (the channel) is missing", self.settings.channel_header),
                )
            })?,
            ChannelSource::Topic => match self.settings.topic_channels.get(&*rec.topic) {
                Some(c) => Arc::from(c.as_str()),
                None => {
                    return Err(Rejection::new("unknown_channel", format!("topic `{}` has no channel", rec.topic)));
                }
            },
        };
        let channel: Channel = channel_text.parse().map_err(|e: String| Rejection::new("unknown_channel", e))?;
        let tenant_id = match tenant_header {
            Some(t) => Some(t),
            None => match tenant_field.optional() {
                Some(t) => {
                    check_id(&t, "tenant_id", MAX_TENANT_BYTES).map_err(|e| Rejection::new("bad_field", e))?;
                    Some(t)
                }
                None => None,
            },
        };
        let mut headers = Vec::new();
        let mut rule_headers = Vec::new();
        for (k, v) in &rec.headers {
            let Some(v) = v else { continue };
            if !self.propagate.iter().any(|p| p.eq_ignore_ascii_case(k)) {
                if self.rule_headers.iter().any(|p| p.eq_ignore_ascii_case(k)) && v.len() <= MAX_PROPAGATED_HEADER_BYTES
                {
                    rule_headers.push(((*k).to_owned(), v.to_vec()));
                }
                continue;
            }
            if v.len() > MAX_PROPAGATED_HEADER_BYTES {
                return Err(Rejection::new(
                    "bad_header",
                    format!(
                        "header `{k}` is {} bytes; headers copied onto acks are at most {MAX_PROPAGATED_HEADER_BYTES}",
                        v.len()
                    ),
                ));
            }
            headers.push(((*k).to_owned(), v.to_vec()));
        }
        Ok(Outbound {
            source: SourcePosition {
                topic: rec.topic.clone(),
                topic_id: rec.topic_id.clone(),
                partition: rec.partition,
                offset: rec.offset,
            },
            payload_id,
            batch_id,
            channel,
            recipient,
            tenant_id,
            headers,
            rule_headers,
            body: body.to_vec(),
            received_at,
        })
    }
}

/// What the pass found at one pointer.
#[derive(Clone, Debug, Default)]
enum Captured {
    #[default]
    Missing,
    Null,
    Scalar(Arc<str>),
    /// An object, an array, a boolean or an empty string.
    WrongType,
}

impl Captured {
    fn required(self, pointer: &str, name: &str) -> Result<Arc<str>, Rejection> {
        match self {
            Captured::Scalar(v) => Ok(v),
            Captured::Missing | Captured::Null => {
                Err(Rejection::new("missing_field", format!("`{name}` (at `{pointer}`) is missing")))
            }
            Captured::WrongType => Err(Rejection::new(
                "wrong_type",
                format!("`{name}` (at `{pointer}`) must be a non-empty string or a number"),
            )),
        }
    }

    fn optional(self) -> Option<Arc<str>> {
        match self {
            Captured::Scalar(v) => Some(v),
            _ => None,
        }
    }
}

/// JSON pointers merged into a tree of their (unescaped) reference tokens. A node carries the slots of
/// every field whose pointer ends there (two fields may share a pointer; `""` is the document).
#[derive(Clone, Debug, Default)]
struct Trie {
    slots: Vec<usize>,
    children: Vec<(String, Trie)>,
}

impl Trie {
    fn add(&mut self, pointer: &str, slot: usize) {
        let mut node = self;
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            let i = match node.children.iter().position(|(t, _)| *t == token) {
                Some(i) => i,
                None => {
                    node.children.push((token, Trie::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i].1;
        }
        node.slots.push(slot);
    }

    fn child(&self, token: &str) -> Option<&Trie> {
        self.children.iter().find(|(t, _)| t == token).map(|(_, n)| n)
    }
}

/// One pass over a JSON value, capturing the scalars the trie points at. The document's own slot
/// ([`ROOT`]) is set by anything but an object.
struct Capture<'t, 's> {
    node: &'t Trie,
    slots: &'s mut [Captured; FIELDS],
}

impl Capture<'_, '_> {
    fn set(&mut self, v: Captured) {
        for &i in &self.node.slots {
            self.slots[i] = v.clone();
        }
    }
}

impl<'de> DeserializeSeed<'de> for Capture<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key, matched against the trie's children without being copied.
struct KeySeed<'t>(&'t Trie);

impl<'de, 't> DeserializeSeed<'de> for KeySeed<'t> {
    type Value = Option<&'t Trie>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 't> Visitor<'de> for KeySeed<'t> {
    type Value = Option<&'t Trie>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v))
    }
}

macro_rules! scalar_number {
    ($name:ident, $t:ty) => {
        fn $name<E: serde::de::Error>(mut self, v: $t) -> Result<(), E> {
            self.set(Captured::Scalar(serde_json::Number::from(v).to_string().into()));
            Ok(())
        }
    };
}

impl<'de> Visitor<'de> for Capture<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.set(if v.trim().is_empty() { Captured::WrongType } else { Captured::Scalar(Arc::from(v)) });
        Ok(())
    }

    scalar_number!(visit_u64, u64);
    scalar_number!(visit_i64, i64);

    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        self.set(
            serde_json::Number::from_f64(v).map_or(Captured::WrongType, |n| Captured::Scalar(n.to_string().into())),
        );
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.set(Captured::WrongType);
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.set(Captured::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.set(Captured::WrongType);
        let mut index = 0usize;
        loop {
            let child =
                if self.node.children.is_empty() { None } else { self.node.child(itoa::Buffer::new().format(index)) };
            let more = match child {
                Some(node) => seq.next_element_seed(Capture { node, slots: &mut *self.slots })?.is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // An object is what the document should be, and the wrong type for any field.
        for &i in self.node.slots.iter().filter(|&&i| i != ROOT) {
            self.slots[i] = Captured::WrongType;
        }
        while let Some(child) = map.next_key_seed(KeySeed(self.node))? {
            match child {
                Some(node) => map.next_value_seed(Capture { node, slots: &mut *self.slots })?,
                None => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(payload: &'a [u8], headers: Vec<(&'a str, Option<&'a [u8]>)>) -> RawRecord<'a> {
        RawRecord {
            topic: "t".into(),
            topic_id: "c/t".into(),
            partition: 0,
            offset: 7,
            payload: Some(payload),
            headers,
        }
    }

    fn decode(body: &str) -> Result<Outbound, Rejection> {
        Decoder::new(InputSettings::default()).decode(&rec(body.as_bytes(), vec![]), Utc::now())
    }

    #[test]
    fn decodes_the_default_shape_and_keeps_the_body() {
        let body = r#"{"payload_id":"p1","batch_id":42,"channel":"SMS","recipient":"+15550001","extra":{"a":1}}"#;
        let m = decode(body).unwrap();
        assert_eq!((&*m.payload_id, &*m.batch_id, m.channel), ("p1", "42", Channel::Sms));
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
        for wrong in [r#"[]"#, r#"true"#, r#""  ""#, r#"{"id":"x"}"#] {
            let body = format!(r#"{{"payload_id":{wrong},"batch_id":"b","channel":"sms","recipient":"r"}}"#);
            assert_eq!(decode(&body).unwrap_err().kind, "wrong_type", "{body}");
        }
        let e = decode(r#"{"payload_id":null,"batch_id":"b","channel":"sms","recipient":"r"}"#).unwrap_err();
        assert_eq!(e.kind, "missing_field");
        assert_eq!(
            decode(r#"{"payload_id":"p","batch_id":"b","channel":"sms","recipient":"r"} x"#).unwrap_err().kind,
            "not_json"
        );
        assert_eq!(decode(r#""text""#).unwrap_err().kind, "not_object");
        let bad = Decoder::new(InputSettings::default()).decode(&rec(&[0xff, 0xfe], vec![]), Utc::now());
        assert_eq!(bad.unwrap_err().kind, "not_utf8");
    }

    #[test]
    fn hostile_ids_and_headers_are_rejected() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let e = decode(&format!(r#"{{"payload_id":"{long}","batch_id":"b","channel":"sms","recipient":"r"}}"#))
            .unwrap_err();
        assert_eq!(e.kind, "bad_field");
        let e = decode(r#"{"payload_id":"p\n1","batch_id":"b","channel":"sms","recipient":"r"}"#).unwrap_err();
        assert_eq!((e.kind, e.reason.as_str()), ("bad_field", "`payload_id` contains control characters"));
        let d = Decoder::new(InputSettings::default());
        let body = br#"{"payload_id":"p","batch_id":"b","channel":"sms","recipient":"r"}"#;
        let with = |k: &'static str, v: &'static [u8]| d.decode(&rec(body, vec![(k, Some(v))]), Utc::now());
        assert_eq!(with("tenant-id", b"\xff\xfe").unwrap_err().kind, "bad_header");
        assert_eq!(with("tenant-id", b"acme\r\nx-injected: 1").unwrap_err().kind, "bad_header");
        let big: &'static [u8] = Box::leak(vec![b'a'; MAX_PROPAGATED_HEADER_BYTES + 1].into_boxed_slice());
        assert_eq!(with("traceparent", big).unwrap_err().kind, "bad_header");
        // Large values of headers that are not copied are no concern; a fine tenant passes.
        assert!(with("x-private", big).is_ok());
        assert_eq!(with("tenant-id", b"acme").unwrap().tenant_id.as_deref(), Some("acme"));
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
        assert_eq!(&*m.payload_id, "x");
        assert_eq!(m.channel, Channel::Whatsapp);
        assert_eq!(m.tenant_id.as_deref(), Some("acme"));
        let names: Vec<&str> = m.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Tenant-Id", "traceparent"]);
        let d = Decoder::new(InputSettings {
            fields: crate::config::FieldPointers {
                payload_id: "/ids/1/a~1b".into(),
                batch_id: "/batch".into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let body = br#"{"ids":[{"a/b":"zero"},{"a/b":7.5}],"batch":-3,"channel":"email","recipient":"r","skip":[{"x":[1,{}]}]}"#;
        let m = d.decode(&rec(body, vec![]), Utc::now()).unwrap();
        assert_eq!((&*m.payload_id, &*m.batch_id, m.channel), ("7.5", "-3", Channel::Email));
        // Two fields may share a pointer; `""` (the whole document, an object) is never a valid field.
        let shared = |payload_id: &str| {
            Decoder::new(InputSettings {
                fields: crate::config::FieldPointers {
                    payload_id: payload_id.into(),
                    batch_id: "/id".into(),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let body = br#"{"id":"same","channel":"sms","recipient":"r"}"#;
        let m = shared("/id").decode(&rec(body, vec![]), Utc::now()).unwrap();
        assert_eq!((&*m.payload_id, &*m.batch_id), ("same", "same"));
        assert_eq!(shared("").decode(&rec(body, vec![]), Utc::now()).unwrap_err().kind, "wrong_type");
    }
}
