//! The passive HTTP answer to a push, when it is more than `success`.
//!
//! For Mini Programs the only non-trivial answer is `transfer_customer_service` (docs/wechat-protocol.md §5),
//! which hands the user message to the web customer-service tool. In safe and compatible mode it
//! must be sealed in an encrypted envelope (docs/wechat-protocol.md §4.4); `success` and an empty body never are.
//!
//! Both are written in the push's configured format. JSON mode answering in JSON is community
//! evidence, not documented (**UNCONFIRMED** upstream); it is what the format setting implies.

use crate::codec::{self, Format};
use crate::crypto::{self, AesKey};
use crate::message::Message;
use crate::signature;

/// The `transfer_customer_service` packet for `msg`, with To/From swapped and `CreateTime = now`.
///
/// Only for user messages ([`Message::is_user_message`]): WeChat transfers a user message, never
/// an event. In safe or compatible mode, seal the result with [`encrypted_reply`].
pub fn transfer_customer_service(msg: &Message, now: i64, format: Format) -> String {
    codec::write_object(format, |sink| {
        sink.string("ToUserName", msg.from_user_name.as_str());
        sink.string("FromUserName", &msg.to_user_name);
        sink.integer("CreateTime", now);
        sink.string("MsgType", "transfer_customer_service");
    })
}

/// Seals a reply: `Encrypt`, `MsgSignature`, `TimeStamp`, `Nonce`, in PascalCase as on the
/// official page. `timestamp` is the replier's current time; `nonce` may be the push's own.
pub fn encrypted_reply(
    key: &AesKey,
    token: &str,
    appid: &str,
    plaintext: &str,
    timestamp: i64,
    nonce: &str,
    format: Format,
) -> String {
    encrypted_reply_with_random(
        key,
        token,
        appid,
        plaintext,
        timestamp,
        nonce,
        format,
        &rand::random(),
    )
}

/// [`encrypted_reply`] with caller-chosen random bytes, for reproducing published test vectors.
#[expect(
    clippy::too_many_arguments,
    reason = "the arguments of encrypted_reply plus the fixed random bytes"
)]
pub fn encrypted_reply_with_random(
    key: &AesKey,
    token: &str,
    appid: &str,
    plaintext: &str,
    timestamp: i64,
    nonce: &str,
    format: Format,
    random: &[u8; 16],
) -> String {
    let encrypt = crypto::encrypt_with_random(key, plaintext.as_bytes(), appid, random);
    let msg_signature = signature::sign(&[token, &timestamp.to_string(), nonce, &encrypt]);
    codec::write_object(format, |sink| {
        sink.string("Encrypt", &encrypt);
        sink.string("MsgSignature", &msg_signature);
        sink.integer("TimeStamp", timestamp);
        sink.string("Nonce", nonce);
    })
}
