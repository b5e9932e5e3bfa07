//! `metrics.jsonl`: one JSON object per line. A fresh run starts the file
//! over; a resumed run appends to it.

use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    pub fn open(run_dir: &Path, fresh: bool) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        let path = run_dir.join("metrics.jsonl");
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
