//! The rules file: its TOML model, reading it, and errors that point at a line and column
//! (`config/rules.toml:12:5: unknown field `kewyord`...`).
//!
//! Syntax and shape errors (unknown keys, wrong types, unknown action types) come from the TOML
//! parser with the exact span; the semantic checks live in [`super::compile`], which reads the
//! file into this model and reports at the offending value when it carries a span and otherwise
//! at the rule's `name`, naming the action by its position. This module depends on nothing else
//! in `rules`. The commented example at `config/rules.toml` documents every key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::wechat_api::TypingCommand;

/// What the rules may refer to, from the service configuration.
#[derive(Debug, Clone, Default)]
pub struct RulesContext {
    /// Configured app names; `None` accepts any (e.g. `explain` without apps).
    pub apps: Option<BTreeSet<String>>,
    /// Whether the `handoff` action has somewhere to go.
    pub handoff_available: bool,
    /// Configured `ask` backends (`[ask.backends.*]`); `None` accepts any.
    pub ask_backends: Option<BTreeSet<String>>,
}

/// A refused rules file: `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    pub path: String,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    #[serde(default)]
    pub(super) utc_offset: Option<Spanned<String>>,
    #[serde(default, rename = "rule")]
    pub(super) rules: Vec<RuleDef>,
    #[serde(default)]
    pub(super) default: Option<Spanned<DefaultDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleDef {
    pub(super) name: Spanned<String>,
    #[serde(default, rename = "continue")]
    pub(super) continue_matching: bool,
    #[serde(default)]
    pub(super) when: WhenDef,
    #[serde(default)]
    pub(super) actions: Vec<ActionDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DefaultDef {
    pub(super) actions: Vec<ActionDef>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhenDef {
    pub(super) app: Option<Spanned<OneOrMany>>,
    pub(super) msg_type: Option<OneOrMany>,
    pub(super) event: Option<OneOrMany>,
    pub(super) text: Option<String>,
    pub(super) keywords: Option<Spanned<Vec<String>>>,
    pub(super) regex: Option<Spanned<String>>,
    pub(super) openids: Option<Vec<String>>,
    pub(super) session_from: Option<OneOrMany>,
    pub(super) card_appid: Option<String>,
    pub(super) card_page_path: Option<String>,
    pub(super) card_title: Option<String>,
    pub(super) time: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ActionDef {
    Text {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        content: String,
    },
    Image {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        media_id: Option<String>,
        file: Option<PathBuf>,
    },
    Link {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        title: String,
        #[serde(default)]
        description: String,
        url: String,
        #[serde(default)]
        thumb_url: String,
    },
    #[serde(rename = "miniprogrampage")]
    MiniProgramPage {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        title: String,
        pagepath: String,
        thumb_media_id: Option<String>,
        thumb_file: Option<PathBuf>,
    },
    Typing {
        #[serde(default)]
        command: TypingCommand,
    },
    Handoff {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        note: Option<String>,
    },
    Forward {
        /// Stable identity of the reply in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        url: Option<String>,
        topic: Option<String>,
    },
    Ask {
        /// Stable identity of the ask in the send ledger (see docs/architecture.md).
        #[serde(default)]
        id: Option<String>,
        backend: String,
        /// What happens when the backend fails or answers nothing usable: `none`, `text`
        /// (with `fallback_text`) or `handoff`.
        #[serde(default)]
        fallback: Option<String>,
        #[serde(default)]
        fallback_text: Option<String>,
    },
    Drop,
}

impl ActionDef {
    /// The explicit `id` of the action, when the file gives one.
    pub(super) fn id(&self) -> Option<&str> {
        match self {
            ActionDef::Text { id, .. }
            | ActionDef::Image { id, .. }
            | ActionDef::Link { id, .. }
            | ActionDef::MiniProgramPage { id, .. }
            | ActionDef::Handoff { id, .. }
            | ActionDef::Forward { id, .. }
            | ActionDef::Ask { id, .. } => id.as_deref(),
            ActionDef::Typing { .. } | ActionDef::Drop => None,
        }
    }
}
