//! The Kafka side: the consumer-group loop that feeds [`Processor::process`] and stores offsets.
//!
//! Offset discipline (`docs/architecture.md`, promise 6): `enable.auto.offset.store=false` and `enable.auto.commit=false`;
//! this loop commits the offsets it stored every `commit_interval`, and nothing else ever commits
//! (a process that dies commits nothing more). A record's offset is stored when its outcome
//! is final (replied, skipped, or dead-lettered *and* the dead letter acknowledged), and only up
//! to the lowest unfinished record of its partition ([`offsets`]). Stored offsets are also
//! committed on revoke ([`context`]) and on shutdown; either also ends the runs of the records
//! still in flight for those partitions, so their sends stop waiting and give unsent claims back
//! to the redelivery (see [`offsets`]). A transient failure retries the same record
//! with backoff, holding back only its own user ([`dispatch`]) and its partition's committed
//! position — never skipping it.
//!
//! Poison records (not an envelope, unknown version) are dead-lettered with the reason, counted,
//! and their offset advances like any other final outcome.
//!
//! Scaling: each partition of the inbound topic is read by one process of the group, so the
//! partition count is the ceiling on processes; inside a process, users run concurrently.
//!
//! Backpressure without leaving the group: when the records in hand fill the dispatcher's bounds
//! (a slow or failing WeChat API), the loop pauses the assigned partitions instead of simply
//! waiting, and keeps polling the consumer. Polling is what keeps the process in the group:
//! librdkafka drops a member that has not polled for `max.poll.interval.ms`, and serves rebalances
//! only while polled. Pausing discards what was prefetched and resuming fetches again from the
//! next undelivered offset, so nothing is skipped and memory stays bounded.

pub mod context;
pub mod dispatch;
pub mod offsets;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::envelope::Envelope;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::retry_until_stopped;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, DeadLetterWriter, Reason};
use crate::error::ProcessError;
use crate::ledger::ClaimOwner;
use crate::metrics::Metrics;
use crate::processor::{Outcome, Processor};
use crate::record::KafkaRecord;
use context::PipelineContext;
use dispatch::Dispatcher;
use offsets::OffsetTracker;

/// A received record, the assignment generation it was received in (see [`offsets`]) and the
/// signal that ends its run (its partition revoked, or shutdown).
#[derive(Debug, Clone)]
struct Tracked {
    record: KafkaRecord,
    generation: u64,
    end: CancellationToken,
}

/// The librdkafka settings of the group consumer.
pub fn consumer_config(settings: &Settings) -> ClientConfig {
    let k = &settings.kafka;
    let mut config = ClientConfig::new();
    // Pass-through first, so the settings below always win.
    config.set("auto.offset.reset", "earliest");
    for (key, value) in &k.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "session.timeout.ms",
            k.session_timeout.as_millis().to_string(),
        )
        .set(
            "statistics.interval.ms",
            k.statistics_interval.as_millis().to_string(),
        );
    config
}

/// What every record task shares.
struct Shared {
    consumer: Arc<StreamConsumer<PipelineContext>>,
    processor: Processor,
    dead_letters: DeadLetterWriter,
    tracker: Arc<OffsetTracker>,
    metrics: Metrics,
    shutdown: CancellationToken,
    retry_initial: Duration,
    retry_max: Duration,
}

/// The consumer group member.
#[derive(Debug)]
pub struct Pipeline {
    shared: Arc<Shared>,
    topic: String,
    max_keys: usize,
    max_buffered: usize,
    shutdown_timeout: Duration,
    commit_interval: Duration,
    /// Set once subscribed; read by `/readyz`.
    pub running: Arc<AtomicBool>,
    /// Set at the first assignment; read by `/readyz`.
    pub joined: Arc<AtomicBool>,
}

/// How long a record may wait for the dispatcher before the partitions are paused and the
/// consumer is polled meanwhile. Short against `max.poll.interval.ms` (5 minutes by default),
/// long against a normal hand-over (microseconds).
const PAUSE_AFTER: Duration = Duration::from_secs(1);

