//! `ferrite bench`: the median time of a full training step (forward,
//! backward, gradient clipping, AdamW) on random tokens, as tokens/s and
//! achieved GFLOP/s. `scripts/bench_compare.py step` runs it beside PyTorch.

use super::RunArgs;
use crate::data::{Dataset, Tokenizer};
use crate::engine::{profile, Backend, DType, Matmul};
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
    /// Time one matrix multiply instead of a training step: `MxNxK`, with
    /// the operands' layout after a colon (`NT`: `x · Wᵀ`, the default;
    /// `NN`, `TN`, `TT`), in f32 and in bf16 arithmetic side by side.
    #[arg(long, value_name = "MxNxK[:NT]")]
    matmul: Option<String>,
}

super::on_device!(BenchArgs, bench);

fn bench<B: Backend>(a: &BenchArgs, be: B) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if let Some(spec) = &a.matmul {
        return bench_matmul(a, be, spec);
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

/// Parses `MxNxK[:NT]`.
fn matmul_shape(spec: &str) -> Result<Matmul> {
    let (dims, layout) = spec.split_once(':').unwrap_or((spec, "NT"));
    let d: Vec<usize> = dims.split('x').map(|x| x.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| {
        anyhow::anyhow!("--matmul {spec:?}: expected MxNxK with positive integers, e.g. 16384x1536x384:NT")
    })?;
    let trans = |c: char| match c {
        'N' | 'n' => Ok(false),
        'T' | 't' => Ok(true),
        _ => bail!("--matmul {spec:?}: the layout is two letters of N and T, e.g. NT"),
    };
    let l: Vec<char> = layout.chars().collect();
    if d.len() != 3 || d.iter().any(|&x| x == 0 || x > 1 << 16) || l.len() != 2 {
        bail!("--matmul {spec:?}: expected MxNxK (each 1 to 65536) and a layout like NT");
    }
    Ok(Matmul::new(d[0], d[1], d[2], trans(l[0])?, trans(l[1])?, false))
}

/// The median time of one product of random operands in each arithmetic.
fn bench_matmul<B: Backend>(a: &BenchArgs, be: B, spec: &str) -> Result<()> {
    let mm = matmul_shape(spec)?;
    let (m, n, k) = (mm.m, mm.n, mm.k);
    let bytes = 4 * (m * k + k * n + m * n) as u64;
    crate::engine::device::check_fits(bytes as usize, be.available_memory(), "these operands", "pick smaller sizes")?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut random = |len: usize| (0..len).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) - 0.5).collect::<Vec<_>>();
    let (x, w) = (be.upload(&random(m * k))?, be.upload(&random(k * n))?);
    let mut out = be.zeros(m * n)?;
    let flops = 2.0 * (m * n * k) as f64;
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let mut times = Vec::new();
        for i in 0..a.warmup + a.steps {
            let t0 = Instant::now();
            be.matmul_strided(&mut out, &x, &w, mm.compute(dtype));
            be.synchronize()?;
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        rows.push((dtype, flops / times[times.len() / 2] / 1e9));
    }
    let ratio = rows[1].1 / rows[0].1;
    if a.json {
        let out = serde_json::json!({
            "matmul": spec, "backend": be.name(), "f32_gflops": rows[0].1, "bf16_gflops": rows[1].1, "ratio": ratio,
        });
        return super::out!("{out}");
    }
    for (dtype, gflops) in rows {
        super::out!("{spec} {dtype:>4}: {gflops:.1} GFLOP/s (median of {})", a.steps)?;
    }
    super::out!("bf16/f32: {ratio:.2}x")
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
