//! `ferrite data prepare`: tokenise a corpus into shards for `train --dataset`.

use crate::data::prepare::{self, Format, InstructionTemplate, PrepareOptions, SourceOptions};
use crate::data::shards::Dtype;
use crate::data::Tokenizer;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DataCommand {
    /// Tokenise text, JSONL, parquet or instruction files into train/val token shards.
    Prepare(PrepareArgs),
}

#[derive(clap::Args, Debug)]
struct PrepareArgs {
    /// Files, directories (every file in them) or glob patterns ("shards/*.parquet").
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// How to read the inputs.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// The JSON field holding the text (jsonl).
    #[arg(long, default_value = "text")]
    field: String,
    /// The column holding the text (parquet).
    #[arg(long, default_value = "text")]
    column: String,
    /// byte, gpt2, cl100k_base, o200k_base, or a tokenizer.json.
    #[arg(long, short = 't', default_value = "gpt2")]
    tokenizer: String,
    /// Output dataset directory.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of documents (chosen by a hash of their text) held out for validation.
    #[arg(long, default_value_t = 0.01)]
    val_fraction: f64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: u64,
    /// Token width: u16 (vocabularies up to 65536) or u32; default: the smallest that fits.
    #[arg(long, value_parser = ["u16", "u32"])]
    dtype: Option<String>,
    /// Replace an existing dataset at --out.
    #[arg(long)]
    force: bool,
}

pub fn run(a: &DataArgs) -> Result<()> {
    let DataCommand::Prepare(p) = &a.command;
    if p.tokenizer == "char" {
        bail!("data prepare needs a fixed vocabulary: use byte, gpt2, cl100k_base, o200k_base or a tokenizer.json");
    }
    let tokenizer = Tokenizer::from_spec(&p.tokenizer, None)?;
    let opts = PrepareOptions {
        inputs: p.input.clone(),
        source: SourceOptions {
            format: p.format,
            field: p.field.clone(),
            column: p.column.clone(),
            template: InstructionTemplate::default(),
        },
        tokenizer,
        out: p.out.clone(),
        val_fraction: p.val_fraction,
        shard_tokens: p.shard_tokens,
        dtype: p.dtype.as_deref().map(|d| if d == "u16" { Dtype::U16 } else { Dtype::U32 }),
        force: p.force,
        progress: true,
    };
    let t0 = Instant::now();
    let m = prepare::prepare(&opts)?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes: u64 = m.sources.iter().map(|s| s.bytes).sum();
    println!(
        "prepared {}: train {} documents / {} tokens in {} shards, val {} documents / {} tokens ({} tokenizer, {:?})",
        p.out.display(),
        m.train.documents,
        m.train.tokens,
        m.train.shards.len(),
        m.val.documents,
        m.val.tokens,
        m.tokenizer.kind(),
        m.dtype
    );
    let summary = serde_json::json!({
        "seconds": secs,
        "input_bytes": bytes,
        "mb_per_s": bytes as f64 / secs / 1e6,
        "tokens": m.train.tokens + m.val.tokens,
        "tokens_per_s": (m.train.tokens + m.val.tokens) as f64 / secs,
    });
    println!("stats: {summary}");
    Ok(())
}
