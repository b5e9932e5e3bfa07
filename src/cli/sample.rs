//! `ferrite sample`: stream generated text from a checkpoint.

use crate::engine::cpu::Cpu;
use crate::generate::{Generator, Sampler, SamplerConfig, Utf8Stream};
use crate::train::checkpoint;
use anyhow::{bail, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Text the generation continues.
    #[arg(long, default_value = "\n", hide_default_value = true)]
    prompt: String,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample only among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Sample only among the most likely tokens that together reach this probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Print timing as `stats: {json}` on stderr at the end.
    #[arg(long)]
    stats: bool,
}

pub fn run(a: &SampleArgs) -> Result<()> {
    let cfg = SamplerConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, ..SamplerConfig::default() };
    cfg.validate()?;
    let (model, ck, _) = checkpoint::load_model(Cpu, &a.checkpoint)?;
    let tok = &ck.tokenizer;
    if a.prompt.is_empty() {
        bail!("--prompt is empty: give at least one character of context");
    }
    let prompt = tok.encode(&a.prompt)?;
    let start = Instant::now();
    let mut g = Generator::new(&model, Sampler::new(cfg, a.seed));
    g.prefill(&prompt)?;
    let mut text = Utf8Stream::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut emit = |s: &str| -> Result<bool> {
        match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => Ok(true),
            // The reader went away (`| head`): stop quietly.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    let mut produced = 0;
    for _ in 0..a.max_new_tokens {
        let t = g.next_token();
        produced += 1;
        if !emit(&text.push(&tok.decode_bytes(&[t])))? {
            return Ok(());
        }
    }
    let rest = text.finish();
    if !emit(&(rest + "\n"))? {
        return Ok(());
    }
    let secs = start.elapsed().as_secs_f64();
    if a.stats {
        let stats = serde_json::json!({
            "prompt_tokens": prompt.len(),
            "new_tokens": produced,
            "seconds": secs,
            "tokens_per_s": produced as f64 / secs,
        });
        eprintln!("stats: {stats}");
    }
    Ok(())
}
