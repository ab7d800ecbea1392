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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pipeline::{kafka_brokers, Pipeline};
use super::pushes::{PushOutcome, PushSummary};
use super::report::Report;
use super::rules::expected_replies;
use super::topic_log::TopicLog;

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
    topic: String,
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

/// Reads Kafka, the dead letters and the simulator's sends, over and over, until the pipeline
/// has settled.
pub struct Audit {
    /// The inbound topics in the order the pipeline used them: a user's records in a later one
    /// come after all of theirs in an earlier one ([`Audit::follow`]).
    inbound: Vec<TopicLog>,
    dead: TopicLog,
    group: BaseConsumer,
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
            inbound: vec![TopicLog::new(&pipeline.inbound_topic)],
            dead: TopicLog::new(&pipeline.dead_letter_topic),
            group,
            sends: Vec::new(),
        }
    }

    /// Audits `topic` too, as the inbound topic that follows those already audited.
    pub fn follow(&mut self, topic: &str) {
        self.inbound.push(TopicLog::new(topic));
    }

    /// Records in the inbound topics now (0 while Kafka is unreachable).
    pub fn inbound_end(&self) -> i64 {
        tokio::task::block_in_place(|| {
            self.inbound
                .iter()
                .map(|log| log.end_offsets().unwrap_or(0))
                .sum()
        })
    }

    /// Records in the inbound topic `index` now (0 while Kafka is unreachable).
    pub fn records_in(&self, index: usize) -> i64 {
        tokio::task::block_in_place(|| self.inbound[index].end_offsets().unwrap_or(0))
    }

    /// Users with records in more than one inbound topic whose partition differs between them:
    /// those whose order a switch of topics could break.
    pub fn users_on_another_partition(&self) -> usize {
        let mut partitions: HashMap<String, HashSet<i32>> = HashMap::new();
        let mut topics: HashMap<String, HashSet<&str>> = HashMap::new();
        for (topic, partition, _, value) in self.inbound_records() {
            if let Ok(envelope) = Envelope::from_bytes(value) {
                let user = envelope.v1().message.from_user_name.as_str().to_owned();
                partitions
                    .entry(user.clone())
                    .or_default()
                    .insert(partition);
                topics.entry(user).or_default().insert(topic);
            }
        }
        partitions
            .iter()
            .filter(|(user, p)| p.len() > 1 && topics[*user].len() > 1)
            .count()
    }

    /// Whether the group has committed every record of the inbound topic `index` (0: the first).
    pub fn committed_all_of(&mut self, index: usize) -> bool {
        tokio::task::block_in_place(|| {
            self.inbound[index].catch_up()?;
            self.committed_all(&self.inbound[index])
        })
        .unwrap_or(false)
    }

    async fn refresh(&mut self, pipeline: &Pipeline) -> Result<(), String> {
        tokio::task::block_in_place(|| {
            for log in &mut self.inbound {
                log.catch_up()?;
            }
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
            for log in &self.inbound {
                if !self.committed_all(log)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Whether the group has committed every record of one inbound topic.
    fn committed_all(&self, log: &TopicLog) -> Result<bool, String> {
        let topic = log.topic();
        if log.partitions.is_empty() {
            return Ok(false);
        }
        let mut list = TopicPartitionList::new();
        for p in &log.partitions {
            list.add_partition(topic, *p);
        }
        let committed = self
            .group
            .committed_offsets(list, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        for element in committed.elements() {
            let (_, high) = self
                .group
                .fetch_watermarks(topic, element.partition(), Duration::from_secs(3))
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
        for (topic, partition, offset, value) in self.inbound_records() {
            if let Ok(envelope) = Envelope::from_bytes(value) {
                let env = envelope.v1();
                let line = json!({"topic": topic, "partition": partition, "offset": offset,
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

    /// Every inbound record as (topic, partition, offset, value): topic by topic in the order
    /// they were used, each in partition and offset order.
    fn inbound_records(&self) -> Vec<(&str, i32, i64, &[u8])> {
        let mut all = Vec::new();
        for log in &self.inbound {
            let mut records: Vec<_> = log
                .records
                .iter()
                .map(|(p, o, v)| (log.topic(), *p, *o, v.as_slice()))
                .collect();
            records.sort_by_key(|(_, p, o, _)| (*p, *o));
            all.extend(records);
        }
        all
    }

    fn report(&self, pipeline: &Pipeline, push: &(PushSummary, Vec<PushOutcome>)) -> Report {
        let (summary, outcomes) = push;
        let mut report = Report {
            scenario: pipeline.name.clone(),
            pushes_sent: summary.sent,
            acknowledged: summary.acknowledged,
            kafka_records: self.inbound.iter().map(|log| log.records.len()).sum(),
            ..Report::default()
        };
        // Distinct records in partition order; a record published twice (e.g. while Redis was
        // down) counts where it first appeared.
        let records = self.inbound_records();
        let mut envelopes: HashMap<(&str, i32, i64), EnvelopeV1> = HashMap::new();
        let mut seen = HashSet::new();
        let mut stored = HashSet::new();
        let mut expected: Vec<Expected> = Vec::new();
        for (topic, partition, offset, value) in records {
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
            envelopes.insert((topic, partition, offset), env);
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
            let source = (
                letter.source.topic.as_str(),
                letter.source.partition,
                letter.source.offset,
            );
            let Some(env) = envelopes.get(&source) else {
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
