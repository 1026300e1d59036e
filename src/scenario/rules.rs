//! Rules: ordered matches on an outbound message that override its channel's behaviour. The first rule
//! that matches decides; the built-in magic recipients come after the file's own rules; a message no
//! rule matches gets its channel's paths.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ChannelSpec, Delay, ErrorSpec, PathSpec};
use crate::model::{BounceType, Channel, Outbound, Status};

/// A text pattern: a glob (`*` any run of characters, `?` one character) or `{ regex: "..." }`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PatternSpec {
    /// A glob, matched against the whole value: `*@example.com`, `b-2026-*`, `acme`.
    Glob(String),
    /// A regular expression (Rust `regex` syntax), found anywhere in the value unless anchored with `^…$`.
    Regex { regex: String },
}

/// What a rule matches. Every condition given must hold; a rule with none matches every message.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Only these channels (default: all the scenario has).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<Channel>,
    /// The recipient (email address or phone number); globs ignore case here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<PatternSpec>,
    /// The tenant id (from the tenant header or field); a message without one does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<PatternSpec>,
    /// The batch id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<PatternSpec>,
    /// The payload id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PatternSpec>,
    /// The message's template id: its `/template_id` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PatternSpec>,
    /// Record headers by name (any case); the value must be UTF-8 to match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, PatternSpec>,
    /// Fields of the JSON message by JSON pointer (`/meta/priority`). Strings match as they are, other
    /// values as their JSON text (`true`, `3`); a missing field does not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, PatternSpec>,
}

/// One rule as written.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Shown by `scenario explain` and stored with each message's plan.
    pub name: String,
    /// Which messages the rule catches.
    #[serde(rename = "match", default)]
    pub when: MatchSpec,
    /// Force one of the channel's paths, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Weighted paths of their own, in place of the channel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<PathSpec>>,
    /// A whole sub-scenario: behaviour per channel, in place of the scenario's. Channels it does not
    /// name are not caught by the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, ChannelSpec>>,
    /// Another scenario file (relative to this one) that decides everything for the messages the rule
    /// catches: its rules, magic recipients, channels and seed; this file's `time_scale`. Channels it
    /// does not have are not caught.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<std::path::PathBuf>,
    /// Delays by status, over the channel's (or sub-scenario's) own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delays: BTreeMap<String, Delay>,
    /// Error codes for the failure steps, in place of the path's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorSpec>,
    /// `hard` or `soft`, for paths with a BOUNCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<BounceType>,
    /// Faults for the messages the rule catches, in place of the channel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<super::faults::FaultsSpec>,
}

/// A compiled pattern.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Lower-cased when `fold` is set.
    Glob {
        glob: String,
        fold: bool,
    },
    Regex(regex::Regex),
}

impl Pattern {
    pub fn compile(spec: &PatternSpec, fold: bool) -> Result<Self, String> {
        match spec {
            PatternSpec::Glob(g) => Ok(Pattern::Glob { glob: if fold { g.to_lowercase() } else { g.clone() }, fold }),
            PatternSpec::Regex { regex } => regex::Regex::new(regex)
                .map(Pattern::Regex)
                .map_err(|e| format!("not a valid regular expression: {}", e.to_string().replace('\n', " "))),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Glob { glob, fold: true } => glob_match(glob, &value.to_lowercase()),
            Pattern::Glob { glob, fold: false } => glob_match(glob, value),
            Pattern::Regex(r) => r.is_match(value),
        }
    }
}

/// Whole-string glob match with `*` and `?`, by characters.
pub fn glob_match(glob: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (glob.chars().collect(), value.chars().collect());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and the value position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The parts of a message rules look at. The JSON body is parsed only if a rule reads a field, once.
pub struct MessageView<'a> {
    pub channel: Channel,
    pub payload_id: &'a str,
    pub batch_id: &'a str,
    pub recipient: &'a str,
    pub tenant: Option<&'a str>,
    pub headers: &'a [(String, Vec<u8>)],
    pub rule_headers: &'a [(String, Vec<u8>)],
    pub body: &'a [u8],
    /// Receipt time (µs since the epoch): outage windows and rate limits apply only with one.
    pub received_us: Option<i64>,
    parsed: OnceLock<Option<serde_json::Value>>,
}

