//! Scenario files: what QA edit to tune vendor behaviour.
//!
//! A scenario gives each channel weighted outcome paths (`[SEND, DELIVERY, OPEN]`) and a delay
//! distribution per step. [`Scenario::plan`] turns (seed, payload id) into a whole lifecycle, a pure
//! function: the same answer on every replica, in every order, on every rerun.

pub mod calibrate;
pub mod distribution;
pub mod explain;
pub mod faults;
pub mod live;
pub mod locate;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use distribution::{Delay, Dur, Sampler};
use locate::Seg;
pub use rules::MessageView;
use rules::{MAGIC, Matcher, RuleSpec};

use crate::model::{BounceType, Channel, Status, vendor_message_id};
use crate::plan::{Plan, PlannedStep};
use crate::wire::AckFormat;

/// What is wrong with a scenario file, and where.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read the scenario file: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}:{line}: `{field}`: {message}")]
    Invalid { file: PathBuf, line: usize, field: String, message: String },
}

pub type Result<T, E = ScenarioError> = std::result::Result<T, E>;

/// A scenario file as written.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// A short name shown in summaries and stored with every message.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text for the people who read the file.
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of every random draw. Same seed + same payload id = same lifecycle.
    pub seed: u64,
    /// Multiplies every delay: `0.001` turns an hour into 3.6 s. Default 1.
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Behaviour per channel (`email`, `sms`, `whatsapp`).
    pub channels: BTreeMap<String, ChannelSpec>,
    /// Ordered rules that override the channel behaviour for the messages they match; first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    /// The built-in magic recipients (`bounce@understudy.test`, `+15005550001`, ...), checked after the
    /// rules. Default on.
    #[serde(default = "yes")]
    pub magic_recipients: bool,
    /// Vendor outage windows: messages received in one are rejected, or held until it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<faults::OutageSpec>,
    /// Rate limits beyond which messages are rejected with the vendor's rate-limit code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttles: Vec<faults::ThrottleSpec>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// One channel's behaviour.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Delay before each status, counted from the previous step, keyed by status.
    #[serde(default)]
    pub delays: BTreeMap<String, Delay>,
    /// Weighted outcome paths; one is drawn per message.
    pub paths: Vec<PathSpec>,
    /// Faults injected into this channel's acks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<faults::FaultsSpec>,
    /// How this channel's acks are written: `understudy` (default), `twilio`, `sendgrid`, `ses`,
    /// `whatsapp_cloud`, or `{ template: "..." }`.
    #[serde(default, skip_serializing_if = "AckFormat::is_default")]
    pub ack_format: AckFormat,
}

/// One outcome path.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub name: String,
    /// Relative weight (any non-negative numbers; they need not add up to 1 or 100).
    pub weight: f64,
    /// Statuses in order, e.g. `[SEND, DELIVERY, OPEN]`.
    pub steps: Vec<Status>,
    /// Delays for this path only, overriding the channel's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delays: BTreeMap<String, Delay>,
    /// Error codes for the failure steps of this path; one is drawn per message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorSpec>,
    /// `hard` (default) or `soft`, for a path with a BOUNCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<BounceType>,
}

/// A vendor error code with its reason.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    pub code: String,
    pub reason: String,
    #[serde(default = "one")]
    pub weight: f64,
}

/// A validated, ready-to-plan scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub file: ScenarioFile,
    pub source: PathBuf,
    /// Hash of the file's text, the included files' versions and the effective `time_scale`: stored
    /// with every message, so that a reloaded scenario's messages can be told apart.
    version: std::sync::Arc<str>,
    /// Hash of this file's own text.
    text_hash: u64,
    /// `time_scale` given from outside ([`Scenario::rescaled`]); a reload keeps it.
    time_scale_override: Option<f64>,
    name: std::sync::Arc<str>,
    channels: [Option<CompiledChannel>; 3],
    rules: Vec<CompiledRule>,
    /// Per entry of [`MAGIC`]: its rule name and path, when magic recipients are on and the scenario has
    /// the channel.
    magic: Vec<Option<(std::sync::Arc<str>, CompiledChannel)>>,
    outages: Vec<faults::Outage>,
    /// Shared by clones: one rate limit.
    throttles: Vec<std::sync::Arc<faults::Throttle>>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    name: std::sync::Arc<str>,
    matcher: Matcher,
    channels: [Option<CompiledChannel>; 3],
    /// A rule with `scenario: FILE` hands its messages to that scenario, on the channels marked.
    sub: Option<(std::sync::Arc<Scenario>, [bool; 3])>,
}

/// How deep `scenario:` rules may nest.
const MAX_NESTING: usize = 8;

/// What decided a message's behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// The rule at this index of `rules`.
    Rule(usize, std::sync::Arc<str>),
    /// A magic recipient (index into [`rules::MAGIC`]).
    Magic(usize, std::sync::Arc<str>),
    /// The channel's own paths.
    Channel,
}

impl Chosen {
    pub fn rule_name(&self) -> Option<&std::sync::Arc<str>> {
        match self {
            Chosen::Rule(_, n) | Chosen::Magic(_, n) => Some(n),
            Chosen::Channel => None,
        }
    }
}

/// A channel's (or a rule's) compiled paths.
#[derive(Clone, Debug)]
pub struct CompiledChannel {
    cumulative: Vec<f64>,
    paths: Vec<CompiledPath>,
    faults: faults::Faults,
    format: AckFormat,
}

#[derive(Clone, Debug)]
struct CompiledPath {
    name: std::sync::Arc<str>,
    steps: Vec<(Status, Sampler)>,
    errors_cumulative: Vec<f64>,
    errors: Vec<(String, String)>,
    bounce_type: BounceType,
}

