//! LoRA adapters: `y = x Wᵀ + s · dropout(x) Aᵀ Bᵀ` on chosen projections,
//! with the base weights frozen (Hu et al. 2021; PEFT's layout: A `[r, in]`,
//! B `[out, r]`, `s = alpha / r`).
//!
//! Adapters are named after the modules of the Hugging Face class the model
//! exports as, so PEFT reads them: GPT-2's (`transformer.h.N.attn.c_attn`, a
//! fused q/k/v) for models with a plain MLP, Llama's
//! (`model.layers.N.self_attn.q_proj`, ...) for gated ones. An adapter of
//! one of q, k, v (or the gate or up half of a gated MLP) covers those
//! output rows of our fused weight.

use super::config::{MlpKind, ModelConfig};
use super::gpt::Gpt;
use super::params::{init_params, Init, ParamSpec};
use crate::engine::Backend;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A projection LoRA can adapt (`--lora-targets` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// GPT-2's fused q/k/v (`c_attn`): what q, k and v name together there.
    Qkv,
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The linear layer of a block an adapter adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Qkv,
    Proj,
    Fc,
    FcProj,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Qkv, Site::Proj, Site::Fc, Site::FcProj];
    fn index(self) -> usize {
        self as usize
    }
}

/// The hyper-parameters of a set of adapters (PEFT's `LoraConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// The adapted projections, as the model's naming has them (q, k and v
    /// are `qkv` for a fused-attention model).
    pub targets: Vec<Target>,
    /// Only these layers (PEFT's `layers_to_transform`); none: all.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Rank-stabilised scaling, `alpha / sqrt(r)` (PEFT's `use_rslora`).
    #[serde(default)]
    pub rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }
}

/// The names a model's modules have: which Hugging Face class it exports as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// GPT2LMHeadModel's: one fused q/k/v projection, a plain MLP.
    Gpt2,
    /// LlamaForCausalLM's: q, k, v, o; gate, up, down.
    Llama,
}

impl Naming {
    pub fn of(cfg: &ModelConfig) -> Naming {
        if cfg.mlp == MlpKind::Swiglu {
            Naming::Llama
        } else {
            Naming::Gpt2
        }
    }

    /// The targets this naming has, in order.
    pub fn targets(self) -> &'static [Target] {
        match self {
            Naming::Gpt2 => &[Target::Qkv, Target::O, Target::Up, Target::Down],
            Naming::Llama => &[Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down],
        }
    }

    /// The end of `target`'s module name, after the layer.
    pub fn suffix(self, target: Target) -> &'static str {
        match (self, target) {
            (Naming::Gpt2, Target::Qkv) => "attn.c_attn",
            (Naming::Gpt2, Target::O) => "attn.c_proj",
            (Naming::Gpt2, Target::Up) => "mlp.c_fc",
            (Naming::Gpt2, Target::Down) => "mlp.c_proj",
            (Naming::Llama, Target::Q) => "self_attn.q_proj",
            (Naming::Llama, Target::K) => "self_attn.k_proj",
            (Naming::Llama, Target::V) => "self_attn.v_proj",
            (Naming::Llama, Target::O) => "self_attn.o_proj",
            (Naming::Llama, Target::Gate) => "mlp.gate_proj",
            (Naming::Llama, Target::Up) => "mlp.up_proj",
            (Naming::Llama, Target::Down) => "mlp.down_proj",
            (n, t) => unreachable!("{n:?} has no {t:?}"),
        }
    }

    /// The module (as PEFT names it) of `target` in layer `l`.
    pub fn module(self, l: usize, target: Target) -> String {
        match self {
            Naming::Gpt2 => format!("transformer.h.{l}.{}", self.suffix(target)),
            Naming::Llama => format!("model.layers.{l}.{}", self.suffix(target)),
        }
    }

    /// `--lora-targets`: our projection names (q,k,v,o,up,down,gate) or the
    /// modules' own (c_attn, q_proj, ...), checked against this naming.
    pub fn parse_targets(self, list: &str) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let t = match word {
                "q" | "q_proj" => Target::Q,
                "k" | "k_proj" => Target::K,
                "v" | "v_proj" => Target::V,
                "qkv" | "c_attn" => Target::Qkv,
                "o" | "o_proj" | "attn.c_proj" => Target::O,
                "gate" | "gate_proj" => Target::Gate,
                "up" | "up_proj" | "c_fc" => Target::Up,
                "down" | "down_proj" | "mlp.c_proj" => Target::Down,
                other => bail!("unknown LoRA target {other:?} (valid: q, k, v, o, up, down, gate)"),
            };
            out.push(t);
        }
        let has = |out: &[Target], t: Target| out.contains(&t);
        if self == Naming::Gpt2 {
            let qkv = [Target::Q, Target::K, Target::V].map(|t| has(&out, t));
            if qkv.contains(&true) && qkv.contains(&false) {
                bail!("this model's q, k and v are one fused projection (GPT-2's c_attn): target q, k and v together");
            }
            if qkv[0] {
                out.retain(|t| ![Target::Q, Target::K, Target::V].contains(t));
                out.push(Target::Qkv);
            }
            if has(&out, Target::Gate) {
                bail!("LoRA target gate: this model's MLP is not gated (gate exists with mlp=swiglu)");
            }
        } else if has(&out, Target::Qkv) {
            out.retain(|t| *t != Target::Qkv);
            out.extend([Target::Q, Target::K, Target::V]);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            bail!("--lora-targets names no projection (valid: q, k, v, o, up, down, gate)");
        }
        Ok(out)
    }
}

