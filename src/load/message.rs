//! The messages a load run sends: ids, channel mix, recipients and the body template. Everything about
//! message `seq` is a function of the run settings and `seq` alone, so the correlator can tell a payload's
//! channel and due time from its id without sharing state with the generator.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::model::Channel;

/// Channel shares, e.g. `email=0.5,sms=0.3,whatsapp=0.2`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    /// Cumulative shares in channel order, ending at 1.
    cumulative: Vec<(Channel, f64)>,
}

impl Default for Mix {
    fn default() -> Self {
        "email=0.5,sms=0.3,whatsapp=0.2".parse().expect("the default mix parses")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel mix `{text}`: {message}; write e.g. `email=0.5,sms=0.3,whatsapp=0.2`")]
pub struct MixError {
    text: String,
    message: String,
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |message: String| MixError { text: text.to_owned(), message };
        let mut shares = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (c, w) = part.split_once('=').ok_or_else(|| err(format!("`{part}` has no `=SHARE`")))?;
            let channel: Channel = c.parse().map_err(&err)?;
            let w: f64 = w.trim().parse().map_err(|_| err(format!("share `{}` is not a number", w.trim())))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(err(format!("share of {channel} must be zero or more")));
            }
            if shares.iter().any(|(x, _)| *x == channel) {
                return Err(err(format!("{channel} is named twice")));
            }
            shares.push((channel, w));
        }
        let total: f64 = shares.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return Err(err("no channel has a share".into()));
        }
        let mut acc = 0.0;
        let cumulative = shares
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|(c, w)| {
                acc += w / total;
                (c, acc)
            })
            .collect();
        Ok(Self { cumulative })
    }
}

impl Mix {
    /// The channel of message `seq`. A golden-ratio sequence spreads the channels evenly through the run:
    /// every stretch of messages carries the configured shares (to within a few messages), with no state.
    pub fn channel_of(&self, seq: u64) -> Channel {
        const PHI: f64 = 0.618_033_988_749_894_9;
        let u = ((seq as f64 + 0.5) * PHI).fract();
        self.cumulative.iter().find(|(_, c)| u < *c).map_or(self.cumulative.last().expect("a share").0, |(ch, _)| *ch)
    }

