//! What an operator run did: per-record [`Tally`]s added up into a [`Summary`], printed at the
//! end, and a [`Progress`] line on stderr while it runs.
//!
//! The summary says what the numbers mean, in particular for the reply window: replaying records
//! older than 48 h mostly ends in `window_closed`, and that is WeChat's rule working (it refuses
//! replies outside the window), not a fault of the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::config::REPLY_WINDOW;
use crate::metrics::Metrics;

/// How one selected record ended in an operator run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// At least one reply was sent now.
    Replied,
    /// Every reply was in the send ledger already: nothing sent again.
    AlreadySent,
    /// No rule matched, or the matched rules send no reply (drop, forward, hand-off).
    Skipped,
    /// Parked in its app's hold topic: the app's daily API quota is spent (`crate::quota`); it
    /// is sent when the pause ends.
    Parked,
    /// Dead-lettered with this reason; `written` when a dead letter was published for it.
    DeadLettered { reason: String, written: bool },
    /// A transient failure (Redis, token, sink) outlasted the retries; the record is untouched
    /// as far as the run is concerned and the run stops.
    Unfinished,
    /// Redrive only: this dead letter was redriven before (or is being redriven right now).
    AlreadyRedriven,
}

/// Counts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the range.
    pub read: u64,
    /// Records that passed the filters.
    pub selected: u64,
    pub replied: u64,
    pub already_sent: u64,
    pub skipped: u64,
    /// Parked while the app's daily API quota is spent.
    pub parked: u64,
    /// By reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Dead letters published by this run.
    pub dead_letters_written: u64,
    /// Selected records the run did not finish (a transient failure, or interrupted).
    pub unfinished: u64,
    /// Records that are not a readable envelope (replay) or not a readable dead letter (dlq).
    pub unreadable: u64,
    /// Selected records whose message is older than the 48 h reply window.
    pub older_than_window: u64,
    /// Redrive: dead letters skipped because they were redriven before.
    pub already_redriven: u64,
    /// Redrive: `ambiguous` dead letters left alone (no `--include-ambiguous`).
    pub held_ambiguous: u64,
    /// Dry runs: records for which at least one reply is planned.
    pub planned_replies: u64,
    /// Dry runs: replies planned, and how many of them the send ledger holds as sent already
    /// (`None` when the ledger could not be consulted).
    pub replies_planned: u64,
    pub replies_in_ledger: Option<u64>,
    /// Replies WeChat accepted during the run (from the send counters).
    pub replies_sent: u64,
    /// The throwaway Kafka group id the run read with (never joined, never committed).
    pub group: String,
}

impl Summary {
    pub fn add(&mut self, tally: &Tally) {
        match tally {
            Tally::Replied => self.replied += 1,
            Tally::AlreadySent => self.already_sent += 1,
            Tally::Skipped => self.skipped += 1,
            Tally::Parked => self.parked += 1,
            Tally::DeadLettered { reason, written } => {
                *self.dead_lettered.entry(reason.clone()).or_default() += 1;
                self.dead_letters_written += u64::from(*written);
            }
            Tally::Unfinished => self.unfinished += 1,
            Tally::AlreadyRedriven => self.already_redriven += 1,
        }
    }

    /// Counts a selected record's `create_time` (seconds) against the reply window.
    pub fn note_age(&mut self, create_time: i64, now_ms: i64) {
        if create_time
            .saturating_mul(1000)
            .saturating_add(REPLY_WINDOW.as_millis() as i64)
            < now_ms
        {
            self.older_than_window += 1;
        }
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// Records of the selection that reached an outcome.
    pub fn finished(&self) -> u64 {
        self.replied
            + self.already_sent
            + self.skipped
            + self.parked
            + self.dead_lettered_total()
            + self.already_redriven
    }

    /// Reads the replies WeChat accepted from the run's own (unregistered) send counters.
    pub fn take_sends(&mut self, metrics: &Metrics) {
        self.replies_sent = ["text", "image", "link", "miniprogrampage"]
            .iter()
            .map(|msgtype| metrics.sends.with_label_values(&[msgtype, "ok"]).get())
            .sum();
    }

    /// The end-of-run report of a live run (`replay`, `dlq redrive`).
    pub fn print_live(&self, title: &str, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "\n{title} summary")?;
        self.print_selection(out)?;
        row(
            out,
            "replied",
            self.replied,
            &format!("{} replies accepted by WeChat", self.replies_sent),
        )?;
        row(
            out,
            "already sent",
            self.already_sent,
            "the send ledger had every reply: none sent again",
        )?;
        row(
            out,
            "skipped",
            self.skipped,
            "no rule matched, or the matched rules send no reply",
        )?;
        if self.parked > 0 {
            row(
                out,
                "parked",
                self.parked,
                "the app's daily API quota is spent: held, sent when it resumes",
            )?;
        }
        row(
            out,
            "dead-lettered",
            self.dead_lettered_total(),
            &format!(
                "{} written to the dead-letter topic",
                self.dead_letters_written
            ),
        )?;
        for (reason, n) in &self.dead_lettered {
            writeln!(out, "    {reason:<22}{n:>8}")?;
        }
        if self.already_redriven > 0 {
            row(
                out,
                "already redriven",
                self.already_redriven,
                "redriven by an earlier run; see `dlq list`",
            )?;
        }
        row(
            out,
            "not finished",
            self.unfinished,
            "a transient failure or an interruption; run the same command again",
        )?;
        self.print_notes(out)
    }

