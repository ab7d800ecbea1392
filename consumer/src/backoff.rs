//! Waiting before trying again: exponential backoff with full jitter.
//!
//! Shared by every retry in the crate — WeChat calls ([`crate::actions::calls`]), a record that
//! failed transiently in the group loop ([`crate::pipeline`]) and in the operator tools. Full
//! jitter spreads the retries of many users and processes after a common outage, so they do not
//! hit Redis or WeChat again in step.

use std::time::Duration;

use rand::Rng;

/// Full jitter: uniform in `[0, min(max, initial × 2^(attempt-1))]`, at least 1 ms.
pub(crate) fn exponential_jitter(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(max).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(1..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_millis(800);
        for attempt in 1..20 {
            let d = exponential_jitter(attempt, initial, max);
            assert!(
                d >= Duration::from_millis(1) && d <= max,
                "{attempt}: {d:?}"
            );
        }
        let first = exponential_jitter(1, initial, max);
        assert!(first <= initial);
    }
}