/// One adapter: where it adds and which parameters hold its A and B.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub layer: usize,
    pub target: Target,
    pub site: Site,
    /// First output row of the site's weight it covers, and how many.
    pub row0: usize,
    pub rows: usize,
    /// Input width.
    pub inp: usize,
    /// Indices of A and B in [`LoraLayout::specs`].
    pub a: usize,
    pub b: usize,
}

#[derive(Clone, Debug)]
pub struct LoraLayout {
    pub naming: Naming,
    pub rank: usize,
    pub specs: Vec<ParamSpec>,
    pub adapters: Vec<Adapter>,
    /// Per layer and site, the adapters there.
    by_site: Vec<[Vec<usize>; 4]>,
}

/// PEFT's tensor name of an adapter's A or B.
pub fn tensor_name(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

impl LoraLayout {
    /// Adapters on `lora.targets` in every layer (or `lora.layers`).
    /// Initialisation as PEFT's: A uniform in ±1/sqrt(in), B zero (an
    /// untrained adapter changes nothing).
    pub fn new(cfg: &ModelConfig, lora: &LoraConfig) -> Result<LoraLayout> {
        let naming = Naming::of(cfg);
        if lora.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            bail!("lora_dropout must be in [0, 1), not {}", lora.dropout);
        }
        if !lora.alpha.is_finite() {
            bail!("lora_alpha must be a number, not {}", lora.alpha);
        }
        for t in &lora.targets {
            if !naming.targets().contains(t) {
                bail!("LoRA target {t:?} does not exist in this model (it has {:?})", naming.targets());
            }
        }
        let layers: Vec<usize> = match &lora.layers {
            Some(ls) => {
                if let Some(l) = ls.iter().find(|&&l| l >= cfg.n_layer) {
                    bail!("LoRA layer {l} does not exist (the model has {} layers)", cfg.n_layer);
                }
                ls.clone()
            }
            None => (0..cfg.n_layer).collect(),
        };
        let (c, qw, kvw, h) =
            (cfg.n_embd, cfg.attn_shape(1, 1).q_width(), cfg.attn_shape(1, 1).kv_width(), cfg.hidden());
        let gated = cfg.mlp == MlpKind::Swiglu;
        let mut specs = Vec::new();
        let mut adapters = Vec::new();
        let mut by_site = vec![[vec![], vec![], vec![], vec![]]; cfg.n_layer];
        for &l in &layers {
            for &target in naming.targets().iter().filter(|t| lora.targets.contains(t)) {
                let (site, row0, rows, inp) = match target {
                    Target::Qkv => (Site::Qkv, 0, cfg.qkv_width(), c),
                    Target::Q => (Site::Qkv, 0, qw, c),
                    Target::K => (Site::Qkv, qw, kvw, c),
                    Target::V => (Site::Qkv, qw + kvw, kvw, c),
                    Target::O => (Site::Proj, 0, c, c),
                    Target::Gate => (Site::Fc, 0, h, c),
                    Target::Up => (Site::Fc, if gated { h } else { 0 }, h, c),
                    Target::Down => (Site::FcProj, 0, c, h),
                };
                let module = naming.module(l, target);
                let bound = 1.0 / (inp as f32).sqrt();
                specs.push(ParamSpec {
                    name: tensor_name(&module, 'A'),
                    shape: vec![lora.rank, inp],
                    init: Init::Uniform(bound),
                });
                specs.push(ParamSpec {
                    name: tensor_name(&module, 'B'),
                    shape: vec![rows, lora.rank],
                    init: Init::Zeros,
                });
                by_site[l][site.index()].push(adapters.len());
                let (a, b) = (specs.len() - 2, specs.len() - 1);
                adapters.push(Adapter { layer: l, target, site, row0, rows, inp, a, b });
            }
        }
        Ok(LoraLayout { naming, rank: lora.rank, specs, adapters, by_site })
    }

    /// The adapters (indices) on `site` of layer `l`.
    pub fn at(&self, l: usize, site: Site) -> &[usize] {
        &self.by_site[l][site.index()]
    }

    /// The widest input an adapter reads.
    pub fn max_inp(&self) -> usize {
        self.adapters.iter().map(|a| a.inp).max().unwrap_or(0)
    }

    pub fn num_params(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }

    /// Which targets and layers a set of PEFT tensor names covers (an
    /// adapter written by PEFT or by us); an error names a tensor that
    /// belongs to no module of this model.
    pub fn modules_of<'a>(
        cfg: &ModelConfig,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(Vec<Target>, Option<Vec<usize>>)> {
        let naming = Naming::of(cfg);
        let mut known = BTreeMap::new();
        for l in 0..cfg.n_layer {
            for &t in naming.targets() {
                for which in ['A', 'B'] {
                    known.insert(tensor_name(&naming.module(l, t), which), (l, t));
                }
            }
        }
        let (mut targets, mut layers) = (Vec::new(), Vec::new());
        for name in names {
            let Some(&(l, t)) = known.get(name) else {
                bail!(
                    "adapter tensor {name} is not a LoRA weight of any module of this model (is it for another base?)"
                );
            };
            targets.push(t);
            layers.push(l);
        }
        targets.sort();
        targets.dedup();
        layers.sort();
        layers.dedup();
        let all = layers.len() == cfg.n_layer;
        Ok((targets, (!all).then_some(layers)))
    }

    /// Initial adapter weights from a seed.
    pub fn init(&self, seed: u64) -> Vec<Vec<f32>> {
        init_params(&self.specs, seed)
    }
}

