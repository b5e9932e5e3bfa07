//! Files of a Hugging Face Hub repository, fetched on demand into a local
//! cache with a size limit: parquet shards of a dataset (before each
//! download the least recently used files are evicted, so a corpus larger
//! than the disk streams through it shard by shard), or a model's weights
//! and tokenizer for `ferrite import`. Sizes (and, when the Hub gives them,
//! SHA-256 digests) are verified; interrupted downloads resume where they
//! stopped.
//!
//! Speaks the Hub's public HTTP API: the file tree
//! (`/api/datasets/OWNER/NAME/tree/REV?recursive=true`, `/api/models/...`
//! for models, paged by `Link` headers) and file downloads
//! (`/datasets/OWNER/NAME/resolve/REV/PATH`, `/OWNER/NAME/resolve/...` for
//! models, with `Range` to resume). `HF_ENDPOINT` points it elsewhere (a
//! mirror, or the test server), `HF_TOKEN` authorises private or gated
//! repositories.

use super::files::sha256_file;
use super::units::{parse_scaled, SIZE_SUFFIXES};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What a repository holds: the Hub keeps the two apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Dataset,
    Model,
}

/// Which files of which repository.
#[derive(Clone, Debug)]
pub struct HubRepo {
    pub kind: RepoKind,
    /// `OWNER/NAME`.
    pub repo: String,
    pub revision: String,
    /// Glob over paths in the repository (`*` crosses `/`).
    pub files: String,
    /// Keep paths under this configuration (a leading path component).
    pub config: Option<String>,
    /// Keep paths of this split (a path component, or a file name `SPLIT-*`).
    pub split: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub sha256: Option<String>,
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string()).trim_end_matches('/').to_string()
}

fn get(url: &str, range_from: u64) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = ureq::get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    if range_from > 0 {
        req = req.header("Range", format!("bytes={range_from}-"));
    }
    req.call()
}

impl HubRepo {
    fn check(&self) -> Result<()> {
        let parts: Vec<&str> = self.repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
            bail!("a Hub repository is named OWNER/NAME, got {:?}", self.repo);
        }
        // Both name a folder of the cache: neither may climb out of it.
        if self.revision.is_empty() || self.revision.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            bail!("{:?} is not a revision (a branch, tag or commit)", self.revision);
        }
        Ok(())
    }

    /// The matching files, sorted by path.
    pub fn list(&self) -> Result<Vec<RemoteFile>> {
        self.check()?;
        let pattern = glob::Pattern::new(&self.files).map_err(|e| anyhow!("bad --hf-files pattern: {e}"))?;
        let kind = match self.kind {
            RepoKind::Dataset => "datasets",
            RepoKind::Model => "models",
        };
        let mut url = Some(format!("{}/api/{kind}/{}/tree/{}?recursive=true", endpoint(), self.repo, self.revision));
        let mut files = Vec::new();
        while let Some(u) = url.take() {
            let mut resp = get(&u, 0).map_err(|e| anyhow!("cannot list {} on the Hub ({e})", self.repo))?;
            url = next_link(resp.headers().get("link").and_then(|v| v.to_str().ok()));
            let body = resp.body_mut().with_config().limit(64 << 20).read_to_string()?;
            let entries: Vec<serde_json::Value> = serde_json::from_str(&body)
                .map_err(|e| anyhow!("unexpected file listing for {} from the Hub: {e}", self.repo))?;
            for e in entries {
                if e["type"] != "file" {
                    continue;
                }
                let (Some(path), Some(size)) = (e["path"].as_str(), e["size"].as_u64()) else { continue };
                if pattern.matches(path) && self.wanted(path) {
                    let sha256 = e["lfs"]["oid"].as_str().map(|s| s.trim_start_matches("sha256:").to_string());
                    files.push(RemoteFile { path: path.to_string(), size, sha256 });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if files.is_empty() {
            bail!(
                "no files of {} match {:?} (config {:?}, split {:?})",
                self.repo,
                self.files,
                self.config,
                self.split
            );
        }
        Ok(files)
    }

    fn wanted(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let config_ok = self.config.as_ref().is_none_or(|c| parts.first() == Some(&c.as_str()));
        let split_ok = self.split.as_ref().is_none_or(|s| {
            let file = parts.last().copied().unwrap_or("");
            parts[..parts.len() - 1].contains(&s.as_str())
                || [format!("{s}-"), format!("{s}_"), format!("{s}.")].iter().any(|p| file.starts_with(p.as_str()))
        });
        config_ok && split_ok
    }

    fn url(&self, file: &RemoteFile) -> String {
        let prefix = if self.kind == RepoKind::Dataset { "/datasets" } else { "" };
        format!("{}{prefix}/{}/resolve/{}/{}", endpoint(), self.repo, self.revision, file.path)
    }

    /// Where the cache keeps this repository's files (models apart from datasets).
    fn local_dir(&self, cache: &Path) -> PathBuf {
        match self.kind {
            RepoKind::Dataset => cache.join(&self.repo).join(&self.revision),
            RepoKind::Model => cache.join("models").join(&self.repo).join(&self.revision),
        }
    }
}

/// `<URL>; rel="next"` of a `Link` header.
fn next_link(link: Option<&str>) -> Option<String> {
    link?.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_string())
    })
}

