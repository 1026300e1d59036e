//! A small JSON writer for the hot path: ack events and plans are written field by field into a reused
//! buffer, without serde's formatter machinery and without `chrono`'s `Display` for timestamps. The
//! output is plain JSON that serde reads back into the same types (tests compare the two).

use chrono::{DateTime, Utc};

/// Writes one JSON object; fields are added in order.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // Keys are literals of this crate: never in need of escaping.
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// The field only when there is a value (serde's `skip_serializing_if = "Option::is_none"`).
    pub fn some_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn time(&mut self, key: &str, value: DateTime<Utc>) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        write_rfc3339_micros(self.out, value.timestamp_micros());
        self.out.push(b'"');
        self
    }

    /// A value written by the caller (an array, a nested object).
    pub fn raw(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        write(self.out);
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// The text of a buffer written only through this module: punctuation, digits, this crate's key literals
/// and `&str` values, copied or escaped by serde_json, all valid UTF-8 by construction, so it is not
/// validated again on the hot path (debug builds still check).
pub fn into_string(buf: Vec<u8>) -> String {
    debug_assert!(std::str::from_utf8(&buf).is_ok());
    // SAFETY: see above; every byte sequence written by this module is UTF-8.
    unsafe { String::from_utf8_unchecked(buf) }
}

/// A JSON string: copied as is unless it holds a character JSON escapes.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("strings serialize");
    }
}

/// The inside of a JSON string (escaped, without the quotes).
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    write_str(out, s);
    out.remove(start);
    out.pop();
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of microseconds since the Unix epoch (UTC, years 0000–9999).
pub fn write_rfc3339_micros(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut b[0..4], y.clamp(0, 9999) as u32);
    put_digits(&mut b[5..7], m);
    put_digits(&mut b[8..10], d);
    put_digits(&mut b[11..13], sod / 3600);
    put_digits(&mut b[14..16], sod / 60 % 60);
    put_digits(&mut b[17..19], sod % 60);
    put_digits(&mut b[20..26], frac);
    out.extend_from_slice(&b);
}

fn put_digits(dst: &mut [u8], mut v: u32) {
    for c in dst.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use chrono::{SecondsFormat, TimeZone};

    use super::*;

    #[test]
    fn timestamps_match_chrono() {
        for micros in [0, 1, 951_782_400_000_000, 1_700_000_000_123_456, 4_102_444_799_999_999, 1_582_934_400_000_001] {
            let mut out = Vec::new();
            write_rfc3339_micros(&mut out, micros);
            let expected = Utc.timestamp_micros(micros).unwrap().to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        // Every day of a few leap and non-leap years.
        for day in (0..365 * 12).map(|d| 10_957 + d) {
            let mut out = Vec::new();
            write_rfc3339_micros(&mut out, day * 86_400_000_000 + 3_723_000_007);
            let expected = Utc.timestamp_micros(day * 86_400_000_000 + 3_723_000_007).unwrap().to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn strings_are_escaped_like_serde() {
        for s in ["plain", "quo\"te", "back\\slash", "new\nline", "tab\t", "ünïcødé", "\u{1}"] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap());
        }
    }
}
