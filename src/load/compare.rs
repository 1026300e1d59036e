//! `understudy compare RUN_A RUN_B`: did B get faster, slower, or neither?
//!
//! Per channel and status, on the latency samples of both runs: p50, p90 and p99 with a bootstrap 95%
//! confidence interval of the difference B − A, and a Mann-Whitney U test of the two samples. A
//! percentile has *regressed* (or *improved*) only when its interval excludes zero and the difference is
//! larger than the practical noise threshold (a share of A's value); otherwise there is no significant
//! change. Throughput and loss are compared too.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::Serialize;

use crate::load::StoredRun;
use crate::model::{Channel, Status};
use crate::store::RunEventRow;

/// Fewest samples on each side for a latency comparison.
pub const MIN_SAMPLES: usize = 20;
/// Bootstrap resamples.
const RESAMPLES: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Improved,
    Regressed,
    NoSignificantChange,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::Regressed => "regressed",
            Verdict::NoSignificantChange => "no significant change",
        }
    }
}

/// One percentile of one channel and status, A against B, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyDiff {
    pub channel: Channel,
    pub status: Status,
    pub percentile: f64,
    pub a_ms: f64,
    pub b_ms: f64,
    pub diff_ms: f64,
    /// Bootstrap 95% confidence interval of `diff_ms`.
    pub ci_ms: (f64, f64),
    pub verdict: Verdict,
}

/// The Mann-Whitney U test of one channel and status.
#[derive(Clone, Debug, Serialize)]
pub struct ShiftTest {
    pub channel: Channel,
    pub status: Status,
    pub n_a: usize,
    pub n_b: usize,
    pub u: f64,
    pub z: f64,
    /// Two-sided.
    pub p_value: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunDiff {
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    /// The practical noise threshold, as a share of A's value.
    pub noise: f64,
    pub latency: Vec<LatencyDiff>,
    pub shifts: Vec<ShiftTest>,
    pub runs: Vec<RunDiff>,
    /// Statuses in only one of the runs, or with too few samples to compare.
    pub skipped: Vec<String>,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.latency.iter().any(|l| l.verdict == Verdict::Regressed)
            || self.runs.iter().any(|r| r.verdict == Verdict::Regressed)
    }
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[rank(sorted.len(), q) - 1]
}

/// The rank of the `q`-quantile in a sorted sample of `n`: `quantile` takes the `rank`-th smallest.
fn rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n)
}

/// The distribution of `⌊n·U₍ₖ₎⌋`, the index in a sorted sample of `n` of a resample's `q`-quantile
/// (see `bootstrap_ci`): Beta(k, n + 1 − k) for the rank `k`.
fn order_statistic(n: usize, q: f64) -> Beta<f64> {
    let k = rank(n, q);
    Beta::new(k as f64, (n + 1 - k) as f64).expect("both shapes are at least 1")
}

/// One resample's quantile of the sorted `v`, `beta` its `order_statistic`.
fn resampled_quantile(v: &[f64], beta: &Beta<f64>, rng: &mut ChaCha8Rng) -> f64 {
    let j = (beta.sample(rng) * v.len() as f64) as usize;
    v[j.min(v.len() - 1)]
}

