//! `ferrite lora merge`: folds a LoRA adapter into its base, giving a plain
//! checkpoint (for export, conversion, or inference without the adapter's
//! extra matmuls).

use crate::checkpoint;
use crate::engine::DType;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LoraArgs {
    #[command(subcommand)]
    command: LoraCommand,
}

#[derive(Subcommand, Debug)]
enum LoraCommand {
    /// Write CKPT with the adapter folded into its weights: W += (alpha / r) · B A.
    Merge {
        /// The base checkpoint (or run directory: its best); or a LoRA run
        /// itself, which names its base.
        #[arg(value_name = "CKPT")]
        checkpoint: PathBuf,
        /// The adapter: a LoRA run's checkpoint, or PEFT's adapter files.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// The new checkpoint directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Dtype of the stored weight matrices (default: the base's).
        #[arg(long, value_name = "DTYPE")]
        dtype: Option<DType>,
    },
}

pub fn run(a: &LoraArgs) -> Result<()> {
    match &a.command {
        LoraCommand::Merge { checkpoint: ckpt, adapter, out, dtype } => {
            if out.exists() {
                bail!("{} already exists: give a new directory", out.display());
            }
            let base = checkpoint::merge_adapter(ckpt, adapter.as_deref(), out, *dtype)?;
            eprintln!("wrote {} (the base {} with the adapter folded in)", out.display(), base.display());
            Ok(())
        }
    }
}