    pub fn share(&self, channel: Channel) -> f64 {
        let mut prev = 0.0;
        for (c, acc) in &self.cumulative {
            if *c == channel {
                return acc - prev;
            }
            prev = *acc;
        }
        0.0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Channel::ALL
            .into_iter()
            .filter(|c| self.share(*c) > 0.0)
            .map(|c| format!("{c}={:.3}", self.share(c)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A field a template can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    PayloadId,
    BatchId,
    Channel,
    Recipient,
    TenantId,
    RunId,
    Seq,
    Padding,
}

const FIELDS: [(&str, Field); 8] = [
    ("payload_id", Field::PayloadId),
    ("batch_id", Field::BatchId),
    ("channel", Field::Channel),
    ("recipient", Field::Recipient),
    ("tenant_id", Field::TenantId),
    ("run_id", Field::RunId),
    ("seq", Field::Seq),
    ("padding", Field::Padding),
];

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(Vec<u8>),
    Field(Field),
}

/// The body of every message, with `{{field}}` placeholders: the platform's own input format, or the
/// default (Understudy's input shape). Values are inserted as they are (the template supplies quotes).
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

pub const DEFAULT_TEMPLATE: &str = r#"{"payload_id":"{{payload_id}}","batch_id":"{{batch_id}}","channel":"{{channel}}","recipient":"{{recipient}}","tenant_id":"{{tenant_id}}","run_id":"{{run_id}}","template_id":"load-test","params":{"name":"Ada","body":"{{padding}}"}}"#;

impl FromStr for Template {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            parts.push(Part::Text(rest.as_bytes()[..open].to_vec()));
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` at byte {} is never closed", text.len() - rest.len() + open))?;
            let name = after[..close].trim();
            let field = FIELDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| {
                format!(
                    "unknown placeholder `{{{{{name}}}}}`; placeholders are {}",
                    FIELDS.map(|(n, _)| format!("{{{{{n}}}}}")).join(", ")
                )
            })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        parts.push(Part::Text(rest.as_bytes().to_vec()));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Self { parts })
    }
}

impl Default for Template {
    fn default() -> Self {
        DEFAULT_TEMPLATE.parse().expect("the default template parses")
    }
}

/// What makes every message of one generator process.
#[derive(Clone, Debug)]
pub struct MessageFactory {
    pub run_id: String,
    pub generator: u32,
    pub tenant_id: String,
    pub batch_size: u64,
    pub mix: Mix,
    template: Template,
    /// Bytes of padding per channel, to bring bodies to the requested size.
    padding: [usize; 3],
    /// Listed recipients per channel (used in turn); generated ones where empty.
    recipients: [Vec<String>; 3],
    /// `{run_id}-g{generator}-`: the start of every payload id of this process.
    prefix: String,
}

impl MessageFactory {
    pub fn new(
        run_id: &str,
        generator: u32,
        tenant_id: &str,
        batch_size: u64,
        mix: Mix,
        template: Template,
        payload_bytes: usize,
    ) -> Self {
        let mut f = Self {
            run_id: run_id.to_owned(),
            generator,
            tenant_id: tenant_id.to_owned(),
            batch_size: batch_size.max(1),
            mix,
            template,
            padding: [0; 3],
            recipients: Default::default(),
            prefix: format!("{run_id}-g{generator}-"),
        };
        // Ids and recipients have a fixed width, so one body per channel gives the padding for all.
        for c in Channel::ALL {
            let mut body = Vec::new();
            f.render_body(0, c, &mut body);
            f.padding[c.index()] = payload_bytes.saturating_sub(body.len());
        }
        f
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The message number of a payload id of this process.
    pub fn seq_of(&self, payload_id: &str) -> Option<u64> {
        payload_id.strip_prefix(&self.prefix)?.parse().ok()
    }

    pub fn payload_id(&self, seq: u64, out: &mut String) {
        use std::fmt::Write as _;
        out.clear();
        let _ = write!(out, "{}", PayloadId(&self.run_id, self.generator, seq));
    }

    pub fn batch_id(&self, seq: u64, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "{}", BatchId(&self.run_id, self.generator, seq / self.batch_size));
    }

    /// Send every message of a channel with listed recipients to them, in turn, instead of generated ones.
    pub fn with_recipients(mut self, lists: &BTreeMap<Channel, Vec<String>>) -> Self {
        for (c, list) in lists {
            self.recipients[c.index()] = list.clone();
        }
        self
    }

    /// Message `seq`'s recipient on `channel`, appended to `out`.
    pub fn recipient_into(&self, seq: u64, channel: Channel, out: &mut Vec<u8>) {
        self.recipient(seq, channel, out)
    }

    fn recipient(&self, seq: u64, channel: Channel, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let listed = &self.recipients[channel.index()];
        if !listed.is_empty() {
            out.extend_from_slice(listed[(seq % listed.len() as u64) as usize].as_bytes());
            return;
        }
        let _ = match channel {
            Channel::Email => write!(out, "u{seq:010}@example.com"),
            Channel::Sms | Channel::Whatsapp => write!(out, "+1555{:07}", seq % 10_000_000),
        };
    }

    /// Write message `seq`'s body into `out` (cleared first).
    pub fn body(&self, seq: u64, channel: Channel, out: &mut Vec<u8>) {
        out.clear();
        self.render_body(seq, channel, out);
    }

    fn render_body(&self, seq: u64, channel: Channel, out: &mut Vec<u8>) {
        let mut s = String::new();
        for part in &self.template.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t),
                Part::Field(Field::PayloadId) => {
                    self.payload_id(seq, &mut s);
                    out.extend_from_slice(s.as_bytes());
                }
                Part::Field(Field::BatchId) => {
                    s.clear();
                    self.batch_id(seq, &mut s);
                    out.extend_from_slice(s.as_bytes());
                }
                Part::Field(Field::Channel) => out.extend_from_slice(channel.as_str().as_bytes()),
                Part::Field(Field::Recipient) => self.recipient(seq, channel, out),
                Part::Field(Field::TenantId) => out.extend_from_slice(self.tenant_id.as_bytes()),
                Part::Field(Field::RunId) => out.extend_from_slice(self.run_id.as_bytes()),
                Part::Field(Field::Seq) => out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes()),
                Part::Field(Field::Padding) => out.resize(out.len() + self.padding[channel.index()], b'x'),
            }
        }
    }
}

/// The payload id of message `seq` (the third field) of generator `generator` (the second) of a run.
pub struct PayloadId<'a>(pub &'a str, pub u32, pub u64);

impl fmt::Display for PayloadId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-g{}-{:010}", self.0, self.1, self.2)
    }
}

/// The batch id of batch `batch` (the third field) of generator `generator` (the second) of a run.
pub struct BatchId<'a>(pub &'a str, pub u32, pub u64);

impl fmt::Display for BatchId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-g{}-b{:07}", self.0, self.1, self.2)
    }
}

/// Read a recipients file: one `CHANNEL ADDRESS` a line (`email bounce@simulator.example`, `sms +15550100`);
/// blank lines and `#` comments are skipped. Errors name the file and line.
pub fn parse_recipients(file: &str, text: &str) -> Result<BTreeMap<Channel, Vec<String>>, String> {
    let mut out: BTreeMap<Channel, Vec<String>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (c, address) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{file}:{}: expected `CHANNEL ADDRESS`, got `{line}`", i + 1))?;
        let channel: Channel = c.parse().map_err(|e| format!("{file}:{}: {e}", i + 1))?;
        let address = address.trim();
        if address.contains(['"', '\\']) {
            return Err(format!("{file}:{}: the address `{address}` holds a quote or backslash", i + 1));
        }
        out.entry(channel).or_default().push(address.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_shares_hold_over_any_stretch_of_messages() {
        let mix: Mix = "email=0.5,sms=0.3,whatsapp=0.2".parse().unwrap();
        for (start, len) in [(0u64, 1000u64), (12_345, 1000), (0, 100_000)] {
            let mut n = [0u64; 3];
            for seq in start..start + len {
                n[mix.channel_of(seq).index()] += 1;
            }
            let tolerance = 0.01 * len as f64 + 3.0;
            for (c, share) in [(Channel::Email, 0.5), (Channel::Sms, 0.3), (Channel::Whatsapp, 0.2)] {
                assert!((n[c.index()] as f64 - share * len as f64).abs() <= tolerance, "{c}: {n:?} of {len}");
            }
        }
        let only: Mix = "sms=1".parse().unwrap();
        assert!((0..100).all(|s| only.channel_of(s) == Channel::Sms));
        assert!("email=0.5,fax=0.5".parse::<Mix>().unwrap_err().to_string().contains("unknown channel `fax`"));
        assert!("email=0".parse::<Mix>().unwrap_err().to_string().contains("no channel has a share"));
    }

    #[test]
    fn bodies_are_json_with_ids_that_map_back_and_the_requested_size() {
        let f = MessageFactory::new("r1", 2, "acme", 1000, Mix::default(), Template::default(), 512);
        let mut body = Vec::new();
        for seq in [0u64, 7, 1_234_567] {
            let channel = f.mix.channel_of(seq);
            f.body(seq, channel, &mut body);
            assert_eq!(body.len(), 512);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = v["payload_id"].as_str().unwrap();
            assert_eq!(f.seq_of(id), Some(seq));
            assert_eq!(v["channel"], channel.as_str());
            assert_eq!(v["batch_id"], format!("r1-g2-b{:07}", seq / 1000));
            assert_eq!(v["tenant_id"], "acme");
        }
        assert_eq!(f.seq_of("r1-g3-0000000001"), None, "another process's payload");
    }

    #[test]
    fn listed_recipients_take_turns_and_bad_lines_are_named() {
        let lists = parse_recipients(
            "r.txt",
            "# magic addresses\nemail bounce@simulator.example\nemail ok@example.com\n\nsms +15550100\n",
        )
        .unwrap();
        let f = MessageFactory::new("r", 0, "t", 10, Mix::default(), Template::default(), 0).with_recipients(&lists);
        let mut body = Vec::new();
        let recipient = |seq: u64, body: &mut Vec<u8>| {
            let c = f.mix.channel_of(seq);
            f.body(seq, c, body);
            (c, serde_json::from_slice::<serde_json::Value>(body).unwrap()["recipient"].as_str().unwrap().to_owned())
        };
        for seq in 0..20 {
            let (c, r) = recipient(seq, &mut body);
            match c {
                Channel::Email => assert!(r == "bounce@simulator.example" || r == "ok@example.com", "{r}"),
                Channel::Sms => assert_eq!(r, "+15550100"),
                Channel::Whatsapp => assert!(r.starts_with("+1555") && r.len() == 12, "generated: {r}"),
            }
        }
        let e = parse_recipients("r.txt", "email a@b\nfax 123\n").unwrap_err();
        assert!(e.starts_with("r.txt:2: unknown channel `fax`"), "{e}");
        assert!(parse_recipients("r.txt", "lonely\n").unwrap_err().starts_with("r.txt:1: expected `CHANNEL ADDRESS`"));
    }

    #[test]
    fn user_templates_and_their_errors() {
        let t: Template = r#"{"meta":{"id":"{{payload_id}}","n":{{seq}}},"to":"{{recipient}}","kind":"{{channel}}"}"#
            .parse()
            .unwrap();
        let f = MessageFactory::new("r", 0, "t", 10, "whatsapp=1".parse().unwrap(), t, 0);
        let mut body = Vec::new();
        f.body(42, Channel::Whatsapp, &mut body);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"meta":{"id":"r-g0-0000000042","n":42},"to":"+15550000042","kind":"whatsapp"}"#
        );
        let e = "{{nope}}".parse::<Template>().unwrap_err();
        assert!(e.contains("unknown placeholder `{{nope}}`") && e.contains("{{payload_id}}"), "{e}");
        assert!("{{payload_id".parse::<Template>().unwrap_err().contains("never closed"));
    }
}
