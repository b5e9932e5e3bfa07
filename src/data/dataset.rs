//! Training data: a tokenised text file split 90/10 into train and
//! validation (held in memory), or a prepared dataset's memory-mapped
//! shards; seeded random windows for batches.

use super::shards::{Manifest, MappedShard};
use super::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Target id that the loss skips (a prompt token of instruction data).
pub const IGNORE: u32 = crate::engine::IGNORE_TARGET;

/// The tokens of one split.
pub enum Tokens {
    Memory(Vec<u32>),
    /// Windows never cross a shard boundary.
    Mapped(Vec<MappedShard>),
}

impl Tokens {
    pub fn len(&self) -> usize {
        match self {
            Tokens::Memory(v) => v.len(),
            Tokens::Mapped(shards) => shards.iter().map(|s| s.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first few tokens (a prompt for the end-of-training sample).
    pub fn head(&self, n: usize) -> Result<Vec<u32>> {
        match self {
            Tokens::Memory(v) => Ok(v[..n.min(v.len())].to_vec()),
            Tokens::Mapped(shards) => {
                let mut out = Vec::new();
                if let Some(s) = shards.first() {
                    s.read(0, n.min(s.len()), &mut out)?;
                }
                Ok(out)
            }
        }
    }

    /// Every token, in order (for evaluation over a whole split).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        match self {
            Tokens::Memory(v) => Ok(v.clone()),
            Tokens::Mapped(shards) => {
                let mut out = Vec::with_capacity(self.len());
                for s in shards {
                    s.read(0, s.len(), &mut out)?;
                }
                Ok(out)
            }
        }
    }

    /// Windows of `seq + 1` tokens that fit: per shard, `len - seq`.
    fn windows(&self, seq: usize) -> Vec<usize> {
        match self {
            Tokens::Memory(v) => vec![v.len().saturating_sub(seq)],
            Tokens::Mapped(shards) => shards.iter().map(|s| s.len().saturating_sub(seq)).collect(),
        }
    }
}

pub struct Dataset {
    pub train: Tokens,
    pub val: Tokens,
    /// UTF-8 bytes per token in each split, for bits-per-byte.
    pub train_bytes_per_token: f64,
    pub val_bytes_per_token: f64,
}

/// A corpus' bytes: the file at `path`, or without one the built-in tiny
/// Shakespeare.
pub fn corpus(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => read_corpus(p),
        None => Ok(super::tiny_shakespeare::bytes()),
    }
}

/// Reads a text corpus with a clear error for each way it can be unusable.
pub fn read_corpus(path: &Path) -> Result<Vec<u8>> {
    crate::data::files::regular_file(path, "data file")?;
    // Held as bytes and as token ids (and their two splits): about 9 bytes
    // of memory per byte of text, at worst one token per byte.
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let what = format!("holding data file {} in memory", path.display());
    crate::engine::device::check_fits(
        (len as usize).saturating_mul(9),
        crate::engine::cpu::host_memory(),
        &what,
        "prepare it into shards with `ferrite data prepare` and train with --dataset",
    )?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read data file {}", path.display()))?;
    if bytes.is_empty() {
        bail!("data file {} is empty", path.display());
    }
    Ok(bytes)
}

impl Dataset {
    /// Tokenises a corpus (bytes: the byte tokenizer takes any, the others
    /// need UTF-8) and splits it contiguously: the first `train_frac` for
    /// training, the rest for validation.
    pub fn new(corpus: &[u8], tok: &Tokenizer, train_frac: f64, block_size: usize) -> Result<Dataset> {
        let ids = tok.encode_bytes(corpus)?;
        let n_train = (ids.len() as f64 * train_frac) as usize;
        let (train, val) = (ids[..n_train].to_vec(), ids[n_train..].to_vec());
        let bytes_per = |toks: &[u32]| tok.decode_bytes(toks).len() as f64 / toks.len().max(1) as f64;
        let ds = Dataset {
            train_bytes_per_token: bytes_per(&train),
            val_bytes_per_token: bytes_per(&val),
            train: Tokens::Memory(train),
            val: Tokens::Memory(val),
        };
        ds.check_fits(block_size, "use a longer file or a smaller --block-size")?;
        Ok(ds)
    }

