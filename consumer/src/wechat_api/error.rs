//! What can go wrong with a WeChat API call, and what each failure means for the caller
//! (docs/wechat-protocol.md §6.5).
//!
//! The classification is the whole retry policy in one place:
//! - **Retryable**: WeChat said it did not do it (-1 system busy, 45011 minute quota: an answer
//!   of WeChat's own, with an errcode, refusing the call), a 429 rate limit, or the connection was
//!   never established. Bounded backoff with jitter.
//! - **Token**: 40001 / 40014 / 42001. The token is stale: compare-and-expire, refresh, retry once.
//! - **Ambiguous**: the request may have reached WeChat but no answer came back (timeout, a
//!   connection dropped mid-request, an unreadable 200, or an HTTP 5xx: a gateway's 502/504 often
//!   means the call went upstream and its answer was lost). For the send API, which is not
//!   idempotent (docs/wechat-protocol.md §6.2), retrying could deliver the reply twice, so such a send is never retried:
//!   it is dead-lettered as ambiguous. Idempotent calls (typing, upload, token) treat it as
//!   retryable.
//! - **Final**: everything else (45015 window closed, 45047 quota used, 40003 bad openid, 45002
//!   too long, 48001, ...). Not delivered; retrying cannot help; dead-letter with errcode/errmsg.
//!   One final errcode is not the record's fault: 45009, the app's daily API quota, pauses the
//!   whole app instead (`crate::quota`).

use std::fmt;

/// errcodes that mean the access token is stale or invalid.
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];
/// "system error": WeChat busy.
pub const ERRCODE_SYSTEM_BUSY: i64 = -1;
/// "api minute-quota reach limit, must slower, retry next minute".
pub const ERRCODE_MINUTE_QUOTA: i64 = 45011;
/// Outside the 48 h / 1 min reply window.
pub const ERRCODE_WINDOW_CLOSED: i64 = 45015;
/// "reach max api daily quota limit": the app's daily quota of that API is spent until WeChat
/// resets it the next day (or an operator's `clear_quota`). Final for the call; the app is
/// paused (`crate::quota`).
pub const ERRCODE_DAILY_QUOTA: i64 = 45009;
/// Reply quota of the window used up.
pub const ERRCODE_QUOTA_EXHAUSTED: i64 = 45047;
/// Invalid media id (temporary media expired after 3 days).
pub const ERRCODE_INVALID_MEDIA: i64 = 40007;

