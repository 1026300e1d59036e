//! Delay distributions, described the way QA think about them (a lognormal by its median and p99) and
//! sampled from a caller-supplied deterministic RNG.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, Pareto};
use serde::{Deserialize, Serialize};

/// z-score of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874_040_840_8;

pub use crate::model::Dur;

/// A delay distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Delay {
    /// Always `value`.
    Fixed { value: Dur },
    /// Uniform between `min` and `max`.
    Uniform { min: Dur, max: Dur },
    /// Normal with `mean` and `stddev`, cut at zero (and at `max` if given).
    Normal {
        mean: Dur,
        stddev: Dur,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Dur>,
    },
    /// Lognormal given by its `median` and 99th percentile `p99`, cut at `max` if given.
    Lognormal {
        median: Dur,
        p99: Dur,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Dur>,
    },
    /// Exponential with `mean`, cut at `max` if given.
    Exponential {
        mean: Dur,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Dur>,
    },
    /// Pareto with minimum `scale` and tail index `shape` (smaller = heavier tail), cut at `max` if given.
    Pareto {
        scale: Dur,
        shape: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Dur>,
    },
    /// Observed delays, as equally spaced quantiles from the smallest to the largest (`scenario
    /// calibrate --empirical` writes 21: p0, p5, …, p100); sampled between them linearly.
    Empirical { quantiles: Vec<Dur> },
}

impl Delay {
    pub fn zero() -> Self {
        Delay::Fixed { value: Dur(Duration::ZERO) }
    }

    /// Check the parameters; returns the field at fault and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            Delay::Fixed { .. } => Ok(()),
            Delay::Uniform { min, max } if min > max => {
                Err(("max", format!("`max` ({}) must not be below `min` ({})", show(max.secs()), show(min.secs()))))
            }
            Delay::Lognormal { median, .. } if median.0.is_zero() => {
                Err(("median", "a lognormal `median` must be above zero".into()))
            }
            Delay::Lognormal { median, p99, .. } if p99 <= median => {
                Err(("p99", format!("`p99` ({}) must be above `median` ({})", show(p99.secs()), show(median.secs()))))
            }
            Delay::Exponential { mean, .. } if mean.0.is_zero() => {
                Err(("mean", "an exponential `mean` must be above zero".into()))
            }
            Delay::Pareto { scale, .. } if scale.0.is_zero() => {
                Err(("scale", "a pareto `scale` must be above zero".into()))
            }
            Delay::Pareto { shape, .. } if !(shape.is_finite() && *shape > 0.0) => {
                Err(("shape", format!("a pareto `shape` must be a positive number, not {shape}")))
            }
            Delay::Empirical { quantiles } if quantiles.len() < 2 => {
                Err(("quantiles", "give at least two quantiles: the smallest and the largest delay".into()))
            }
            Delay::Empirical { quantiles } if quantiles.windows(2).any(|w| w[0] > w[1]) => {
                Err(("quantiles", "quantiles go from the smallest delay to the largest".into()))
            }
            _ => Ok(()),
        }
    }

    /// A sampler for this delay, scaled by `time_scale`. Call only on a validated delay.
    pub fn sampler(&self, time_scale: f64) -> Sampler {
        let (kind, cap) = match *self {
            Delay::Empirical { ref quantiles } => (Kind::Empirical(quantiles.iter().map(|q| q.secs()).collect()), None),
            Delay::Fixed { value } => (Kind::Fixed(value.secs()), None),
            Delay::Uniform { min, max } => (Kind::Uniform(min.secs(), max.secs()), None),
            Delay::Normal { mean, stddev, max } => {
                (Normal::new(mean.secs(), stddev.secs()).map_or(Kind::Fixed(mean.secs()), Kind::Normal), max)
            }
            Delay::Lognormal { median, p99, max } => {
                let mu = median.secs().ln();
                let sigma = (p99.secs().ln() - mu) / Z99;
                (LogNormal::new(mu, sigma).map_or(Kind::Fixed(median.secs()), Kind::LogNormal), max)
            }
            Delay::Exponential { mean, max } => {
                (Exp::new(1.0 / mean.secs()).map_or(Kind::Fixed(mean.secs()), Kind::Exp), max)
            }
            Delay::Pareto { scale, shape, max } => {
                (Pareto::new(scale.secs(), shape).map_or(Kind::Fixed(scale.secs()), Kind::Pareto), max)
            }
        };
        Sampler { kind, cap_secs: cap.map_or(f64::INFINITY, Dur::secs), time_scale }
    }

    /// Median and 99th percentile in seconds, before scaling and capping.
    pub fn median_p99(&self) -> (f64, f64) {
        match *self {
            Delay::Empirical { ref quantiles } => {
                let q: Vec<f64> = quantiles.iter().map(|d| d.secs()).collect();
                (interpolate(&q, 0.5), interpolate(&q, 0.99))
            }
            Delay::Fixed { value } => (value.secs(), value.secs()),
            Delay::Uniform { min, max } => {
                let (a, b) = (min.secs(), max.secs());
                (a + (b - a) * 0.5, a + (b - a) * 0.99)
            }
            Delay::Normal { mean, stddev, .. } => {
                ((mean.secs()).max(0.0), (mean.secs() + Z99 * stddev.secs()).max(0.0))
            }
            Delay::Lognormal { median, p99, .. } => (median.secs(), p99.secs()),
            Delay::Exponential { mean, .. } => (mean.secs() * 2f64.ln(), mean.secs() * 100f64.ln()),
            Delay::Pareto { scale, shape, .. } => {
                (scale.secs() * 2f64.powf(1.0 / shape), scale.secs() * 100f64.powf(1.0 / shape))
            }
        }
    }

    /// The summary QA read: `lognormal median 2s p99 30s`, with scaled figures.
    pub fn describe(&self, time_scale: f64) -> String {
        let (m, p) = self.median_p99();
        let cap = match self {
            Delay::Normal { max: Some(c), .. }
            | Delay::Lognormal { max: Some(c), .. }
            | Delay::Exponential { max: Some(c), .. }
            | Delay::Pareto { max: Some(c), .. } => c.secs(),
            _ => f64::INFINITY,
        };
        let name = match self {
            Delay::Fixed { .. } => "fixed",
            Delay::Uniform { .. } => "uniform",
            Delay::Normal { .. } => "normal",
            Delay::Lognormal { .. } => "lognormal",
            Delay::Exponential { .. } => "exponential",
            Delay::Pareto { .. } => "pareto",
            Delay::Empirical { .. } => "empirical",
        };
        format!("{name:<11} median {:>8}  p99 {:>8}", show(m.min(cap) * time_scale), show(p.min(cap) * time_scale))
    }
}

