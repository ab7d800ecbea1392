//! Reply templates: text with `{placeholder}`s filled from the message.
//!
//! Parsed once when the rules file loads, so an unknown placeholder is a load error with the
//! rule's location rather than a surprise in a reply. `{{` and `}}` write literal braces. A
//! placeholder whose value is absent from a message (e.g. `{content}` on an event) renders empty.

use std::borrow::Cow;

/// The message fields a template may use; regex captures (`{1}`, `{name}`) come on top.
pub const MESSAGE_FIELDS: &[&str] = &[
    "app",
    "appid",
    "openid",
    "msg_type",
    "event",
    "msg_id",
    "create_time",
    "content",
    "session_from",
    "title",
    "page_path",
    "card_appid",
    "pic_url",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`; `known(name)` says whether a placeholder name is available.
    pub fn parse(source: &str, known: &dyn Fn(&str) -> bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{{name}` in template")),
                        }
                    }
                    if !known(&name) {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}`; available: {}, and the rule's \
                             regex captures (`{{1}}`, `{{name}}`); write `{{{{` for a literal brace",
                            MESSAGE_FIELDS.join(", ")
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err("a lone `}` in template; write `}}` for a literal brace".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// Fills the placeholders; absent values render empty.
    pub fn render<'a>(&self, lookup: &dyn Fn(&str) -> Option<Cow<'a, str>>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => {
                    if let Some(value) = lookup(name) {
                        out.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        MESSAGE_FIELDS.contains(&name) || name == "1"
    }

    #[test]
    fn renders_fields_and_escapes() {
        let t = Template::parse("Hi {openid}, {{literal}} {content}{1}!", &known).expect("parse");
        let out = t.render(&|name| match name {
            "openid" => Some(Cow::Borrowed("o1")),
            "content" => Some(Cow::Owned("price?".into())),
            _ => None,
        });
        assert_eq!(out, "Hi o1, {literal} price?!");
    }

    #[test]
    fn rejects_unknown_and_unbalanced() {
        let err = |src: &str| Template::parse(src, &known).expect_err(src);
        assert!(err("{opnid}").contains("unknown placeholder `{opnid}`"));
        assert!(err("{openid").contains("unclosed"));
        assert!(err("a } b").contains("lone"));
    }
}
