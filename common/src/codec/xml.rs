//! WeChat XML: `<xml>` with one child element per field.
//!
//! Reading uses quick-xml's pull reader over the whole document (no serde mapping, so unknown
//! fields cannot make it fail). A field's text is the concatenation of its escaped text and CDATA
//! sections; when CDATA is present, whitespace-only text around it is formatting and is dropped.
//! Line endings are kept as sent (no XML end-of-line normalisation), so a `\r\n` a user typed
//! survives the same way it does in JSON mode. A field with child elements keeps its raw inner XML.
//! The root element's name is not checked (WeChat's is `xml`). There is no DTD processing: only
//! the five predefined entities and character references are resolved, so no entity expansion.
//!
//! Writing puts every string in CDATA; a `]]>` inside a value is split across two CDATA sections
//! (`]]]]><![CDATA[>`), which readers join back.

use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;

use super::fields::{Fields, Sink, Value};
use super::CodecError;
use crate::ids::MsgId;

pub(super) fn read_fields(text: &str) -> Result<Fields, CodecError> {
    let mut reader = Reader::from_str(text);
    let mut fields = Fields::default();

    // Prolog: declaration, comments, blank text, then the root element.
    loop {
        match next(&mut reader)? {
            Event::Start(_) => break,
            Event::Empty(_) => return finish(&mut reader, fields),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            Event::Eof => return Err(syntax(&reader, "no root element")),
            _ => return Err(syntax(&reader, "content before the root element")),
        }
    }

    // The root's children are the fields; stray text directly inside the root is ignored.
    loop {
        match next(&mut reader)? {
            Event::Start(start) => {
                let name = element_name(&reader, start.name().as_ref())?;
                let value = read_field(&mut reader, text)?;
                fields.insert(name, value);
            }
            Event::Empty(empty) => {
                let name = element_name(&reader, empty.name().as_ref())?;
                fields.insert(name, Value::Text(String::new()));
            }
            Event::End(_) => break,
            Event::Eof => return Err(syntax(&reader, "unexpected end of document")),
            _ => {}
        }
    }
    finish(&mut reader, fields)
}

/// Reads one field after its start tag, up to and including its end tag.
fn read_field(reader: &mut Reader<&[u8]>, source: &str) -> Result<Value, CodecError> {
    let content_start = reader.buffer_position();
    let mut text = String::new();
    let mut blank_text = String::new();
    let mut has_cdata = false;
    let mut nested = false;
    loop {
        // Before an end tag the reader stands on its `<`: that is where the content ends.
        let before = reader.buffer_position();
        match next(reader)? {
            Event::Text(t) => {
                let decoded = t.decode().map_err(|e| syntax(reader, &e.to_string()))?;
                if is_blank(&t) {
                    // Kept aside: formatting next to CDATA, content otherwise.
                    blank_text.push_str(&decoded);
                } else {
                    text.push_str(&std::mem::take(&mut blank_text));
                    text.push_str(&decoded);
                }
            }
            Event::CData(c) => {
                let decoded = c.decode().map_err(|e| syntax(reader, &e.to_string()))?;
                has_cdata = true;
                blank_text.clear();
                text.push_str(&decoded);
            }
            Event::GeneralRef(r) => {
                text.push_str(&std::mem::take(&mut blank_text));
                resolve_reference(reader, &r, &mut text)?;
            }
            Event::Start(child) => {
                nested = true;
                reader
                    .read_to_end(child.name())
                    .map_err(|e| syntax(reader, &e.to_string()))?;
            }
            Event::Empty(_) => nested = true,
            Event::End(_) => {
                if nested {
                    let raw = usize::try_from(content_start)
                        .ok()
                        .zip(usize::try_from(before).ok())
                        .and_then(|(start, end)| source.get(start..end))
                        .ok_or_else(|| syntax(reader, "element content out of bounds"))?;
                    return Ok(Value::Raw(raw.to_owned()));
                }
                if !has_cdata {
                    text.push_str(&blank_text);
                }
                return Ok(Value::Text(text));
            }
            Event::Eof => return Err(syntax(reader, "unexpected end of document")),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
        }
    }
}

/// After the root: only comments, processing instructions and blank text may follow.
fn finish(reader: &mut Reader<&[u8]>, fields: Fields) -> Result<Fields, CodecError> {
    loop {
        match next(reader)? {
            Event::Eof => return Ok(fields),
            Event::Comment(_) | Event::PI(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            _ => return Err(syntax(reader, "content after the root element")),
        }
    }
}

fn resolve_reference(
    reader: &Reader<&[u8]>,
    reference: &BytesRef<'_>,
    out: &mut String,
) -> Result<(), CodecError> {
    if let Some(ch) = reference
        .resolve_char_ref()
        .map_err(|e| syntax(reader, &e.to_string()))?
    {
        out.push(ch);
        return Ok(());
    }
    let name = reference
        .decode()
        .map_err(|e| syntax(reader, &e.to_string()))?;
    let resolved = resolve_xml_entity(&name)
        .ok_or_else(|| syntax(reader, &format!("unknown entity `&{name};`")))?;
    out.push_str(resolved);
    Ok(())
}

fn next<'a>(reader: &mut Reader<&'a [u8]>) -> Result<Event<'a>, CodecError> {
    reader
        .read_event()
        .map_err(|e| syntax(reader, &e.to_string()))
}

