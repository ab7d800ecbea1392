//! Waiting before trying again: exponential backoff with full jitter.
//!
//! Shared by every retry in the crate — WeChat calls ([`crate::actions::calls`]), a record that
//! failed transiently in the group loop ([`crate::pipeline`]) or the releaser of held records
//! ([`crate::quota`]), both through [`retry_until_stopped`], and in the operator tools. Full
//! jitter spreads the retries of many users and processes after a common outage, so they do not
//! hit Redis or WeChat again in step.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Full jitter: uniform in `[0, min(max, initial × 2^(attempt-1))]`, at least 1 ms.
pub(crate) fn exponential_jitter(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(max).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(1..=cap))
}

/// Runs `attempt` until it succeeds, waiting [`exponential_jitter`] between failures, each
/// failure first given to `failed` with its attempt number (to count and log it). `None` when
/// `stop` is cancelled: a failure then, or during a wait, ends the retries at once (what the
/// attempt held is given back by its own cancellation).
pub(crate) async fn retry_until_stopped<T, E, F>(
    stop: &CancellationToken,
    initial: Duration,
    max: Duration,
    mut attempt: impl FnMut() -> F,
    mut failed: impl FnMut(&E, u32),
) -> Option<T>
where
    F: Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(_) if stop.is_cancelled() => return None,
            Err(e) => {
                failures += 1;
                failed(&e, failures);
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(exponential_jitter(failures, initial, max)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_until_success_counting_each_failure() {
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let mut seen = Vec::new();
        let done = retry_until_stopped(
            &stop,
            Duration::from_millis(1),
            Duration::from_millis(2),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    Err(n)
                } else {
                    Ok(n)
                }
            },
            |e: &u32, attempt| seen.push((*e, attempt)),
        )
        .await;
        assert_eq!(done, Some(3));
        assert_eq!(seen, [(1, 1), (2, 2)]);
    }

    #[tokio::test]
    async fn stops_when_cancelled_during_a_wait_or_at_a_failure() {
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        let failures = AtomicU32::new(0);
        let stopped: Option<()> = retry_until_stopped(
            &stop,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            || async { Err::<(), _>(()) },
            |_, _| {
                failures.fetch_add(1, Ordering::SeqCst);
                canceller.cancel();
            },
        )
        .await;
        assert_eq!(stopped, None, "an hour's wait ends with the cancellation");
        assert_eq!(failures.load(Ordering::SeqCst), 1);
        let again: Option<()> = retry_until_stopped(
            &stop,
            Duration::from_millis(1),
            Duration::from_millis(1),
            || async { Err::<(), _>(()) },
            |_, _| panic!("a failure after the cancellation is not retried"),
        )
        .await;
        assert_eq!(again, None);
    }

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
