//! Writing files so that a crash never leaves a half-written one under the
//! final name; hashing files.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// Refuses anything but a regular file: a device or a FIFO may never end,
/// and a directory is not a file. `what` names it in the error.
pub fn regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
        anyhow::bail!("{what} {} is {kind}: give a regular file", path.display());
    }
    Ok(())
}

/// A small text file (configuration, prompts, a tokenizer): a regular file
/// of at most 256 MiB, UTF-8. `what` names it in errors.
pub fn read_small_text(path: &Path, what: &str) -> Result<String> {
    const LIMIT: u64 = 256 << 20;
    regular_file(path, what)?;
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len > LIMIT {
        anyhow::bail!("{what} {} is {} MiB, more than {} MiB", path.display(), len >> 20, LIMIT >> 20);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it
/// over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The SHA-256 (hex) and the length of a file, read in 1 MB pieces.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut h, mut buf, mut bytes) = (Sha256::new(), vec![0u8; 1 << 20], 0u64);
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((h.finalize().iter().map(|b| format!("{b:02x}")).collect(), bytes))
}