/// Folds adapters into base weights (host memory): `W[rows] += s · B A`
/// for each, on the weight matrices of the model's `blocks`.
pub fn merge(
    base: &mut [Vec<f32>],
    blocks: &[super::params::BlockIdx],
    lora: &LoraLayout,
    weights: &[Vec<f32>],
    scale: f32,
) {
    for ad in &lora.adapters {
        let b = &blocks[ad.layer];
        let w = match ad.site {
            Site::Qkv => b.qkv.w,
            Site::Proj => b.proj.w,
            Site::Fc => b.fc.w,
            Site::FcProj => b.fcproj.w,
        };
        let (a_w, b_w, r) = (&weights[ad.a], &weights[ad.b], lora.rank);
        let dst = &mut base[w];
        for i in 0..ad.rows {
            let row = &mut dst[(ad.row0 + i) * ad.inp..(ad.row0 + i + 1) * ad.inp];
            for k in 0..r {
                let coef = scale * b_w[i * r + k];
                for (x, a) in row.iter_mut().zip(&a_w[k * ad.inp..(k + 1) * ad.inp]) {
                    *x += coef * a;
                }
            }
        }
    }
}

/// A model's adapters on a backend.
pub struct Lora<T> {
    pub config: LoraConfig,
    pub layout: LoraLayout,
    pub params: Vec<T>,
}

/// Scratch of the adapters' forward and backward over `rows` rows.
pub struct LoraActs<T> {
    /// Each adapter's `s · dropout(x) Aᵀ` (`[rows, r]`), kept for backward.
    pub u: Vec<T>,
    /// The dropped-out input (`[rows, widest input]`; empty without dropout).
    pub x: T,
    /// The gradient at `u` (`[rows, r]`).
    pub g: T,
    /// Where a frozen norm's weight and bias gradients go (`[n_embd]`).
    pub frozen_w: T,
    pub frozen_b: T,
}

