//! Faults the integration tests inject into a record's handling; compiled only with the
//! `test-hooks` feature, which only builds of the tests enable (see `consumer/Cargo.toml`).
//!
//! A hook is armed by code in the same process, never by anything a record carries, so even a
//! build with the feature has no panic reachable from input. It exists so the tests can show what
//! the pipeline does with a handler that really panics (a `panic` dead letter, the partition
//! moving on) without keeping a defect in the product as the trigger.

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::envelope::EnvelopeV1;

/// Dedup keys of the records that panic in their handler.
static PANIC_FOR: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// From now on, the record with this dedup key panics in its handler (before any action runs),
/// every time it is handled.
pub fn panic_on_record(dedup_key: &str) {
    PANIC_FOR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dedup_key.to_owned());
}

/// Called by the processor at the start of every record.
pub(crate) fn before_record(env: &EnvelopeV1) {
    let armed = PANIC_FOR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(env.dedup_key.as_str());
    if armed {
        panic!("test hook: a panic in the handler of this record");
    }
}
