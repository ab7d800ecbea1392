//! The conditions of one rule, compiled, and how a message is tested against them.
//!
//! Every condition present must hold (logical AND); an absent condition matches anything. Text
//! conditions (`text`, `keywords`, `regex`) only hold for text messages, card conditions only for
//! `miniprogrampage` messages, `session_from` only for `user_enter_tempsession` events, so a rule
//! never fires on a message kind it was not written for. The time window is judged at the
//! message's own `CreateTime`, in the rules file's UTC offset, so `consumer explain` over old
//! records gives the answer the live consumer gave.

use std::collections::HashSet;

use common::envelope::EnvelopeV1;
use common::message::MessageBody;
use regex::Regex;

/// Values captured by a rule's regex: `("0", whole)`, `("1", group 1)`, ..., and named groups.
pub type Captures = Vec<(String, String)>;

/// A daily window `[start, end)` in seconds after local midnight; wraps past midnight when
/// `end < start` (e.g. 22:00-06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    start: u32,
    end: u32,
}

impl TimeWindow {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<TimeWindow, String> {
        let err = || format!("time window `{text}` is not `HH:MM-HH:MM` (e.g. \"09:00-18:00\")");
        let (a, b) = text.split_once('-').ok_or_else(err)?;
        let start = parse_clock(a.trim()).ok_or_else(err)?;
        let end = parse_clock(b.trim()).ok_or_else(err)?;
        if start == end {
            return Err(format!("time window `{text}` is empty: start equals end"));
        }
        Ok(TimeWindow { start, end })
    }

    /// Whether `unix_seconds` falls in the window at `utc_offset_secs`.
    pub fn contains(&self, unix_seconds: i64, utc_offset_secs: i32) -> bool {
        // In i128, so any CreateTime, however far off, has an exact local time of day.
        let local =
            (i128::from(unix_seconds) + i128::from(utc_offset_secs)).rem_euclid(86_400) as u32;
        if self.start < self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }
}

fn parse_clock(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    // 24:00 is allowed as the end of a day.
    if (h < 24 && m < 60) || (h == 24 && m == 0) {
        Some(h * 3600 + m * 60)
    } else {
        None
    }
}

