//! Request bodies of the customer-service API, exactly as WeChat expects them
//! (docs/wechat-protocol.md §6.2, §6.4), and the answers it gives.
//!
//! These types serialise to the bytes that go on the wire, so `consumer explain` prints the same
//! JSON the live consumer sends.

use serde::{Deserialize, Serialize};

/// Body of `cgi-bin/message/custom/send`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendRequest {
    pub touser: String,
    #[serde(flatten)]
    pub message: OutgoingMessage,
}

/// One customer-service message; the `msgtype` tag sits beside the object named after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum OutgoingMessage {
    Text {
        text: TextBody,
    },
    Image {
        image: ImageBody,
    },
    Link {
        link: LinkBody,
    },
    #[serde(rename = "miniprogrampage")]
    MiniProgramPage {
        miniprogrampage: CardBody,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextBody {
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageBody {
    pub media_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkBody {
    pub title: String,
    pub description: String,
    pub url: String,
    pub thumb_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardBody {
    pub title: String,
    pub pagepath: String,
    pub thumb_media_id: String,
}

impl OutgoingMessage {
    /// WeChat's `msgtype`, also the bounded `msgtype` metric label.
    pub fn msgtype(&self) -> &'static str {
        match self {
            OutgoingMessage::Text { .. } => "text",
            OutgoingMessage::Image { .. } => "image",
            OutgoingMessage::Link { .. } => "link",
            OutgoingMessage::MiniProgramPage { .. } => "miniprogrampage",
        }
    }
}

/// Body of `cgi-bin/message/custom/typing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypingRequest {
    pub touser: String,
    pub command: TypingCommand,
}

/// The typing indicator's two commands, spelled as WeChat spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TypingCommand {
    #[default]
    Typing,
    CancelTyping,
}

/// Body of `cgi-bin/stable_token`. `force_refresh` is always false: a forced refresh invalidates
/// every other holder's token at once (docs/wechat-protocol.md §7), so it is never done automatically.
#[derive(Serialize)]
pub(crate) struct StableTokenRequest<'a> {
    pub grant_type: &'static str,
    pub appid: &'a str,
    pub secret: &'a str,
    pub force_refresh: bool,
}

/// The common answer: `errcode` 0 (or absent) is success.
#[derive(Debug, Deserialize)]
pub(crate) struct Status {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

/// Answer of both token endpoints.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// Answer of `cgi-bin/media/upload`.
#[derive(Debug, Deserialize)]
pub(crate) struct UploadAnswer {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    pub media_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_the_documented_shapes() {
        let text = SendRequest {
            touser: "OPENID".into(),
            message: OutgoingMessage::Text {
                text: TextBody {
                    content: "Hello World".into(),
                },
            },
        };
        assert_eq!(
            serde_json::to_string(&text).expect("json"),
            r#"{"touser":"OPENID","msgtype":"text","text":{"content":"Hello World"}}"#
        );
        let card = SendRequest {
            touser: "OPENID".into(),
            message: OutgoingMessage::MiniProgramPage {
                miniprogrampage: CardBody {
                    title: "title".into(),
                    pagepath: "pages/index/index?foo=bar".into(),
                    thumb_media_id: "MEDIA_ID".into(),
                },
            },
        };
        assert_eq!(
            serde_json::to_string(&card).expect("json"),
            r#"{"touser":"OPENID","msgtype":"miniprogrampage","miniprogrampage":{"title":"title","pagepath":"pages/index/index?foo=bar","thumb_media_id":"MEDIA_ID"}}"#
        );
        let typing = TypingRequest {
            touser: "OPENID".into(),
            command: TypingCommand::CancelTyping,
        };
        assert_eq!(
            serde_json::to_string(&typing).expect("json"),
            r#"{"touser":"OPENID","command":"CancelTyping"}"#
        );
    }
}
