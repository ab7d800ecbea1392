//! The WeChat server API client: customer-service send, typing, temporary media upload and the
//! two token endpoints (docs/wechat-protocol.md §6, §7).
//!
//! A thin port: one method per call, each bounded by the configured timeout, each returning an
//! [`ApiError`] whose [`ErrorClass`] tells the caller whether to retry, refresh the token, or
//! give up. Policy (retries, tokens, the ledger) lives with the callers; this module only speaks
//! HTTP. The base URL is configurable so tests point it at a fake. Access tokens travel in the
//! query string, so no URL of a call is ever logged or put into an error.

pub mod body;
pub mod error;

use std::fmt;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

pub use body::{OutgoingMessage, SendRequest, TypingCommand, TypingRequest};
pub use error::{ApiError, DecodeError, ErrorClass};

use crate::config::TokenEndpoint;
use crate::metrics::Metrics;
use body::{StableTokenRequest, Status, TokenAnswer, UploadAnswer};

pub const PATH_SEND: &str = "cgi-bin/message/custom/send";
pub const PATH_TYPING: &str = "cgi-bin/message/custom/typing";
pub const PATH_UPLOAD: &str = "cgi-bin/media/upload";
pub const PATH_STABLE_TOKEN: &str = "cgi-bin/stable_token";
pub const PATH_TOKEN: &str = "cgi-bin/token";

/// An access token. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(value: impl Into<String>) -> AccessToken {
        AccessToken(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(…)")
    }
}

/// A token as WeChat handed it out.
#[derive(Debug, Clone)]
pub struct FetchedToken {
    pub token: AccessToken,
    pub expires_in: Duration,
}

#[derive(Debug, Clone)]
pub struct WechatApi {
    http: reqwest::Client,
    base_url: String,
    metrics: Metrics,
}

impl WechatApi {
    pub fn new(base_url: &str, timeout: Duration, metrics: Metrics) -> anyhow::Result<WechatApi> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()?;
        Ok(WechatApi {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            metrics,
        })
    }

    /// The URL of `path`, with `ACCESS_TOKEN` standing in for the token (for `explain`).
    pub fn display_url(&self, path: &str, extra_query: &str) -> String {
        format!(
            "{}/{path}?access_token=ACCESS_TOKEN{extra_query}",
            self.base_url
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base_url)
    }

    /// `cgi-bin/message/custom/send`. Not idempotent: see [`ErrorClass::Ambiguous`].
    pub async fn send(&self, token: &AccessToken, request: &SendRequest) -> Result<(), ApiError> {
        let call = self
            .http
            .post(self.url(PATH_SEND))
            .query(&[("access_token", token.expose())])
            .json(request);
        let status: Status = self.execute("send", call).await?;
        check(status.errcode, status.errmsg)
    }

    /// `cgi-bin/message/custom/typing`.
    pub async fn typing(
        &self,
        token: &AccessToken,
        request: &TypingRequest,
    ) -> Result<(), ApiError> {
        let call = self
            .http
            .post(self.url(PATH_TYPING))
            .query(&[("access_token", token.expose())])
            .json(request);
        let status: Status = self.execute("typing", call).await?;
        check(status.errcode, status.errmsg)
    }

    /// `cgi-bin/media/upload?type=image`, multipart part `media`; returns the media id.
    pub async fn upload_image(
        &self,
        token: &AccessToken,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> Result<String, ApiError> {
        let mime = if file_name.to_ascii_lowercase().ends_with(".png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name.to_owned())
            .mime_str(mime)
            .map_err(|e| ApiError::Request(e.without_url()))?;
        let form = reqwest::multipart::Form::new().part("media", part);
        let call = self
            .http
            .post(self.url(PATH_UPLOAD))
            .query(&[("access_token", token.expose()), ("type", "image")])
            .multipart(form);
        let answer: UploadAnswer = self.execute("upload", call).await?;
        check(answer.errcode, answer.errmsg)?;
        answer
            .media_id
            .ok_or(ApiError::Decode(DecodeError::Missing("media_id")))
    }

    /// Fetches a token from the configured endpoint. `stable_token` is always called in normal
    /// mode (`force_refresh: false`).
    pub async fn fetch_token(
        &self,
        endpoint: TokenEndpoint,
        appid: &str,
        secret: &SecretString,
    ) -> Result<FetchedToken, ApiError> {
        let call = match endpoint {
            TokenEndpoint::Stable => {
                self.http
                    .post(self.url(PATH_STABLE_TOKEN))
                    .json(&StableTokenRequest {
                        grant_type: "client_credential",
                        appid,
                        secret: secret.expose_secret(),
                        force_refresh: false,
                    })
            }
            TokenEndpoint::Classic => self.http.get(self.url(PATH_TOKEN)).query(&[
                ("grant_type", "client_credential"),
                ("appid", appid),
                ("secret", secret.expose_secret()),
            ]),
        };
        let answer: TokenAnswer = self.execute("token", call).await?;
        check(answer.errcode, answer.errmsg)?;
        match (answer.access_token, answer.expires_in) {
            (Some(token), Some(expires_in)) if !token.is_empty() => Ok(FetchedToken {
                token: AccessToken(token),
                expires_in: Duration::from_secs(expires_in),
            }),
            _ => Err(ApiError::Decode(DecodeError::Missing(
                "access_token and expires_in",
            ))),
        }
    }

    /// Sends `call`, times it, and reads a JSON answer.
    async fn execute<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        call: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = async {
            let response = call.send().await.map_err(ApiError::from_reqwest)?;
            let status = response.status();
            if !status.is_success() {
                return Err(ApiError::Status(status.as_u16()));
            }
            let bytes = response.bytes().await.map_err(ApiError::from_reqwest)?;
            serde_json::from_slice::<T>(&bytes).map_err(|e| ApiError::Decode(DecodeError::Json(e)))
        }
        .await;
        self.metrics
            .api_duration
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

fn check(errcode: i64, errmsg: String) -> Result<(), ApiError> {
    if errcode == 0 {
        Ok(())
    } else {
        Err(ApiError::WeChat { errcode, errmsg })
    }
}
