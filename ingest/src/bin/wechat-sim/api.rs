//! The API side: the WeChat server endpoints the consumer calls (docs/wechat-protocol.md §6, §7), with
//! configurable latency and injected faults, recording every accepted send.
//!
//! Endpoints, with WeChat's JSON bodies and errcodes:
//! - `GET  /cgi-bin/token` and `POST /cgi-bin/stable_token` — tokens, see [`tokens`];
//! - `POST /cgi-bin/message/custom/send`, `/cgi-bin/message/custom/typing`,
//!   `/cgi-bin/media/upload` — checked as WeChat checks them ([`requests`]): 41001 without a
//!   token, 40001 for an unknown or replaced one, 42001 for an expired one, then the body.
//!
//! Not WeChat's, but what a bot behind the consumer's `ask` action calls: a fake
//! OpenAI-compatible `POST /v1/chat/completions` ([`chat`]; its calls at `GET /sim/chat`).
//!
//! Control endpoints for tests and demos (not WeChat's):
//! - `GET /sim/sends?after=SEQ&touser=OPENID&limit=N` — accepted sends, in arrival order;
//! - `GET /sim/stats` — calls by endpoint and errcode, sends recorded, repeated bodies, slow answers;
//! - `POST /sim/reset` — forget recorded sends and counts;
//! - `GET /sim/faults`, `POST /sim/faults` — read or change the fault dials while running;
//! - `POST /sim/apps` — `{"appid", "secret", "revoke_tokens"}`: add an app or reset its
//!   AppSecret (the old one is refused with 40125 from then on), optionally killing the tokens
//!   already issued to it;
//! - `GET /healthz`.
//!
//! The bound address is printed on stdout as `listening on http://ADDR` (with `--listen
//! 127.0.0.1:0` a free port is picked), so a test starting this process can read it.

mod chat;
mod control;
mod faults;
mod recorder;
mod requests;
mod tokens;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

use faults::{BurstSpec, FaultSettings, Faults, ERRCODE_DAILY_QUOTA, ERRCODE_MINUTE_QUOTA};
use recorder::Recorder;
use requests::Refusal;
use tokens::{Issuer, TokenPolicy, Tokens};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Credentials the token endpoints accept, APPID=SECRET; repeat for several apps. Without
    /// any, every appid is accepted with any non-empty secret.
    #[arg(long = "app", value_parser = parse_app)]
    apps: Vec<(String, String)>,
    /// Added to every answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Extra random latency per answer, uniform in [0, jitter].
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Share of calls (0..1) answered `-1 system error` without doing anything.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of calls (0..1) whose answer, whatever it is, comes only after --slow-delay. The call
    /// is carried out first: an accepted slow send is delivered and recorded, as a real one can
    /// arrive although its answer is lost.
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    /// How late a slow answer comes; above the consumer's client timeout (5 s by default).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    slow_delay: Duration,
    /// Real lifetime of an access token; after it the token answers 42001 (WeChat: 7200 s).
    #[arg(long, default_value = "7200s", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// `expires_in` announced with a token, when it should differ from --token-ttl. Announcing
    /// more than the real lifetime makes clients meet 42001 instead of refreshing ahead of it.
    #[arg(long, value_parser = humantime::parse_duration)]
    token_announced_ttl: Option<Duration>,
    /// A window in which every send, typing and upload call answers 45011 (minute quota):
    /// START+LENGTH after start, e.g. 30s+5s. Repeatable.
    #[arg(long = "burst-45011", value_parser = faults::parse_burst)]
    burst_45011: Vec<BurstSpec>,
    /// As --burst-45011, answering 45009 (daily quota).
    #[arg(long = "burst-45009", value_parser = faults::parse_burst)]
    burst_45009: Vec<BurstSpec>,
    /// Also append every accepted send to this file, one JSON object per line.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Seed of the fault dice (0: random).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The fake chat model's answers, used in turn; without any it echoes the user's message.
    #[arg(long = "chat-answer")]
    chat_answers: Vec<String>,
    /// How long the fake chat model thinks before each answer.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    chat_latency: Duration,
    /// Share of chat calls (0..1) answered 429 with Retry-After: 1.
    #[arg(long = "chat-429-rate", default_value_t = 0.0)]
    chat_429_rate: f64,
    /// Share of chat calls (0..1) answered 500.
    #[arg(long = "chat-500-rate", default_value_t = 0.0)]
    chat_500_rate: f64,
}

fn parse_app(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => {
            Ok((appid.to_owned(), secret.to_owned()))
        }
        _ => Err(format!("`{s}`: expected APPID=SECRET")),
    }
}

