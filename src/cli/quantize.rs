//! `ferrite quantize`: a checkpoint's weight matrices as GGML's block
//! types (Q8_0, Q4_0, Q4_K), an inference checkpoint that sample, chat,
//! eval, bench and serve load, and `export --format gguf` writes as is.

use crate::checkpoint::{self, Prefer};
use crate::engine::DType;
use crate::model::quantize::default_head;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(value_name = "CKPT")]
    checkpoint: PathBuf,
    /// The weights' type: q8_0 (8.5 bits a weight), q4_0 or q4_k (4.5).
    #[arg(long, value_name = "TYPE")]
    to: DType,
    /// The new checkpoint directory.
    #[arg(long, value_name = "CKPT2")]
    out: PathBuf,
    /// The LM head's type (and the token embeddings' when they are tied):
    /// any of f32, bf16, f16, q8_0, q4_0, q4_k. Default: q8_0 (the head's
    /// errors reach the logits directly; llama.cpp keeps it wider too).
    #[arg(long, value_name = "TYPE")]
    head: Option<DType>,
}

pub fn run(a: &QuantizeArgs) -> Result<()> {
    if !a.to.is_quantized() {
        bail!("--to takes q8_0, q4_0 or q4_k (for {}, use `ferrite convert --dtype {}`)", a.to, a.to);
    }
    if a.out.exists() {
        bail!("{} already exists: give a new directory", a.out.display());
    }
    let src = checkpoint::convert(&a.checkpoint, &a.out, a.to, a.head)?;
    let ck = checkpoint::load(&checkpoint::resolve_dir(&a.out, Prefer::Best)?, false)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in ck.types() {
        *counts.entry(t.to_string()).or_default() += 1;
    }
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1u64 << 20) as f64;
    let (before, after) = (size(src.join("model.safetensors")), size(a.out.join("model.safetensors")));
    let tensors: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {} ({}, head {}: {after:.1} MiB of weights, from {before:.1} MiB in {}; tensors: {})",
        a.out.display(),
        a.to,
        a.head.unwrap_or(default_head(a.to)),
        src.display(),
        tensors.join(", ")
    );
    Ok(())
}
