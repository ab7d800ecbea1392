//! XML payloads: never panic, and whatever parses survives being written back out.
#![no_main]

use common::codec::{self, Format};
use libfuzzer_sys::fuzz_target;

/// The element names `to_xml` writes (it leaves other `Other.fields` names out).
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = codec::parse(Format::Xml, data) else {
        return;
    };
    let as_json = codec::to_json(&message);
    assert_eq!(
        codec::parse(Format::Json, as_json.as_bytes()).as_ref(),
        Ok(&message),
        "XML → JSON → message: {as_json}"
    );
    let writable = match &message.body {
        common::MessageBody::Other { fields, .. } => fields.keys().all(|name| is_plain_name(name)),
        _ => true,
    };
    if writable {
        let as_xml = codec::to_xml(&message);
        assert_eq!(
            codec::parse(Format::Xml, as_xml.as_bytes()).as_ref(),
            Ok(&message),
            "XML → XML → message: {as_xml}"
        );
    }
});
