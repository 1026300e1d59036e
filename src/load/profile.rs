//! Rate profiles: the open model's schedule. A profile is a list of segments, each holding a rate or
//! ramping linearly from one rate to another over a duration; message `i` is due when the profile's
//! cumulative count reaches `i`, whatever happened to the messages before it.
//!
//! Written as `RATE@DURATION` (hold) or `FROM..TO@DURATION` (linear ramp), separated by commas. Rates are
//! per second unless they end in `/min` or `/h`; durations are humantime (`30s`, `5m`, `1h30m`):
//!
//! ```text
//! 2000@60s                        2,000 messages/s for a minute
//! 0..2000@30s,2000@2m,2000..0@30s ramp up, plateau, ramp down
//! 500@20s,1000@20s,1500@20s       steps
//! 0..120000/min@5m                a KPI ramp: reach 120,000 messages/minute over five minutes
//! 1000@10s,0@5s,1000@10s          a pause between two bursts
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One segment: the rate goes linearly from `from` to `to` (messages/s) over `secs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    pub from: f64,
    pub to: f64,
    pub secs: f64,
}

impl Segment {
    /// Messages due within the segment.
    fn count(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.secs
    }

    /// Messages due in the first `u` seconds of the segment.
    fn count_at(&self, u: f64) -> f64 {
        self.from * u + (self.to - self.from) * u * u / (2.0 * self.secs)
    }

    /// The time into the segment at which `k` messages are due (`k` ≤ [`Segment::count`]).
    fn time_of(&self, k: f64) -> f64 {
        let slope = (self.to - self.from) / self.secs;
        if slope.abs() < 1e-12 {
            return k / self.from;
        }
        // from·u + slope·u²/2 = k, the root in [0, secs].
        let disc = (self.from * self.from + 2.0 * slope * k).max(0.0);
        ((disc.sqrt() - self.from) / slope).clamp(0.0, self.secs)
    }
}

/// A whole profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    segments: Vec<Segment>,
}

impl Profile {
    /// `rate` messages/s for `duration`.
    pub fn constant(rate: f64, duration: Duration) -> Self {
        Self { segments: vec![Segment { from: rate, to: rate, secs: duration.as_secs_f64() }] }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Length of the profile, in seconds.
    pub fn secs(&self) -> f64 {
        self.segments.iter().map(|s| s.secs).sum()
    }

    /// Messages the whole profile sends: message `i` is sent when `i` < the cumulative count.
    pub fn total(&self) -> u64 {
        let n: f64 = self.segments.iter().map(Segment::count).sum();
        (n - 1e-6).ceil().max(0.0) as u64
    }

    /// The target rate at `t` seconds from the start (0 after the end).
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut start = 0.0;
        for s in &self.segments {
            if t < start + s.secs {
                return s.from + (s.to - s.from) * (t - start) / s.secs;
            }
            start += s.secs;
        }
        0.0
    }

    /// Messages due in the first `t` seconds.
    pub fn count_at(&self, t: f64) -> f64 {
        let (mut start, mut done) = (0.0, 0.0);
        for s in &self.segments {
            if t < start + s.secs {
                return done + s.count_at(t - start);
            }
            start += s.secs;
            done += s.count();
        }
        done
    }

    /// When message `i` (from 0) is due, in seconds from the start; `None` past the end.
    pub fn time_of(&self, i: u64) -> Option<f64> {
        if i >= self.total() {
            return None;
        }
        let mut k = i as f64;
        let mut start = 0.0;
        for s in &self.segments {
            let c = s.count();
            if k < c {
                return Some(start + s.time_of(k));
            }
            k -= c;
            start += s.secs;
        }
        // Rounding at the very end: the last message is due at the end.
        Some(start)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate profile `{text}`: {message}; write segments as RATE@DURATION or FROM..TO@DURATION separated by commas, \
     e.g. `2000@60s` or `0..2000@30s,2000@2m` (rates per second, or `/min`, `/h`)"
)]
pub struct ProfileError {
    text: String,
    message: String,
}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |message: String| ProfileError { text: text.to_owned(), message };
        let mut segments = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (rates, duration) =
                part.split_once('@').ok_or_else(|| err(format!("segment `{part}` has no `@DURATION`")))?;
            let secs = humantime::parse_duration(duration.trim())
                .map_err(|e| err(format!("segment `{part}`: duration `{}`: {e}", duration.trim())))?
                .as_secs_f64();
            if secs <= 0.0 {
                return Err(err(format!("segment `{part}` lasts no time")));
            }
            let (from, to) = match rates.split_once("..") {
                Some((a, b)) => {
                    // A unit written once, on the second rate, applies to both: `0..120000/min`.
                    let unit = b.find('/').map(|i| &b[i..]).unwrap_or("");
                    let a = if a.contains('/') { a.to_owned() } else { format!("{a}{unit}") };
                    (parse_rate(&a).map_err(&err)?, parse_rate(b).map_err(&err)?)
                }
                None => {
                    let r = parse_rate(rates).map_err(&err)?;
                    (r, r)
                }
            };
            segments.push(Segment { from, to, secs });
        }
        if segments.iter().all(|s| s.count() < 1.0) {
            return Err(err("the profile sends no message".into()));
        }
        Ok(Self { segments })
    }
}

/// `2000`, `2000/s`, `120000/min`, `7.2e6/h` → messages per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, per) = match text.split_once('/') {
        Some((n, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" | "hour" => 3600.0,
                other => {
                    return Err(format!("rate `{text}`: unknown unit `/{other}` (use `/s`, `/min` or `/h`)"));
                }
            };
            (n, per)
        }
        None => (text, 1.0),
    };
    let n: f64 = number.trim().replace('_', "").parse().map_err(|_| format!("rate `{text}` is not a number"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("rate `{text}` must be zero or more"));
    }
    Ok(n / per)
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let d = humantime::format_duration(Duration::from_millis((s.secs * 1000.0).round() as u64));
            if s.from == s.to {
                write!(f, "{}@{d}", s.from)?;
            } else {
                write!(f, "{}..{}@{d}", s.from, s.to)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_sends_rate_times_duration_evenly_spaced() {
        let p = Profile::constant(1000.0, Duration::from_secs(2));
        assert_eq!(p.total(), 2000);
        assert_eq!(p.time_of(0), Some(0.0));
        assert!((p.time_of(500).unwrap() - 0.5).abs() < 1e-9);
        assert!((p.time_of(1999).unwrap() - 1.999).abs() < 1e-9);
        assert_eq!(p.time_of(2000), None);
    }

    #[test]
    fn ramp_is_the_inverse_of_its_cumulative_count() {
        let p: Profile = "0..2000@10s,2000@5s,2000..0@10s".parse().unwrap();
        assert_eq!(p.total(), 10_000 + 10_000 + 10_000);
        for i in [0u64, 1, 100, 9_999, 10_000, 15_000, 20_000, 29_999] {
            let t = p.time_of(i).unwrap();
            assert!((p.count_at(t) - i as f64).abs() < 1e-6, "message {i} due at {t}");
        }
        // Half way up the ramp the rate is half the target, and a quarter of the ramp's messages are out.
        assert!((p.rate_at(5.0) - 1000.0).abs() < 1e-9);
        assert!((p.count_at(5.0) - 2500.0).abs() < 1e-9);
        // Due times never go backwards.
        let times: Vec<f64> = (0..p.total()).map(|i| p.time_of(i).unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn kpi_ramp_and_units() {
        let p: Profile = "0..120000/min@5m".parse().unwrap();
        let s = p.segments()[0];
        assert_eq!((s.from, s.to, s.secs), (0.0, 2000.0, 300.0));
        assert_eq!(p.total(), 300_000);
        let q: Profile = "3600/h@1h".parse().unwrap();
        assert_eq!(q.total(), 3600);
    }

    #[test]
    fn pauses_send_nothing() {
        let p: Profile = "1000@1s,0@5s,1000@1s".parse().unwrap();
        assert_eq!(p.total(), 2000);
        assert!((p.time_of(1000).unwrap() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let e = "2000".parse::<Profile>().unwrap_err().to_string();
        assert!(e.contains("has no `@DURATION`") && e.contains("e.g. `2000@60s`"), "{e}");
        let e = "fast@10s".parse::<Profile>().unwrap_err().to_string();
        assert!(e.contains("rate `fast` is not a number"), "{e}");
        let e = "10/day@10s".parse::<Profile>().unwrap_err().to_string();
        assert!(e.contains("unknown unit `/day`"), "{e}");
        let e = "10@soon".parse::<Profile>().unwrap_err().to_string();
        assert!(e.contains("duration `soon`"), "{e}");
        assert!("0@10s".parse::<Profile>().unwrap_err().to_string().contains("sends no message"));
    }
}
