//! What the simulated API saw: every accepted send with its body, and counts of every call by
//! endpoint and errcode.
//!
//! A send is *accepted* when WeChat would have delivered it: a valid token, a well-formed body,
//! no injected refusal. Slow answers are accepted too (the message arrived; only the answer was
//! late). Each accepted send gets a sequence number in arrival order, which is the order the user
//! would see. The same body reaching the API again for the same user is flagged as a repeat: when
//! every reply names the message it answers (as in the end-to-end tests' rules), a repeat is a
//! duplicate send, exactly the failure the consumer's send ledger exists to prevent; with fixed
//! reply texts (the example rules) repeats are normal.

use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One accepted send.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedSend {
    /// 1, 2, ... in arrival order.
    pub seq: u64,
    /// Unix milliseconds at arrival.
    pub at_ms: i64,
    /// The appid of the token it came with.
    pub appid: String,
    pub touser: String,
    pub msgtype: String,
    /// The request body as sent.
    pub body: serde_json::Value,
    /// Answered after the slow delay (the client probably gave up waiting).
    pub slow: bool,
    /// The same body already reached the API for this user (see the module docs).
    pub repeated: bool,
}

/// Counts behind `GET /sim/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Calls by endpoint, then by the errcode answered (0: ok).
    pub calls: BTreeMap<&'static str, BTreeMap<i64, u64>>,
    pub sends_recorded: u64,
    pub repeated_bodies: u64,
    pub slow_answers: u64,
    pub tokens_issued: u64,
    pub media_uploaded: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sends: Vec<RecordedSend>,
    seen: HashSet<u64>,
    stats: Stats,
    next_seq: u64,
}

#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Recorder {
    /// `file`: append every accepted send there as a JSON line, too.
    pub fn new(file: Option<&Path>) -> std::io::Result<Recorder> {
        let file = match file {
            Some(path) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ))),
            None => None,
        };
        Ok(Recorder {
            inner: Mutex::new(Inner::default()),
            file,
        })
    }

    /// Counts one call of `endpoint` answered with `errcode`.
    pub fn count(&self, endpoint: &'static str, errcode: i64, slow: bool) {
        let mut inner = lock(&self.inner);
        *inner
            .stats
            .calls
            .entry(endpoint)
            .or_default()
            .entry(errcode)
            .or_default() += 1;
        if slow {
            inner.stats.slow_answers += 1;
        }
    }

    pub fn count_upload(&self) {
        lock(&self.inner).stats.media_uploaded += 1;
    }

    /// Records an accepted send.
    pub fn send(&self, appid: &str, body: serde_json::Value, slow: bool) {
        let touser = body["touser"].as_str().unwrap_or_default().to_owned();
        let msgtype = body["msgtype"].as_str().unwrap_or_default().to_owned();
        // serde_json's map is ordered by key, so equal bodies print equal.
        let mut hasher = DefaultHasher::new();
        appid.hash(&mut hasher);
        body.to_string().hash(&mut hasher);
        let fingerprint = hasher.finish();
        let recorded = {
            let mut inner = lock(&self.inner);
            inner.next_seq += 1;
            let repeated = !inner.seen.insert(fingerprint);
            inner.stats.sends_recorded += 1;
            if repeated {
                inner.stats.repeated_bodies += 1;
            }
            let recorded = RecordedSend {
                seq: inner.next_seq,
                at_ms: unix_ms(),
                appid: appid.to_owned(),
                touser,
                msgtype,
                body,
                slow,
                repeated,
            };
            inner.sends.push(recorded.clone());
            recorded
        };
        if let Some(file) = &self.file {
            let mut file = lock(file);
            let written = serde_json::to_writer(&mut *file, &recorded)
                .map_err(std::io::Error::from)
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.flush());
            if let Err(e) = written {
                tracing::warn!(error = %e, "appending to the send record failed");
            }
        }
    }

    /// Recorded sends with `seq > after`, optionally only those to `touser`, at most `limit`.
    pub fn sends(&self, after: u64, touser: Option<&str>, limit: usize) -> Vec<RecordedSend> {
        let inner = lock(&self.inner);
        // Sequence numbers are dense from 1, so `after` is an index.
        let start = (after as usize).min(inner.sends.len());
        inner.sends[start..]
            .iter()
            .filter(|s| touser.is_none_or(|t| s.touser == t))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn stats(&self, tokens_issued: u64) -> Stats {
        let mut stats = lock(&self.inner).stats.clone();
        stats.tokens_issued = tokens_issued;
        stats
    }

    /// Forgets every recorded send and count (sequence numbers start again at 1).
    pub fn reset(&self) {
        *lock(&self.inner) = Inner::default();
    }
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_numbered_filtered_and_repeats_counted() {
        let recorder = Recorder::new(None).expect("in memory");
        let a = serde_json::json!({"touser":"u1","msgtype":"text","text":{"content":"a"}});
        let b = serde_json::json!({"touser":"u2","msgtype":"text","text":{"content":"b"}});
        recorder.send("wx1", a.clone(), false);
        recorder.send("wx1", b, false);
        recorder.send("wx1", a, true);
        let all = recorder.sends(0, None, usize::MAX);
        assert_eq!(all.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(all[2].repeated && all[2].slow && !all[0].repeated);
        assert_eq!(recorder.sends(1, Some("u1"), 10).len(), 1);
        assert_eq!(recorder.stats(0).repeated_bodies, 1);
        recorder.reset();
        assert!(recorder.sends(0, None, 10).is_empty());
    }
}
