//! `consumer dlq list` and `consumer dlq show`: reading the dead-letter topic.
//!
//! Both only read (a throwaway group, `assign`, no commit). Redis is consulted for each dead
//! letter's redrive mark ([`super::marks`]) when it answers; when it does not — a Redis outage is
//! exactly when one wants to look at dead letters — they say so and go on without it.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, Subcommand};

use common::envelope::{Envelope, EnvelopeV1};

use super::args::RangeArgs;
use super::marks::{describe, Marks};
use super::range::{self, RangeReader};
use super::redrive::{RedriveArgs, REDRIVE_ABOUT};
use super::timespec::format_ms;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dead_letter::DeadLetterRecord;
use crate::record::KafkaRecord;

/// `consumer dlq`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with their reasons and whether they were redriven; counts by reason.
    List(DlqListArgs),
    /// Show one dead letter in full: reason, detail, errcode, origin, envelope and payload.
    Show(DlqShowArgs),
    /// Send a selection of dead letters through processing again, after fixing their cause.
    #[command(long_about = REDRIVE_ABOUT)]
    Redrive(RedriveArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilterArgs {
    /// Only this reason (repeatable): token_unavailable, retries_exhausted, window_closed, ...
    #[arg(long, value_name = "REASON")]
    pub reason: Vec<String>,
    /// Only dead letters of this app (repeatable).
    #[arg(long, value_name = "APP")]
    pub app: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Only dead letters not redriven yet.
    #[arg(long)]
    pub open: bool,
    /// Only the counts by reason, no line per dead letter.
    #[arg(long)]
    pub counts: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DlqShowArgs {
    /// The dead letter's place in the dead-letter topic, as `dlq list` prints it.
    #[arg(value_name = "PARTITION:OFFSET", value_parser = parse_position)]
    pub position: (i32, i64),
}

/// How many dead letters `list` looks up in Redis at once.
const CHUNK: usize = 500;

/// A dead letter read back, with its original record decoded when possible.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub record: DeadLetterRecord,
    pub original: Vec<u8>,
    pub envelope: Option<EnvelopeV1>,
}

impl Entry {
    /// `None` when the value is not a dead-letter record this build can read.
    pub fn parse(raw: &KafkaRecord) -> Option<Entry> {
        let record: DeadLetterRecord = serde_json::from_slice(&raw.value).ok()?;
        let original = record.original().ok()?;
        let envelope = Envelope::from_bytes(&original).ok().map(|e| e.v1().clone());
        Some(Entry {
            partition: raw.partition,
            offset: raw.offset,
            timestamp_ms: raw.timestamp_ms,
            record,
            original,
            envelope,
        })
    }

    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    pub fn app(&self) -> Option<&str> {
        self.envelope.as_ref().map(|e| e.app.as_str())
    }

    fn who(&self) -> String {
        match &self.envelope {
            Some(env) => format!("{}/{}", env.app, env.message.from_user_name),
            None => self.record.source.key.clone().unwrap_or_else(|| "-".into()),
        }
    }
}

impl DlqFilterArgs {
    pub fn matches(&self, entry: &Entry) -> bool {
        (self.reason.is_empty() || self.reason.contains(&entry.record.reason))
            && (self.app.is_empty()
                || entry
                    .app()
                    .is_some_and(|app| self.app.iter().any(|a| a == app)))
    }
}

/// The redrive marks, if Redis answers.
pub async fn optional_marks(settings: &Settings, out: &mut dyn Write) -> Option<Marks> {
    let store = super::optional_store(settings, "redrive status unknown", out).await?;
    Some(Marks::new(store, &settings.kafka.dead_letter_topic))
}

async fn open_reader(settings: &Settings, range: &RangeArgs) -> anyhow::Result<RangeReader> {
    let group = super::throwaway_group(settings, "dlq");
    let topic = &settings.kafka.dead_letter_topic;
    let range = range::resolve(&settings.kafka, &group, topic, &range.spec(now_ms())).await?;
    RangeReader::open(&settings.kafka, &group, &range)
}

/// Counts per reason: all, still open.
type Counts = BTreeMap<String, (u64, u64)>;

/// `dlq list`: one line per matching dead letter (unless `--counts`), then counts by reason.
pub async fn list(
    settings: &Settings,
    args: &DlqListArgs,
    out: &mut dyn Write,
) -> anyhow::Result<Counts> {
    let marks = optional_marks(settings, out).await;
    let mut reader = open_reader(settings, &args.range).await?;
    let mut counts = Counts::new();
    let mut unreadable = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let next = reader.next().await?;
        if let Some(raw) = &next {
            match Entry::parse(raw) {
                Some(entry) if args.filter.matches(&entry) => chunk.push(entry),
                Some(_) => {}
                None => unreadable += 1,
            }
        }
        if chunk.len() == CHUNK || (next.is_none() && !chunk.is_empty()) {
            print_chunk(&chunk, marks.as_ref(), args, &mut counts, out).await?;
            chunk.clear();
        }
        if next.is_none() {
            break;
        }
    }
    writeln!(
        out,
        "\ndead letters in {} by reason (all / open, i.e. not redriven yet):",
        settings.kafka.dead_letter_topic
    )?;
    for (reason, (all, open)) in &counts {
        writeln!(out, "  {reason:<22}{all:>8}{open:>8}")?;
    }
    let (all, open) = counts
        .values()
        .fold((0, 0), |(a, o), (all, open)| (a + all, o + open));
    writeln!(out, "  {:<22}{all:>8}{open:>8}", "total")?;
    if unreadable > 0 {
        writeln!(
            out,
            "  ({unreadable} record(s) are not dead letters this build can read)"
        )?;
    }
    Ok(counts)
}

