//! The small endpoints: health, models, tokenize/detokenize, metrics, the
//! pages, and what answers unknown paths.

use super::errors::ApiError;
use super::openai::{object, read};
use super::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

const CHAT_PAGE: &str = include_str!("web/chat.html");
const RUNS_PAGE: &str = include_str!("web/runs.html");

/// A JSON request's body, or the error a client gets for it (415 when it
/// is not declared JSON, 413 past the limit).
pub fn json_body(headers: &HeaderMap, b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !kind.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::not_json());
    }
    body(b, limit)
}

/// The body, or the error a client gets for it (413 past the limit).
fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })
}

/// Records the request under `endpoint` and turns an error into its response.
pub fn respond(s: &Shared, endpoint: &str, r: Result<Response, ApiError>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    s.metrics.record_request(endpoint, resp.status().as_u16());
    resp
}

pub async fn chat_page() -> Html<&'static str> {
    Html(CHAT_PAGE)
}

pub async fn runs_page() -> Html<&'static str> {
    Html(RUNS_PAGE)
}

pub async fn health(State(s): State<Shared>) -> Response {
    if let Some(m) = s.models.iter().find(|m| !m.alive.load(std::sync::atomic::Ordering::SeqCst)) {
        return respond(&s, "health", Err(ApiError::stopped(&m.name)));
    }
    let slots: usize = s.models.iter().map(|m| m.parallel).sum();
    let busy: usize = s.models.iter().map(|m| m.active.load(std::sync::atomic::Ordering::SeqCst)).sum();
    respond(
        &s,
        "health",
        Ok(Json(json!({"status": "ok", "slots_idle": slots - busy.min(slots), "slots_processing": busy}))
            .into_response()),
    )
}

pub async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let r = s.authorize(&headers).map(|_| {
        let data: Vec<_> = s
            .models
            .iter()
            .map(|m| {
                json!({
                    "id": m.name, "object": "model", "created": s.started, "owned_by": "ferrite",
                    "meta": {"context_length": m.block_size, "vocab_size": m.vocab_size, "parallel": m.parallel},
                })
            })
            .collect();
        Json(json!({"object": "list", "data": data})).into_response()
    });
    respond(&s, "models", r)
}

#[derive(Deserialize)]
struct TokenizeBody {
    content: String,
    model: Option<String>,
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
    model: Option<String>,
}

pub async fn tokenize(State(s): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        s.authorize(&headers)?;
        let req: TokenizeBody = read(&object(&json_body(&headers, b, s.opts.limits.max_body_bytes)?)?, None)?;
        let (_, m) = s.model(req.model.as_deref())?;
        let tokens = m
            .tokenizer
            .encode(&req.content)
            .map_err(|e| ApiError::invalid_param("content", format!("cannot tokenize the content: {e:#}")))?;
        Ok(Json(json!({"tokens": tokens})).into_response())
    })();
    respond(&s, "tokenize", r)
}

pub async fn detokenize(State(s): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        s.authorize(&headers)?;
        let req: DetokenizeBody = read(&object(&json_body(&headers, b, s.opts.limits.max_body_bytes)?)?, None)?;
        let (_, m) = s.model(req.model.as_deref())?;
        if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= m.vocab_size) {
            return Err(ApiError::invalid_param(
                "tokens",
                format!("token {bad} is outside the model's vocabulary of {}", m.vocab_size),
            ));
        }
        Ok(Json(json!({"content": m.tokenizer.decode(&req.tokens)})).into_response())
    })();
    respond(&s, "detokenize", r)
}

pub async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let r = s.authorize(&headers).map(|_| {
        let models: Vec<(String, usize, usize)> = s
            .models
            .iter()
            .map(|m| {
                use std::sync::atomic::Ordering::SeqCst;
                (m.name.clone(), m.waiting.load(SeqCst), m.active.load(SeqCst))
            })
            .collect();
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&models)).into_response()
    });
    respond(&s, "metrics", r)
}

pub async fn not_found(State(s): State<Shared>, uri: Uri) -> Response {
    respond(&s, "other", Err(ApiError::not_found(uri.path())))
}
