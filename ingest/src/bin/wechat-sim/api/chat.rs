//! A fake OpenAI-compatible chat-completions endpoint (`POST /v1/chat/completions`), for the
//! consumer's `ask` action in tests, demos and benchmarks: it answers with scripted texts in turn
//! (`--chat-answer`, repeatable) or, without any, echoes the user's last message; after
//! `--chat-latency`; with shares of 429 and 500 answers (`--chat-429-rate`, `--chat-500-rate`).
//! `GET /sim/chat` tells how many calls came and how many were answered.
//!
//! It checks only what the consumer must send: a `model`, and `messages` ending with the user's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use rand::Rng;
use serde_json::{json, Value};

use super::State;

/// The dials of the fake model.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub latency: Duration,
    pub answers: Vec<String>,
    pub rate_429: f64,
    pub rate_500: f64,
}

#[derive(Debug)]
pub struct Chat {
    settings: ChatSettings,
    calls: AtomicU64,
    answered: AtomicU64,
}

impl Chat {
    pub fn new(settings: ChatSettings) -> Chat {
        Chat {
            settings,
            calls: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(completions))
        .route("/sim/chat", web::get().to(stats));
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "calls": state.chat.calls.load(Ordering::Relaxed),
        "answered": state.chat.answered.load(Ordering::Relaxed),
    }))
}

async fn completions(state: web::Data<State>, body: web::Json<Value>) -> HttpResponse {
    let chat = &state.chat;
    let call = chat.calls.fetch_add(1, Ordering::Relaxed);
    let s = &chat.settings;
    if !s.latency.is_zero() {
        actix_web::rt::time::sleep(s.latency).await;
    }
    let dice: f64 = rand::rng().random();
    if dice < s.rate_429 {
        return HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "1"))
            .json(json!({"error": {"message": "rate limited (simulated)", "type": "rate_limit"}}));
    }
    if dice < s.rate_429 + s.rate_500 {
        return HttpResponse::InternalServerError().json(
            json!({"error": {"message": "server error (simulated)", "type": "server_error"}}),
        );
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str));
    let (false, Some(question)) = (model.is_empty(), last_user) else {
        return HttpResponse::BadRequest().json(json!({"error": {
            "message": "a model and messages ending with the user's are required",
            "type": "invalid_request_error"
        }}));
    };
    let content = if s.answers.is_empty() {
        format!("Echo: {question}")
    } else {
        s.answers[(call % s.answers.len() as u64) as usize].clone()
    };
    chat.answered.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-sim-{call}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }))
}
