//! Routing rules: which actions a record triggers.
//!
//! A [`RuleSet`] is compiled from the rules file ([`file`]) and swapped atomically by the hot
//! reload ([`reload`]). Evaluation is pure (no I/O, no clock: time windows use the message's own
//! `CreateTime`), which is what lets `consumer explain` show exactly what the live consumer does.
//!
//! Semantics: rules are tried in file order; every condition of a rule must hold; the first
//! matching rule stops the search unless it says `continue = true`; when no rule matched, the
//! `[default]` rule (if any) applies. A reply's idempotency key is its action's explicit `id` or
//! what it sends, never the rule's name or position (see [`crate::actions`]), so renaming or
//! reordering rules never makes a reply new to the ledger.

mod compile;
pub mod condition;
pub mod file;
pub mod reload;
pub mod template;

use std::borrow::Cow;
use std::path::PathBuf;

use common::envelope::EnvelopeV1;
use common::message::MessageBody;

pub use compile::{load_file, parse_rules};
pub use condition::{Captures, Conditions, TimeWindow};
pub use file::{RulesContext, RulesError};
pub use reload::{RulesHandle, RulesWatcher};
pub use template::Template;

use crate::wechat_api::TypingCommand;

/// The name the `[default]` rule is reported and keyed under.
pub const DEFAULT_RULE: &str = "default";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    /// A media id obtained elsewhere (it must still be valid: temporary media lives 3 days).
    Id(String),
    /// A local file, uploaded and cached (see [`crate::actions::media`]).
    File(PathBuf),
}

/// Where a forwarded record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    Webhook(String),
    Topic(String),
}

/// One compiled action.
#[derive(Debug, Clone)]
pub enum Action {
    Text {
        content: Template,
    },
    Image {
        media: MediaSource,
    },
    Link {
        title: Template,
        description: Template,
        url: Template,
        thumb_url: Template,
    },
    MiniProgramPage {
        title: Template,
        pagepath: Template,
        thumb: MediaSource,
    },
    Typing {
        command: TypingCommand,
    },
    Handoff {
        note: Option<String>,
    },
    Forward {
        target: ForwardTarget,
    },
    /// Ask a bot or a chat model for the reply (see [`crate::actions::ask`]).
    Ask {
        backend: String,
        fallback: Fallback,
    },
    Drop,
}

/// What an `ask` does when its backend fails or answers nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: a failure dead-letters the record (`ask_failed`), an empty answer sends nothing.
    Nothing,
    /// This text (a template of the message's fields).
    Text(Template),
    /// Hand the user off to a human.
    Handoff,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub continue_matching: bool,
    pub conditions: Conditions,
    pub actions: Vec<Action>,
    /// The explicit `id` of each action (same positions as `actions`); see
    /// [`crate::actions::plan`] for the identity of an action without one.
    pub action_ids: Vec<Option<String>>,
}

/// A rule that matched one record, with its regex captures.
#[derive(Debug, Clone)]
pub struct RuleMatch<'a> {
    pub rule: &'a Rule,
    pub captures: Captures,
}

/// The compiled rules file.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub default: Option<Rule>,
    /// Offset of the time windows' clock, seconds east of UTC.
    pub utc_offset_secs: i32,
}

impl RuleSet {
    /// The rules that apply to `env`, in order.
    pub fn evaluate(&self, env: &EnvelopeV1) -> Vec<RuleMatch<'_>> {
        let mut matched = Vec::new();
        for rule in &self.rules {
            if let Some(captures) = rule.conditions.matches(env, self.utc_offset_secs) {
                matched.push(RuleMatch { rule, captures });
                if !rule.continue_matching {
                    break;
                }
            }
        }
        if matched.is_empty() {
            if let Some(rule) = &self.default {
                matched.push(RuleMatch {
                    rule,
                    captures: Vec::new(),
                });
            }
        }
        matched
    }
}

/// The value of template placeholder `name` for `env` (see [`template::MESSAGE_FIELDS`]).
pub fn field<'a>(env: &'a EnvelopeV1, captures: &'a Captures, name: &str) -> Option<Cow<'a, str>> {
    let msg = &env.message;
    let borrowed = |s: &'a str| Some(Cow::Borrowed(s));
    match (name, &msg.body) {
        ("app", _) => borrowed(&env.app),
        ("appid", _) => borrowed(env.appid.as_str()),
        ("openid", _) => borrowed(msg.from_user_name.as_str()),
        ("msg_type", _) => borrowed(msg.msg_type()),
        ("event", _) => msg.event().map(Cow::Borrowed),
        ("msg_id", _) => msg.msg_id().map(|id| Cow::Borrowed(id.as_str())),
        ("create_time", _) => Some(Cow::Owned(msg.create_time.to_string())),
        ("content", _) => msg.text().map(Cow::Borrowed),
        ("session_from", MessageBody::EnterSession { session_from }) => borrowed(session_from),
        ("title", MessageBody::MiniProgramPage { title, .. }) => borrowed(title),
        ("page_path", MessageBody::MiniProgramPage { page_path, .. }) => borrowed(page_path),
        ("card_appid", MessageBody::MiniProgramPage { app_id, .. }) => borrowed(app_id),
        ("pic_url", MessageBody::Image { pic_url, .. }) => borrowed(pic_url),
        _ => captures
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::Borrowed(v.as_str())),
    }
}
