//! A prepared dataset on disk: `manifest.json` and token shards
//! (`train_000000.bin`, `val_000000.bin`, ...: little-endian u16 or u32),
//! optionally with loss masks (`*.mask`, one byte per token, 1 = trained
//! on). Shards are memory-mapped, so training holds none of them in memory.

use super::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub tokens: u64,
    /// The loss mask beside it, when the dataset has masks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SplitInfo {
    pub documents: u64,
    pub tokens: u64,
    /// UTF-8 bytes of the documents' text (for bits per byte).
    pub bytes: u64,
    pub shards: Vec<ShardInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub tokenizer: Tokenizer,
    pub dtype: Dtype,
    /// Fraction of documents (by hash) in the validation split.
    pub val_fraction: f64,
    /// Token that starts every document, when the tokenizer has one.
    pub end_of_text: Option<u32>,
    pub train: SplitInfo,
    pub val: SplitInfo,
    pub sources: Vec<SourceInfo>,
    /// How the inputs were read (format, field, column).
    pub options: serde_json::Value,
    /// The template chat conversations were written with (`--format chat`).
    #[serde(default)]
    pub chat_template: Option<crate::data::ChatTemplate>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        if !dir.is_dir() {
            bail!("dataset {} does not exist", dir.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{} is not a prepared dataset (no {MANIFEST}; make one with `ferrite data prepare`)", dir.display())
        })?;
        let m: Manifest = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
        if m.format != "ferrite-dataset" {
            bail!("{} is not a ferrite dataset manifest", path.display());
        }
        Ok(m)
    }
}

/// One memory-mapped shard. Its tokens are checked against the vocabulary
/// as they are read: a shard of random bytes is an error naming the shard
/// and the offset, not an out-of-range index in a kernel.
pub struct MappedShard {
    map: Mmap,
    mask: Option<Mmap>,
    dtype: Dtype,
    len: usize,
    file: String,
    vocab: u32,
}

impl MappedShard {
    /// Opens a shard of a dataset whose tokenizer has `vocab` tokens.
    pub fn open(dir: &Path, info: &ShardInfo, dtype: Dtype, vocab: usize) -> Result<MappedShard> {
        let map = map_file(&dir.join(&info.file))?;
        let len = info.tokens as usize;
        if map.len() != len * dtype.bytes() {
            bail!("{} holds {} bytes, the manifest says {} tokens: the dataset is corrupt", info.file, map.len(), len);
        }
        let mask = match &info.mask {
            Some(m) => {
                let mask = map_file(&dir.join(m))?;
                if mask.len() != len {
                    bail!("{m} does not have one byte per token: the dataset is corrupt");
                }
                Some(mask)
            }
            None => None,
        };
        Ok(MappedShard { map, mask, dtype, len, file: info.file.clone(), vocab: vocab as u32 })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends tokens `start..start + n` to `out`; a token outside the
    /// vocabulary is an error.
    pub fn read(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let b = self.dtype.bytes();
        let bytes = &self.map[start * b..(start + n) * b];
        let first = out.len();
        match self.dtype {
            Dtype::U16 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            Dtype::U32 => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
        if let Some(i) = out[first..].iter().position(|&t| t >= self.vocab) {
            bail!(
                "shard {} holds token {} at offset {} (token {}), outside the tokenizer's {} tokens: the dataset is corrupt",
                self.file,
                out[first + i],
                (start + i) * b,
                start + i,
                self.vocab
            );
        }
        Ok(())
    }

    /// Whether token `i` is trained on as a target.
    pub fn trained(&self, i: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[i] != 0)
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
    // SAFETY: shards are written once, renamed into place, and never
    // modified; a concurrent writer would be a user error we cannot guard.
    unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
}
