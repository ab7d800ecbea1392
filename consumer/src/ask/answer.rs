//! What a backend answered, in the one shape every backend's answer is turned into: the replies
//! to send and whether to hand the user to a human. This is what is kept in Redis between the
//! backend's answer and the sends (see [`super::store`]), so a redelivered record sends exactly
//! these replies. Also the limit on text: an answer longer than one WeChat text message is split
//! into a few, and the rest cut ([`Answer::fit_text`]).

use serde::{Deserialize, Serialize};

use crate::wechat_api::body::{CardBody, ImageBody, LinkBody, TextBody};
use crate::wechat_api::OutgoingMessage;

/// What made an answer unusable (or, for a rule naming a backend that is not configured, why
/// there was none to ask).
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("not a bot answer: {0}")]
    NotBotJson(#[source] serde_json::Error),
    #[error("not a chat-completions answer: {0}")]
    NotChatJson(#[source] serde_json::Error),
    #[error("reply {0} is empty or lacks a required field")]
    BadReply(usize),
    #[error("no choice with content")]
    NoContent,
    #[error("the backend is not configured")]
    NotConfigured,
}

/// One reply, as the HTTP bot writes it (docs/ask.md) and as it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Text {
        content: String,
    },
    Image {
        media_id: String,
    },
    Link {
        title: String,
        #[serde(default)]
        description: String,
        url: String,
        #[serde(default)]
        thumb_url: String,
    },
    #[serde(rename = "miniprogrampage")]
    MiniProgramPage {
        title: String,
        pagepath: String,
        thumb_media_id: String,
    },
}

impl Reply {
    pub fn message(&self) -> OutgoingMessage {
        match self.clone() {
            Reply::Text { content } => OutgoingMessage::Text {
                text: TextBody { content },
            },
            Reply::Image { media_id } => OutgoingMessage::Image {
                image: ImageBody { media_id },
            },
            Reply::Link {
                title,
                description,
                url,
                thumb_url,
            } => OutgoingMessage::Link {
                link: LinkBody {
                    title,
                    description,
                    url,
                    thumb_url,
                },
            },
            Reply::MiniProgramPage {
                title,
                pagepath,
                thumb_media_id,
            } => OutgoingMessage::MiniProgramPage {
                miniprogrampage: CardBody {
                    title,
                    pagepath,
                    thumb_media_id,
                },
            },
        }
    }

    /// What the conversation memory keeps of this reply.
    pub fn as_memory(&self) -> String {
        match self {
            Reply::Text { content } => content.clone(),
            Reply::Image { .. } => "[image]".into(),
            Reply::Link { title, url, .. } => format!("[link] {title} {url}"),
            Reply::MiniProgramPage { title, .. } => format!("[mini program card] {title}"),
        }
    }

    /// Whether WeChat could take it: no empty text, media id, title or address.
    fn usable(&self) -> bool {
        match self {
            Reply::Text { content } => !content.trim().is_empty(),
            Reply::Image { media_id } => !media_id.is_empty(),
            Reply::Link { title, url, .. } => !title.is_empty() && !url.is_empty(),
            Reply::MiniProgramPage {
                title,
                pagepath,
                thumb_media_id,
            } => !title.is_empty() && !pagepath.is_empty() && !thumb_media_id.is_empty(),
        }
    }
}

/// The HTTP bot's answer body, version 1 (docs/ask.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotAnswer {
    #[serde(default)]
    pub replies: Vec<Reply>,
    #[serde(default)]
    pub handoff: bool,
    #[serde(default)]
    pub handoff_note: Option<String>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Backend,
    Fallback,
}

/// The decided answer of one ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub source: Source,
    pub replies: Vec<Reply>,
    pub handoff: bool,
    #[serde(default)]
    pub handoff_note: Option<String>,
}

impl Answer {
    /// Whether the answer does anything (a reply or a hand-off).
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty() && !self.handoff
    }

    /// Checks a bot's answer: `Err` names what is unusable in it.
    pub fn from_bot(bot: BotAnswer) -> Result<Answer, Unusable> {
        if let Some(bad) = bot.replies.iter().position(|r| !r.usable()) {
            return Err(Unusable::BadReply(bad + 1));
        }
        Ok(Answer {
            source: Source::Backend,
            replies: bot.replies,
            handoff: bot.handoff,
            handoff_note: bot.handoff_note,
        })
    }

    /// Splits every text longer than `limit` bytes into parts of at most `limit` bytes, at a
    /// line break or space when one is near, else at a character boundary; keeps at most
    /// `max_parts` parts per text, the last one cut and ending in "…" when text was left over.
    pub fn fit_text(mut self, limit: usize, max_parts: usize) -> Answer {
        let mut replies = Vec::with_capacity(self.replies.len());
        for reply in self.replies {
            match reply {
                Reply::Text { content } if content.len() > limit => {
                    replies.extend(
                        split_text(&content, limit, max_parts)
                            .into_iter()
                            .map(|content| Reply::Text { content }),
                    );
                }
                other => replies.push(other),
            }
        }
        self.replies = replies;
        self
    }
}

const ELLIPSIS: &str = "…";

/// See [`Answer::fit_text`].
pub fn split_text(text: &str, limit: usize, max_parts: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.len() <= limit {
            parts.push(rest.to_owned());
            break;
        }
        if parts.len() + 1 == max_parts {
            let cut = floor_boundary(rest, limit - ELLIPSIS.len());
            parts.push(format!("{}{ELLIPSIS}", rest[..cut].trim_end()));
            break;
        }
        let hard = floor_boundary(rest, limit);
        // A break in the last quarter of the part reads better than a cut mid-word.
        let soft = rest[..hard]
            .rfind(['\n', ' '])
            .filter(|at| *at >= hard * 3 / 4 && *at > 0);
        let at = soft.unwrap_or(hard);
        parts.push(rest[..at].trim_end().to_owned());
        rest = rest[at..].trim_start();
    }
    parts
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_within_the_limit_at_boundaries() {
        let text = "你好".repeat(1000); // 6000 bytes
        let parts = split_text(&text, 2048, 5);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= 2048));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn cuts_after_max_parts_with_an_ellipsis() {
        let text = "word ".repeat(1000);
        let parts = split_text(&text, 100, 2);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 100));
        assert!(parts[1].ends_with(ELLIPSIS));
        assert!(!parts[0].ends_with(' '));
    }

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(split_text("  hi  ", 2048, 2), vec!["hi".to_owned()]);
    }

    #[test]
    fn unusable_replies_are_refused() {
        let bot = BotAnswer {
            replies: vec![Reply::Text {
                content: " ".into(),
            }],
            handoff: false,
            handoff_note: None,
        };
        assert!(matches!(Answer::from_bot(bot), Err(Unusable::BadReply(1))));
    }

    #[test]
    fn an_answer_that_is_not_json_keeps_the_parser_error_as_its_source() {
        let parse = serde_json::from_slice::<BotAnswer>(b"<html>").expect_err("not JSON");
        let unusable = Unusable::NotBotJson(parse);
        let source = std::error::Error::source(&unusable).expect("a source");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        assert!(unusable.to_string().starts_with("not a bot answer: "));
    }
}
