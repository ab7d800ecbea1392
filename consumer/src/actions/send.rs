//! Sending one reply, at most once.
//!
//! Order of operations, each a decision point:
//! 1. **Ledger claim** (`sending` mark) — first, so a redelivered record neither sends again nor
//!    spends quota again.
//! 2. **Window** — take one reply from the user's allowance; a refusal means WeChat would answer
//!    45015/45047, so the reply is not attempted and the record is dead-lettered.
//! 3. **Media** — a local image is resolved to a (cached or freshly uploaded) media id.
//! 4. **Call** — with the token protocol; retryable failures back off and retry; an unanswered call
//!    is never retried (not idempotent) and is marked ambiguous.
//! 5. **Outcome** — `sent` in the ledger; on a definite failure the mark is released and the reply
//!    given back to the allowance, since nothing reached the user. A 45009 (the app's daily API
//!    quota, from the send, the upload or the token endpoint) is such a failure, answered
//!    [`Done::DailyQuotaSpent`]: the record waits for the quota (`crate::quota`).
//!
//! The lease is renewed before every attempt (before the first only when the claim is older than
//! `lease / 3`) and every `lease / 3` while anything is awaited with the mark held (the upload,
//! the call, a backoff), so no wait, however long, lets it expire under a live sender. A renewal that finds the mark taken over stops the send: nothing more is sent,
//! and the record is dead-lettered as `superseded` (visible, and safe to redrive: the ledger
//! decides). The end of the record's run — shutdown, or its partition revoked by a rebalance
//! (see [`ClaimOwner`]) — ends every wait: a claim with no call in flight is given back (mark
//! released, reply refunded) so the redelivery (after the restart, or at the partition's new
//! owner) sends it, instead of waiting out this run's lease or finding a stale mark and giving it
//! up as ambiguous.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use common::envelope::EnvelopeV1;

use super::calls::{AttemptError, CallFailure};
use super::media::MediaError;
use super::{set_media_id, Actions, Done, PlannedAction};
use crate::clock::now_ms;
use crate::dead_letter::Reason;
use crate::error::ProcessError;
use crate::ledger::{Claim, ClaimOwner, Lease};
use crate::token_broker::TokenError;
use crate::wechat_api::error::{
    ERRCODE_DAILY_QUOTA, ERRCODE_INVALID_MEDIA, ERRCODE_QUOTA_EXHAUSTED, ERRCODE_WINDOW_CLOSED,
};
use crate::wechat_api::{ErrorClass, SendRequest};
use crate::window::{Allowance, RecordWindow, Refusal};

/// How often a record waiting on another attempt's live `sending` mark looks again.
const IN_PROGRESS_POLL: Duration = Duration::from_millis(100);

impl Actions {
    pub(super) async fn send(
        &self,
        env: &EnvelopeV1,
        action: &PlannedAction,
        request: &SendRequest,
        media_file: Option<&Path>,
        owner: &ClaimOwner,
        window: &RecordWindow<'_>,
    ) -> Result<Done, ProcessError> {
        let msgtype = request.message.msgtype();
        let lease = loop {
            let claim = self
                .ledger
                .claim(&action.idempotency_key, Some(&action.legacy_key), owner)
                .await?;
            match claim {
                Claim::Acquired(lease) => break lease,
                Claim::AlreadySent | Claim::AlreadyDone => {
                    self.count(msgtype, "duplicate");
                    return Ok(Done::AlreadySent);
                }
                Claim::Ambiguous => {
                    self.count(msgtype, "ambiguous");
                    return Ok(Done::DeadLetter(Reason::Ambiguous(
                        "an earlier attempt of this reply was interrupted mid-send; it may have \
                         been delivered, so it is not sent again"
                            .into(),
                    )));
                }
                // Another consumer (e.g. the previous owner of this partition, before a
                // rebalance) is sending this very reply: wait for its outcome.
                Claim::InProgress { deadline_ms } => {
                    let left = Duration::from_millis((deadline_ms - now_ms()).max(1) as u64);
                    // Nothing of ours is held here, so the run's end may simply end the wait.
                    tokio::select! {
                        _ = self.run_ended(owner) => return Err(ProcessError::Stopping),
                        _ = tokio::time::sleep(left.min(IN_PROGRESS_POLL)) => {}
                    }
                }
            }
        };
        let allowance = match window.take(&action.idempotency_key).await {
            Ok(Ok(allowance)) => allowance,
            Ok(Err(refusal)) => {
                self.ledger.release(&lease).await?;
                self.count(msgtype, "refused");
                return Ok(Done::DeadLetter(match refusal {
                    Refusal::WindowClosed => Reason::WindowClosed,
                    Refusal::QuotaExhausted => Reason::QuotaExhausted,
                }));
            }
            Err(e) => {
                let _ = self.ledger.release(&lease).await;
                return Err(e.into());
            }
        };
        self.deliver(env, request, media_file, &lease, &allowance, owner)
            .await
    }

