//! `ferrite tokenizer`: train a byte-level BPE, encode, decode, and measure
//! compression and speed.

use crate::checkpoint::{self, Prefer};
use crate::data::dataset::read_corpus;
use crate::data::files::write_atomic;
use crate::data::tokenizer::utf8;
use crate::data::{HfTokenizer, Tokenizer};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenizerCommand {
    /// Train a byte-level BPE (GPT-2 style) on text files; writes a Hugging Face tokenizer.json.
    Train(TrainArgs),
    /// Print the token ids of a text (one line, space-separated).
    Encode(EncodeArgs),
    /// Print the text of token ids (arguments, or whitespace-separated on stdin).
    Decode(DecodeArgs),
    /// Tokens per byte (compression) and encoding speed on files.
    Stats(StatsArgs),
}

/// Which tokenizer: a name (byte, gpt2, cl100k_base, o200k_base), a
/// tokenizer.json path, or a checkpoint directory (its tokenizer).
#[derive(clap::Args, Debug)]
struct Which {
    /// byte, gpt2, cl100k_base, o200k_base, a tokenizer.json, or a checkpoint directory.
    #[arg(long, short = 't', value_name = "NAME|FILE|CHECKPOINT")]
    tokenizer: String,
}

impl Which {
    fn load(&self) -> Result<Tokenizer> {
        let path = Path::new(&self.tokenizer);
        if path.is_dir() {
            let dir = checkpoint::resolve_dir(path, Prefer::Best)?;
            return Ok(checkpoint::load_config(&dir)?.tokenizer);
        }
        if self.tokenizer == "char" {
            bail!("a char tokenizer is built from its corpus: pass a checkpoint directory that uses one");
        }
        Tokenizer::from_spec(&self.tokenizer, None)
    }
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Tokens in the vocabulary, the 256 bytes and 4 special tokens included.
    #[arg(long)]
    vocab_size: usize,
    /// Text files to learn from (UTF-8).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Where to write the tokenizer.
    #[arg(long, default_value = "tokenizer.json")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct EncodeArgs {
    #[command(flatten)]
    which: Which,
    /// The text (default: read FILE, or stdin).
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DecodeArgs {
    #[command(flatten)]
    which: Which,
    ids: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct StatsArgs {
    #[command(flatten)]
    which: Which,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(a: &TokenizerArgs) -> Result<()> {
    match &a.command {
        TokenizerCommand::Train(t) => train(t),
        TokenizerCommand::Encode(e) => encode(e),
        TokenizerCommand::Decode(d) => decode(d),
        TokenizerCommand::Stats(s) => stats(s),
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    let mut bytes = 0;
    let mut texts = Vec::with_capacity(a.input.len());
    for path in &a.input {
        let corpus = read_corpus(path)?;
        let text = utf8(&corpus).with_context(|| format!("data file {}", path.display()))?.to_string();
        bytes += text.len();
        texts.push(text);
    }
    let t0 = Instant::now();
    // Lines are the units the trainer counts words in, in parallel.
    let tok = HfTokenizer::train_bpe(a.vocab_size, texts.iter().flat_map(|t| t.lines()))?;
    let secs = t0.elapsed().as_secs_f64();
    write_atomic(&a.out, tok.to_json(true)?.as_bytes())?;
    let tokens: usize = texts.iter().map(|t| tok.encode(t).map(|ids| ids.len())).sum::<Result<usize>>()?;
    super::out!(
        "trained a {}-token byte-level BPE on {} bytes in {secs:.2} s: {:.3} tokens per byte on it; wrote {}",
        tok.vocab_size(),
        bytes,
        tokens as f64 / bytes as f64,
        a.out.display()
    )?;
    Ok(())
}

fn encode(a: &EncodeArgs) -> Result<()> {
    let tok = a.which.load()?;
    // Bytes, not text: the byte tokenizer takes any (bytes in = bytes out).
    let (bytes, name) = match (&a.text, &a.file) {
        (Some(t), _) => (t.as_bytes().to_vec(), "--text".to_string()),
        (None, Some(f)) => (read_corpus(f)?, format!("data file {}", f.display())),
        (None, None) => (read_stdin()?, "stdin".to_string()),
    };
    let ids = tok.encode_bytes(&bytes).context(name)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "))?;
    Ok(out.flush()?)
}

fn decode(a: &DecodeArgs) -> Result<()> {
    let tok = a.which.load()?;
    let words: Vec<String> = if a.ids.is_empty() {
        let text = read_stdin()?;
        utf8(&text).context("stdin")?.split_whitespace().map(String::from).collect()
    } else {
        a.ids.clone()
    };
    let vocab = tok.vocab_size();
    let ids = words
        .iter()
        .map(|w| match w.parse::<u32>() {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => bail!("{w:?} is not a token id of this {vocab}-token vocabulary"),
        })
        .collect::<Result<Vec<u32>>>()?;
    // The tokens' bytes as they are (a byte model's output need not be UTF-8).
    let mut out = std::io::stdout().lock();
    out.write_all(&tok.decode_bytes(&ids))?;
    Ok(out.flush()?)
}

/// Most bytes read from stdin: an endless one (`< /dev/zero`) is refused.
const STDIN_LIMIT: u64 = 1 << 30;

fn read_stdin() -> Result<Vec<u8>> {
    let mut b = Vec::new();
    std::io::stdin().take(STDIN_LIMIT + 1).read_to_end(&mut b).context("cannot read stdin")?;
    if b.len() as u64 > STDIN_LIMIT {
        bail!("stdin holds more than {} MiB; give a file instead", STDIN_LIMIT >> 20);
    }
    Ok(b)
}

fn stats(a: &StatsArgs) -> Result<()> {
    let tok = a.which.load()?;
    // Loads lazily built tables (the OpenAI ranks) before the clock starts.
    tok.encode("warm up")?;
    let (mut bytes, mut tokens, mut secs) = (0usize, 0usize, 0.0);
    for f in &a.files {
        let text = read_corpus(f)?;
        let t0 = Instant::now();
        let ids = tok.encode_bytes(&text).with_context(|| format!("data file {}", f.display()))?;
        let dt = t0.elapsed().as_secs_f64();
        super::out!(
            "{}: {} bytes, {} tokens, {:.4} tokens per byte, {:.2} MB/s",
            f.display(),
            text.len(),
            ids.len(),
            ids.len() as f64 / text.len() as f64,
            text.len() as f64 / dt / 1e6
        )?;
        bytes += text.len();
        tokens += ids.len();
        secs += dt;
    }
    let summary = serde_json::json!({
        "tokenizer": tok.kind(),
        "vocab_size": tok.vocab_size(),
        "bytes": bytes,
        "tokens": tokens,
        "tokens_per_byte": tokens as f64 / bytes as f64,
        "bytes_per_token": bytes as f64 / tokens.max(1) as f64,
        "encode_mb_per_s": bytes as f64 / secs / 1e6,
    });
    super::out!("stats: {summary}")?;
    Ok(())
}
