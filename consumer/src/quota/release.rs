//! Releasing held records: [`Releaser`], one per consumer process.
//!
//! A member of its own consumer group (`<kafka.group_id>.hold`) over every configured app's hold
//! topic, so each hold partition is drained by one process at a time, in offset order, one record
//! after another. For each record:
//!
//! - app still paused: the partition is paused and rewound to that record (a seek, which also
//!   drops what was prefetched after it), so nothing of it stays in memory; every
//!   `quota.check_interval` the paused partitions whose app may go again are resumed, and fetching
//!   starts again at that record. Other apps' hold partitions are not held back.
//! - otherwise: processed like an inbound record ([`Processor::process_held`]), dead letters
//!   included, retried with backoff while the failure is transient. Once its outcome is final the
//!   release is marked in Redis (the app's backlog shrinks) and then its offset is stored, so a
//!   crash in between processes it again (the send ledger answers `already sent`) rather than
//!   leaving the backlog non-empty forever.
//! - 45009 again: the app pauses again and the record is rewound like a paused app's.
//!
//! Offsets are stored only after a final outcome and committed by librdkafka every
//! `kafka.commit_interval`, on revoke and on close; a revoked partition's record in progress is
//! redelivered to its next owner, and the ledger keeps its replies from going out twice.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use common::envelope::Envelope;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::Quota;
use crate::backoff::retry_until_stopped;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, DeadLetterWriter, Reason};
use crate::error::ProcessError;
use crate::ledger::ClaimOwner;
use crate::metrics::Metrics;
use crate::processor::{Outcome, Processor};
use crate::record::KafkaRecord;

/// How soon a new hold topic is subscribed to.
const HOLD_TOPICS_REFRESH: Duration = Duration::from_secs(10);

/// Bound on a seek of a paused partition.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// The hold topics' consumer.
pub(crate) struct Releaser {
    consumer: StreamConsumer,
    processor: Processor,
    quota: Quota,
    dead_letters: DeadLetterWriter,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Every hold topic's name starts with it; the rest is the app's name.
    hold_prefix: String,
    check_interval: Duration,
    retry_initial: Duration,
    retry_max: Duration,
}

impl std::fmt::Debug for Releaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releaser")
            .field("hold_prefix", &self.hold_prefix)
            .finish_non_exhaustive()
    }
}

/// The group id of the hold topics' consumer.
pub fn hold_group(group_id: &str) -> String {
    format!("{group_id}.hold")
}

impl Releaser {
    pub(crate) fn new(
        settings: &Settings,
        processor: Processor,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Releaser> {
        let k = &settings.kafka;
        let mut config = crate::pipeline::consumer_config(settings);
        // Offsets are still stored only after a final outcome; one record runs at a time, so
        // librdkafka's own periodic commit of the stored offsets is enough here.
        config
            .set("group.id", hold_group(&k.group_id))
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                k.commit_interval.as_millis().to_string(),
            );
        // Subscribed by pattern (see `run`): a hold topic made for an app the app files added is
        // found at the next metadata refresh, so keep that short.
        config.set(
            "topic.metadata.refresh.interval.ms",
            HOLD_TOPICS_REFRESH.as_millis().to_string(),
        );
        let consumer: StreamConsumer = config.create()?;
        let quota = processor.quota.clone();
        Ok(Releaser {
            consumer,
            processor,
            quota,
            dead_letters,
            metrics,
            shutdown,
            hold_prefix: settings.kafka.hold_topic_prefix.clone(),
            check_interval: settings.quota.check_interval,
            retry_initial: settings.processing.retry_initial_backoff,
            retry_max: settings.processing.retry_max_backoff,
        })
    }