    /// A prepared dataset (`ferrite data prepare`): its shards memory-mapped.
    pub fn open_prepared(dir: &Path, block_size: usize) -> Result<(Manifest, Dataset)> {
        let m = Manifest::read(dir)?;
        let open = |info: &super::shards::SplitInfo| -> Result<Tokens> {
            let vocab = m.tokenizer.vocab_size();
            let shards =
                info.shards.iter().map(|s| MappedShard::open(dir, s, m.dtype, vocab)).collect::<Result<Vec<_>>>()?;
            Ok(Tokens::Mapped(shards.into_iter().filter(|s| !s.is_empty()).collect()))
        };
        let bpt = |info: &super::shards::SplitInfo| info.bytes as f64 / info.tokens.max(1) as f64;
        let ds = Dataset {
            train: open(&m.train)?,
            val: open(&m.val)?,
            train_bytes_per_token: bpt(&m.train),
            val_bytes_per_token: bpt(&m.val),
        };
        ds.check_fits(block_size, "prepare more data, raise --val-fraction, or use a smaller --block-size")?;
        Ok((m, ds))
    }

    /// A dataset from already tokenised splits (benchmarks use random tokens).
    pub fn from_tokens(train: Vec<u32>, val: Vec<u32>, bytes_per_token: f64) -> Dataset {
        Dataset {
            train: Tokens::Memory(train),
            val: Tokens::Memory(val),
            train_bytes_per_token: bytes_per_token,
            val_bytes_per_token: bytes_per_token,
        }
    }

    fn check_fits(&self, block_size: usize, hint: &str) -> Result<()> {
        for (name, split) in [("training", &self.train), ("validation", &self.val)] {
            if split.windows(block_size).iter().all(|&w| w == 0) {
                bail!(
                    "the corpus is too short: its {name} split has no run of more than block_size ({block_size}) tokens ({} tokens in all); {hint}",
                    split.len()
                );
            }
        }
        Ok(())
    }

    pub fn split(&self, s: Split) -> &Tokens {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    pub fn bytes_per_token(&self, s: Split) -> f64 {
        match s {
            Split::Train => self.train_bytes_per_token,
            Split::Val => self.val_bytes_per_token,
        }
    }

    /// Fills `x` and `y` (`[batch, seq]`) with random windows of a split:
    /// `y` is `x` shifted by one token ([`IGNORE`] where a loss mask says
    /// not to train). The windows are a pure function of `seed`, which makes
    /// resumed runs draw exactly the same batches. A prepared dataset's
    /// tokens are checked against the vocabulary as they are read.
    pub fn batch(
        &self,
        s: Split,
        batch: usize,
        seq: usize,
        seed: u64,
        x: &mut Vec<u32>,
        y: &mut Vec<u32>,
    ) -> Result<()> {
        let data = self.split(s);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        x.clear();
        y.clear();
        let windows = data.windows(seq);
        let range: u64 = windows.iter().map(|&w| w as u64).sum();
        let mut buf = Vec::with_capacity(seq + 1);
        for _ in 0..batch {
            let mut i = (rng.next_u64() % range) as usize;
            match data {
                Tokens::Memory(v) => {
                    x.extend_from_slice(&v[i..i + seq]);
                    y.extend_from_slice(&v[i + 1..i + 1 + seq]);
                }
                Tokens::Mapped(shards) => {
                    let mut k = 0;
                    while i >= windows[k] {
                        i -= windows[k];
                        k += 1;
                    }
                    buf.clear();
                    shards[k].read(i, seq + 1, &mut buf)?;
                    x.extend_from_slice(&buf[..seq]);
                    y.extend((1..=seq).map(|j| if shards[k].trained(i + j) { buf[j] } else { IGNORE }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_shifted_windows_and_seeded() {
        let text: String = (0..500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let tok = Tokenizer::char_from_corpus(&text);
        let ds = Dataset::new(text.as_bytes(), &tok, 0.9, 8).unwrap();
        assert_eq!(ds.train.len(), 450);
        let (mut x, mut y, mut x2, mut y2) = (vec![], vec![], vec![], vec![]);
        ds.batch(Split::Train, 3, 8, 5, &mut x, &mut y).unwrap();
        ds.batch(Split::Train, 3, 8, 5, &mut x2, &mut y2).unwrap();
        assert_eq!((&x, &y), (&x2, &y2));
        for b in 0..3 {
            assert_eq!(x[b * 8 + 1..(b + 1) * 8], y[b * 8..(b + 1) * 8 - 1]);
        }
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let tok = Tokenizer::Byte;
        let err = Dataset::new(b"short text", &tok, 0.9, 64).err().unwrap().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
