//! Fault injection: what real vendors do to acks besides the happy path. Per-message faults (duplicates,
//! acks out of order, skipped steps, dropped and corrupted acks, deferrals with backoff, validity expiry)
//! are drawn from the message's own seeded RNG, so they are part of its deterministic plan. Outage
//! windows depend on the receipt time and throttling on the arrival rate; both are decided when the
//! message is planned, and the plan is stored, so a resumed lifecycle keeps them.
//!
//! Every injected fault is marked: on the planned step (and so on the stored event, `events.fault`), in
//! the plan's list of steps that were not sent, and in `messages.faults`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Dur;
use super::rules::{MatchSpec, Matcher, MessageView};
use crate::model::{BounceType, Channel, Fault, Status};
use crate::plan::{NotSent, PlannedStep};

/// Per-message faults, on a channel or a rule. Probabilities are between 0 and 1.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsSpec {
    /// Chance that each ack is sent twice (the copy up to 1 s later, with the same event id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<f64>,
    /// Chance that a message's last two acks come in the wrong order (READ before DELIVERY, as WhatsApp
    /// does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_order: Option<f64>,
    /// Chance, by status, that a step is never reported (`{ DELIVERY: 0.1 }`: READ without DELIVERY). Never
    /// the last step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skip: BTreeMap<String, f64>,
    /// Chance that each ack is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<f64>,
    /// Chance that each ack is sent as invalid JSON (to test the platform's own dead-letter handling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<f64>,
    /// Deferrals with retries and backoff before the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferrals: Option<DeferralSpec>,
    /// Validity period: an outcome that would come later is UNDELIVERED (email: a soft BOUNCE) at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<ExpirySpec>,
}

/// Deferrals: with `probability`, `retries` DEFERRED acks after SEND, the first `backoff` after SEND and
/// each next one `multiplier` times longer (at most `max`); the outcome follows the last.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeferralSpec {
    pub probability: f64,
    #[serde(default = "three")]
    pub retries: u16,
    pub backoff: Dur,
    #[serde(default = "two")]
    pub multiplier: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Dur>,
    /// Code of the DEFERRED acks (default: the channel's usual one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn three() -> u16 {
    3
}

fn two() -> f64 {
    2.0
}

/// A validity period, counted from receipt.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpirySpec {
    pub after: Dur,
    /// Default: sms `30036` validity period expired, whatsapp `131026`, email `4.4.7` message expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// When an outage starts: a duration after this scenario version was loaded, or a time (RFC 3339).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum When {
    At(#[schemars(with = "String")] DateTime<Utc>),
    After(Dur),
}

/// What happens to messages received during an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// REJECT at once, with the outage's code.
    #[default]
    Reject,
    /// Held: the whole lifecycle starts when the window ends.
    Delay,
}

/// A vendor outage window.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutageSpec {
    pub name: String,
    /// Which messages it hits (default: all).
    #[serde(rename = "match", default)]
    pub when: MatchSpec,
    pub from: When,
    /// How long it lasts.
    #[serde(rename = "for")]
    pub duration: Dur,
    #[serde(default)]
    pub mode: OutageMode,
    /// Error code of rejected messages (default: the channel's usual REJECT code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a throttle counts separately.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKey {
    /// One limit per channel.
    #[default]
    Channel,
    /// One limit per tenant.
    Tenant,
    /// One limit per value of a JSON pointer (a sender id, say): `{ field: /sender }`.
    Field(String),
}

/// `channel`, `tenant` or `{ field: /pointer }`, as the scenario file writes it (serde_yaml would want a
/// `!field` tag for the last).
impl<'de> Deserialize<'de> for ThrottleKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "`channel`, `tenant` or `{ field: /json/pointer }`";
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ThrottleKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ThrottleKey, E> {
                match v {
                    "channel" => Ok(ThrottleKey::Channel),
                    "tenant" => Ok(ThrottleKey::Tenant),
                    _ => Err(E::custom(format!("unknown key `{v}`; expected {EXPECTED}"))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ThrottleKey, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else { return Err(A::Error::custom(format!("expected {EXPECTED}"))) };
                if key != "field" {
                    return Err(A::Error::custom(format!("unknown key `{key}`; expected {EXPECTED}")));
                }
                let pointer: String = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(format!("one key only; expected {EXPECTED}")));
                }
                Ok(ThrottleKey::Field(pointer))
            }
        }
        d.deserialize_any(V)
    }
}

