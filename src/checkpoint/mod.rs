//! Checkpoints: a directory with `model.safetensors`, `optimizer.safetensors`,
//! `config.json` and `state.json`, written into a temporary directory and
//! renamed into place so a crash never leaves a half-written checkpoint. A
//! LoRA run's checkpoints hold its adapter (PEFT's files, [`adapter`])
//! instead of `model.safetensors`, and name their base checkpoint.
//!
//! Training saves and resumes them; every inference command loads them. This
//! module knows the model, its tokenizer and its chat template; the training
//! run's own configuration travels along as an opaque map of keys that only
//! `train/` interprets (readers that need a few of its keys, like `ferrite
//! eval`, take them with [`CheckpointConfig::training`]).

pub mod adapter;
pub mod gguf;
pub mod hf;
pub mod tensors;

use crate::data::{ChatTemplate, Tokenizer};
use crate::engine::{quant, Backend, DType, Quantized};
use crate::model::lora::{LoraConfig, LoraLayout};
use crate::model::params::{param_specs, ParamSpec};
use crate::model::{Gpt, ModelConfig};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tensors::{load_model_file, load_safetensors, save_safetensors, save_stored, take_params, Stored};

pub const FORMAT: &str = "ferrite-checkpoint";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointConfig {
    pub format: String,
    pub version: u32,
    pub model: ModelConfig,
    pub tokenizer: Tokenizer,
    /// The training run's configuration: the keys of `ferrite train --help`
    /// (empty for a model that was not trained by ferrite).
    #[serde(default)]
    pub train: Map<String, Value>,
    /// How `ferrite chat` writes conversations for this model (none: Dolly's format).
    #[serde(default)]
    pub chat_template: Option<ChatTemplate>,
    /// Set in a LoRA run's checkpoints: the trained tensors are an adapter
    /// on this base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterOf>,
}

/// The base checkpoint a LoRA run's adapter belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterOf {
    /// The base checkpoint's directory (absolute).
    pub base: String,
    /// Its step when the run started (a base trained further since is
    /// another model).
    #[serde(default)]
    pub step: Option<usize>,
}

/// The base a LoRA run names must still be the one it started from: a
/// plain checkpoint, at the same step.
pub fn check_base_unchanged(
    of: &AdapterOf,
    (config, state): (&CheckpointConfig, &TrainState),
    run: &Path,
) -> Result<()> {
    if config.adapter.is_some() {
        bail!("the base {} of {} is itself a LoRA run: merge it first", of.base, run.display());
    }
    if let Some(step) = of.step.filter(|&s| s != state.step) {
        bail!(
            "the base {} of {} is at step {}, not {step} as when the adapter was trained: it has changed",
            of.base,
            run.display(),
            state.step
        );
    }
    Ok(())
}

impl CheckpointConfig {
    /// The training keys a reader needs, as a struct of its own whose
    /// missing fields take their defaults (unknown keys are ignored).
    pub fn training<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.train.clone()))
            .map_err(|e| anyhow::anyhow!("the checkpoint's training configuration is corrupt: {e}"))
    }
}

/// Training progress needed to resume exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done so far (updates, and updates skipped as non-finite).
    pub step: usize,
    pub best_val_loss: Option<f64>,
    pub tokens_seen: u64,
    /// AdamW updates applied (its bias correction counts these); none in
    /// checkpoints from before skipped updates existed: then `step`.
    #[serde(default)]
    pub updates: Option<u64>,
}

pub struct Checkpoint {
    pub config: CheckpointConfig,
    /// The model's parameters, or a LoRA run's adapter weights (`lora`).
    pub params: Vec<Vec<f32>>,
    pub lora: Option<LoraConfig>,
    /// The dtype `model.safetensors` stores the weight matrices in (those
    /// not block-quantized).
    pub stored: DType,
    /// Each parameter's blocks as stored, for the block-quantized ones (a
    /// quantized checkpoint's; `params` holds their values widened).
    pub blocks: Vec<Option<Quantized>>,
    /// Each parameter's dtype as stored.
    pub dtypes: Vec<DType>,
    /// Adam moments `(m, v)` per parameter, when present.
    pub moments: Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>,
    pub state: TrainState,
}

/// Each parameter's dtype in a model whose matrices are `stored` and
/// vectors f32.
pub fn param_types(cfg: &ModelConfig, stored: DType) -> Vec<DType> {
    param_specs(cfg).iter().map(|s| if s.shape.len() >= 2 { stored } else { DType::F32 }).collect()
}