/// Everything the handlers share, across workers.
#[derive(Debug)]
struct State {
    /// APPID → AppSecret; changed at run time by `POST /sim/apps` (an AppSecret reset).
    apps: std::sync::RwLock<BTreeMap<String, String>>,
    tokens: Tokens,
    faults: Faults,
    recorder: Recorder,
    media_seq: std::sync::atomic::AtomicU64,
    chat: chat::Chat,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let bursts = [
        (ERRCODE_MINUTE_QUOTA, &args.burst_45011),
        (ERRCODE_DAILY_QUOTA, &args.burst_45009),
    ]
    .into_iter()
    .flat_map(|(errcode, specs)| {
        specs.iter().map(move |spec| faults::Burst {
            errcode,
            from: started + spec.start,
            until: started + spec.start + spec.length,
        })
    })
    .collect();
    for rate in [args.error_rate, args.slow_rate] {
        if !(0.0..=1.0).contains(&rate) {
            anyhow::bail!("--error-rate and --slow-rate are shares between 0 and 1");
        }
    }
    let (r429, r500) = (args.chat_429_rate, args.chat_500_rate);
    if !(0.0..=1.0).contains(&r429) || !(0.0..=1.0).contains(&r500) || r429 + r500 > 1.0 {
        anyhow::bail!(
            "--chat-429-rate and --chat-500-rate are shares between 0 and 1, together at most 1"
        );
    }
    if args.token_ttl.is_zero() {
        anyhow::bail!("--token-ttl must be above zero");
    }
    let state = Arc::new(State {
        apps: std::sync::RwLock::new(args.apps.iter().cloned().collect()),
        tokens: Tokens::new(TokenPolicy {
            ttl: args.token_ttl,
            announced_ttl: args.token_announced_ttl,
        }),
        faults: Faults::new(
            FaultSettings {
                latency: args.latency,
                jitter: args.jitter,
                error_rate: args.error_rate,
                slow_rate: args.slow_rate,
                slow_delay: args.slow_delay,
            },
            bursts,
            args.seed,
        ),
        recorder: Recorder::new(args.record.as_deref())
            .with_context(|| format!("opening --record {:?}", args.record))?,
        media_seq: Default::default(),
        chat: chat::Chat::new(chat::ChatSettings {
            latency: args.chat_latency,
            answers: args.chat_answers.clone(),
            rate_429: r429,
            rate_500: r500,
        }),
    });
    actix_web::rt::System::new().block_on(async move {
        let data = web::Data::from(state);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
                .configure(routes)
        });
        if args.workers > 0 {
            server = server.workers(args.workers);
        }
        let server = server
            .bind(&args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        let mut stdout = std::io::stdout().lock();
        for addr in server.addrs() {
            writeln!(stdout, "listening on http://{addr}")?;
        }
        stdout.flush()?;
        drop(stdout);
        server.run().await?;
        Ok(())
    })
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/cgi-bin/token", web::get().to(token))
        .route("/cgi-bin/stable_token", web::post().to(stable_token))
        .route("/cgi-bin/message/custom/send", web::post().to(send))
        .route("/cgi-bin/message/custom/typing", web::post().to(typing))
        .route("/cgi-bin/media/upload", web::post().to(upload))
        .route("/healthz", web::get().to(|| async { "ok" }))
        .configure(chat::routes)
        .configure(control::routes);
}

type Answer = Result<Value, Refusal>;

const SYSTEM_ERROR: Refusal = Refusal {
    errcode: faults::ERRCODE_SYSTEM_ERROR,
    errmsg: "system error",
};
const MINUTE_QUOTA: Refusal = Refusal {
    errcode: ERRCODE_MINUTE_QUOTA,
    errmsg: "api minute-quota reach limit, must slower, retry next minute",
};
const DAILY_QUOTA: Refusal = Refusal {
    errcode: ERRCODE_DAILY_QUOTA,
    errmsg: "reach max api daily quota limit",
};