impl Pipeline {
    pub fn new(
        settings: &Settings,
        processor: Processor,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Pipeline> {
        let tracker = Arc::new(OffsetTracker::under(shutdown.clone()));
        let joined = Arc::new(AtomicBool::new(false));
        let context = PipelineContext {
            tracker: Arc::clone(&tracker),
            gates: processor.quota.gates(),
            metrics: metrics.clone(),
            topic: settings.kafka.inbound_topic.clone(),
            joined: Arc::clone(&joined),
        };
        let consumer: StreamConsumer<PipelineContext> =
            consumer_config(settings).create_with_context(context)?;
        let p = &settings.processing;
        Ok(Pipeline {
            shared: Arc::new(Shared {
                consumer: Arc::new(consumer),
                processor,
                dead_letters,
                tracker,
                metrics,
                shutdown,
                retry_initial: p.retry_initial_backoff,
                retry_max: p.retry_max_backoff,
            }),
            topic: settings.kafka.inbound_topic.clone(),
            max_keys: p.max_in_flight_keys,
            max_buffered: p.max_buffered_records,
            shutdown_timeout: settings.server.shutdown_timeout,
            commit_interval: settings.kafka.commit_interval,
            running: Arc::new(AtomicBool::new(false)),
            joined,
        })
    }

    /// Consumes until the shutdown token fires, then drains, commits and leaves the group.
    pub async fn run(self) -> anyhow::Result<()> {
        let shared = Arc::clone(&self.shared);
        shared.consumer.subscribe(&[&self.topic])?;
        self.running.store(true, Ordering::SeqCst);
        let handler_shared = Arc::clone(&shared);
        let dispatcher = Dispatcher::new(
            self.max_keys,
            self.max_buffered,
            shared.metrics.in_flight_keys.clone(),
            move |record: Tracked| {
                let shared = Arc::clone(&handler_shared);
                async move { shared.handle(record).await }.boxed()
            },
        );
        let mut commit_ticker = tokio::time::interval(self.commit_interval);
        commit_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Records that arrived while the partitions were being paused, in arrival order.
        let mut backlog = VecDeque::new();
        loop {
            let record = match backlog.pop_front() {
                Some(record) => record,
                None => match shared.receive(&mut commit_ticker).await {
                    Next::Record(record) => record,
                    Next::Again => continue,
                    Next::Stop => break,
                },
            };
            let handed_over = shared
                .hand_over(&dispatcher, record, &mut backlog, &mut commit_ticker)
                .await;
            if !handed_over {
                break;
            }
        }
        tracing::info!("stopping: finishing records in progress");
        self.running.store(false, Ordering::SeqCst);
        if !dispatcher.shutdown(self.shutdown_timeout).await {
            tracing::warn!(
                timeout = ?self.shutdown_timeout,
                "records still running at the shutdown deadline; they will be redelivered"
            );
        }
        match shared.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(e) => tracing::info!(error = %e, "final commit (nothing new to commit?)"),
        }
        shared.consumer.unsubscribe();
        // Dropping the last handle closes the consumer, which leaves the group.
        drop(dispatcher);
        drop(shared);
        drop(self.shared);
        Ok(())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// What the main loop does after [`Shared::receive`].
enum Next {
    Record(Tracked),
    /// A commit tick or a consumer error: receive again.
    Again,
    Stop,
}

impl Shared {
    /// Waits for the next message, committing on every tick meanwhile.
    async fn receive(&self, commit_ticker: &mut tokio::time::Interval) -> Next {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Next::Stop,
            _ = commit_ticker.tick() => {
                self.commit_stored();
                Next::Again
            }
            received = self.consumer.recv() => match received {
                Ok(message) => Next::Record(self.take(&message)),
                Err(e) => {
                    // Broker or transport trouble; librdkafka reconnects on its own.
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Next::Again
                }
            },
        }
    }

    /// Commits the offsets stored so far, i.e. of records with a final outcome.
    fn commit_stored(&self) {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async) {
            if !context::is_no_offset(&e) {
                tracing::warn!(error = %e, "periodic commit failed");
            }
        }
    }

    /// Registers a received message with the offset tracker and owns it.
    fn take(&self, message: &BorrowedMessage<'_>) -> Tracked {
        let (generation, end) =
            self.tracker
                .begin(message.topic(), message.partition(), message.offset());
        Tracked {
            record: KafkaRecord::from_message(message),
            generation,
            end,
        }
    }