/// Each parameter's dtype in a checkpoint file written as `dtype`: a float
/// dtype stores every tensor so (safetensors files are all one dtype, as
/// PyTorch writes them; loading widens vectors to f32), a quantized one as
/// [`crate::model::quantize::weight_types`] says.
pub fn file_types(cfg: &ModelConfig, dtype: DType, head: Option<DType>) -> Vec<DType> {
    if dtype.is_quantized() {
        crate::model::quantize::weight_types(cfg, dtype, head)
    } else {
        vec![dtype; param_specs(cfg).len()]
    }
}

impl Checkpoint {
    /// Each parameter's dtype as stored.
    pub fn types(&self) -> Vec<DType> {
        self.dtypes.clone()
    }

    /// The dtype of the blocks' weight matrices (a model's dtype, as
    /// llama.cpp names a file by it).
    pub fn weights_type(&self) -> DType {
        self.types()[crate::model::params::Layout::new(&self.config.model).blocks[0].qkv.w]
    }

    /// Whether any parameter is block-quantized.
    pub fn is_quantized(&self) -> bool {
        self.blocks.iter().any(Option::is_some)
    }
}

/// Which checkpoint of a run directory to pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// Lowest validation loss (for sampling).
    Best,
    /// Most recent (for resuming).
    Last,
}

/// Accepts a checkpoint directory or a run directory. In a run directory,
/// `Best` picks `best` (else `last`, else a leftover of an interrupted
/// save); `Last` picks the newest complete checkpoint of `last`, `best`,
/// `last.old` and `best.old` by step (an interrupted save can leave
/// `last.old` newer than `best`).
pub fn resolve_dir(dir: &Path, prefer: Prefer) -> Result<PathBuf> {
    if !dir.exists() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    if dir.join("config.json").exists() {
        return Ok(dir.to_path_buf());
    }
    let found = match prefer {
        Prefer::Best => ["best", "last", "best.old", "last.old"]
            .into_iter()
            .map(|sub| dir.join(sub))
            .find(|d| d.join("config.json").exists()),
        // `last` when it is complete (a `best` can be an older run's);
        // else the newest of the others by step.
        Prefer::Last => complete_step(&dir.join("last")).map(|_| dir.join("last")).or_else(|| {
            ["last.old", "best", "best.old"]
                .into_iter()
                .filter_map(|sub| complete_step(&dir.join(sub)).map(|step| (step, dir.join(sub))))
                // The highest step; on a tie, the first in the order above.
                .fold(None, |best: Option<(usize, PathBuf)>, c| match best {
                    Some(b) if b.0 >= c.0 => Some(b),
                    _ => Some(c),
                })
                .map(|(_, d)| d)
        }),
    };
    found.with_context(|| {
        format!("{} is not a ferrite checkpoint (no config.json in it, its best/ or its last/)", dir.display())
    })
}

/// The step of a checkpoint with every file in place, or none.
fn complete_step(dir: &Path) -> Option<usize> {
    let weights = dir.join("model.safetensors").is_file() || dir.join(adapter::WEIGHTS).is_file();
    let complete = weights && ["config.json", "optimizer.safetensors"].iter().all(|f| dir.join(f).is_file());
    complete.then(|| read_state(dir).ok()).flatten().map(|s| s.step)
}

/// A checkpoint's `state.json`.
fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

pub fn load_config(dir: &Path) -> Result<CheckpointConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: CheckpointConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ferrite checkpoint config", path.display()))?;
    if cfg.format != FORMAT || cfg.version != VERSION {
        bail!("{}: unsupported checkpoint format {} v{}", path.display(), cfg.format, cfg.version);
    }
    cfg.model.validate()?;
    if cfg.tokenizer.vocab_size() != cfg.model.vocab_size {
        bail!(
            "{}: tokenizer has {} symbols but the model {}",
            path.display(),
            cfg.tokenizer.vocab_size(),
            cfg.model.vocab_size
        );
    }
    Ok(cfg)
}

