//! Access tokens as WeChat hands them out and checks them (docs/wechat-protocol.md §7).
//!
//! Two issuers per appid, kept apart as WeChat keeps them:
//! - `cgi-bin/token` (classic): every fetch issues a new token; the previous one keeps working
//!   for an overlap (WeChat: about 5 minutes, never past its own expiry), then answers 40001.
//! - `cgi-bin/stable_token`: normal mode hands every caller the same token until it enters its
//!   roll-over period (WeChat: the last 5 minutes), when a new one is issued and the old one keeps
//!   working until it expires; `force_refresh` issues a new one and kills the old one at once.
//!
//! A token presented to an API is one of: unknown or replaced (40001), past its lifetime (42001),
//! or valid (its appid). Lifetimes are configurable ([`TokenPolicy`]) so tests can make tokens
//! expire every few seconds; the announced `expires_in` may be set longer than the real lifetime
//! to make clients meet 42001 instead of refreshing ahead of it. A lifetime is measured from the
//! token's issue with the policy in force when it is checked, so shortening it at run time makes
//! tokens already handed out expire too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// WeChat's overlap of an old and a new token, and the stable token's roll-over period.
const WECHAT_OVERLAP: Duration = Duration::from_secs(300);

/// How long tokens live, and what clients are told.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// Real lifetime: after it the token answers 42001.
    pub ttl: Duration,
    /// `expires_in` announced with a fresh token; `None`: the real lifetime.
    pub announced_ttl: Option<Duration>,
}

impl TokenPolicy {
    /// Overlap and roll-over period: WeChat's 5 minutes, scaled down for short lifetimes so a
    /// token is reused for at least three quarters of its life.
    fn overlap(&self) -> Duration {
        WECHAT_OVERLAP.min(self.ttl / 4)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Issuer {
    Classic,
    Stable,
}

/// Why a token was refused, as the errcode WeChat gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 40001: unknown, replaced, or revoked.
    Invalid,
    /// 42001: past its lifetime.
    Expired,
}

impl Rejection {
    pub fn errcode(self) -> i64 {
        match self {
            Rejection::Invalid => 40001,
            Rejection::Expired => 42001,
        }
    }

    pub fn errmsg(self) -> &'static str {
        match self {
            Rejection::Invalid => "invalid credential, access_token is invalid or not latest",
            Rejection::Expired => "access_token expired",
        }
    }
}

#[derive(Debug)]
struct Issued {
    appid: String,
    issued: Instant,
    /// Replaced or revoked: 40001 from this instant on.
    dead_from: Option<Instant>,
}

impl Issued {
    fn expires(&self, policy: &TokenPolicy) -> Instant {
        self.issued + policy.ttl
    }