impl<'a> MessageView<'a> {
    pub fn new(channel: Channel, payload_id: &'a str) -> Self {
        Self {
            channel,
            payload_id,
            batch_id: "",
            recipient: "",
            tenant: None,
            headers: &[],
            rule_headers: &[],
            body: b"",
            received_us: None,
            parsed: OnceLock::new(),
        }
    }

    pub fn of(m: &'a Outbound) -> Self {
        Self {
            channel: m.channel,
            payload_id: &m.payload_id,
            batch_id: &m.batch_id,
            recipient: &m.recipient,
            tenant: m.tenant_id.as_deref(),
            headers: &m.headers,
            rule_headers: &m.rule_headers,
            body: &m.body,
            received_us: Some(m.received_at.timestamp_micros()),
            parsed: OnceLock::new(),
        }
    }

    pub(crate) fn field(&self, pointer: &str) -> Option<String> {
        let doc = self.parsed.get_or_init(|| serde_json::from_slice(self.body).ok()).as_ref()?;
        match doc.pointer(pointer)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .chain(self.rule_headers)
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A compiled [`MatchSpec`].
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    /// Bit per channel index; 0 = all.
    channels: u8,
    recipient: Option<Pattern>,
    tenant: Option<Pattern>,
    batch: Option<Pattern>,
    payload: Option<Pattern>,
    headers: Vec<(String, Pattern)>,
    fields: Vec<(String, Pattern)>,
}

/// Pointer of the field `match.template` reads.
pub const TEMPLATE_POINTER: &str = "/template_id";

impl Matcher {
    /// Compile, or name the field at fault (relative to the `match` key) and what is wrong with it.
    pub fn compile(spec: &MatchSpec) -> Result<Self, (Vec<String>, String)> {
        let one = |name: &str, p: &Option<PatternSpec>, fold: bool| {
            p.as_ref().map(|p| Pattern::compile(p, fold).map_err(|e| (vec![name.to_owned()], e))).transpose()
        };
        let mut fields = Vec::new();
        if let Some(t) = &spec.template {
            fields.push((
                TEMPLATE_POINTER.to_owned(),
                Pattern::compile(t, false).map_err(|e| (vec!["template".into()], e))?,
            ));
        }
        for (pointer, p) in &spec.fields {
            let at = || vec!["fields".to_owned(), pointer.clone()];
            if !pointer.starts_with('/') {
                return Err((
                    at(),
                    format!("`{pointer}` is not a JSON pointer; write it like `/template_id` or `/meta/priority`"),
                ));
            }
            fields.push((pointer.clone(), Pattern::compile(p, false).map_err(|e| (at(), e))?));
        }
        let mut headers = Vec::new();
        for (name, p) in &spec.headers {
            headers.push((
                name.clone(),
                Pattern::compile(p, false).map_err(|e| (vec!["headers".into(), name.clone()], e))?,
            ));
        }
        Ok(Self {
            channels: spec.channels.iter().fold(0, |m, c| m | 1 << c.index()),
            recipient: one("recipient", &spec.recipient, true)?,
            tenant: one("tenant", &spec.tenant, false)?,
            batch: one("batch", &spec.batch, false)?,
            payload: one("payload", &spec.payload, false)?,
            headers,
            fields,
        })
    }

    /// Names of the headers this matcher reads.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(n, _)| n.as_str())
    }

    pub fn covers(&self, channel: Channel) -> bool {
        self.channels == 0 || self.channels & (1 << channel.index()) != 0
    }

    pub fn matches(&self, m: &MessageView<'_>) -> bool {
        let text = |p: &Option<Pattern>, v: &str| p.as_ref().is_none_or(|p| p.matches(v));
        self.covers(m.channel)
            && text(&self.recipient, m.recipient)
            && text(&self.batch, m.batch_id)
            && text(&self.payload, m.payload_id)
            && self.tenant.as_ref().is_none_or(|p| m.tenant.is_some_and(|t| p.matches(t)))
            && self.headers.iter().all(|(name, p)| m.header(name).is_some_and(|v| p.matches(v)))
            && self.fields.iter().all(|(pointer, p)| m.field(pointer).is_some_and(|v| p.matches(&v)))
    }
}

