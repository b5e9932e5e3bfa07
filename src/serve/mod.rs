//! `ferrite serve`: checkpoints behind an OpenAI-compatible HTTP API, with
//! a chat page and a training dashboard. Each model decodes on its own
//! thread as one continuous batch ([`worker`]); the HTTP side (axum on
//! tokio) parses and checks requests ([`openai`]), queues them and streams
//! their text back ([`generation`]).

pub mod errors;
pub mod generation;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod runs;
pub mod worker;

use anyhow::{Context, Result};
use axum::routing::{get, post};
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;

pub use metrics::Metrics;
pub use openai::Limits;
pub use worker::{spawn, ModelHandle};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub limits: Limits,
    /// Where `/runs` finds training runs.
    pub runs: Option<PathBuf>,
}

pub struct AppState {
    pub models: Vec<ModelHandle>,
    pub opts: Options,
    pub metrics: Arc<Metrics>,
    /// Unix time the server started (the models' `created`).
    pub started: u64,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// The model a request names (the first one when it names none), and
    /// its index.
    pub fn model(&self, name: Option<&str>) -> Result<(usize, &ModelHandle), errors::ApiError> {
        match name {
            None | Some("") => Ok((0, &self.models[0])),
            Some(n) => self.models.iter().enumerate().find(|(_, m)| m.name == n).ok_or_else(|| {
                errors::ApiError::unknown_model(n, &self.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>())
            }),
        }
    }

    /// With `--api-key`, the request must carry `Authorization: Bearer KEY`.
    pub fn authorize(&self, headers: &axum::http::HeaderMap) -> Result<(), errors::ApiError> {
        let Some(key) = &self.opts.api_key else { return Ok(()) };
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(k) if constant_time_eq(k.trim().as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(errors::ApiError::unauthorized()),
        }
    }
}

/// Time since the Unix epoch (zero on a clock set before it): response
/// timestamps, ids and fresh seeds.
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Compares without stopping at the first difference (no timing hint).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: Shared) -> Router {
    let limit = state.opts.limits.max_body_bytes;
    Router::new()
        .route("/", get(routes::chat_page))
        .route("/runs", get(routes::runs_page))
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/v1/completions", post(generation::completions))
        .route("/v1/chat/completions", post(generation::chat_completions))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/metrics", get(routes::metrics))
        .route("/api/runs", get(runs::list))
        .route("/api/runs/{name}", get(runs::one))
        .fallback(routes::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until Ctrl-C (or SIGTERM); prints the address first.
pub fn serve(opts: Options, models: Vec<ModelHandle>, metrics: Arc<Metrics>) -> Result<()> {
    let started = unix_time().as_secs();
    let (host, port) = (opts.host.clone(), opts.port);
    let state = Arc::new(AppState { models, opts, metrics, started });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        let addr = listener.local_addr()?;
        let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
        println!("ferrite serve: {} on http://{addr} (chat page at /, API at /v1)", names.join(", "));
        use std::io::Write;
        std::io::stdout().flush().ok();
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown()).await.context("the server failed")
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
    eprintln!("ferrite serve: shutting down");
}
