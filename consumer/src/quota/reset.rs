//! When a paused app's daily quota is back: [`ResetPolicy`].
//!
//! WeChat only says a daily quota resets "the next day" (docs/wechat-protocol.md). Its day is
//! China Standard Time's, so the default is the next midnight at UTC+8 after the 45009 answer:
//! never earlier than WeChat's own reset, and at most a day of pause. `quota.reset_utc_offset`
//! moves that midnight; `quota.pause_for` replaces it with a fixed length (tests, or a deployment
//! that would rather probe again sooner: an app that is still out of quota pauses again at its
//! first call).

use std::time::Duration;

use crate::config::QuotaSettings;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How long a pause lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetPolicy {
    /// Until the next midnight at this offset from UTC, in minutes (480: UTC+8).
    Midnight { utc_offset_minutes: i32 },
    /// For a fixed time.
    After(Duration),
}

impl ResetPolicy {
    pub(crate) fn from_settings(q: &QuotaSettings) -> ResetPolicy {
        match q.pause_for {
            Some(length) => ResetPolicy::After(length),
            None => ResetPolicy::Midnight {
                utc_offset_minutes: q.reset_utc_offset_minutes,
            },
        }
    }

    /// The end of a pause that starts at `now_ms` (Unix milliseconds).
    pub(crate) fn until_ms(&self, now_ms: i64) -> i64 {
        match *self {
            ResetPolicy::Midnight { utc_offset_minutes } => {
                let offset = i64::from(utc_offset_minutes) * 60_000;
                let local = now_ms.saturating_add(offset);
                (local.div_euclid(DAY_MS) + 1) * DAY_MS - offset
            }
            ResetPolicy::After(length) => {
                now_ms.saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z in Unix milliseconds.
    const DEC_1_UTC: i64 = 1_796_083_200_000;
    const HOUR: i64 = 3600 * 1000;

    #[test]
    fn the_default_pause_ends_at_the_next_midnight_in_china() {
        let cst = ResetPolicy::Midnight {
            utc_offset_minutes: 480,
        };
        // 11:00 in Beijing on 1 December: the quota is back at 00:00 on 2 December, 16:00 UTC.
        assert_eq!(cst.until_ms(DEC_1_UTC + 3 * HOUR), DEC_1_UTC + 16 * HOUR);
        // 23:59:59.999 in Beijing: one millisecond of pause.
        assert_eq!(
            cst.until_ms(DEC_1_UTC + 16 * HOUR - 1),
            DEC_1_UTC + 16 * HOUR
        );
        // Midnight itself starts a new day, whose quota may be spent too: the next midnight.
        assert_eq!(cst.until_ms(DEC_1_UTC + 16 * HOUR), DEC_1_UTC + 40 * HOUR);
        // 20:00 UTC on 30 November is already 04:00 on 1 December in Beijing.
        assert_eq!(cst.until_ms(DEC_1_UTC - 4 * HOUR), DEC_1_UTC + 16 * HOUR);
    }

    #[test]
    fn other_offsets_and_fixed_lengths() {
        let utc = ResetPolicy::Midnight {
            utc_offset_minutes: 0,
        };
        assert_eq!(utc.until_ms(DEC_1_UTC + 3 * HOUR), DEC_1_UTC + 24 * HOUR);
        let west = ResetPolicy::Midnight {
            utc_offset_minutes: -300,
        };
        assert_eq!(west.until_ms(DEC_1_UTC + 3 * HOUR), DEC_1_UTC + 5 * HOUR);
        let fixed = ResetPolicy::After(Duration::from_secs(2));
        assert_eq!(fixed.until_ms(DEC_1_UTC), DEC_1_UTC + 2000);
    }
}
