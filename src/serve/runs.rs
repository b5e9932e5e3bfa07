//! The training dashboard's data (`--runs DIR`): the runs under DIR (every
//! directory with a `metrics.jsonl`), and each run's records as
//! `ferrite train` appends them, read incrementally (`?since=N`).

use super::errors::ApiError;
use super::routes::respond;
use super::Shared;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// A metrics log larger than this is not served (a run logs ~100 bytes a line).
const MAX_LOG_BYTES: u64 = 64 << 20;
/// Runs the dashboard lists at most.
const MAX_RUNS: usize = 200;

fn runs_dir(s: &Shared) -> Result<&PathBuf, ApiError> {
    s.opts.runs.as_ref().ok_or_else(|| ApiError::invalid("the server was started without --runs DIR"))
}

/// The run directories under `dir` (itself too, if it is one), by name.
fn list_runs(dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    let mut runs = Vec::new();
    if dir.join("metrics.jsonl").is_file() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
        runs.push((name, dir.to_path_buf()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().take(10_000) {
            let p = e.path();
            if p.join("metrics.jsonl").is_file() {
                runs.push((e.file_name().to_string_lossy().into_owned(), p));
            }
        }
    }
    runs.sort();
    runs.dedup_by(|a, b| a.0 == b.0);
    runs
}

/// The run's training settings, from its newest checkpoint's config.
fn run_config(run: &std::path::Path) -> Value {
    for ck in ["last", "best"] {
        if let Ok(text) = std::fs::read_to_string(run.join(ck).join("config.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return json!({"model": v.get("model"), "training": v.get("train")});
            }
        }
    }
    Value::Null
}

/// The whole lines of a run's log from line `since` on, and how many there are.
fn read_log(run: &std::path::Path, since: usize) -> Result<(Vec<Value>, usize), ApiError> {
    let path = run.join("metrics.jsonl");
    let len =
        std::fs::metadata(&path).map(|m| m.len()).map_err(|e| ApiError::server(format!("cannot read the run: {e}")))?;
    if len > MAX_LOG_BYTES {
        return Err(ApiError::server(format!("the run's metrics.jsonl is over {} MiB", MAX_LOG_BYTES >> 20)));
    }
    let text = std::fs::read(&path).map_err(|e| ApiError::server(format!("cannot read the run: {e}")))?;
    let text = String::from_utf8_lossy(&text);
    // A line still being written (no newline yet) waits for the next poll.
    let lines: Vec<&str> = text.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
    let records = lines.iter().skip(since).filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok((records, lines.len()))
}

/// Runs `f` (file reading) on a blocking thread, off the runtime.
async fn blocking(s: &Shared, f: impl FnOnce(&Shared) -> Result<Response, ApiError> + Send + 'static) -> Response {
    let state = s.clone();
    let r = tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| Err(ApiError::server(format!("reading the runs failed: {e}"))));
    respond(s, "runs", r)
}

pub async fn list(State(s): State<Shared>, headers: HeaderMap) -> Response {
    blocking(&s, move |s| {
        s.authorize(&headers)?;
        let runs: Vec<Value> = list_runs(runs_dir(s)?)
            .into_iter()
            .take(MAX_RUNS)
            .map(|(name, path)| {
                let (records, lines) = read_log(&path, 0).unwrap_or_default();
                let last = |kind: &str| records.iter().rev().find(|r| r["kind"] == kind).cloned();
                json!({
                    "name": name, "lines": lines, "config": run_config(&path),
                    "last_train": last("train"), "last_eval": last("eval"),
                })
            })
            .collect();
        Ok(Json(json!({"runs": runs})).into_response())
    })
    .await
}

#[derive(Deserialize)]
pub struct Since {
    since: Option<usize>,
}

pub async fn one(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<Since>, QueryRejection>,
) -> Response {
    blocking(&s, move |s| {
        s.authorize(&headers)?;
        let since = q.map_err(|e| ApiError::invalid_param("since", format!("since must be a line number: {e}")))?.since;
        // Only names the listing gives: no paths from the client.
        let runs = list_runs(runs_dir(s)?);
        let Some((_, path)) = runs.iter().find(|(n, _)| *n == name) else {
            return Err(ApiError::not_found(&format!("/api/runs/{name}")));
        };
        let (records, lines) = read_log(path, since.unwrap_or(0))?;
        Ok(Json(json!({"name": name, "records": records, "lines": lines, "config": run_config(path)})).into_response())
    })
    .await
}
