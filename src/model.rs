//! The domain vocabulary shared by every stage: channels, vendor statuses, the decoded outbound message,
//! the planned lifecycle and the ack event that goes back to the platform.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of every deterministic id Understudy derives (UUIDv5).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6e1d_5c2a_8f3b_4d7e_9a10_3c5b_7d2e_4f61);

/// A vendor channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Whatsapp,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Whatsapp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The statuses this channel's vendors report at all.
    pub fn statuses(self) -> &'static [Status] {
        use Status::*;
        match self {
            Channel::Email => &[Send, Delivery, Open, Click, Deferred, Bounce, Reject, Complaint],
            Channel::Sms => &[Send, Delivery, Deferred, Reject, Undelivered],
            Channel::Whatsapp => &[Send, Delivery, Read, Deferred, Reject, Undelivered],
        }
    }

    /// Whether `to` may follow `from` (`None` = the first event) on this channel.
    pub fn allows(self, from: Option<Status>, to: Status) -> bool {
        use Status::*;
        if !self.statuses().contains(&to) {
            return false;
        }
        match from {
            None => matches!(to, Send | Reject),
            Some(Send) => matches!(to, Delivery | Deferred | Bounce | Undelivered),
            Some(Deferred) => matches!(to, Deferred | Delivery | Bounce | Undelivered),
            Some(Delivery) => matches!(to, Open | Read | Complaint),
            Some(Open) => matches!(to, Click | Complaint),
            Some(Click) => matches!(to, Complaint),
            Some(Read | Bounce | Reject | Complaint | Undelivered) => false,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "email" => Ok(Channel::Email),
            "sms" => Ok(Channel::Sms),
            "whatsapp" => Ok(Channel::Whatsapp),
            other => Err(format!("unknown channel `{other}`; expected `email`, `sms` or `whatsapp`")),
        }
    }
}

/// A vendor status, as reported in an ack event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Send,
    Delivery,
    Open,
    Click,
    Read,
    Deferred,
    Bounce,
    Reject,
    Complaint,
    Undelivered,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Send,
        Status::Delivery,
        Status::Open,
        Status::Click,
        Status::Read,
        Status::Deferred,
        Status::Bounce,
        Status::Reject,
        Status::Complaint,
        Status::Undelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Send => "SEND",
            Status::Delivery => "DELIVERY",
            Status::Open => "OPEN",
            Status::Click => "CLICK",
            Status::Read => "READ",
            Status::Deferred => "DEFERRED",
            Status::Bounce => "BOUNCE",
            Status::Reject => "REJECT",
            Status::Complaint => "COMPLAINT",
            Status::Undelivered => "UNDELIVERED",
        }
    }

    /// Statuses that report a failure and so carry an error code and reason.
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Deferred | Status::Bounce | Status::Reject | Status::Complaint | Status::Undelivered)
    }

    /// Statuses a lifecycle may end on.
    pub const fn can_end(self) -> bool {
        !matches!(self, Status::Send | Status::Deferred)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase();
        Status::ALL.into_iter().find(|st| st.as_str() == up).ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// Hard or soft bounce (email).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BounceType {
    Hard,
    Soft,
}

/// Where a consumed record came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Shared by every message of the topic.
    pub topic: Arc<str>,
    /// Which incarnation of the topic: `{cluster id}/{topic id}` as the broker reports them (see
    /// [`crate::kafka::admin::topic_keys`]). A topic deleted and created again, or the embedded broker
    /// started again, starts its offsets at 0 again under another key, so its messages are never taken for
    /// ones already stored. Shared by every message of the topic.
    pub topic_id: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// An outbound message after decoding: the fields Understudy needs, the original bytes kept. The ids are