/// Parses a UTC offset such as `+08:00`, `-05:30` or `Z` into seconds east of UTC.
pub fn parse_utc_offset(text: &str) -> Result<i32, String> {
    if text == "Z" {
        return Ok(0);
    }
    let err = || format!("utc_offset `{text}` is not `+HH:MM` or `-HH:MM` (China is \"+08:00\")");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(err()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(err)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
    if h > 14 || m > 59 {
        return Err(err());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// One rule's compiled conditions.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub apps: Option<Vec<String>>,
    pub msg_types: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
    /// Exact text, compared after trimming surrounding whitespace.
    pub text: Option<String>,
    /// Lower-cased; any one contained (case-insensitively) is enough.
    pub keywords: Vec<String>,
    pub regex: Option<Regex>,
    pub openids: Option<HashSet<String>>,
    pub session_from: Option<Vec<String>>,
    pub card_appid: Option<String>,
    /// Compared with the card's page path, with and without its `?query`.
    pub card_page_path: Option<String>,
    pub card_title: Option<String>,
    pub time: Option<TimeWindow>,
}

fn one_of(allowed: &Option<Vec<String>>, value: Option<&str>) -> bool {
    match allowed {
        None => true,
        Some(list) => value.is_some_and(|v| list.iter().any(|a| a == v)),
    }
}

impl Conditions {
    /// Tests `env`; on a match, returns the regex captures (empty without a regex).
    pub fn matches(&self, env: &EnvelopeV1, utc_offset_secs: i32) -> Option<Captures> {
        let msg = &env.message;
        let all = one_of(&self.apps, Some(&env.app))
            && one_of(&self.msg_types, Some(msg.msg_type()))
            && one_of(&self.events, msg.event())
            && self
                .openids
                .as_ref()
                .is_none_or(|set| set.contains(msg.from_user_name.as_str()))
            && self
                .time
                .is_none_or(|w| w.contains(msg.create_time, utc_offset_secs))
            && self.session_from_holds(&msg.body)
            && self.card_holds(&msg.body);
        if !all {
            return None;
        }
        self.text_holds(msg.text())
    }

    fn session_from_holds(&self, body: &MessageBody) -> bool {
        match (&self.session_from, body) {
            (None, _) => true,
            (Some(list), MessageBody::EnterSession { session_from }) => {
                list.iter().any(|s| s == session_from)
            }
            (Some(_), _) => false,
        }
    }

    fn card_holds(&self, body: &MessageBody) -> bool {
        let wanted =
            self.card_appid.is_some() || self.card_page_path.is_some() || self.card_title.is_some();
        if !wanted {
            return true;
        }
        let MessageBody::MiniProgramPage {
            title,
            app_id,
            page_path,
            ..
        } = body
        else {
            return false;
        };
        let path_without_query = page_path.split('?').next().unwrap_or(page_path);
        self.card_appid.as_ref().is_none_or(|a| a == app_id)
            && self.card_title.as_ref().is_none_or(|t| t == title)
            && self
                .card_page_path
                .as_ref()
                .is_none_or(|p| p == page_path || p == path_without_query)
    }

    fn text_holds(&self, text: Option<&str>) -> Option<Captures> {
        let wanted = self.text.is_some() || !self.keywords.is_empty() || self.regex.is_some();
        if !wanted {
            return Some(Vec::new());
        }
        let text = text?;
        if let Some(exact) = &self.text {
            if text.trim() != exact {
                return None;
            }
        }
        if !self.keywords.is_empty() {
            let lower = text.to_lowercase();
            if !self.keywords.iter().any(|k| lower.contains(k.as_str())) {
                return None;
            }
        }
        let Some(regex) = &self.regex else {
            return Some(Vec::new());
        };
        let caps = regex.captures(text)?;
        let mut out: Captures = Vec::new();
        for (i, name) in regex.capture_names().enumerate() {
            let value = caps
                .get(i)
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            if let Some(name) = name {
                out.push((name.to_owned(), value.clone()));
            }
            out.push((i.to_string(), value));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_windows_in_china_time() {
        let office = TimeWindow::parse("09:00-18:00").expect("window");
        let night = TimeWindow::parse("22:00-06:00").expect("window");
        let cst = parse_utc_offset("+08:00").expect("offset");
        // 2024-04-26 02:00:00 UTC = 10:00 in China.
        let t = 1_714_096_800;
        assert!(office.contains(t, cst));
        assert!(
            !office.contains(t, 0),
            "02:00 UTC is outside office hours in UTC"
        );
        assert!(night.contains(t, 0));
        assert!(!night.contains(t, cst));
        assert!(office.contains(t + 8 * 3600 - 1, cst), "17:59:59 is inside");
        assert!(
            !office.contains(t + 8 * 3600, cst),
            "18:00 is the exclusive end"
        );
    }

    #[test]
    fn any_create_time_has_a_time_of_day() {
        let office = TimeWindow::parse("09:00-18:00").expect("window");
        let cst = parse_utc_offset("+08:00").expect("offset");
        let west = parse_utc_offset("-12:00").expect("offset");
        // i64::MAX s is 15:30:07 UTC; i64::MIN s is 08:29:52 UTC (both proleptic).
        assert!(office.contains(i64::MAX, 0));
        assert!(!office.contains(i64::MAX, cst), "23:30:07 in China");
        assert!(!office.contains(i64::MIN, 0), "08:29:52 UTC");
        assert!(!office.contains(i64::MIN, west));
    }

    #[test]
    fn rejects_bad_windows_and_offsets() {
        for bad in ["9-18", "09:00", "25:00-26:00", "09:60-10:00", "10:00-10:00"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
        for bad in ["08:00", "+8", "+15:00", "UTC"] {
            assert!(parse_utc_offset(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_utc_offset("-05:30"), Ok(-(5 * 3600 + 30 * 60)));
    }
}
