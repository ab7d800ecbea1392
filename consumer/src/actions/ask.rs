//! Running one `ask`: get the answer once, send it at most once, remember the turn.
//!
//! Order of operations, each a decision point:
//! 1. **Kept?** The ask's key in Redis ([`crate::ask::store`]) says it is done (its replies went
//!    out: nothing to do), or holds the answer decided by an earlier run (send that one: the
//!    backend is not asked again), or nothing.
//! 2. **Window.** Nothing kept: if no reply could be sent now (window closed, quota used up)
//!    the backend is not called and the record is dead-lettered with that reason.
//! 3. **Ask**, with the typing indicator on (renewed every `ask.typing_refresh`), the user's
//!    memory as context, the per-app limits, and retries within the window's reach
//!    ([`crate::ask::Asker::decide`]). No usable answer: the fallback (text, hand-off) becomes
//!    the answer, or, with none, a failure dead-letters the record (`ask_failed`) and an empty
//!    answer ends it silently.
//! 4. **Keep** the answer (`SET NX`: the first kept answer is the one sent, whoever decided it),
//!    then cancel the typing indicator.
//! 5. **Send** each reply as an ordinary reply through the ledger, the window and the token
//!    (`{key}#1`, `{key}#2`, ...), then the hand-off if the answer asks for one (`{key}#handoff`,
//!    at least once). A reply that cannot be sent dead-letters the record; the answer stays kept,
//!    so a redrive sends the same replies.
//! 6. **Remember** the turn (once per ask) and replace the kept answer by the `sent` mark.
//!
//! A crash anywhere leaves a state the redelivery resumes from: before 4 nothing is kept and the
//! backend is asked again (nothing was sent); after 4 the kept answer is sent, and the ledger
//! keeps each reply at most once.

use std::time::Duration;

use common::envelope::EnvelopeV1;

use super::{Actions, AskFallback, Done, PlannedAction, Step};
use crate::ask::answer::{Answer, Reply, Source};
use crate::ask::backend::AskRequest;
use crate::ask::store::{Kept, Turn};
use crate::ask::AskFailure;
use crate::clock::now_ms;
use crate::dead_letter::Reason;
use crate::error::ProcessError;
use crate::ledger::ClaimOwner;
use crate::wechat_api::{SendRequest, TypingCommand, TypingRequest};
use crate::window::{RecordWindow, Refusal};

