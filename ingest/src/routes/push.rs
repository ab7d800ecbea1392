//! `GET /wechat/{app}` (URL verification) and `POST /wechat/{app}` (a push).
//!
//! The push path, in order: app → bounded body → signature and timestamp window → decrypt →
//! parse → the intake protocol (`intake.rs`: dedup claim, durable write, done) → answer. The whole
//! of it runs under the ack budget; nothing is answered `success` unless Kafka or the spool stored
//! the record (or an earlier delivery of it). This module is plain HTTP: it maps the intake's
//! outcome to an answer and knows nothing of Redis, Kafka or the spool.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::crypto::AesKey;

use actix_web::http::header;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use common::codec::Format;
use common::dedup::DedupKey;
use common::envelope::{DedupStatus, EnvelopeV1};
use common::message::Message;
use common::push::{self, Mode, PushError, PushQuery};
use common::reply;
use futures::StreamExt;
use tracing::Instrument;

use crate::config::AnswerMode;
use crate::dedup::SignatureUse;
use crate::durable::Durability;
use crate::error::{Chain, IngestError, Malformed};
use crate::intake::Accepted;
use crate::metrics::slot_label;
use crate::state::{AppState, MiniProgram};
use crate::telemetry::Untrusted;

pub async fn verify_url(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    match check_url(&state, path.as_str(), &req) {
        // The body must be exactly echostr: no quotes, no trailing newline.
        Ok(echostr) => HttpResponse::Ok().content_type("text/plain").body(echostr),
        Err(e) => {
            tracing::warn!(
                app = %Untrusted(path.as_str()),
                error = %Untrusted(Chain(&e)),
                "URL verification refused"
            );
            e.error_response()
        }
    }
}

/// The URL check WeChat makes when the push URL is saved: the same signature and the same
/// timestamp window as a push, so a captured verification URL cannot be replayed later.
fn check_url(state: &AppState, app_name: &str, req: &HttpRequest) -> Result<String, IngestError> {
    let app = state.apps.get(app_name).ok_or(IngestError::UnknownApp)?;
    let query = web::Query::<PushQuery>::from_query(req.query_string())
        .map_err(|e| IngestError::Malformed(Malformed::Query(e)))?
        .into_inner();
    // Every live token: when the console saves a new token it checks the URL with it at once,
    // while pushes already under way are still signed with the old one.
    let (tokens, slots) = app.live_tokens(SystemTime::now());
    let (echostr, matched) = push::verify_url_any(&query, &tokens).map_err(classify)?;
    let timestamp = query
        .timestamp
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(IngestError::Unauthenticated(PushError::BadTimestamp))?;
    check_timestamp(timestamp, state.settings.deadline.timestamp_tolerance)?;
    count_slot(state, &app, "token", slots[matched]);
    Ok(echostr.to_owned())
}

/// Counts which configured slot of `credential` authenticated a request.
fn count_slot(state: &AppState, app: &MiniProgram, credential: &str, slot: usize) {
    state
        .metrics
        .credential_slots
        .with_label_values(&[app.name.as_str(), credential, slot_label(slot)])
        .inc();
}