impl State {
    /// The appid behind `token`, or WeChat's refusal.
    fn authorize(&self, token: Option<&str>) -> Result<String, Refusal> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(requests::TOKEN_MISSING)?;
        self.tokens.check(token).map_err(|r| Refusal {
            errcode: r.errcode(),
            errmsg: r.errmsg(),
        })
    }

    /// Checks token-endpoint credentials.
    fn credentials(
        &self,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<String, Refusal> {
        if grant_type != Some("client_credential") {
            return Err(Refusal {
                errcode: 40002,
                errmsg: "invalid grant_type",
            });
        }
        let appid = appid.filter(|a| !a.is_empty()).ok_or(Refusal {
            errcode: 40013,
            errmsg: "invalid appid",
        })?;
        let bad_secret = Refusal {
            errcode: 40125,
            errmsg: "invalid appsecret",
        };
        let secret = secret.filter(|s| !s.is_empty()).ok_or(bad_secret.clone())?;
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        if !apps.is_empty() {
            let expected = apps.get(appid).ok_or(Refusal {
                errcode: 40013,
                errmsg: "invalid appid",
            })?;
            if expected != secret {
                return Err(bad_secret);
            }
        }
        Ok(appid.to_owned())
    }

    /// Waits out the roll's delay, counts the call, and answers in WeChat's JSON.
    async fn answer(
        &self,
        endpoint: &'static str,
        roll: faults::Roll,
        answer: Answer,
    ) -> HttpResponse {
        let (errcode, body) = match answer {
            Ok(body) => (body["errcode"].as_i64().unwrap_or(0), body),
            Err(refusal) => (
                refusal.errcode,
                json!({"errcode": refusal.errcode, "errmsg": format!("{} rid: {}", refusal.errmsg, rid())}),
            ),
        };
        // Counted before waiting: a client that gives up on a slow answer drops this future.
        self.recorder.count(endpoint, errcode, roll.slow);
        if !roll.delay.is_zero() {
            tokio::time::sleep(roll.delay).await;
        }
        HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, "application/json; encoding=utf-8"))
            .body(body.to_string())
    }
}

/// An injected refusal of the roll, if any.
fn injected(roll: &faults::Roll) -> Result<(), Refusal> {
    match roll.refuse {
        None => Ok(()),
        Some(ERRCODE_MINUTE_QUOTA) => Err(MINUTE_QUOTA),
        Some(ERRCODE_DAILY_QUOTA) => Err(DAILY_QUOTA),
        Some(_) => Err(SYSTEM_ERROR),
    }
}

/// WeChat's request id suffix of errmsg.
fn rid() -> String {
    let r: u64 = rand::random();
    format!("{:08x}-{:08x}", (r >> 32) as u32, r as u32)
}

fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

async fn token(state: web::Data<State>, query: web::Query<TokenQuery>) -> HttpResponse {
    let roll = state.faults.roll(false);
    let answer = injected(&roll)
        .and_then(|()| {
            state.credentials(
                query.grant_type.as_deref(),
                query.appid.as_deref(),
                query.secret.as_deref(),
            )
        })
        .map(|appid| {
            let grant = state.tokens.fetch(&appid, Issuer::Classic, false);
            json!({"access_token": grant.access_token, "expires_in": grant.expires_in})
        });
    state.answer("token", roll, answer).await
}

async fn stable_token(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let roll = state.faults.roll(false);
    let answer = injected(&roll)
        .and_then(|()| requests::json_body(&body))
        .and_then(|request| {
            let appid = state.credentials(
                request["grant_type"].as_str(),
                request["appid"].as_str(),
                request["secret"].as_str(),
            )?;
            let force = request["force_refresh"].as_bool().unwrap_or(false);
            let grant = state.tokens.fetch(&appid, Issuer::Stable, force);
            Ok(json!({"access_token": grant.access_token, "expires_in": grant.expires_in}))
        });
    state.answer("stable_token", roll, answer).await
}

#[derive(Debug, Deserialize)]
struct CallQuery {
    access_token: Option<String>,
    #[serde(rename = "type")]
    media_type: Option<String>,
}

async fn send(
    state: web::Data<State>,
    query: web::Query<CallQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let roll = state.faults.roll(true);
    let answer = state
        .authorize(query.access_token.as_deref())
        .and_then(|appid| {
            injected(&roll)?;
            let request = requests::json_body(&body)?;
            requests::check_send(&request)?;
            state.recorder.send(&appid, request, roll.slow);
            Ok(ok())
        });
    state.answer("send", roll, answer).await
}

async fn typing(
    state: web::Data<State>,
    query: web::Query<CallQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let roll = state.faults.roll(true);
    let answer = state
        .authorize(query.access_token.as_deref())
        .and_then(|_| {
            injected(&roll)?;
            requests::check_typing(&requests::json_body(&body)?)?;
            Ok(ok())
        });
    state.answer("typing", roll, answer).await
}

async fn upload(
    state: web::Data<State>,
    request: HttpRequest,
    query: web::Query<CallQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let roll = state.faults.roll(true);
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let answer = state
        .authorize(query.access_token.as_deref())
        .and_then(|_| {
            injected(&roll)?;
            requests::check_upload(query.media_type.as_deref(), content_type, &body)?;
            let n = state
                .media_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            state.recorder.count_upload();
            Ok(json!({
                "type": "image",
                "media_id": format!("SIM_MEDIA_{n}_{:016x}", rand::random::<u64>()),
                "created_at": recorder::unix_ms() / 1000,
            }))
        });
    state.answer("upload", roll, answer).await
}
