//! Reading a whole topic back, from its beginning, as often as needed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use super::pipeline::kafka_brokers;

/// Everything read back from a topic, from its beginning.
pub struct TopicLog {
    topic: String,
    consumer: BaseConsumer,
    pub partitions: Vec<i32>,
    next: HashMap<i32, i64>,
    /// (partition, offset, value) of every record read so far.
    pub records: Vec<(i32, i64, Vec<u8>)>,
}

impl TopicLog {
    pub fn new(topic: &str) -> TopicLog {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", format!("{topic}-audit"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("Kafka consumer");
        TopicLog {
            topic: topic.to_owned(),
            consumer,
            partitions: Vec::new(),
            next: HashMap::new(),
            records: Vec::new(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads every record up to the current end of each partition.
    pub fn catch_up(&mut self) -> Result<(), String> {
        let timeout = Duration::from_secs(3);
        if self.partitions.is_empty() {
            let metadata = self
                .consumer
                .fetch_metadata(Some(&self.topic), timeout)
                .map_err(|e| format!("metadata of {}: {e}", self.topic))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(format!("{} has no partitions", self.topic));
            }
            let mut list = TopicPartitionList::new();
            for p in &partitions {
                list.add_partition_offset(&self.topic, *p, Offset::Beginning)
                    .map_err(|e| e.to_string())?;
                self.next.insert(*p, 0);
            }
            self.consumer.assign(&list).map_err(|e| e.to_string())?;
            self.partitions = partitions;
        }
        let mut ends = HashMap::new();
        for p in &self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, timeout)
                .map_err(|e| format!("watermarks of {}: {e}", self.topic))?;
            ends.insert(*p, high);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.partitions.iter().any(|p| self.next[p] < ends[p]) {
            if Instant::now() > deadline {
                return Err(format!("reading {} took longer than 15 s", self.topic));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    let value = m.payload().unwrap_or_default().to_vec();
                    self.records.push((m.partition(), m.offset(), value));
                }
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.topic)),
                None => {}
            }
        }
        Ok(())
    }

    /// Sum of the partitions' end offsets (records ever written).
    pub fn end_offsets(&self) -> Result<i64, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p.id(), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            total += high;
        }
        Ok(total)
    }
}
