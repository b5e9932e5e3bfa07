//! `ferrite import`: a Hugging Face model (a local directory, or `--hf
//! OWNER/NAME` downloaded through the Hub cache) as a ferrite checkpoint.

use crate::checkpoint::{self, hf, TrainState};
use crate::data::hub::{HubCache, HubRepo, RemoteFile, RepoKind};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(value_name = "DIR", required_unless_present = "hf", conflicts_with = "hf")]
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

/// The files of a model repository that an import reads.
fn wanted(path: &str) -> bool {
    let top = !path.contains('/');
    top && (path.ends_with(".safetensors")
        || [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors.index.json",
        ]
        .contains(&path))
}

/// Downloads (or finds in the cache) what an import of `repo` needs; the local directory.
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
    let files: Vec<RemoteFile> = hub.list()?.into_iter().filter(|f| wanted(&f.path)).collect();
    if !files.iter().any(|f| f.path.ends_with(".safetensors")) {
        bail!("{repo} has no safetensors weights (ferrite reads safetensors, not pytorch_model.bin)");
    }
    // A model's files are all needed at once: nothing is evicted for them.
    let cache = HubCache { dir, limit: u64::MAX };
    let mut local = None;
    for f in &files {
        eprintln!("fetching {repo}/{} ({:.1} MB)", f.path, f.size as f64 / 1e6);
        let path = cache.fetch(&hub, f)?;
        local = path.parent().map(Path::to_path_buf);
    }
    local.context("nothing to download")
}

pub fn run(a: &ImportArgs) -> Result<()> {
    let (dir, name) = match (&a.dir, &a.hf) {
        (_, Some(repo)) => {
            (download(repo, &a.revision, a.cache_dir.as_deref())?, repo.rsplit('/').next().unwrap_or(repo).to_string())
        }
        (Some(d), None) => {
            if !d.is_dir() {
                bail!("{} is not a directory (give a Hugging Face model directory, or --hf OWNER/NAME)", d.display());
            }
            let name = d.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
            (d.clone(), name.unwrap_or_else(|| "model".into()))
        }
        (None, None) => bail!("give a model directory or --hf OWNER/NAME"),
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("out").join(&name));
    if out.exists() {
        bail!("{} already exists: give a new directory with --out", out.display());
    }
    let model = hf::import(&dir)?;
    let state = TrainState { step: 0, best_val_loss: None, tokens_seen: 0, updates: Some(0) };
    checkpoint::save_inference(&out, &model.config, &model.params, model.stored, &state)?;
    let m = &model.config.model;
    eprintln!(
        "imported {} ({:.2}M parameters, {} layers, width {}, {} tokens, {}) from {} into {}",
        model.arch.class(),
        m.num_params() as f64 / 1e6,
        m.n_layer,
        m.n_embd,
        m.vocab_size,
        model.stored,
        dir.display(),
        out.display()
    );
    Ok(())
}
