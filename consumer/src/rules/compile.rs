//! Reading the rules file into its model ([`super::file`]) and compiling that into a
//! [`RuleSet`]: the semantic checks (regexes, placeholders, time windows, apps, media files,
//! action combinations), each error at the offending value's line and column, or at the rule's
//! `name`. [`load_file`] and [`parse_rules`] are the entry points.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;

use super::condition::{parse_utc_offset, Conditions, TimeWindow};
use super::file::{ActionDef, FileDef, OneOrMany, RulesContext, RulesError, WhenDef};
use super::template::{Template, MESSAGE_FIELDS};
use super::{Action, Fallback, ForwardTarget, MediaSource, Rule, RuleSet, DEFAULT_RULE};

/// Reads and compiles the rules file at `path`.
pub fn load_file(path: &Path, ctx: &RulesContext) -> Result<RuleSet, RulesError> {
    let source = std::fs::read_to_string(path).map_err(|e| RulesError {
        path: path.display().to_string(),
        position: None,
        message: format!("cannot read the rules file: {e}"),
    })?;
    parse_rules(&source, path, ctx)
}

/// Compiles rules from `source`; `path` names the file in errors and anchors relative image paths.
pub fn parse_rules(source: &str, path: &Path, ctx: &RulesContext) -> Result<RuleSet, RulesError> {
    let compiler = Compiler {
        source,
        path,
        base_dir: path.parent().unwrap_or(Path::new(".")),
        ctx,
    };
    let def: FileDef = toml::from_str(source).map_err(|e| {
        let at = e.span().map(|s| s.start);
        compiler.error(at, e.message().to_owned())
    })?;
    compiler.compile(def)
}

struct Compiler<'a> {
    source: &'a str,
    path: &'a Path,
    base_dir: &'a Path,
    ctx: &'a RulesContext,
}