/// The causes keep their types (`source()`), so a log line and a test can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// WeChat answered with a non-zero errcode.
    #[error("errcode {errcode}: {errmsg}")]
    WeChat { errcode: i64, errmsg: String },
    /// An HTTP status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// No connection could be made: the request never left this process.
    #[error("cannot connect: {0}")]
    Connect(#[source] reqwest::Error),
    /// No answer within the configured timeout; the request may have been processed.
    #[error("timed out waiting for an answer")]
    Timeout,
    /// The connection failed after the request was (possibly) sent.
    #[error("transport failure: {0}")]
    Transport(#[source] reqwest::Error),
    /// A 200 answer that is not the expected JSON.
    #[error("unreadable answer: {0}")]
    Decode(#[source] DecodeError),
    /// The request could not be built; nothing was sent.
    #[error("cannot build the request: {0}")]
    Request(#[source] reqwest::Error),
}

/// Why a 200 answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body did not arrive whole.
    #[error(transparent)]
    Body(reqwest::Error),
    /// The body is not the JSON of this call's answer.
    #[error(transparent)]
    Json(serde_json::Error),
    /// The JSON lacks what a successful answer carries.
    #[error("the answer has no {0}")]
    Missing(&'static str),
}

/// What the caller should do about an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    Token,
    Ambiguous,
    Final,
}

impl ErrorClass {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Token => "token",
            ErrorClass::Ambiguous => "ambiguous",
            ErrorClass::Final => "final",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl ApiError {
    /// The class of this failure for a call that is (`idempotent`) or is not safe to repeat.
    pub fn class(&self, idempotent: bool) -> ErrorClass {
        match self {
            ApiError::WeChat { errcode, .. } if TOKEN_ERRCODES.contains(errcode) => {
                ErrorClass::Token
            }
            ApiError::WeChat { errcode, .. }
                if *errcode == ERRCODE_SYSTEM_BUSY || *errcode == ERRCODE_MINUTE_QUOTA =>
            {
                ErrorClass::Retryable
            }
            ApiError::WeChat { .. } => ErrorClass::Final,
            // A 5xx comes from whatever is in front of WeChat's handler (a proxy, a gateway): a 502
            // or 504 usually means the request went upstream and the answer was lost, and nothing
            // tells the other 5xx apart. Safe to repeat only for idempotent calls.
            ApiError::Status(status) if *status >= 500 => {
                if idempotent {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Ambiguous
                }
            }
            // 429 is a rate limit in front of the API: nothing was done.
            ApiError::Status(429) => ErrorClass::Retryable,
            ApiError::Status(_) => ErrorClass::Final,
            ApiError::Connect(_) => ErrorClass::Retryable,
            ApiError::Request(_) => ErrorClass::Final,
            ApiError::Timeout | ApiError::Transport(_) | ApiError::Decode(_) => {
                if idempotent {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Ambiguous
                }
            }
        }
    }

    /// The errcode, when WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// Maps a reqwest failure; `is_connect` is the only case where nothing was sent. The URL is
    /// stripped first: its query holds the access token, which must never reach a log line.
    pub(crate) fn from_reqwest(e: reqwest::Error) -> ApiError {
        let e = e.without_url();
        if e.is_timeout() {
            ApiError::Timeout
        } else if e.is_connect() {
            ApiError::Connect(e)
        } else if e.is_decode() {
            ApiError::Decode(DecodeError::Body(e))
        } else if e.is_builder() {
            ApiError::Request(e)
        } else {
            ApiError::Transport(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wechat(errcode: i64) -> ApiError {
        ApiError::WeChat {
            errcode,
            errmsg: "x".into(),
        }
    }

    #[test]
    fn classes_follow_the_protocol_table() {
        for code in [40001, 40014, 42001] {
            assert_eq!(wechat(code).class(false), ErrorClass::Token, "{code}");
        }
        for code in [-1, 45011] {
            assert_eq!(wechat(code).class(false), ErrorClass::Retryable, "{code}");
        }
        for code in [45015, 45047, 40003, 45002, 48001, 40007, 12345] {
            assert_eq!(wechat(code).class(false), ErrorClass::Final, "{code}");
        }
        assert_eq!(ApiError::Status(502).class(true), ErrorClass::Retryable);
        assert_eq!(ApiError::Status(404).class(false), ErrorClass::Final);
        assert_eq!(
            ApiError::Decode(DecodeError::Missing("media_id")).class(true),
            ErrorClass::Retryable
        );
    }

    #[test]
    fn a_send_without_an_answer_is_ambiguous_never_retried() {
        assert_eq!(ApiError::Timeout.class(false), ErrorClass::Ambiguous);
        assert_eq!(
            ApiError::Decode(DecodeError::Missing("media_id")).class(false),
            ErrorClass::Ambiguous
        );
        assert_eq!(ApiError::Timeout.class(true), ErrorClass::Retryable);
        for status in [500, 502, 503, 504] {
            assert_eq!(ApiError::Status(status).class(false), ErrorClass::Ambiguous);
        }
    }

    #[tokio::test]
    async fn a_refused_connection_keeps_its_cause_and_drops_the_url() {
        // Port 9 (discard) is closed on the test machines: the connection is refused.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:9/cgi-bin/message/custom/send?access_token=SECRET")
            .send()
            .await
            .expect_err("nothing listens there");
        let error = ApiError::from_reqwest(e);
        assert!(matches!(error, ApiError::Connect(_)), "{error:?}");
        assert_eq!(error.class(false), ErrorClass::Retryable);
        let cause = std::error::Error::source(&error).expect("a typed cause");
        assert!(cause.is::<reqwest::Error>(), "{cause:?}");
        assert!(!format!("{error} {error:?}").contains("SECRET"));
    }
}
