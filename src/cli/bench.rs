//! `ferrite bench`: the median time of a full training step (forward,
//! backward, gradient clipping, AdamW) on random tokens, as tokens/s and
//! achieved GFLOP/s. `scripts/bench_compare.py step` runs it beside PyTorch.

use super::RunArgs;
use crate::data::{Dataset, Tokenizer};
use crate::engine::{profile, Backend};
use crate::model::ModelConfig;
use crate::train::trainer::check_memory;
use crate::train::{config, TrainConfig, Trainer};
use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print the time spent in each engine operation.
    #[arg(long)]
    profile: bool,
}

super::on_device!(BenchArgs, bench);

fn bench<B: Backend>(a: &BenchArgs, be: B) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut cfg = a.run.resolve()?;
    let vocab = config::reference_vocab(a.run.preset_name(), &cfg);
    cfg.vocab_size = Some(vocab);
    let model = cfg.model_for_vocab(vocab);
    model.validate()?;
    check_memory(&be, &cfg, &model)?;
    // Random tokens: enough for distinct windows, no data file needed.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let len = (cfg.batch_size * cfg.model.block_size * 4).max(4096);
    let mut random = |n: usize| (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect::<Vec<_>>();
    let (train, val) = (random(len), random(len));
    let data = Dataset::from_tokens(train.clone(), val.clone(), 1.0);
    let (trainer, mut times) = if a.profile {
        time_steps(be.clone(), &cfg, data, a, || profile::enable(true))?;
        profile::enable(false);
        print_profile(a.steps)?;
        // Report throughput from an unprofiled run: timing every op costs time.
        let data = Dataset::from_tokens(train, val, 1.0);
        time_steps(be, &cfg, data, a, || ())?
    } else {
        time_steps(be, &cfg, data, a, || ())?
    };
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = trainer.tokens_per_step() as f64;
    let m = &trainer.model.cfg;
    let gflops = m.train_flops_per_token(m.block_size) * tokens / median / 1e9;
    let tps = tokens / median;
    if a.json {
        let out = serde_json::json!({
            // The model configuration (ModelConfig's fields) and the batch.
            "config": config_json(m, &cfg),
            "params": m.num_params(),
            "backend": trainer.model.be.name(),
            "steps": a.steps,
            "ms_per_step": median * 1e3,
            "tokens_per_s": tps,
            "gflops": gflops,
        });
        super::out!("{out}")?;
    } else {
        super::out!(
            "model: {} layers, {} heads, {} wide, vocab {}, block {}, batch {} ({:.2}M parameters) on {}",
            m.n_layer,
            m.n_head,
            m.n_embd,
            m.vocab_size,
            m.block_size,
            cfg.batch_size,
            m.num_params() as f64 / 1e6,
            trainer.model.be.name()
        )?;
        super::out!(
            "median of {} steps: {:.2} ms/step, {:.0} tokens/s, {:.1} GFLOP/s",
            a.steps,
            median * 1e3,
            tps,
            gflops
        )?;
    }
    Ok(())
}

/// Runs warmup and timed steps; returns the trainer and each timed step's seconds.
/// `on_start` runs once warmup is over.
fn time_steps<B: Backend>(
    be: B,
    cfg: &TrainConfig,
    data: Dataset,
    a: &BenchArgs,
    on_start: impl Fn(),
) -> Result<(Trainer<B>, Vec<f64>)> {
    let mut trainer = Trainer::from_parts(be, cfg.clone(), Tokenizer::Byte, data)?;
    let mut times = Vec::with_capacity(a.steps);
    for i in 0..a.warmup + a.steps {
        if i == a.warmup {
            trainer.model.be.synchronize()?;
            on_start();
        }
        let t0 = Instant::now();
        trainer.step()?;
        // Wait for the device: a step's time is the time its work took.
        trainer.model.be.synchronize()?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((trainer, times))
}

fn print_profile(steps: usize) -> Result<()> {
    let report = profile::report();
    let total: f64 = report.iter().map(|r| r.1.as_secs_f64()).sum();
    super::out!("{:<36} {:>10} {:>7} {:>8}", "operation (per step)", "ms", "share", "calls")?;
    for (name, t, calls) in report {
        let ms = t.as_secs_f64() * 1e3 / steps as f64;
        let share = 100.0 * t.as_secs_f64() / total;
        super::out!("{name:<36} {ms:>10.3} {share:>6.1}% {:>8}", calls / steps as u64)?;
    }
    super::out!("{:<36} {:>10.3}", "total in engine ops", total * 1e3 / steps as f64)?;
    Ok(())
}

fn config_json(m: &ModelConfig, cfg: &TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(m).expect("serialisable");
    v["batch_size"] = cfg.batch_size.into();
    v["grad_accum"] = cfg.grad_accum.into();
    v
}
