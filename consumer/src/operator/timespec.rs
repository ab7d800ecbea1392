//! Points in time on the command line (`--since`, `--until`): an RFC 3339 time with its offset
//! (`2024-05-01T08:00:00+08:00`, `2024-05-01T00:00:00Z`), or an age counted back from now
//! (`90m`, `2h`, `3d`, `1h30m`).
//!
//! Parsed by hand rather than with a date crate: the format is small and fixed, and operators in
//! China write `+08:00`, which `humantime`'s RFC 3339 reader (UTC only) refuses.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// Unix milliseconds.
    At(i64),
    /// This long before the command started.
    Ago(Duration),
}

impl TimeSpec {
    /// Unix milliseconds, with `now_ms` as the reference of a relative time.
    pub fn resolve(&self, now_ms: i64) -> i64 {
        match self {
            TimeSpec::At(ms) => *ms,
            TimeSpec::Ago(age) => now_ms - age.as_millis() as i64,
        }
    }
}

impl FromStr for TimeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeSpec, String> {
        let s = s.trim();
        if let Some(ms) = parse_rfc3339(s) {
            return Ok(TimeSpec::At(ms));
        }
        humantime::parse_duration(s)
            .map(TimeSpec::Ago)
            .map_err(|_| {
                format!(
                    "`{s}` is neither an RFC 3339 time (2024-05-01T08:00:00+08:00) nor an age \
                 (2h, 90m, 3d)"
                )
            })
    }
}

impl fmt::Display for TimeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeSpec::At(ms) => f.write_str(&format_ms(*ms)),
            TimeSpec::Ago(age) => write!(f, "{} ago", humantime::format_duration(*age)),
        }
    }
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS[.fraction](Z|z|±HH:MM)` to unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(s, 0..4)?;
    let month = digits(s, 5..7)?;
    let day = digits(s, 8..10)?;
    let (hour, minute, second) = (digits(s, 11..13)?, digits(s, 14..16)?, digits(s, 17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &fraction[..len.min(3)]);
        millis = first3.parse::<i64>().ok()?;
        rest = &fraction[len..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (digits(rest, 1..3)?, digits(rest, 4..6)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some(secs * 1000 + millis)
}

/// Unix milliseconds as RFC 3339 in UTC, to the second.
pub fn format_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn digits(s: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = s.get(range)?;
    if part.bytes().all(|c| c.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAY_1_2024_UTC_MS: i64 = 1_714_521_600_000;

    #[test]
    fn rfc3339_with_any_offset_names_the_same_instant() {
        for s in [
            "2024-05-01T00:00:00Z",
            "2024-05-01t00:00:00z",
            "2024-05-01 00:00:00Z",
            "2024-05-01T08:00:00+08:00",
            "2024-04-30T19:00:00-05:00",
        ] {
            assert_eq!(parse_rfc3339(s), Some(MAY_1_2024_UTC_MS), "{s}");
        }
        assert_eq!(
            parse_rfc3339("2024-05-01T00:00:00.25Z"),
            Some(MAY_1_2024_UTC_MS + 250)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
    }

    #[test]
    fn malformed_times_are_refused() {
        for s in [
            "2024-05-01",
            "2024-05-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T00:00:00+8:00",
            "2024-05-01T00:00:00.Z",
            "+024-05-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn ages_count_back_from_now() {
        let spec: TimeSpec = "2h".parse().expect("age");
        assert_eq!(spec, TimeSpec::Ago(Duration::from_secs(7200)));
        assert_eq!(spec.resolve(10_000_000), 10_000_000 - 7_200_000);
        assert_eq!(
            "1h30m".parse::<TimeSpec>(),
            Ok(TimeSpec::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            "3d".parse::<TimeSpec>(),
            Ok(TimeSpec::Ago(Duration::from_secs(3 * 86_400)))
        );
        assert!("yesterday".parse::<TimeSpec>().is_err());
        assert_eq!(format_ms(MAY_1_2024_UTC_MS), "2024-05-01T00:00:00Z");
    }
}
