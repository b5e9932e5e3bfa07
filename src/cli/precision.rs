//! `--dtype` and `--kv-dtype` of the inference commands.

use crate::checkpoint::{self, Loaded};
use crate::engine::{Backend, DType};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// How the weights are held in memory.
#[derive(clap::Args, Debug, Clone)]
pub struct WeightArgs {
    /// Weight matrices in memory: f32, bf16 or f16 (default: as the
    /// checkpoint stores them). 16-bit weights take half the memory and
    /// decode faster; the arithmetic stays f32.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<DType>,
    /// A LoRA adapter to apply, unmerged: a LoRA run's checkpoint or a
    /// directory of PEFT's adapter files (adapter_config.json,
    /// adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

/// What the KV cache stores.
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// Keys and values in the KV cache: bf16 (half the memory; each decoding
    /// step reads half the bytes: faster, see BENCHMARKS.md) or f32.
    #[arg(long, value_name = "DTYPE", default_value = "bf16")]
    pub kv_dtype: DType,
}

impl WeightArgs {
    /// Loads a checkpoint (or a run's best) with these weights.
    pub fn load<B: Backend>(&self, be: B, dir: &Path) -> Result<Loaded<B>> {
        let mut loaded = checkpoint::load_model_as(be, dir, self.dtype)?;
        if let Some(adapter) = &self.adapter {
            checkpoint::attach_adapter(&mut loaded, adapter)?;
        }
        Ok(loaded)
    }

    /// [`Self::load`] for decoding, its KV cache in `kv`.
    pub fn load_decoding<B: Backend>(&self, be: B, dir: &Path, kv: DType) -> Result<Loaded<B>> {
        let mut loaded = self.load(be, dir)?;
        loaded.model.kv_dtype = kv;
        Ok(loaded)
    }
}

impl KvArgs {
    pub fn check(&self) -> Result<DType> {
        if self.kv_dtype == DType::F16 {
            bail!("--kv-dtype takes f32 or bf16");
        }
        Ok(self.kv_dtype)
    }
}