/// A rate limit: beyond `rate` messages a second (with bursts of `burst`), messages are rejected with
/// the vendor's rate-limit code.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub when: MatchSpec,
    /// Messages a second.
    pub rate: f64,
    /// Messages at once (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    #[serde(default)]
    pub per: ThrottleKey,
    /// Default: whatsapp `130429` rate limit hit, sms `30001` queue overflow, email `421 4.7.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Validated [`FaultsSpec`], delays in microseconds after `time_scale`.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    duplicate: f64,
    out_of_order: f64,
    skip: Vec<(Status, f64)>,
    drop: f64,
    corrupt: f64,
    deferrals: Option<Deferrals>,
    expiry: Option<(i64, Option<String>, Option<String>)>,
}

#[derive(Clone, Debug)]
struct Deferrals {
    probability: f64,
    retries: u16,
    backoff_us: f64,
    multiplier: f64,
    max_us: f64,
    code: Option<String>,
    reason: Option<String>,
}

/// Check a probability; the error names the field relative to the spec.
fn chance(v: Option<f64>, field: &str) -> Result<f64, (Vec<String>, String)> {
    match v {
        None => Ok(0.0),
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Some(p) => Err((vec![field.to_owned()], format!("a probability is between 0 and 1, not {p}"))),
    }
}

