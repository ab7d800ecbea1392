//! Actions: what matched rules do for one record.
//!
//! Two halves. [`plan`] is pure: it turns the matched rules into concrete steps — the exact send
//! bodies with templates filled in, typing commands, hand-offs, forwards — each with its
//! idempotency key `{dedup_key}:{action id}`; `consumer explain` prints these.
//!
//! **Action identity.** The key must survive rule edits, or a redelivery, replay or redrive after a
//! reload would send the same reply again. An action's id is its explicit `id` in the rules file
//! (`id:{id}`), or else a hash of what it would do (`h:{hash}`): the rendered send body with its
//! recipient, the hand-off note, the forward target. Renaming a rule, reordering rules or
//! actions, and inserting or removing other actions keep every identity; changing what a reply
//! says makes it a new reply unless it has an explicit `id`. Two identical actions in one record's
//! plan are told apart by their order (`~2`, `~3`, ...). Entries written under the old key
//! `{dedup_key}:{rule}:{index}` are still honoured (`legacy_key`), so records processed before
//! the change are not replied twice after it (docs/architecture.md, "Reply identity"). [`Actions::run`]
//! executes one step with the ledger, the reply window, the token and the retry policy
//! ([`send`] for replies, [`sinks`] for hand-off and forward).
//!
//! Delivery guarantees by step: replies (text, image, link, card) are **at most once** (ledger
//! `sending` → `sent`); an `ask` ([`ask`]) decides its answer once (kept in Redis until sent) and
//! sends each of its replies as such a reply; forwards and hand-offs are **at least once** (retried until acknowledged,
//! marked `done` after, carrying the idempotency key so receivers can drop repeats); typing is
//! best effort (cosmetic, failures logged and counted, never fatal); drop does nothing.

pub mod ask;
pub mod calls;
pub mod media;
pub mod send;
pub mod sinks;

use std::path::PathBuf;
use std::sync::Arc;

use common::envelope::EnvelopeV1;

use crate::ask::Asker;
use crate::dead_letter::Reason;
use crate::error::ProcessError;
use crate::ledger::{ClaimOwner, Ledger};
use crate::metrics::Metrics;
use crate::rules::{field, Action, Fallback, ForwardTarget, MediaSource, RuleMatch, Template};
use crate::token_broker::TokenBroker;
use crate::wechat_api::body::{CardBody, ImageBody, LinkBody, TextBody};
use crate::wechat_api::{OutgoingMessage, SendRequest, TypingRequest, WechatApi};
use crate::window::{RecordWindow, ReplyWindows};
use calls::{Caller, RetryPolicy};
use media::MediaCache;
use sinks::{SinkError, Sinks};
use tokio_util::sync::CancellationToken;

/// One concrete step of one matched rule.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    pub rule: String,
    /// 0-based position of the action within its rule.
    pub index: usize,
    /// `{dedup_key}:{action id}`: the ledger key (see the module docs).
    pub idempotency_key: String,
    /// `{dedup_key}:{rule}:{index}`, the key before action ids were stable; read, never written.
    pub legacy_key: String,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A customer-service message. When `media_file` is set, the body's media id is a
    /// placeholder, replaced at run time by the id of the uploaded (or cached) file.
    Send {
        request: SendRequest,
        media_file: Option<PathBuf>,
    },
    Typing(TypingRequest),
    Handoff {
        note: Option<String>,
    },
    Forward(ForwardTarget),
    /// Ask `backend` for the replies to send to `touser` (see [`ask`]).
    Ask {
        backend: String,
        touser: String,
        fallback: AskFallback,
    },
    Drop,
}

/// An `ask`'s fallback with its text rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskFallback {
    Nothing,
    Text(String),
    Handoff,
}

/// What running one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A reply was delivered now.
    Sent,
    /// The ledger says this reply was delivered before; not sent again.
    AlreadySent,
    /// A forward or hand-off was acknowledged (now or before).
    Handed,
    /// An `ask` ended: `sent` replies went out now, `already_sent` before a redelivery.
    Replies { sent: usize, already_sent: usize },
    /// Nothing to record (typing, drop).
    Nothing,
    /// The step cannot complete; the record is dead-lettered with this reason.
    DeadLetter(Reason),
    /// WeChat answered 45009: the app's daily API quota is spent. Nothing was sent (the claim was
    /// given back); the record waits for the quota (`crate::quota`).
    DailyQuotaSpent,
}

/// The placeholder written in place of a media id that comes from a local file.
pub fn media_placeholder(path: &std::path::Path) -> String {
    format!("<media_id of upload of {}>", path.display())
}