impl<T> LoraActs<T> {
    /// `lora`: the adapters and whether dropout runs (none: empty buffers).
    pub fn build(
        cfg: &ModelConfig,
        lora: Option<(&LoraLayout, bool)>,
        rows: usize,
        alloc: &mut impl FnMut(usize, crate::engine::DType) -> Result<T>,
    ) -> Result<Self> {
        let f32 = crate::engine::DType::F32;
        // Adapters, rank, norm width, dropout scratch width.
        let (count, r, c, x) = match lora {
            Some((l, dropout)) => (l.adapters.len(), l.rank, cfg.n_embd, if dropout { l.max_inp() } else { 0 }),
            None => (0, 0, 0, 0),
        };
        Ok(LoraActs {
            u: (0..count).map(|_| alloc(rows * r, f32)).collect::<Result<_>>()?,
            x: alloc(rows * x, f32)?,
            g: alloc(rows * r, f32)?,
            frozen_w: alloc(c, f32)?,
            frozen_b: alloc(c, f32)?,
        })
    }
}

impl<B: Backend> Gpt<B> {
    /// Attaches adapters: `weights` in layout order (checked against it), or
    /// fresh ones from `seed`. From here on the base is frozen.
    pub fn attach_lora(&mut self, config: LoraConfig, weights: Option<Vec<Vec<f32>>>, seed: u64) -> Result<()> {
        let layout = LoraLayout::new(&self.cfg, &config)?;
        let host = weights.unwrap_or_else(|| layout.init(seed));
        if host.len() != layout.specs.len() {
            bail!("the adapter has {} tensors where this model needs {}", host.len(), layout.specs.len());
        }
        for (h, spec) in host.iter().zip(&layout.specs) {
            if h.len() != spec.numel() {
                bail!(
                    "adapter tensor {} has {} values, not {:?} (an adapter for another base?)",
                    spec.name,
                    h.len(),
                    spec.shape
                );
            }
        }
        let params = host.iter().map(|p| self.be.upload(p)).collect::<Result<_>>()?;
        self.lora = Some(Lora { config, layout, params });
        Ok(())
    }

    /// The adapters' weights on the host (none without adapters).
    pub fn lora_to_host(&self) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(l) = &self.lora else { return Ok(None) };
        Ok(Some(l.params.iter().map(|p| self.be.to_host(p)).collect::<Result<_>>()?))
    }

    /// The base weights with the adapters folded in (host memory).
    pub fn merged_params(&self) -> Result<Vec<Vec<f32>>> {
        let mut base = self.params_to_host()?;
        if let (Some(l), Some(w)) = (&self.lora, self.lora_to_host()?) {
            merge(&mut base, &self.layout.blocks, &l.layout, &w, l.config.scale());
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::test_variants;

    fn cfg_of(targets: &[Target]) -> LoraConfig {
        LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: targets.to_vec(), layers: None, rslora: false }
    }

    #[test]
    fn targets_follow_the_naming() {
        let gpt2 = Naming::Gpt2;
        assert_eq!(gpt2.parse_targets("q,k,v,o").unwrap(), vec![Target::Qkv, Target::O]);
        assert!(gpt2.parse_targets("q,v").unwrap_err().to_string().contains("together"));
        assert!(gpt2.parse_targets("gate").unwrap_err().to_string().contains("not gated"));
        assert!(gpt2.parse_targets("x").unwrap_err().to_string().contains("unknown LoRA target"));
        let llama = Naming::Llama;
        assert_eq!(llama.parse_targets("v,q_proj").unwrap(), vec![Target::Q, Target::V]);
        assert_eq!(llama.parse_targets("c_attn").unwrap(), vec![Target::Q, Target::K, Target::V]);
    }

    #[test]
    fn adapters_cover_their_rows_and_names_read_back() {
        for cfg in test_variants() {
            let naming = Naming::of(&cfg);
            let layout = LoraLayout::new(&cfg, &cfg_of(naming.targets())).unwrap();
            assert_eq!(layout.adapters.len(), cfg.n_layer * naming.targets().len());
            // The q, k, v (or fused) adapters tile the q/k/v rows exactly.
            let qkv: usize =
                layout.adapters.iter().filter(|a| a.layer == 0 && a.site == Site::Qkv).map(|a| a.rows).sum();
            assert_eq!(qkv, cfg.qkv_width());
            let names = layout.specs.iter().map(|s| s.name.as_str());
            let (targets, layers) = LoraLayout::modules_of(&cfg, names).unwrap();
            assert_eq!(targets, naming.targets());
            assert_eq!(layers, None);
            let bad = LoraLayout::modules_of(&cfg, ["base_model.model.lm_head.lora_A.weight"].into_iter());
            assert!(bad.unwrap_err().to_string().contains("another base"));
        }
    }
}