/// Loads a checkpoint (a LoRA run's: its adapter); `with_optimizer` also
/// reads the Adam moments.
pub fn load(dir: &Path, with_optimizer: bool) -> Result<Checkpoint> {
    let config = load_config(dir)?;
    let (specs, params, stored, (blocks, dtypes), lora) = if config.adapter.is_some() {
        let (lora, params) = adapter::read(dir, &config.model)?;
        let none = (vec![None; params.len()], vec![DType::F32; params.len()]);
        (LoraLayout::new(&config.model, &lora)?.specs, params, DType::F32, none, Some(lora))
    } else {
        let specs = param_specs(&config.model);
        let model_file = dir.join("model.safetensors");
        let mut file = load_model_file(&model_file)?;
        let blocks = specs.iter().map(|s| file.blocks.remove(&s.name)).collect();
        let dtypes = specs.iter().map(|s| file.dtypes.get(&s.name).copied().unwrap_or(DType::F32)).collect();
        let params = take_params(&specs, file.tensors, "", &model_file)?;
        (specs, params, file.stored, (blocks, dtypes), None)
    };
    let state = read_state(dir)?;
    let moments = if with_optimizer {
        let f = dir.join("optimizer.safetensors");
        let (m_t, rest): (HashMap<_, _>, HashMap<_, _>) =
            load_safetensors(&f)?.into_iter().partition(|(k, _)| k.starts_with("m."));
        let (v_t, other): (HashMap<_, _>, HashMap<_, _>) = rest.into_iter().partition(|(k, _)| k.starts_with("v."));
        if let Some(k) = other.keys().min() {
            bail!("{}: tensor {k} is not an Adam moment (m.* or v.*): the checkpoint is corrupt", f.display());
        }
        Some((take_params(&specs, m_t, "m.", &f)?, take_params(&specs, v_t, "v.", &f)?))
    } else {
        None
    };
    Ok(Checkpoint { config, params, lora, stored, blocks, dtypes, moments, state })
}

/// A model loaded for inference.
pub struct Loaded<B: Backend> {
    pub model: Gpt<B>,
    pub config: CheckpointConfig,
    pub state: TrainState,
    /// The checkpoint directory used (a run directory's `best`).
    pub dir: PathBuf,
}

/// Loads a model for inference from a checkpoint or run directory (its best
/// checkpoint), its weight matrices in the dtype the file stores them in.
pub fn load_model<B: Backend>(be: B, dir: &Path) -> Result<Loaded<B>> {
    load_model_as(be, dir, None)
}

/// [`load_model`] with the weight matrices in `weights` (none: as stored).
/// A LoRA run's checkpoint loads as its base with the adapter applied.
pub fn load_model_as<B: Backend>(be: B, dir: &Path, weights: Option<DType>) -> Result<Loaded<B>> {
    let dir = resolve_dir(dir, Prefer::Best)?;
    let ck = load(&dir, false)?;
    if let (Some(of), Some(lora)) = (&ck.config.adapter, ck.lora) {
        let context = || format!("the base of the LoRA adapter {}", dir.display());
        let base_dir = resolve_dir(Path::new(&of.base), Prefer::Best).with_context(context)?;
        let (config, state) =
            (load_config(&base_dir).with_context(context)?, read_state(&base_dir).with_context(context)?);
        check_base_unchanged(of, (&config, &state), &dir)?;
        let mut base = load_model_as(be, Path::new(&of.base), weights).with_context(context)?;
        check_base(&ck.config.model, &base.model.cfg, &dir)?;
        base.model.attach_lora(lora, Some(ck.params), 0)?;
        return Ok(Loaded { model: base.model, config: ck.config, state: ck.state, dir });
    }
    // Asked for another dtype, a quantized checkpoint's widened values are
    // converted (quantized again, for another quantized type).
    let model = match weights {
        Some(w) => Gpt::from_host_as(be, ck.config.model.clone(), &ck.params, w)?,
        None => Gpt::from_parts(be, ck.config.model.clone(), &ck.params, &ck.blocks, ck.stored)?,
    };
    Ok(Loaded { model, config: ck.config, state: ck.state, dir })
}

/// A LoRA adapter read for a base.
pub struct AdapterFiles {
    pub lora: LoraConfig,
    /// In layout order.
    pub weights: Vec<Vec<f32>>,
    /// The chat template of the ferrite run that trained it, if it was one
    /// and its data had one.
    pub chat_template: Option<ChatTemplate>,
}

/// Reads the LoRA adapter in `dir` (PEFT's files: ours, a LoRA run's
/// checkpoint or run directory, or a `peft` run's) for a base of
/// configuration `base`. A LoRA run's must be for the same architecture.
pub fn read_adapter(dir: &Path, base: &ModelConfig) -> Result<AdapterFiles> {
    let dir = if dir.join(adapter::CONFIG).is_file() { dir.to_path_buf() } else { resolve_dir(dir, Prefer::Best)? };
    let mut chat_template = None;
    // A ferrite LoRA run's config.json (a PEFT directory may hold a Hugging Face one).
    let is_ferrite = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["format"] == FORMAT);
    if is_ferrite {
        let run = load_config(&dir)?;
        check_base(&run.model, base, &dir)?;
        chat_template = run.chat_template;
    }
    let (lora, weights) = adapter::read(&dir, base)?;
    Ok(AdapterFiles { lora, weights, chat_template })
}

