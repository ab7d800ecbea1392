//! WeChat's wire formats: reading and writing a [`Message`] as XML or JSON.
//!
//! Both formats carry the same flat record of PascalCase fields (`ToUserName`, `CreateTime`, …),
//! so each format module only turns bytes into that record (`fields::Fields`) or writes a record
//! out; the mapping between the record and [`Message`] lives once, in `fields`.
//!
//! Reading is tolerant, because a push we fail to parse is a push WeChat retries until it gives up:
//! integers arrive as numbers or numeric strings, unknown `MsgType`s, `Event`s and fields land in
//! [`MessageBody::Other`](crate::message::MessageBody::Other), nested values are kept as raw text.
//! Only what the pipeline cannot do without is required: `ToUserName`, `FromUserName`,
//! `CreateTime` and `MsgType`. A field we interpret that appears twice is an error (which copy
//! would be the real one?); a repeated unknown field keeps its first copy — the envelope stores
//! the exact payload anyway.
//!
//! Writing is conservative and matches what WeChat itself writes: XML strings in CDATA, integers
//! bare; JSON integers as numbers, `MsgId` as a bare number only when it is a canonical `u64`.

mod fields;
mod json;
mod xml;

use serde::{Deserialize, Serialize};

use crate::message::Message;

pub(crate) use fields::{Fields, Sink};

/// The body format of a Mini Program's pushes, fixed by its console setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `<xml>…</xml>` with CDATA strings.
    Xml,
    /// A flat JSON object with the same PascalCase keys.
    Json,
}

impl Format {
    /// Guesses the format from the first non-blank byte (`<` or `{`); a UTF-8 BOM is skipped.
    ///
    /// WeChat's Content-Type for pushes is undocumented, so the body is the only reliable witness
    /// when the configuration does not say.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'<') => Some(Format::Xml),
            Some(b'{') => Some(Format::Json),
            _ => None,
        }
    }
}

/// Why a payload could not be read as a message.
///
/// Messages name the field and the problem, never a field's value: values are user content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload is not UTF-8 (WeChat always sends UTF-8).
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// The XML is not well formed.
    #[error("malformed XML at byte {position}: {message}")]
    Xml { position: u64, message: String },
    /// The JSON is not a well-formed object.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field the codec interprets appears more than once.
    #[error("field `{0}` appears more than once")]
    DuplicateField(&'static str),
    /// A field has the wrong shape, e.g. `CreateTime` that is not an integer.
    #[error("field `{field}` is not {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
}

impl CodecError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::NotUtf8 => "not_utf8",
            CodecError::Xml { .. } => "xml",
            CodecError::Json(_) => "json",
            CodecError::MissingField(_) => "missing_field",
            CodecError::DuplicateField(_) => "duplicate_field",
            CodecError::InvalidField { .. } => "invalid_field",
        }
    }
}

/// Reads a push payload (plaintext, or already decrypted) as a [`Message`].
pub fn parse(format: Format, bytes: &[u8]) -> Result<Message, CodecError> {
    read_fields(format, bytes)?.into_message()
}

/// Writes a message as WeChat's XML: `<xml>`, strings in CDATA, integers bare.
///
/// `Other.fields` entries whose names are not plain XML names (ASCII letter or `_`, then
/// letters, digits, `_`, `-`, `.`) cannot be written as elements and are left out; such names
/// only arise from JSON-mode pushes, whose exact payload the envelope keeps.
pub fn to_xml(message: &Message) -> String {
    let mut sink = xml::XmlSink::new();
    fields::write_message(message, &mut sink);
    sink.finish()
}

/// Writes a message as WeChat's JSON: a flat object with PascalCase keys.
pub fn to_json(message: &Message) -> String {
    let mut sink = json::JsonSink::new();
    fields::write_message(message, &mut sink);
    sink.finish()
}

/// Reads the top-level fields of a payload without interpreting them.
///
/// Also used for the outer body of encrypted pushes, which is not a message.
pub(crate) fn read_fields(format: Format, bytes: &[u8]) -> Result<Fields, CodecError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8)?;
    match format {
        Format::Xml => xml::read_fields(text),
        Format::Json => json::read_fields(text),
    }
}

/// Writes `name`/`value` pairs as one XML or JSON object; for replies, which are not messages.
pub(crate) fn write_object(format: Format, write: impl FnOnce(&mut dyn Sink)) -> String {
    match format {
        Format::Xml => {
            let mut sink = xml::XmlSink::new();
            write(&mut sink);
            sink.finish()
        }
        Format::Json => {
            let mut sink = json::JsonSink::new();
            write(&mut sink);
            sink.finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_first_non_blank_byte() {
        assert_eq!(Format::sniff(b"  \n<xml/>"), Some(Format::Xml));
        assert_eq!(Format::sniff(b"\xEF\xBB\xBF{\"a\":1}"), Some(Format::Json));
        assert_eq!(Format::sniff(b"\t{"), Some(Format::Json));
        assert_eq!(Format::sniff(b"success"), None);
        assert_eq!(Format::sniff(b"   "), None);
        assert_eq!(Format::sniff(b""), None);
    }

    #[test]
    fn format_serde_is_snake_case() {
        assert_eq!(
            serde_json::to_string(&Format::Json).expect("serialize"),
            r#""json""#
        );
        let xml: Format = serde_json::from_str(r#""xml""#).expect("deserialize");
        assert_eq!(xml, Format::Xml);
    }
}
