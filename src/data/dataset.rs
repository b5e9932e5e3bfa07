//! A tokenised text corpus split 90/10 into train and validation, with
//! seeded random windows for batches.

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

pub struct Dataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// UTF-8 bytes per token in each split, for bits-per-byte.
    pub train_bytes_per_token: f64,
    pub val_bytes_per_token: f64,
}

/// Reads a text corpus with a clear error for each way it can be unusable.
pub fn read_corpus(path: &Path, need_utf8: bool) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read data file {}", path.display()))?;
    if bytes.is_empty() {
        bail!("data file {} is empty", path.display());
    }
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) if need_utf8 => bail!(
            "data file {} is not valid UTF-8 (first bad byte at offset {}); this tokenizer needs UTF-8 text (use --tokenizer byte for arbitrary bytes)",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
        Err(e) => Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

impl Dataset {
    /// Tokenises `text` and splits it contiguously: the first `train_frac`
    /// for training, the rest for validation.
    pub fn new(text: &str, tok: &Tokenizer, train_frac: f64, block_size: usize) -> Result<Dataset> {
        let ids = tok.encode(text)?;
        let n_train = (ids.len() as f64 * train_frac) as usize;
        let (train, val) = (ids[..n_train].to_vec(), ids[n_train..].to_vec());
        for (name, split) in [("training", &train), ("validation", &val)] {
            if split.len() <= block_size + 1 {
                bail!(
                    "the corpus is too short: its {name} split has {} tokens but block_size is {block_size}; use a longer file or a smaller --block-size",
                    split.len()
                );
            }
        }
        let bytes_per = |toks: &[u32]| tok.decode_bytes(toks).len() as f64 / toks.len() as f64;
        Ok(Dataset { train_bytes_per_token: bytes_per(&train), val_bytes_per_token: bytes_per(&val), train, val })
    }

    /// A dataset from already tokenised splits (benchmarks use random tokens).
    pub fn from_tokens(train: Vec<u32>, val: Vec<u32>, bytes_per_token: f64) -> Dataset {
        Dataset { train, val, train_bytes_per_token: bytes_per_token, val_bytes_per_token: bytes_per_token }
    }

    pub fn split(&self, s: Split) -> &[u32] {
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
    /// `y` is `x` shifted by one token. The windows are a pure function of
    /// `seed`, which makes resumed runs draw exactly the same batches.
    pub fn batch(&self, s: Split, batch: usize, seq: usize, seed: u64, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        let data = self.split(s);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        x.clear();
        y.clear();
        let range = (data.len() - seq) as u64;
        for _ in 0..batch {
            let i = (rng.next_u64() % range) as usize;
            x.extend_from_slice(&data[i..i + seq]);
            y.extend_from_slice(&data[i + 1..i + 1 + seq]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_shifted_windows_and_seeded() {
        let text: String = (0..500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let tok = Tokenizer::char_from_corpus(&text);
        let ds = Dataset::new(&text, &tok, 0.9, 8).unwrap();
        assert_eq!(ds.train.len(), 450);
        let (mut x, mut y, mut x2, mut y2) = (vec![], vec![], vec![], vec![]);
        ds.batch(Split::Train, 3, 8, 5, &mut x, &mut y);
        ds.batch(Split::Train, 3, 8, 5, &mut x2, &mut y2);
        assert_eq!((&x, &y), (&x2, &y2));
        for b in 0..3 {
            assert_eq!(x[b * 8 + 1..(b + 1) * 8], y[b * 8..(b + 1) * 8 - 1]);
        }
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let tok = Tokenizer::Byte;
        let err = Dataset::new("short text", &tok, 0.9, 64).err().unwrap().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
