//! Kafka record values: never panic, and a decoded record encodes to an equal one.
#![no_main]

use common::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(data) {
        let again = Envelope::from_bytes(&envelope.to_bytes()).expect("a written envelope reads back");
        assert_eq!(again, envelope);
    }
});
