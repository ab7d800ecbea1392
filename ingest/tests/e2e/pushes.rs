//! The push side of a scenario: `wechat-sim push` as a process, and what it reports.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Child;

use super::pipeline::{Pipeline, APP};
use super::procs;

impl Pipeline {
    /// Starts the push side: `count` pushes at `rate`/s from `users` users, every mode and
    /// format, the test's message mix; WeChat's 5 s attempts and three retries.
    pub fn push(&self, count: u64, rate: f64, users: u64) -> PushRun {
        self.push_mix(
            count,
            rate,
            users,
            "text=50,image=15,card=15,enter=10,other=10",
        )
    }

    /// As [`Pipeline::push`], with another mix of message kinds (`wechat-sim push --mix`).
    pub fn push_mix(&self, count: u64, rate: f64, users: u64, mix: &str) -> PushRun {
        let record = self.dir.join("pushes.jsonl");
        let args: Vec<String> = [
            "push",
            "--url",
            &format!("http://127.0.0.1:{}/wechat/{APP}", self.ingest_port),
            "--mode",
            "mixed",
            "--format",
            "mixed",
            "--users",
            &users.to_string(),
            "--user-prefix",
            &format!("{}-user", self.id),
            "--mix",
            mix,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--record",
            &record.display().to_string(),
            "--json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let child = tokio::process::Command::new(procs::sim_bin())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join("wechat-sim-push.log")).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("starting wechat-sim push");
        PushRun { child, record }
    }
}

/// A running push side.
#[derive(Debug)]
pub struct PushRun {
    child: Child,
    record: PathBuf,
}

/// `wechat-sim push --json`'s summary (the fields the audit needs).
#[derive(Debug, Clone, Deserialize)]
pub struct PushSummary {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub retries: u64,
}

/// One line of `wechat-sim push --record`.
#[derive(Debug, Clone, Deserialize)]
pub struct PushOutcome {
    pub openid: String,
    pub create_time: i64,
    pub acked: bool,
    /// `text`, `image`, `card`, `enter` or `other`.
    pub kind: String,
    /// `xml` or `json`.
    pub format: serde_json::Value,
    /// `plaintext`, `compatible` or `safe`.
    pub mode: serde_json::Value,
}

impl PushRun {
    /// Waits (bounded) for the push side to finish; its summary and every push's outcome.
    pub async fn finish(self, within: Duration) -> (PushSummary, Vec<PushOutcome>) {
        let output = tokio::time::timeout(within, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the push side did not finish within {within:?}"))
            .expect("wechat-sim push runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: PushSummary = stdout
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no JSON summary from wechat-sim push: {stdout}"));
        let text = std::fs::read_to_string(&self.record).expect("push record");
        let outcomes = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("push record line"))
            .collect();
        (summary, outcomes)
    }
}