    fn check(&self, policy: &TokenPolicy, now: Instant) -> Result<(), Rejection> {
        let expires = self.expires(policy);
        match self.dead_from {
            Some(dead) if dead <= now && dead < expires => Err(Rejection::Invalid),
            _ if expires <= now => Err(Rejection::Expired),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    tokens: HashMap<String, Issued>,
    /// The newest token per (appid, issuer).
    current: HashMap<(String, Issuer), String>,
    issued: u64,
}

/// The token book of the simulated API.
#[derive(Debug)]
pub struct Tokens {
    book: Mutex<Book>,
    policy: Mutex<TokenPolicy>,
}

/// A token handed out: its value and the `expires_in` to announce.
#[derive(Debug)]
pub struct Grant {
    pub access_token: String,
    pub expires_in: u64,
}

impl Tokens {
    pub fn new(policy: TokenPolicy) -> Tokens {
        Tokens {
            book: Mutex::new(Book::default()),
            policy: Mutex::new(policy),
        }
    }

    pub fn policy(&self) -> TokenPolicy {
        *lock(&self.policy)
    }

    /// Applies at once, to tokens already issued too.
    pub fn set_policy(&self, policy: TokenPolicy) {
        *lock(&self.policy) = policy;
    }

    /// How many tokens were ever issued.
    pub fn issued(&self) -> u64 {
        lock(&self.book).issued
    }

    /// The appid of a valid token.
    pub fn check(&self, token: &str) -> Result<String, Rejection> {
        let policy = self.policy();
        let now = Instant::now();
        let book = lock(&self.book);
        let issued = book.tokens.get(token).ok_or(Rejection::Invalid)?;
        issued.check(&policy, now)?;
        Ok(issued.appid.clone())
    }

    /// A fetch from `issuer` for `appid` (credentials already checked).
    pub fn fetch(&self, appid: &str, issuer: Issuer, force_refresh: bool) -> Grant {
        let policy = self.policy();
        let now = Instant::now();
        let mut book = lock(&self.book);
        let slot = (appid.to_owned(), issuer);
        let previous = book.current.get(&slot).cloned();
        if issuer == Issuer::Stable && !force_refresh {
            // Normal mode: the same token while it is outside its roll-over period.
            if let Some(value) = &previous {
                if let Some(issued) = book.tokens.get(value) {
                    let usable = issued.check(&policy, now).is_ok();
                    let expires = issued.expires(&policy);
                    if usable && expires.saturating_duration_since(now) > policy.overlap() {
                        let expires_in = announced_left(&policy, expires, now);
                        return Grant {
                            access_token: value.clone(),
                            expires_in,
                        };
                    }
                }
            }
        }
        if let Some(old) = previous.and_then(|value| book.tokens.get_mut(&value)) {
            // Classic: the old token overlaps the new one. Stable normal mode: the old one runs
            // out on its own. Forced: the old one dies now.
            let dead_from = match (issuer, force_refresh) {
                (_, true) => Some(now),
                (Issuer::Classic, false) => Some(now + policy.overlap()),
                (Issuer::Stable, false) => None,
            };
            if let Some(dead) = dead_from {
                old.dead_from = Some(old.dead_from.map_or(dead, |d| d.min(dead)));
            }
        }
        book.issued += 1;
        let value = new_token(book.issued, issuer);
        book.tokens.insert(
            value.clone(),
            Issued {
                appid: appid.to_owned(),
                issued: now,
                dead_from: None,
            },
        );
        book.current.insert(slot, value.clone());
        // Forget tokens long dead so a long run does not grow without bound.
        if book.tokens.len() > 4096 {
            let horizon = now.checked_sub(Duration::from_secs(600)).unwrap_or(now);
            book.tokens.retain(|_, t| {
                t.expires(&policy) > horizon && t.dead_from.is_none_or(|d| d > horizon)
            });
        }
        Grant {
            access_token: value,
            expires_in: announced_left(&policy, now + policy.ttl, now),
        }
    }

    /// Every token issued so far answers 40001 from now on (as after a forced refresh elsewhere).
    pub fn revoke_all(&self) {
        self.revoke(|_| true);
    }

    /// Every token issued so far to `appid` answers 40001 from now on.
    pub fn revoke_app(&self, appid: &str) {
        self.revoke(|issued| issued.appid == appid);
    }

    fn revoke(&self, which: impl Fn(&Issued) -> bool) {
        let now = Instant::now();
        let mut book = lock(&self.book);
        for issued in book.tokens.values_mut().filter(|t| which(t)) {
            issued.dead_from = Some(issued.dead_from.map_or(now, |d| d.min(now)));
        }
    }
}

/// `expires_in` for a token expiring at `expires`: the real time left, or, when a longer
/// lifetime is announced, that lifetime minus the token's age.
fn announced_left(policy: &TokenPolicy, expires: Instant, now: Instant) -> u64 {
    let left = expires.saturating_duration_since(now);
    let announced = match policy.announced_ttl {
        Some(announced) => announced.saturating_sub(policy.ttl.saturating_sub(left)),
        None => left,
    };
    announced.as_secs().max(1)
}

fn new_token(sequence: u64, issuer: Issuer) -> String {
    let kind = match issuer {
        Issuer::Classic => "C",
        Issuer::Stable => "S",
    };
    // Opaque like WeChat's, unguessable enough that a client cannot forge one by accident.
    format!("SIM{kind}{sequence}_{:032x}", rand::random::<u128>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ttl_ms: u64) -> Tokens {
        Tokens::new(TokenPolicy {
            ttl: Duration::from_millis(ttl_ms),
            announced_ttl: None,
        })
    }

    #[test]
    fn stable_normal_mode_repeats_the_token_and_force_kills_it() {
        let t = tokens(60_000);
        let a = t.fetch("wx1", Issuer::Stable, false);
        let b = t.fetch("wx1", Issuer::Stable, false);
        assert_eq!(a.access_token, b.access_token);
        assert_eq!(t.check(&a.access_token).as_deref(), Ok("wx1"));
        let c = t.fetch("wx1", Issuer::Stable, true);
        assert_ne!(a.access_token, c.access_token);
        assert_eq!(t.check(&a.access_token), Err(Rejection::Invalid));
        assert_eq!(t.check(&c.access_token).as_deref(), Ok("wx1"));
    }

    #[test]
    fn classic_fetch_replaces_after_an_overlap() {
        let t = tokens(60_000);
        let a = t.fetch("wx1", Issuer::Classic, false);
        let b = t.fetch("wx1", Issuer::Classic, false);
        assert_ne!(a.access_token, b.access_token);
        // Both work during the overlap.
        assert!(t.check(&a.access_token).is_ok());
        assert!(t.check(&b.access_token).is_ok());
        // Stable and classic tokens are separate.
        let s = t.fetch("wx1", Issuer::Stable, false);
        assert!(t.check(&s.access_token).is_ok());
        assert!(t.check(&b.access_token).is_ok());
    }

    #[test]
    fn expiry_is_42001_and_unknown_is_40001() {
        let t = tokens(30);
        let a = t.fetch("wx1", Issuer::Stable, false);
        assert_eq!(t.check("nope"), Err(Rejection::Invalid));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.check(&a.access_token), Err(Rejection::Expired));
        let b = t.fetch("wx1", Issuer::Stable, false);
        assert_ne!(a.access_token, b.access_token);
    }

    #[test]
    fn revoking_invalidates_every_token() {
        let t = tokens(60_000);
        let a = t.fetch("wx1", Issuer::Stable, false);
        t.revoke_all();
        assert_eq!(t.check(&a.access_token), Err(Rejection::Invalid));
        // A revoked stable token is not handed out again.
        let b = t.fetch("wx1", Issuer::Stable, false);
        assert_ne!(a.access_token, b.access_token);
        assert!(t.check(&b.access_token).is_ok());
    }

    #[test]
    fn shortening_the_lifetime_expires_tokens_already_issued() {
        let t = tokens(60_000);
        let a = t.fetch("wx1", Issuer::Stable, false);
        std::thread::sleep(Duration::from_millis(20));
        t.set_policy(TokenPolicy {
            ttl: Duration::from_millis(10),
            announced_ttl: None,
        });
        assert_eq!(t.check(&a.access_token), Err(Rejection::Expired));
    }

    #[test]
    fn an_announced_lifetime_longer_than_the_real_one_is_reported() {
        let t = Tokens::new(TokenPolicy {
            ttl: Duration::from_secs(10),
            announced_ttl: Some(Duration::from_secs(7200)),
        });
        let a = t.fetch("wx1", Issuer::Stable, false);
        assert!(a.expires_in > 7100, "{}", a.expires_in);
    }
}