    /// Releases held records until shutdown, then commits and leaves its group.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        // Every hold topic, present and future: apps come and go with the app files. A pattern
        // starts with `^` for librdkafka.
        let pattern = format!("^{}.+", regex::escape(&self.hold_prefix));
        self.consumer.subscribe(&[pattern.as_str()])?;
        // Partitions held back, each with its app.
        let mut waiting: HashMap<(String, i32), String> = HashMap::new();
        let mut ticker = tokio::time::interval(self.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = ticker.tick() => self.check(&mut waiting).await,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let record = KafkaRecord::from_message(&message);
                        drop(message);
                        self.handle(record, &mut waiting).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka error on the hold topics");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e) if crate::pipeline::context::is_no_offset(&e) => {}
            Err(e) => tracing::info!(error = %e, "final commit of the hold topics"),
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Shows every app's pause and backlog, and resumes the partitions whose app may go again.
    async fn check(&self, waiting: &mut HashMap<(String, i32), String>) {
        let mut open = Vec::new();
        let apps = self.processor.apps.all();
        for app in apps.keys() {
            match self.quota.read(app).await {
                Ok(quota) => {
                    self.quota.show(app, &quota);
                    if !quota.paused(now_ms()) {
                        open.push(app.clone());
                    }
                }
                Err(e) => tracing::warn!(error = %e, app, "cannot read the app's pause"),
            }
        }
        let resumable: Vec<(String, i32)> = waiting
            .iter()
            .filter(|(_, app)| open.contains(app))
            .map(|(tp, _)| tp.clone())
            .collect();
        for (topic, partition) in resumable {
            waiting.remove(&(topic.clone(), partition));
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            // Fails only for a partition revoked meanwhile; its next owner starts fetching it.
            if let Err(e) = self.consumer.resume(&list) {
                tracing::debug!(error = %e, topic, partition, "hold partition not resumed");
            } else {
                tracing::info!(topic, partition, "releasing held records");
            }
        }
    }

    /// One held record to a final outcome, or back into its partition while its app is paused.
    async fn handle(&self, record: KafkaRecord, waiting: &mut HashMap<(String, i32), String>) {
        let Some(app) = record
            .topic
            .strip_prefix(&self.hold_prefix)
            .map(str::to_owned)
        else {
            return;
        };
        if !self.processor.apps.contains(&app) {
            // An app the app files removed: its held records wait, held back like a paused
            // app's, until it comes back (or an operator deletes its hold topic).
            self.hold_back(&record);
            waiting.insert((record.topic.clone(), record.partition), app);
            return;
        }
        // A send waiting in a backoff or on another sender's mark ends on shutdown and gives its
        // claim back, as an inbound record's does.
        let owner = ClaimOwner::until(self.shutdown.child_token());
        let released = retry_until_stopped(
            &self.shutdown,
            self.retry_initial,
            self.retry_max,
            || self.release(&record, &app, &owner),
            |e: &ProcessError, attempt| {
                self.metrics
                    .process_retries
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(error = %e, attempt, "held record failed transiently; retrying");
            },
        )
        .await;
        match released {
            Some(Some(outcome)) => {
                self.metrics
                    .records
                    .with_label_values(&[outcome.label()])
                    .inc();
                self.finish(&record, &app).await;
            }
            Some(None) => {
                self.hold_back(&record);
                waiting.insert((record.topic.clone(), record.partition), app);
            }
            // Stopping: the claim was given back; the record is released after the restart.
            None => {}
        }
    }

    /// `None`: the app is paused (again); the record stays where it is.
    async fn release(
        &self,
        record: &KafkaRecord,
        app: &str,
        owner: &ClaimOwner,
    ) -> Result<Option<Outcome>, ProcessError> {
        if self.quota.read(app).await?.paused(now_ms()) {
            return Ok(None);
        }
        let value = record.value.as_slice();
        let letter = match Envelope::from_bytes(value) {
            Err(e) => DeadLetter::poison(e),
            Ok(envelope) => {
                let processing = self.processor.process_held(envelope.v1(), owner);
                match AssertUnwindSafe(processing).catch_unwind().await {
                    Ok(result) => match result? {
                        None => return Ok(None),
                        Some(Outcome::DeadLettered(letter)) => letter,
                        Some(other) => return Ok(Some(other)),
                    },
                    Err(_) => DeadLetter::record(Reason::Panic(
                        "processing a held record panicked".into(),
                    )),
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
        Ok(Some(Outcome::DeadLettered(letter)))
    }

    /// Marks the release (retrying until Redis takes it, or shutdown), then stores the offset.
    async fn finish(&self, record: &KafkaRecord, app: &str) {
        let marked = retry_until_stopped(
            &self.shutdown,
            self.retry_initial,
            self.retry_max,
            || self.quota.released(app, record.partition, record.offset),
            |e, attempt| {
                tracing::warn!(error = %e, attempt, "cannot mark a held record released; retrying");
            },
        )
        .await;
        if marked.is_none() {
            // Not stored: redelivered after the restart, and the ledger answers it.
            return;
        }
        let mut list = TopicPartitionList::new();
        let stored = list
            .add_partition_offset(
                &record.topic,
                record.partition,
                Offset::Offset(record.offset + 1),
            )
            .and_then(|()| self.consumer.store_offsets(&list));
        // Fails only if the partition was revoked this instant; its new owner redelivers it.
        if let Err(e) = stored {
            tracing::debug!(error = %e, "held record's offset not stored");
        }
    }

    /// Pauses the record's partition and rewinds it to the record. librdkafka discards what it
    /// had fetched of the partition beyond the seek (its messages carry an outdated version), so
    /// the record is the next one delivered after the resume. A seek fails when the partition is
    /// no longer assigned to this process; its new owner starts from the committed offset, which
    /// is at or before this record (its offset was never stored).
    fn hold_back(&self, record: &KafkaRecord) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&record.topic, record.partition);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, "cannot pause a hold partition");
        }
        if let Err(e) = self.consumer.seek(
            &record.topic,
            record.partition,
            Offset::Offset(record.offset),
            SEEK_TIMEOUT,
        ) {
            tracing::warn!(error = %e, "cannot rewind a hold partition");
        }
    }
}
