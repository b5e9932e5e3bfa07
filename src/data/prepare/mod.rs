//! `ferrite data prepare`: documents from text, JSONL, parquet or
//! instruction files → token shards and a manifest.
//!
//! - Streaming: documents are read and tokenised in batches of a few MB
//!   (tokenised in parallel), so memory does not grow with the corpus.
//! - Split by a hash of each document's text: no document is in both
//!   splits, and the split does not depend on input order or sharding.
//! - Every document starts with the end-of-text token, when the tokenizer
//!   has one, so documents are separated the way GPT-2 separated them.
//! - Output is written to a hidden sibling directory and renamed into place
//!   with its manifest last: a directory with a manifest is always complete,
//!   and an interrupted run is simply restarted (its leftovers are removed).

mod parquet;
mod sources;
mod writer;

pub use sources::{expand_inputs, read_documents, Doc, Format, InstructionTemplate, SourceOptions};

use super::files::{sha256_file, write_atomic};
use super::hub::{HubCache, HubRepo, RemoteFile};
use super::shards::{Dtype, Manifest, SourceInfo, SplitInfo, MANIFEST};
use super::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use sources::resolve_format;
use std::path::{Path, PathBuf};
use std::time::Instant;
use writer::ShardWriter;

pub struct PrepareOptions {
    pub inputs: Vec<String>,
    /// Files of a Hugging Face Hub dataset, fetched one at a time through a cache.
    pub hub: Option<(HubRepo, HubCache)>,
    pub source: SourceOptions,
    pub tokenizer: Tokenizer,
    pub out: PathBuf,
    pub val_fraction: f64,
    pub shard_tokens: u64,
    /// Force a token width; by default u16 when the vocabulary fits.
    pub dtype: Option<Dtype>,
    /// Replace an existing dataset at `out`.
    pub force: bool,
    pub progress: bool,
}

/// Text read per batch of documents tokenised together.
const BATCH_BYTES: usize = 8 << 20;

/// Why the char tokenizer cannot prepare a dataset: its vocabulary is the
/// corpus's own characters, unknown until the whole corpus is read.
pub const NEEDS_FIXED_VOCABULARY: &str =
    "data prepare needs a fixed vocabulary: use byte, gpt2, cl100k_base, o200k_base or a tokenizer.json";

