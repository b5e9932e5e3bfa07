//! `ferrite info`: what a model costs (parameters, FLOPs, memory), for a
//! configuration or a checkpoint.

use super::RunArgs;
use crate::checkpoint::{self, Prefer};
use crate::engine::DType;
use crate::model::activations::activation_bytes;
use crate::model::info::{kv_cache_bytes_per_token, params_by_component, TrainMemory};
use crate::model::lora::LoraLayout;
use crate::model::{ModelConfig, Recompute};
use crate::train::config;
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Describe this checkpoint (or run directory) instead of a configuration.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Context lengths at which activation memory is shown (it grows linearly:
/// attention keeps no `T x T` probabilities).
const CONTEXTS: [usize; 3] = [256, 1024, 4096];

pub fn run(a: &InfoArgs) -> Result<()> {
    // Adapter parameters of a LoRA run (its base is frozen).
    let mut adapter: Option<(LoraLayout, bool)> = None;
    let (model, batch, seq, recompute, dtype) = match &a.checkpoint {
        Some(dir) => {
            let dir = checkpoint::resolve_dir(dir, Prefer::Best)?;
            let ck = checkpoint::load_config(&dir)?;
            if ck.adapter.is_some() {
                let (lora, _) = checkpoint::adapter::read(&dir, &ck.model)?;
                adapter = Some((LoraLayout::new(&ck.model, &lora)?, lora.dropout > 0.0));
            }
            // How it was trained, where it says so.
            #[derive(serde::Deserialize, Default)]
            #[serde(default)]
            struct Run {
                batch_size: Option<usize>,
                recompute: Recompute,
                dtype: Option<DType>,
            }
            let run: Run = ck.training()?;
            let batch = run.batch_size.unwrap_or(1);
            if !(1..=crate::model::config::MAX_BATCH).contains(&batch) {
                anyhow::bail!("the checkpoint's training record is corrupt (batch_size {batch})");
            }
            let block = ck.model.block_size;
            (ck.model, batch, block, run.recompute, run.dtype.unwrap_or(DType::F32))
        }
        None => {
            let cfg = a.run.resolve()?;
            let m = cfg.model_for_vocab(config::reference_vocab(a.run.preset_name(), &cfg));
            m.validate()?;
            if let Some(lora) = crate::train::trainer::lora_config(&cfg, &m)? {
                adapter = Some((LoraLayout::new(&m, &lora)?, lora.dropout > 0.0));
            }
            (m, cfg.batch_size, cfg.model.block_size, cfg.recompute, cfg.dtype)
        }
    };
    let memory: Vec<(Recompute, TrainMemory)> = [Recompute::None, Recompute::Mlp, Recompute::Block]
        .into_iter()
        .map(|r| (r, TrainMemory::new(&model, (batch, seq, r, dtype), adapter.as_ref().map(|(l, d)| (l, *d)))))
        .collect();
    if a.json {
        let out = json!({
            "model": model,
            "params": model.num_params(),
            "params_by_component": params_by_component(&model).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "forward_flops_per_token": forward_flops(&model, seq),
            "train_flops_per_token": model.train_flops_per_token(seq),
            "lora_params": adapter.as_ref().map(|l| l.0.num_params()),
            "batch_size": batch,
            "block_size": seq,
            "memory_bytes": memory.iter().map(|(r, m)| (label(r), json!({
                "params": m.params, "grads": m.grads, "optimizer": m.optimizer,
                "activations": m.activations, "total": m.total(),
            }))).collect::<serde_json::Map<_, _>>(),
            "recompute": recompute,
            "activation_bytes_by_block_size": CONTEXTS.iter()
                .map(|&t| (t.to_string(), json!(activation_bytes(&model, batch, t, recompute, dtype))))
                .collect::<serde_json::Map<_, _>>(),
            "kv_cache_bytes_per_token": kv_cache_bytes_per_token(&model, DType::BF16),
            "kv_cache_bytes_per_token_f32": kv_cache_bytes_per_token(&model, DType::F32),
        });
        super::out!("{out}")?;
        return Ok(());
    }
    print_table(&model, (batch, seq, recompute, dtype), &memory)?;
    if let Some(n) = adapter.as_ref().map(|l| l.0.num_params()) {
        super::out!(
            "\nLoRA: {n} adapter parameters ({:.2}% of the model) are trained; the base is frozen \
             (no gradients or AdamW state for it: the memory above counts only the adapters')",
            100.0 * n as f64 / model.num_params() as f64
        )?;
    }
    Ok(())
}

/// An option's name as written in configurations (`rope`, `rmsnorm`, ...).
fn label(x: impl serde::Serialize) -> String {
    serde_json::to_value(x).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Forward FLOPs per token: 2 per matmul weight plus the attention products.
fn forward_flops(m: &ModelConfig, seq: usize) -> f64 {
    2.0 * m.matmul_params() as f64 + m.attn_flops_per_token(seq)
}

fn print_table(
    m: &ModelConfig,
    (batch, seq, recompute, dtype): (usize, usize, Recompute, DType),
    memory: &[(Recompute, TrainMemory)],
) -> Result<()> {
    let attn =
        if m.kv_heads() == m.n_head { String::new() } else { format!(" sharing {} key/value heads", m.kv_heads()) };
    super::out!(
        "model: {} layers, {} heads{attn}, {} wide, block {}, vocab {} (padded {})",
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.vocab_size,
        m.padded_vocab
    )?;
    super::out!(
        "       {} positions, {}{}, {} MLP ({} hidden), {} embeddings{}{}",
        label(m.pos),
        label(m.norm),
        if m.qk_norm { " + QK-norm" } else { "" },
        label(m.mlp),
        m.hidden(),
        if m.tie_embeddings { "tied" } else { "untied" },
        if m.bias { ", biases" } else { "" },
        m.logit_softcap.map(|c| format!(", logits capped at {c}")).unwrap_or_default()
    )?;
    super::out!("\nparameters: {} ({:.2}M)", m.num_params(), m.num_params() as f64 / 1e6)?;
    for (name, n) in params_by_component(m) {
        super::out!("  {name:<20} {n:>12}")?;
    }
    super::out!("\nFLOPs per token at context {seq}:")?;
    super::out!("  forward              {:>12.4e}", forward_flops(m, seq))?;
    super::out!(
        "  training             {:>12.4e}  (6N + attention, N = {} matmul weights)",
        m.train_flops_per_token(seq),
        m.matmul_params()
    )?;
    // bf16 runs keep their matmul inputs in bf16; weights, gradients and
    // AdamW stay f32 either way.
    super::out!("\ntraining memory at batch {batch} x block {seq}, {dtype} matmuls (MiB):")?;
    super::out!(
        "  {:<12} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "recompute",
        "params",
        "grads",
        "AdamW",
        "activations",
        "total"
    )?;
    for (r, mem) in memory {
        let mark = if *r == recompute { " <- configured" } else { "" };
        super::out!(
            "  {:<12} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>10.1}{mark}",
            label(r),
            mem.params as f64 / MIB,
            mem.grads as f64 / MIB,
            mem.optimizer as f64 / MIB,
            mem.activations as f64 / MIB,
            mem.total() as f64 / MIB
        )?;
    }
    let at: Vec<String> = CONTEXTS
        .iter()
        .map(|&t| format!("{:.1} MiB at {t}", activation_bytes(m, batch, t, recompute, dtype) as f64 / MIB))
        .collect();
    super::out!(
        "  activations at other block sizes (batch {batch}, recompute {}): {}",
        label(recompute),
        at.join(", ")
    )?;
    // bf16 is what sample, chat and serve store by default (`--kv-dtype`).
    let kv = kv_cache_bytes_per_token(m, DType::BF16);
    super::out!(
        "\nKV cache: {kv} bytes per token in bf16 ({:.2} MiB for a full {}-token context; f32 (--kv-dtype f32): twice that)",
        (kv * m.block_size) as f64 / MIB,
        m.block_size
    )?;
    Ok(())
}
