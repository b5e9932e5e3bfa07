//! `ferrite import`: a Hugging Face model (a local directory, or `--hf
//! OWNER/NAME` downloaded through the Hub cache) or a llama.cpp GGUF file
//! as a ferrite checkpoint.

use crate::checkpoint::{self, gguf, hf, TrainState};
use crate::data::hub::{HubCache, HubRepo, RemoteFile, RepoKind};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A Hugging Face model directory (config.json, *.safetensors,
    /// tokenizer.json), or a GGUF file (llama.cpp's gpt2 or llama
    /// architecture, byte-level BPE tokenizer; quantized tensors stay so).
    #[arg(value_name = "DIR|FILE.gguf", required_unless_present = "hf", conflicts_with = "hf")]
    dir: Option<PathBuf>,
    /// Download this Hub model first (OWNER/NAME), e.g. openai-community/gpt2.
    #[arg(long, value_name = "OWNER/NAME")]
    hf: Option<String>,
    /// The Hub revision: a branch, tag or commit.
    #[arg(long, default_value = "main", value_name = "REV")]
    revision: String,
    /// Where Hub downloads are cached (default: the user cache, ferrite/hub).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The new checkpoint directory (default: out/NAME).
    #[arg(long, value_name = "CKPT")]
    out: Option<PathBuf>,
}

/// The files besides the weights that an import reads, when the repository has them.
const SIDE_FILES: [&str; 4] = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"];

/// The cached copy of `file` (its digest checked even when it was cached).
fn fetch_verified(cache: &HubCache, hub: &HubRepo, file: &RemoteFile) -> Result<PathBuf> {
    eprintln!("fetching {}/{} ({:.1} MB)", hub.repo, file.path, file.size as f64 / 1e6);
    cache.fetch(hub, file)
}

/// Downloads (or finds in the cache) what an import of `repo` needs: the
/// side files, and `model.safetensors` or the shards its index lists. The
/// local directory holds exactly those weights.
fn download(repo: &str, revision: &str, cache_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match cache_dir {
        Some(d) => d.to_path_buf(),
        None => dirs::cache_dir().context("no user cache directory; pass --cache-dir")?.join("ferrite").join("hub"),
    };
    let hub = HubRepo {
        kind: RepoKind::Model,
        repo: repo.to_string(),
        revision: revision.to_string(),
        files: "*".into(),
        config: None,
        split: None,
    };
    let listed = hub.list()?;
    let find = |name: &str| listed.iter().find(|f| f.path == name);
    // A model's files are all needed at once: nothing is evicted for them.
    let cache = HubCache { dir, limit: u64::MAX, verify_cached: true };
    let config = find("config.json").with_context(|| format!("{repo} has no config.json: not a model repository"))?;
    let local = fetch_verified(&cache, &hub, config)?.parent().expect("a file in a directory").to_path_buf();
    for name in &SIDE_FILES[1..] {
        if let Some(f) = find(name) {
            fetch_verified(&cache, &hub, f)?;
        }
    }
    let weights: Vec<&RemoteFile> = if let Some(single) = find("model.safetensors") {
        vec![single]
    } else if let Some(index) = find("model.safetensors.index.json") {
        let shard_index = hf::ShardIndex::read(&fetch_verified(&cache, &hub, index)?)?;
        let files = (shard_index.shards().into_iter())
            .map(|s| {
                find(s)
                    .with_context(|| format!("{repo}: the shard index lists {s}, which the repository does not have"))
            })
            .collect::<Result<Vec<_>>>()?;
        if files.is_empty() {
            bail!("{repo}: the shard index lists no shards");
        }
        files
    } else {
        bail!("{repo} has no model.safetensors nor a shard index (ferrite reads safetensors, not pytorch_model.bin)");
    };
    // Weights of another revision, cached under the same branch name, must not be read.
    let keep: Vec<&str> = weights.iter().map(|f| f.path.as_str()).collect();
    for entry in std::fs::read_dir(&local)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") && !keep.contains(&name.as_str()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if find("model.safetensors.index.json").is_none() || find("model.safetensors").is_some() {
        let _ = std::fs::remove_file(local.join("model.safetensors.index.json"));
    }
    for f in weights {
        fetch_verified(&cache, &hub, f)?;
    }
    Ok(local)
}

pub fn run(a: &ImportArgs) -> Result<()> {
    let name = match (&a.dir, &a.hf) {
        (_, Some(repo)) => repo.rsplit('/').next().unwrap_or(repo).to_string(),
        (Some(d), None) => (d.canonicalize().ok())
            .and_then(|p| {
                if p.is_file() { p.file_stem() } else { p.file_name() }.map(|n| n.to_string_lossy().to_string())
            })
            .unwrap_or_else(|| "model".into()),
        (None, None) => bail!("give a model directory or --hf OWNER/NAME"),
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("out").join(&name));
    // Before any download: a run that cannot write its result should not fetch gigabytes.
    if out.exists() {
        bail!("{} already exists: give a new directory with --out", out.display());
    }
    let dir = match (&a.dir, &a.hf) {
        (_, Some(repo)) => download(repo, &a.revision, a.cache_dir.as_deref())?,
        (Some(d), None) if d.is_dir() || d.is_file() => d.clone(),
        (Some(d), None) => bail!(
            "{} does not exist (give a Hugging Face model directory, a GGUF file, or --hf OWNER/NAME)",
            d.display()
        ),
        (None, None) => unreachable!("checked above"),
    };
    let model = if dir.is_file() { gguf::import(&dir)? } else { hf::import(&dir)? };
    let state = TrainState { step: 0, best_val_loss: None, tokens_seen: 0, updates: Some(0) };
    let types: Vec<_> = (model.blocks.iter().zip(checkpoint::param_types(&model.config.model, model.stored)))
        .map(|(b, t)| b.as_ref().map_or(t, |q| q.dtype))
        .collect();
    checkpoint::save_inference(&out, &model.config, (&model.params, &model.blocks), &types, &state)?;
    let quantized = model.blocks.iter().flatten().next().map(|q| format!(", {} blocks kept", q.dtype));
    let m = &model.config.model;
    eprintln!(
        "imported {} ({:.2}M parameters, {} layers, width {}, {} tokens, {}{}) from {} into {}",
        model.arch.class(),
        m.num_params() as f64 / 1e6,
        m.n_layer,
        m.n_embd,
        m.vocab_size,
        model.stored,
        quantized.unwrap_or_default(),
        dir.display(),
        out.display()
    );
    Ok(())
}