pub fn prepare(o: &PrepareOptions) -> Result<Manifest> {
    if !(0.0..1.0).contains(&o.val_fraction) {
        bail!("--val-fraction must be in [0, 1), got {}", o.val_fraction);
    }
    if o.shard_tokens == 0 {
        bail!("--shard-tokens must be at least 1");
    }
    if matches!(o.tokenizer, Tokenizer::Char { .. }) {
        bail!(NEEDS_FIXED_VOCABULARY);
    }
    let vocab = o.tokenizer.vocab_size();
    let dtype = match o.dtype {
        Some(Dtype::U16) if vocab > 1 << 16 => {
            bail!("the tokenizer has {vocab} tokens, too many for u16 shards (at most 65536); drop --dtype u16")
        }
        Some(d) => d,
        None if vocab <= 1 << 16 => Dtype::U16,
        None => Dtype::U32,
    };
    let mut inputs: Vec<Input> = Vec::new();
    if !o.inputs.is_empty() {
        inputs.extend(expand_inputs(&o.inputs)?.into_iter().map(Input::Local));
    }
    if let Some((ds, _)) = &o.hub {
        inputs.extend(ds.list()?.into_iter().map(Input::Remote));
    }
    if inputs.is_empty() {
        bail!("nothing to prepare: give --input or --hf-dataset");
    }
    let masks = inputs.iter().any(|i| resolve_format(&i.name(), o.source.format).masks());
    let tmp = claim_output(&o.out, o.force)?;
    let result = write_dataset(o, &inputs, dtype, masks, &tmp);
    match result {
        Ok(manifest) => {
            if o.out.exists() {
                std::fs::remove_dir_all(&o.out).with_context(|| format!("cannot replace {}", o.out.display()))?;
            }
            std::fs::rename(&tmp, &o.out).with_context(|| format!("cannot move the dataset to {}", o.out.display()))?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Checks that `out` may be written and returns the fresh temporary
/// directory to build it in (leftovers of interrupted runs are removed).
fn claim_output(out: &Path, force: bool) -> Result<PathBuf> {
    if out.exists() {
        let complete = out.join(MANIFEST).exists();
        let empty = out.is_dir() && std::fs::read_dir(out)?.next().is_none();
        if !(empty || force && complete) {
            if complete {
                bail!("{} already holds a dataset (use --force to replace it)", out.display());
            }
            bail!("{} exists and is not a dataset; choose another --out", out.display());
        }
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("dataset").to_string();
    for entry in std::fs::read_dir(parent)?.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&format!(".{name}.partial-"))) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok(tmp)
}

/// A local file, or one on the Hub (downloaded when its turn comes).
enum Input {
    Local(PathBuf),
    Remote(RemoteFile),
}

impl Input {
    fn name(&self) -> PathBuf {
        match self {
            Input::Local(p) => p.clone(),
            Input::Remote(f) => PathBuf::from(&f.path),
        }
    }
}

fn write_dataset(o: &PrepareOptions, inputs: &[Input], dtype: Dtype, masks: bool, tmp: &Path) -> Result<Manifest> {
    let mut sources = inputs
        .par_iter()
        .map(|i| match i {
            Input::Local(f) => hash_file(f),
            Input::Remote(f) => {
                let (ds, _) = o.hub.as_ref().expect("remote inputs come from --hf-dataset");
                let path = format!("hf://datasets/{}@{}/{}", ds.repo, ds.revision, f.path);
                Ok(SourceInfo { path, bytes: f.size, sha256: f.sha256.clone().unwrap_or_default() })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    let pb = if o.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let eot = o.tokenizer.end_of_text();
    let mut writers = [
        ShardWriter::new(tmp, "train", dtype, o.shard_tokens, masks),
        ShardWriter::new(tmp, "val", dtype, o.shard_tokens, masks),
    ];
    let mut splits = [SplitInfo::default(), SplitInfo::default()];
    let t0 = Instant::now();
    let mut done = 0u64;
    for (input, source) in inputs.iter().zip(sources.iter_mut()) {
        let file = match input {
            Input::Local(f) => f.clone(),
            Input::Remote(f) => {
                let (ds, cache) = o.hub.as_ref().expect("remote inputs come from --hf-dataset");
                pb.set_message(format!("downloading {}", f.path));
                let local = cache.fetch(ds, f)?;
                if source.sha256.is_empty() {
                    source.sha256 = sha256_file(&local)?.0;
                }
                local
            }
        };
        let mut each = |docs: Vec<Doc>, read: u64| -> Result<()> {
            let encoded = docs
                .par_iter()
                .map(|d| encode_doc(&o.tokenizer, d, eot, o.val_fraction))
                .collect::<Result<Vec<_>>>()?;
            for (doc, (val, tokens, mask)) in docs.iter().zip(encoded) {
                let s = usize::from(val);
                writers[s].push(&tokens, &mask)?;
                splits[s].documents += 1;
                splits[s].tokens += tokens.len() as u64;
                splits[s].bytes += doc.text.len() as u64;
            }
            let tokens = splits[0].tokens + splits[1].tokens;
            pb.set_position(done + if read > 0 { read } else { source.bytes });
            pb.set_message(format!("{:.2}M tokens/s", tokens as f64 / t0.elapsed().as_secs_f64() / 1e6));
            Ok(())
        };
        read_documents(&file, &o.source, BATCH_BYTES, &mut each)?;
        done += source.bytes;
    }
    pb.finish_and_clear();
    for w in &mut writers {
        w.close()?;
    }
    if splits[0].tokens == 0 {
        bail!("the input holds no documents to train on");
    }
    let [train_w, val_w] = writers;
    let [mut train, mut val] = splits;
    train.shards = train_w.shards;
    val.shards = val_w.shards;
    let manifest = Manifest {
        format: "ferrite-dataset".into(),
        version: 1,
        tokenizer: o.tokenizer.clone(),
        dtype,
        val_fraction: o.val_fraction,
        end_of_text: eot,
        train,
        val,
        sources,
        options: serde_json::json!({
            "format": o.source.format,
            "field": o.source.field,
            "column": o.source.column,
            "masks": masks,
        }),
        chat_template: inputs
            .iter()
            .any(|i| resolve_format(&i.name(), o.source.format) == Format::Chat)
            .then(|| o.source.chat.clone()),
    };
    write_atomic(&tmp.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(manifest)
}

/// `(in validation, tokens, mask)`: the end-of-text token first, then the
/// text; for instruction documents the prompt and the response are encoded
/// separately so the mask (0 on the prompt) falls on a token boundary.
fn encode_doc(tok: &Tokenizer, d: &Doc, eot: Option<u32>, val_fraction: f64) -> Result<(bool, Vec<u32>, Vec<u8>)> {
    let mut tokens: Vec<u32> = eot.into_iter().collect();
    let mut mask = vec![1u8; tokens.len()];
    let mut start = 0;
    for &(end, trained) in d.spans.iter().chain(d.spans.is_empty().then_some(&(d.text.len(), true))) {
        tokens.extend(tok.encode(&d.text[start..end])?);
        mask.resize(tokens.len(), u8::from(trained));
        start = end;
    }
    Ok((in_validation(&d.text, val_fraction), tokens, mask))
}

/// Whether a document belongs to the validation split: the first 8 bytes of
/// the SHA-256 of its text, as a fraction of 2^64, below `val_fraction`.
pub fn in_validation(text: &str, val_fraction: f64) -> bool {
    let h = Sha256::digest(text.as_bytes());
    let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    (x as f64) < val_fraction * 18_446_744_073_709_551_616.0
}

fn hash_file(path: &Path) -> Result<SourceInfo> {
    let (sha256, bytes) = sha256_file(path)?;
    if bytes == 0 {
        bail!("input {} is empty", path.display());
    }
    Ok(SourceInfo { path: path.display().to_string(), bytes, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ChatTemplate;

    #[test]
    fn chat_masks_fall_on_the_answers_token_by_token() {
        let conv = serde_json::json!({"messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid."},
        ]});
        let dir = std::env::temp_dir().join(format!("ferrite-chatmask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.jsonl");
        std::fs::write(&file, format!("{conv}\n")).unwrap();
        let opts = SourceOptions {
            format: Format::Chat,
            field: "text".into(),
            column: "text".into(),
            template: InstructionTemplate::default(),
            chat: ChatTemplate::dolly(),
        };
        let mut docs = Vec::new();
        read_documents(&file, &opts, 1 << 20, &mut |d, _| {
            docs.extend(d);
            Ok(())
        })
        .unwrap();
        // Bytes are tokens: the trained ones spell exactly the two answers with their closing text.
        for tok in [Tokenizer::Byte, Tokenizer::Tiktoken { name: crate::data::OpenAiVocab::Gpt2 }] {
            let eot = tok.end_of_text();
            let (_, tokens, mask) = encode_doc(&tok, &docs[0], eot, 0.0).unwrap();
            assert_eq!(tokens.len(), mask.len());
            let trained: Vec<u32> = tokens.iter().zip(&mask).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect();
            let want = format!("{}Paris.\n\nMadrid.\n\n", if eot.is_some() { "<|endoftext|>" } else { "" });
            assert_eq!(String::from_utf8_lossy(&tok.decode_bytes(&trained)), want, "{}", tok.kind());
            assert_eq!(tok.decode_bytes(&tokens[usize::from(eot.is_some())..]), docs[0].text.as_bytes());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
