//! The decoded push: [`Message`] and its [`MessageBody`].
//!
//! A message is what a user (or the platform) sent, independent of the wire format it arrived in.
//! The customer-service kinds the pipeline routes on get typed variants; every other push — platform
//! events, message types WeChat adds later, a known type missing one of its fields — is kept whole
//! in [`MessageBody::Other`], so nothing is lost or rejected for being unfamiliar.
//!
//! Two serialised forms exist and must not be confused:
//! - WeChat's PascalCase XML/JSON, read and written by [`crate::codec`];
//! - this crate's own snake_case serde form (derived here), used inside the Kafka
//!   [`crate::envelope`]. `MessageBody` is internally tagged by `"kind"`, e.g.
//!   `{"kind":"text","msg_id":"123","content":"hi"}`. It is part of the envelope contract: change
//!   it only together with a new envelope version.
//!
//! Invariant of `Other.fields`: it never holds the common fields (`ToUserName`, `FromUserName`,
//! `CreateTime`, `MsgType`, `Event`, `MsgId`), which live in their own members.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{MsgId, OpenId};

pub(crate) const MSG_TYPE_TEXT: &str = "text";
pub(crate) const MSG_TYPE_IMAGE: &str = "image";
pub(crate) const MSG_TYPE_MINIPROGRAMPAGE: &str = "miniprogrampage";
pub(crate) const MSG_TYPE_EVENT: &str = "event";
pub(crate) const EVENT_USER_ENTER_TEMPSESSION: &str = "user_enter_tempsession";

/// One push from WeChat, decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The Mini Program's original id (`gh_…`).
    pub to_user_name: String,
    /// The sender's openid.
    pub from_user_name: OpenId,
    /// Unix seconds, as stamped by WeChat.
    pub create_time: i64,
    /// What was sent.
    pub body: MessageBody,
}

/// The type-specific part of a [`Message`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageBody {
    /// `MsgType=text`: text typed by the user.
    Text { msg_id: MsgId, content: String },
    /// `MsgType=image`: an image; `media_id` is a temporary media id valid for 3 days.
    Image {
        msg_id: MsgId,
        pic_url: String,
        media_id: String,
    },
    /// `MsgType=miniprogrampage`: the user shared a Mini Program card.
    MiniProgramPage {
        msg_id: MsgId,
        title: String,
        app_id: String,
        page_path: String,
        thumb_url: String,
        thumb_media_id: String,
    },
    /// `MsgType=event`, `Event=user_enter_tempsession`: the user opened the customer-service session.
    EnterSession { session_from: String },
    /// Anything else, with every remaining field kept as text (nested XML or JSON as its raw text).
    Other {
        msg_type: String,
        event: Option<String>,
        msg_id: Option<MsgId>,
        fields: BTreeMap<String, String>,
    },
}

impl Message {
    /// WeChat's `MsgType` of this message.
    pub fn msg_type(&self) -> &str {
        match &self.body {
            MessageBody::Text { .. } => MSG_TYPE_TEXT,
            MessageBody::Image { .. } => MSG_TYPE_IMAGE,
            MessageBody::MiniProgramPage { .. } => MSG_TYPE_MINIPROGRAMPAGE,
            MessageBody::EnterSession { .. } => MSG_TYPE_EVENT,
            MessageBody::Other { msg_type, .. } => msg_type,
        }
    }

    /// WeChat's `Event`, when the push carries one.
    pub fn event(&self) -> Option<&str> {
        match &self.body {
            MessageBody::EnterSession { .. } => Some(EVENT_USER_ENTER_TEMPSESSION),
            MessageBody::Other { event, .. } => event.as_deref(),
            MessageBody::Text { .. }
            | MessageBody::Image { .. }
            | MessageBody::MiniProgramPage { .. } => None,
        }
    }

    /// WeChat's `MsgId`, when the push carries one.
    pub fn msg_id(&self) -> Option<&MsgId> {
        match &self.body {
            MessageBody::Text { msg_id, .. }
            | MessageBody::Image { msg_id, .. }
            | MessageBody::MiniProgramPage { msg_id, .. } => Some(msg_id),
            MessageBody::Other { msg_id, .. } => msg_id.as_ref(),
            MessageBody::EnterSession { .. } => None,
        }
    }

    /// Whether a user wrote this (it has a `MsgId` and is not an event).
    ///
    /// Only user messages open the 48-hour reply window and may be handed to
    /// `transfer_customer_service`; events never may.
    pub fn is_user_message(&self) -> bool {
        self.msg_id().is_some() && self.msg_type() != MSG_TYPE_EVENT
    }

    /// The text of a `text` message.
    pub fn text(&self) -> Option<&str> {
        match &self.body {
            MessageBody::Text { content, .. } => Some(content),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: MessageBody) -> Message {
        Message {
            to_user_name: "gh_97417a04a28d".into(),
            from_user_name: OpenId::new("o9AgO5Kd5ggOC-bXrbNODIiE3bGY"),
            create_time: 1482048670,
            body,
        }
    }

    #[test]
    fn accessors_on_text() {
        let msg = message(MessageBody::Text {
            msg_id: MsgId::new("1234567890123456"),
            content: "this is a test".into(),
        });
        assert_eq!(msg.msg_type(), "text");
        assert_eq!(msg.event(), None);
        assert_eq!(msg.msg_id().map(MsgId::as_str), Some("1234567890123456"));
        assert!(msg.is_user_message());
        assert_eq!(msg.text(), Some("this is a test"));
    }

    #[test]
    fn accessors_on_events() {
        let enter = message(MessageBody::EnterSession {
            session_from: "wxapp".into(),
        });
        assert_eq!(enter.msg_type(), "event");
        assert_eq!(enter.event(), Some("user_enter_tempsession"));
        assert!(!enter.is_user_message());
        assert_eq!(enter.text(), None);

        let event_with_id = message(MessageBody::Other {
            msg_type: "event".into(),
            event: Some("subscribe_msg_sent_event".into()),
            msg_id: Some(MsgId::new("1")),
            fields: BTreeMap::new(),
        });
        assert!(
            !event_with_id.is_user_message(),
            "an event is never a user message, even with an id"
        );
    }

    #[test]
    fn own_serde_form_is_tagged_snake_case() {
        let msg = message(MessageBody::MiniProgramPage {
            msg_id: MsgId::new("7"),
            title: "t".into(),
            app_id: "wx1".into(),
            page_path: "p".into(),
            thumb_url: String::new(),
            thumb_media_id: String::new(),
        });
        let value = serde_json::to_value(&msg).expect("serialize");
        assert_eq!(value["from_user_name"], "o9AgO5Kd5ggOC-bXrbNODIiE3bGY");
        assert_eq!(value["body"]["kind"], "mini_program_page");
        assert_eq!(value["body"]["msg_id"], "7");
        let back: Message = serde_json::from_value(value).expect("deserialize");
        assert_eq!(back, msg);
    }
}
