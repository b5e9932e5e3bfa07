//! `ferrite export`: a checkpoint as a Hugging Face model directory
//! (`transformers` loads it) or a GGUF file (llama.cpp runs it).

use crate::checkpoint::{self, gguf, hf, Prefer};
use crate::engine::DType;
use crate::model::quantize::weight_types;
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
    /// Dtype of the weight matrices: f32, bf16 or f16, and for gguf q8_0,
    /// q4_0 or q4_k (default: as the checkpoint stores them; a quantized
    /// checkpoint's blocks go into a GGUF file as they are).
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
    let shown = match a.format {
        Format::Gguf => a.dtype.unwrap_or_else(|| ck.weights_type()),
        Format::Hf => dtype,
    };
    let arch = match a.format {
        Format::Hf => {
            if ck.is_quantized() && a.dtype.is_none() {
                eprintln!("note: {} is quantized; its weights are written widened to {dtype}", dir.display());
            }
            hf::export(&ck.config, &ck.params, dtype, &a.out)?
        }
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
            // Vectors in f32, as llama.cpp's converter writes them.
            let specs = crate::model::params::param_specs(&ck.config.model);
            let types: Vec<DType> = match a.dtype {
                Some(d) => weight_types(&ck.config.model, d, None),
                None => ck
                    .types()
                    .into_iter()
                    .zip(&specs)
                    .map(|(t, s)| if s.shape.len() == 1 { DType::F32 } else { t })
                    .collect(),
            };
            let name = name.unwrap_or_else(|| "ferrite".into());
            gguf::export(&ck.config, (&ck.params, &ck.blocks), &types, &a.out, &name)?
        }
    };
    eprintln!(
        "wrote {} ({} as {}, {shown}) from {}",
        a.out.display(),
        format!("{:?}", a.format).to_lowercase(),
        arch.class(),
        dir.display()
    );
    Ok(())
}
