//! A scenario's figures, the line it prints, and the promises asserted on them.

use std::collections::BTreeMap;

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub pushes_sent: u64,
    pub acknowledged: u64,
    pub kafka_records: usize,
    pub distinct_records: usize,
    /// Records ingest published without its dedup check (Redis was down).
    pub unchecked_records: usize,
    pub expected: usize,
    pub sent: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    pub acked_missing: usize,
    pub misordered_users: usize,
    pub users: usize,
    pub dead_letter_reasons: BTreeMap<String, usize>,
    pub outstanding_sample: Vec<String>,
    /// Replies never sent because the consumer dead-lettered them, with the reason.
    pub unsent_dead_letters: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "e2e {}: pushes sent={} acknowledged={} records in kafka={} (distinct {}, unchecked {}) | replies \
             expected={} sent={} dead-lettered={} lost={} duplicated={} | users={} misordered={} \
             unexpected sends={} dead letters={:?}",
            self.scenario,
            self.pushes_sent,
            self.acknowledged,
            self.kafka_records,
            self.distinct_records,
            self.unchecked_records,
            self.expected,
            self.sent,
            self.dead_lettered,
            self.lost,
            self.duplicated,
            self.users,
            self.misordered_users,
            self.unexpected,
            self.dead_letter_reasons,
        )
    }
}

/// Prints the scenario's line of figures and asserts the promises: nothing acknowledged is
/// missing, no reply lost or duplicated, no reply nobody asked for, every user's replies in
/// order, and dead letters only for the reasons this scenario can cause.
pub fn check(report: &Report, allowed_dead_letters: &[&str]) {
    let mut text = format!("{report}\n");
    for unsent in report.unsent_dead_letters.iter().take(10) {
        text.push_str(&format!("    not sent, dead-lettered: {unsent}\n"));
    }
    if report.unsent_dead_letters.len() > 10 {
        let more = report.unsent_dead_letters.len() - 10;
        text.push_str(&format!("    … and {more} more\n"));
    }
    super::say(text.trim_end());
    assert_eq!(
        report.acked_missing, 0,
        "acknowledged pushes missing from Kafka\n{report}"
    );
    assert_eq!(report.lost, 0, "replies lost\n{report}");
    assert_eq!(report.duplicated, 0, "replies sent twice\n{report}");
    assert_eq!(report.unexpected, 0, "replies no rule called for\n{report}");
    assert_eq!(
        report.misordered_users, 0,
        "users whose replies arrived out of order\n{report}"
    );
    assert!(
        report.acknowledged > 0 && report.expected > 0,
        "nothing flowed\n{report}"
    );
    for reason in report.dead_letter_reasons.keys() {
        assert!(
            allowed_dead_letters.contains(&reason.as_str()),
            "dead letters for `{reason}`, which this scenario must not cause\n{report}"
        );
    }
}
