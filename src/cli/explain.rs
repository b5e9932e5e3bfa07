//! `ferrite explain`: one forward and one backward pass of a tiny model (or
//! a checkpoint) on a short text, printed layer by layer: each tensor's
//! name, shape and first values, one head's attention, the loss and the
//! gradient norms; `--html` writes the same as one self-contained page.

use crate::checkpoint;
use crate::data::Tokenizer;
use crate::engine::{Backend, DType};
use crate::eval::explain::{walk_through, TensorView, Walkthrough};
use crate::model::{Gpt, ModelConfig};
use crate::plot::explain::{label, SHOWN_POSITIONS};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The text the model reads (each token predicts the next one).
    #[arg(long, default_value = "First Citizen: Before we proceed any further, hear me speak.")]
    text: String,
    /// A trained checkpoint (or run directory) instead of the tiny random
    /// model (2 layers, 2 heads, 16 wide, the text's characters as vocabulary).
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Seed of the tiny model's initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which attention head to show in each layer.
    #[arg(long, default_value_t = 0)]
    head: usize,
    /// Values shown per tensor (from the last position's row).
    #[arg(long, default_value_t = 4)]
    values: usize,
    /// Also write the walkthrough as one self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

super::on_device!(ExplainArgs, explain);

fn explain<B: Backend>(a: &ExplainArgs, be: B) -> Result<()> {
    if !(1..=64).contains(&a.values) {
        bail!("--values takes 1 to 64");
    }
    let (model, tok, origin) = match &a.checkpoint {
        Some(dir) => {
            // Gradients need float weights: a quantized checkpoint is widened.
            let loaded = checkpoint::load_model_as(be, dir, Some(DType::F32))?;
            let origin = format!("the checkpoint {}", loaded.dir.display());
            (loaded.model, loaded.config.tokenizer, origin)
        }
        None => {
            let tok = Tokenizer::char_from_corpus(&a.text);
            let block = a.text.chars().count().saturating_sub(1).max(1);
            let cfg = ModelConfig::gpt2(tok.vocab_size(), block, 2, 2, 16);
            let origin = format!("a tiny GPT-2, randomly initialised (seed {})", a.seed);
            (Gpt::new(be, cfg, a.seed)?, tok, origin)
        }
    };
    let tokens = tok.encode(&a.text)?;
    let w = walk_through(&model, &tokens, a.head, a.values)?;
    let pieces: Vec<String> = tokens.iter().map(|&t| tok.decode(&[t])).collect();
    let line = format!("{origin}: {}", describe(&model.cfg));
    print_text(&model.cfg, &line, &a.text, &pieces, &w)?;
    if let Some(path) = &a.html {
        let page = crate::plot::explain::page(&line, &a.text, &pieces, &w);
        crate::data::files::write_atomic(path, page.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        out!("wrote {}", path.display())?;
    }
    Ok(())
}

/// One line describing the model's architecture.
fn describe(cfg: &ModelConfig) -> String {
    format!(
        "{} layers, {} heads ({} key/value), {} wide, vocabulary {}, {} positions, {}, {} MLP",
        cfg.n_layer,
        cfg.n_head,
        cfg.attn_shape(1, 1).kv_heads,
        cfg.n_embd,
        cfg.vocab_size,
        name(cfg.pos),
        name(cfg.norm),
        name(cfg.mlp)
    )
}

/// An option's value as configuration files spell it.
fn name(v: impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn row(t: &TensorView) -> String {
    let shape = format!("{:?}", t.shape);
    let values: Vec<String> = t.last_row.iter().map(|v| format!("{v:+.4}")).collect();
    format!("{:<12} {:<11} {:>9.4} {:>9.4}  [{}]  {}", t.name, shape, t.mean, t.std, values.join(", "), t.what)
}

fn print_text(cfg: &ModelConfig, model: &str, text: &str, pieces: &[String], w: &Walkthrough) -> Result<()> {
    out!("ferrite explain: one forward and one backward pass through ferrite's engine")?;
    out!("model   {model}")?;
    out!("text    {text:?}: {} tokens, {} predictions (each token predicts the next)", pieces.len(), w.targets.len())?;
    out!("\nFORWARD  (mean, std over the tensor; values: the first of the last position's row)")?;
    out!("{:<12} {:<11} {:>9} {:>9}  values", "tensor", "shape", "mean", "std")?;
    out!("{}", row(&w.embedding))?;
    let shown = pieces.len().saturating_sub(1).min(SHOWN_POSITIONS);
    for layer in &w.layers {
        out!("block {}", layer.layer)?;
        for t in &layer.tensors {
            out!("  {}", row(t))?;
        }
        out!("  attention of head {} (row: a query token; column: a key token; % of the row's weight):", w.head)?;
        let labels: Vec<String> = pieces[..shown].iter().map(|p| label(p)).collect();
        let header: String = labels.iter().map(|l| format!("{l:>4}")).collect();
        out!("  {:>6}{header}", "")?;
        for (t, probs) in layer.attention.iter().take(shown).enumerate() {
            let cells: String = probs.iter().map(|p| format!("{:>4.0}", p * 100.0)).collect();
            out!("  {:>6}{cells}", labels[t])?;
        }
    }
    for t in &w.output {
        out!("{}", row(t))?;
    }
    out!(
        "loss    {:.4} nats per prediction (mean cross-entropy); a uniform guess over {} tokens scores ln {} = {:.4}",
        w.loss,
        cfg.vocab_size,
        cfg.vocab_size,
        w.uniform_loss
    )?;
    out!("\nBACKWARD  (gradient norms ‖∂loss/∂θ‖₂ of each parameter)")?;
    for g in &w.grads {
        out!("{:<40} {:<14} {:>10.6}", g.name, format!("{:?}", g.shape), g.norm)?;
    }
    out!("{:<40} {:<14} {:>10.6}  (what --grad-clip compares)", "all parameters", "", w.grad_norm)?;
    Ok(())
}
