//! Identifier newtypes: [`AppId`], [`OpenId`], [`MsgId`], and the deployment's own [`AppName`].
//!
//! WeChat identifiers are opaque strings to this pipeline. Wrapping them keeps an openid from being
//! passed where an appid is expected, and keeps every id in one textual form end to end.
//!
//! Invariants:
//! - every id serialises as a plain JSON string (`#[serde(transparent)]`);
//! - [`MsgId`] is a string even though WeChat documents it as an int64: ids exceed 2^53 (a float64
//!   JSON decoder corrupts `22876340532172986` into `22876340532172984`) and cloud-function delivery
//!   sends non-numeric ids such as `49d72d67…_1555684067`. Its `Deserialize` therefore accepts a
//!   JSON string or a JSON integer, reading integers through serde's `u64`/`i64` paths and never
//!   through `f64`. A number that only fits a float (a fraction, an exponent, or beyond 64 bits) is
//!   rejected rather than rounded.
//! - an [`AppName`] is the one identity this project chooses rather than receives: the `{app}`
//!   of `/wechat/{app}`, the `[apps.<name>]` of both services' configuration, and the first part
//!   of every dedup key and record key. It is checked once, by [`AppName::parse`], against one
//!   rule (lowercase ASCII letters, digits, `-`, `_`), so it can never hold the `:` that separates
//!   the parts of those keys.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Defines a string newtype with the accessors and traits every id shares.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an id exactly as given; ids are opaque, so nothing is validated.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as received.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id! {
    /// A Mini Program appid (`wx…`), the value checked inside every ciphertext.
    #[derive(Deserialize)]
    AppId
}

string_id! {
    /// A user's openid within one Mini Program (the `FromUserName` of a push).
    #[derive(Deserialize)]
    OpenId
}

string_id! {
    /// A message id (`MsgId`): decimal digits for normal pushes, free-form for cloud functions.
    MsgId
}

impl MsgId {
    /// The id as an unsigned integer when it is the canonical decimal form of one.
    ///
    /// "Canonical" means no sign, no leading zero and no whitespace, so that writing the number back
    /// yields exactly this id. Writers use it to decide whether the id may go out as a bare number.
    pub fn as_u64(&self) -> Option<u64> {
        let canonical = !self.0.is_empty()
            && self.0.bytes().all(|b| b.is_ascii_digit())
            && (self.0 == "0" || !self.0.starts_with('0'));
        if canonical {
            self.0.parse().ok()
        } else {
            None
        }
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MsgIdVisitor)
    }
}

struct MsgIdVisitor;

impl Visitor<'_> for MsgIdVisitor {
    type Value = MsgId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id as a string or a 64-bit integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MsgId, E> {
        Ok(MsgId::new(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<MsgId, E> {
        Ok(MsgId(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MsgId, E> {
        Ok(MsgId(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MsgId, E> {
        Ok(MsgId(v.to_string()))
    }
}

/// A configured appid that is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the appid `{0}` must not be empty nor hold whitespace")]
pub struct AppIdError(pub String);

impl AppId {
    /// Checks an appid taken from configuration (received ones stay opaque, see [`AppId::new`]):
    /// not empty and no whitespace, which would be a copy-and-paste accident and could never
    /// match the appid inside a ciphertext.
    pub fn parse(appid: &str) -> Result<AppId, AppIdError> {
        if appid.is_empty() || appid.chars().any(char::is_whitespace) {
            return Err(AppIdError(appid.to_owned()));
        }
        Ok(AppId::new(appid))
    }
}

/// The name a deployment gives one of its Mini Programs (see the module docs for where it
/// appears). Only [`AppName::parse`] makes one, so every `AppName` follows the rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

/// A string that is not a valid [`AppName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the app name `{0}` may hold only a-z, 0-9, '-' and '_' (and not be empty)")]
pub struct AppNameError(pub String);

impl AppName {
    /// Checks `name` against the rule: non-empty, only `a-z`, `0-9`, `-` and `_`.
    pub fn parse(name: &str) -> Result<AppName, AppNameError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(AppName(name.to_owned()))
        } else {
            Err(AppNameError(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for AppName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        AppName::parse(&name).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_id_accepts_large_integers_exactly() {
        let id: MsgId = serde_json::from_str("22876340532172986").expect("integer id");
        assert_eq!(id.as_str(), "22876340532172986");
        let id: MsgId = serde_json::from_str("18446744073709551615").expect("u64::MAX");
        assert_eq!(id.as_str(), "18446744073709551615");
        let id: MsgId = serde_json::from_str("-42").expect("negative id");
        assert_eq!(id.as_str(), "-42");
    }

    #[test]
    fn msg_id_accepts_strings() {
        let id: MsgId = serde_json::from_str(r#""49d72d67_1555684067""#).expect("string id");
        assert_eq!(id.as_str(), "49d72d67_1555684067");
    }

    #[test]
    fn msg_id_rejects_numbers_that_would_be_rounded() {
        for input in ["1.5", "2e3", "18446744073709551616", "true", "null"] {
            assert!(
                serde_json::from_str::<MsgId>(input).is_err(),
                "{input} must not become a MsgId"
            );
        }
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let json = serde_json::to_string(&MsgId::new("123")).expect("serialize");
        assert_eq!(json, r#""123""#);
        let json = serde_json::to_string(&OpenId::new("o9Ag")).expect("serialize");
        assert_eq!(json, r#""o9Ag""#);
    }

    #[test]
    fn as_u64_only_for_canonical_decimal() {
        assert_eq!(
            MsgId::new("22876340532172986").as_u64(),
            Some(22876340532172986)
        );
        assert_eq!(MsgId::new("0").as_u64(), Some(0));
        for id in ["", "007", "-1", "+1", " 1", "1a", "18446744073709551616"] {
            assert_eq!(MsgId::new(id).as_u64(), None, "{id:?}");
        }
    }

    #[test]
    fn app_names_follow_one_rule() {
        for ok in ["shop", "shop-2", "a_b", "0"] {
            assert_eq!(AppName::parse(ok).map(|n| n.to_string()), Ok(ok.to_owned()));
        }
        for bad in ["", "Shop", "a:b", "a b", "商店", "a/b"] {
            assert!(AppName::parse(bad).is_err(), "{bad:?}");
        }
        let parsed: Result<AppName, _> = serde_json::from_str("\"a:b\"");
        assert!(parsed.is_err(), "deserialising checks the rule too");
    }
}
