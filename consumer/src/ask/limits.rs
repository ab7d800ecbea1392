//! How hard one process may lean on a backend, per app: at most `ask.max_concurrency` calls in
//! flight (a semaphore) and `ask.rate_per_second` calls started per second with a burst of
//! `ask.burst` (a token bucket). A call waits for both; the wait counts against the ask's
//! deadline like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct AppLimit {
    in_flight: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
pub struct Limits {
    concurrency: usize,
    rate: f64,
    burst: f64,
    apps: Mutex<HashMap<String, Arc<AppLimit>>>,
}

impl Limits {
    pub fn new(concurrency: usize, rate_per_second: f64, burst: u32) -> Limits {
        Limits {
            concurrency: concurrency.max(1),
            rate: rate_per_second.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn app(&self, app: &str) -> Arc<AppLimit> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(apps.entry(app.to_owned()).or_insert_with(|| {
            Arc::new(AppLimit {
                in_flight: Arc::new(Semaphore::new(self.concurrency)),
                bucket: Mutex::new(Bucket {
                    tokens: self.burst,
                    at: Instant::now(),
                }),
            })
        }))
    }

    /// Waits for a slot and a token of `app`; the permit ends the call's slot when dropped.
    pub async fn acquire(&self, app: &str) -> OwnedSemaphorePermit {
        let limit = self.app(app);
        let permit = loop {
            if let Ok(permit) = Arc::clone(&limit.in_flight).acquire_owned().await {
                break permit;
            }
        };
        loop {
            let wait = {
                let mut bucket = limit.bucket.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
                bucket.tokens = (bucket.tokens + refill).min(self.burst);
                bucket.at = now;
                if bucket.tokens >= 1.0 {
                    bucket.tokens -= 1.0;
                    None
                } else {
                    Some(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
                }
            };
            match wait {
                None => return permit,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_spaces_calls_after_the_burst() {
        let limits = Limits::new(10, 20.0, 2);
        let start = Instant::now();
        for _ in 0..4 {
            drop(limits.acquire("a").await);
        }
        // Two from the burst, then one every 50 ms: never sooner.
        assert!(start.elapsed() >= Duration::from_millis(95));
    }

    #[tokio::test]
    async fn concurrency_is_bounded_per_app() {
        let limits = Limits::new(1, 1000.0, 1000);
        let held = limits.acquire("a").await;
        let second = tokio::time::timeout(Duration::from_millis(50), limits.acquire("a")).await;
        assert!(second.is_err());
        drop(held);
        let third = tokio::time::timeout(Duration::from_secs(5), limits.acquire("a")).await;
        assert!(third.is_ok());
    }
}
