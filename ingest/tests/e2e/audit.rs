//! The audit: what should have happened, from what is in Kafka, against what reached the
//! simulated WeChat API.
//!
//! - **Expected replies** come from the inbound records themselves (each distinct dedup key
//!   once, in partition order) and the scenario rules ([`expected_replies`]), computed here
//!   independently of the consumer's rule engine.
//! - **Sent** replies are the simulator's recorded sends; a reply is identified by its user and
//!   its exact body, and every body names the message it answers.
//! - **Dead-lettered** replies are those the consumer gave up on with a reason (read from the
//!   dead-letter topic): the failed action and the later ones of that record.
//! - **Lost** = acknowledged pushes missing from Kafka + expected replies neither sent nor
//!   dead-lettered. **Duplicated** = extra copies of a reply at the API.
//! - **Order**: each user's sent replies must appear in the order of the user's records in Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::envelope::{DedupStatus, Envelope, EnvelopeV1};
use common::message::MessageBody;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pipeline::{kafka_brokers, Pipeline, PushOutcome, PushSummary};

/// A reply the rules call for: (rule, action index, body).
pub fn expected_replies(env: &EnvelopeV1) -> Vec<(&'static str, usize, Value)> {
    let msg = &env.message;
    let touser = msg.from_user_name.as_str();
    let text = |content: String| json!({"touser": touser, "msgtype": "text", "text": {"content": content}});
    match &msg.body {
        MessageBody::Text { msg_id, content } => {
            vec![("default", 0, text(format!("echo {msg_id}: {content}")))]
        }
        // Action 0 is the typing indicator, not a reply.
        MessageBody::Image { msg_id, .. } => {
            vec![("image", 1, text(format!("image {msg_id} received")))]
        }
        MessageBody::MiniProgramPage {
            msg_id,
            title,
            page_path,
            ..
        } => vec![
            ("card", 0, text(format!("card {msg_id}: {title}"))),
            (
                "card",
                1,
                json!({"touser": touser, "msgtype": "miniprogrampage", "miniprogrampage": {
                    "title": title, "pagepath": page_path, "thumb_media_id": "e2e-thumb"}}),
            ),
        ],
        MessageBody::EnterSession { .. } => vec![(
            "welcome",
            0,
            text(format!("welcome {touser} at {}", msg.create_time)),
        )],
        MessageBody::Other { .. } => Vec::new(),
    }
}

/// Everything read back from a topic, from its beginning.
struct TopicLog {
    topic: String,
    consumer: BaseConsumer,
    partitions: Vec<i32>,
    next: HashMap<i32, i64>,
    records: Vec<(i32, i64, Vec<u8>)>,
}

impl TopicLog {
    fn new(topic: &str) -> TopicLog {
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

    /// Reads every record up to the current end of each partition.
    fn catch_up(&mut self) -> Result<(), String> {
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
    fn end_offsets(&self) -> Result<i64, String> {
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

/// One send the simulator recorded.
#[derive(Debug, Clone, Deserialize)]
struct SimSend {
    seq: u64,
    touser: String,
    body: Value,
}

/// A dead letter's fields the audit needs.
#[derive(Debug, Deserialize)]
struct DeadLetter {
    reason: String,
    rule: Option<String>,
    action_index: Option<usize>,
    source: DeadSource,
}

#[derive(Debug, Deserialize)]
struct DeadSource {
    partition: i32,
    offset: i64,
}

/// One expected reply.
#[derive(Debug)]
struct Expected {
    dedup_key: String,
    rule: &'static str,
    action: usize,
    touser: String,
    body: Value,
}

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub pushes_sent: u64,
    pub acknowledged: u64,
    pub kafka_records: usize,
    pub distinct_records: usize,
    /// Records ingest published without its dedup check (Redis was down).
    pub unchecked_records: usize,
    pub expected: usize,
    pub sent: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    pub acked_missing: usize,
    pub misordered_users: usize,
    pub users: usize,
    pub dead_letter_reasons: BTreeMap<String, usize>,
    pub outstanding_sample: Vec<String>,
    /// Replies never sent because the consumer dead-lettered them, with the reason.
    pub unsent_dead_letters: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "e2e {}: pushes sent={} acknowledged={} records in kafka={} (distinct {}, unchecked {}) | replies \
             expected={} sent={} dead-lettered={} lost={} duplicated={} | users={} misordered={} \
             unexpected sends={} dead letters={:?}",
            self.scenario,
            self.pushes_sent,
            self.acknowledged,
            self.kafka_records,
            self.distinct_records,
            self.unchecked_records,
            self.expected,
            self.sent,
            self.dead_lettered,
            self.lost,
            self.duplicated,
            self.users,
            self.misordered_users,
            self.unexpected,
            self.dead_letter_reasons,
        )
    }
}

/// Reads Kafka, the dead letters and the simulator's sends, over and over, until the pipeline
/// has settled.
pub struct Audit {
    inbound: TopicLog,
    dead: TopicLog,
    group: BaseConsumer,
    inbound_topic: String,
    sends: Vec<SimSend>,
}

impl Audit {
    pub fn new(pipeline: &Pipeline) -> Audit {
        let group: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", &pipeline.group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("Kafka consumer");
        Audit {
            inbound: TopicLog::new(&pipeline.inbound_topic),
            dead: TopicLog::new(&pipeline.dead_letter_topic),
            group,
            inbound_topic: pipeline.inbound_topic.clone(),
            sends: Vec::new(),
        }
    }