/// Human-readable seconds: `850µs`, `12ms`, `3.2s`, `4m05s`, `2h10m`.
pub fn show(secs: f64) -> String {
    if !secs.is_finite() {
        return "∞".into();
    }
    if secs < 0.001 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.0}ms", secs * 1e3)
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (secs / 3600.0) as u64, ((secs % 3600.0) / 60.0) as u64)
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Fixed(f64),
    Uniform(f64, f64),
    Normal(Normal<f64>),
    LogNormal(LogNormal<f64>),
    Exp(Exp<f64>),
    Pareto(Pareto<f64>),
    Empirical(Vec<f64>),
}

/// The value at `u` (0–1) of equally spaced quantiles, linearly between them.
pub fn interpolate(q: &[f64], u: f64) -> f64 {
    let at = u.clamp(0.0, 1.0) * (q.len() - 1) as f64;
    let i = (at.floor() as usize).min(q.len() - 2);
    q[i] + (q[i + 1] - q[i]) * (at - i as f64)
}

/// A ready-to-sample delay.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: Kind,
    cap_secs: f64,
    time_scale: f64,
}

impl Sampler {
    /// One delay in microseconds; the same RNG state always gives the same delay.
    pub fn sample_us<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let u: f64 = rng.random();
        let secs = match &self.kind {
            Kind::Fixed(v) => *v,
            Kind::Uniform(a, b) => a + (b - a) * u,
            Kind::Normal(d) => d.sample(rng),
            Kind::LogNormal(d) => d.sample(rng),
            Kind::Exp(d) => d.sample(rng),
            Kind::Pareto(d) => d.sample(rng),
            Kind::Empirical(q) => interpolate(q, u),
        };
        let secs = secs.clamp(0.0, self.cap_secs) * self.time_scale;
        (secs * 1e6).round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn d(s: &str) -> Dur {
        Dur(humantime::parse_duration(s).unwrap())
    }

    fn quantile(mut v: Vec<i64>, q: f64) -> f64 {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * q) as usize] as f64 / 1e6
    }

    #[test]
    fn lognormal_matches_median_and_p99() {
        let delay = Delay::Lognormal { median: d("2s"), p99: d("30s"), max: None };
        let s = delay.sampler(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v: Vec<i64> = (0..200_000).map(|_| s.sample_us(&mut rng)).collect();
        let (m, p) = (quantile(v.clone(), 0.5), quantile(v, 0.99));
        assert!((m - 2.0).abs() / 2.0 < 0.03, "median {m}");
        assert!((p - 30.0).abs() / 30.0 < 0.06, "p99 {p}");
    }

    #[test]
    fn time_scale_and_cap_apply() {
        let delay = Delay::Exponential { mean: d("10s"), max: Some(d("20s")) };
        let s = delay.sampler(0.001);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..10_000 {
            let us = s.sample_us(&mut rng);
            assert!((0..=20_000).contains(&us), "{us}");
        }
    }

    #[test]
    fn uniform_stays_in_range_and_pareto_above_scale() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let u = Delay::Uniform { min: d("1s"), max: d("2s") }.sampler(1.0);
        let p = Delay::Pareto { scale: d("1s"), shape: 2.0, max: None }.sampler(1.0);
        for _ in 0..10_000 {
            assert!((1_000_000..=2_000_000).contains(&u.sample_us(&mut rng)));
            assert!(p.sample_us(&mut rng) >= 1_000_000);
        }
    }

    #[test]
    fn invalid_parameters_are_named() {
        let bad = Delay::Lognormal { median: d("2s"), p99: d("1s"), max: None };
        assert_eq!(bad.validate().unwrap_err().0, "p99");
        let bad = Delay::Uniform { min: d("2s"), max: d("1s") };
        assert_eq!(bad.validate().unwrap_err().0, "max");
    }
}
