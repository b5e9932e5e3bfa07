//! `ferrite data prepare`: tokenise a corpus into shards for `train --dataset`.

use crate::data::hub::{parse_bytes, HubCache, HubRepo, RepoKind};
use crate::data::prepare::{self, Format, InstructionTemplate, PrepareOptions, SourceOptions};
use crate::data::shards::Dtype;
use crate::data::{ChatTemplate, Tokenizer};
use anyhow::{bail, Context, Result};
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
    #[arg(long, num_args = 1.., required_unless_present = "hf_dataset")]
    input: Vec<String>,
    /// A Hugging Face Hub dataset (OWNER/NAME): its parquet files, downloaded on demand.
    #[arg(long, value_name = "OWNER/NAME")]
    hf_dataset: Option<String>,
    /// Branch, tag or commit of the Hub dataset.
    #[arg(long, default_value = "main")]
    hf_revision: String,
    /// Glob over the dataset's file paths.
    #[arg(long, default_value = "*.parquet")]
    hf_files: String,
    /// Only files under this configuration (first path component, e.g. sample or 20231101.en).
    #[arg(long)]
    hf_config: Option<String>,
    /// Only files of this split (a path component, or files named SPLIT-*).
    #[arg(long)]
    hf_split: Option<String>,
    /// Where Hub files are cached (default: the user cache, ferrite/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Most bytes the cache may hold; least recently used files are evicted first.
    #[arg(long, default_value = "20GB")]
    cache_limit: String,
    /// How to read the inputs.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// The JSON field holding the text (jsonl).
    #[arg(long, default_value = "text")]
    field: String,
    /// The column holding the text (parquet).
    #[arg(long, default_value = "text")]
    column: String,
    /// How `--format chat` writes conversations: `auto` (`special` where the
    /// tokenizer has `<|system|>`/`<|user|>`/`<|assistant|>` tokens, else
    /// `dolly`), `special`, `dolly`, `dialogue` or `none`. The dataset, and
    /// the checkpoints trained on it, record it: `chat` and `serve` use it.
    #[arg(long, default_value = "auto")]
    template: String,
    /// byte, gpt2, p50k_base, cl100k_base, o200k_base, or a tokenizer.json.
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
        // Before `from_spec`, whose complaint (no corpus given) would mislead here.
        bail!(prepare::NEEDS_FIXED_VOCABULARY);
    }
    let tokenizer = Tokenizer::from_spec(&p.tokenizer, None)?;
    let hub = match &p.hf_dataset {
        None => None,
        Some(repo) => {
            let dir = match &p.cache_dir {
                Some(d) => d.clone(),
                None => {
                    dirs::cache_dir().context("no user cache directory; pass --cache-dir")?.join("ferrite").join("hub")
                }
            };
            let ds = HubRepo {
                kind: RepoKind::Dataset,
                repo: repo.clone(),
                revision: p.hf_revision.clone(),
                files: p.hf_files.clone(),
                config: p.hf_config.clone(),
                split: p.hf_split.clone(),
            };
            Some((ds, HubCache { dir, limit: parse_bytes(&p.cache_limit)?, verify_cached: false }))
        }
    };
    let opts = PrepareOptions {
        inputs: p.input.clone(),
        hub,
        source: SourceOptions {
            format: p.format,
            field: p.field.clone(),
            column: p.column.clone(),
            template: InstructionTemplate::default(),
            chat: chat_template(&p.template, &tokenizer)?,
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
    super::out!(
        "prepared {}: train {} documents / {} tokens in {} shards, val {} documents / {} tokens ({} tokenizer, {:?})",
        p.out.display(),
        m.train.documents,
        m.train.tokens,
        m.train.shards.len(),
        m.val.documents,
        m.val.tokens,
        m.tokenizer.kind(),
        m.dtype
    )?;
    let summary = serde_json::json!({
        "seconds": secs,
        "input_bytes": bytes,
        "mb_per_s": bytes as f64 / secs / 1e6,
        "tokens": m.train.tokens + m.val.tokens,
        "tokens_per_s": (m.train.tokens + m.val.tokens) as f64 / secs,
    });
    super::out!("stats: {summary}")?;
    Ok(())
}

/// The template `--format chat` writes with.
fn chat_template(choice: &str, tok: &Tokenizer) -> Result<ChatTemplate> {
    match choice {
        "auto" if ChatTemplate::has_special_tokens(tok) => Ok(ChatTemplate::special()),
        "auto" => Ok(ChatTemplate::dolly()),
        name => ChatTemplate::named(name),
    }
}
