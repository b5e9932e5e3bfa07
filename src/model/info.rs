//! What a model costs: parameters by component, FLOPs per token, and the
//! memory a training run and the KV cache need (for `ferrite info`).

use super::activations::{activation_bytes_with, Recompute};
use super::config::ModelConfig;
use super::lora::LoraLayout;
use super::params::param_specs;
use crate::engine::DType;
use serde::Serialize;

const F32: usize = std::mem::size_of::<f32>();

/// Parameters by component, in model order. A tied LM head is counted in
/// the token embedding (it is the same tensor).
pub fn params_by_component(cfg: &ModelConfig) -> Vec<(&'static str, usize)> {
    let mut groups: Vec<(&'static str, usize)> = Vec::new();
    for spec in param_specs(cfg) {
        let name = &spec.name;
        let group = if name.contains(".wte.") {
            "token embedding"
        } else if name.contains(".wpe.") {
            "position embedding"
        } else if name.contains(".attn.") {
            "attention"
        } else if name.contains(".mlp.") {
            "mlp"
        } else if name.starts_with("lm_head") {
            "lm head"
        } else {
            "norms"
        };
        match groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => g.1 += spec.numel(),
            None => groups.push((group, spec.numel())),
        }
    }
    groups
}

/// Memory of a training run in bytes, by what holds it.
#[derive(Clone, Debug, Serialize)]
pub struct TrainMemory {
    pub params: usize,
    pub grads: usize,
    /// AdamW's two moments.
    pub optimizer: usize,
    pub activations: usize,
}

impl TrainMemory {
    /// `dtype`: the run's matmul arithmetic (bf16 stores matmul inputs in
    /// bf16). With `lora` (the adapters, and whether they use dropout) the
    /// run trains only them: the base is frozen, so it has no gradients or
    /// optimizer state (nor the activations only its weight gradients read).
    pub fn new(
        cfg: &ModelConfig,
        (batch, seq, recompute, dtype): (usize, usize, Recompute, DType),
        lora: Option<(&LoraLayout, bool)>,
    ) -> TrainMemory {
        let (base, trained) = (cfg.num_params() * F32, lora.map_or(0, |l| l.0.num_params() * F32));
        let grads = if lora.is_some() { trained } else { base };
        TrainMemory {
            params: base + trained,
            grads,
            optimizer: 2 * grads,
            activations: activation_bytes_with(cfg, (batch, seq, recompute, dtype), lora),
        }
    }

    pub fn total(&self) -> usize {
        self.params + self.grads + self.optimizer + self.activations
    }
}

/// Key/value cache bytes per token of context (all layers), keys and
/// values stored as `kv` (bf16 is the inference commands' default).
pub fn kv_cache_bytes_per_token(cfg: &ModelConfig, kv: DType) -> usize {
    2 * cfg.n_layer * cfg.attn_shape(1, 1).kv_width() * kv.bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{MlpKind, NormKind, PosEncoding};

    #[test]
    fn gpt2_style_counts_by_hand() {
        // shakespeare-char-cpu: vocab 65 (padded 128), block 64, 4 layers, 128 wide, no biases.
        let cfg = ModelConfig::gpt2(65, 64, 4, 4, 128);
        let (c, l) = (128, 4);
        let want = [
            ("token embedding", 128 * c),
            ("position embedding", 64 * c),
            // per layer: qkv 3c·c + proj c·c; mlp 4c·c + c·4c; two norms c each
            ("norms", l * 2 * c + c),
            ("attention", l * 4 * c * c),
            ("mlp", l * 8 * c * c),
        ];
        let got = params_by_component(&cfg);
        for (name, n) in want {
            assert_eq!(got.iter().find(|g| g.0 == name).map(|g| g.1), Some(n), "{name}");
        }
        assert_eq!(cfg.num_params(), 16384 + 8192 + 1152 + 262_144 + 524_288);
        // 6N + 12·L·T·C with N the matmul weights (head over the 65 real tokens).
        let n = l * 12 * c * c + 65 * c;
        assert_eq!(cfg.train_flops_per_token(64), (6 * n + 12 * l * 64 * c) as f64);
        assert_eq!(kv_cache_bytes_per_token(&cfg, DType::F32), 2 * l * c * 4);
    }

    #[test]
    fn llama_style_counts_by_hand() {
        // 6 layers, 6 heads of 64 sharing 2 KV heads, SwiGLU 1216 wide, untied, RMSNorm.
        let cfg = ModelConfig {
            n_kv_head: Some(2),
            pos: PosEncoding::Rope,
            norm: NormKind::RmsNorm,
            mlp: MlpKind::Swiglu,
            mlp_hidden: Some(1216),
            tie_embeddings: false,
            ..ModelConfig::gpt2(65, 256, 6, 6, 384)
        };
        let (c, l, h) = (384, 6, 1216);
        let qkv = (6 + 2 * 2) * 64;
        let got = params_by_component(&cfg);
        let count = |name| got.iter().find(|g| g.0 == name).map(|g| g.1);
        assert_eq!(count("position embedding"), None);
        assert_eq!(count("attention"), Some(l * (qkv * c + c * c)));
        assert_eq!(count("mlp"), Some(l * (2 * h * c + h * c)));
        assert_eq!(count("lm head"), Some(128 * c));
        assert_eq!(count("norms"), Some(l * 2 * c + c));
        // The KV cache holds 2 of 6 heads: a third of multi-head attention's.
        assert_eq!(kv_cache_bytes_per_token(&cfg, DType::F32), 2 * l * 2 * 64 * 4);
        assert_eq!(kv_cache_bytes_per_token(&cfg, DType::BF16), 2 * l * 2 * 64 * 2);
    }
}
