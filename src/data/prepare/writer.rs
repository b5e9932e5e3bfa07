//! Appends tokens of one split to numbered shard files of a fixed size.

use crate::data::shards::{Dtype, ShardInfo};
use anyhow::{Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    dtype: Dtype,
    shard_tokens: u64,
    masks: bool,
    current: Option<(BufWriter<std::fs::File>, Option<BufWriter<std::fs::File>>)>,
    pub shards: Vec<ShardInfo>,
}

impl ShardWriter {
    pub fn new(dir: &Path, split: &'static str, dtype: Dtype, shard_tokens: u64, masks: bool) -> ShardWriter {
        ShardWriter { dir: dir.to_path_buf(), split, dtype, shard_tokens, masks, current: None, shards: Vec::new() }
    }

    /// Appends `tokens` (with their mask bytes when the dataset has masks),
    /// starting new shards as they fill.
    pub fn push(&mut self, mut tokens: &[u32], mut mask: &[u8]) -> Result<()> {
        while !tokens.is_empty() {
            if self.current.is_none() || self.shards.last().is_some_and(|s| s.tokens >= self.shard_tokens) {
                self.open_next()?;
            }
            let info = self.shards.last_mut().expect("an open shard");
            let n = tokens.len().min((self.shard_tokens - info.tokens) as usize);
            let (out, mask_out) = self.current.as_mut().expect("an open shard");
            let mut buf = Vec::with_capacity(n * self.dtype.bytes());
            for &t in &tokens[..n] {
                match self.dtype {
                    Dtype::U16 => buf.extend_from_slice(&(t as u16).to_le_bytes()),
                    Dtype::U32 => buf.extend_from_slice(&t.to_le_bytes()),
                }
            }
            out.write_all(&buf)?;
            if let Some(m) = mask_out {
                m.write_all(&mask[..n])?;
                mask = &mask[n..];
            }
            info.tokens += n as u64;
            tokens = &tokens[n..];
        }
        Ok(())
    }

    fn open_next(&mut self) -> Result<()> {
        self.close()?;
        let i = self.shards.len();
        let file = format!("{}_{i:06}.bin", self.split);
        let create = |name: &str| -> Result<BufWriter<std::fs::File>> {
            let path = self.dir.join(name);
            let f = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(BufWriter::with_capacity(1 << 20, f))
        };
        let mask = self.masks.then(|| format!("{}_{i:06}.mask", self.split));
        let out = create(&file)?;
        let mask_out = mask.as_deref().map(create).transpose()?;
        self.current = Some((out, mask_out));
        self.shards.push(ShardInfo { file, tokens: 0, mask });
        Ok(())
    }

    /// Flushes and syncs the open shard.
    pub fn close(&mut self) -> Result<()> {
        if let Some((out, mask)) = self.current.take() {
            for w in std::iter::once(out).chain(mask) {
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
            }
        }
        Ok(())
    }
}