/// Domain of the magic email recipients.
pub const MAGIC_EMAIL_DOMAIN: &str = "understudy.test";

/// One built-in magic recipient.
pub struct Magic {
    pub channel: Channel,
    /// Email local part (before any `+label`) at [`MAGIC_EMAIL_DOMAIN`], or an E.164 number.
    pub recipient: &'static str,
    pub steps: &'static [Status],
    /// Error code and reason of the failure steps; `None` = the channel's usual one.
    pub error: Option<(&'static str, &'static str)>,
    pub bounce_type: Option<BounceType>,
    pub what: &'static str,
}

/// The magic recipients, on unless the scenario says `magic_recipients: false`.
pub const MAGIC: &[Magic] = {
    use Channel::*;
    use Status::*;
    const fn m(
        channel: Channel,
        recipient: &'static str,
        steps: &'static [Status],
        error: Option<(&'static str, &'static str)>,
        bounce_type: Option<BounceType>,
        what: &'static str,
    ) -> Magic {
        Magic { channel, recipient, steps, error, bounce_type, what }
    }
    &[
        m(Email, "success", &[Send, Delivery], None, None, "delivered"),
        m(Email, "open", &[Send, Delivery, Open], None, None, "delivered and opened"),
        m(Email, "click", &[Send, Delivery, Open, Click], None, None, "delivered, opened and clicked"),
        m(
            Email,
            "bounce",
            &[Send, Bounce],
            Some(("550 5.1.1", "recipient address rejected: user unknown")),
            Some(BounceType::Hard),
            "hard bounce",
        ),
        m(
            Email,
            "softbounce",
            &[Send, Deferred, Bounce],
            Some(("452 4.2.2", "mailbox full")),
            Some(BounceType::Soft),
            "deferred, then a soft bounce",
        ),
        m(
            Email,
            "ooto",
            &[Send, Delivery],
            None,
            None,
            "delivered; the out-of-office reply goes to the sender, with no event (as from SES's simulator)",
        ),
        m(Email, "complaint", &[Send, Delivery, Complaint], None, None, "delivered, then marked as spam"),
        m(
            Email,
            "suppressed",
            &[Reject],
            Some(("554 5.7.1", "message rejected: address on the suppression list")),
            None,
            "rejected: on the suppression list",
        ),
        m(
            Email,
            "suppressionlist",
            &[Reject],
            Some(("554 5.7.1", "message rejected: address on the suppression list")),
            None,
            "rejected: on the suppression list (SES's simulator's name for it)",
        ),
        m(Sms, "+15005550006", &[Send, Delivery], None, None, "delivered"),
        m(
            Sms,
            "+15005550001",
            &[Reject],
            Some(("21211", "invalid 'To' phone number")),
            None,
            "rejected: invalid number",
        ),
        m(
            Sms,
            "+15005550002",
            &[Reject],
            Some(("21612", "the 'To' phone number is not currently reachable via SMS")),
            None,
            "rejected: cannot route",
        ),
        m(
            Sms,
            "+15005550005",
            &[Send, Undelivered],
            Some(("30003", "unreachable destination handset")),
            None,
            "undelivered: unreachable",
        ),
        m(
            Sms,
            "+15005550003",
            &[Reject],
            Some(("21408", "permission to send an SMS has not been enabled for the region")),
            None,
            "rejected: no permission for the region",
        ),
        m(
            Sms,
            "+15005550004",
            &[Reject],
            Some(("21610", "attempt to send to unsubscribed recipient")),
            None,
            "rejected: blocked (unsubscribed)",
        ),
        m(
            Sms,
            "+15005550007",
            &[Send, Undelivered],
            Some(("30007", "message filtered by the carrier")),
            None,
            "undelivered: carrier filtering",
        ),
        m(
            Sms,
            "+15005550009",
            &[Reject],
            Some(("21614", "'To' number is not a valid mobile number")),
            None,
            "rejected: landline",
        ),
        m(Whatsapp, "+15005551000", &[Send, Delivery, Read], None, None, "delivered and read"),
        m(Whatsapp, "+15005551001", &[Send, Delivery], None, None, "delivered, never read"),
        m(
            Whatsapp,
            "+15005551002",
            &[Send, Undelivered],
            Some(("131026", "message undeliverable: not a WhatsApp user")),
            None,
            "undelivered: not on WhatsApp",
        ),
        m(
            Whatsapp,
            "+15005551003",
            &[Send, Undelivered],
            Some(("131047", "re-engagement message: more than 24 hours since the customer last replied")),
            None,
            "undelivered: outside the 24-hour window",
        ),
        m(Whatsapp, "+15005551004", &[Reject], Some(("130429", "rate limit hit")), None, "rejected: rate limited"),
        m(
            Whatsapp,
            "+15005551005",
            &[Reject],
            Some(("131021", "recipient cannot be sender")),
            None,
            "rejected: recipient is the sender",
        ),
    ]
};

