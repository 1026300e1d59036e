//! The vendors' rate limits on the front doors (`http.rate_limits`): a token bucket per vendor and
//! tenant, on the wall clock. A send call without a token is answered 429 the vendor's way before
//! anything is taken, as a vendor refuses it: nothing stored, no id, no callback. A scenario's
//! `throttles` are another thing: they decide per message, on every door, and are stored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RateLimit;
use crate::wire::Vendor;

/// A bucket is dropped once it has refilled (it is then the same as none); the map is swept of those
/// once it holds this many, so memory follows the tenants active lately.
const SWEEP_FROM: usize = 10_000;

/// What a send call's quota is after it: whether it was let through, and what SendGrid's
/// `X-RateLimit-*` headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub allowed: bool,
    /// The bucket's size: calls at once.
    pub limit: u64,
    /// Whole calls left now.
    pub remaining: u64,
    /// When the bucket is full again, in Unix seconds (rounded up).
    pub reset: u64,
    /// How long until one more call is let through, rounded up to a second (at least 1 when refused).
    pub retry_after_secs: u64,
}

pub struct RateLimits {
    rules: Vec<RateLimit>,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    /// Per (rule, tenant): tokens left, and when they were counted.
    map: HashMap<(usize, String), (f64, Instant)>,
    sweep_at: usize,
}

impl RateLimits {
    pub fn new(rules: &[RateLimit]) -> Self {
        Self { rules: rules.to_vec(), buckets: Mutex::new(Buckets { map: HashMap::new(), sweep_at: SWEEP_FROM }) }
    }

    /// Take `cost` tokens (at most a bucket's worth) for a call of `tenant` to `vendor`; `None` when no
    /// limit applies.
    pub fn check(&self, vendor: Vendor, tenant: &str, cost: f64) -> Option<Quota> {
        self.check_at(vendor, tenant, cost, Instant::now(), SystemTime::now())
    }

    fn check_at(&self, vendor: Vendor, tenant: &str, cost: f64, now: Instant, wall: SystemTime) -> Option<Quota> {
        let (i, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.vendor == vendor && r.tenant.as_deref().is_none_or(|t| t == tenant))?;
        let (rate, burst) = (rule.per_second, rule.burst.unwrap_or(rule.per_second).max(1.0));
        let cost = cost.clamp(1.0, burst);
        let (allowed, tokens) = {
            let mut b = self.buckets.lock().expect("rate limit lock");
            if b.map.len() >= b.sweep_at {
                let full = |rule: usize, tokens: f64, at: Instant| {
                    let r = &self.rules[rule];
                    let burst = r.burst.unwrap_or(r.per_second).max(1.0);
                    tokens + now.saturating_duration_since(at).as_secs_f64() * r.per_second >= burst
                };
                b.map.retain(|(rule, _), (tokens, at)| !full(*rule, *tokens, *at));
                b.sweep_at = (b.map.len() * 2).max(SWEEP_FROM);
            }
            let (tokens, at) = b.map.entry((i, tenant.to_owned())).or_insert((burst, now));
            *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
            *at = now.max(*at);
            let allowed = *tokens >= cost;
            if allowed {
                *tokens -= cost;
            }
            (allowed, *tokens)
        };
        let unix = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
        let retry = if allowed { 0.0 } else { ((cost - tokens) / rate).ceil().max(1.0) };
        Some(Quota {
            allowed,
            limit: burst.floor() as u64,
            remaining: tokens.floor() as u64,
            reset: (unix + (burst - tokens) / rate).ceil() as u64,
            retry_after_secs: retry as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(vendor: Vendor, tenant: Option<&str>, per_second: f64, burst: Option<f64>) -> RateLimit {
        RateLimit { vendor, tenant: tenant.map(str::to_owned), per_second, burst }
    }

    #[test]
    fn a_tenant_gets_its_burst_then_its_rate() {
        let l = RateLimits::new(&[limit(Vendor::Sendgrid, None, 2.0, Some(3.0))]);
        let (t0, wall) = (Instant::now(), UNIX_EPOCH + Duration::from_secs(1_000));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let allowed = |ms: u64, tenant: &str| l.check_at(Vendor::Sendgrid, tenant, 1.0, at(ms), wall).unwrap().allowed;
        assert!(allowed(0, "a") && allowed(0, "a") && allowed(0, "a"));
        let q = l.check_at(Vendor::Sendgrid, "a", 1.0, at(0), wall).unwrap();
        // Empty: refused, a token in half a second (1 s rounded up), full again in 1.5 s.
        assert_eq!(q, Quota { allowed: false, limit: 3, remaining: 0, reset: 1_002, retry_after_secs: 1 });
        // Each tenant has a bucket of its own; other vendors have no limit.
        assert!(allowed(0, "b"));
        assert_eq!(l.check_at(Vendor::Twilio, "a", 1.0, at(0), wall), None);
        // Two a second come back.
        assert!(allowed(500, "a") && !allowed(500, "a") && allowed(1000, "a"));
    }

    #[test]
    fn the_first_matching_entry_applies_and_a_cost_is_capped_at_the_burst() {
        let l =
            RateLimits::new(&[limit(Vendor::Ses, Some("vip.test"), 100.0, None), limit(Vendor::Ses, None, 1.0, None)]);
        let (now, wall) = (Instant::now(), SystemTime::now());
        assert!(l.check_at(Vendor::Ses, "vip.test", 50.0, now, wall).unwrap().allowed);
        assert!(l.check_at(Vendor::Ses, "vip.test", 50.0, now, wall).unwrap().allowed);
        assert!(!l.check_at(Vendor::Ses, "vip.test", 1.0, now, wall).unwrap().allowed);
        // Fifty recipients against a bucket of one: it costs the whole bucket, not forever.
        assert!(l.check_at(Vendor::Ses, "other.test", 50.0, now, wall).unwrap().allowed);
        assert!(!l.check_at(Vendor::Ses, "other.test", 1.0, now, wall).unwrap().allowed);
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let l = RateLimits::new(&[limit(Vendor::Twilio, None, 1000.0, Some(1.0))]);
        let (t0, wall) = (Instant::now(), SystemTime::now());
        for i in 0..SWEEP_FROM {
            l.check_at(Vendor::Twilio, &i.to_string(), 1.0, t0, wall);
        }
        l.check_at(Vendor::Twilio, "late", 1.0, t0 + Duration::from_secs(1), wall);
        assert_eq!(l.buckets.lock().unwrap().map.len(), 1);
    }
}
