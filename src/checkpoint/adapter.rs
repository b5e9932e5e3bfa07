//! LoRA adapters on disk in PEFT's format: `adapter_model.safetensors`
//! (`base_model.model.<module>.lora_A.weight` `[r, in]` and `lora_B.weight`
//! `[out, r]`, f32) and `adapter_config.json` (PEFT's `LoraConfig`), so
//! Hugging Face `peft` loads our adapters onto an exported model, and we load
//! adapters `peft` trained.

use super::tensors::{load_safetensors, save_safetensors, take_params};
use crate::model::lora::{LoraConfig, LoraLayout, Naming};
use crate::model::params::ParamSpec;
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::Path;

pub const WEIGHTS: &str = "adapter_model.safetensors";
pub const CONFIG: &str = "adapter_config.json";

/// Writes the adapter files into `dir`: `specs` and `params` in layout
/// order; `base` names the base model (PEFT's `base_model_name_or_path`).
pub fn write(
    dir: &Path,
    model: &ModelConfig,
    lora: &LoraConfig,
    specs: &[ParamSpec],
    params: &[&[f32]],
    base: &str,
) -> Result<()> {
    let named: Vec<(String, Vec<usize>, &[f32])> =
        specs.iter().zip(params).map(|(s, p)| (s.name.clone(), s.shape.clone(), *p)).collect();
    save_safetensors(&dir.join(WEIGHTS), &named)?;
    let naming = Naming::of(model);
    // Suffixes PEFT matches module names against ("c_proj" alone would
    // match GPT-2's MLP projection too).
    let modules: Vec<&str> = lora.targets.iter().map(|&t| naming.suffix(t)).collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "layers_to_transform": lora.layers,
        "bias": "none",
        // GPT-2's projections are Conv1D ([in, out]) on the Hugging Face side.
        "fan_in_fan_out": naming == Naming::Gpt2,
        "use_rslora": lora.rslora,
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    let path = dir.join(CONFIG);
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The fields of PEFT's `adapter_config.json` that change what an adapter
/// computes; an option we do not implement is an error naming it.
#[derive(Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    lora_dropout: f32,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    modules_to_save: Option<Value>,
    #[serde(default)]
    rank_pattern: Option<Map<String, Value>>,
    #[serde(default)]
    alpha_pattern: Option<Map<String, Value>>,
}

/// Reads the adapter in `dir` for a base of configuration `model`: its
/// configuration and weights in layout order. Tensors for modules the base
/// does not have, or of other shapes, are errors (an adapter for another base).
pub fn read(dir: &Path, model: &ModelConfig) -> Result<(LoraConfig, Vec<Vec<f32>>)> {
    let (cfg_path, weights) = (dir.join(CONFIG), dir.join(WEIGHTS));
    if !cfg_path.is_file() || !weights.is_file() {
        bail!("{} is not a LoRA adapter (it needs {CONFIG} and {WEIGHTS})", dir.display());
    }
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let peft: PeftConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a PEFT LoRA config", cfg_path.display()))?;
    let unsupported = |what: &str| bail!("{}: {what} is not supported (plain LoRA only)", cfg_path.display());
    match peft.peft_type.as_deref() {
        Some("LORA") | None => {}
        Some(other) => bail!("{}: peft_type {other} is not LORA", cfg_path.display()),
    }
    if peft.bias.as_deref().is_some_and(|b| b != "none") {
        return unsupported("bias training (bias other than \"none\")");
    }
    if peft.use_dora {
        return unsupported("DoRA (use_dora)");
    }
    if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty())) {
        return unsupported("modules_to_save");
    }
    if peft.rank_pattern.as_ref().is_some_and(|m| !m.is_empty())
        || peft.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty())
    {
        return unsupported("per-module ranks or alphas (rank_pattern, alpha_pattern)");
    }
    let tensors = load_safetensors(&weights)?;
    if tensors.is_empty() {
        bail!("{} holds no tensors: not a LoRA adapter", weights.display());
    }
    let (targets, layers) = LoraLayout::modules_of(model, tensors.keys().map(String::as_str))?;
    let lora = LoraConfig {
        rank: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        targets,
        layers,
        rslora: peft.use_rslora,
    };
    let layout = LoraLayout::new(model, &lora).with_context(|| format!("adapter {}", dir.display()))?;
    let params = take_params(&layout.specs, tensors, "", &weights).context("is the adapter for another base?")?;
    Ok((lora, params))
}
