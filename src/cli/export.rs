//! `ferrite export`: a checkpoint as a Hugging Face model directory
//! (`transformers` loads it) or a GGUF file (llama.cpp runs it).

use crate::checkpoint::{self, gguf, hf, Prefer};
use crate::engine::DType;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// A directory for `AutoModelForCausalLM.from_pretrained` (GPT2LMHeadModel or LlamaForCausalLM).
    Hf,
    /// One file for llama.cpp (its gpt2 or llama architecture, tokenizer included).
    Gguf,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(value_name = "CKPT")]
    checkpoint: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// The directory (hf) or file (gguf) to write.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Dtype of the weight matrices: f32, bf16 or f16 (default: as the checkpoint stores them).
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<DType>,
}

pub fn run(a: &ExportArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists: give a new path", a.out.display());
    }
    let dir = checkpoint::resolve_dir(&a.checkpoint, Prefer::Best)?;
    let ck = checkpoint::load(&dir, false)?;
    if ck.lora.is_some() {
        bail!(
            "{} is a LoRA adapter (PEFT's files: `peft` loads them onto the exported base); to export one model, `ferrite lora merge` it first",
            dir.display()
        );
    }
    let dtype = a.dtype.unwrap_or(ck.stored);
    let arch = match a.format {
        Format::Hf => hf::export(&ck.config, &ck.params, dtype, &a.out)?,
        Format::Gguf => {
            for note in gguf::caveats(&ck.config) {
                eprintln!("note: {note}");
            }
            // A run directory's name, not its best/ or last/.
            let named = dir.canonicalize().ok().map(|d| match d.file_name().and_then(|n| n.to_str()) {
                Some("best" | "last" | "best.old" | "last.old") => d.parent().map(Path::to_path_buf).unwrap_or(d),
                _ => d,
            });
            let name = named.and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()));
            gguf::export(&ck.config, &ck.params, dtype, &a.out, &name.unwrap_or_else(|| "ferrite".into()))?
        }
    };
    eprintln!(
        "wrote {} ({} as {}, {dtype}) from {}",
        a.out.display(),
        format!("{:?}", a.format).to_lowercase(),
        arch.class(),
        dir.display()
    );
    Ok(())
}
