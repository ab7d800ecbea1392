//! `consumer explain`: a dry run of the rules over recorded records.
//!
//! Reads envelopes from a JSON-lines file (one record value per line, as on Kafka) or from a
//! topic, partition and offset range, and prints for each record the rules that match and the
//! exact requests the live consumer would make — method, URL (with `ACCESS_TOKEN` standing in for
//! the token) and JSON body. It sends nothing: no WeChat call, no Redis access, no produce. Reading
//! a topic uses `assign` with an explicit start offset: it never joins the consumer group and
//! never commits, so the live group is not disturbed.
//!
//! What it cannot know without Redis, it says: whether a reply was already sent (ledger), whether
//! the user's window still allows it, and whether a local image is already uploaded.
//!
//! An `ask` is shown as the backend and the request it would get. With `--call-ask` the backend
//! is really called (once, without memory, limits or retries) and its answer printed: still
//! nothing is sent to WeChat and nothing is kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use common::envelope::{record_key, Envelope};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::actions::{plan, AskFallback, PlannedAction, Step};
use crate::ask::backend::{AskRequest, Backend, BackendSetupError};
use crate::ask::config::BackendSettings;
use crate::config::Settings;
use crate::rules::{ForwardTarget, RuleSet};
use crate::wechat_api::{WechatApi, PATH_SEND, PATH_TYPING, PATH_UPLOAD};

/// `consumer explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A JSON-lines file of record values (envelopes), one per line.
    #[arg(long, conflicts_with = "topic")]
    pub file: Option<PathBuf>,
    /// Read records from this topic (defaults to partition 0 from offset 0).
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long, default_value_t = 0, requires = "topic")]
    pub partition: i32,
    /// First offset to read.
    #[arg(long, default_value_t = 0, requires = "topic")]
    pub from: i64,
    /// Offset to stop before (default: the end of the partition).
    #[arg(long, requires = "topic")]
    pub to: Option<i64>,
    /// A rules file other than the configured one (e.g. a candidate before deploying it).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Call the backend of every `ask` and print its answer (nothing is sent or kept).
    #[arg(long)]
    pub call_ask: bool,
}

impl ExplainArgs {
    pub fn source(&self) -> Option<Source> {
        match (&self.file, &self.topic) {
            (Some(file), None) => Some(Source::File(file.clone())),
            (None, Some(topic)) => Some(Source::Topic {
                topic: topic.clone(),
                partition: self.partition,
                from: self.from,
                to: self.to,
            }),
            _ => None,
        }
    }
}

/// `consumer explain` from the command line: the explanation on stdout; exit code 2 without a
/// source or with a rules file that does not compile.
pub(crate) fn command(settings: &Settings, args: &ExplainArgs) -> anyhow::Result<i32> {
    let Some(source) = args.source() else {
        eprintln!("consumer explain: give --file PATH or --topic NAME");
        return Ok(2);
    };
    let path = args
        .rules
        .clone()
        .unwrap_or_else(|| settings.rules.path.clone());
    let rules = match crate::rules::load_file(&path, &crate::startup::rules_context(settings)) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("consumer: {e}");
            return Ok(2);
        }
    };
    let mut out = std::io::stdout().lock();
    explain_calling(settings, &rules, &source, args.call_ask, &mut out)?;
    Ok(0)
}

/// Where `explain` reads records.
#[derive(Debug, Clone)]
pub enum Source {
    /// JSON lines; blank lines are skipped.
    File(std::path::PathBuf),
    /// Offsets `from..to` (end exclusive; to the end of the partition when `to` is `None`).
    Topic {
        topic: String,
        partition: i32,
        from: i64,
        to: Option<i64>,
    },
}

/// Prints the explanation of every record of `source` to `out`; returns the records seen.
pub fn explain(
    settings: &Settings,
    rules: &RuleSet,
    source: &Source,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    explain_calling(settings, rules, source, false, out)
}

/// [`explain`]; with `call_ask`, every `ask`'s backend is called and its answer shown.
pub fn explain_calling(
    settings: &Settings,
    rules: &RuleSet,
    source: &Source,
    call_ask: bool,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let mut explainer = Explainer::new(settings, rules)?;
    if call_ask {
        let backends = settings
            .ask
            .backends
            .iter()
            .map(|(name, b)| Ok((name.clone(), Backend::new(name, b)?)))
            .collect::<Result<BTreeMap<_, _>, BackendSetupError>>()?;
        explainer.backends = Some(backends);
    }
    match source {
        Source::File(path) => explainer.file(path, out),
        Source::Topic {
            topic,
            partition,
            from,
            to,
        } => explainer.topic(topic, *partition, *from, *to, out),
    }
}