fn element_name(reader: &Reader<&[u8]>, name: &[u8]) -> Result<String, CodecError> {
    std::str::from_utf8(name)
        .map(str::to_owned)
        .map_err(|_| syntax(reader, "element name is not UTF-8"))
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn syntax(reader: &Reader<&[u8]>, message: &str) -> CodecError {
    CodecError::Xml {
        position: reader.error_position(),
        message: message.to_owned(),
    }
}

/// Builds `<xml>…</xml>` one field at a time.
pub(super) struct XmlSink {
    out: String,
}

impl XmlSink {
    pub(super) fn new() -> Self {
        Self {
            out: String::from("<xml>"),
        }
    }

    pub(super) fn finish(mut self) -> String {
        self.out.push_str("</xml>");
        self.out
    }

    fn element(&mut self, name: &str, write_content: impl FnOnce(&mut String)) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        write_content(&mut self.out);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }
}

impl Sink for XmlSink {
    fn string(&mut self, name: &str, value: &str) {
        self.element(name, |out| push_cdata(out, value));
    }

    fn integer(&mut self, name: &str, value: i64) {
        self.element(name, |out| out.push_str(&value.to_string()));
    }

    fn msg_id(&mut self, name: &str, id: &MsgId) {
        match id.as_u64() {
            Some(number) => self.element(name, |out| out.push_str(&number.to_string())),
            None => self.string(name, id.as_str()),
        }
    }

    fn extra(&mut self, name: &str, value: &str) {
        if is_plain_name(name) {
            self.string(name, value);
        }
    }
}

fn push_cdata(out: &mut String, value: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// A conservative subset of XML names: what every WeChat field name is.
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(fields: &mut Fields, name: &'static str) -> Option<String> {
        fields.take_text(name).expect("not repeated")
    }

    #[test]
    fn cdata_escaped_and_split_cdata_are_all_text() {
        let mut fields = read_fields(
            "<xml><A><![CDATA[a]]]]><![CDATA[>b]]></A><B>x &amp; y &#20320;</B>\
             <C>\n  <![CDATA[kept]]>\n</C><D>  spaced  </D><E/></xml>",
        )
        .expect("well formed");
        assert_eq!(text_of(&mut fields, "A").as_deref(), Some("a]]>b"));
        assert_eq!(text_of(&mut fields, "B").as_deref(), Some("x & y 你"));
        assert_eq!(text_of(&mut fields, "C").as_deref(), Some("kept"));
        assert_eq!(text_of(&mut fields, "D").as_deref(), Some("  spaced  "));
        assert_eq!(text_of(&mut fields, "E").as_deref(), Some(""));
    }

    #[test]
    fn nested_elements_keep_raw_inner_xml() {
        let mut fields = read_fields(
            "<xml><SubscribeMsgPopupEvent><List><TemplateId><![CDATA[t]]></TemplateId></List>\
             </SubscribeMsgPopupEvent></xml>",
        )
        .expect("well formed");
        assert_eq!(
            text_of(&mut fields, "SubscribeMsgPopupEvent").as_deref(),
            Some("<List><TemplateId><![CDATA[t]]></TemplateId></List>")
        );
    }

    #[test]
    fn rejects_broken_documents() {
        for doc in [
            "",
            "text",
            "<xml><A>1</B></xml>",
            "<xml><A>1</A>",
            "<xml></xml><xml></xml>",
            "<xml><A>&bogus;</A></xml>",
        ] {
            assert!(
                matches!(read_fields(doc), Err(CodecError::Xml { .. })),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn writes_cdata_strings_and_bare_integers() {
        let mut sink = XmlSink::new();
        sink.string("Content", "a]]>b");
        sink.integer("CreateTime", 1482048670);
        sink.msg_id("MsgId", &MsgId::new("22876340532172986"));
        sink.msg_id("Other", &MsgId::new("49d72d67_1555684067"));
        sink.extra("bad name", "dropped");
        assert_eq!(
            sink.finish(),
            "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content>\
             <CreateTime>1482048670</CreateTime><MsgId>22876340532172986</MsgId>\
             <Other><![CDATA[49d72d67_1555684067]]></Other></xml>"
        );
    }
}