/// Bootstrap 95% interval of `quantile(b) − quantile(a)`; `a` and `b` sorted, neither empty.
///
/// A resample's quantile is drawn without building the resample. The `k`-th smallest value of a
/// resample of a sorted `v` is `v[j]`, `j` the `k`-th smallest of `n` indices drawn uniformly from
/// `0..n`. Those indices are `⌊n·U⌋` of `n` uniforms `U` in [0, 1), and `⌊·⌋` keeps their order, so
/// `j = ⌊n·U₍ₖ₎⌋`, where `U₍ₖ₎`, the `k`-th order statistic of `n` uniforms, is Beta(k, n + 1 − k).
/// One Beta draw per resample, exact, in place of `n` index draws and a sort: the bootstrap costs the
/// same whatever the samples' sizes, and uses all of each sample (it once built and sorted every
/// resample, of up to 4,000 values).
pub fn bootstrap_ci(a: &[f64], b: &[f64], q: f64, rng: &mut ChaCha8Rng) -> (f64, f64) {
    debug_assert!(a.is_sorted_by(|x, y| x.total_cmp(y).is_le()) && b.is_sorted_by(|x, y| x.total_cmp(y).is_le()));
    let (ba, bb) = (order_statistic(a.len(), q), order_statistic(b.len(), q));
    let mut diffs: Vec<f64> =
        (0..RESAMPLES).map(|_| resampled_quantile(b, &bb, rng) - resampled_quantile(a, &ba, rng)).collect();
    diffs.sort_unstable_by(f64::total_cmp);
    (quantile(&diffs, 0.025), quantile(&diffs, 0.975))
}