/// Prints what the rules do with one record; `consumer replay --dry-run` and `consumer dlq
/// redrive --dry-run` print their records with it too, so every dry run reads the same.
pub struct Explainer<'a> {
    settings: &'a Settings,
    rules: &'a RuleSet,
    api: WechatApi,
    /// The apps configured (static and app files), by name.
    apps: std::collections::BTreeSet<String>,
    /// The `ask` backends to call (`--call-ask`); `None`: show the request only.
    backends: Option<BTreeMap<String, Backend>>,
}

impl std::fmt::Debug for Explainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explainer").finish_non_exhaustive()
    }
}

impl<'a> Explainer<'a> {
    pub fn new(settings: &'a Settings, rules: &'a RuleSet) -> anyhow::Result<Explainer<'a>> {
        let api = WechatApi::new(
            settings.wechat.base_url.base(),
            settings.wechat.timeout,
            crate::metrics::Metrics::unregistered(),
        )?;
        Ok(Explainer {
            apps: crate::apps::names(settings),
            settings,
            rules,
            api,
            backends: None,
        })
    }

    fn file(&self, path: &Path, out: &mut dyn Write) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut seen = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            seen += 1;
            self.record(
                &format!("{}:{}", path.display(), i + 1),
                line.as_bytes(),
                out,
            )?;
        }
        Ok(seen)
    }

    fn topic(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: Option<i64>,
        out: &mut dyn Write,
    ) -> anyhow::Result<usize> {
        let k = &self.settings.kafka;
        let mut config = ClientConfig::new();
        for (key, value) in &k.properties {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", &k.brokers)
            // Required by librdkafka, never used: no subscribe, no commit.
            .set("group.id", format!("{}-explain", k.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
        consumer.assign(&assignment)?;
        let idle_limit = Duration::from_secs(10);
        let mut last_progress = Instant::now();
        let mut seen = 0;
        loop {
            if to.is_some_and(|to| from + seen as i64 >= to) {
                break;
            }
            match consumer.poll(Duration::from_millis(200)) {
                None if last_progress.elapsed() > idle_limit => {
                    anyhow::bail!("no record from {topic}/{partition} for {idle_limit:?}")
                }
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                    break
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    if to.is_some_and(|to| message.offset() >= to) {
                        break;
                    }
                    seen += 1;
                    let label = format!("{topic}/{partition}@{}", message.offset());
                    self.record(&label, message.payload().unwrap_or_default(), out)?;
                }
            }
        }
        Ok(seen)
    }

    /// Explains one record value, headed by `label` (where it was read).
    /// An `ask`: the backend it would call and the request, without calling it.
    fn ask(
        &self,
        tag: &str,
        env: &common::envelope::EnvelopeV1,
        action: &PlannedAction,
        backend: &str,
        fallback: &AskFallback,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let place = match self.settings.ask.backends.get(backend) {
            Some(BackendSettings::Http { url, .. }) => format!("http bot: POST {url}"),
            Some(BackendSettings::Chat {
                base_url, model, ..
            }) => format!(
                "chat model `{model}`: POST {}/chat/completions",
                base_url.to_string().trim_end_matches('/')
            ),
            None => "not configured".into(),
        };
        writeln!(out, "{tag} ask `{backend}` ({place})")?;
        let request = AskRequest::new(env, &action.rule, &action.idempotency_key, &[]);
        writeln!(out, "{tag}   {}", serde_json::to_string(&request)?)?;
        writeln!(
            out,
            "{tag}   (history: the user's last {} turns from Redis; the answer's replies are sent \
             at most once under {}#1, #2, ...; not asked if the reply window is closed or used up)",
            self.settings.ask.memory.turns, action.idempotency_key
        )?;
        let fallback = match fallback {
            AskFallback::Nothing => "none".to_owned(),
            AskFallback::Text(text) => format!("text {}", serde_json::to_string(text)?),
            AskFallback::Handoff => "hand-off".to_owned(),
        };
        writeln!(out, "{tag}   fallback: {fallback}")?;
        if let Some(backend) = self.backends.as_ref().and_then(|b| b.get(backend)) {
            // The explanation is written synchronously (it also reads Kafka that way): the call
            // runs on a runtime of its own, on a thread of its own, whoever called us.
            let answered = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map(|rt| rt.block_on(backend.ask(env, &request)))
                    })
                    .join()
            });
            match answered {
                Ok(Ok(Ok(answer))) => writeln!(
                    out,
                    "{tag}   answer (not sent): {}",
                    serde_json::to_string(&answer.fit_text(
                        self.settings.ask.text_limit_bytes,
                        self.settings.ask.max_text_parts
                    ))?
                )?,
                Ok(Ok(Err(e))) => {
                    writeln!(out, "{tag}   no answer: {e} (the fallback would apply)")?
                }
                Ok(Err(e)) => writeln!(out, "{tag}   cannot call: {e}")?,
                Err(_) => writeln!(out, "{tag}   cannot call: the call stopped")?,
            }
        }
        Ok(())
    }

    pub fn record(&self, label: &str, value: &[u8], out: &mut dyn Write) -> anyhow::Result<()> {
        let envelope = match Envelope::from_bytes(value) {
            Ok(envelope) => envelope,
            Err(e) => {
                writeln!(out, "== {label}: poison ({}): {e}", e.kind())?;
                writeln!(
                    out,
                    "   -> dead letter to {}",
                    self.settings.kafka.dead_letter_topic
                )?;
                return Ok(());
            }
        };
        let env = envelope.v1();
        let msg = &env.message;
        writeln!(
            out,
            "== {label}: app={} openid={} msg_type={} event={} dedup_key={}",
            env.app,
            msg.from_user_name,
            msg.msg_type(),
            msg.event().unwrap_or("-"),
            env.dedup_key
        )?;
        if !self.apps.contains(&env.app) {
            writeln!(
                out,
                "   app `{}` is not configured -> dead letter (unknown_app)",
                env.app
            )?;
            return Ok(());
        }
        let matches = self.rules.evaluate(env);
        if matches.is_empty() {
            writeln!(out, "   no rule matched -> skipped")?;
            return Ok(());
        }
        let names: Vec<&str> = matches.iter().map(|m| m.rule.name.as_str()).collect();
        writeln!(out, "   matched: {}", names.join(", "))?;
        for action in plan(env, &matches) {
            let tag = format!("   [{} #{}]", action.rule, action.index + 1);
            match &action.step {
                Step::Send {
                    request,
                    media_file,
                } => {
                    if let Some(path) = media_file {
                        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
                        writeln!(
                            out,
                            "{tag} POST {} (multipart: media=@{}, {size} bytes; only when no uploaded id is cached)",
                            self.api.display_url(PATH_UPLOAD, "&type=image"),
                            path.display()
                        )?;
                    }
                    writeln!(out, "{tag} POST {}", self.api.display_url(PATH_SEND, ""))?;
                    writeln!(out, "{tag}   {}", serde_json::to_string(request)?)?;
                    writeln!(
                        out,
                        "{tag}   (at most once: idempotency key {}; not sent if the reply window is closed or used up)",
                        action.idempotency_key
                    )?;
                }
                Step::Typing(request) => {
                    writeln!(out, "{tag} POST {}", self.api.display_url(PATH_TYPING, ""))?;
                    writeln!(out, "{tag}   {}", serde_json::to_string(request)?)?;
                }
                Step::Handoff { note } => {
                    let note = note.as_deref().unwrap_or("-");
                    let h = &self.settings.handoff;
                    let key = record_key(&env.app, &msg.from_user_name);
                    if h.publish {
                        writeln!(
                            out,
                            "{tag} hand-off: produce to {} (key {key}, note: {note})",
                            self.settings.kafka.handoff_topic
                        )?;
                    }
                    if let Some(webhook) = &h.webhook {
                        writeln!(out, "{tag} hand-off: POST {webhook} (JSON, note: {note})")?;
                    }
                }
                Step::Forward(ForwardTarget::Topic(topic)) => {
                    let key = record_key(&env.app, &msg.from_user_name);
                    writeln!(
                        out,
                        "{tag} forward: produce the envelope to {topic} (key {key})"
                    )?;
                }
                Step::Forward(ForwardTarget::Webhook(url)) => {
                    writeln!(out, "{tag} forward: POST {url} (the envelope as JSON)")?;
                }
                Step::Ask {
                    backend, fallback, ..
                } => self.ask(&tag, env, &action, backend, fallback, out)?,
                Step::Drop => writeln!(out, "{tag} drop")?,
            }
        }
        Ok(())
    }
}
