//! `consumer quota status` and `consumer quota resume <app>`: the daily-quota pause of each app
//! (`crate::quota`), as every process of the group sees it in Redis.
//!
//! `status` prints, per configured app, whether it is paused and until when, and how many of its
//! records wait in its hold topic. `resume` ends an app's pause now — after WeChat's
//! `clear_quota` gave the quota back, or to probe early: the processes release its held records
//! within `quota.check_interval`, then its new records flow again. An app still out of quota
//! answers 45009 again at the first call and pauses again; nothing is lost either way.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::quota::state::{AppQuota, QuotaState};
use crate::store::Store;

#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub command: QuotaCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// Every configured app: paused or not, until when, and its held backlog.
    Status,
    /// End an app's pause now (after WeChat's clear_quota); its held records are sent first.
    Resume(ResumeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The app's name in the configuration (`[apps.<name>]`).
    pub app: String,
}

/// One app's line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStatus {
    pub app: String,
    pub quota: AppQuota,
}

impl AppStatus {
    fn render(&self, now_ms: i64) -> String {
        let state = match self.quota.until_ms {
            Some(until) if until > now_ms => {
                let left = std::time::Duration::from_secs(((until - now_ms) / 1000) as u64);
                let at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(until as u64),
                );
                format!(
                    "paused until {at} ({} left)",
                    humantime::format_duration(left)
                )
            }
            _ => "running".to_owned(),
        };
        format!(
            "{}: {state}; {} held record(s) not released",
            self.app,
            self.quota.backlog()
        )
    }
}

/// Every configured app's pause and backlog.
pub async fn status(settings: &Settings) -> anyhow::Result<Vec<AppStatus>> {
    let state = QuotaState::new(Store::connect(&settings.redis).await?);
    let mut out = Vec::new();
    for app in crate::apps::names(settings) {
        out.push(AppStatus {
            quota: state.read(&app).await?,
            app,
        });
    }
    Ok(out)
}

/// Ends `app`'s pause; whether it was paused. An app that is not configured is an error.
pub async fn resume(settings: &Settings, app: &str) -> anyhow::Result<bool> {
    if !crate::apps::names(settings).contains(app) {
        anyhow::bail!("app `{app}` is not configured");
    }
    let state = QuotaState::new(Store::connect(&settings.redis).await?);
    Ok(state.resume(app, now_ms()).await?)
}

/// Runs a `quota` subcommand, printing its report.
pub async fn command(
    settings: &Settings,
    args: &QuotaArgs,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match &args.command {
        QuotaCommand::Status => {
            let now = now_ms();
            for line in status(settings).await? {
                writeln!(out, "{}", line.render(now))?;
            }
            Ok(0)
        }
        QuotaCommand::Resume(resume_args) => {
            let app = resume_args.app.as_str();
            if !crate::apps::names(settings).contains(app) {
                writeln!(out, "app `{app}` is not configured")?;
                return Ok(2);
            }
            let was_paused = resume(settings, app).await?;
            if was_paused {
                writeln!(
                    out,
                    "{app}: resumed; its held records are sent first, then its new ones \
                     (it pauses again if WeChat still answers 45009)"
                )?;
            } else {
                writeln!(out, "{app}: was not paused; nothing changed")?;
            }
            Ok(0)
        }
    }
}
