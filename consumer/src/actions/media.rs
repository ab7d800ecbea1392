//! Temporary media for replies that name a local image file (docs/wechat-protocol.md §6.6).
//!
//! The file is uploaded as temporary media once per app and its media id cached in Redis at
//! `{prefix}media:{app}:{path}:{size}:{mtime}` for `wechat.media_ttl` (below WeChat's 3 days, so a
//! cached id never expires between lookup and send). Size and mtime in the key mean an edited
//! file is uploaded again. Two processes missing the cache at once both upload; that only costs
//! an upload (media ids are not scarce), so no lock is taken.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::actions::calls::{CallFailure, Caller};
use crate::store::{Store, StoreError};
use crate::wechat_api::WechatApi;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot read {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("uploading: {0}")]
    Upload(CallFailure),
}

#[derive(Debug, Clone)]
pub struct MediaCache {
    store: Store,
    api: WechatApi,
    ttl: Duration,
}

impl MediaCache {
    pub fn new(store: Store, api: WechatApi, ttl: Duration) -> MediaCache {
        MediaCache { store, api, ttl }
    }

    async fn cache_key(&self, app: &str, path: &Path) -> Result<String, MediaError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|error| MediaError::File {
                path: path.display().to_string(),
                error,
            })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Ok(self.store.key(&format!(
            "media:{app}:{}:{}:{mtime}",
            path.display(),
            meta.len()
        )))
    }

    /// The media id of `path` for `app`, uploading it when no live id is cached.
    pub async fn media_id(
        &self,
        caller: &Caller<'_>,
        app: &str,
        path: &Path,
    ) -> Result<String, MediaError> {
        let key = self.cache_key(app, path).await?;
        let mut conn = self.store.conn();
        let cached: Option<String> = self
            .store
            .bounded(redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await?;
        if let Some(id) = cached {
            return Ok(id);
        }
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|error| MediaError::File {
                path: path.display().to_string(),
                error,
            })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image.jpg".into());
        let id = caller
            .call_idempotent(app, |token| {
                let api = &self.api;
                let bytes = bytes.clone();
                let name = name.clone();
                async move { api.upload_image(&token, &name, bytes).await }
            })
            .await
            .map_err(MediaError::Upload)?;
        self.store
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&id)
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64)
                    .query_async::<()>(&mut conn),
            )
            .await?;
        tracing::info!(app, file = %path.display(), "uploaded temporary media");
        Ok(id)
    }

    /// Drops the cached id of `path` (WeChat said it is invalid: 40007).
    pub async fn forget(&self, app: &str, path: &Path) -> Result<(), MediaError> {
        let key = self.cache_key(app, path).await?;
        let mut conn = self.store.conn();
        self.store
            .bounded(redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn))
            .await?;
        Ok(())
    }
}
