//! Reading a slice of a topic without joining a consumer group.
//!
//! A [`RangeSpec`] (times or offsets from the command line) is resolved once, at the start, into
//! fixed offsets per partition ([`TopicRange`]): times through `offsets_for_times` (the first
//! record whose Kafka timestamp is at or after the time), and an open end as the partition's high
//! watermark *at that moment*. Fixing the end first is what lets `dlq redrive` write new dead
//! letters into the topic it is reading without reading them back in the same run.
//!
//! [`RangeReader`] reads that slice with `assign` and explicit start offsets. It never
//! subscribes (so it never joins a group and never causes a rebalance of the live consumers) and
//! never commits; librdkafka still wants a `group.id`, so each reader gets a throwaway one, which
//! the brokers never even learn about since it neither joins nor commits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::record::KafkaRecord;

/// Bound on each metadata, watermark and time lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A reader that gets nothing for this long while partitions are unfinished gives up: Kafka is
/// unreachable or the partition leader is gone, and the operator should hear it, not wait.
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Where a range starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// Unix milliseconds.
    Time(i64),
    Offset(i64),
}

/// Where a range ends (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The end of the partition when the command started.
    Now,
    /// Unix milliseconds.
    Time(i64),
    Offset(i64),
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    /// One partition, or all of them.
    pub partition: Option<i32>,
    pub start: Start,
    pub end: End,
}

/// One partition's offsets to read, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// The resolved slice of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRange {
    pub topic: String,
    pub partitions: Vec<PartitionRange>,
}

impl TopicRange {
    /// Records in the range.
    pub fn len(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| (p.end - p.start).max(0) as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `topic: p0 [a, b), p1 [c, d)` — printed at the start of every run.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .partitions
            .iter()
            .map(|p| format!("{}:[{}, {})", p.partition, p.start, p.end))
            .collect();
        format!("{} partitions {}", self.topic, parts.join(" "))
    }
}

/// A librdkafka client that never joins `group` and never commits.
pub fn client_config(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Retention may delete the first records between resolving and reading: start at the
        // earliest one still there rather than failing.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    config
}

/// Resolves `spec` against `topic`'s current partitions, watermarks and timestamps.
pub async fn resolve(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    spec: &RangeSpec,
) -> anyhow::Result<TopicRange> {
    let config = client_config(kafka, group);
    let (topic, spec) = (topic.to_owned(), spec.clone());
    // librdkafka's lookups block; keep them off the async workers.
    tokio::task::spawn_blocking(move || resolve_blocking(&config, &topic, &spec)).await?
}

fn resolve_blocking(
    config: &ClientConfig,
    topic: &str,
    spec: &RangeSpec,
) -> anyhow::Result<TopicRange> {
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist (or has no partitions)");
    }
    partitions.sort_unstable();
    if let Some(p) = spec.partition {
        if !partitions.contains(&p) {
            anyhow::bail!("topic {topic} has no partition {p} (it has {partitions:?})");
        }
        partitions = vec![p];
    }
    let mut marks = BTreeMap::new();
    for &p in &partitions {
        marks.insert(p, consumer.fetch_watermarks(topic, p, LOOKUP_TIMEOUT)?);
    }
    let at = |ms: i64| offsets_for_time(&consumer, topic, &marks, ms);
    let starts = match spec.start {
        Start::Beginning => marks.iter().map(|(p, (low, _))| (*p, *low)).collect(),
        Start::Time(ms) => at(ms)?,
        Start::Offset(o) => clamp(&marks, o),
    };
    let ends = match spec.end {
        End::Now => marks.iter().map(|(p, (_, high))| (*p, *high)).collect(),
        End::Time(ms) => at(ms)?,
        End::Offset(o) => clamp(&marks, o),
    };
    Ok(TopicRange {
        topic: topic.to_owned(),
        partitions: partitions
            .iter()
            .map(|p| PartitionRange {
                partition: *p,
                start: starts[p],
                end: ends[p].max(starts[p]),
            })
            .collect(),
    })
}

fn clamp(marks: &BTreeMap<i32, (i64, i64)>, offset: i64) -> HashMap<i32, i64> {
    marks
        .iter()
        .map(|(p, (low, high))| (*p, offset.clamp(*low, *high)))
        .collect()
}

/// The first offset at or after `ms` per partition; the high watermark when there is none.
fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    marks: &BTreeMap<i32, (i64, i64)>,
    ms: i64,
) -> anyhow::Result<HashMap<i32, i64>> {
    let mut query = TopicPartitionList::new();
    for p in marks.keys() {
        query.add_partition_offset(topic, *p, Offset::Offset(ms))?;
    }
    let found = consumer.offsets_for_times(query, LOOKUP_TIMEOUT)?;
    Ok(marks
        .iter()
        .map(|(p, (_, high))| {
            let offset = match found.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // Offset::End: no record at or after that time.
                _ => *high,
            };
            (*p, offset)
        })
        .collect())
}

/// Reads a [`TopicRange`] partition by partition in offset order (partitions interleave).
pub struct RangeReader {
    consumer: StreamConsumer,
    topic: String,
    ends: HashMap<i32, i64>,
    open: BTreeSet<i32>,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("topic", &self.topic)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl RangeReader {
    pub fn open(kafka: &KafkaSettings, group: &str, range: &TopicRange) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = client_config(kafka, group).create()?;
        let mut assignment = TopicPartitionList::new();
        let mut open = BTreeSet::new();
        for p in range.partitions.iter().filter(|p| p.end > p.start) {
            assignment.add_partition_offset(&range.topic, p.partition, Offset::Offset(p.start))?;
            open.insert(p.partition);
        }
        if !open.is_empty() {
            consumer.assign(&assignment)?;
        }
        Ok(RangeReader {
            consumer,
            topic: range.topic.clone(),
            ends: range
                .partitions
                .iter()
                .map(|p| (p.partition, p.end))
                .collect(),
            open,
        })
    }

    /// The next record of the range; `None` once every partition reached its end or `cancel`
    /// fired (the operator pressed Ctrl-C: stop reading, report what was done).
    pub async fn next_or_cancelled(
        &mut self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Option<KafkaRecord>> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(None),
            next = self.next() => next,
        }
    }

    /// The next record of the range; `None` once every partition reached its end.
    pub async fn next(&mut self) -> anyhow::Result<Option<KafkaRecord>> {
        loop {
            if self.open.is_empty() {
                return Ok(None);
            }
            let received = match tokio::time::timeout(IDLE_LIMIT, self.consumer.recv()).await {
                Ok(received) => received,
                Err(_) => anyhow::bail!(
                    "no record from {} partitions {:?} for {IDLE_LIMIT:?}; is Kafka reachable?",
                    self.topic,
                    self.open
                ),
            };
            let message = match received {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(p)) => {
                    self.finish(p);
                    continue;
                }
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let (p, offset) = (message.partition(), message.offset());
            let end = self.ends.get(&p).copied().unwrap_or_default();
            if !self.open.contains(&p) || offset >= end {
                drop(message);
                self.finish(p);
                continue;
            }
            let record = KafkaRecord::from_message(&message);
            drop(message);
            if offset + 1 >= end {
                self.finish(p);
            }
            return Ok(Some(record));
        }
    }

    /// Stops fetching a partition that reached its end (the live topic keeps growing).
    fn finish(&mut self, partition: i32) {
        if self.open.remove(&partition) {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            let _ = self.consumer.pause(&list);
        }
    }
}
