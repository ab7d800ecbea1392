//! The wall clock, in the unit the crate stores and compares: Unix milliseconds.
//!
//! Wall-clock on purpose: Redis entries (ledger, windows, marks) outlive a process, and WeChat's
//! reply window is counted from the message's own `CreateTime`, so a monotonic clock would not do.

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