/// Applies the adapter in `dir` ([`read_adapter`]) to `loaded`, unmerged;
/// the chat template becomes the adapter's run's, when it has one.
pub fn attach_adapter<B: Backend>(loaded: &mut Loaded<B>, dir: &Path) -> Result<()> {
    if loaded.model.lora.is_some() {
        bail!("{} already has an adapter: use --adapter with a base checkpoint", loaded.dir.display());
    }
    let files = read_adapter(dir, &loaded.model.cfg)?;
    loaded.model.attach_lora(files.lora, Some(files.weights), 0)?;
    if files.chat_template.is_some() {
        loaded.config.chat_template = files.chat_template;
    }
    Ok(())
}

/// `ferrite lora merge`: writes `base` with the adapter folded in to `out`
/// (an inference checkpoint, weight matrices as `dtype` or as the base
/// stores them). `base` may be a LoRA run itself (then `adapter` is none).
pub fn merge_adapter(base: &Path, adapter: Option<&Path>, out: &Path, dtype: Option<DType>) -> Result<PathBuf> {
    let dir = resolve_dir(base, Prefer::Best)?;
    let ck = load(&dir, false)?;
    let (base_dir, files) = match (&ck.config.adapter, ck.lora, adapter) {
        (Some(_), Some(_), Some(_)) => bail!("{} is a LoRA run already: merge it without --adapter", dir.display()),
        (Some(of), Some(lora), None) => {
            let files = AdapterFiles { lora, weights: ck.params, chat_template: ck.config.chat_template.clone() };
            (PathBuf::from(&of.base), files)
        }
        (_, _, Some(a)) => (dir.clone(), read_adapter(a, &ck.config.model)?),
        (_, _, None) => bail!("{} has no adapter: give one with --adapter DIR", dir.display()),
    };
    let mut base = load(&base_dir, false).with_context(|| format!("the base {}", base_dir.display()))?;
    match &ck.config.adapter {
        Some(of) => check_base_unchanged(of, (&base.config, &base.state), &dir)?,
        None if base.lora.is_some() => {
            bail!("{} is a LoRA run: give its base, or merge it without --adapter", dir.display())
        }
        None => {}
    }
    check_base(&ck.config.model, &base.config.model, &dir)?;
    let layout = LoraLayout::new(&base.config.model, &files.lora)?;
    let blocks = crate::model::params::Layout::new(&base.config.model).blocks;
    crate::model::lora::merge(&mut base.params, &blocks, &layout, &files.weights, files.lora.scale());
    // The merged weights are new values: a quantized base's blocks are quantized again.
    let types = match dtype {
        Some(d) => file_types(&base.config.model, d, None),
        None => base.types(),
    };
    let mut config = base.config;
    config.adapter = None;
    config.chat_template = files.chat_template.or(config.chat_template);
    let fresh = vec![None; base.params.len()];
    save_inference(out, &config, (&base.params, &fresh), &types, &base.state)?;
    Ok(base_dir)
}

/// An adapter trained on `trained_on` fits `base` only if they are the
/// same architecture (dropout and context length aside).
pub fn check_base(trained_on: &ModelConfig, base: &ModelConfig, dir: &Path) -> Result<()> {
    let same = |c: &ModelConfig| ModelConfig { dropout: 0.0, block_size: 0, ..c.clone() };
    if same(trained_on) != same(base) {
        bail!("the adapter {} was trained on a base of another architecture than this one", dir.display());
    }
    Ok(())
}

/// Writes an inference copy of the checkpoint at `src` (a checkpoint or run
/// directory: its best) to `dst` with the weights stored as `dtype` (a
/// quantized dtype: [`crate::model::quantize::weight_types`] says which
/// ones, with the head as `head`): the configuration and progress, no
/// optimizer state. Atomic, as [`save`].
pub fn convert(src: &Path, dst: &Path, dtype: DType, head: Option<DType>) -> Result<PathBuf> {
    let src = resolve_dir(src, Prefer::Best)?;
    let ck = load(&src, false)?;
    if ck.lora.is_some() {
        bail!("{} is a LoRA adapter: fold it into its base with `ferrite lora merge` first", src.display());
    }
    let types = file_types(&ck.config.model, dtype, head);
    save_inference(dst, &ck.config, (&ck.params, &ck.blocks), &types, &ck.state)?;
    Ok(src)
}

