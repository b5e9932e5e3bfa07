//! `metrics.jsonl`: one JSON object per line. A fresh run starts the file
//! over; a run resumed at step `s` first cuts it back to what was logged up
//! to `s` (a run killed after its last checkpoint logged steps it will do
//! again, and may have left half a line), then appends.

use crate::data::files::write_atomic;
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    /// `resumed_at`: the step a resumed run starts from (none: a fresh run).
    pub fn open(run_dir: &Path, resumed_at: Option<usize>) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        let path = run_dir.join("metrics.jsonl");
        if let Some(step) = resumed_at {
            if let Ok(text) = std::fs::read_to_string(&path) {
                write_atomic(&path, kept_lines(&text, step).as_bytes())?;
            }
        }
        let fresh = resumed_at.is_none();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { file })
    }

    pub fn write(&mut self, record: Value) -> Result<()> {
        writeln!(self.file, "{record}")?;
        Ok(())
    }
}

/// The whole, well-formed lines of a log whose step is at most `step`.
fn kept_lines(text: &str, step: usize) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let keep = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(Value::as_u64))
            .is_some_and(|s| s as usize <= step);
        if keep {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn resuming_cuts_the_log_back_to_the_step() {
        let log = "{\"step\":0}\n{\"step\":10}\n{\"step\":20}\n{\"step\":10}\n{\"step\":3";
        assert_eq!(super::kept_lines(log, 10), "{\"step\":0}\n{\"step\":10}\n{\"step\":10}\n");
        assert_eq!(super::kept_lines("garbage\n{\"step\":1}\n", 5), "{\"step\":1}\n");
    }
}