impl Scenario {
    /// Read, parse and validate a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { file: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parse and validate scenario text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        Self::parse_at(text, file, None, 0)
    }

    /// Parse at `depth` of nested `scenario:` rules, with the including file's `time_scale` if given.
    fn parse_at(text: &str, file: &Path, time_scale: Option<f64>, depth: usize) -> Result<Self> {
        let invalid = |segs: &[Seg], message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            line: locate::locate(text, segs).unwrap_or(1),
            field: if segs.is_empty() { "(document)".into() } else { locate::render(segs) },
            message,
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let mut parsed: ScenarioFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let (line, field, message) = locate::yaml_error(text, &e);
            ScenarioError::Invalid { file: file.to_owned(), line, field, message: explain_serde(&message) }
        })?;
        if let Some(t) = time_scale {
            parsed.time_scale = t;
        }
        let mut scenario =
            Self::compile(parsed, file.to_owned(), depth).map_err(|(segs, message)| invalid(&segs, message))?;
        scenario.text_hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        scenario.version = scenario.compute_version();
        Ok(scenario)
    }

    fn compile(file: ScenarioFile, source: PathBuf, depth: usize) -> Result<Self, (Vec<Seg>, String)> {
        let key = |s: &str| Seg::Key(s.to_owned());
        if !(file.time_scale.is_finite() && file.time_scale > 0.0) {
            return Err((vec![key("time_scale")], format!("must be a positive number, not {}", file.time_scale)));
        }
        if file.channels.is_empty() {
            return Err((vec![key("channels")], "name at least one channel: `email`, `sms` or `whatsapp`".into()));
        }
        // Outage windows and rate limits are the deployment's: one clock and one bucket for every message.
        // A file included by a rule would only seem to set them, so it may not.
        for (given, name) in [(!file.outages.is_empty(), "outages"), (!file.throttles.is_empty(), "throttles")] {
            if given && depth > 0 {
                return Err((
                    vec![key(name)],
                    format!("`{name}` are read from the top scenario file only: move them there, with a `match` (on `tenant`, say) to narrow them"),
                ));
            }
        }
        let mut channels: [Option<CompiledChannel>; 3] = [None, None, None];
        for (name, spec) in &file.channels {
            let base = vec![key("channels"), key(name)];
            let channel: Channel = name.parse().map_err(|e: String| (base.clone(), e))?;
            channels[channel.index()] = Some(compile_channel(channel, spec, file.time_scale, &base, &base)?);
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut names = std::collections::HashSet::new();
        for (i, rule) in file.rules.iter().enumerate() {
            let at = vec![key("rules"), Seg::Index(i)];
            if !names.insert(rule.name.as_str()) {
                return Err(([&at[..], &[key("name")]].concat(), format!("rule name `{}` is used twice", rule.name)));
            }
            rules.push(compile_rule(rule, &file, &source, depth, &channels, &at)?);
        }
        let magic = MAGIC
            .iter()
            .map(|m| {
                let spec = file.channels.get(m.channel.as_str()).filter(|_| file.magic_recipients)?;
                let compiled = compile_channel(m.channel, &m.channel_spec(spec), file.time_scale, &[], &[])
                    .expect("magic recipients are valid paths");
                Some((m.rule_name().into(), compiled))
            })
            .collect();
        let loaded_at = chrono::Utc::now();
        let mut outages = Vec::with_capacity(file.outages.len());
        for (i, o) in file.outages.iter().enumerate() {
            outages.push(faults::Outage::compile(o, loaded_at, file.time_scale).map_err(|(f, m)| {
                ([vec![key("outages"), Seg::Index(i)], f.into_iter().map(Seg::Key).collect()].concat(), m)
            })?);
        }
        let mut throttles = Vec::with_capacity(file.throttles.len());
        for (i, t) in file.throttles.iter().enumerate() {
            throttles.push(std::sync::Arc::new(faults::Throttle::compile(t).map_err(|(f, m)| {
                ([vec![key("throttles"), Seg::Index(i)], f.into_iter().map(Seg::Key).collect()].concat(), m)
            })?));
        }
        let name = file.name.as_deref().unwrap_or("unnamed").into();
        Ok(Scenario {
            file,
            source,
            version: "".into(),
            text_hash: 0,
            time_scale_override: None,
            name,
            channels,
            rules,
            magic,
            outages,
            throttles,
        })
    }

    /// The same scenario with another `time_scale`.
    pub fn rescaled(&self, time_scale: f64) -> Result<Self> {
        let mut file = self.file.clone();
        file.time_scale = time_scale;
        let mut s = Self::compile(file, self.source.clone(), 0).map_err(|(segs, message)| ScenarioError::Invalid {
            file: self.source.clone(),
            line: 1,
            field: locate::render(&segs),
            message,
        })?;
        s.text_hash = self.text_hash;
        s.time_scale_override = Some(time_scale);
        s.version = s.compute_version();
        Ok(s)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn name_arc(&self) -> &std::sync::Arc<str> {
        &self.name
    }

    /// A short hash that changes whenever the file, a file it includes, or the effective `time_scale` does.
    pub fn version(&self) -> &std::sync::Arc<str> {
        &self.version
    }

    fn compute_version(&self) -> std::sync::Arc<str> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.text_hash.to_le_bytes());
        h.update(&self.file.time_scale.to_bits().to_le_bytes());
        for (sub, _) in self.rules.iter().filter_map(|r| r.sub.as_ref()) {
            h.update(sub.version.as_bytes());
        }
        format!("{:012x}", h.digest() >> 16).into()
    }

    /// The files this scenario was read from: its own and every file its rules include.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.source.clone()];
        for (sub, _) in self.rules.iter().filter_map(|r| r.sub.as_ref()) {
            out.extend(sub.files());
        }
        out
    }

    /// The `time_scale` given with [`Scenario::rescaled`], if any: a reload applies it again.
    pub fn time_scale_override(&self) -> Option<f64> {
        self.time_scale_override
    }

    pub fn seed(&self) -> u64 {
        self.file.seed
    }

    /// Headers the rules match on: the decoder keeps them with each message.
    pub fn rule_headers(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.rules.iter().flat_map(|r| r.matcher.header_names()).map(str::to_ascii_lowercase).collect();
        for (sub, _) in self.rules.iter().filter_map(|r| r.sub.as_ref()) {
            names.extend(sub.rule_headers());
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn has_channel(&self, channel: Channel) -> bool {
        self.channels[channel.index()].is_some()
    }

    /// The lifecycle of a message of which only the channel and payload id are known (so only rules
    /// that need nothing else can match it).
    pub fn plan(&self, channel: Channel, payload_id: &str) -> Option<Plan> {
        self.plan_for(&MessageView::new(channel, payload_id))
    }

    /// The whole lifecycle of one message: a pure function of the scenario and the message (its rule is
    /// chosen by the message's fields; its draws are seeded by (seed, payload id)).
    pub fn plan_for(&self, m: &MessageView<'_>) -> Option<Plan> {
        let (chosen, ch, seed) = self.choose(m)?;
        let mut plan = Self::draw(ch, seed, chosen.rule_name().cloned(), m.channel, m.payload_id);
        // Rate limits and outage windows: decided at receipt, in file order; the first that hits applies.
        if let Some(received_us) = m.received_us {
            let throttled = self.throttles.iter().any(|t| t.apply(m, received_us, &mut plan.steps));
            let outage = if throttled {
                None
            } else {
                self.outages.iter().find(|o| o.apply(m, received_us, &mut plan.steps))
            };
            plan.outage = outage.map(|o| o.name.as_str().into());
            if (throttled || outage.is_some()) && plan.steps.first().is_some_and(|s| s.status == Status::Reject) {
                plan.not_sent.clear();
            }
        }
        Some(plan)
    }

    /// What decides the message's behaviour: the first rule that matches it, else its magic recipient,
    /// else its channel; and the seed of the draws (a `scenario:` rule's file draws with its own).
    /// `None` if the scenario has no such channel.
    pub fn choose(&self, m: &MessageView<'_>) -> Option<(Chosen, &CompiledChannel, u64)> {
        let c = m.channel.index();
        let default = self.channels[c].as_ref()?;
        for (i, r) in self.rules.iter().enumerate() {
            match &r.sub {
                Some((sub, covered)) => {
                    if covered[c] && r.matcher.matches(m) {
                        let (inner, ch, seed) = sub.choose(m)?;
                        let name = match inner.rule_name() {
                            Some(n) => format!("{}/{n}", r.name).into(),
                            None => r.name.clone(),
                        };
                        return Some((Chosen::Rule(i, name), ch, seed));
                    }
                }
                None => {
                    if let Some(ch) = &r.channels[c]
                        && r.matcher.matches(m)
                    {
                        return Some((Chosen::Rule(i, r.name.clone()), ch, self.file.seed));
                    }
                }
            }
        }
        if let Some(i) = rules::magic_index(m.channel, m.recipient)
            && let Some((name, ch)) = &self.magic[i]
        {
            return Some((Chosen::Magic(i, name.clone()), ch, self.file.seed));
        }
        Some((Chosen::Channel, default, self.file.seed))
    }

    /// One lifecycle drawn from `ch`, seeded by (seed, payload id).
    fn draw(ch: &CompiledChannel, seed: u64, rule: Option<std::sync::Arc<str>>, channel: Channel, payload_id: &str) -> Plan {
        let seed = xxhash_rust::xxh3::xxh3_64_with_seed(payload_id.as_bytes(), seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let path = &ch.paths[pick(&ch.cumulative, &mut rng)];
        let error = (!path.errors.is_empty()).then(|| &path.errors[pick(&path.errors_cumulative, &mut rng)]);
        let mut steps = Vec::with_capacity(path.steps.len());
        let (mut due_us, mut attempt) = (0i64, 1u16);
        for (status, sampler) in &path.steps {
            due_us += sampler.sample_us(&mut rng);
            let (error_code, error_reason) = if status.is_failure() {
                let (c, r) = error.cloned().unwrap_or_else(|| default_error(channel, *status, path.bounce_type));
                (Some(c), Some(r))
            } else {
                (None, None)
            };
            steps.push(PlannedStep {
                status: *status,
                attempt,
                due_us,
                error_code,
                error_reason,
                bounce_type: (*status == Status::Bounce).then_some(path.bounce_type),
                fault: None,
            });
            if *status == Status::Deferred {
                attempt += 1;
            }
        }
        let mut not_sent = Vec::new();
        ch.faults.apply(channel, &mut steps, &mut not_sent, &mut rng);
        Plan {
            path: path.name.clone(),
            rule,
            vendor_message_id: vendor_message_id(channel, payload_id),
            steps,
            not_sent,
            format: ch.format.clone(),
            outage: None,
            callback: None,
        }
    }

    /// Expected share of each path per channel, for checks and summaries.
    pub fn path_shares(&self, channel: Channel) -> Vec<(String, Vec<Status>, f64)> {
        let Some(ch) = &self.channels[channel.index()] else { return Vec::new() };
        let total = *ch.cumulative.last().unwrap_or(&1.0);
        let mut prev = 0.0;
        ch.paths
            .iter()
            .zip(&ch.cumulative)
            .map(|(p, c)| {
                let share = (c - prev) / total;
                prev = *c;
                (p.name.to_string(), p.steps.iter().map(|s| s.0).collect(), share)
            })
            .collect()
    }

    /// The readable summary printed by `understudy scenario check`.
    pub fn summary(&self) -> String {
        let f = &self.file;
        let mut out = format!(
            "{}: scenario `{}`, seed {}, time_scale {}\n",
            self.source.display(),
            self.name(),
            f.seed,
            f.time_scale
        );
        for (name, spec) in &f.channels {
            let Ok(channel) = name.parse::<Channel>() else { continue };
            out.push_str(&format!("  {channel}\n    paths:\n"));
            for (name, steps, share) in self.path_shares(channel) {
                out.push_str(&format!(
                    "      {:>6.2}%  {:<26} {}\n",
                    share * 100.0,
                    name,
                    steps.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" → ")
                ));
            }
            out.push_str("    delays (from the previous step, after time_scale):\n");
            for (status, delay) in &spec.delays {
                out.push_str(&format!("      {:<12} {}\n", status, delay.describe(f.time_scale)));
            }
            for path in &spec.paths {
                for (status, delay) in &path.delays {
                    out.push_str(&format!(
                        "      {:<12} {}  (path {})\n",
                        status,
                        delay.describe(f.time_scale),
                        path.name
                    ));
                }
            }
        }
        for (name, spec) in &f.channels {
            if let Some(faults) = &spec.faults {
                out.push_str(&format!("  {name} faults: {}\n", serde_json::to_string(faults).unwrap_or_default()));
            }
        }
        for o in &f.outages {
            out.push_str(&format!("  outage {}: {}\n", o.name, serde_json::to_string(o).unwrap_or_default()));
        }
        for t in &f.throttles {
            out.push_str(&format!("  throttle {}: {}\n", t.name, serde_json::to_string(t).unwrap_or_default()));
        }
        if !f.rules.is_empty() {
            out.push_str("  rules (in order; the first that matches decides):\n");
            for (rule, compiled) in f.rules.iter().zip(&self.rules) {
                let when = serde_json::to_string(&rule.when).unwrap_or_default();
                let channels: Vec<&str> = Channel::ALL
                    .iter()
                    .filter(|c| {
                        compiled.channels[c.index()].is_some() || compiled.sub.as_ref().is_some_and(|s| s.1[c.index()])
                    })
                    .map(|c| c.as_str())
                    .collect();
                let then = match (&rule.path, &rule.paths, &rule.channels) {
                    _ if rule.scenario.is_some() => {
                        format!("scenario {}", rule.scenario.as_deref().unwrap_or(Path::new("")).display())
                    }
                    (Some(p), _, _) => format!("path {p}"),
                    (_, Some(ps), _) => format!("{} path(s) of its own", ps.len()),
                    (_, _, Some(_)) => "a sub-scenario".to_owned(),
                    _ => "the channel's paths".to_owned(),
                };
                let mut extra = Vec::new();
                if !rule.delays.is_empty() {
                    extra.push(format!("delays of {}", rule.delays.keys().cloned().collect::<Vec<_>>().join(", ")));
                }
                if !rule.errors.is_empty() {
                    extra.push(format!(
                        "error {}",
                        rule.errors.iter().map(|e| e.code.as_str()).collect::<Vec<_>>().join("/")
                    ));
                }
                let extra = if extra.is_empty() { String::new() } else { format!(", {}", extra.join(", ")) };
                out.push_str(&format!("    {:<20} {} on {} → {then}{extra}\n", rule.name, when, channels.join(", ")));
            }
        }
        out.push_str(&format!(
            "  magic recipients: {}\n",
            if f.magic_recipients { "on (`bounce@understudy.test`, `+15005550001`, ...)" } else { "off" }
        ));
        out
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Compile one channel's behaviour. `base` locates the spec's own keys; `paths_at` locates its `paths`
/// (they differ when a rule takes a channel's delays but writes its own paths).
fn compile_channel(
    channel: Channel,
    spec: &ChannelSpec,
    time_scale: f64,
    base: &[Seg],
    paths_at: &[Seg],
) -> Result<CompiledChannel, (Vec<Seg>, String)> {
    let key = |s: &str| Seg::Key(s.to_owned());
    let base = base.to_vec();
    let paths_base = paths_at.to_vec();
    let at = |rest: &[Seg]| [base.clone(), rest.to_vec()].concat();
    let channel_delays = status_keys(channel, &spec.delays, &at(&[key("delays")]))?;
    for (status, delay) in &channel_delays {
        delay.validate().map_err(|(f, m)| (at(&[key("delays"), key(status.as_str()), key(f)]), m))?;
    }
    if spec.paths.is_empty() {
        return Err(([&paths_base[..], &[key("paths")]].concat(), "give at least one outcome path".into()));
    }
    let mut cumulative = Vec::new();
    let mut paths = Vec::new();
    let mut total = 0.0;
    let mut names = std::collections::HashSet::new();
    for (i, path) in spec.paths.iter().enumerate() {
        let p = |rest: &[Seg]| [&paths_base[..], &[key("paths"), Seg::Index(i)][..], rest].concat();
        if !names.insert(path.name.as_str()) {
            return Err((p(&[key("name")]), format!("path name `{}` is used twice", path.name)));
        }
        if !(path.weight.is_finite() && path.weight >= 0.0) {
            return Err((p(&[key("weight")]), format!("must be zero or more, not {}", path.weight)));
        }
        if path.steps.is_empty() {
            return Err((p(&[key("steps")]), "give at least one status, e.g. `[SEND, DELIVERY]`".into()));
        }
        let path_delays = status_keys(channel, &path.delays, &p(&[key("delays")]))?;
        let mut prev = None;
        let mut steps = Vec::new();
        for (j, &status) in path.steps.iter().enumerate() {
            if !channel.allows(prev, status) {
                let allowed: Vec<Status> =
                    channel.statuses().iter().copied().filter(|s| channel.allows(prev, *s)).collect();
                let after = prev.map_or("as the first status".to_owned(), |s| format!("after {s}"));
                return Err((
                    p(&[key("steps"), Seg::Index(j)]),
                    format!(
                        "{status} cannot come {after} on {channel}; allowed here: {}",
                        if allowed.is_empty() { "nothing (the path must end)".into() } else { list(&allowed) }
                    ),
                ));
            }
            let delay = path_delays.get(&status).or_else(|| channel_delays.get(&status)).ok_or_else(|| {
                    (
                        p(&[key("steps"), Seg::Index(j)]),
                        format!(
                            "no delay for {status}: add `channels.{channel}.delays.{status}` or a `delays.{status}` on this path"
                        ),
                    )
                })?;
            steps.push((status, delay.sampler(time_scale)));
            prev = Some(status);
        }
        for (status, delay) in &path_delays {
            delay.validate().map_err(|(f, m)| (p(&[key("delays"), key(status.as_str()), key(f)]), m))?;
            if !path.steps.contains(status) {
                return Err((
                    p(&[key("delays"), key(status.as_str())]),
                    format!("{status} is not a step of this path"),
                ));
            }
        }
        let last = *path.steps.last().expect("non-empty");
        if !last.can_end() {
            return Err((
                p(&[key("steps")]),
                format!("a lifecycle cannot end on {last}; end it on a delivery or failure status"),
            ));
        }
        if path.bounce_type.is_some() && !path.steps.contains(&Status::Bounce) {
            return Err((p(&[key("bounce_type")]), "only a path with a BOUNCE step has a bounce type".into()));
        }
        let mut errors_cumulative = Vec::new();
        let mut errors = Vec::new();
        let mut etotal = 0.0;
        for (k, e) in path.errors.iter().enumerate() {
            if !(e.weight.is_finite() && e.weight > 0.0) {
                return Err((p(&[key("errors"), Seg::Index(k), key("weight")]), "must be above zero".into()));
            }
            etotal += e.weight;
            errors_cumulative.push(etotal);
            errors.push((e.code.clone(), e.reason.clone()));
        }
        if !path.errors.is_empty() && !path.steps.iter().any(|s| s.is_failure()) {
            return Err((p(&[key("errors")]), "this path has no failure step to carry an error code".into()));
        }
        total += path.weight;
        cumulative.push(total);
        paths.push(CompiledPath {
            name: path.name.as_str().into(),
            steps,
            errors_cumulative,
            errors,
            bounce_type: path.bounce_type.unwrap_or(BounceType::Hard),
        });
    }
    if total <= 0.0 {
        return Err((
            at(&[key("paths")]),
            "the path weights add up to zero; give at least one a weight above zero".into(),
        ));
    }
    let faults = match &spec.faults {
        Some(f) => faults::Faults::compile(f, channel, time_scale).map_err(|(fields, m)| {
            let mut at = [&base[..], &[key("faults")]].concat();
            at.extend(fields.into_iter().map(Seg::Key));
            (at, m)
        })?,
        None => faults::Faults::default(),
    };
    let format_at = || [&base[..], &[key("ack_format")]].concat();
    spec.ack_format.check(channel, None).map_err(|m| (format_at(), m))?;
    let deferrals = spec.faults.as_ref().is_some_and(|f| f.deferrals.is_some());
    for status in spec.paths.iter().flat_map(|p| &p.steps).chain(deferrals.then_some(&Status::Deferred)) {
        spec.ack_format.check(channel, Some(*status)).map_err(|m| (format_at(), m))?;
    }
    Ok(CompiledChannel { cumulative, paths, faults, format: spec.ack_format.scaled(time_scale) })
}

/// Compile one rule against the scenario's channels.
fn compile_rule(
    rule: &RuleSpec,
    file: &ScenarioFile,
    source: &Path,
    depth: usize,
    channels: &[Option<CompiledChannel>; 3],
    at: &[Seg],
) -> Result<CompiledRule, (Vec<Seg>, String)> {
    let key = |s: &str| Seg::Key(s.to_owned());
    let here = |rest: &[&str]| [at, &rest.iter().map(|s| key(s)).collect::<Vec<_>>()[..]].concat();
    let matcher = Matcher::compile(&rule.when).map_err(|(f, m)| {
        (here(&[&["match"][..], &f.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat()), m)
    })?;
    if let Some(sub) = &rule.scenario {
        let more = [rule.path.is_some(), rule.paths.is_some(), rule.channels.is_some(), !rule.delays.is_empty()]
            .into_iter()
            .chain([!rule.errors.is_empty(), rule.bounce_type.is_some(), rule.faults.is_some()])
            .any(|g| g);
        if more {
            return Err((
                here(&["scenario"]),
                "a rule with `scenario` takes everything from that file; leave out `path`, `paths`, `channels`, `delays`, `errors`, `bounce_type` and `faults`".into(),
            ));
        }
        if depth >= MAX_NESTING {
            return Err((here(&["scenario"]), format!("scenario files nest more than {MAX_NESTING} deep: do they include each other?")));
        }
        let path = source.parent().unwrap_or(Path::new(".")).join(sub);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| (here(&["scenario"]), format!("cannot read {}: {e}", path.display())))?;
        let sub = Scenario::parse_at(&text, &path, Some(file.time_scale), depth + 1)
            .map_err(|e| (here(&["scenario"]), format!("in {e}")))?;
        let covered = Channel::ALL.map(|c| matcher.covers(c) && sub.has_channel(c) && channels[c.index()].is_some());
        if !covered.iter().any(|c| *c) {
            return Err((here(&["match"]), "the rule applies to no channel both scenarios have".into()));
        }
        return Ok(CompiledRule {
            name: rule.name.as_str().into(),
            matcher,
            channels: [None, None, None],
            sub: Some((std::sync::Arc::new(sub), covered)),
        });
    }
    let given = [rule.path.is_some(), rule.paths.is_some(), rule.channels.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err((here(&[]), "give at most one of `path`, `paths` and `channels`".into()));
    }
    // Where each channel's behaviour comes from: the sub-scenario, or the scenario itself.
    let sub = match &rule.channels {
        Some(sub) => {
            let mut out: [Option<(&ChannelSpec, Vec<Seg>)>; 3] = [None, None, None];
            for (name, spec) in sub {
                let at = here(&["channels", name]);
                let channel: Channel = name.parse().map_err(|e: String| (at.clone(), e))?;
                out[channel.index()] = Some((spec, at));
            }
            out
        }
        None => Channel::ALL
            .map(|c| file.channels.get(c.as_str()).map(|spec| (spec, vec![key("channels"), key(c.as_str())]))),
    };
    let mut compiled: [Option<CompiledChannel>; 3] = [None, None, None];
    let mut used_delays = std::collections::HashSet::new();
    for channel in Channel::ALL {
        if !matcher.covers(channel) || channels[channel.index()].is_none() {
            continue;
        }
        let Some((base_spec, base_at)) = &sub[channel.index()] else { continue };
        let mut spec = (*base_spec).clone();
        let mut paths_at = base_at.clone();
        if let Some(name) = &rule.path {
            spec.paths.retain(|p| &p.name == name);
            // A channel without the path is not caught by the rule, unless the rule names the channel.
            if spec.paths.is_empty() && rule.when.channels.is_empty() {
                continue;
            }
            if spec.paths.is_empty() {
                let known: Vec<&str> = base_spec.paths.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    here(&["path"]),
                    format!(
                        "{channel} has no path `{name}` (its paths: {}); limit the rule with `match.channels`",
                        known.join(", ")
                    ),
                ));
            }
            spec.paths[0].weight = 1.0;
        }
        if let Some(paths) = &rule.paths {
            spec.paths = paths.clone();
            paths_at = at.to_vec();
        }
        for (status, delay) in &rule.delays {
            if status.parse::<Status>().is_ok_and(|s| channel.statuses().contains(&s)) {
                spec.delays.insert(status.clone(), delay.clone());
                used_delays.insert(status.as_str());
            }
        }
        for path in &mut spec.paths {
            // Delays given by the rule win over the path's own.
            path.delays.retain(|s, _| !rule.delays.contains_key(s));
            if !rule.errors.is_empty() && path.steps.iter().any(|s| s.is_failure()) {
                path.errors = rule.errors.clone();
            }
            if rule.bounce_type.is_some() && path.steps.contains(&Status::Bounce) {
                path.bounce_type = rule.bounce_type;
            }
        }
        if let Some(f) = &rule.faults {
            faults::Faults::compile(f, channel, file.time_scale).map_err(|(fields, m)| {
                (here(&[&["faults"][..], &fields.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat()), m)
            })?;
            spec.faults = Some(f.clone());
        }
        compiled[channel.index()] = Some(compile_channel(channel, &spec, file.time_scale, base_at, &paths_at)?);
    }
    if compiled.iter().all(Option::is_none) {
        return Err(match &rule.path {
            Some(name) => (here(&["path"]), format!("no channel of the scenario has a path `{name}`")),
            None => (here(&["match"]), "the rule applies to no channel of the scenario".into()),
        });
    }
    for (status, delay) in &rule.delays {
        delay.validate().map_err(|(f, m)| (here(&["delays", status, f]), m))?;
        if !used_delays.contains(status.as_str()) {
            return Err((here(&["delays", status]), format!("no channel the rule applies to has a {status} status")));
        }
    }
    for (k, e) in rule.errors.iter().enumerate() {
        if !(e.weight.is_finite() && e.weight > 0.0) {
            let mut f = here(&["errors"]);
            f.extend([Seg::Index(k), key("weight")]);
            return Err((f, "must be above zero".into()));
        }
    }
    Ok(CompiledRule { name: rule.name.as_str().into(), matcher, channels: compiled, sub: None })
}

/// The JSON Schema of scenario files, as written to `scenarios/schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::generate::SchemaSettings::draft07().into_generator().into_root_schema_for::<ScenarioFile>();
    serde_json::to_string_pretty(&schema).expect("a schema serializes")
}

/// Parse the status keys of a `delays` map, checking they belong to the channel.
fn status_keys<'a>(
    channel: Channel,
    delays: &'a BTreeMap<String, Delay>,
    at: &[Seg],
) -> Result<BTreeMap<Status, &'a Delay>, (Vec<Seg>, String)> {
    let mut out = BTreeMap::new();
    for (name, delay) in delays {
        let here = [at, &[Seg::Key(name.clone())]].concat();
        let status: Status = name.parse().map_err(|_| {
            (here.clone(), format!("unknown status `{name}`; {channel} statuses are {}", list(channel.statuses())))
        })?;
        if !channel.statuses().contains(&status) {
            return Err((
                here,
                format!("{channel} has no {status} status; {channel} statuses are {}", list(channel.statuses())),
            ));
        }
        out.insert(status, delay);
    }
    Ok(out)
}