/// reference counted: the stored row, the lifecycle and every ack event share one copy.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub source: SourcePosition,
    pub payload_id: Arc<str>,
    pub batch_id: Arc<str>,
    pub channel: Channel,
    pub recipient: Arc<str>,
    pub tenant_id: Option<Arc<str>>,
    /// Headers to propagate onto every ack, in their original order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Other headers scenario rules match on (not copied onto acks).
    pub rule_headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// A fault injected by the scenario ([`crate::scenario::faults`]), marked on what it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The ack is sent twice (this is the copy).
    Duplicate,
    /// The ack comes before one it should follow.
    OutOfOrder,
    /// The step is never reported.
    Skipped,
    /// The ack is lost.
    Dropped,
    /// The ack is sent as invalid JSON.
    Corrupt,
    /// A DEFERRED retry that the drawn path did not have.
    Deferred,
    /// Rejected or held by an outage window.
    Outage,
    /// Rejected by a rate limit.
    Throttled,
    /// The validity period ran out before the outcome.
    Expired,
    /// The step was a front door's answer to the send call (a synchronous error), not an ack.
    Answered,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Duplicate => "duplicate",
            Fault::OutOfOrder => "out_of_order",
            Fault::Skipped => "skipped",
            Fault::Dropped => "dropped",
            Fault::Corrupt => "corrupt",
            Fault::Deferred => "deferred",
            Fault::Outage => "outage",
            Fault::Throttled => "throttled",
            Fault::Expired => "expired",
            Fault::Answered => "answered",
        }
    }
}

/// Deterministic id of one ack event: UUIDv5 of `payload_id`, status and attempt, separated by U+001F.
pub fn event_id(payload_id: &str, status: Status, attempt: u16) -> Uuid {
    v5(&[payload_id.as_bytes(), status.as_str().as_bytes(), itoa::Buffer::new().format(attempt).as_bytes()])
}

/// UUIDv5 in [`ID_NAMESPACE`] of `parts` joined by U+001F; no allocation for names up to 256 bytes.
fn v5(parts: &[&[u8]]) -> Uuid {
    let mut name = [0u8; 256];
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>().saturating_sub(1);
    if len > name.len() {
        return Uuid::new_v5(&ID_NAMESPACE, &parts.join(&0x1f));
    }
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            name[at] = 0x1f;
            at += 1;
        }
        name[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Uuid::new_v5(&ID_NAMESPACE, &name[..at])
}

/// Deterministic vendor message id, shaped the way each channel's vendors shape theirs.
pub fn vendor_message_id(channel: Channel, payload_id: &str) -> Arc<str> {
    let id = v5(&[b"vendor", payload_id.as_bytes()]);
    let mut buf = Uuid::encode_buffer();
    let hex = id.simple().encode_lower(&mut buf);
    let (prefix, suffix) = match channel {
        Channel::Email => ("<", "@understudy.email>"),
        Channel::Sms => ("SM", ""),
        Channel::Whatsapp => ("wamid.", ""),
    };
    let mut out = [0u8; 64];
    let len = prefix.len() + hex.len() + suffix.len();
    out[..prefix.len()].copy_from_slice(prefix.as_bytes());
    out[prefix.len()..prefix.len() + hex.len()].copy_from_slice(hex.as_bytes());
    out[prefix.len() + hex.len()..len].copy_from_slice(suffix.as_bytes());
    Arc::from(std::str::from_utf8(&out[..len]).expect("ASCII"))
}

/// The ack event produced to the ack topic and stored. Its text fields are shared with the lifecycle
/// that emits it (a reference count, not a copy per event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AckEvent {
    pub event_id: Uuid,
    pub payload_id: Arc<str>,
    pub batch_id: Arc<str>,
    pub channel: Channel,
    pub status: Status,
    pub vendor_message_id: Arc<str>,
    pub attempt: u16,
    pub scheduled_at: DateTime<Utc>,
    pub emitted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<BounceType>,
    pub tenant_id: Option<Arc<str>>,
    /// The injected fault this event carries (stored in `events.fault`; not part of the ack's JSON).
    #[serde(skip)]
    pub fault: Option<Fault>,
}

