//! The default corpus: tiny Shakespeare, cached in the user's cache directory.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The public copy nanoGPT downloads.
pub const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

/// Overrides the download address (a mirror; tests point it nowhere).
pub const URL_ENV: &str = "FERRITE_TINY_SHAKESPEARE_URL";

/// Path of the cached tiny Shakespeare, downloading it on first use.
pub fn tiny_shakespeare() -> Result<PathBuf> {
    let dir = dirs::cache_dir()
        .context("no user cache directory on this system; pass a local file with --data FILE")?
        .join("ferrite");
    let path = dir.join("tinyshakespeare.txt");
    if path.exists() {
        return Ok(path);
    }
    eprintln!("downloading tiny Shakespeare to {} ...", path.display());
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| TINY_SHAKESPEARE_URL.to_string());
    let body = ureq::get(&url).call().and_then(|mut r| r.body_mut().with_config().limit(16 << 20).read_to_vec());
    let body = match body {
        Ok(b) => b,
        Err(e) => bail!("could not download tiny Shakespeare ({e}); offline, pass a local text file with --data FILE"),
    };
    if body.len() < 1_000_000 {
        bail!("downloaded tiny Shakespeare is only {} bytes; pass a local copy with --data FILE", body.len());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join("tinyshakespeare.txt.part");
    std::fs::write(&tmp, &body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