    /// Gives `record` to the dispatcher, however long that takes, without leaving the group.
    ///
    /// After [`PAUSE_AFTER`] of waiting, the assigned partitions are paused and the consumer is
    /// polled while the wait goes on (serving rebalances, keeping `max.poll.interval.ms` from
    /// expiring); commits go on too. A message already on its way when the pause took effect
    /// joins `backlog`, in order, and a partition assigned meanwhile is paused as well. The
    /// partitions resume once the record is taken. False when shutdown cut the wait short.
    async fn hand_over(
        &self,
        dispatcher: &Dispatcher<Tracked>,
        record: Tracked,
        backlog: &mut VecDeque<Tracked>,
        commit_ticker: &mut tokio::time::Interval,
    ) -> bool {
        let dispatch = dispatcher.dispatch(record.record.ordering_key(), record);
        tokio::pin!(dispatch);
        let pause_at = tokio::time::sleep(PAUSE_AFTER);
        tokio::pin!(pause_at);
        let mut paused = false;
        let handed_over = loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break false,
                _ = &mut dispatch => break true,
                _ = &mut pause_at, if !paused => {
                    paused = true;
                    self.set_paused(true);
                }
                _ = commit_ticker.tick(), if paused => self.commit_stored(),
                received = self.consumer.recv(), if paused => match received {
                    Ok(message) => {
                        backlog.push_back(self.take(&message));
                        self.set_paused(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error while paused");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        };
        if paused {
            self.set_paused(false);
        }
        handed_over
    }

    /// Pauses or resumes fetching for every assigned partition.
    fn set_paused(&self, paused: bool) {
        match self.consumer.assignment() {
            Ok(assigned) => {
                let result = if paused {
                    self.consumer.pause(&assigned)
                } else {
                    self.consumer.resume(&assigned)
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, paused, "cannot pause or resume the partitions");
                }
                if paused && self.metrics.backpressure.get() == 0 {
                    tracing::info!(
                        partitions = assigned.count(),
                        "records in hand fill every bound: fetching paused"
                    );
                }
                if paused {
                    self.metrics.backpressure.set(1);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause or resume it")
            }
        }
        if !paused {
            self.metrics.backpressure.set(0);
            tracing::info!("fetching resumed");
        }
    }

    /// Takes one record to a final outcome (retrying transient failures), then stores its offset.
    async fn handle(&self, tracked: Tracked) {
        let Tracked {
            record,
            generation,
            end,
        } = tracked;
        let span = tracing::info_span!(
            "record",
            partition = record.partition,
            offset = record.offset
        );
        async {
            // One owner for every retry of this run: a retry recognises the ledger marks its
            // earlier tries wrote, even those whose answers were lost. The run ends with the
            // partition's assignment (or shutdown): its sends stop waiting and give claims back.
            let owner = ClaimOwner::until(end.clone());
            let outcome = retry_until_stopped(
                &end,
                self.retry_initial,
                self.retry_max,
                || async {
                    // Revoked meanwhile: the new owner will redeliver it; do nothing twice.
                    if !self
                        .tracker
                        .is_current(&record.topic, record.partition, generation)
                    {
                        return Ok(None);
                    }
                    self.outcome_of(&record, &owner).await.map(Some)
                },
                // Transient: back off and retry the same record. Its offset stays unstored, so
                // even a crash now redelivers it.
                |e: &ProcessError, attempt| {
                    self.metrics
                        .process_retries
                        .with_label_values(&[e.kind()])
                        .inc();
                    tracing::warn!(error = %e, attempt, "record failed transiently; retrying");
                },
            )
            .await;
            // Stopping or revoked (`None`: the claim was given back; the record is redelivered
            // later, here after a restart or at the partition's new owner), or no longer ours.
            let Some(Some(outcome)) = outcome else {
                return;
            };
            self.metrics
                .records
                .with_label_values(&[outcome.label()])
                .inc();
            tracing::debug!(outcome = outcome.label(), "record finished");
            self.tracker.complete(
                &record.topic,
                record.partition,
                record.offset,
                generation,
                |next| self.store(&record.topic, record.partition, next),
            );
        }
        .instrument(span)
        .await
    }

    /// Decodes and processes; dead letters are published before the outcome counts as final.
    async fn outcome_of(
        &self,
        record: &KafkaRecord,
        owner: &ClaimOwner,
    ) -> Result<Outcome, ProcessError> {
        let value = record.value.as_slice();
        let letter = match Envelope::from_bytes(value) {
            // Poison: retrying cannot decode it. Dead-letter with the reason and move on.
            Err(e) => DeadLetter::poison(e),
            Ok(envelope) => {
                let processing = self.processor.process_as(envelope.v1(), owner);
                match AssertUnwindSafe(processing).catch_unwind().await {
                    Ok(result) => match result? {
                        Outcome::DeadLettered(letter) => letter,
                        other => return Ok(other),
                    },
                    // A panic is a defect that would repeat on every retry: dead-letter the
                    // record with the reason so its partition moves on and an operator sees it.
                    // A reply mark it left stays, so a redrive after the fix never sends twice.
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".into());
                        tracing::error!(panic = %what, "processing a record panicked");
                        DeadLetter::record(Reason::Panic(what))
                    }
                }
            }
        };
        self.dead_letters
            .write(&letter, record.into(), value)
            .await
            .map_err(ProcessError::DeadLetter)?;
        self.metrics
            .dead_letters
            .with_label_values(&[letter.reason.kind()])
            .inc();
        Ok(Outcome::DeadLettered(letter))
    }

    fn store(&self, topic: &str, partition: i32, next: i64) {
        let mut list = TopicPartitionList::new();
        if let Err(e) = list.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::warn!(error = %e, "cannot build the offset list");
            return;
        }
        // Fails only if the partition was revoked this instant; the new owner redelivers.
        if let Err(e) = self.consumer.store_offsets(&list) {
            tracing::debug!(error = %e, partition, next, "offset not stored");
        }
    }
}