async fn print_chunk(
    chunk: &[Entry],
    marks: Option<&Marks>,
    args: &DlqListArgs,
    counts: &mut Counts,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let positions: Vec<(i32, i64)> = chunk.iter().map(|e| (e.partition, e.offset)).collect();
    let status = match marks {
        Some(marks) => Some(marks.status(&positions).await?),
        None => None,
    };
    for (i, entry) in chunk.iter().enumerate() {
        let mark = status.as_ref().and_then(|s| s[i].as_deref());
        let open = mark.is_none();
        if args.open && !open {
            continue;
        }
        let count = counts.entry(entry.record.reason.clone()).or_default();
        count.0 += 1;
        count.1 += u64::from(open);
        if args.counts {
            continue;
        }
        let r = &entry.record;
        let errcode = r
            .errcode
            .map(|c| format!(" errcode={c}"))
            .unwrap_or_default();
        let redrive = r
            .redrive
            .as_ref()
            .map(|d| format!(" redrive#{}", d.count))
            .unwrap_or_default();
        let state = if status.is_some() {
            describe(mark)
        } else {
            "?".into()
        };
        writeln!(
            out,
            "{:<10} {} {:<18} {}{errcode} from {}/{}@{}{redrive} [{state}]",
            entry.position(),
            entry
                .timestamp_ms
                .map(format_ms)
                .unwrap_or_else(|| "-".into()),
            r.reason,
            entry.who(),
            r.source.topic,
            r.source.partition,
            r.source.offset,
        )?;
        writeln!(out, "           {}", truncate(&r.detail, 160))?;
    }
    Ok(())
}

/// `dlq show P:O`: one dead letter in full.
pub async fn show(
    settings: &Settings,
    args: &DlqShowArgs,
    out: &mut dyn Write,
) -> anyhow::Result<Entry> {
    let (partition, offset) = args.position;
    let range = RangeArgs {
        since: None,
        until: None,
        partition: Some(partition),
        from_offset: Some(offset),
        to_offset: Some(offset + 1),
    };
    let mut reader = open_reader(settings, &range).await?;
    let topic = &settings.kafka.dead_letter_topic;
    let Some(raw) = reader.next().await? else {
        anyhow::bail!("{topic} has no record at {partition}:{offset}");
    };
    let Some(entry) = Entry::parse(&raw) else {
        anyhow::bail!("{topic} {partition}:{offset} is not a dead letter this build can read");
    };
    let marks = optional_marks(settings, out).await;
    let r = &entry.record;
    let field = |out: &mut dyn Write, name: &str, value: &str| writeln!(out, "{name:<13}{value}");
    writeln!(out, "dead letter {topic} {}", entry.position())?;
    field(
        out,
        "written",
        &format!(
            "{} by {}",
            format_ms(r.dead_lettered_at_ms),
            r.consumer_group
        ),
    )?;
    field(out, "reason", &r.reason)?;
    field(out, "detail", &r.detail)?;
    field(
        out,
        "errcode",
        &r.errcode.map_or("-".into(), |c| c.to_string()),
    )?;
    if let (Some(rule), Some(index)) = (&r.rule, r.action_index) {
        let dedup = entry
            .envelope
            .as_ref()
            .map_or("?", |e| e.dedup_key.as_str());
        field(
            out,
            "failed step",
            &format!(
                "rule `{rule}` action #{} (key before stable action ids: {dedup}:{rule}:{index})",
                index + 1
            ),
        )?;
    }
    let s = &r.source;
    let at = s.timestamp_ms.map(format_ms).unwrap_or_else(|| "-".into());
    let key = s.key.as_deref().unwrap_or("-");
    field(
        out,
        "original",
        &format!("{}/{}@{} key {key} at {at}", s.topic, s.partition, s.offset),
    )?;
    let lineage = match &r.redrive {
        Some(d) => format!(
            "redrive #{}, replaces {} {}:{} ({})",
            d.count, d.previous.topic, d.previous.partition, d.previous.offset, d.previous_reason
        ),
        None => "first dead letter of this record".into(),
    };
    field(out, "lineage", &lineage)?;
    let status = match &marks {
        Some(marks) => describe(marks.status(&[(partition, offset)]).await?[0].as_deref()),
        None => "unknown (Redis unreachable)".into(),
    };
    field(out, "status", &status)?;
    match &entry.envelope {
        Some(env) => {
            // The record as it was on Kafka (every field, unknown ones too), minus the payload,
            // which is printed below as the text WeChat sent rather than as an escaped string.
            let mut value: serde_json::Value =
                serde_json::from_slice(&entry.original).unwrap_or_default();
            if let Some(fields) = value.as_object_mut() {
                fields.remove("payload");
            }
            writeln!(out, "envelope:\n{}", serde_json::to_string_pretty(&value)?)?;
            writeln!(out, "payload (as WeChat sent it):\n{}", env.payload)?;
        }
        None => {
            let why = Envelope::from_bytes(&entry.original)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            writeln!(
                out,
                "record value ({} bytes, not an envelope: {why}):",
                entry.original.len()
            )?;
            writeln!(out, "{}", String::from_utf8_lossy(&entry.original))?;
        }
    }
    Ok(entry)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not PARTITION:OFFSET"))?;
    let p = p.parse().map_err(|_| format!("bad partition `{p}`"))?;
    let o = o.parse().map_err(|_| format!("bad offset `{o}`"))?;
    Ok((p, o))
}
