//! `ferrite serve`: checkpoints behind an OpenAI-compatible API, a chat page
//! and a training dashboard (see `crate::serve`).

use super::precision::{KvArgs, WeightArgs};
use crate::engine::Backend;
use crate::generate::chat::ChatTemplate;
use crate::serve::{self, Limits, Metrics, Options};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A checkpoint or run directory to serve, as `DIR` (named after the
    /// directory) or `NAME=DIR`; repeat it to serve several models (the
    /// request's `model` picks one; the first is the default).
    #[arg(long = "checkpoint", value_name = "[NAME=]DIR", required = true)]
    checkpoints: Vec<String>,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences each model decodes together (continuous batching).
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Sequences (a request's choices) waiting for a slot, per model; past
    /// it: HTTP 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on the API.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Show the training runs under DIR at /runs (live curves).
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
    /// How chat messages are written for the model: `auto` (the
    /// checkpoint's own, else `special` where the tokenizer has
    /// `<|system|>`/`<|user|>`/`<|assistant|>` tokens, else the first its
    /// vocabulary can write), `special`, `dolly`, `dialogue` or `none`.
    #[arg(long, default_value = "auto")]
    template: String,
    /// Largest request body, in bytes (past it: HTTP 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Most messages in one chat request.
    #[arg(long, default_value_t = 256)]
    max_messages: usize,
    /// Most tokens one choice may ask for (also at most the model's context).
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Most choices (prompts × n) in one request.
    #[arg(long, default_value_t = 16)]
    max_choices: usize,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    kv: KvArgs,
}

super::on_device!(ServeArgs, run_serve);

/// `NAME=DIR` or `DIR` (named after the directory).
fn named(spec: &str) -> Result<(String, PathBuf)> {
    if let Some((name, dir)) = spec.split_once('=') {
        if name.is_empty() || dir.is_empty() {
            bail!("--checkpoint {spec:?}: give NAME=DIR or DIR");
        }
        return Ok((name.to_string(), PathBuf::from(dir)));
    }
    let dir = PathBuf::from(spec);
    let name = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| spec.to_string());
    Ok((name, dir))
}

fn run_serve<B: Backend>(a: &ServeArgs, be: B) -> Result<()> {
    for (what, v, max) in
        [("--parallel", a.parallel, 1024), ("--queue", a.queue, 1 << 20), ("--max-choices", a.max_choices, 1024)]
    {
        if !(1..=max).contains(&v) {
            bail!("{what} must be between 1 and {max}, got {v}");
        }
    }
    if a.max_body_bytes < 1024 || a.max_messages == 0 || a.max_tokens == 0 {
        bail!("--max-body-bytes must be at least 1024, --max-messages and --max-tokens at least 1");
    }
    if let Some(dir) = &a.runs {
        if !dir.is_dir() {
            bail!("--runs {}: not a directory", dir.display());
        }
    }
    let kv = a.kv.check()?;
    if a.weights.adapter.is_some() && a.checkpoints.len() > 1 {
        bail!("--adapter applies to one checkpoint; to serve several, give LoRA runs as --checkpoint NAME=RUN");
    }
    let metrics = Arc::new(Metrics::default());
    let mut models = Vec::new();
    for spec in &a.checkpoints {
        let (name, dir) = named(spec)?;
        if models.iter().any(|m: &serve::ModelHandle| m.name == name) {
            bail!("two checkpoints are named {name:?}: name them with --checkpoint NAME=DIR");
        }
        models.push(load(a, be.clone(), name, &dir, kv, metrics.clone())?);
    }
    let limits = Limits {
        max_tokens: a.max_tokens,
        max_messages: a.max_messages,
        max_choices: a.max_choices,
        max_body_bytes: a.max_body_bytes,
    };
    let opts = Options { host: a.host.clone(), port: a.port, api_key: a.api_key.clone(), limits, runs: a.runs.clone() };
    serve::serve(opts, models, metrics)
}

fn load<B: Backend>(
    a: &ServeArgs,
    be: B,
    name: String,
    dir: &Path,
    kv: crate::engine::DType,
    metrics: Arc<Metrics>,
) -> Result<serve::ModelHandle> {
    let crate::checkpoint::Loaded { model, config: ck, dir, .. } = a.weights.load_decoding(be, dir, kv)?;
    let tok = Arc::new(ck.tokenizer.clone());
    let (template_name, template) = ChatTemplate::choose(&a.template, ck.chat_template.as_ref(), &tok, None)?;
    let kv_bytes = crate::model::decode::cache_bytes(&model.cfg, a.parallel, kv);
    let adapter = model.lora.as_ref().map_or(String::new(), |l| {
        format!(" with a LoRA adapter (rank {}, {} adapted projections)", l.layout.rank, l.layout.adapters.len())
    });
    eprintln!(
        "model {name}: {}{adapter} ({:.1}M parameters, context {}), chat template {template_name}, \
         KV cache {:.1} MiB for {} sequences",
        dir.display(),
        model.cfg.num_params() as f64 / 1e6,
        model.cfg.block_size,
        kv_bytes as f64 / (1 << 20) as f64,
        a.parallel
    );
    serve::spawn(name, model, tok, template, (a.parallel, a.queue), metrics)
}