    /// Records in the inbound topic now (0 while Kafka is unreachable).
    pub fn inbound_end(&self) -> i64 {
        tokio::task::block_in_place(|| self.inbound.end_offsets().unwrap_or(0))
    }

    async fn refresh(&mut self, pipeline: &Pipeline) -> Result<(), String> {
        tokio::task::block_in_place(|| {
            self.inbound.catch_up()?;
            self.dead.catch_up()
        })?;
        let after = self.sends.last().map_or(0, |s| s.seq);
        let more: Vec<SimSend> = pipeline
            .http
            .get(format!("{}/sim/sends?after={after}", pipeline.sim_url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        self.sends.extend(more);
        Ok(())
    }

    /// Whether the group has committed every inbound record (nothing left to redeliver).
    fn group_committed_all(&self) -> Result<bool, String> {
        tokio::task::block_in_place(|| {
            let mut list = TopicPartitionList::new();
            for p in &self.inbound.partitions {
                list.add_partition(&self.inbound_topic, *p);
            }
            let committed = self
                .group
                .committed_offsets(list, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            for element in committed.elements() {
                let (_, high) = self
                    .group
                    .fetch_watermarks(
                        &self.inbound_topic,
                        element.partition(),
                        Duration::from_secs(3),
                    )
                    .map_err(|e| e.to_string())?;
                let done = match element.offset() {
                    Offset::Offset(o) => o >= high,
                    _ => high == 0,
                };
                if !done {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Waits until every expected reply is sent or dead-lettered and the group has committed
    /// every record, then returns the figures. Fails after `within` with what is outstanding.
    pub async fn settle(
        &mut self,
        pipeline: &mut Pipeline,
        push: &(PushSummary, Vec<PushOutcome>),
        within: Duration,
    ) -> Report {
        let deadline = Instant::now() + within;
        loop {
            let waiting_for = match self.refresh(pipeline).await {
                Ok(()) => {
                    let report = self.report(pipeline, push);
                    let outstanding = report.expected - report.sent - report.dead_lettered;
                    // Nothing can undo a duplicate or a reply no rule called for: stop here.
                    if report.duplicated > 0 || report.unexpected > 0 {
                        return report;
                    }
                    if outstanding > 0 {
                        format!(
                            "{outstanding} replies outstanding, e.g. {:?}\n{report}",
                            report.outstanding_sample
                        )
                    } else {
                        match self.group_committed_all() {
                            Ok(true) => {
                                self.dump(&pipeline.dir);
                                return report;
                            }
                            Ok(false) => format!("offsets not yet committed\n{report}"),
                            Err(e) => format!("committed offsets: {e}\n{report}"),
                        }
                    }
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.dump(&pipeline.dir);
                panic!(
                    "the pipeline did not settle within {within:?}: {waiting_for}\nlogs: {}",
                    pipeline.dir.display()
                );
            }
            pipeline.assert_running();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Writes what the audit read — inbound records, dead letters, sends — as JSON lines into
    /// `dir`, for a look after a failure (or with `WXKF_E2E_KEEP=1`).
    fn dump(&self, dir: &std::path::Path) {
        let mut lines = String::new();
        for (partition, offset, value) in &self.inbound.records {
            if let Ok(envelope) = Envelope::from_bytes(value) {
                let env = envelope.v1();
                let line = json!({"partition": partition, "offset": offset,
                    "dedup_key": env.dedup_key.as_str(), "dedup": env.dedup,
                    "openid": env.message.from_user_name.as_str(),
                    "create_time": env.message.create_time, "body": env.message.body});
                lines.push_str(&format!("{line}\n"));
            }
        }
        let _ = std::fs::write(dir.join("audit-inbound.jsonl"), lines);
        let dead: Vec<u8> = self
            .dead
            .records
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied().chain(std::iter::once(b'\n')))
            .collect();
        let _ = std::fs::write(dir.join("audit-dead-letters.jsonl"), dead);
        let sends: String = self
            .sends
            .iter()
            .map(|s| {
                format!(
                    "{}\n",
                    json!({"seq": s.seq, "touser": s.touser, "body": s.body})
                )
            })
            .collect();
        let _ = std::fs::write(dir.join("audit-sends.jsonl"), sends);
    }

    fn report(&self, pipeline: &Pipeline, push: &(PushSummary, Vec<PushOutcome>)) -> Report {
        let (summary, outcomes) = push;
        let mut report = Report {
            scenario: pipeline.name.clone(),
            pushes_sent: summary.sent,
            acknowledged: summary.acknowledged,
            kafka_records: self.inbound.records.len(),
            ..Report::default()
        };
        // Distinct records in partition order; a record published twice (e.g. while Redis was
        // down) counts where it first appeared.
        let mut records: Vec<&(i32, i64, Vec<u8>)> = self.inbound.records.iter().collect();
        records.sort_by_key(|(p, o, _)| (*p, *o));
        let mut envelopes: HashMap<(i32, i64), EnvelopeV1> = HashMap::new();
        let mut seen = HashSet::new();
        let mut stored = HashSet::new();
        let mut expected: Vec<Expected> = Vec::new();
        for (partition, offset, value) in records {
            let envelope = Envelope::from_bytes(value).expect("inbound records are envelopes");
            let env = envelope.v1().clone();
            if env.dedup == DedupStatus::Unchecked {
                report.unchecked_records += 1;
            }
            stored.insert((
                env.message.from_user_name.as_str().to_owned(),
                env.message.create_time,
            ));
            if seen.insert(env.dedup_key.as_str().to_owned()) {
                for (rule, action, body) in expected_replies(&env) {
                    expected.push(Expected {
                        dedup_key: env.dedup_key.as_str().to_owned(),
                        rule,
                        action,
                        touser: env.message.from_user_name.as_str().to_owned(),
                        body,
                    });
                }
            }
            envelopes.insert((*partition, *offset), env);
        }
        report.distinct_records = seen.len();
        report.expected = expected.len();
        report.acked_missing = outcomes
            .iter()
            .filter(|o| o.acked && !stored.contains(&(o.openid.clone(), o.create_time)))
            .count();

        let by_body: HashMap<(String, String), usize> = expected
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.touser.clone(), e.body.to_string()), i))
            .collect();
        let mut copies = vec![0usize; expected.len()];
        let mut delivered_order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut unexpected: HashMap<String, usize> = HashMap::new();
        for send in &self.sends {
            match by_body.get(&(send.touser.clone(), send.body.to_string())) {
                Some(&i) => {
                    copies[i] += 1;
                    if copies[i] == 1 {
                        delivered_order
                            .entry(send.touser.clone())
                            .or_default()
                            .push(i);
                    }
                }
                None => *unexpected.entry(send.body.to_string()).or_default() += 1,
            }
        }
        report.unexpected = unexpected.len();
        report.duplicated = copies.iter().map(|c| c.saturating_sub(1)).sum::<usize>()
            + unexpected.values().map(|c| c - 1).sum::<usize>();
        report.sent = copies.iter().filter(|c| **c > 0).count();

        let mut dead_lettered: Vec<Option<String>> = vec![None; expected.len()];
        for (_, _, value) in &self.dead.records {
            let Ok(letter) = serde_json::from_slice::<DeadLetter>(value) else {
                continue;
            };
            *report
                .dead_letter_reasons
                .entry(letter.reason.clone())
                .or_default() += 1;
            let Some(env) = envelopes.get(&(letter.source.partition, letter.source.offset)) else {
                continue;
            };
            for (i, e) in expected.iter().enumerate() {
                let covered = e.dedup_key == env.dedup_key.as_str()
                    && match (&letter.rule, letter.action_index) {
                        (Some(rule), Some(index)) => rule == e.rule && e.action >= index,
                        _ => true,
                    };
                if covered && copies[i] == 0 {
                    dead_lettered[i] = Some(letter.reason.clone());
                }
            }
        }
        report.dead_lettered = dead_lettered.iter().flatten().count();
        report.unsent_dead_letters = (0..expected.len())
            .filter_map(|i| {
                let reason = dead_lettered[i].as_ref()?;
                let e = &expected[i];
                Some(format!(
                    "{} {} #{} ({reason})",
                    e.dedup_key, e.rule, e.action
                ))
            })
            .collect();
        let outstanding: Vec<usize> = (0..expected.len())
            .filter(|i| copies[*i] == 0 && dead_lettered[*i].is_none())
            .collect();
        report.lost = outstanding.len() + report.acked_missing;
        report.outstanding_sample = outstanding
            .iter()
            .take(3)
            .map(|i| {
                format!(
                    "{} {} #{}",
                    expected[*i].dedup_key, expected[*i].rule, expected[*i].action
                )
            })
            .collect();

        // Per user: the replies sent, in arrival order, must be the user's expected replies in
        // record order, minus those never sent.
        let mut expected_order: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in expected.iter().enumerate() {
            expected_order.entry(e.touser.as_str()).or_default().push(i);
        }
        report.users = expected_order.len();
        report.misordered_users = expected_order
            .iter()
            .filter(|(user, order)| {
                let sent: Vec<usize> = order.iter().copied().filter(|i| copies[*i] > 0).collect();
                delivered_order.get(**user).map_or(&Vec::new(), |v| v) != &sent
            })
            .count();
        report
    }
}

/// Prints the scenario's line of figures and asserts the promises: nothing acknowledged is
/// missing, no reply lost or duplicated, no reply nobody asked for, every user's replies in
/// order, and dead letters only for the reasons this scenario can cause.
pub fn check(report: &Report, allowed_dead_letters: &[&str]) {
    let mut text = format!("{report}\n");
    for unsent in report.unsent_dead_letters.iter().take(10) {
        text.push_str(&format!("    not sent, dead-lettered: {unsent}\n"));
    }
    if report.unsent_dead_letters.len() > 10 {
        let more = report.unsent_dead_letters.len() - 10;
        text.push_str(&format!("    … and {more} more\n"));
    }
    super::say(text.trim_end());
    assert_eq!(
        report.acked_missing, 0,
        "acknowledged pushes missing from Kafka\n{report}"
    );
    assert_eq!(report.lost, 0, "replies lost\n{report}");
    assert_eq!(report.duplicated, 0, "replies sent twice\n{report}");
    assert_eq!(report.unexpected, 0, "replies no rule called for\n{report}");
    assert_eq!(
        report.misordered_users, 0,
        "users whose replies arrived out of order\n{report}"
    );
    assert!(
        report.acknowledged > 0 && report.expected > 0,
        "nothing flowed\n{report}"
    );
    for reason in report.dead_letter_reasons.keys() {
        assert!(
            allowed_dead_letters.contains(&reason.as_str()),
            "dead letters for `{reason}`, which this scenario must not cause\n{report}"
        );
    }
}
