//! Injected faults: latency, `-1` system errors, slow answers, 45011/45009/`-1` bursts.
//!
//! Every API call rolls the dice once ([`Faults::roll`]). The settings can be changed while the
//! simulator runs (`POST /sim/faults`), so a test can start a storm mid-stream and end it again.
//! Bursts are windows of time in which every message call (send, typing, upload) is refused with
//! the burst's errcode; they are given at start as offsets from the start, or opened at run time
//! for a duration from now.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// "system error": WeChat is busy and did nothing.
pub const ERRCODE_SYSTEM_ERROR: i64 = -1;
/// Per-minute quota reached.
pub const ERRCODE_MINUTE_QUOTA: i64 = 45011;
/// Daily quota reached.
pub const ERRCODE_DAILY_QUOTA: i64 = 45009;

/// The dials; `GET /sim/faults` shows them, `POST /sim/faults` changes any of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultSettings {
    /// Added to every answer.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Extra latency, uniform in `[0, jitter]`.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Share of calls answered `-1 system error` without doing anything.
    pub error_rate: f64,
    /// Share of calls answered only after `slow_delay` (meant to exceed the client's timeout),
    /// whatever the answer is. The call is carried out first: an accepted slow send is delivered
    /// and recorded, as a real send can arrive although its answer never did.
    pub slow_rate: f64,
    #[serde(with = "humantime_serde")]
    pub slow_delay: Duration,
}

/// A window in which message calls are refused with `errcode`.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub errcode: i64,
    pub from: Instant,
    pub until: Instant,
}

/// A burst given on the command line: `START+LENGTH` after the simulator started.
#[derive(Debug, Clone, Copy)]
pub struct BurstSpec {
    pub start: Duration,
    pub length: Duration,
}

/// Parses `30s+5s` (from 30 s after start, for 5 s).
pub fn parse_burst(s: &str) -> Result<BurstSpec, String> {
    let (start, length) = s
        .split_once('+')
        .ok_or_else(|| format!("`{s}`: expected START+LENGTH, e.g. 30s+5s"))?;
    let parse =
        |part: &str| humantime::parse_duration(part.trim()).map_err(|e| format!("`{part}`: {e}"));
    Ok(BurstSpec {
        start: parse(start)?,
        length: parse(length)?,
    })
}

/// What the dice decided for one call.
#[derive(Debug, Clone, Copy)]
pub struct Roll {
    /// Refuse the call with this errcode instead of carrying it out.
    pub refuse: Option<i64>,
    /// Carry the call out, then answer after this long (slow) ...
    pub slow: bool,
    /// ... or after this long (the normal latency).
    pub delay: Duration,
}

#[derive(Debug)]
pub struct Faults {
    settings: Mutex<FaultSettings>,
    bursts: Mutex<Vec<Burst>>,
    rng: Mutex<StdRng>,
}

impl Faults {
    pub fn new(settings: FaultSettings, bursts: Vec<Burst>, seed: u64) -> Faults {
        let rng = if seed == 0 {
            StdRng::from_os_rng()
        } else {
            StdRng::seed_from_u64(seed)
        };
        Faults {
            settings: Mutex::new(settings),
            bursts: Mutex::new(bursts),
            rng: Mutex::new(rng),
        }
    }

    pub fn settings(&self) -> FaultSettings {
        lock(&self.settings).clone()
    }

    pub fn set(&self, settings: FaultSettings) {
        *lock(&self.settings) = settings;
    }

    /// Opens a burst of `errcode` from now for `length`.
    pub fn burst_now(&self, errcode: i64, length: Duration) {
        let from = Instant::now();
        let mut bursts = lock(&self.bursts);
        bursts.retain(|b| b.until > from);
        bursts.push(Burst {
            errcode,
            from,
            until: from + length,
        });
    }

    /// Bursts still to come or running, as (errcode, seconds from now until start, until end).
    pub fn pending_bursts(&self) -> Vec<(i64, f64, f64)> {
        let now = Instant::now();
        lock(&self.bursts)
            .iter()
            .filter(|b| b.until > now)
            .map(|b| {
                (
                    b.errcode,
                    b.from.saturating_duration_since(now).as_secs_f64(),
                    b.until.saturating_duration_since(now).as_secs_f64(),
                )
            })
            .collect()
    }

    /// The dice for one call; `message_call` is true for send, typing and upload (the calls
    /// bursts apply to).
    pub fn roll(&self, message_call: bool) -> Roll {
        let s = self.settings();
        let burst = if message_call {
            let now = Instant::now();
            lock(&self.bursts)
                .iter()
                .find(|b| b.from <= now && now < b.until)
                .map(|b| b.errcode)
        } else {
            None
        };
        let mut rng = lock(&self.rng);
        let failed = s.error_rate > 0.0 && rng.random_bool(s.error_rate.clamp(0.0, 1.0));
        let slow = s.slow_rate > 0.0 && rng.random_bool(s.slow_rate.clamp(0.0, 1.0));
        let jitter = if s.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(rng.random_range(0..=s.jitter.as_micros() as u64))
        };
        let refuse = burst.or(failed.then_some(ERRCODE_SYSTEM_ERROR));
        let slow = slow && refuse.is_none();
        Roll {
            refuse,
            slow,
            delay: if slow {
                s.slow_delay
            } else {
                s.latency + jitter
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(error_rate: f64, slow_rate: f64) -> FaultSettings {
        FaultSettings {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            error_rate,
            slow_rate,
            slow_delay: Duration::from_secs(6),
        }
    }

    #[test]
    fn rates_are_respected_roughly() {
        let faults = Faults::new(settings(0.1, 0.05), Vec::new(), 7);
        let rolls: Vec<Roll> = (0..20_000).map(|_| faults.roll(true)).collect();
        let errors = rolls.iter().filter(|r| r.refuse == Some(-1)).count();
        let slow = rolls.iter().filter(|r| r.slow).count();
        assert!((1_700..2_300).contains(&errors), "{errors}");
        assert!((700..1_200).contains(&slow), "{slow}");
        assert!(rolls
            .iter()
            .filter(|r| r.slow)
            .all(|r| r.delay == Duration::from_secs(6)));
    }

    #[test]
    fn a_burst_refuses_message_calls_only_while_it_lasts() {
        let faults = Faults::new(settings(0.0, 0.0), Vec::new(), 7);
        assert_eq!(faults.roll(true).refuse, None);
        faults.burst_now(ERRCODE_MINUTE_QUOTA, Duration::from_millis(50));
        assert_eq!(faults.roll(true).refuse, Some(45011));
        assert_eq!(
            faults.roll(false).refuse,
            None,
            "token calls are not in bursts"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(faults.roll(true).refuse, None);
    }

    #[test]
    fn burst_specs_parse() {
        let spec = parse_burst("30s+5s").expect("valid");
        assert_eq!(spec.start, Duration::from_secs(30));
        assert_eq!(spec.length, Duration::from_secs(5));
        assert!(parse_burst("30s").is_err());
        assert!(parse_burst("x+5s").is_err());
    }
}
