//! `ferrite plot`: training curves of one or more runs, as SVG and PNG.

use crate::plot::{self, RunCurves};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl); several are overlaid.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Write PREFIX.svg and PREFIX.png (default: RUN_DIR/curves for one run, ./curves for several).
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    width: u32,
    #[arg(long, default_value_t = 900)]
    height: u32,
}

pub fn run(a: &PlotArgs) -> Result<()> {
    if !(200..=8000).contains(&a.width) || !(200..=8000).contains(&a.height) {
        bail!("--width and --height must be between 200 and 8000 pixels");
    }
    let curves = a.runs.iter().map(|r| RunCurves::read(r)).collect::<Result<Vec<_>>>()?;
    let prefix = match (&a.out, a.runs.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, [one]) => one.join("curves"),
        (None, _) => PathBuf::from("curves"),
    };
    for file in plot::runs(&curves, &prefix, (a.width, a.height))? {
        super::out!("wrote {}", file.display())?;
    }
    Ok(())
}
