//! This service's part of an app file (`common::app_file`, see `config/app-example.toml`): its
//! `[consumer]` section, the AppSecret; the shared `appid` and the `[ingest]` section are read by
//! the common code. The AppSecret is `{ file = "..." }` (a mounted Secret, re-read at every
//! reload, so a reset is a change of that file) or `{ value = "..." }` (local runs).

use common::app_file::{FileCheck, Parsed, SecretRef, Spanned, Unread};
use common::AppSecret;
use serde::Deserialize;

use super::AppCredentials;

/// An app file as this service reads it.
pub(super) type AppFile = Parsed<Unread, ConsumerSection>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsumerSection {
    secret: Spanned<SecretRef>,
}

/// The credentials of one parsed file, or `None` with its problems recorded in `check`.
pub(super) fn build(file: AppFile, check: &mut FileCheck<'_>) -> Option<AppCredentials> {
    let Some(section) = file.consumer else {
        check.invalid("no [consumer] section: this service needs the AppSecret");
        return None;
    };
    let secret = check.secret("consumer.secret", &section.secret, |text| {
        AppSecret::new(text).map_err(|e| e.to_string())
    })?;
    match (file.name, file.appid) {
        (Some(_), Some(appid)) => Some(AppCredentials { appid, secret }),
        _ => None,
    }
}
