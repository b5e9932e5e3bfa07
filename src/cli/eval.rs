//! `ferrite eval`: loss, perplexity, bits per token and byte, next-token
//! accuracy, and attention analysis of a checkpoint on a text file.

use super::precision::WeightArgs;
use crate::checkpoint::{CheckpointConfig, Loaded};
use crate::data::dataset::corpus;
use crate::data::tiny_shakespeare;
use crate::data::{Dataset, Split};
use crate::engine::device::check_fits;
use crate::engine::Backend;
use crate::engine::DType;
use crate::eval::{attention_stats, evaluate, sampled_loss, EvalReport, HeadStats};
use crate::model::activations::activation_bytes;
use crate::model::config::{MAX_BATCH, MAX_REPEATS};
use crate::model::Recompute;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Text file to evaluate on (default: the file the model was trained on).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Which part of the file: the training run's `val` or `train` split, or `all`.
    #[arg(long, default_value = "val", value_parser = ["val", "train", "all"])]
    split: String,
    /// Score at most this many predictions (default: the whole split).
    #[arg(long)]
    tokens: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    weights: WeightArgs,
    /// Repeat the training run's own evaluation instead (its random batches
    /// at the checkpoint's step): reproduces the logged numbers exactly.
    #[arg(long)]
    like_training: bool,
    /// Also analyse attention: entropy and look-back distance per layer and head.
    #[arg(long)]
    attention: bool,
    /// Windows of text the attention analysis looks at.
    #[arg(long, default_value_t = 4)]
    attention_windows: usize,
    /// With --attention: also draw it to PREFIX.svg and PREFIX.png.
    #[arg(long, value_name = "PREFIX", requires = "attention")]
    plot: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// What evaluation needs to know of the training run (keys of its saved
/// configuration; a checkpoint older than a key, or one not trained by
/// ferrite, lacks some).
#[derive(Deserialize)]
#[serde(default)]
struct TrainedOn {
    data: String,
    dataset: String,
    train_frac: f64,
    // The run's own evaluation, for --like-training.
    seed: Option<u64>,
    eval_iters: Option<usize>,
    batch_size: Option<usize>,
    /// The matmuls' arithmetic the run evaluated with.
    dtype: DType,
}

impl Default for TrainedOn {
    fn default() -> Self {
        let (data, dataset) = (String::new(), String::new());
        let (seed, eval_iters, batch_size) = (None, None, None);
        TrainedOn { data, dataset, train_frac: 0.9, seed, eval_iters, batch_size, dtype: DType::F32 }
    }
}

impl TrainedOn {
    fn of(ck: &CheckpointConfig) -> Result<TrainedOn> {
        ck.training()
    }

    /// The text file or prepared dataset: `--data`, else the run's own
    /// (none: the built-in tiny Shakespeare).
    fn source(&self, data: Option<&PathBuf>) -> Option<PathBuf> {
        match data {
            Some(p) => Some(p.clone()),
            None if !self.dataset.is_empty() => Some(PathBuf::from(&self.dataset)),
            None if self.data.is_empty() => None,
            None => Some(PathBuf::from(&self.data)),
        }
    }
}

/// How a source is named in reports and errors.
fn source_name(source: Option<&Path>) -> String {
    source.map_or(tiny_shakespeare::NAME.to_string(), |p| p.display().to_string())
}

/// The run's train/validation split of a source (windows of `seq` tokens).
fn dataset(source: Option<&Path>, ck: &CheckpointConfig, train_frac: f64, seq: usize) -> Result<Dataset> {
    if let Some(dir) = source.filter(|p| p.is_dir()) {
        // A prepared dataset: its own split, in its tokenizer.
        let (manifest, ds) = Dataset::open_prepared(dir, seq)?;
        if manifest.tokenizer != ck.tokenizer {
            bail!("dataset {} uses a different tokenizer than the checkpoint", dir.display());
        }
        return Ok(ds);
    }
    Dataset::new(&corpus(source)?, &ck.tokenizer, train_frac, seq).with_context(|| source_name(source))
}

super::on_device!(EvalArgs, eval);

