//! `ferrite eval`: loss, perplexity, bits per token and byte, next-token
//! accuracy, and attention analysis of a checkpoint on a text file.

use crate::data::dataset::read_corpus;
use crate::data::{Dataset, Split};
use crate::engine::cpu::Cpu;
use crate::eval::{attention_stats, evaluate, EvalReport, HeadStats};
use crate::train::checkpoint::{self, Prefer};
use crate::train::Trainer;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;

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

pub fn run(a: &EvalArgs) -> Result<()> {
    if a.batch_size == 0 || a.attention_windows == 0 || a.tokens == Some(0) {
        bail!("--batch-size, --attention-windows and --tokens must be at least 1");
    }
    let dir = checkpoint::resolve_dir(&a.checkpoint, Prefer::Best)?;
    if a.like_training {
        return like_training(a, &dir);
    }
    let (model, ck, _) = checkpoint::load_model(Cpu, &dir)?;
    let tok = &ck.tokenizer;
    let path = match &a.data {
        Some(p) => p.clone(),
        None if !ck.train.dataset.is_empty() => PathBuf::from(&ck.train.dataset),
        None if ck.train.data.is_empty() => crate::data::download::tiny_shakespeare()?,
        None => PathBuf::from(&ck.train.data),
    };
    let split_of = |ds: &Dataset| -> Vec<u32> {
        match a.split.as_str() {
            "all" => [ds.train.to_vec(), ds.val.to_vec()].concat(),
            "train" => ds.split(Split::Train).to_vec(),
            _ => ds.split(Split::Val).to_vec(),
        }
    };
    let stream: Vec<u32> = if path.is_dir() {
        // A prepared dataset: its own split, in its tokenizer.
        let (manifest, ds) = Dataset::open_prepared(&path, 1)?;
        if &manifest.tokenizer != tok {
            bail!("dataset {} uses a different tokenizer than the checkpoint", path.display());
        }
        split_of(&ds)
    } else {
        let text = read_corpus(&path, tok.needs_utf8())?;
        match a.split.as_str() {
            "all" => tok.encode(&text)?,
            _ => split_of(&Dataset::new(&text, tok, ck.train.train_frac, 1)?),
        }
    };
    if stream.len() < 2 {
        bail!("the {} split of {} has fewer than 2 tokens", a.split, path.display());
    }
    let report = evaluate(&model, &stream, &tok.token_bytes(), a.batch_size, a.tokens);
    let heads = if a.attention {
        let t = model.cfg.block_size.min(stream.len());
        let windows: Vec<Vec<u32>> = stream.chunks_exact(t).take(a.attention_windows).map(<[u32]>::to_vec).collect();
        Some(attention_stats(&model, &windows))
    } else {
        None
    };
    if let (Some(prefix), Some(h)) = (&a.plot, &heads) {
        for file in crate::plot::attention(h, model.cfg.block_size.min(stream.len()), prefix)? {
            eprintln!("wrote {}", file.display());
        }
    }
    if a.json {
        let mut out = json!({"checkpoint": dir, "data": path, "split": a.split, "metrics": report});
        if let Some(h) = &heads {
            out["attention"] = serde_json::to_value(h)?;
        }
        println!("{out}");
    } else {
        print_report(&report, &format!("{} ({} split)", path.display(), a.split));
        if let Some(h) = &heads {
            print_heads(h);
        }
    }
    Ok(())
}

fn like_training(a: &EvalArgs, dir: &std::path::Path) -> Result<()> {
    let mut t = Trainer::resume(Cpu, dir, |mut cfg| {
        if let Some(p) = &a.data {
            cfg.data = p.display().to_string();
        }
        Ok(cfg)
    })?;
    let e = t.evaluate();
    let step = t.state.step;
    if a.json {
        println!("{}", json!({"step": step, "train_loss": e.train_loss, "val_loss": e.val_loss, "val_bpb": e.val_bpb}));
    } else {
        println!("the training run's evaluation at step {step} ({} batches per split):", t.cfg.eval_iters);
        println!("  train loss {:.4}, val loss {:.4}, val bpb {:.4}", e.train_loss, e.val_loss, e.val_bpb);
    }
    Ok(())
}

fn print_report(r: &EvalReport, what: &str) {
    println!("{what}: {} predictions", r.tokens);
    println!("  loss          {:.4} nats/token", r.loss);
    println!("  perplexity    {:.3}", r.perplexity);
    println!("  bits/token    {:.4}", r.bits_per_token);
    println!("  bits/byte     {:.4}", r.bits_per_byte);
    println!("  top-1 / top-5 {:.2}% / {:.2}%", 100.0 * r.top1, 100.0 * r.top5);
}

fn print_heads(heads: &[HeadStats]) {
    println!("\nattention: entropy (bits) and mean look-back distance (tokens) per head");
    println!(
        "  {:<6} {:<5} {:>8} {:>9}  distance histogram (share of attention at 0, 1, 2-3, 4-7, ...)",
        "layer", "head", "entropy", "distance"
    );
    for h in heads {
        let hist: Vec<String> = h.histogram.iter().map(|m| format!("{:>3.0}%", 100.0 * m)).collect();
        println!("  {:<6} {:<5} {:>8.3} {:>9.2}  {}", h.layer, h.head, h.entropy_bits, h.mean_distance, hist.join(" "));
    }
}
