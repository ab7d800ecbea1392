//! JSON payloads: never panic, and whatever parses survives being written back out.
#![no_main]

use common::codec::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = codec::parse(Format::Json, data) else {
        return;
    };
    let as_json = codec::to_json(&message);
    assert_eq!(
        codec::parse(Format::Json, as_json.as_bytes()).as_ref(),
        Ok(&message),
        "JSON → JSON → message: {as_json}"
    );
});