pub async fn receive(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let started = Instant::now();
    let deadline = started + state.settings.deadline.ack_budget;
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    // Values from the request are escaped in every log line: a crafted path must not forge lines.
    let span = tracing::info_span!(
        "push",
        app = %Untrusted(path.as_str()),
        msg = tracing::field::Empty
    );
    // The inner steps respect the deadline themselves; this outer bound is the backstop that makes
    // "every push is answered inside the budget" hold even if one of them did not.
    let result = tokio::time::timeout_at(
        deadline.into(),
        handle(&state, path.as_str(), &req, payload, deadline).instrument(span.clone()),
    )
    .await
    .unwrap_or(Err(IngestError::DeadlineExceeded));
    metrics.in_flight.dec();

    let _entered = span.enter();
    let (response, class) = match result {
        Ok((accepted, response)) => {
            let outcome = match accepted {
                Accepted::Stored(Durability::Kafka(_)) => "accepted",
                Accepted::Stored(Durability::Spool) => "spooled",
                Accepted::Duplicate => "duplicate",
            };
            metrics.pushes.with_label_values(&[outcome]).inc();
            tracing::debug!(outcome, "push answered");
            (response, "ok")
        }
        Err(e) => {
            metrics.pushes.with_label_values(&[e.outcome()]).inc();
            let server_side = e.status_code().is_server_error();
            if server_side {
                tracing::warn!(
                    outcome = e.outcome(),
                    error = %Untrusted(Chain(&e)),
                    "push not stored; WeChat will retry"
                );
            } else {
                tracing::info!(
                    outcome = e.outcome(),
                    error = %Untrusted(Chain(&e)),
                    "push refused"
                );
            }
            let class = if server_side {
                "server_error"
            } else {
                "client_error"
            };
            (e.error_response(), class)
        }
    };
    metrics
        .ack_duration
        .with_label_values(&[class])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn handle(
    state: &AppState,
    app_name: &str,
    req: &HttpRequest,
    payload: web::Payload,
    deadline: Instant,
) -> Result<(Accepted, HttpResponse), IngestError> {
    let app = state.apps.get(app_name).ok_or(IngestError::UnknownApp)?;
    let body = read_body(req, payload, state.settings.server.max_body_bytes).await?;
    let query = web::Query::<PushQuery>::from_query(req.query_string())
        .map_err(|e| IngestError::Malformed(Malformed::Query(e)))?
        .into_inner();
    let format = app
        .format
        .or_else(|| Format::sniff(&body))
        .ok_or(IngestError::Malformed(Malformed::NotXmlOrJson))?;
    let now = SystemTime::now();
    let (tokens, token_slots) = app.live_tokens(now);
    let (keys, key_slots) = app.live_keys(now);

    // Authenticity first: nothing of the body is interpreted before its signature checks out.
    let (verified, token) =
        push::verify_any(&query, &body, format, &tokens, !keys.is_empty()).map_err(classify)?;
    check_timestamp(
        verified.timestamp(),
        state.settings.deadline.timestamp_tolerance,
    )?;
    if verified.mode() == Mode::Plaintext {
        if app.refuses_plaintext() {
            return Err(IngestError::EncryptionRequired);
        }
        // A plaintext signature does not cover the body: within the timestamp window the same
        // signature must not carry a different body. WeChat's retries carry the same body.
        check_signature_reuse(state, &app, &query, &body).await?;
    }
    // The primary key first, then the previous one: during a key rotation WeChat may still
    // encrypt with either.
    let (opened, key) = verified
        .open_any(&keys, app.appid.as_str())
        .map_err(classify)?;
    count_slot(state, &app, "token", token_slots[token]);
    if let Some(key) = key {
        count_slot(state, &app, "aes_key", key_slots[key]);
    }
    let message = opened
        .parse()
        .map_err(|e| IngestError::Malformed(Malformed::Message(e)))?;
    if let Some(id) = message.msg_id() {
        tracing::Span::current().record("msg", tracing::field::display(Untrusted(id.as_str())));
    }
    // Authentic, but addressed to another account (a token or key shared between accounts, or a
    // misrouted URL): refused, so it never reaches this app's conversations.
    if message.to_user_name != app.original_id {
        return Err(IngestError::WrongRecipient);
    }

    // An encrypted answer is sealed with the token and key the push came with.
    let seal = key.map(|k| (tokens[token], keys[k]));
    let answer = answer(&app, seal, &query, &message, opened.mode, opened.format);
    let record = EnvelopeV1 {
        app: app.name.clone(),
        appid: app.appid.clone(),
        dedup_key: DedupKey::for_message(app_name, &message),
        // Set by the intake once it knows whether the dedup check ran.
        dedup: DedupStatus::Checked,
        received_at_ms: unix_millis(),
        format: opened.format,
        mode: opened.mode,
        payload: String::from_utf8_lossy(&opened.payload).into_owned(),
        message,
    };
    let accepted = state.intake.accept(record, deadline).await?;
    Ok((accepted, answer))
}

/// The answer WeChat gets once the push is stored, in the push's own format.
fn answer(
    app: &MiniProgram,
    seal: Option<(&str, &AesKey)>,
    query: &PushQuery,
    message: &Message,
    mode: Mode,
    format: Format,
) -> HttpResponse {
    match app.answer {
        AnswerMode::Success => HttpResponse::Ok()
            .content_type("text/plain")
            .body("success"),
        AnswerMode::Empty => HttpResponse::Ok().finish(),
        // Only real user messages may be transferred, never events.
        AnswerMode::Transfer if message.is_user_message() => {
            let now = unix_millis() / 1000;
            let packet = reply::transfer_customer_service(message, now, format);
            let body = match (mode, seal) {
                (Mode::Plaintext, _) | (_, None) => packet,
                (_, Some((token, key))) => reply::encrypted_reply(
                    key,
                    token,
                    app.appid.as_str(),
                    &packet,
                    now,
                    query.nonce.as_deref().unwrap_or_default(),
                    format,
                ),
            };
            let content_type = match format {
                Format::Xml => "application/xml; charset=utf-8",
                Format::Json => "application/json; charset=utf-8",
            };
            HttpResponse::Ok().content_type(content_type).body(body)
        }
        AnswerMode::Transfer => HttpResponse::Ok()
            .content_type("text/plain")
            .body("success"),
    }
}

/// Refuses a plaintext push whose signature (app, timestamp, nonce, signature) already came with
/// a different body inside the timestamp window. Fails open when Redis cannot answer, counted.
async fn check_signature_reuse(
    state: &AppState,
    app: &MiniProgram,
    query: &PushQuery,
    body: &[u8],
) -> Result<(), IngestError> {
    let part = |v: &Option<String>| v.as_deref().unwrap_or_default().to_owned();
    let signature = [
        app.name.clone(),
        part(&query.timestamp),
        part(&query.nonce),
        part(&query.signature),
    ]
    .join(":");
    // Twice the window: a timestamp is accepted up to the tolerance either side of our clock.
    let tolerance = state.settings.deadline.timestamp_tolerance;
    let ttl = if tolerance.is_zero() {
        state.settings.redis.done_ttl
    } else {
        tolerance * 2
    };
    match state
        .intake
        .dedup()
        .record_signature(&signature, body, ttl)
        .await
    {
        Ok(SignatureUse::First | SignatureUse::SameBody) => Ok(()),
        Ok(SignatureUse::OtherBody) => Err(IngestError::Replayed),
        Err(e) => {
            state
                .metrics
                .dedup_errors
                .with_label_values(&["signature"])
                .inc();
            tracing::warn!(error = %e, "could not check the plaintext signature for reuse; accepting");
            Ok(())
        }
    }
}

/// Maps a protocol failure to the edge's answer: authentication problems are 401, everything
/// about the body's content is 400.
fn classify(e: PushError) -> IngestError {
    match e {
        PushError::MissingParam(_) | PushError::BadSignature | PushError::BadTimestamp => {
            IngestError::Unauthenticated(e)
        }
        PushError::Crypto(_) | PushError::NoKey => IngestError::Undecryptable(e),
        PushError::Malformed(_) => IngestError::Malformed(Malformed::Envelope(e)),
    }
}

fn check_timestamp(timestamp: i64, tolerance: Duration) -> Result<(), IngestError> {
    if tolerance.is_zero() {
        return Ok(());
    }
    let now = unix_millis() / 1000;
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(IngestError::StaleTimestamp);
    }
    Ok(())
}

/// Reads the body, refusing more than `limit` bytes — early from Content-Length when present.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, IngestError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| IngestError::BodyRead)?;
        if body.len() + chunk.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
