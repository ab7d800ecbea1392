//! `HttpUrl`: an http(s) URL of the configuration (`wechat.base_url`, `handoff.webhook`, the ask
//! backends' URLs), parsed once when the configuration is loaded. A value that is not an absolute
//! http or https URL fails the load like any wrongly typed value, with the key named by the
//! configuration loader. Printed (`Display`, `Debug`), a password in it shows as `***`.

use std::fmt;

use serde::{Deserialize, Deserializer};
use url::Url;

/// An absolute `http://` or `https://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(Url);

/// Why a text is not an [`HttpUrl`]. The text itself is not repeated: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum HttpUrlError {
    #[error("not a URL ({0}); expected http(s)://host[:port][/path]")]
    Malformed(#[from] url::ParseError),
    #[error("a {0}: URL; expected http:// or https://")]
    Scheme(String),
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, HttpUrlError> {
        let url = Url::parse(text)?;
        match url.scheme() {
            "http" | "https" => Ok(HttpUrl(url)),
            other => Err(HttpUrlError::Scheme(other.to_owned())),
        }
    }

    /// The URL as given (normalised: `http://host` reads `http://host/`), password included:
    /// for requests, never for printing.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL without the `/` its path ends with, to append `/<path>` to.
    pub fn base(&self) -> &str {
        self.as_str().trim_end_matches('/')
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_some() {
            let mut shown = self.0.clone();
            // Setting a password on an http(s) URL that has one cannot fail.
            let _ = shown.set_password(Some("***"));
            return f.write_str(shown.as_str());
        }
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
        let text = String::deserialize(d)?;
        HttpUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional [`HttpUrl`] where an empty text means none (so an environment variable can clear
/// one the defaults file sets).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    HttpUrl::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_taken() {
        let url = HttpUrl::parse("https://api.example.com/v1/").unwrap();
        assert_eq!(url.base(), "https://api.example.com/v1");
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:8081").unwrap().base(),
            "http://127.0.0.1:8081"
        );
        for bad in [
            "",
            "api.example.com",
            "/v1",
            "ftp://example.com",
            "redis://h/",
            "http://",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_never_prints() {
        let url = HttpUrl::parse("https://bot:hunter2@example.com/hook?x=1").unwrap();
        assert_eq!(url.to_string(), "https://bot:***@example.com/hook?x=1");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(
            url.as_str().contains("hunter2"),
            "the request still carries it"
        );
        let refused = HttpUrl::parse("ftp://u:hunter2@example.com").unwrap_err();
        assert!(!refused.to_string().contains("hunter2"));
    }
}
