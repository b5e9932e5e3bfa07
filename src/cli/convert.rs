//! `ferrite convert`: a checkpoint's weights in another dtype, as an
//! inference checkpoint (no optimizer state): bf16 or f16 halves its size;
//! a quantized dtype is `ferrite quantize` with its default head.

use crate::checkpoint;
use crate::engine::DType;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(value_name = "CKPT")]
    checkpoint: PathBuf,
    /// The new checkpoint directory.
    #[arg(value_name = "OUT")]
    out: PathBuf,
    /// Dtype of the stored tensors: bf16, f16, f32, or q8_0, q4_0, q4_k.
    #[arg(long, value_name = "DTYPE")]
    dtype: DType,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists: give a new directory", a.out.display());
    }
    let src = checkpoint::convert(&a.checkpoint, &a.out, a.dtype, None)?;
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1u64 << 20) as f64;
    let (before, after) = (size(src.join("model.safetensors")), size(a.out.join("model.safetensors")));
    eprintln!(
        "wrote {} ({}: {after:.1} MiB of weights, from {before:.1} MiB in {})",
        a.out.display(),
        a.dtype,
        src.display()
    );
    Ok(())
}
