//! WeChat JSON: one flat object with PascalCase keys.
//!
//! Each value is captured as serde_json's `RawValue`, i.e. as its exact source text, before it is
//! classified. That is what keeps a 64-bit `MsgId` exact (it is never parsed as a float) and lets
//! nested values — the subscribe-message `List`, an object for one entry and an array for several —
//! be kept verbatim. `null` counts as absent.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::fields::{Fields, Sink, Value};
use super::CodecError;
use crate::ids::MsgId;

pub(super) fn read_fields(text: &str) -> Result<Fields, CodecError> {
    let Object(entries) = serde_json::from_str(text).map_err(json_error)?;
    let mut fields = Fields::default();
    for (name, raw) in entries {
        let raw = raw.get();
        let value = match raw.as_bytes().first() {
            Some(b'"') => Value::Text(serde_json::from_str(raw).map_err(json_error)?),
            Some(b'n') => continue,
            Some(b'-' | b'0'..=b'9') => Value::Number(raw.to_owned()),
            _ => Value::Raw(raw.to_owned()),
        };
        fields.insert(name, value);
    }
    Ok(fields)
}

/// serde_json's syntax errors say where, not what; its type errors quote the offending value,
/// which here can only be a top-level non-object — possibly user text — so that one is reworded.
fn json_error(error: serde_json::Error) -> CodecError {
    CodecError::Json(match error.classify() {
        Category::Data => format!(
            "payload is not a JSON object at line {} column {}",
            error.line(),
            error.column()
        ),
        Category::Io | Category::Syntax | Category::Eof => error.to_string(),
    })
}

/// A JSON object's entries in document order, duplicates included (a `Map` would silently keep
/// only the last one, hiding a repeated field from [`Fields`]).
struct Object<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Object(entries))
    }
}

/// Builds a JSON object one field at a time.
pub(super) struct JsonSink {
    out: String,
}

impl JsonSink {
    pub(super) fn new() -> Self {
        Self {
            out: String::from("{"),
        }
    }

    pub(super) fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }

    fn key(&mut self, name: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_json_string(&mut self.out, name);
        self.out.push(':');
    }
}

impl Sink for JsonSink {
    fn string(&mut self, name: &str, value: &str) {
        self.key(name);
        push_json_string(&mut self.out, value);
    }

    fn integer(&mut self, name: &str, value: i64) {
        self.key(name);
        self.out.push_str(&value.to_string());
    }

    fn msg_id(&mut self, name: &str, id: &MsgId) {
        match id.as_u64() {
            Some(number) => {
                self.key(name);
                self.out.push_str(&number.to_string());
            }
            None => self.string(name, id.as_str()),
        }
    }

    fn extra(&mut self, name: &str, value: &str) {
        self.string(name, value);
    }
}

/// Appends `value` as a JSON string literal; non-ASCII text is written as UTF-8, unescaped.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_values_without_floats() {
        let mut fields = read_fields(
            r#"{"Id":22876340532172986,"S":"a\"b","N":null,"L":[{"a":1}, {"b":2}],"T":true}"#,
        )
        .expect("object");
        assert!(matches!(
            fields.take_text("Id"),
            Ok(Some(ref s)) if s == "22876340532172986"
        ));
        assert!(matches!(fields.take_text("S"), Ok(Some(ref s)) if s == "a\"b"));
        assert!(!fields.contains("N"), "null is absent");
        assert!(matches!(
            fields.take_text("L"),
            Ok(Some(ref s)) if s == r#"[{"a":1}, {"b":2}]"#
        ));
        assert!(matches!(fields.take_text("T"), Ok(Some(ref s)) if s == "true"));
    }

    #[test]
    fn repeated_keys_are_seen() {
        let mut fields = read_fields(r#"{"MsgType":"text","MsgType":"event"}"#).expect("object");
        assert_eq!(
            fields.take_text("MsgType"),
            Err(CodecError::DuplicateField("MsgType"))
        );
    }

    #[test]
    fn errors_do_not_quote_the_payload() {
        let Err(CodecError::Json(message)) = read_fields(r#""a private message""#) else {
            panic!("a string is not an object");
        };
        assert!(!message.contains("private"), "{message}");
        assert!(message.contains("not a JSON object"), "{message}");
    }

    #[test]
    fn rejects_non_objects() {
        for doc in ["", "[]", "\"x\"", "{", r#"{"a":1} x"#] {
            assert!(
                matches!(read_fields(doc), Err(CodecError::Json(_))),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn escapes_strings() {
        let mut sink = JsonSink::new();
        sink.string("S", "q\"\\\n\u{1}你");
        sink.msg_id("MsgId", &MsgId::new("007"));
        sink.msg_id("Big", &MsgId::new("22876340532172986"));
        assert_eq!(
            sink.finish(),
            r#"{"S":"q\"\\\n\u0001你","MsgId":"007","Big":22876340532172986}"#
        );
    }
}