fn pick<R: Rng>(cumulative: &[f64], rng: &mut R) -> usize {
    let total = *cumulative.last().unwrap_or(&0.0);
    let r: f64 = rng.random::<f64>() * total;
    cumulative.iter().position(|c| r < *c).unwrap_or(cumulative.len() - 1)
}

fn list(statuses: &[Status]) -> String {
    statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Make serde's wording point at what to write instead.
fn explain_serde(msg: &str) -> String {
    if msg.contains("unknown variant") && msg.contains("SEND") {
        format!("{msg} (statuses are upper case)")
    } else if msg.contains("unknown variant") && msg.contains("email") {
        format!("{msg} (channels are `email`, `sms`, `whatsapp`)")
    } else {
        msg.to_owned()
    }
}

/// The error a vendor of `channel` would report for `status` when the scenario names none.
pub fn default_error(channel: Channel, status: Status, bounce: BounceType) -> (String, String) {
    let (c, r) = match (channel, status) {
        (Channel::Email, Status::Bounce) if bounce == BounceType::Soft => ("452 4.2.2", "mailbox full"),
        (Channel::Email, Status::Bounce) => ("550 5.1.1", "recipient address rejected: user unknown"),
        (Channel::Email, Status::Deferred) => ("421 4.7.0", "try again later"),
        (Channel::Email, Status::Reject) => ("554 5.7.1", "message rejected: suppressed recipient"),
        (Channel::Email, Status::Complaint) => ("abuse", "recipient marked the message as spam"),
        (Channel::Sms, Status::Reject) => ("21610", "attempt to send to unsubscribed recipient"),
        (Channel::Sms, Status::Deferred) => ("30001", "queue overflow"),
        (Channel::Sms, Status::Undelivered) => ("30003", "unreachable destination handset"),
        (Channel::Whatsapp, Status::Reject) => ("131026", "message undeliverable"),
        (Channel::Whatsapp, Status::Deferred) => ("130429", "rate limit hit"),
        (Channel::Whatsapp, Status::Undelivered) => {
            ("131047", "re-engagement message: more than 24 hours since the customer last replied")
        }
        _ => ("0", "unspecified vendor error"),
    };
    (c.to_owned(), r.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
name: t
seed: 42
time_scale: 0.5
channels:
  email:
    delays:
      SEND: { dist: fixed, value: 100ms }
      DELIVERY: { dist: lognormal, median: 1s, p99: 10s }
      OPEN: { dist: exponential, mean: 1m }
      BOUNCE: { dist: uniform, min: 1s, max: 2s }
      DEFERRED: { dist: fixed, value: 5s }
    paths:
      - { name: opened, weight: 70, steps: [SEND, DELIVERY, OPEN] }
      - { name: delivered, weight: 20, steps: [SEND, DEFERRED, DELIVERY] }
      - name: bounced
        weight: 10
        steps: [SEND, BOUNCE]
        bounce_type: soft
  whatsapp:
    delays:
      SEND: { dist: fixed, value: 10ms }
      DELIVERY: { dist: normal, mean: 1s, stddev: 200ms }
      READ: { dist: pareto, scale: 1s, shape: 1.5, max: 1h }
    paths:
      - { name: read, weight: 1, steps: [SEND, DELIVERY, READ] }
"#;

    fn parse(text: &str) -> Result<Scenario> {
        Scenario::parse(text, Path::new("s.yaml"))
    }

    fn err(text: &str) -> (usize, String, String) {
        match parse(text).unwrap_err() {
            ScenarioError::Invalid { line, field, message, .. } => (line, field, message),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn same_input_same_lifecycle_and_seeds_differ() {
        let s = parse(GOOD).unwrap();
        let a = s.plan(Channel::Email, "p-1").unwrap();
        assert_eq!(a, s.plan(Channel::Email, "p-1").unwrap());
        let other = parse(&GOOD.replace("seed: 42", "seed: 43")).unwrap();
        let differs =
            (0..50).any(|i| s.plan(Channel::Email, &format!("p-{i}")) != other.plan(Channel::Email, &format!("p-{i}")));
        assert!(differs);
        assert!(s.plan(Channel::Sms, "p-1").is_none());
    }

    #[test]
    fn attempts_advance_after_deferral_and_failures_carry_codes() {
        let s = parse(GOOD).unwrap();
        let mut seen_deferred = false;
        for i in 0..500 {
            let plan = s.plan(Channel::Email, &format!("m{i}")).unwrap();
            if &*plan.path == "delivered" {
                seen_deferred = true;
                assert_eq!(plan.steps[1].status, Status::Deferred);
                assert_eq!(plan.steps[2].attempt, 2);
                assert!(plan.steps[1].error_code.is_some());
            }
            if &*plan.path == "bounced" {
                assert_eq!(plan.steps[1].bounce_type, Some(BounceType::Soft));
                assert_eq!(plan.steps[1].error_code.as_deref(), Some("452 4.2.2"));
            }
            let dues: Vec<i64> = plan.steps.iter().map(|s| s.due_us).collect();
            assert!(dues.windows(2).all(|w| w[0] <= w[1]));
        }
        assert!(seen_deferred);
    }

    #[test]
    fn path_weights_are_respected() {
        let s = parse(GOOD).unwrap();
        let n = 20_000;
        let opened =
            (0..n).filter(|i| s.plan(Channel::Email, &format!("x{i}")).unwrap().path.as_ref() == "opened").count();
        let share = opened as f64 / n as f64;
        assert!((share - 0.7).abs() < 0.02, "{share}");
    }

    #[test]
    fn validation_names_line_field_and_fix() {
        let (line, field, msg) = err(&GOOD.replace("[SEND, BOUNCE]", "[SEND, READ]"));
        assert_eq!(field, "channels.email.paths[2].steps[1]");
        assert_eq!(line, 18);
        assert!(msg.contains("READ cannot come after SEND on email"), "{msg}");

        let (line, field, msg) = err(&GOOD.replace("median: 1s, p99: 10s", "median: 1s, p99: 500ms"));
        assert_eq!((line, field.as_str()), (9, "channels.email.delays.DELIVERY.p99"));
        assert!(msg.contains("must be above `median`"), "{msg}");

        let (line, field, msg) = err(&GOOD.replace("time_scale: 0.5", "time_scale: 0.5\ncolour: red"));
        assert_eq!((line, field.as_str()), (5, "colour"));
        assert!(msg.contains("unknown field `colour`"), "{msg}");

        let (_, field, msg) = err(&GOOD.replace("value: 100ms", "value: soon"));
        assert_eq!(field, "channels.email.delays.SEND");
        assert!(msg.contains("`soon` is not a duration"), "{msg}");

        let (line, field, msg) = err(&GOOD.replace("  whatsapp:", "  fax:"));
        assert_eq!((line, field.as_str()), (20, "channels.fax"));
        assert!(msg.contains("unknown channel `fax`"), "{msg}");

        let (line, field, msg) =
            err(&GOOD.replace("      OPEN: { dist: exponential", "      READ: { dist: exponential"));
        assert_eq!((line, field.as_str()), (10, "channels.email.delays.READ"));
        assert!(msg.contains("email has no READ status"), "{msg}");

        let (_, field, msg) = err(&GOOD.replace("      OPEN: { dist: exponential, mean: 1m }\n", ""));
        assert_eq!(field, "channels.email.paths[0].steps[2]");
        assert!(msg.contains("no delay for OPEN"), "{msg}");

        let (_, field, msg) = err(&GOOD.replace("weight: 70", "weight: -1"));
        assert_eq!(field, "channels.email.paths[0].weight");
        assert!(msg.contains("zero or more"), "{msg}");

        let (_, _, msg) = err(&GOOD.replace("[SEND, DELIVERY, READ]", "[SEND]"));
        assert!(msg.contains("cannot end on SEND"), "{msg}");
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!s.summary().is_empty());
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    const RULES: &str = r#"
rules:
  - name: vip
    match: { recipient: "*@vip.example.com" }
    path: bounced
  - name: all-email-slow
    match: { channels: [email] }
    delays:
      SEND: { dist: fixed, value: 10s }
  - name: wa-reject
    match: { channels: [whatsapp], tenant: acme }
    paths:
      - { name: rejected, weight: 1, steps: [REJECT], errors: [{ code: "X1", reason: "no" }] }
"#;

    fn with_rules(rules: &str) -> String {
        let text = GOOD.replace(
            "      READ: { dist: pareto",
            "      REJECT: { dist: fixed, value: 1ms }\n      READ: { dist: pareto",
        );
        format!("{text}{rules}")
    }

    #[test]
    fn rules_are_tried_in_order_before_magic_recipients() {
        let s = parse(&with_rules(RULES)).unwrap();
        let plan = |channel, recipient: &str, tenant: Option<&str>| {
            let mut v = MessageView::new(channel, "p-1");
            v.recipient = recipient;
            v.tenant = tenant;
            s.plan_for(&v).unwrap()
        };
        let p = plan(Channel::Email, "x@vip.example.com", None);
        assert_eq!((p.rule.as_deref(), &*p.path), (Some("vip"), "bounced"));
        // The second rule catches all other email, magic recipients too: rules come first.
        let p = plan(Channel::Email, "bounce@understudy.test", None);
        assert_eq!(p.rule.as_deref(), Some("all-email-slow"));
        assert_eq!(p.steps[0].due_us, 5_000_000, "10 s at time_scale 0.5");
        let p = plan(Channel::Whatsapp, "+15005551004", Some("acme"));
        assert_eq!(
            (p.rule.as_deref(), p.steps[0].status, p.steps[0].error_code.as_deref()),
            (Some("wa-reject"), Status::Reject, Some("X1"))
        );
        let p = plan(Channel::Whatsapp, "+15005551004", None);
        assert_eq!((p.rule.as_deref(), p.steps[0].status), (Some("magic:+15005551004"), Status::Reject));
        assert_eq!(p.steps[0].error_code.as_deref(), Some("130429"));
        let p = plan(Channel::Whatsapp, "+15005551000", None);
        assert_eq!(
            p.steps.iter().map(|s| s.status).collect::<Vec<_>>(),
            [Status::Send, Status::Delivery, Status::Read]
        );
        let p = plan(Channel::Whatsapp, "+15550001", None);
        assert_eq!(p.rule, None);
        // Off: the channel decides.
        let off = parse(&with_rules("magic_recipients: false\n")).unwrap();
        let mut v = MessageView::new(Channel::Whatsapp, "p-1");
        v.recipient = "+15005551004";
        assert_eq!(off.plan_for(&v).unwrap().rule, None);
        // Same message, same plan.
        assert_eq!(plan(Channel::Email, "x@vip.example.com", None), plan(Channel::Email, "x@vip.example.com", None));
    }

    #[test]
    fn rule_errors_name_line_and_field() {
        let cases = [
            ("    path: bounced", "    path: nope", "rules[0].path", "no channel of the scenario has a path `nope`"),
            (
                "recipient: \"*@vip.example.com\"",
                "recipient: { regex: \"(\" }",
                "rules[0].match.recipient",
                "not a valid regular expression",
            ),
            (
                "recipient: \"*@vip.example.com\"",
                "fields: { tier: gold }",
                "rules[0].match.fields.tier",
                "not a JSON pointer",
            ),
            (
                "    path: bounced",
                "    path: bounced\n    paths: []",
                "rules[0]",
                "at most one of `path`, `paths` and `channels`",
            ),
            (
                "SEND: { dist: fixed, value: 10s }",
                "READ: { dist: fixed, value: 10s }",
                "rules[1].delays.READ",
                "no channel the rule applies to has a READ status",
            ),
            ("steps: [REJECT]", "steps: [SEND, REJECT]", "rules[2].paths[0].steps[1]", "REJECT cannot come after SEND"),
            ("name: all-email-slow", "name: vip", "rules[1].name", "rule name `vip` is used twice"),
            ("channels: [whatsapp], tenant", "channels: [sms], tenant", "rules[2].match", "applies to no channel"),
        ];
        for (from, to, field, message) in cases {
            let text = with_rules(&RULES.replace(from, to));
            assert_ne!(text, with_rules(RULES), "{from}");
            let (line, f, msg) = err(&text);
            assert_eq!(f, field, "{to}: {msg}");
            assert!(msg.contains(message), "{to}: {msg}");
            let at = text.lines().nth(line - 1).unwrap();
            assert!(!at.trim().is_empty(), "{to}: line {line}");
        }
    }

    #[test]
    fn scenario_rules_hand_messages_to_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let include = |file: &str, extra: &str| {
            format!("{GOOD}rules:\n  - name: team\n    match: {{ tenant: team-* }}\n    scenario: {file}\n{extra}")
        };
        let sub = write("sub.yaml", &GOOD.replace("seed: 42", "seed: 7").replace("time_scale: 0.5", "time_scale: 9"));
        let main = Scenario::load(write("main.yaml", &include("sub.yaml", ""))).unwrap();
        let sub = Scenario::load(sub).unwrap().rescaled(0.5).unwrap();
        let mut v = MessageView::new(Channel::Email, "p-9");
        v.tenant = Some("team-x");
        let (a, b) = (main.plan_for(&v).unwrap(), sub.plan_for(&v).unwrap());
        assert_eq!(a.rule.as_deref(), Some("team"));
        assert_eq!(a.steps, b.steps, "the included file's seed and paths, this file's time_scale");
        v.tenant = None;
        assert_eq!(main.plan_for(&v).unwrap().rule, None);

        let err = |path: std::path::PathBuf| Scenario::load(path).unwrap_err().to_string();
        let e = err(write("self.yaml", &include("self.yaml", "")));
        assert!(e.contains("`rules[0].scenario`: ") && e.contains("nest more than 8 deep"), "{e}");
        let e = err(write("missing.yaml", &include("nowhere.yaml", "")));
        assert!(e.contains("cannot read") && e.contains("nowhere.yaml"), "{e}");
        write("bad.yaml", &GOOD.replace("weight: 70", "weight: -1"));
        let e = err(write("uses-bad.yaml", &include("bad.yaml", "")));
        assert!(e.contains("uses-bad.yaml:30: `rules[0].scenario`: in ") && e.contains("bad.yaml:14: `channels.email.paths[0].weight`: must be zero or more"), "{e}");
        let e = err(write("both.yaml", &include("sub.yaml", "    path: opened\n")));
        assert!(e.contains("takes everything from that file"), "{e}");
        write("down.yaml", &format!("{GOOD}outages:\n  - name: down\n    from: 1m\n    for: 1m\n"));
        let e = err(write("uses-down.yaml", &include("down.yaml", "")));
        assert!(e.contains("`rules[0].scenario`: in ") && e.contains("down.yaml:") && e.contains("`outages`: `outages` are read from the top scenario file only"), "{e}");
    }

    #[test]
    fn schema_file_is_in_sync_and_shipped_scenarios_follow_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let schema = json_schema();
        if std::env::var_os("UNDERSTUDY_WRITE_SCHEMA").is_some() {
            std::fs::write(dir.join("schema.json"), format!("{schema}\n")).unwrap();
        }
        let file = std::fs::read_to_string(dir.join("schema.json")).unwrap_or_default();
        assert!(
            file.trim_end() == schema,
            "scenarios/schema.json is stale: run `UNDERSTUDY_WRITE_SCHEMA=1 cargo test --lib schema_file` (or `understudy scenario schema > scenarios/schema.json`)"
        );
        let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let doc: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                n += 1;
            }
        }
        assert!(n >= 4);
        // And the schema does reject what the parser rejects.
        let bad: serde_json::Value = serde_yaml::from_str("seed: 1\nchannels: {}\ncolour: red").unwrap();
        assert!(!validator.is_valid(&bad));
    }

    proptest! {
        #[test]
        fn planned_lifecycles_never_break_the_state_machine(payload in "[a-z0-9-]{1,24}", seed in any::<u64>()) {
            let text = GOOD.replace("seed: 42", &format!("seed: {seed}"));
            let s = parse(&text).unwrap();
            for channel in [Channel::Email, Channel::Whatsapp] {
                let plan = s.plan(channel, &payload).unwrap();
                let mut prev = None;
                for step in &plan.steps {
                    prop_assert!(channel.allows(prev, step.status), "{:?} -> {:?}", prev, step.status);
                    prop_assert!(step.due_us >= 0);
                    prev = Some(step.status);
                }
                prop_assert!(prev.unwrap().can_end());
            }
        }
    }
}
