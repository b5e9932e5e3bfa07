//! The parameter layout (nanoGPT's names, so checkpoints read naturally from
//! PyTorch), initialisation, and safetensors I/O.

use super::config::ModelConfig;
use anyhow::{bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal(0, std).
    Normal(f32),
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

/// Indices into the parameter list for one transformer block.
#[derive(Clone, Debug)]
pub struct BlockIdx {
    pub ln1_w: usize,
    pub ln1_b: Option<usize>,
    pub qkv_w: usize,
    pub qkv_b: Option<usize>,
    pub proj_w: usize,
    pub proj_b: Option<usize>,
    pub ln2_w: usize,
    pub ln2_b: Option<usize>,
    pub fc_w: usize,
    pub fc_b: Option<usize>,
    pub fcproj_w: usize,
    pub fcproj_b: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub wte: usize,
    pub wpe: usize,
    pub blocks: Vec<BlockIdx>,
    pub lnf_w: usize,
    pub lnf_b: Option<usize>,
}

pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    Layout::new(cfg).specs
}

impl Layout {
    pub fn new(cfg: &ModelConfig) -> Layout {
        let c = cfg.n_embd;
        let std = 0.02f32;
        // GPT-2: residual projections scaled by 1/sqrt(2 * n_layer).
        let proj_std = std / (2.0 * cfg.n_layer as f32).sqrt();
        let mut specs = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, init: Init| {
            specs.push(ParamSpec { name, shape, init });
            specs.len() - 1
        };
        let wte = add("transformer.wte.weight".into(), vec![cfg.padded_vocab, c], Init::Normal(std));
        let wpe = add("transformer.wpe.weight".into(), vec![cfg.block_size, c], Init::Normal(std));
        let mut blocks = Vec::new();
        for l in 0..cfg.n_layer {
            let p = format!("transformer.h.{l}.");
            let bias = |name: &str, n: usize, add: &mut dyn FnMut(String, Vec<usize>, Init) -> usize| {
                cfg.bias.then(|| add(format!("{p}{name}"), vec![n], Init::Zeros))
            };
            let ln1_w = add(format!("{p}ln_1.weight"), vec![c], Init::Ones);
            let ln1_b = bias("ln_1.bias", c, &mut add);
            let qkv_w = add(format!("{p}attn.c_attn.weight"), vec![3 * c, c], Init::Normal(std));
            let qkv_b = bias("attn.c_attn.bias", 3 * c, &mut add);
            let proj_w = add(format!("{p}attn.c_proj.weight"), vec![c, c], Init::Normal(proj_std));
            let proj_b = bias("attn.c_proj.bias", c, &mut add);
            let ln2_w = add(format!("{p}ln_2.weight"), vec![c], Init::Ones);
            let ln2_b = bias("ln_2.bias", c, &mut add);
            let fc_w = add(format!("{p}mlp.c_fc.weight"), vec![4 * c, c], Init::Normal(std));
            let fc_b = bias("mlp.c_fc.bias", 4 * c, &mut add);
            let fcproj_w = add(format!("{p}mlp.c_proj.weight"), vec![c, 4 * c], Init::Normal(proj_std));
            let fcproj_b = bias("mlp.c_proj.bias", c, &mut add);
            blocks.push(BlockIdx {
                ln1_w,
                ln1_b,
                qkv_w,
                qkv_b,
                proj_w,
                proj_b,
                ln2_w,
                ln2_b,
                fc_w,
                fc_b,
                fcproj_w,
                fcproj_b,
            });
        }
        let lnf_w = add("transformer.ln_f.weight".into(), vec![c], Init::Ones);
        let lnf_b = cfg.bias.then(|| add("transformer.ln_f.bias".into(), vec![c], Init::Zeros));
        Layout { specs, wte, wpe, blocks, lnf_w, lnf_b }
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
        })
        .collect()
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut impl RngCore) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Writes named f32 tensors to a safetensors file (not atomically: callers
/// write into a temporary directory that is renamed into place).
pub fn save_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads every tensor of a safetensors file as f32, with its shape.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} is {:?}, expected F32", path.display(), view.dtype());
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Picks the tensors of `specs` out of a loaded file, checking shapes.
pub fn take_params(
    specs: &[ParamSpec],
    mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
    file: &Path,
) -> Result<Vec<Vec<f32>>> {
    specs
        .iter()
        .map(|s| {
            let key = format!("{prefix}{}", s.name);
            let (shape, data) =
                tensors.remove(&key).with_context(|| format!("{}: missing tensor {key}", file.display()))?;
            if shape != s.shape {
                bail!("{}: tensor {key} has shape {shape:?}, expected {:?}", file.display(), s.shape);
            }
            Ok(data)
        })
        .collect()
}
