//! Per-key order with concurrency across keys.
//!
//! Each record key (`{app}:{openid}`, one user) has a FIFO queue. The first record of an idle key
//! starts a worker task for that key, which runs the key's records one after another and ends
//! when the queue is empty; records arriving meanwhile join the queue. So one user's records run
//! strictly in order, while up to `max_in_flight_keys` users run at once — a slow user or a slow
//! API call holds one worker, never the partition.
//!
//! Two bounds: `slots` (concurrent keys) and `buffer` (records received but not finished, across
//! all keys). When either is exhausted, [`Dispatcher::dispatch`] waits, which stops the Kafka
//! loop from fetching more: backpressure instead of unbounded memory.
//!
//! Shutdown: [`Dispatcher::shutdown`] lets every worker finish the record it is running, drops
//! the records still queued (their offsets were never stored, so they are redelivered) and waits,
//! bounded, for the workers to end.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

type Handler<T> = Box<dyn Fn(T) -> BoxFuture<'static, ()> + Send + Sync>;

struct Buffered<T> {
    item: T,
    _permit: OwnedSemaphorePermit,
}

struct Inner<T> {
    queues: Mutex<HashMap<Vec<u8>, VecDeque<Buffered<T>>>>,
    slots: Arc<Semaphore>,
    buffer: Arc<Semaphore>,
    stopping: AtomicBool,
    tasks: TaskTracker,
    handler: Handler<T>,
    active_keys: IntGauge,
}

/// Runs items of one key in order and items of different keys concurrently.
pub struct Dispatcher<T> {
    inner: Arc<Inner<T>>,
}

impl<T> std::fmt::Debug for Dispatcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("free_slots", &self.inner.slots.available_permits())
            .field("free_buffer", &self.inner.buffer.available_permits())
            .finish()
    }
}

impl<T: Send + 'static> Dispatcher<T> {
    /// `handler` runs one item; `active_keys` tracks how many keys have work.
    pub fn new(
        max_keys: usize,
        max_buffered: usize,
        active_keys: IntGauge,
        handler: impl Fn(T) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Dispatcher<T> {
        Dispatcher {
            inner: Arc::new(Inner {
                queues: Mutex::new(HashMap::new()),
                slots: Arc::new(Semaphore::new(max_keys)),
                buffer: Arc::new(Semaphore::new(max_buffered)),
                stopping: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                handler: Box::new(handler),
                active_keys,
            }),
        }
    }

    /// Queues `item` behind earlier items of `key`; waits while the bounds are exhausted.
    pub async fn dispatch(&self, key: Vec<u8>, item: T) {
        let Ok(permit) = self.inner.buffer.clone().acquire_owned().await else {
            return; // never closed
        };
        let buffered = Buffered {
            item,
            _permit: permit,
        };
        {
            let mut queues = self.inner.lock();
            if let Some(queue) = queues.get_mut(&key) {
                queue.push_back(buffered);
                return;
            }
            // An empty queue marks the key busy; later items of the key wait in it.
            queues.insert(key.clone(), VecDeque::new());
            self.inner.active_keys.set(queues.len() as i64);
        }
        let Ok(slot) = self.inner.slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let inner = Arc::clone(&self.inner);
        self.inner
            .tasks
            .spawn(async move { inner.drain(key, buffered, slot).await });
    }

    /// Stops taking queued items, waits up to `timeout` for running ones; true if all ended.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.tasks.close();
        tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_ok()
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, VecDeque<Buffered<T>>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn drain(&self, key: Vec<u8>, first: Buffered<T>, _slot: OwnedSemaphorePermit) {
        let mut next = Some(first);
        while let Some(Buffered { item, _permit }) = next.take() {
            // A panic must not leave the key marked busy forever (its later records would never
            // run). The record itself is not finished, so its offset stays unstored (lag shows it).
            if AssertUnwindSafe((self.handler)(item))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("a record handler panicked; the record stays unfinished");
            }
            drop(_permit);
            let mut queues = self.lock();
            if self.stopping.load(Ordering::SeqCst) {
                // Dropped, not run: never stored, so redelivered after the restart.
                queues.remove(&key);
            } else if let Some(queue) = queues.get_mut(&key) {
                next = queue.pop_front();
                if next.is_none() {
                    queues.remove(&key);
                }
            }
            self.active_keys.set(queues.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn one_key_in_order_many_keys_at_once() {
        let log = Arc::new(Mutex::new(Vec::<(u8, u32)>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (log2, running2, peak2) = (log.clone(), running.clone(), peak.clone());
        let gauge = IntGauge::new("keys", "keys").expect("gauge");
        let dispatcher = Dispatcher::new(4, 100, gauge, move |(key, n): (u8, u32)| {
            let (log, running, peak) = (log2.clone(), running2.clone(), peak2.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Key 0 is slow: it must not hold back the other keys.
                let delay = if key == 0 { 20 } else { 1 };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                log.lock().expect("log").push((key, n));
                running.fetch_sub(1, Ordering::SeqCst);
            }
            .boxed()
        });
        for n in 0..10u32 {
            for key in 0..4u8 {
                dispatcher.dispatch(vec![key], (key, n)).await;
            }
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while log.lock().expect("log").len() < 40 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("all 40 items ran within 5 s");
        assert!(dispatcher.shutdown(Duration::from_secs(1)).await);
        let log = log.lock().expect("log").clone();
        for key in 0..4u8 {
            let seen: Vec<u32> = log
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(
                seen,
                (0..10).collect::<Vec<_>>(),
                "key {key} ran out of order"
            );
        }
        let last_slow = log.iter().rposition(|(k, _)| *k == 0).expect("key 0 ran");
        assert_eq!(
            last_slow, 39,
            "the slow key finishes last; it held back nobody"
        );
        assert!(
            peak.load(Ordering::SeqCst) > 1,
            "keys never ran concurrently"
        );
        assert!(peak.load(Ordering::SeqCst) <= 4, "more keys ran than slots");
    }
}