/// Downloaded files under `dir`, at most `limit` bytes in all.
pub struct HubCache {
    pub dir: PathBuf,
    pub limit: u64,
    /// Check a cached file's digest too, not only its size (a branch such
    /// as `main` moves, and the cache is keyed by its name): a model's few
    /// files are worth it; a corpus streamed shard by shard is not.
    pub verify_cached: bool,
}

impl HubCache {
    /// The local copy of `file`, downloading it (after evicting the least
    /// recently used files to make room) unless it is cached and complete.
    pub fn fetch(&self, ds: &HubRepo, file: &RemoteFile) -> Result<PathBuf> {
        if file.path.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("the Hub lists a file path {:?} that leaves the repository", file.path);
        }
        let local = ds.local_dir(&self.dir).join(&file.path);
        if std::fs::metadata(&local).is_ok_and(|m| m.len() == file.size) {
            let stale = match (&file.sha256, self.verify_cached) {
                (Some(want), true) => &sha256_file(&local)?.0 != want,
                _ => false,
            };
            if !stale {
                touch(&local);
                return Ok(local);
            }
            std::fs::remove_file(&local)?;
        }
        if file.size > self.limit {
            bail!(
                "{} is {} bytes, more than the cache limit of {} bytes (raise --cache-limit)",
                file.path,
                file.size,
                self.limit
            );
        }
        let partial = local.with_extension("partial");
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        self.evict(file.size - have.min(file.size), &[&partial])?;
        let parent = local.parent().expect("a file path");
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        download(&ds.url(file), &partial, have.min(file.size), file.size)?;
        let size = std::fs::metadata(&partial)?.len();
        if size != file.size {
            let _ = std::fs::remove_file(&partial);
            bail!("downloaded {} has {size} bytes, the Hub lists {}: discarded", file.path, file.size);
        }
        if let Some(want) = &file.sha256 {
            let (got, _) = sha256_file(&partial)?;
            if &got != want {
                let _ = std::fs::remove_file(&partial);
                bail!("downloaded {} has SHA-256 {got}, the Hub lists {want}: discarded", file.path);
            }
        }
        std::fs::rename(&partial, &local)?;
        Ok(local)
    }

    /// Deletes least recently used files until `incoming` more bytes fit.
    fn evict(&self, incoming: u64, keep: &[&Path]) -> Result<()> {
        let mut files = Vec::new();
        collect(&self.dir, &mut files);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.2);
        for (path, size, _) in files {
            if total + incoming <= self.limit {
                break;
            }
            if keep.contains(&path.as_path()) {
                continue;
            }
            std::fs::remove_file(&path).with_context(|| format!("cannot evict {}", path.display()))?;
            total -= size;
        }
        Ok(())
    }
}

/// Appends the bytes from `from` on to `partial` (a server that ignores the
/// range gets a fresh start).
fn download(url: &str, partial: &Path, from: u64, size: u64) -> Result<()> {
    let mut resp = get(url, from).map_err(|e| anyhow!("cannot download {url} ({e})"))?;
    let resumed = from > 0 && resp.status() == 206;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut reader = resp.body_mut().with_config().limit(size + 1).reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| anyhow!("download of {url} broke off ({e}); run again to resume"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok(())
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => collect(&path, out),
            Ok(m) => out.push((path, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))),
            Err(_) => {}
        }
    }
}

/// Parses a size like `20GB`, `500M`, `1.5T` or a number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches(['B', 'b']);
    match parse_scaled(t, SIZE_SUFFIXES) {
        Some(n) => Ok(n as u64),
        None => bail!("{s:?} is not a size (like 20GB, 500MB or 1000000)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_sizes_and_filters() {
        let link = r#"<https://hub/api/datasets/a/b/tree/main?cursor=xyz>; rel="next", <https://x>; rel="prev""#;
        assert_eq!(next_link(Some(link)).as_deref(), Some("https://hub/api/datasets/a/b/tree/main?cursor=xyz"));
        assert_eq!(next_link(None), None);
        assert_eq!(parse_bytes("20GB").unwrap(), 20_000_000_000);
        assert_eq!(parse_bytes("1.5M").unwrap(), 1_500_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err() && parse_bytes("-1G").is_err());
        let ds = |config: Option<&str>, split: Option<&str>| HubRepo {
            kind: RepoKind::Dataset,
            repo: "o/n".into(),
            revision: "main".into(),
            files: "*.parquet".into(),
            config: config.map(String::from),
            split: split.map(String::from),
        };
        assert!(ds(None, Some("train")).wanted("data/train-00000-of-00002.parquet"));
        assert!(ds(None, Some("train")).wanted("20231101.en/train/0.parquet"));
        assert!(!ds(None, Some("train")).wanted("data/test-00000-of-00001.parquet"));
        assert!(ds(Some("sample"), None).wanted("sample/10BT/000_00000.parquet"));
        assert!(!ds(Some("sample"), None).wanted("data/CC-MAIN/000.parquet"));
        assert!(ds(None, None).check().is_ok());
        assert!(HubRepo { repo: "nope".into(), ..ds(None, None) }.check().is_err());
        assert!(HubRepo { repo: "../..".into(), ..ds(None, None) }.check().is_err());
        assert!(HubRepo { revision: "../x".into(), ..ds(None, None) }.check().is_err());
        assert!(HubRepo { revision: "refs/pr/1".into(), ..ds(None, None) }.check().is_ok());
    }
}
