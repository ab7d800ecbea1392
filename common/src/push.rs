//! Authenticating a push: verification is a type.
//!
//! Raw query + body go into [`verify`]; the only way to obtain a [`VerifiedPush`] is a signature
//! that checked out, and the only way to reach the message inside is [`VerifiedPush::open`]. So
//! code that decrypts or parses has, by construction, already verified.
//!
//! Modes (docs/wechat-protocol.md §2), told apart by the query:
//! - `encrypt_type=aes`: `msg_signature` over token, timestamp, nonce and the body's `Encrypt`
//!   text is checked before anything in the body is used; the body is [`Mode::Safe`], or
//!   [`Mode::Compatible`] when it also carries a plaintext copy (a `MsgType` beside `Encrypt`).
//!   The plaintext copy is unauthenticated and is never used: opening always decrypts.
//! - otherwise [`Mode::Plaintext`]: `signature` over token, timestamp and nonce. It does not cover
//!   the body, so a plaintext push is only as trustworthy as the transport.
//!
//! Policy stays with the caller: whether plaintext is acceptable (an encryption-required app
//! rejects [`Mode::Plaintext`]) and whether [`VerifiedPush::timestamp`] is fresh enough.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Format};
use crate::crypto::{self, AesKey, CryptoError};
use crate::message::Message;
use crate::signature;

/// How a push was protected on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Body in clear; only the query is signed.
    Plaintext,
    /// Body encrypted, with an unauthenticated plaintext copy beside the ciphertext.
    Compatible,
    /// Body encrypted.
    Safe,
}

/// The query string of a push or of the URL-verification GET, as WeChat sends it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PushQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub openid: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
    pub echostr: Option<String>,
}

/// One Mini Program's secrets, as needed to verify and open its pushes.
#[derive(Clone, Copy)]
pub struct AppCredentials<'a> {
    /// The push Token from the console.
    pub token: &'a str,
    /// The AES key; `None` when the app is configured for plaintext only.
    pub aes_key: Option<&'a AesKey>,
    /// The appid every ciphertext must carry.
    pub appid: &'a str,
}

impl fmt::Debug for AppCredentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredentials")
            .field("token", &"<redacted>")
            .field("aes_key", &self.aes_key)
            .field("appid", &self.appid)
            .finish()
    }
}

/// Why a push (or a URL verification) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A query parameter the mode requires is absent.
    #[error("missing query parameter `{0}`")]
    MissingParam(&'static str),
    /// The signature does not match: not from WeChat, or the token is wrong.
    #[error("signature does not match")]
    BadSignature,
    /// The push is encrypted but the app has no EncodingAESKey configured.
    #[error("encrypted push but no EncodingAESKey is configured")]
    NoKey,
    /// The encrypted push's outer body is unreadable or has no `Encrypt`.
    #[error("malformed push body: {0}")]
    Malformed(CodecError),
    /// `timestamp` is not a decimal integer.
    #[error("timestamp is not a decimal integer")]
    BadTimestamp,
    /// The ciphertext did not decrypt to a message for this app.
    #[error("cannot decrypt push: {0}")]
    Crypto(CryptoError),
}

impl PushError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PushError::MissingParam(_) => "missing_param",
            PushError::BadSignature => "bad_signature",
            PushError::NoKey => "no_key",
            PushError::Malformed(_) => "malformed",
            PushError::BadTimestamp => "bad_timestamp",
            PushError::Crypto(_) => "crypto",
        }
    }
}

/// Checks WeChat's URL-verification GET and returns the `echostr` to answer with, verbatim.
pub fn verify_url<'q>(query: &'q PushQuery, token: &str) -> Result<&'q str, PushError> {
    verify_url_any(query, &[token]).map(|(echostr, _)| echostr)
}

/// [`verify_url`] against several live tokens (a rotation in progress): the `echostr` and the
/// index in `tokens` of the one that signed it.
pub fn verify_url_any<'q>(
    query: &'q PushQuery,
    tokens: &[&str],
) -> Result<(&'q str, usize), PushError> {
    let signature = required(&query.signature, "signature")?;
    let timestamp = required(&query.timestamp, "timestamp")?;
    let nonce = required(&query.nonce, "nonce")?;
    let echostr = required(&query.echostr, "echostr")?;
    let slot = matching_token(tokens, |token| [token, timestamp, nonce], signature)
        .ok_or(PushError::BadSignature)?;
    parse_timestamp(timestamp)?;
    Ok((echostr, slot))
}

/// The index of the first of `tokens` whose signature over `parts(token)` is `signature`. Every
/// token is checked (each in constant time), so the time taken does not tell which one matched.
fn matching_token<'a, const N: usize>(
    tokens: &[&'a str],
    parts: impl Fn(&'a str) -> [&'a str; N],
    signature: &str,
) -> Option<usize> {
    let mut matched = None;
    for (slot, token) in tokens.iter().enumerate() {
        if signature::verify(&parts(token), signature) && matched.is_none() {
            matched = Some(slot);
        }
    }
    matched
}

/// Authenticates a push. See the module docs for what each mode checks.
pub fn verify(
    query: &PushQuery,
    body: &[u8],
    format: Format,
    creds: &AppCredentials<'_>,
) -> Result<VerifiedPush, PushError> {
    verify_any(query, body, format, &[creds.token], creds.aes_key.is_some())
        .map(|(verified, _)| verified)
}

