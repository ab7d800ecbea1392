//! Kafka's acknowledgements, served on the runtime that waits for them.
//!
//! librdkafka hands a delivery report (an acknowledgement, or a final failure) to its main queue,
//! and someone must poll that queue to run the report's callback. The usual arrangement, a thread
//! of its own polling in a loop, costs one more thread wake-up per record: the broker thread
//! wakes the polling thread, which wakes the task waiting for the record. Here librdkafka writes
//! a byte to a socket when the queue becomes non-empty ([`MainQueue::wake_on`]), and a task on a
//! worker's runtime ([`pump`]) waits for that byte and serves the queue. A worker waiting for its
//! own record's report is then woken by the broker thread directly.
//!
//! The pump runs on the runtime of the first task that sends. If that runtime goes away, the
//! pump's guard notices and the next send starts a new one where it runs ([`Pump::ensure`]); what
//! arrives meanwhile with no send after it, and the error events before the first send, are
//! served within a second by a sweep thread that never waits on the queue ([`sweep`]).
//! The only `unsafe` of the crate is here: three calls into librdkafka's queue API, which the
//! `rdkafka` crate does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer};

use super::AckContext;

/// Events served per wake-up at most; one event carries many delivery reports.
const MAX_ROUNDS: usize = 10_000;

/// How often the sweep ([`sweep`]) serves the queue, pump or no pump.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A reference of our own to a producer's main queue, taken to ask for wake-ups and to read the
/// queue's length. Destroyed (and the wake-ups turned off) before the producer is.
pub(super) struct MainQueue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues are internally locked; a queue handle may be used from any thread.
unsafe impl Send for MainQueue {}
// SAFETY: as above; every method takes `&self` and only calls thread-safe librdkafka functions.
unsafe impl Sync for MainQueue {}

impl MainQueue {
    /// The main queue of `producer`, or `None` if librdkafka has none (it always has one).
    pub(super) fn of(producer: &BaseProducer<AckContext>) -> Option<MainQueue> {
        // SAFETY: the client pointer is valid while `producer` lives; the returned handle is a new
        // reference that we own and destroy in `Drop`, which runs before the producer's drop
        // (see the field order of `Inner`).
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        NonNull::new(queue).map(MainQueue)
    }

    /// Asks librdkafka to write one byte to `socket` whenever the queue goes from empty to
    /// non-empty (and, after the queue was polled, again on its next event).
    pub(super) fn wake_on(&self, socket: &StdStream) {
        const BYTE: &[u8] = b"1";
        // SAFETY: the queue handle is valid (owned by `self`); the payload is a static byte that
        // librdkafka copies; the socket outlives the queue handle (field order of `Inner`), and
        // the wake-ups are turned off in `Drop` before the socket closes.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(
                self.0.as_ptr(),
                socket.as_raw_fd(),
                BYTE.as_ptr().cast(),
                BYTE.len(),
            );
        }
    }

    /// Events waiting in the queue.
    pub(super) fn len(&self) -> usize {
        // SAFETY: the queue handle is valid (owned by `self`).
        unsafe { rd::rd_kafka_queue_length(self.0.as_ptr()) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and used for the last time; fd -1 turns the wake-ups off.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(self.0.as_ptr(), -1, std::ptr::null(), 0);
            rd::rd_kafka_queue_destroy(self.0.as_ptr());
        }
    }
}

/// The producer with its queue handle and wake-up socket. Fields drop in order: the queue handle
/// (wake-ups off) first, then the socket, then the producer.
pub(super) struct Inner {
    pub(super) queue: MainQueue,
    wake_write: StdStream,
    wake_read: StdStream,
    pumping: AtomicBool,
    pub(super) producer: BaseProducer<AckContext>,
}

impl Inner {
    pub(super) fn new(producer: BaseProducer<AckContext>) -> io::Result<Arc<Inner>> {
        let queue = MainQueue::of(&producer)
            .ok_or_else(|| io::Error::other("the producer has no main queue"))?;
        let (wake_write, wake_read) = StdStream::pair()?;
        wake_write.set_nonblocking(true)?;
        wake_read.set_nonblocking(true)?;
        queue.wake_on(&wake_write);
        let inner = Arc::new(Inner {
            queue,
            wake_write,
            wake_read,
            pumping: AtomicBool::new(false),
            producer,
        });
        let swept = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("kafka-acks-sweep".into())
            .spawn(move || sweep(swept))?;
        Ok(inner)
    }

    /// Serves every event waiting in the main queue: delivery reports complete their senders'
    /// futures, errors reach the context. Returns once the queue is empty (or after a bounded
    /// number of rounds; each round polled the queue, so its next event signals again).
    fn serve(&self) {
        for _ in 0..MAX_ROUNDS {
            if self.queue.len() == 0 {
                return;
            }
            self.producer.poll(Duration::ZERO);
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("queued_events", &self.queue.len())
            .field("pumping", &self.pumping.load(Ordering::Relaxed))
            .field("wake_write", &self.wake_write.as_raw_fd())
            .finish_non_exhaustive()
    }
}

/// Serves the queue every [`SWEEP_EVERY`] from a thread of its own, until the producer is gone.
/// It never waits on the queue, so it takes none of the pump's wake-ups; it serves what no pump
/// would: the reports of records whose pump went away with its runtime when no send came after
/// to start another, and librdkafka's error events before the first send starts a pump.
fn sweep(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        match inner.upgrade() {
            Some(inner) => inner.serve(),
            None => return,
        }
    }
}

/// Starts the pump where it is needed.
#[derive(Debug)]
pub(super) struct Pump;

impl Pump {
    /// Makes sure a pump serves `inner`'s queue, starting one on the current runtime if none
    /// runs. Outside a runtime nothing is started (the caller then has no task to wake either).
    pub(super) fn ensure(inner: &Arc<Inner>) {
        if inner.pumping.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner.pumping.swap(true, Ordering::AcqRel) {
            return;
        }
        let socket = inner.wake_read.try_clone().and_then(|s| {
            // `from_std` registers the socket with this runtime's reactor.
            let _entered = runtime.enter();
            tokio::net::UnixStream::from_std(s)
        });
        match socket {
            Ok(socket) => {
                runtime.spawn(pump(Arc::downgrade(inner), socket));
            }
            Err(e) => {
                inner.pumping.store(false, Ordering::Release);
                tracing::error!(error = %e, "cannot wait for Kafka's acknowledgements");
            }
        }
    }
}

/// Resets `pumping` when the pump ends, however it ends (its runtime shutting down included), so
/// the next send starts another.
struct Running(Weak<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.pumping.store(false, Ordering::Release);
        }
    }
}

/// Serves the queue each time librdkafka signals it, until the producer is gone.
async fn pump(inner: Weak<Inner>, socket: tokio::net::UnixStream) {
    let _running = Running(inner.clone());
    let mut bytes = [0u8; 64];
    loop {
        match inner.upgrade() {
            Some(inner) => inner.serve(),
            None => return,
        }
        if socket.readable().await.is_err() {
            return;
        }
        // Drain the wake-up bytes; the queue is served at the top of the loop.
        loop {
            match socket.try_read(&mut bytes) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}