/// Writes an inference checkpoint (no optimizer state), each parameter
/// stored as `types` says: what `convert`, `quantize` and `ferrite import`
/// write. A parameter's blocks of that type are written as they are (no
/// second rounding); other quantized types are quantized from its values.
/// Atomic, as [`save`].
pub fn save_inference(
    dst: &Path,
    config: &CheckpointConfig,
    (params, blocks): (&[Vec<f32>], &[Option<Quantized>]),
    types: &[DType],
    state: &TrainState,
) -> Result<()> {
    let specs = param_specs(&config.model);
    // Values of parameters held only as blocks (an imported file's), widened when needed.
    let values = |i: usize| match &blocks[i] {
        Some(q) if params[i].is_empty() => std::borrow::Cow::Owned(q.to_f32()),
        _ => std::borrow::Cow::Borrowed(&params[i][..]),
    };
    let quantized: Vec<Option<Quantized>> = (0..specs.len())
        .map(|i| match &blocks[i] {
            Some(q) if q.dtype == types[i] => None,
            _ if types[i].is_quantized() => {
                Some(Quantized { dtype: types[i], bytes: quant::quantize(types[i], &values(i)) })
            }
            _ => None,
        })
        .collect();
    let widened: Vec<_> = (0..specs.len()).map(values).collect();
    let stored: Vec<(String, Vec<usize>, Stored)> = (0..specs.len())
        .map(|i| {
            let how = match (&blocks[i], &quantized[i]) {
                (_, Some(q)) => Stored::Blocks(q),
                (Some(q), None) if q.dtype == types[i] => Stored::Blocks(q),
                _ => Stored::Float(&widened[i], types[i]),
            };
            (specs[i].name.clone(), specs[i].shape.clone(), how)
        })
        .collect();
    write_atomically(dst, |tmp| {
        save_stored(&tmp.join("model.safetensors"), &stored)?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(config)?)?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
        Ok(())
    })
}

/// Writes a checkpoint to `dir` atomically (temp dir, then rename): the
/// model's `params`, or with `lora` (and `config.adapter`) an adapter's.
#[allow(clippy::too_many_arguments)]
pub fn save<'a>(
    dir: &Path,
    config: &CheckpointConfig,
    specs: &[ParamSpec],
    params: &'a [&'a [f32]],
    lora: Option<&LoraConfig>,
    moments: (&'a [&'a [f32]], &'a [&'a [f32]]),
    state: &TrainState,
) -> Result<()> {
    write_atomically(dir, |tmp| {
        let named = |prefix: &str, data: &'a [&'a [f32]]| named_tensors(specs, prefix, data);
        match (lora, &config.adapter) {
            (Some(lora), Some(of)) => adapter::write(tmp, &config.model, lora, specs, params, &of.base)?,
            (None, None) => save_safetensors(&tmp.join("model.safetensors"), &named("", params))?,
            _ => bail!("a LoRA checkpoint needs both its adapter and its base (a bug)"),
        }
        let mut opt = named("m.", moments.0);
        opt.extend(named("v.", moments.1));
        save_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(config)?)?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
        Ok(())
    })
}

/// Fills a temporary directory beside `dir` with `fill`, syncs it, and
/// renames it into place (the old `dir`, if any, goes last).
pub fn write_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt");
    // Leftovers of saves that were killed (any process's): never complete.
    let stale = format!(".{name}.tmp-");
    for entry in std::fs::read_dir(parent)?.flatten() {
        let pid = entry.file_name().to_str().and_then(|n| n.strip_prefix(&stale)?.parse::<i32>().ok());
        // SAFETY: signal 0 only asks whether the process exists.
        if pid.is_some_and(|pid| pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    for f in std::fs::read_dir(&tmp)? {
        std::fs::File::open(f?.path())?.sync_all()?;
    }
    // Swap: dir -> dir.old, tmp -> dir, drop dir.old. A crash in between
    // leaves dir.old, which resolve_dir falls back to.
    let old = parent.join(format!("{name}.old"));
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot move checkpoint into {}", dir.display()))?;
    // The renames are durable once the directory holding them is synced.
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn named_tensors<'a>(specs: &[ParamSpec], prefix: &str, data: &'a [&'a [f32]]) -> Vec<(String, Vec<usize>, &'a [f32])> {
    specs.iter().zip(data).map(|(s, d)| (format!("{prefix}{}", s.name), s.shape.clone(), *d)).collect()
}