impl Actions {
    // The step's three fields and the record's context (env, owner, window) are each used apart.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ask(
        &self,
        env: &EnvelopeV1,
        action: &PlannedAction,
        backend: &str,
        touser: &str,
        fallback: &AskFallback,
        owner: &ClaimOwner,
        window: &RecordWindow<'_>,
    ) -> Result<Done, ProcessError> {
        let key = &action.idempotency_key;
        let store = &self.ask.store;
        let (answer, typing_on) = match store.kept(env, key).await? {
            Some(Kept::Sent { replies }) => {
                self.ask.count("done");
                return Ok(Done::Replies {
                    sent: 0,
                    already_sent: replies,
                });
            }
            Some(Kept::Pending { answer }) => {
                self.ask.count("reused");
                (answer, false)
            }
            None => match self
                .decide(env, action, backend, touser, fallback, window)
                .await?
            {
                Decided::Answer(answer, typing_on) => match store.keep(env, key, &answer).await {
                    Ok(Kept::Pending { answer }) => (answer, typing_on),
                    // Another run of this record finished the ask meanwhile.
                    Ok(Kept::Sent { replies }) => {
                        self.stop_typing(env, touser, typing_on).await;
                        return Ok(Done::Replies {
                            sent: 0,
                            already_sent: replies,
                        });
                    }
                    Err(e) => {
                        self.stop_typing(env, touser, typing_on).await;
                        return Err(e.into());
                    }
                },
                Decided::End(done) => return Ok(done),
            },
        };
        self.stop_typing(env, touser, typing_on).await;
        let (mut sent, mut already_sent) = (0, 0);
        for (n, reply) in answer.replies.iter().enumerate() {
            let request = SendRequest {
                touser: touser.to_owned(),
                message: reply.message(),
            };
            let reply_key = format!("{key}#{}", n + 1);
            let planned = PlannedAction {
                rule: action.rule.clone(),
                index: action.index,
                idempotency_key: reply_key.clone(),
                legacy_key: reply_key,
                step: Step::Send {
                    request: request.clone(),
                    media_file: None,
                },
            };
            match self
                .send(env, &planned, &request, None, owner, window)
                .await?
            {
                Done::Sent => sent += 1,
                Done::AlreadySent => already_sent += 1,
                Done::DeadLetter(reason) => return Ok(Done::DeadLetter(reason)),
                // The record waits for the app's quota (`crate::quota`); released, it runs again
                // from the kept answer, and the replies sent before this one are `already sent`.
                Done::DailyQuotaSpent => return Ok(Done::DailyQuotaSpent),
                Done::Handed | Done::Nothing | Done::Replies { .. } => {}
            }
        }
        if answer.handoff {
            let handoff_key = format!("{key}#handoff");
            let planned = PlannedAction {
                rule: action.rule.clone(),
                index: action.index,
                idempotency_key: handoff_key.clone(),
                legacy_key: handoff_key.clone(),
                step: Step::Handoff {
                    note: answer.handoff_note.clone(),
                },
            };
            let sink = self.sinks.handoff(
                env,
                &action.rule,
                answer.handoff_note.as_deref(),
                &handoff_key,
            );
            if let Done::DeadLetter(reason) = self.at_least_once(&planned, sink).await? {
                return Ok(Done::DeadLetter(reason));
            }
        }
        let turn = Turn {
            id: key.clone(),
            user: AskRequest::new(env, &action.rule, key, &[]).user_text(),
            replies: answer.replies.iter().map(Reply::as_memory).collect(),
        };
        store.remember(env, &turn).await?;
        store.finish(env, key, sent + already_sent).await?;
        Ok(Done::Replies { sent, already_sent })
    }

    /// Steps 2 and 3: the answer to keep (and whether typing was turned on), or how the ask
    /// ends without one.
    async fn decide(
        &self,
        env: &EnvelopeV1,
        action: &PlannedAction,
        backend: &str,
        touser: &str,
        fallback: &AskFallback,
        window: &RecordWindow<'_>,
    ) -> Result<Decided, ProcessError> {
        let window_end = match window.peek().await? {
            Ok(end) => end,
            Err(refusal) => {
                let (outcome, reason) = match refusal {
                    Refusal::WindowClosed => ("window_closed", Reason::WindowClosed),
                    Refusal::QuotaExhausted => ("quota_exhausted", Reason::QuotaExhausted),
                };
                self.ask.count(outcome);
                return Ok(Decided::End(Done::DeadLetter(reason)));
            }
        };
        let deadline_ms = window_end.min(now_ms() + self.ask.settings.max_wait.as_millis() as i64);
        let memory = self.ask.store.memory(env).await?;
        let request = AskRequest::new(env, &action.rule, &action.idempotency_key, &memory);
        let typing_on = self.show_typing;
        let typing = TypingRequest {
            touser: touser.to_owned(),
            command: TypingCommand::Typing,
        };
        // On before the backend is asked, whatever it takes; renewed while it thinks.
        if typing_on {
            self.typing(env, &typing).await;
        }
        let decided = {
            let asking = self
                .ask
                .decide(backend, env, &request, deadline_ms, &self.shutdown);
            tokio::pin!(asking);
            let every = self
                .ask
                .settings
                .typing_refresh
                .max(Duration::from_millis(100));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    decided = &mut asking => break decided,
                    _ = ticker.tick(), if typing_on => self.typing(env, &typing).await,
                }
            }
        };
        let failure = match decided {
            Err(()) => {
                self.stop_typing(env, touser, typing_on).await;
                return Err(ProcessError::Stopping);
            }
            Ok(Ok(answer)) => {
                self.ask.count("answered");
                return Ok(Decided::Answer(answer, typing_on));
            }
            Ok(Err(failure)) => failure,
        };
        self.metrics
            .ask_fallbacks
            .with_label_values(&[failure.label()])
            .inc();
        let answer = match fallback {
            AskFallback::Text(text) => Answer {
                source: Source::Fallback,
                replies: vec![Reply::Text {
                    content: text.clone(),
                }],
                handoff: false,
                handoff_note: None,
            },
            AskFallback::Handoff => Answer {
                source: Source::Fallback,
                replies: Vec::new(),
                handoff: true,
                handoff_note: Some(format!("the bot gave no answer ({})", failure.label())),
            },
            AskFallback::Nothing => {
                self.stop_typing(env, touser, typing_on).await;
                return Ok(Decided::End(match failure {
                    AskFailure::Empty(_) => {
                        self.ask.count("silent");
                        // Kept as done, so a redelivery does not ask again.
                        self.ask
                            .store
                            .finish(env, &action.idempotency_key, 0)
                            .await?;
                        Done::Nothing
                    }
                    failure @ AskFailure::Backend { .. } => {
                        self.ask.count("failed");
                        Done::DeadLetter(Reason::AskFailed(failure.to_string()))
                    }
                }));
            }
        };
        self.ask.count("fallback");
        Ok(Decided::Answer(answer, typing_on))
    }

    /// Ends the typing indicator this run turned on.
    async fn stop_typing(&self, env: &EnvelopeV1, touser: &str, typing_on: bool) {
        if typing_on {
            self.typing(
                env,
                &TypingRequest {
                    touser: touser.to_owned(),
                    command: TypingCommand::CancelTyping,
                },
            )
            .await;
        }
    }
}

enum Decided {
    Answer(Answer, bool),
    End(Done),
}