impl Magic {
    /// The rule name stored with the plan: `magic:bounce@understudy.test`.
    pub fn rule_name(&self) -> String {
        match self.channel {
            Channel::Email => format!("magic:{}@{MAGIC_EMAIL_DOMAIN}", self.recipient),
            _ => format!("magic:{}", self.recipient),
        }
    }

    /// The channel spec of this recipient's one path: the scenario channel's delays where it has them.
    pub fn channel_spec(&self, channel: &ChannelSpec) -> ChannelSpec {
        let channel_delays = &channel.delays;
        let mut delays = BTreeMap::new();
        for s in self.steps {
            let d = channel_delays.get(s.as_str()).cloned().unwrap_or_else(|| default_delay(*s));
            delays.insert(s.as_str().to_owned(), d);
        }
        ChannelSpec {
            delays,
            paths: vec![PathSpec {
                name: self.rule_name(),
                weight: 1.0,
                steps: self.steps.to_vec(),
                delays: BTreeMap::new(),
                errors: self
                    .error
                    .map(|(code, reason)| ErrorSpec { code: code.into(), reason: reason.into(), weight: 1.0 })
                    .into_iter()
                    .collect(),
                bounce_type: self.bounce_type,
            }],
            faults: None,
            ack_format: channel.ack_format.clone(),
        }
    }
}

/// Index of the magic recipient `recipient` is, on `channel`, if any. Email: `NAME@understudy.test` or
/// `NAME+label@understudy.test`, in any case; phone numbers: spaces, dashes, dots, brackets and a
/// `whatsapp:` or `tel:` prefix are ignored. Called for every message: no allocation.
pub fn magic_index(channel: Channel, recipient: &str) -> Option<usize> {
    let find = |key: &str| MAGIC.iter().position(|m| m.channel == channel && m.recipient.eq_ignore_ascii_case(key));
    match channel {
        Channel::Email => {
            let (local, domain) = recipient.trim().rsplit_once('@')?;
            if !domain.eq_ignore_ascii_case(MAGIC_EMAIL_DOMAIN) {
                return None;
            }
            find(local.split('+').next().unwrap_or(local))
        }
        Channel::Sms | Channel::Whatsapp => {
            let r = recipient.trim();
            let r = r.strip_prefix("whatsapp:").or_else(|| r.strip_prefix("tel:")).unwrap_or(r);
            if !r.starts_with('+') {
                return None;
            }
            let mut key = [0u8; 16];
            let mut n = 0;
            for b in r.bytes() {
                match b {
                    b'0'..=b'9' | b'+' if n < key.len() => {
                        key[n] = b;
                        n += 1;
                    }
                    b'0'..=b'9' | b'+' => return None,
                    b' ' | b'-' | b'(' | b')' | b'.' => {}
                    _ => return None,
                }
            }
            find(std::str::from_utf8(&key[..n]).ok()?)
        }
    }
}