/// [`verify`] against several live tokens (a rotation in progress): the verified push and the
/// index in `tokens` of the one that signed it. `has_key` says whether the app can decrypt at
/// all (an encrypted push to an app without a key is [`PushError::NoKey`]).
pub fn verify_any(
    query: &PushQuery,
    body: &[u8],
    format: Format,
    tokens: &[&str],
    has_key: bool,
) -> Result<(VerifiedPush, usize), PushError> {
    let timestamp_text = required(&query.timestamp, "timestamp")?;
    let nonce = required(&query.nonce, "nonce")?;
    let encrypted = query
        .encrypt_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("aes"));

    let (mode, slot, content) = if encrypted {
        let msg_signature = required(&query.msg_signature, "msg_signature")?;
        let mut outer = codec::read_fields(format, body).map_err(PushError::Malformed)?;
        let encrypt = outer
            .take_text("Encrypt")
            .map_err(PushError::Malformed)?
            .ok_or(PushError::Malformed(CodecError::MissingField("Encrypt")))?;
        let slot = matching_token(
            tokens,
            |token| [token, timestamp_text, nonce, encrypt.as_str()],
            msg_signature,
        )
        .ok_or(PushError::BadSignature)?;
        if !has_key {
            return Err(PushError::NoKey);
        }
        let mode = if outer.contains("MsgType") {
            Mode::Compatible
        } else {
            Mode::Safe
        };
        (mode, slot, Content::Encrypted(encrypt))
    } else {
        let signature = required(&query.signature, "signature")?;
        let slot = matching_token(tokens, |token| [token, timestamp_text, nonce], signature)
            .ok_or(PushError::BadSignature)?;
        (Mode::Plaintext, slot, Content::Plain(body.to_vec()))
    };

    let verified = VerifiedPush {
        mode,
        format,
        timestamp: parse_timestamp(timestamp_text)?,
        content,
    };
    Ok((verified, slot))
}

/// A push whose signature checked out; its content is still sealed.
pub struct VerifiedPush {
    mode: Mode,
    format: Format,
    timestamp: i64,
    content: Content,
}

enum Content {
    /// The `Encrypt` text of a safe or compatible push.
    Encrypted(String),
    /// The body of a plaintext push.
    Plain(Vec<u8>),
}

impl VerifiedPush {
    /// How the push was protected.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The configured body format the push was read with.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The signed query `timestamp` (unix seconds), for the caller's freshness check.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// Decrypts (safe and compatible mode) or releases (plaintext) the message payload.
    pub fn open(self, creds: &AppCredentials<'_>) -> Result<OpenedPush, PushError> {
        let keys: Vec<&AesKey> = creds.aes_key.into_iter().collect();
        self.open_any(&keys, creds.appid).map(|(opened, _)| opened)
    }

    /// [`VerifiedPush::open`] with several live keys (a rotation in progress), tried in order:
    /// the payload and the index in `keys` of the key that decrypted it (`None` for plaintext).
    /// When none does, the error is the first key's.
    pub fn open_any(
        self,
        keys: &[&AesKey],
        appid: &str,
    ) -> Result<(OpenedPush, Option<usize>), PushError> {
        let (payload, slot) = match self.content {
            Content::Plain(body) => (body, None),
            Content::Encrypted(encrypt) => {
                let mut first_error = None;
                let mut opened = None;
                for (slot, key) in keys.iter().enumerate() {
                    match crypto::decrypt(key, &encrypt, appid) {
                        Ok(payload) => {
                            opened = Some((payload, Some(slot)));
                            break;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match (opened, first_error) {
                    (Some(opened), _) => opened,
                    (None, Some(e)) => return Err(PushError::Crypto(e)),
                    (None, None) => return Err(PushError::NoKey),
                }
            }
        };
        let opened = OpenedPush {
            mode: self.mode,
            format: self.format,
            payload,
        };
        Ok((opened, slot))
    }
}

impl fmt::Debug for VerifiedPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let content_len = match &self.content {
            Content::Encrypted(text) => text.len(),
            Content::Plain(body) => body.len(),
        };
        f.debug_struct("VerifiedPush")
            .field("mode", &self.mode)
            .field("format", &self.format)
            .field("timestamp", &self.timestamp)
            .field("content_len", &content_len)
            .finish()
    }
}

/// A verified push's message payload, in clear.
#[derive(Clone)]
pub struct OpenedPush {
    pub mode: Mode,
    pub format: Format,
    /// The exact message bytes: the decrypted message, or the plaintext body.
    pub payload: Vec<u8>,
}

impl OpenedPush {
    /// Parses the payload as a [`Message`] in the push's format.
    pub fn parse(&self) -> Result<Message, CodecError> {
        codec::parse(self.format, &self.payload)
    }
}

/// Shows the payload's size, not its content: payloads are user messages.
impl fmt::Debug for OpenedPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedPush")
            .field("mode", &self.mode)
            .field("format", &self.format)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

fn required<'q>(value: &'q Option<String>, name: &'static str) -> Result<&'q str, PushError> {
    value.as_deref().ok_or(PushError::MissingParam(name))
}

/// Unix seconds as WeChat writes them: ASCII digits only (no sign, no blanks), fitting an `i64`.
fn parse_timestamp(text: &str) -> Result<i64, PushError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PushError::BadTimestamp);
    }
    text.parse().map_err(|_| PushError::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_plain_decimal() {
        assert_eq!(parse_timestamp("1714112445"), Ok(1714112445));
        for bad in ["", "-1", "+1", " 1", "1.0", "99999999999999999999", "0x10"] {
            assert_eq!(
                parse_timestamp(bad),
                Err(PushError::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_debug_hides_the_token() {
        let creds = AppCredentials {
            token: "sekrit-token",
            aes_key: None,
            appid: "wx1",
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("wx1"));
    }
}