/// Turns matched rules into steps, filling templates from `env`.
pub fn plan(env: &EnvelopeV1, matches: &[RuleMatch<'_>]) -> Vec<PlannedAction> {
    let touser = env.message.from_user_name.as_str().to_owned();
    let mut planned = Vec::new();
    let mut identities: Vec<String> = Vec::new();
    for m in matches {
        let render = |t: &Template| t.render(&|name| field(env, &m.captures, name));
        for (index, action) in m.rule.actions.iter().enumerate() {
            let media = |source: &MediaSource| match source {
                MediaSource::Id(id) => (id.clone(), None),
                MediaSource::File(path) => (media_placeholder(path), Some(path.clone())),
            };
            let send = |message: OutgoingMessage, media_file: Option<PathBuf>| Step::Send {
                request: SendRequest {
                    touser: touser.clone(),
                    message,
                },
                media_file,
            };
            let step = match action {
                Action::Text { content } => send(
                    OutgoingMessage::Text {
                        text: TextBody {
                            content: render(content),
                        },
                    },
                    None,
                ),
                Action::Image { media: source } => {
                    let (media_id, file) = media(source);
                    send(
                        OutgoingMessage::Image {
                            image: ImageBody { media_id },
                        },
                        file,
                    )
                }
                Action::Link {
                    title,
                    description,
                    url,
                    thumb_url,
                } => send(
                    OutgoingMessage::Link {
                        link: LinkBody {
                            title: render(title),
                            description: render(description),
                            url: render(url),
                            thumb_url: render(thumb_url),
                        },
                    },
                    None,
                ),
                Action::MiniProgramPage {
                    title,
                    pagepath,
                    thumb,
                } => {
                    let (thumb_media_id, file) = media(thumb);
                    send(
                        OutgoingMessage::MiniProgramPage {
                            miniprogrampage: CardBody {
                                title: render(title),
                                pagepath: render(pagepath),
                                thumb_media_id,
                            },
                        },
                        file,
                    )
                }
                Action::Typing { command } => Step::Typing(TypingRequest {
                    touser: touser.clone(),
                    command: *command,
                }),
                Action::Handoff { note } => Step::Handoff { note: note.clone() },
                Action::Forward { target } => Step::Forward(target.clone()),
                Action::Ask { backend, fallback } => Step::Ask {
                    backend: backend.clone(),
                    touser: touser.clone(),
                    fallback: match fallback {
                        Fallback::Nothing => AskFallback::Nothing,
                        Fallback::Text(text) => AskFallback::Text(render(text)),
                        Fallback::Handoff => AskFallback::Handoff,
                    },
                },
                Action::Drop => Step::Drop,
            };
            let identity = match m.rule.action_ids.get(index).cloned().flatten() {
                Some(id) => format!("id:{id}"),
                None => format!("h:{:016x}", fnv1a(content_of(&step).as_bytes())),
            };
            let seen = identities.iter().filter(|i| **i == identity).count();
            let action_id = if seen == 0 {
                identity.clone()
            } else {
                format!("{identity}~{}", seen + 1)
            };
            identities.push(identity);
            let dedup = env.dedup_key.as_str();
            planned.push(PlannedAction {
                rule: m.rule.name.clone(),
                index,
                idempotency_key: format!("{dedup}:{action_id}"),
                legacy_key: format!("{dedup}:{}:{index}", m.rule.name),
                step,
            });
        }
    }
    planned
}

/// What a step would do, as the text its identity hashes: stable across builds (no `Debug`
/// output, no map iteration order).
fn content_of(step: &Step) -> String {
    match step {
        Step::Send {
            request,
            media_file,
        } => {
            let body = serde_json::to_string(request).unwrap_or_default();
            match media_file {
                Some(path) => format!("send\n{body}\n{}", path.display()),
                None => format!("send\n{body}"),
            }
        }
        Step::Typing(request) => format!("typing\n{}", request.touser),
        Step::Handoff { note } => format!("handoff\n{}", note.as_deref().unwrap_or("")),
        Step::Forward(ForwardTarget::Webhook(url)) => format!("forward-url\n{url}"),
        Step::Forward(ForwardTarget::Topic(topic)) => format!("forward-topic\n{topic}"),
        // Not the fallback: editing it must not make the ask new (and ask again).
        Step::Ask {
            backend, touser, ..
        } => format!("ask\n{backend}\n{touser}"),
        Step::Drop => "drop".into(),
    }
}

/// FNV-1a, 64 bits: a fixed, dependency-free hash, so an identity never changes between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Replaces the media id of an image or card body.
fn set_media_id(request: &mut SendRequest, id: String) {
    match &mut request.message {
        OutgoingMessage::Image { image } => image.media_id = id,
        OutgoingMessage::MiniProgramPage { miniprogrampage } => miniprogrampage.thumb_media_id = id,
        OutgoingMessage::Text { .. } | OutgoingMessage::Link { .. } => {}
    }
}

/// Executes planned steps.
#[derive(Debug, Clone)]
pub struct Actions {
    pub api: WechatApi,
    pub tokens: Arc<TokenBroker>,
    pub ledger: Ledger,
    pub windows: ReplyWindows,
    pub media: MediaCache,
    pub sinks: Sinks,
    pub policy: RetryPolicy,
    pub metrics: Metrics,
    /// Run `typing` steps. Off for operator re-drives (`replay`, `dlq redrive`): the indicator
    /// belongs to a live conversation, and a re-driven record's user may have been answered long
    /// ago — a "typing…" with no reply after it would only confuse them.
    pub show_typing: bool,
    /// Fires when the process stops: waits inside a send end, and a claim with no call in flight
    /// is given back (see [`send`]). A record's own run may end sooner (its partition revoked):
    /// see [`ClaimOwner`].
    pub shutdown: CancellationToken,
    /// The `ask` backends, their limits and what is kept for them.
    pub ask: Asker,
}

impl Actions {
    fn caller(&self) -> Caller<'_> {
        Caller {
            tokens: &self.tokens,
            policy: &self.policy,
        }
    }

    /// Runs one step for `env`.
    pub(crate) async fn run(
        &self,
        env: &EnvelopeV1,
        action: &PlannedAction,
        owner: &ClaimOwner,
        window: &RecordWindow<'_>,
    ) -> Result<Done, ProcessError> {
        match &action.step {
            Step::Send {
                request,
                media_file,
            } => {
                self.send(env, action, request, media_file.as_deref(), owner, window)
                    .await
            }
            Step::Typing(request) => {
                if self.show_typing {
                    self.typing(env, request).await;
                }
                Ok(Done::Nothing)
            }
            Step::Handoff { note } => {
                let sink =
                    self.sinks
                        .handoff(env, &action.rule, note.as_deref(), &action.idempotency_key);
                self.at_least_once(action, sink).await
            }
            Step::Forward(target) => {
                let sink = self.sinks.forward(env, target, &action.idempotency_key);
                self.at_least_once(action, sink).await
            }
            Step::Ask {
                backend,
                touser,
                fallback,
            } => {
                self.ask(env, action, backend, touser, fallback, owner, window)
                    .await
            }
            Step::Drop => Ok(Done::Nothing),
        }
    }

    /// Forward and hand-off: skipped when the ledger says done; marked done after success.
    async fn at_least_once(
        &self,
        action: &PlannedAction,
        sink: impl std::future::Future<Output = Result<(), SinkError>>,
    ) -> Result<Done, ProcessError> {
        if self
            .ledger
            .is_done(&action.idempotency_key, Some(&action.legacy_key))
            .await?
        {
            return Ok(Done::Handed);
        }
        match sink.await {
            Ok(()) => {
                self.ledger.mark_done(&action.idempotency_key).await?;
                Ok(Done::Handed)
            }
            // A 4xx will not change by retrying: dead-letter so an operator sees it.
            Err(SinkError::Rejected { status, detail }) => {
                Ok(Done::DeadLetter(Reason::WebhookRejected { status, detail }))
            }
            // Unreachable or 5xx: the record is retried later, its offset not stored.
            Err(transient) => Err(ProcessError::Sink(transient)),
        }
    }

    /// Typing is cosmetic: one attempt, any failure logged and counted, never fatal.
    pub(crate) async fn typing(&self, env: &EnvelopeV1, request: &TypingRequest) {
        let api = &self.api;
        let result = self
            .caller()
            .attempt(&env.app, |token| async move {
                api.typing(&token, request).await
            })
            .await;
        let label = match &result {
            Ok(()) => "ok",
            Err(calls::AttemptError::Api(e)) => e.class(true).label(),
            Err(calls::AttemptError::Token(_)) => "token",
        };
        self.metrics
            .sends
            .with_label_values(&["typing", label])
            .inc();
        if let Err(e) = result {
            tracing::info!(app = %env.app, error = %e, "typing indicator failed (ignored)");
        }
    }
}