impl AckEvent {
    /// The event as JSON, as serde writes it (timestamps to the microsecond), into `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut uuid = Uuid::encode_buffer();
        let mut w = crate::json::ObjectWriter::new(out);
        w.str("event_id", self.event_id.hyphenated().encode_lower(&mut uuid))
            .str("payload_id", &self.payload_id)
            .str("batch_id", &self.batch_id)
            .str("channel", self.channel.as_str())
            .str("status", self.status.as_str())
            .str("vendor_message_id", &self.vendor_message_id)
            .int("attempt", i64::from(self.attempt))
            .time("scheduled_at", self.scheduled_at)
            .time("emitted_at", self.emitted_at)
            .some_str("error_code", self.error_code.as_deref())
            .some_str("error_reason", self.error_reason.as_deref())
            .some_str("bounce_type", self.bounce_type.map(BounceType::as_str))
            .opt_str("tenant_id", self.tenant_id.as_deref())
            .end();
    }
}

impl BounceType {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceType::Hard => "hard",
            BounceType::Soft => "soft",
        }
    }
}

/// A duration written as `250ms`, `3s`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write it like `250ms`, `3s`, `15m` or `2h`"
            ))
        })
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: `250ms`, `3s`, `15m`, `2h`, `1h 30m`.",
            "examples": ["250ms", "3s", "1h 30m"]
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

pub fn micros_to_time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_only_comes_first() {
        for ch in Channel::ALL {
            assert!(ch.allows(None, Status::Reject));
            for from in Status::ALL {
                assert!(!ch.allows(Some(from), Status::Reject), "{ch}: {from} -> REJECT");
            }
        }
    }

    #[test]
    fn channel_specific_statuses() {
        assert!(!Channel::Email.allows(Some(Status::Delivery), Status::Read));
        assert!(!Channel::Sms.allows(Some(Status::Delivery), Status::Open));
        assert!(Channel::Whatsapp.allows(Some(Status::Delivery), Status::Read));
        assert!(Channel::Email.allows(Some(Status::Open), Status::Click));
    }

    #[test]
    fn vendor_message_ids_keep_their_shape() {
        let id = Uuid::new_v5(&ID_NAMESPACE, "vendor\u{1f}p-1".as_bytes()).simple().to_string();
        assert_eq!(&*vendor_message_id(Channel::Email, "p-1"), format!("<{id}@understudy.email>"));
        assert_eq!(&*vendor_message_id(Channel::Sms, "p-1"), format!("SM{id}"));
        assert_eq!(&*vendor_message_id(Channel::Whatsapp, "p-1"), format!("wamid.{id}"));
    }

    #[test]
    fn event_ids_keep_their_definition() {
        let long = "p".repeat(300);
        for (p, st, a) in [("p1", Status::Send, 1u16), ("x", Status::Deferred, 12), (long.as_str(), Status::Read, 2)] {
            let name = format!("{p}\u{1f}{}\u{1f}{a}", st.as_str());
            assert_eq!(event_id(p, st, a), Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()));
        }
    }

    #[test]
    fn hand_written_json_reads_back_as_serde_would() {
        let t = |us| micros_to_time(us);
        let mut e = AckEvent {
            event_id: event_id("p\"1", Status::Bounce, 1),
            payload_id: "p\"1".into(),
            batch_id: "b".into(),
            channel: Channel::Email,
            status: Status::Bounce,
            vendor_message_id: vendor_message_id(Channel::Email, "p\"1"),
            attempt: 1,
            scheduled_at: t(1_700_000_000_123_456),
            emitted_at: t(1_700_000_000_223_456),
            error_code: Some("5.1.1".into()),
            error_reason: Some("no such user".into()),
            bounce_type: Some(BounceType::Hard),
            tenant_id: None,
            fault: None,
        };
        for _ in 0..2 {
            let mut out = Vec::new();
            e.write_json(&mut out);
            let ours: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(ours, serde_json::from_slice::<serde_json::Value>(&serde_json::to_vec(&e).unwrap()).unwrap());
            assert_eq!(serde_json::from_slice::<AckEvent>(&out).unwrap(), e);
            (e.error_code, e.error_reason, e.bounce_type, e.tenant_id) = (None, None, None, Some("t".into()));
        }
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        assert_eq!(event_id("p1", Status::Send, 1), event_id("p1", Status::Send, 1));
        assert_ne!(event_id("p1", Status::Send, 1), event_id("p1", Status::Send, 2));
        assert_ne!(event_id("p1", Status::Send, 1), event_id("p2", Status::Send, 1));
    }
}