impl Compiler<'_> {
    fn error(&self, offset: Option<usize>, message: String) -> RulesError {
        let position = offset.map(|offset| {
            let before = &self.source[..offset.min(self.source.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        });
        RulesError {
            path: self.path.display().to_string(),
            position,
            message,
        }
    }

    fn compile(&self, def: FileDef) -> Result<RuleSet, RulesError> {
        let utc_offset_secs = match &def.utc_offset {
            Some(offset) => parse_utc_offset(offset.get_ref())
                .map_err(|m| self.error(Some(offset.span().start), m))?,
            None => 8 * 3600,
        };
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(def.rules.len());
        for rule in def.rules {
            let at = Some(rule.name.span().start);
            let name = rule.name.into_inner();
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !name_ok {
                return Err(self.error(
                    at,
                    format!("rule name `{name}` may hold only letters, digits, '_', '-' and '.'"),
                ));
            }
            if name == DEFAULT_RULE || !names.insert(name.clone()) {
                return Err(self.error(
                    at,
                    format!("rule name `{name}` is used twice (or is the reserved `default`)"),
                ));
            }
            let (conditions, captures) = self.conditions(rule.when, &name)?;
            let (actions, action_ids) = self.actions(rule.actions, &name, at, &captures)?;
            rules.push(Rule {
                name,
                continue_matching: rule.continue_matching,
                conditions,
                actions,
                action_ids,
            });
        }
        let default = match def.default {
            Some(default) => {
                let at = Some(default.span().start);
                let (actions, action_ids) =
                    self.actions(default.into_inner().actions, DEFAULT_RULE, at, &[])?;
                Some(Rule {
                    name: DEFAULT_RULE.to_owned(),
                    continue_matching: false,
                    conditions: Conditions::default(),
                    actions,
                    action_ids,
                })
            }
            None => None,
        };
        Ok(RuleSet {
            rules,
            default,
            utc_offset_secs,
        })
    }

    /// Compiles `when`; also returns the regex capture names templates may use.
    fn conditions(
        &self,
        when: WhenDef,
        rule: &str,
    ) -> Result<(Conditions, Vec<String>), RulesError> {
        let mut captures = Vec::new();
        let apps = match when.app {
            Some(apps) => {
                let at = Some(apps.span().start);
                let apps = apps.into_inner().into_vec();
                if let Some(known) = &self.ctx.apps {
                    if let Some(unknown) = apps.iter().find(|a| !known.contains(*a)) {
                        return Err(self.error(
                            at,
                            format!("rule `{rule}`: app `{unknown}` is not configured ([apps.{unknown}] in consumer.toml)"),
                        ));
                    }
                }
                Some(apps)
            }
            None => None,
        };
        let keywords = match when.keywords {
            Some(keywords) => {
                let at = Some(keywords.span().start);
                let keywords = keywords.into_inner();
                if keywords.is_empty() || keywords.iter().any(|k| k.trim().is_empty()) {
                    return Err(self.error(
                        at,
                        format!("rule `{rule}`: keywords must be non-empty strings"),
                    ));
                }
                keywords.iter().map(|k| k.to_lowercase()).collect()
            }
            None => Vec::new(),
        };
        let regex = match when.regex {
            Some(pattern) => {
                let regex = Regex::new(pattern.get_ref()).map_err(|e| {
                    self.error(
                        Some(pattern.span().start),
                        format!("rule `{rule}`: bad regex: {e}"),
                    )
                })?;
                for (i, name) in regex.capture_names().enumerate() {
                    captures.push(i.to_string());
                    if let Some(name) = name {
                        captures.push(name.to_owned());
                    }
                }
                Some(regex)
            }
            None => None,
        };
        let time = match when.time {
            Some(window) => Some(TimeWindow::parse(window.get_ref()).map_err(|m| {
                self.error(Some(window.span().start), format!("rule `{rule}`: {m}"))
            })?),
            None => None,
        };
        let conditions = Conditions {
            apps,
            msg_types: when.msg_type.map(OneOrMany::into_vec),
            events: when.event.map(OneOrMany::into_vec),
            text: when.text.map(|t| t.trim().to_owned()),
            keywords,
            regex,
            openids: when.openids.map(|ids| ids.into_iter().collect()),
            session_from: when.session_from.map(OneOrMany::into_vec),
            card_appid: when.card_appid,
            card_page_path: when.card_page_path,
            card_title: when.card_title,
            time,
        };
        Ok((conditions, captures))
    }

    fn actions(
        &self,
        defs: Vec<ActionDef>,
        rule: &str,
        at: Option<usize>,
        captures: &[String],
    ) -> Result<(Vec<Action>, Vec<Option<String>>), RulesError> {
        let fail = |index: usize, message: String| {
            self.error(
                at,
                format!("rule `{rule}`, action {}: {message}", index + 1),
            )
        };
        if defs.is_empty() {
            return Err(self.error(
                at,
                format!("rule `{rule}` has no actions (use type = \"drop\" to consume silently)"),
            ));
        }
        if defs.len() > 1 && defs.iter().any(|d| matches!(d, ActionDef::Drop)) {
            return Err(self.error(
                at,
                format!("rule `{rule}`: `drop` cannot be combined with other actions"),
            ));
        }
        let known =
            |name: &str| MESSAGE_FIELDS.contains(&name) || captures.iter().any(|c| c == name);
        let template = |index: usize, source: &str| {
            Template::parse(source, &known).map_err(|m| fail(index, m))
        };
        let mut actions = Vec::with_capacity(defs.len());
        let mut ids: Vec<Option<String>> = Vec::with_capacity(defs.len());
        for (i, def) in defs.into_iter().enumerate() {
            let id = def.id().map(str::to_owned);
            if let Some(id) = &id {
                let valid = !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !valid {
                    return Err(fail(
                        i,
                        format!("action id `{id}` may hold only letters, digits, '_', '-' and '.'"),
                    ));
                }
                if ids.iter().flatten().any(|other| other == id) {
                    return Err(fail(
                        i,
                        format!("action id `{id}` is used twice in this rule"),
                    ));
                }
            }
            ids.push(id);
            let action = match def {
                ActionDef::Text { content, .. } => {
                    if content.trim().is_empty() {
                        return Err(fail(i, "text content is empty".into()));
                    }
                    Action::Text {
                        content: template(i, &content)?,
                    }
                }
                ActionDef::Image { media_id, file, .. } => Action::Image {
                    media: self
                        .media(media_id, file, "media_id", "file")
                        .map_err(|m| fail(i, m))?,
                },
                ActionDef::Link {
                    title,
                    description,
                    url,
                    thumb_url,
                    ..
                } => Action::Link {
                    title: template(i, &title)?,
                    description: template(i, &description)?,
                    url: template(i, &url)?,
                    thumb_url: template(i, &thumb_url)?,
                },
                ActionDef::MiniProgramPage {
                    title,
                    pagepath,
                    thumb_media_id,
                    thumb_file,
                    ..
                } => Action::MiniProgramPage {
                    title: template(i, &title)?,
                    pagepath: template(i, &pagepath)?,
                    thumb: self
                        .media(thumb_media_id, thumb_file, "thumb_media_id", "thumb_file")
                        .map_err(|m| fail(i, m))?,
                },
                ActionDef::Typing { command } => Action::Typing { command },
                ActionDef::Handoff { note, .. } => {
                    if !self.ctx.handoff_available {
                        return Err(fail(i, "handoff has nowhere to go: enable [handoff] publish or set a webhook in consumer.toml".into()));
                    }
                    Action::Handoff { note }
                }
                ActionDef::Forward { url, topic, .. } => Action::Forward {
                    target: match (url, topic) {
                        (Some(url), None)
                            if url.starts_with("http://") || url.starts_with("https://") =>
                        {
                            ForwardTarget::Webhook(url)
                        }
                        (Some(url), None) => {
                            return Err(fail(i, format!("forward url `{url}` is not http(s)")))
                        }
                        (None, Some(topic)) if !topic.is_empty() => ForwardTarget::Topic(topic),
                        _ => {
                            return Err(fail(
                                i,
                                "forward needs exactly one of `url` or `topic`".into(),
                            ))
                        }
                    },
                },
                ActionDef::Ask {
                    backend,
                    fallback,
                    fallback_text,
                    ..
                } => {
                    if let Some(known) = &self.ctx.ask_backends {
                        if !known.contains(&backend) {
                            return Err(fail(
                                i,
                                format!("ask backend `{backend}` is not configured ([ask.backends.{backend}] in consumer.toml)"),
                            ));
                        }
                    }
                    let fallback = match (fallback.as_deref(), fallback_text) {
                        (None | Some("none"), None) => Fallback::Nothing,
                        (None | Some("text"), Some(text)) if !text.trim().is_empty() => {
                            Fallback::Text(template(i, &text)?)
                        }
                        (Some("handoff"), None) => {
                            if !self.ctx.handoff_available {
                                return Err(fail(i, "fallback = \"handoff\" has nowhere to go: enable [handoff] publish or set a webhook in consumer.toml".into()));
                            }
                            Fallback::Handoff
                        }
                        _ => {
                            return Err(fail(
                                i,
                                "fallback is \"none\", \"handoff\", or \"text\" with a non-empty fallback_text (fallback_text alone means \"text\")".into(),
                            ))
                        }
                    };
                    Action::Ask { backend, fallback }
                }
                ActionDef::Drop => Action::Drop,
            };
            actions.push(action);
        }
        Ok((actions, ids))
    }

    fn media(
        &self,
        id: Option<String>,
        file: Option<PathBuf>,
        id_key: &str,
        file_key: &str,
    ) -> Result<MediaSource, String> {
        match (id, file) {
            (Some(id), None) if !id.is_empty() => Ok(MediaSource::Id(id)),
            (None, Some(file)) => {
                let path = self.base_dir.join(&file);
                if !path.is_file() {
                    return Err(format!(
                        "{file_key} `{}` is not a readable file",
                        path.display()
                    ));
                }
                Ok(MediaSource::File(path))
            }
            _ => Err(format!("needs exactly one of `{id_key}` or `{file_key}`")),
        }
    }
}
