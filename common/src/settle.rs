//! Taking a polled file's new contents only once they have held still.
//!
//! A service that polls a file someone writes in place can read it half-written: truncated to
//! nothing, or cut mid-way. Half a TOML file often still parses (an empty rules file is a valid
//! one that answers nothing; a secret file cut short is a wrong secret), so taking every read as
//! it comes could put a partial file in force for a whole interval, or report a refusal for a file
//! that was whole a moment later. A reader keeps a [`Settle`] and takes a new version only when two
//! consecutive reads, one interval apart, agree: a change is in force one interval after it was
//! first read. Replacing a file atomically (writing a new one and renaming it over the old, as
//! Kubernetes does for mounted ConfigMaps and Secrets) never shows a partial file; this guards the
//! writes that are not atomic.

/// The last version read that differs from the one in force, waiting for a second read.
#[derive(Debug)]
pub struct Settle<T> {
    last: Option<T>,
}

impl<T> Default for Settle<T> {
    fn default() -> Self {
        Settle { last: None }
    }
}

impl<T: PartialEq + Clone> Settle<T> {
    pub fn new() -> Settle<T> {
        Settle::default()
    }

    /// Whether `read`, a version other than the one in force, is also what the previous read
    /// saw: then it has held still for an interval and may be taken. The first sight of a version
    /// answers `false`, and it is remembered for the next read.
    pub fn held(&mut self, read: &T) -> bool {
        if self.last.as_ref() == Some(read) {
            return true;
        }
        self.last = Some(read.clone());
        false
    }

    /// The read found the version in force again: a change seen once is forgotten.
    pub fn forget(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_taken_on_its_second_read_in_a_row() {
        let mut settle = Settle::new();
        assert!(!settle.held(&"half"), "first sight");
        assert!(
            !settle.held(&"whole"),
            "changed again: first sight of this one"
        );
        assert!(settle.held(&"whole"), "read twice in a row");

        settle.forget();
        assert!(!settle.held(&"whole"), "forgotten: a first sight again");
    }
}