/// Delay of a magic recipient's step when the scenario's channel has none for that status.
fn default_delay(status: Status) -> Delay {
    use super::Dur;
    use std::time::Duration;
    let ms = |n| Dur(Duration::from_millis(n));
    match status {
        Status::Reject => Delay::Fixed { value: ms(50) },
        Status::Send => Delay::Lognormal { median: ms(200), p99: ms(2_000), max: None },
        Status::Deferred => Delay::Lognormal { median: ms(30_000), p99: ms(300_000), max: None },
        Status::Delivery | Status::Bounce | Status::Undelivered => {
            Delay::Lognormal { median: ms(2_000), p99: ms(30_000), max: None }
        }
        Status::Open | Status::Read | Status::Click | Status::Complaint => {
            Delay::Lognormal { median: ms(60_000), p99: ms(1_800_000), max: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (g, v, ok) in [
            ("*@example.com", "a@example.com", true),
            ("*@example.com", "a@example.com.evil", false),
            ("b-2026-*", "b-2026-11", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
            ("é*", "été", true),
            ("acme", "acme", true),
            ("acme", "acme2", false),
        ] {
            assert_eq!(glob_match(g, v), ok, "{g} ~ {v}");
        }
    }

    #[test]
    fn matcher_checks_every_condition() {
        let spec: MatchSpec = serde_yaml::from_str(
            r#"
channels: [email]
recipient: "*@Example.com"
tenant: { regex: "^team-(a|b)$" }
headers: { X-Priority: high }
fields: { /meta/tier: gold, /meta/n: "3" }
template: welcome-*
"#,
        )
        .unwrap();
        let m = Matcher::compile(&spec).unwrap();
        let headers = vec![("x-priority".to_owned(), b"high".to_vec())];
        let body = br#"{"template_id":"welcome-v2","meta":{"tier":"gold","n":3}}"#;
        let view = |channel, recipient, tenant| MessageView {
            channel,
            payload_id: "p",
            batch_id: "b",
            recipient,
            tenant,
            headers: &[],
            rule_headers: &headers,
            body,
            received_us: None,
            parsed: OnceLock::new(),
        };
        assert!(m.matches(&view(Channel::Email, "Ann@EXAMPLE.com", Some("team-a"))));
        assert!(!m.matches(&view(Channel::Sms, "Ann@EXAMPLE.com", Some("team-a"))));
        assert!(!m.matches(&view(Channel::Email, "ann@example.org", Some("team-a"))));
        assert!(!m.matches(&view(Channel::Email, "ann@example.com", Some("team-c"))));
        assert!(!m.matches(&view(Channel::Email, "ann@example.com", None)));
        let other_body = br#"{"template_id":"welcome-v2","meta":{"tier":"silver","n":3}}"#;
        let mut v = view(Channel::Email, "ann@example.com", Some("team-b"));
        v.body = other_body;
        assert!(!m.matches(&v));
        v.body = b"not json";
        assert!(!m.matches(&v));
    }

    #[test]
    fn bad_patterns_name_their_field() {
        let spec: MatchSpec = serde_yaml::from_str("fields: { meta.tier: gold }").unwrap();
        assert_eq!(Matcher::compile(&spec).unwrap_err().0, ["fields", "meta.tier"]);
        let spec: MatchSpec = serde_yaml::from_str("recipient: { regex: '(' }").unwrap();
        let (at, msg) = Matcher::compile(&spec).unwrap_err();
        assert_eq!(at, ["recipient"]);
        assert!(msg.contains("not a valid regular expression"), "{msg}");
    }

    #[test]
    fn magic_recipients_by_address_label_and_number_format() {
        let name = |c, r| magic_index(c, r).map(|i| MAGIC[i].recipient);
        assert_eq!(name(Channel::Email, "bounce@understudy.test"), Some("bounce"));
        assert_eq!(name(Channel::Email, "Bounce+run-7@Understudy.Test"), Some("bounce"));
        assert_eq!(name(Channel::Email, "bounce@example.com"), None);
        assert_eq!(name(Channel::Email, "nobody@understudy.test"), None);
        assert_eq!(name(Channel::Sms, "+1 500-555-0001"), Some("+15005550001"));
        assert_eq!(name(Channel::Sms, "15005550001"), None);
        assert_eq!(name(Channel::Whatsapp, "whatsapp:+15005551001"), Some("+15005551001"));
        assert_eq!(name(Channel::Whatsapp, "+15005550001"), None);
        // Every magic path is one the state machine allows.
        for m in MAGIC {
            let mut prev = None;
            for s in m.steps {
                assert!(m.channel.allows(prev, *s), "{}: {prev:?} -> {s}", m.recipient);
                prev = Some(*s);
            }
            assert!(prev.unwrap().can_end());
        }
    }
}