impl Faults {
    /// Validate for `channel`; errors name the field under the `faults` key.
    pub fn compile(spec: &FaultsSpec, channel: Channel, time_scale: f64) -> Result<Self, (Vec<String>, String)> {
        let us = |d: Dur| d.secs() * 1e6 * time_scale;
        let mut skip = Vec::new();
        for (name, p) in &spec.skip {
            let at = || vec!["skip".to_owned(), name.clone()];
            let status: Status = name.parse().map_err(|e: String| (at(), e))?;
            if !channel.statuses().contains(&status) {
                return Err((at(), format!("{channel} has no {status} status")));
            }
            skip.push((status, chance(Some(*p), "skip").map_err(|(_, m)| (at(), m))?));
        }
        let deferrals = match &spec.deferrals {
            None => None,
            Some(d) => {
                let at = |f: &str| vec!["deferrals".to_owned(), f.to_owned()];
                if !channel.statuses().contains(&Status::Deferred) {
                    return Err((vec!["deferrals".into()], format!("{channel} has no DEFERRED status")));
                }
                let probability = chance(Some(d.probability), "").map_err(|(_, m)| (at("probability"), m))?;
                if d.retries == 0 || d.retries > 100 {
                    return Err((at("retries"), format!("give 1 to 100 retries, not {}", d.retries)));
                }
                if !(d.multiplier.is_finite() && d.multiplier >= 1.0) {
                    return Err((at("multiplier"), format!("must be 1 or more, not {}", d.multiplier)));
                }
                Some(Deferrals {
                    probability,
                    retries: d.retries,
                    backoff_us: us(d.backoff),
                    multiplier: d.multiplier,
                    max_us: d.max.map_or(f64::INFINITY, us),
                    code: d.code.clone(),
                    reason: d.reason.clone(),
                })
            }
        };
        Ok(Self {
            duplicate: chance(spec.duplicate, "duplicate")?,
            out_of_order: chance(spec.out_of_order, "out_of_order")?,
            skip,
            drop: chance(spec.drop, "drop")?,
            corrupt: chance(spec.corrupt, "corrupt")?,
            deferrals,
            expiry: spec.expiry.as_ref().map(|e| (us(e.after) as i64, e.code.clone(), e.reason.clone())),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.duplicate == 0.0
            && self.out_of_order == 0.0
            && self.skip.is_empty()
            && self.drop == 0.0
            && self.corrupt == 0.0
            && self.deferrals.is_none()
            && self.expiry.is_none()
    }

    /// Apply to a drawn lifecycle, drawing from the message's RNG (after the path's own draws, so a
    /// scenario without faults plans exactly as before). Steps come out in emission order.
    pub fn apply<R: Rng>(
        &self,
        channel: Channel,
        steps: &mut Vec<PlannedStep>,
        not_sent: &mut Vec<NotSent>,
        rng: &mut R,
    ) {
        if self.is_empty() || steps.first().is_some_and(|s| s.status == Status::Reject) {
            return;
        }
        if let Some(d) = &self.deferrals {
            self.defer(d, channel, steps, rng);
        }
        if let Some((after_us, code, reason)) = &self.expiry {
            expire(*after_us, code, reason, channel, steps);
        }
        if !self.skip.is_empty() {
            let last = steps.len() - 1;
            let mut k = 0;
            steps.retain(|s| {
                let keep = k == last || !self.skip.iter().any(|(st, p)| *st == s.status && rng.random::<f64>() < *p);
                if !keep {
                    not_sent.push(NotSent { status: s.status, attempt: s.attempt, fault: Fault::Skipped });
                }
                k += 1;
                keep
            });
        }
        if self.drop > 0.0 {
            steps.retain(|s| {
                let keep = rng.random::<f64>() >= self.drop;
                if !keep {
                    not_sent.push(NotSent { status: s.status, attempt: s.attempt, fault: Fault::Dropped });
                }
                keep
            });
        }
        if self.out_of_order > 0.0 && steps.len() >= 2 && rng.random::<f64>() < self.out_of_order {
            let n = steps.len();
            let (a, b) = (steps[n - 2].due_us, steps[n - 1].due_us);
            // The later ack comes first, shortly before the earlier one's time.
            steps[n - 1].due_us = a;
            steps[n - 2].due_us = b.max(a + 1);
            steps[n - 1].fault = Some(Fault::OutOfOrder);
            steps.swap(n - 2, n - 1);
        }
        if self.duplicate > 0.0 {
            let mut copies = Vec::new();
            for s in steps.iter() {
                if rng.random::<f64>() < self.duplicate {
                    let mut copy = s.clone();
                    copy.due_us += rng.random_range(0..=1_000_000);
                    copy.fault = Some(Fault::Duplicate);
                    copies.push(copy);
                }
            }
            if !copies.is_empty() {
                steps.extend(copies);
                steps.sort_by_key(|s| s.due_us);
            }
        }
        if self.corrupt > 0.0 {
            for s in steps.iter_mut() {
                // A duplicate copy keeps its mark and is sent intact.
                if rng.random::<f64>() < self.corrupt && s.fault != Some(Fault::Duplicate) {
                    s.fault = Some(Fault::Corrupt);
                }
            }
        }
    }

    fn defer<R: Rng>(&self, d: &Deferrals, channel: Channel, steps: &mut Vec<PlannedStep>, rng: &mut R) {
        if rng.random::<f64>() >= d.probability {
            return;
        }
        // After SEND, before an outcome that may follow a deferral.
        let Some(at) = steps.iter().position(|s| s.status == Status::Send) else { return };
        if steps.get(at + 1).is_none_or(|s| !channel.allows(Some(Status::Deferred), s.status)) {
            return;
        }
        let (code, reason) = match (&d.code, &d.reason) {
            (Some(c), r) => (c.clone(), r.clone().unwrap_or_else(|| "deferred".into())),
            (None, _) => super::default_error(channel, Status::Deferred, BounceType::Soft),
        };
        let start = steps[at].due_us;
        let mut due = start as f64;
        let mut wait = d.backoff_us;
        let mut inserted = Vec::with_capacity(d.retries as usize);
        for _ in 0..d.retries {
            due += wait.min(d.max_us);
            wait *= d.multiplier;
            inserted.push(PlannedStep {
                status: Status::Deferred,
                attempt: 0,
                due_us: due as i64,
                error_code: Some(code.clone()),
                error_reason: Some(reason.clone()),
                bounce_type: None,
                fault: Some(Fault::Deferred),
            });
        }
        // The outcome comes its own delay after the last retry.
        let shift = due as i64 - start;
        for s in &mut steps[at + 1..] {
            s.due_us += shift;
        }
        steps.splice(at + 1..at + 1, inserted);
        renumber(steps);
    }
}

/// Attempts go up after each DEFERRED.
fn renumber(steps: &mut [PlannedStep]) {
    let mut attempt = 1;
    for s in steps {
        s.attempt = attempt;
        if s.status == Status::Deferred {
            attempt += 1;
        }
    }
}

/// When the outcome would come after the validity period, everything due after it is cut and the
/// message expires at its end.
fn expire(
    after_us: i64,
    code: &Option<String>,
    reason: &Option<String>,
    channel: Channel,
    steps: &mut Vec<PlannedStep>,
) {
    let Some(outcome) = steps.iter().position(|s| !matches!(s.status, Status::Send | Status::Deferred)) else { return };
    if steps[outcome].due_us <= after_us {
        return;
    }
    let cut = steps.iter().position(|s| s.due_us > after_us).unwrap_or(outcome).clamp(1, outcome);
    let (status, default_code, default_reason) = match channel {
        Channel::Email => (Status::Bounce, "451 4.4.7", "message expired: delivery time exceeded"),
        Channel::Sms => (Status::Undelivered, "30036", "validity period expired"),
        Channel::Whatsapp => (Status::Undelivered, "131026", "message undeliverable: validity period expired"),
    };
    let attempt = steps[cut].attempt;
    let due_us = after_us.max(steps[cut - 1].due_us);
    steps.truncate(cut);
    steps.push(PlannedStep {
        status,
        attempt,
        due_us,
        error_code: Some(code.clone().unwrap_or_else(|| default_code.into())),
        error_reason: Some(reason.clone().unwrap_or_else(|| default_reason.into())),
        bounce_type: (status == Status::Bounce).then_some(BounceType::Soft),
        fault: Some(Fault::Expired),
    });
}

/// A compiled outage window.
#[derive(Clone, Debug)]
pub struct Outage {
    pub name: String,
    matcher: Matcher,
    from_us: i64,
    until_us: i64,
    mode: OutageMode,
    code: Option<String>,
    reason: Option<String>,
}

/// A compiled throttle with its buckets (the clock is the messages' receipt time).
#[derive(Debug)]
pub struct Throttle {
    pub name: String,
    matcher: Matcher,
    rate: f64,
    burst: f64,
    per: ThrottleKey,
    code: Option<String>,
    reason: Option<String>,
    buckets: Mutex<Buckets>,
}

/// Per key: tokens left and the receipt time (µs) they were counted at. A bucket that has refilled is
/// the same as no bucket, so buckets are swept once there are `sweep_at` of them: memory follows the keys
/// active within about `burst / rate` seconds, however many keys (senders, say) come and go.
#[derive(Debug)]
struct Buckets {
    map: HashMap<String, (f64, i64)>,
    sweep_at: usize,
}

/// Buckets held before the first sweep.
const SWEEP_FROM: usize = 10_000;

impl Outage {
    pub fn compile(
        spec: &OutageSpec,
        loaded_at: DateTime<Utc>,
        time_scale: f64,
    ) -> Result<Self, (Vec<String>, String)> {
        let matcher = Matcher::compile(&spec.when).map_err(|(mut f, m)| {
            f.insert(0, "match".into());
            (f, m)
        })?;
        let scaled = |d: Dur| (d.secs() * 1e6 * time_scale) as i64;
        let from_us = match &spec.from {
            When::At(t) => t.timestamp_micros(),
            When::After(d) => loaded_at.timestamp_micros() + scaled(*d),
        };
        if spec.duration.0.is_zero() {
            return Err((vec!["for".into()], "an outage lasts longer than zero".into()));
        }
        Ok(Self {
            name: spec.name.clone(),
            matcher,
            from_us,
            until_us: from_us + scaled(spec.duration),
            mode: spec.mode,
            code: spec.code.clone(),
            reason: spec.reason.clone(),
        })
    }

    /// Apply to a message received at `received_us`; whether it hit.
    pub fn apply(&self, m: &MessageView<'_>, received_us: i64, steps: &mut Vec<PlannedStep>) -> bool {
        if !(self.from_us..self.until_us).contains(&received_us) || !self.matcher.matches(m) {
            return false;
        }
        match self.mode {
            OutageMode::Reject => {
                let (c, r) = super::default_error(m.channel, Status::Reject, BounceType::Hard);
                *steps = vec![PlannedStep {
                    status: Status::Reject,
                    attempt: 1,
                    due_us: steps.first().map_or(0, |s| s.due_us.min(50_000)),
                    error_code: Some(self.code.clone().unwrap_or(c)),
                    error_reason: Some(
                        self.reason.clone().unwrap_or_else(|| format!("vendor outage ({}): {r}", self.name)),
                    ),
                    bounce_type: None,
                    fault: Some(Fault::Outage),
                }];
            }
            OutageMode::Delay => {
                let shift = self.until_us - received_us;
                for s in steps.iter_mut() {
                    s.due_us += shift;
                    s.fault.get_or_insert(Fault::Outage);
                }
            }
        }
        true
    }
}

impl Throttle {
    pub fn compile(spec: &ThrottleSpec) -> Result<Self, (Vec<String>, String)> {
        let matcher = Matcher::compile(&spec.when).map_err(|(mut f, m)| {
            f.insert(0, "match".into());
            (f, m)
        })?;
        if !(spec.rate.is_finite() && spec.rate > 0.0) {
            return Err((vec!["rate".into()], format!("messages a second, above zero, not {}", spec.rate)));
        }
        let burst = spec.burst.unwrap_or(spec.rate);
        if !(burst.is_finite() && burst >= 1.0) {
            return Err((vec!["burst".into()], format!("at least 1, not {burst}")));
        }
        if let ThrottleKey::Field(p) = &spec.per
            && !p.starts_with('/')
        {
            return Err((vec!["per".into(), "field".into()], format!("`{p}` is not a JSON pointer")));
        }
        Ok(Self {
            name: spec.name.clone(),
            matcher,
            rate: spec.rate,
            burst,
            per: spec.per.clone(),
            code: spec.code.clone(),
            reason: spec.reason.clone(),
            buckets: Mutex::new(Buckets { map: HashMap::new(), sweep_at: SWEEP_FROM }),
        })
    }

    /// Take a token for the message; without one its plan becomes a REJECT. Whether it was throttled.
    pub fn apply(&self, m: &MessageView<'_>, received_us: i64, steps: &mut Vec<PlannedStep>) -> bool {
        if !self.matcher.matches(m) {
            return false;
        }
        let key = match &self.per {
            ThrottleKey::Channel => m.channel.as_str().to_owned(),
            ThrottleKey::Tenant => m.tenant.unwrap_or("").to_owned(),
            ThrottleKey::Field(p) => m.field(p).unwrap_or_default(),
        };
        let allowed = {
            let mut buckets = self.buckets.lock().expect("throttle lock");
            if buckets.map.len() >= buckets.sweep_at {
                let (rate, burst) = (self.rate, self.burst);
                buckets.map.retain(|_, (tokens, at)| *tokens + (received_us - *at).max(0) as f64 / 1e6 * rate < burst);
                buckets.sweep_at = (buckets.map.len() * 2).max(SWEEP_FROM);
            }
            let (tokens, at) = buckets.map.entry(key).or_insert((self.burst, received_us));
            let elapsed = (received_us - *at).max(0) as f64 / 1e6;
            *tokens = (*tokens + elapsed * self.rate).min(self.burst);
            *at = (*at).max(received_us);
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if allowed {
            return false;
        }
        let (code, reason) = match m.channel {
            Channel::Whatsapp => ("130429", "rate limit hit"),
            Channel::Sms => ("30001", "queue overflow"),
            Channel::Email => ("421 4.7.0", "too many messages, slow down"),
        };
        *steps = vec![PlannedStep {
            status: Status::Reject,
            attempt: 1,
            due_us: steps.first().map_or(0, |s| s.due_us.min(50_000)),
            error_code: Some(self.code.clone().unwrap_or_else(|| code.into())),
            error_reason: Some(self.reason.clone().unwrap_or_else(|| reason.into())),
            bounce_type: None,
            fault: Some(Fault::Throttled),
        }];
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn step(status: Status, due_us: i64) -> PlannedStep {
        PlannedStep { status, attempt: 1, due_us, error_code: None, error_reason: None, bounce_type: None, fault: None }
    }

    fn faults(yaml: &str, channel: Channel) -> Faults {
        Faults::compile(&serde_yaml::from_str(yaml).unwrap(), channel, 1.0).unwrap()
    }

    #[test]
    fn deferrals_back_off_and_renumber_attempts() {
        let f =
            faults("deferrals: { probability: 1, retries: 3, backoff: 10s, multiplier: 2, max: 30s }", Channel::Sms);
        let mut steps = vec![step(Status::Send, 1_000_000), step(Status::Delivery, 3_000_000)];
        f.apply(Channel::Sms, &mut steps, &mut Vec::new(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let got: Vec<(Status, u16, i64)> = steps.iter().map(|s| (s.status, s.attempt, s.due_us / 1_000_000)).collect();
        use Status::*;
        assert_eq!(got, [(Send, 1, 1), (Deferred, 1, 11), (Deferred, 2, 31), (Deferred, 3, 61), (Delivery, 4, 63)]);
        assert!(
            steps[1..4].iter().all(|s| s.fault == Some(Fault::Deferred) && s.error_code.as_deref() == Some("30001"))
        );
    }

    #[test]
    fn expiry_cuts_what_comes_after_the_validity_period() {
        let f = faults(
            "{ deferrals: { probability: 1, retries: 2, backoff: 10s, multiplier: 3 }, expiry: { after: 15s } }",
            Channel::Sms,
        );
        let mut steps = vec![step(Status::Send, 1_000_000), step(Status::Delivery, 5_000_000)];
        f.apply(Channel::Sms, &mut steps, &mut Vec::new(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let got: Vec<(Status, u16, i64)> = steps.iter().map(|s| (s.status, s.attempt, s.due_us / 1_000_000)).collect();
        use Status::*;
        assert_eq!(got, [(Send, 1, 1), (Deferred, 1, 11), (Undelivered, 2, 15)]);
    }

    #[test]
    fn expiry_replaces_a_late_outcome() {
        let f = faults("expiry: { after: 5s }", Channel::Sms);
        let mut steps = vec![step(Status::Send, 1_000_000), step(Status::Delivery, 9_000_000)];
        f.apply(Channel::Sms, &mut steps, &mut Vec::new(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        assert_eq!(
            (steps[1].status, steps[1].due_us, steps[1].error_code.as_deref()),
            (Status::Undelivered, 5_000_000, Some("30036"))
        );
        let mut on_time = vec![step(Status::Send, 1_000_000), step(Status::Delivery, 4_000_000)];
        f.apply(Channel::Sms, &mut on_time, &mut Vec::new(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        assert_eq!(on_time[1].status, Status::Delivery);
    }

    #[test]
    fn skipped_dropped_out_of_order_duplicate_and_corrupt() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let base = || vec![step(Status::Send, 1), step(Status::Delivery, 10), step(Status::Read, 20)];
        let all = faults("{ skip: { DELIVERY: 1 }, out_of_order: 1 }", Channel::Whatsapp);
        let (mut steps, mut not_sent) = (base(), Vec::new());
        all.apply(Channel::Whatsapp, &mut steps, &mut not_sent, &mut rng);
        assert_eq!(steps.iter().map(|s| s.status).collect::<Vec<_>>(), [Status::Read, Status::Send]);
        assert_eq!(steps[0].fault, Some(Fault::OutOfOrder));
        assert_eq!(not_sent, [NotSent { status: Status::Delivery, attempt: 1, fault: Fault::Skipped }]);
        // The last step is never skipped.
        let (mut steps, mut not_sent) = (base(), Vec::new());
        faults("skip: { READ: 1 }", Channel::Whatsapp).apply(Channel::Whatsapp, &mut steps, &mut not_sent, &mut rng);
        assert_eq!(steps.len(), 3);
        let (mut steps, mut not_sent) = (base(), Vec::new());
        faults("{ duplicate: 1, corrupt: 1 }", Channel::Whatsapp).apply(
            Channel::Whatsapp,
            &mut steps,
            &mut not_sent,
            &mut rng,
        );
        assert_eq!(steps.len(), 6);
        assert!(steps.windows(2).all(|w| w[0].due_us <= w[1].due_us));
        assert_eq!(steps.iter().filter(|s| s.fault == Some(Fault::Corrupt)).count(), 3);
        assert_eq!(steps.iter().filter(|s| s.fault == Some(Fault::Duplicate)).count(), 3);
        let (mut steps, mut not_sent) = (base(), Vec::new());
        faults("drop: 1", Channel::Whatsapp).apply(Channel::Whatsapp, &mut steps, &mut not_sent, &mut rng);
        assert!(steps.is_empty());
        assert_eq!(not_sent.len(), 3);
    }

    #[test]
    fn throttles_refill_at_their_rate() {
        let t = Throttle::compile(&serde_yaml::from_str("{ name: t, rate: 10, burst: 2 }").unwrap()).unwrap();
        let m = MessageView::new(Channel::Whatsapp, "p");
        let mut rejected = 0;
        // 100 messages over 0.99 s: 2 at once, then one for each tenth of a second as it refills.
        for i in 0..100 {
            let mut steps = vec![step(Status::Send, 1)];
            rejected += usize::from(t.apply(&m, i * 10_000, &mut steps));
        }
        assert!((88..=89).contains(&rejected), "{rejected}");
    }

    #[test]
    fn throttle_buckets_of_keys_gone_quiet_are_swept() {
        let t = Throttle::compile(&serde_yaml::from_str("{ name: t, rate: 1, burst: 1, per: { field: /sender } }").unwrap())
            .unwrap();
        let plan = |sender: &str, at_us: i64| {
            let body = format!(r#"{{"sender":"{sender}"}}"#);
            let mut m = MessageView::new(Channel::Sms, "p");
            m.body = body.as_bytes();
            t.apply(&m, at_us, &mut vec![step(Status::Send, 1)])
        };
        // 100,000 senders, one message each, a millisecond apart: each bucket is refilled (and forgettable)
        // a second later, so about a thousand are live at any time.
        for i in 0..100_000 {
            assert!(!plan(&format!("s-{i}"), i * 1_000), "a sender's first message passes");
        }
        let held = t.buckets.lock().unwrap().map.len();
        assert!(held <= 2 * SWEEP_FROM, "{held} buckets held for about 1,000 live senders");
        // A bucket still refilling is kept: the same sender within its second is throttled, after it is not.
        assert!(plan("s-99999", 99_999_000 + 500_000), "throttled within the second");
        assert!(!plan("s-99999", 99_999_000 + 2_100_000), "refilled");
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = |y: &str| Faults::compile(&serde_yaml::from_str(y).unwrap(), Channel::Sms, 1.0).unwrap_err();
        assert_eq!(err("duplicate: 1.5").0, ["duplicate"]);
        assert_eq!(err("skip: { OPEN: 0.1 }").0, ["skip", "OPEN"]);
        assert_eq!(err("deferrals: { probability: 0.1, backoff: 1s, multiplier: 0.5 }").0, ["deferrals", "multiplier"]);
    }
}