fn eval<B: Backend>(a: &EvalArgs, be: B) -> Result<()> {
    if a.batch_size == 0 || a.attention_windows == 0 || a.tokens == Some(0) {
        bail!("--batch-size, --attention-windows and --tokens must be at least 1");
    }
    if a.batch_size > MAX_BATCH {
        bail!("--batch-size must be at most {MAX_BATCH}");
    }
    let loaded = a.weights.load(be, &a.checkpoint)?;
    if a.like_training {
        return like_training(a, loaded);
    }
    let Loaded { model, config: ck, dir, .. } = loaded;
    fits(&model, a.batch_size)?;
    let tok = &ck.tokenizer;
    let run = TrainedOn::of(&ck)?;
    let source = run.source(a.data.as_ref());
    let source = source.as_deref();
    let name = source_name(source);
    let stream: Vec<u32> = if a.split == "all" && !source.is_some_and(Path::is_dir) {
        tok.encode_bytes(&corpus(source)?).with_context(|| name.clone())?
    } else {
        let ds = dataset(source, &ck, run.train_frac, 1)?;
        match a.split.as_str() {
            "all" => [ds.train.to_vec()?, ds.val.to_vec()?].concat(),
            "train" => ds.split(Split::Train).to_vec()?,
            _ => ds.split(Split::Val).to_vec()?,
        }
    };
    if stream.len() < 2 {
        bail!("the {} split of {name} has fewer than 2 tokens", a.split);
    }
    let report = evaluate(&model, &stream, &tok.token_bytes(), a.batch_size, a.tokens)?;
    let heads = if a.attention {
        let t = model.cfg.block_size.min(stream.len());
        let windows: Vec<Vec<u32>> = stream.chunks_exact(t).take(a.attention_windows).map(<[u32]>::to_vec).collect();
        Some(attention_stats(&model, &windows)?)
    } else {
        None
    };
    if let (Some(prefix), Some(h)) = (&a.plot, &heads) {
        for file in crate::plot::attention(h, model.cfg.block_size.min(stream.len()), prefix)? {
            eprintln!("wrote {}", file.display());
        }
    }
    if a.json {
        let mut out = json!({"checkpoint": dir, "data": name, "split": a.split, "metrics": report});
        if let Some(h) = &heads {
            out["attention"] = serde_json::to_value(h)?;
        }
        super::out!("{out}")?;
    } else {
        print_report(&report, &format!("{name} ({} split)", a.split))?;
        if let Some(h) = &heads {
            print_heads(h)?;
        }
    }
    Ok(())
}

/// The training run's own evaluation at the checkpoint's step: the same
/// random batches, so the same numbers as its log.
/// Evaluating `batch` windows at once must fit in the device's memory.
fn fits<B: Backend>(model: &crate::model::Gpt<B>, batch: usize) -> Result<()> {
    let m = &model.cfg;
    let need = activation_bytes(m, batch, m.block_size, Recompute::None, model.compute)
        + model.be.attention_scratch_bytes(m.attn_shape(batch, m.block_size));
    check_fits(need, model.be.available_memory(), &format!("evaluating {batch} windows at once"), "lower --batch-size")
}

fn like_training<B: Backend>(a: &EvalArgs, loaded: Loaded<B>) -> Result<()> {
    let Loaded { mut model, config: ck, state, .. } = loaded;
    let run = TrainedOn::of(&ck)?;
    model.compute = run.dtype;
    let (Some(seed), Some(eval_iters), Some(batch)) = (run.seed, run.eval_iters, run.batch_size) else {
        bail!("the checkpoint does not record how its training run evaluated (seed, eval_iters, batch_size)");
    };
    if !(1..=MAX_BATCH).contains(&batch) || !(1..=MAX_REPEATS).contains(&eval_iters) {
        bail!("the checkpoint's training record is corrupt (batch_size {batch}, eval_iters {eval_iters})");
    }
    fits(&model, batch)?;
    let seq = model.cfg.block_size;
    let data = dataset(run.source(a.data.as_ref()).as_deref(), &ck, run.train_frac, seq)?;
    let mut acts = model.activations(batch, seq, Recompute::None)?;
    let step = state.step;
    let mut loss = |split| sampled_loss(&model, &mut acts, &data, split, (eval_iters, batch, seq), (seed, step));
    let (train_loss, val_loss) = (loss(Split::Train)?, loss(Split::Val)?);
    let val_bpb = val_loss / std::f64::consts::LN_2 / data.bytes_per_token(Split::Val);
    if a.json {
        super::out!("{}", json!({"step": step, "train_loss": train_loss, "val_loss": val_loss, "val_bpb": val_bpb}))?;
    } else {
        super::out!("the training run's evaluation at step {step} ({eval_iters} batches per split):")?;
        super::out!("  train loss {train_loss:.4}, val loss {val_loss:.4}, val bpb {val_bpb:.4}")?;
    }
    Ok(())
}

fn print_report(r: &EvalReport, what: &str) -> Result<()> {
    super::out!("{what}: {} predictions", r.tokens)?;
    super::out!("  loss          {:.4} nats/token", r.loss)?;
    super::out!("  perplexity    {:.3}", r.perplexity)?;
    super::out!("  bits/token    {:.4}", r.bits_per_token)?;
    super::out!("  bits/byte     {:.4}", r.bits_per_byte)?;
    super::out!("  top-1 / top-5 {:.2}% / {:.2}%", 100.0 * r.top1, 100.0 * r.top5)?;
    Ok(())
}

fn print_heads(heads: &[HeadStats]) -> Result<()> {
    super::out!("\nattention: entropy (bits) and mean look-back distance (tokens) per head")?;
    super::out!(
        "  {:<6} {:<5} {:>8} {:>9}  distance histogram (share of attention at 0, 1, 2-3, 4-7, ...)",
        "layer",
        "head",
        "entropy",
        "distance"
    )?;
    for h in heads {
        let hist: Vec<String> = h.histogram.iter().map(|m| format!("{:>3.0}%", 100.0 * m)).collect();
        super::out!(
            "  {:<6} {:<5} {:>8.3} {:>9.2}  {}",
            h.layer,
            h.head,
            h.entropy_bits,
            h.mean_distance,
            hist.join(" ")
        )?;
    }
    Ok(())
}
