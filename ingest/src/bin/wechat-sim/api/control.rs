//! The simulator's own endpoints (not WeChat's), for tests and demos: what it saw
//! (`/sim/sends`, `/sim/stats`, `/sim/reset`) and its fault dials (`/sim/faults`).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{ERRCODE_DAILY_QUOTA, ERRCODE_MINUTE_QUOTA, ERRCODE_SYSTEM_ERROR};
use super::State;

/// Registers the `/sim/...` endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sim/sends", web::get().to(sends))
        .route("/sim/stats", web::get().to(stats))
        .route("/sim/reset", web::post().to(reset))
        .route("/sim/faults", web::get().to(get_faults))
        .route("/sim/faults", web::post().to(set_faults))
        .route("/sim/apps", web::post().to(set_app));
}

/// `POST /sim/apps`: an app's credentials as the console would now have them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppUpdate {
    appid: String,
    secret: String,
    /// Also kill every token issued to the app so far (40001 from now on).
    #[serde(default)]
    revoke_tokens: bool,
}

async fn set_app(state: web::Data<State>, update: web::Json<AppUpdate>) -> HttpResponse {
    let update = update.into_inner();
    if update.appid.is_empty() || update.secret.is_empty() {
        return HttpResponse::BadRequest().body("appid and secret must not be empty");
    }
    state
        .apps
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(update.appid.clone(), update.secret);
    if update.revoke_tokens {
        state.tokens.revoke_app(&update.appid);
    }
    HttpResponse::Ok().json(json!({"appid": update.appid}))
}

#[derive(Debug, Deserialize)]
struct SendsQuery {
    #[serde(default)]
    after: u64,
    touser: Option<String>,
    limit: Option<usize>,
}

async fn sends(state: web::Data<State>, query: web::Query<SendsQuery>) -> HttpResponse {
    let sends = state.recorder.sends(
        query.after,
        query.touser.as_deref(),
        query.limit.unwrap_or(usize::MAX),
    );
    HttpResponse::Ok().json(sends)
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.recorder.stats(state.tokens.issued()))
}

async fn reset(state: web::Data<State>) -> HttpResponse {
    state.recorder.reset();
    HttpResponse::Ok().json(json!({"reset": true}))
}

/// `POST /sim/faults`: any subset of the dials, plus actions that start now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    #[serde(default, with = "humantime_serde")]
    latency: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    jitter: Option<Duration>,
    error_rate: Option<f64>,
    slow_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    slow_delay: Option<Duration>,
    /// Applies to tokens already handed out too: shortening it expires the older ones now.
    #[serde(default, with = "humantime_serde")]
    token_ttl: Option<Duration>,
    /// `"0s"` goes back to announcing the real lifetime.
    #[serde(default, with = "humantime_serde")]
    token_announced_ttl: Option<Duration>,
    /// Refuse message calls with 45011 from now for this long.
    #[serde(default, with = "humantime_serde")]
    burst_45011: Option<Duration>,
    /// Refuse message calls with 45009 from now for this long.
    #[serde(default, with = "humantime_serde")]
    burst_45009: Option<Duration>,
    /// Refuse message calls with -1 (system busy: the call was not carried out) from now for
    /// this long.
    #[serde(default, with = "humantime_serde")]
    burst_system_error: Option<Duration>,
    /// Invalidate every token issued so far (as a forced refresh elsewhere would): 40001.
    #[serde(default)]
    revoke_tokens: bool,
}

fn faults_view(state: &State) -> Value {
    let policy = state.tokens.policy();
    json!({
        "faults": state.faults.settings(),
        "token_ttl": humantime::format_duration(policy.ttl).to_string(),
        "token_announced_ttl": policy.announced_ttl.map(|d| humantime::format_duration(d).to_string()),
        "bursts": state.faults.pending_bursts().into_iter().map(|(errcode, starts_in, ends_in)| {
            json!({"errcode": errcode, "starts_in_s": starts_in, "ends_in_s": ends_in})
        }).collect::<Vec<_>>(),
    })
}

async fn get_faults(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(faults_view(&state))
}

async fn set_faults(state: web::Data<State>, update: web::Json<FaultUpdate>) -> HttpResponse {
    let update = update.into_inner();
    let mut settings = state.faults.settings();
    let rates = [update.error_rate, update.slow_rate];
    if rates.iter().flatten().any(|r| !(0.0..=1.0).contains(r)) {
        return HttpResponse::BadRequest()
            .body("error_rate and slow_rate are shares between 0 and 1");
    }
    if update.token_ttl.is_some_and(|t| t.is_zero()) {
        return HttpResponse::BadRequest().body("token_ttl must be above zero");
    }
    settings.latency = update.latency.unwrap_or(settings.latency);
    settings.jitter = update.jitter.unwrap_or(settings.jitter);
    settings.error_rate = update.error_rate.unwrap_or(settings.error_rate);
    settings.slow_rate = update.slow_rate.unwrap_or(settings.slow_rate);
    settings.slow_delay = update.slow_delay.unwrap_or(settings.slow_delay);
    state.faults.set(settings);
    let mut policy = state.tokens.policy();
    policy.ttl = update.token_ttl.unwrap_or(policy.ttl);
    if let Some(announced) = update.token_announced_ttl {
        policy.announced_ttl = (!announced.is_zero()).then_some(announced);
    }
    state.tokens.set_policy(policy);
    if let Some(length) = update.burst_45011 {
        state.faults.burst_now(ERRCODE_MINUTE_QUOTA, length);
    }
    if let Some(length) = update.burst_45009 {
        state.faults.burst_now(ERRCODE_DAILY_QUOTA, length);
    }
    if let Some(length) = update.burst_system_error {
        state.faults.burst_now(ERRCODE_SYSTEM_ERROR, length);
    }
    if update.revoke_tokens {
        state.tokens.revoke_all();
    }
    HttpResponse::Ok().json(faults_view(&state))
}
