//! The parameter layout (nanoGPT's names, so checkpoints read naturally from
//! PyTorch) and initialisation (files: [`crate::checkpoint::tensors`]).

use super::config::{ModelConfig, NormKind, PosEncoding};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal(0, std).
    Normal(f32),
    /// Uniform in [-bound, bound).
    Uniform(f32),
    Ones,
    Zeros,
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay applies to matrices (and embeddings), not to vectors.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// A normalisation's parameters: weight, and bias for a LayerNorm with biases.
#[derive(Clone, Copy, Debug)]
pub struct NormIdx {
    pub w: usize,
    pub b: Option<usize>,
}

/// A linear layer's parameters (`y = x W^T + b`, W stored `[out, in]`).
#[derive(Clone, Copy, Debug)]
pub struct LinearIdx {
    pub w: usize,
    pub b: Option<usize>,
}

/// Indices into the parameter list for one transformer block.
#[derive(Clone, Debug)]
pub struct BlockIdx {
    pub ln1: NormIdx,
    pub qkv: LinearIdx,
    pub proj: LinearIdx,
    pub ln2: NormIdx,
    pub fc: LinearIdx,
    pub fcproj: LinearIdx,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub wte: usize,
    /// The learned position table, when positions are learned.
    pub wpe: Option<usize>,
    pub blocks: Vec<BlockIdx>,
    pub lnf: NormIdx,
    /// The LM head: `lm_head.weight`, or `wte` when tied.
    pub head: usize,
}

pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    Layout::new(cfg).specs
}

impl Layout {
    /// nanoGPT's parameter names (so checkpoints read naturally from
    /// PyTorch) and GPT-2's initialisation: N(0, 0.02), the projections into
    /// the residual stream scaled by 1/sqrt(2 · n_layer), norms at 1, biases at 0.
    pub fn new(cfg: &ModelConfig) -> Layout {
        let c = cfg.n_embd;
        let std = 0.02f32;
        let proj_std = std / (2.0 * cfg.n_layer as f32).sqrt();
        let mut specs = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, init: Init| {
            specs.push(ParamSpec { name, shape, init });
            specs.len() - 1
        };
        let layernorm_bias = cfg.bias && cfg.norm == NormKind::LayerNorm;
        let norm = |add: &mut dyn FnMut(String, Vec<usize>, Init) -> usize, name: &str| NormIdx {
            w: add(format!("{name}.weight"), vec![c], Init::Ones),
            b: layernorm_bias.then(|| add(format!("{name}.bias"), vec![c], Init::Zeros)),
        };
        let linear =
            |add: &mut dyn FnMut(String, Vec<usize>, Init) -> usize, name: &str, out: usize, inp: usize, std: f32| {
                LinearIdx {
                    w: add(format!("{name}.weight"), vec![out, inp], Init::Normal(std)),
                    b: cfg.bias.then(|| add(format!("{name}.bias"), vec![out], Init::Zeros)),
                }
            };
        let wte = add("transformer.wte.weight".into(), vec![cfg.padded_vocab, c], Init::Normal(std));
        let wpe = (cfg.pos == PosEncoding::Learned)
            .then(|| add("transformer.wpe.weight".into(), vec![cfg.block_size, c], Init::Normal(std)));
        let blocks = (0..cfg.n_layer)
            .map(|l| {
                let p = format!("transformer.h.{l}.");
                BlockIdx {
                    ln1: norm(&mut add, &format!("{p}ln_1")),
                    qkv: linear(&mut add, &format!("{p}attn.c_attn"), cfg.qkv_width(), c, std),
                    proj: linear(&mut add, &format!("{p}attn.c_proj"), c, c, proj_std),
                    ln2: norm(&mut add, &format!("{p}ln_2")),
                    fc: linear(&mut add, &format!("{p}mlp.c_fc"), cfg.fc_width(), c, std),
                    fcproj: linear(&mut add, &format!("{p}mlp.c_proj"), c, cfg.hidden(), proj_std),
                }
            })
            .collect();
        let lnf = norm(&mut add, "transformer.ln_f");
        let head = if cfg.tie_embeddings {
            wte
        } else {
            add("lm_head.weight".into(), vec![cfg.padded_vocab, c], Init::Normal(std))
        };
        Layout { specs, wte, wpe, blocks, lnf, head }
    }
}

/// Initial values for every parameter, from a seed (host memory).
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    specs
        .iter()
        .map(|s| match s.init {
            Init::Zeros => vec![0.0; s.numel()],
            Init::Ones => vec![1.0; s.numel()],
            Init::Normal(std) => (0..s.numel()).map(|_| std * normal(&mut rng)).collect(),
            Init::Uniform(bound) => (0..s.numel()).map(|_| bound * (2.0 * unit(&mut rng) - 1.0)).collect(),
        })
        .collect()
}

/// A uniform sample in [0, 1).
fn unit(rng: &mut impl RngCore) -> f32 {
    ((rng.next_u64() >> 40) as f32) / (1u64 << 24) as f32
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut impl RngCore) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