    /// Steps 3–5 with the claim and the allowance held.
    async fn deliver(
        &self,
        env: &EnvelopeV1,
        request: &SendRequest,
        media_file: Option<&Path>,
        lease: &Lease,
        allowance: &Allowance,
        owner: &ClaimOwner,
    ) -> Result<Done, ProcessError> {
        let app = env.app.as_str();
        let msgtype = request.message.msgtype();
        let mut request = request.clone();
        let mut media_refreshed = false;
        if let Some(path) = media_file {
            let caller = self.caller();
            match self
                .holding(lease, self.media.media_id(&caller, app, path))
                .await
            {
                Ok(id) => set_media_id(&mut request, id),
                Err(e) => return self.media_failed(e, lease, allowance).await,
            }
        }
        let mut attempt = 1;
        loop {
            // Before every attempt the mark must still be ours, or someone else now owns this
            // reply. A retry always asks Redis (a failure and a backoff came before it); the
            // first attempt does too unless the claim itself is still fresh (no upload or slow
            // window took a third of the lease): then the claim was that check, one round trip
            // ago, and its deadline still has two thirds of the lease to run.
            if attempt > 1 || !lease.fresh(self.ledger.sending_lease()) {
                match self.ledger.renew(lease).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(self.superseded(msgtype)),
                    Err(e) => return self.abandon(lease, allowance, e.into()).await,
                }
            }
            let api = &self.api;
            let body = &request;
            let caller = self.caller();
            let call = caller.attempt(app, |token| async move { api.send(&token, body).await });
            let result = self.holding(lease, call).await;
            let error = match result {
                Ok(()) => {
                    self.count(msgtype, "ok");
                    // If this write fails the reply was delivered but not recorded; the record's
                    // retry then finds the `sending` mark and dead-letters as ambiguous.
                    if !self.ledger.mark_sent(lease).await? {
                        tracing::warn!(
                            "a reply was delivered after its ledger mark had been taken over; \
                             recorded as sent"
                        );
                    }
                    return Ok(Done::Sent);
                }
                Err(AttemptError::Token(e)) => {
                    self.count(msgtype, "token");
                    return self.token_failed(e, lease, allowance).await;
                }
                Err(AttemptError::Api(e)) => e,
            };
            let class = error.class(false);
            self.count(msgtype, class.label());
            match class {
                ErrorClass::Retryable if attempt < self.policy.max_attempts => {
                    let wait = self.policy.backoff(attempt, &error);
                    if self.wait_holding(lease, wait, owner).await.is_err() {
                        // The run ended with no call in flight: give the claim back, so the
                        // redelivery (after the restart, or at the new owner) sends the reply.
                        self.undo(lease, allowance).await?;
                        return Err(ProcessError::Stopping);
                    }
                    attempt += 1;
                }
                ErrorClass::Retryable => {
                    self.undo(lease, allowance).await?;
                    return Ok(Done::DeadLetter(Reason::RetriesExhausted {
                        errcode: error.errcode(),
                        detail: format!("{} attempts failed, last: {error}", attempt),
                    }));
                }
                ErrorClass::Token => {
                    self.undo(lease, allowance).await?;
                    let (errcode, errmsg) = wechat_parts(&error);
                    return Ok(Done::DeadLetter(Reason::TokenRejected { errcode, errmsg }));
                }
                // Never retried: the send API is not idempotent and this one may have arrived.
                ErrorClass::Ambiguous => {
                    self.ledger.mark_ambiguous(lease).await?;
                    return Ok(Done::DeadLetter(Reason::Ambiguous(error.to_string())));
                }
                ErrorClass::Final if error.errcode() == Some(ERRCODE_DAILY_QUOTA) => {
                    return self.daily_quota_spent(lease, allowance).await;
                }
                ErrorClass::Final => {
                    let errcode = error.errcode();
                    if errcode == Some(ERRCODE_INVALID_MEDIA) && !media_refreshed {
                        if let Some(path) = media_file {
                            // The cached upload expired early: upload again, send once more.
                            media_refreshed = true;
                            if let Err(e) = self.media.forget(app, path).await {
                                return self.media_failed(e, lease, allowance).await;
                            }
                            match self.media.media_id(&self.caller(), app, path).await {
                                Ok(id) => set_media_id(&mut request, id),
                                Err(e) => return self.media_failed(e, lease, allowance).await,
                            }
                            continue;
                        }
                    }
                    if matches!(
                        errcode,
                        Some(ERRCODE_WINDOW_CLOSED | ERRCODE_QUOTA_EXHAUSTED)
                    ) {
                        // WeChat knows better than our count: nothing more fits this window.
                        self.windows.exhaust(allowance).await?;
                        self.ledger.release(lease).await?;
                    } else {
                        self.undo(lease, allowance).await?;
                    }
                    let (errcode, errmsg) = wechat_parts(&error);
                    return Ok(Done::DeadLetter(Reason::WeChatRejected { errcode, errmsg }));
                }
            }
        }
    }

    /// Runs `work` with the mark held: the lease is renewed every third of its length meanwhile.
    /// `work` is never cut short (it may be a call in flight); a lost mark shows at the renewal
    /// before the next attempt.
    async fn holding<T>(&self, lease: &Lease, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let every = self.ledger.sending_lease() / 3;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticker.tick() => {
                    if let Err(e) = self.ledger.renew(lease).await {
                        tracing::warn!(error = %e, "renewing a send lease failed; trying again");
                    }
                }
            }
        }
    }

    /// A backoff with the mark held; ends early (Err) when the run ends.
    async fn wait_holding(
        &self,
        lease: &Lease,
        wait: Duration,
        owner: &ClaimOwner,
    ) -> Result<(), ()> {
        self.holding(lease, async move {
            tokio::select! {
                _ = self.run_ended(owner) => Err(()),
                _ = tokio::time::sleep(wait) => Ok(()),
            }
        })
        .await
    }

    /// Completes when this run of the record ends: the process stops, or `owner`'s run ends (its
    /// partition was revoked).
    async fn run_ended(&self, owner: &ClaimOwner) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = owner.ended() => {}
        }
    }

    /// Our mark was taken over (our lease ran out and another run claimed the reply, or an
    /// operator cleared it): send nothing more and leave the reply to the ledger's owner. The
    /// allowance is not refunded: the other run's take of this reply is the same take.
    fn superseded(&self, msgtype: &str) -> Done {
        self.count(msgtype, "superseded");
        Done::DeadLetter(Reason::Superseded(
            "the ledger mark of this reply was taken over by another attempt; this one sent \
             nothing more"
                .into(),
        ))
    }

    /// A transient failure before anything was sent: undo (best effort) and let the record be
    /// retried. If Redis is what failed the mark may stay, and the retry then dead-letters the
    /// reply as ambiguous: never twice.
    async fn abandon(
        &self,
        lease: &Lease,
        allowance: &Allowance,
        error: ProcessError,
    ) -> Result<Done, ProcessError> {
        tracing::warn!(error = %error, "reply interrupted before sending; undoing its claim");
        let _ = self.undo(lease, allowance).await;
        Err(error)
    }

    async fn undo(&self, lease: &Lease, allowance: &Allowance) -> Result<(), ProcessError> {
        self.ledger.release(lease).await?;
        self.windows.refund(allowance).await?;
        Ok(())
    }

    async fn token_failed(
        &self,
        error: TokenError,
        lease: &Lease,
        allowance: &Allowance,
    ) -> Result<Done, ProcessError> {
        match error {
            // The token endpoint's own daily quota counts for the app too.
            TokenError::Fetch(e) if e.errcode() == Some(ERRCODE_DAILY_QUOTA) => {
                self.daily_quota_spent(lease, allowance).await
            }
            // A refusal by the token endpoint (bad appid/secret, IP not allowed) will not heal
            // by retrying this record; dead-letter it so the failure is visible and redrivable.
            // On the token endpoint itself 40001 means a wrong AppSecret (docs/wechat-protocol.md §7), not a
            // stale token, so the token class is final here too.
            TokenError::Fetch(e)
                if matches!(e.class(true), ErrorClass::Final | ErrorClass::Token) =>
            {
                self.undo(lease, allowance).await?;
                Ok(Done::DeadLetter(Reason::TokenUnavailable(e.to_string())))
            }
            TokenError::UnknownApp(app) => {
                self.undo(lease, allowance).await?;
                Ok(Done::DeadLetter(Reason::UnknownApp(app)))
            }
            other => {
                self.abandon(lease, allowance, ProcessError::Token(other))
                    .await
            }
        }
    }

    /// 45009: nothing reached the user; the claim and the reply are given back, and the record
    /// waits for the app's quota (`crate::quota`), which sends it later.
    async fn daily_quota_spent(
        &self,
        lease: &Lease,
        allowance: &Allowance,
    ) -> Result<Done, ProcessError> {
        self.undo(lease, allowance).await?;
        Ok(Done::DailyQuotaSpent)
    }

    async fn media_failed(
        &self,
        error: MediaError,
        lease: &Lease,
        allowance: &Allowance,
    ) -> Result<Done, ProcessError> {
        match error {
            MediaError::Store(e) => self.abandon(lease, allowance, e.into()).await,
            MediaError::Upload(CallFailure::Token(e)) => {
                self.token_failed(e, lease, allowance).await
            }
            MediaError::Upload(CallFailure::Api { error, .. })
                if error.errcode() == Some(ERRCODE_DAILY_QUOTA) =>
            {
                self.daily_quota_spent(lease, allowance).await
            }
            other => {
                self.undo(lease, allowance).await?;
                Ok(Done::DeadLetter(Reason::MediaUnavailable(
                    other.to_string(),
                )))
            }
        }
    }

    fn count(&self, msgtype: &str, result: &str) {
        self.metrics
            .sends
            .with_label_values(&[msgtype, result])
            .inc();
    }
}

fn wechat_parts(error: &crate::wechat_api::ApiError) -> (i64, String) {
    match error {
        crate::wechat_api::ApiError::WeChat { errcode, errmsg } => (*errcode, errmsg.clone()),
        other => (0, other.to_string()),
    }
}