    /// The end-of-run report of a dry run.
    pub fn print_dry_run(&self, title: &str, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "\n{title} summary (dry run: nothing sent, nothing written)"
        )?;
        self.print_selection(out)?;
        row(
            out,
            "with replies planned",
            self.planned_replies,
            "each sent only if not in the send ledger yet and the window allows",
        )?;
        match self.replies_in_ledger {
            Some(done) => {
                let before = format!("{done} of them sent before (send ledger): not sent again");
                row(out, "replies planned", self.replies_planned, &before)?;
                let left = self.replies_planned.saturating_sub(done);
                row(
                    out,
                    "replies to attempt",
                    left,
                    "each only if the reply window allows",
                )?;
            }
            None => row(
                out,
                "replies planned",
                self.replies_planned,
                "the send ledger was not consulted (Redis unreachable)",
            )?,
        }
        row(
            out,
            "without a reply",
            self.skipped,
            "no rule matched, or the matched rules send no reply",
        )?;
        row(out, "would dead-letter", self.dead_lettered_total(), "")?;
        for (reason, n) in &self.dead_lettered {
            writeln!(out, "    {reason:<22}{n:>8}")?;
        }
        self.print_notes(out)
    }

    fn print_selection(&self, out: &mut dyn Write) -> std::io::Result<()> {
        row(out, "records read", self.read, "")?;
        if self.unreadable > 0 {
            row(
                out,
                "unreadable",
                self.unreadable,
                "not a record this build can decode; left out",
            )?;
        }
        if self.held_ambiguous > 0 {
            row(
                out,
                "ambiguous, held",
                self.held_ambiguous,
                "may have reached the user; redrive them only with --include-ambiguous",
            )?;
        }
        row(out, "selected", self.selected, "passed the filters")
    }

    fn print_notes(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let closed = self
            .dead_lettered
            .get("window_closed")
            .copied()
            .unwrap_or(0);
        if self.older_than_window > 0 || closed > 0 {
            writeln!(
                out,
                "note: {} selected record(s) are older than 48 h and {closed} reply/replies met a \
                 closed window. That is expected: WeChat accepts replies only within 48 h of the \
                 user's last message (at most 5), so old messages cannot be answered unless the \
                 user wrote again since. Nothing is wrong with these records.",
                self.older_than_window
            )?;
        }
        if self.unfinished > 0 {
            writeln!(
                out,
                "note: {} record(s) were not finished. Running the same command again is safe: \
                 the send ledger never sends a reply twice.",
                self.unfinished
            )?;
        }
        Ok(())
    }
}

fn row(out: &mut dyn Write, label: &str, n: u64, meaning: &str) -> std::io::Result<()> {
    if meaning.is_empty() {
        writeln!(out, "  {label:<24}{n:>8}")
    } else {
        writeln!(out, "  {label:<24}{n:>8}   {meaning}")
    }
}

/// A progress line on stderr every `every` (never when zero).
#[derive(Debug)]
pub struct Progress {
    name: &'static str,
    total: u64,
    every: Duration,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(name: &'static str, total: u64, every: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            name,
            total,
            every,
            started: now,
            last: now,
        }
    }

    /// Prints a line if `every` passed since the last one.
    pub fn tick(&mut self, s: &Summary) {
        if self.every.is_zero() || self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let pct = if self.total == 0 {
            100.0
        } else {
            s.read as f64 * 100.0 / self.total as f64
        };
        eprintln!(
            "{}: {}/{} read ({pct:.1}%), {} selected, {} finished ({} replied, {} already sent, \
             {} skipped, {} dead-lettered), {}s",
            self.name,
            s.read,
            self.total,
            s.selected,
            s.finished(),
            s.replied,
            s.already_sent,
            s.skipped,
            s.dead_lettered_total(),
            self.started.elapsed().as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_create_time_has_an_age() {
        let now_ms = 1_764_000_000_000;
        let mut summary = Summary::default();
        for create_time in [i64::MAX, i64::MAX / 1000, now_ms / 1000] {
            summary.note_age(create_time, now_ms);
        }
        assert_eq!(summary.older_than_window, 0);
        for create_time in [i64::MIN, 0, now_ms / 1000 - 3 * 24 * 3600] {
            summary.note_age(create_time, now_ms);
        }
        assert_eq!(summary.older_than_window, 3);
    }
}
