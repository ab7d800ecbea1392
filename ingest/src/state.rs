//! What a request handler works with: the configured apps and each worker's intake.
//!
//! Kept below both `startup` (which builds it) and `routes` (which use it), so neither depends on
//! the other.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::Registry;

use crate::config::{AppSettings, Settings};
use crate::intake::Intake;
use crate::metrics::Metrics;

/// One configured mini program, ready for the request path (key decoded once, at start).
#[derive(Debug, Clone)]
pub struct MiniProgram {
    pub name: String,
    pub settings: AppSettings,
    pub aes_key: Option<common::crypto::AesKey>,
}

impl MiniProgram {
    pub fn new(name: &str, settings: &AppSettings) -> MiniProgram {
        MiniProgram {
            name: name.to_owned(),
            aes_key: settings.aes_key(),
            settings: settings.clone(),
        }
    }
}

/// Everything a request handler needs. Each worker has its own: the Redis connection is opened on
/// the worker's thread and driven there, so a dedup round trip never wakes another thread; the
/// producer, the spool, the metrics and the configuration are shared.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub apps: Arc<HashMap<String, MiniProgram>>,
    pub intake: Intake,
    pub metrics: Metrics,
    pub registry: Registry,
}