/// Mann-Whitney U (of `a`), with the normal approximation corrected for ties: `(u, z, two-sided p)`.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|x| (*x, true)).chain(b.iter().map(|x| (*x, false))).collect();
    all.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
    let (mut rank_sum_a, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return (u, 0.0, 1.0);
    }
    let z = (u - mean) / var.sqrt();
    (u, z, erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Latency samples (ms) per channel and status.
fn samples(events: &[RunEventRow]) -> BTreeMap<(Channel, Status), Vec<f64>> {
    let mut out: BTreeMap<(Channel, Status), Vec<f64>> = BTreeMap::new();
    for e in events {
        let (Ok(c), Ok(s), Some(us)) = (e.channel.parse::<Channel>(), e.status.parse::<Status>(), e.latency_us) else {
            continue;
        };
        out.entry((c, s)).or_default().push(us as f64 / 1000.0);
    }
    for v in out.values_mut() {
        v.sort_unstable_by(f64::total_cmp);
    }
    out
}

fn verdict(diff: f64, ci: (f64, f64), base: f64, noise: f64, higher_is_worse: bool) -> Verdict {
    let significant = (ci.0 > 0.0 || ci.1 < 0.0) && diff.abs() > noise * base.abs();
    match (significant, (diff > 0.0) == higher_is_worse) {
        (false, _) => Verdict::NoSignificantChange,
        (true, true) => Verdict::Regressed,
        (true, false) => Verdict::Improved,
    }
}

/// Compare run B against run A.
pub fn compare(
    a: &StoredRun,
    a_events: &[RunEventRow],
    b: &StoredRun,
    b_events: &[RunEventRow],
    noise: f64,
) -> Comparison {
    let (sa, sb) = (samples(a_events), samples(b_events));
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let mut out = Comparison {
        run_a: a.run_id.clone(),
        run_b: b.run_id.clone(),
        noise,
        latency: Vec::new(),
        shifts: Vec::new(),
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    let keys: std::collections::BTreeSet<_> = sa.keys().chain(sb.keys()).copied().collect();
    for key in keys {
        let (Some(x), Some(y)) = (sa.get(&key), sb.get(&key)) else {
            out.skipped.push(format!("{} {}: in one run only", key.0, key.1));
            continue;
        };
        if x.len() < MIN_SAMPLES || y.len() < MIN_SAMPLES {
            out.skipped.push(format!(
                "{} {}: {} and {} samples (fewer than {MIN_SAMPLES})",
                key.0,
                key.1,
                x.len(),
                y.len()
            ));
            continue;
        }
        for q in [0.5, 0.9, 0.99] {
            let (qa, qb) = (quantile(x, q), quantile(y, q));
            let ci = bootstrap_ci(x, y, q, &mut rng);
            out.latency.push(LatencyDiff {
                channel: key.0,
                status: key.1,
                percentile: q * 100.0,
                a_ms: qa,
                b_ms: qb,
                diff_ms: qb - qa,
                ci_ms: ci,
                verdict: verdict(qb - qa, ci, qa, noise, true),
            });
        }
        let (u, z, p) = mann_whitney(x, y);
        out.shifts.push(ShiftTest { channel: key.0, status: key.1, n_a: x.len(), n_b: y.len(), u, z, p_value: p });
    }
    // Throughput: how much of its own schedule each run sent (runs at different rates compare fairly),
    // judged by the noise threshold alone.
    let attained = |r: &StoredRun| {
        if r.results.planned == 0 { 0.0 } else { r.results.sent_total() as f64 / r.results.planned as f64 }
    };
    let (ta, tb) = (attained(a), attained(b));
    let throughput = if (tb - ta).abs() > noise * ta {
        if tb < ta { Verdict::Regressed } else { Verdict::Improved }
    } else {
        Verdict::NoSignificantChange
    };
    out.runs.push(RunDiff { metric: "sent of planned", a: ta, b: tb, verdict: throughput });
    out.runs.push(RunDiff {
        metric: "throughput (messages/s)",
        a: a.results.throughput(),
        b: b.results.throughput(),
        verdict: Verdict::NoSignificantChange,
    });
    // Loss: a two-proportion z-test.
    let (na, nb) = (a.results.sent_total() as f64, b.results.sent_total() as f64);
    let (la, lb) = (a.results.lost as f64, b.results.lost as f64);
    let (ra, rb) = (if na > 0.0 { la / na } else { 0.0 }, if nb > 0.0 { lb / nb } else { 0.0 });
    let pooled = if na + nb > 0.0 { (la + lb) / (na + nb) } else { 0.0 };
    let se = (pooled * (1.0 - pooled) * (1.0 / na.max(1.0) + 1.0 / nb.max(1.0))).sqrt();
    let loss = if se > 0.0 && erfc(((rb - ra) / se).abs() / std::f64::consts::SQRT_2) < 0.05 {
        if rb > ra { Verdict::Regressed } else { Verdict::Improved }
    } else {
        Verdict::NoSignificantChange
    };
    out.runs.push(RunDiff { metric: "lost rate", a: ra, b: rb, verdict: loss });
    out
}

/// The human table.
pub fn text(c: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "compare {} (A) → {} (B), noise threshold {:.0}%", c.run_a, c.run_b, c.noise * 100.0);
    let _ = writeln!(
        o,
        "\n  {:<9} {:<12} {:>4} {:>11} {:>11} {:>11} {:>25}  verdict",
        "channel", "status", "", "A", "B", "B − A", "95% CI of B − A"
    );
    for l in &c.latency {
        let _ = writeln!(
            o,
            "  {:<9} {:<12} {:>4} {:>8.1} ms {:>8.1} ms {:>+8.1} ms {:>25}  {}",
            l.channel.as_str(),
            l.status.as_str(),
            format!("p{}", l.percentile),
            l.a_ms,
            l.b_ms,
            l.diff_ms,
            format!("[{:+.1}, {:+.1}] ms", l.ci_ms.0, l.ci_ms.1),
            l.verdict.as_str()
        );
    }
    if !c.shifts.is_empty() {
        let _ = writeln!(o, "\n  Mann-Whitney U (do the latencies of B sit higher or lower than those of A?)");
        for s in &c.shifts {
            let _ = writeln!(
                o,
                "  {:<9} {:<12} n {} / {}, z {:+.2}, p {:.2e}{}",
                s.channel.as_str(),
                s.status.as_str(),
                s.n_a,
                s.n_b,
                s.z,
                s.p_value,
                if s.p_value < 0.01 { "  (shifted)" } else { "" }
            );
        }
    }
    let _ = writeln!(o);
    for r in &c.runs {
        let (a, b) = if r.metric == "lost rate" || r.metric == "sent of planned" {
            (format!("{:.3}%", r.a * 100.0), format!("{:.3}%", r.b * 100.0))
        } else {
            (format!("{:.0}", r.a), format!("{:.0}", r.b))
        };
        let verdict = if r.metric.starts_with("throughput") {
            "(as scheduled; judged by sent of planned)"
        } else {
            r.verdict.as_str()
        };
        let _ = writeln!(o, "  {:<24} A {a:>10}   B {b:>10}   {verdict}", r.metric);
    }
    for s in &c.skipped {
        let _ = writeln!(o, "  skipped: {s}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// The Beta draw gives a resample's quantile the distribution that building the resample gives.
    #[test]
    fn a_resampled_quantile_is_distributed_as_a_built_resample_s() {
        let v: Vec<f64> = (0..40).map(|i| f64::from(i * i)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 40_000;
        for q in [0.5, 0.9, 0.99] {
            let (mut built, mut drawn) = (vec![0u32; v.len()], vec![0u32; v.len()]);
            let mut r = vec![0.0; v.len()];
            for _ in 0..draws {
                for x in r.iter_mut() {
                    *x = v[rng.random_range(0..v.len())];
                }
                r.sort_unstable_by(f64::total_cmp);
                built[v.iter().position(|x| *x == quantile(&r, q)).unwrap()] += 1;
            }
            let beta = order_statistic(v.len(), q);
            for _ in 0..draws {
                let x = resampled_quantile(&v, &beta, &mut rng);
                drawn[v.iter().position(|y| *y == x).unwrap()] += 1;
            }
            let distance: f64 =
                built.iter().zip(&drawn).map(|(b, d)| (f64::from(*b) - f64::from(*d)).abs()).sum::<f64>()
                    / (2.0 * f64::from(draws));
            assert!(distance < 0.02, "p{}: total variation {distance:.4}\n{built:?}\n{drawn:?}", q * 100.0);
        }
    }

    #[test]
    fn mann_whitney_matches_a_worked_example() {
        // Two samples with no overlap: U is 0 for the lower one, and p is small.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let b = [11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0];
        let (u, z, p) = mann_whitney(&a, &b);
        assert_eq!(u, 0.0);
        assert!((z + 3.361).abs() < 0.01, "z {z}");
        assert!((p - 0.000_776).abs() < 0.000_02, "p {p}");
        // The same sample against itself: no shift at all.
        let (u, z, p) = mann_whitney(&a, &a);
        assert_eq!((u, z), (32.0, 0.0));
        assert!((p - 1.0).abs() < 1e-6);
    }

    #[test]
    fn erfc_is_accurate() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_2).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_8).abs() < 1e-6);
    }

    #[test]
    fn bootstrap_interval_holds_a_real_shift_and_zero_for_none() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a: Vec<f64> = (0..2000).map(|_| 100.0 + rng.random_range(0.0..20.0)).collect();
        let shifted: Vec<f64> = a.iter().map(|x| x + 30.0).collect();
        let same: Vec<f64> = (0..2000).map(|_| 100.0 + rng.random_range(0.0..20.0)).collect();
        let sorted = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_unstable_by(f64::total_cmp);
            v
        };
        let (a, shifted, same) = (sorted(&a), sorted(&shifted), sorted(&same));
        let ci = bootstrap_ci(&a, &shifted, 0.5, &mut rng);
        assert!(ci.0 > 29.0 && ci.1 < 31.0, "{ci:?}");
        assert_eq!(verdict(30.0, ci, 110.0, 0.05, true), Verdict::Regressed);
        let ci = bootstrap_ci(&a, &same, 0.5, &mut rng);
        assert!(ci.0 < 0.0 && ci.1 > 0.0 || (ci.0.abs().max(ci.1.abs()) < 1.0), "{ci:?}");
        let d = quantile(&same, 0.5) - quantile(&a, 0.5);
        assert_eq!(verdict(d, ci, 110.0, 0.05, true), Verdict::NoSignificantChange);
    }
}
