//! The deduplication key of a push.
//!
//! WeChat re-sends a push it got no timely answer for (at least 3 more times, 5 s apart), with the
//! same body but not necessarily the same query `timestamp`/`nonce`, so the key comes from the
//! message itself (docs/wechat-protocol.md §5):
//!
//! - user messages carry a unique `MsgId`: `"{app}:msg:{MsgId}"`;
//! - events have no id, so `FromUserName` + `CreateTime` + `Event` identify them:
//!   `"{app}:evt:{openid}:{CreateTime}:{Event}"` (`Event` empty when absent). `CreateTime` alone
//!   is not enough: one user action can raise two different events in the same second.
//!
//! The `app` prefix keeps Mini Programs apart in a shared Redis; it is the configured app name,
//! which must not contain `:` (ids and event names never do), so keys cannot collide across parts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// A push's deduplication key; also the base of reply idempotency keys downstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DedupKey(String);

impl DedupKey {
    /// The key for `msg` received on `app`.
    pub fn for_message(app: &str, msg: &Message) -> DedupKey {
        DedupKey(match msg.msg_id() {
            Some(msg_id) => format!("{app}:msg:{msg_id}"),
            None => format!(
                "{app}:evt:{}:{}:{}",
                msg.from_user_name,
                msg.create_time,
                msg.event().unwrap_or_default()
            ),
        })
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::{MsgId, OpenId};
    use crate::message::MessageBody;

    fn message(body: MessageBody) -> Message {
        Message {
            to_user_name: "gh_97417a04a28d".into(),
            from_user_name: OpenId::new("o9AgO5Kd5ggOC-bXrbNODIiE3bGY"),
            create_time: 1714112445,
            body,
        }
    }

    #[test]
    fn messages_key_on_msg_id() {
        let msg = message(MessageBody::Text {
            msg_id: MsgId::new("22876340532172986"),
            content: "你好".into(),
        });
        assert_eq!(
            DedupKey::for_message("shop", &msg).as_str(),
            "shop:msg:22876340532172986"
        );
    }

    #[test]
    fn events_key_on_sender_time_and_event() {
        let enter = message(MessageBody::EnterSession {
            session_from: "wxapp".into(),
        });
        assert_eq!(
            DedupKey::for_message("shop", &enter).to_string(),
            "shop:evt:o9AgO5Kd5ggOC-bXrbNODIiE3bGY:1714112445:user_enter_tempsession"
        );
        let no_event = message(MessageBody::Other {
            msg_type: "event".into(),
            event: None,
            msg_id: None,
            fields: BTreeMap::new(),
        });
        assert_eq!(
            DedupKey::for_message("shop", &no_event).as_str(),
            "shop:evt:o9AgO5Kd5ggOC-bXrbNODIiE3bGY:1714112445:"
        );
    }

    #[test]
    fn serializes_as_plain_string() {
        let key = DedupKey("a:msg:1".into());
        let json = serde_json::to_string(&key).expect("serialize");
        assert_eq!(json, r#""a:msg:1""#);
        assert_eq!(serde_json::from_str::<DedupKey>(&json).expect("parse"), key);
    }
}
