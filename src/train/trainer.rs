//! The training loop: batches, gradient accumulation, AdamW, periodic
//! evaluation, checkpoints and metrics.

use super::config::{OnNonFinite, TrainConfig};
use super::metrics::MetricsLog;
use super::optimizer::{AdamW, Hyper};
use super::schedule::learning_rate;
use crate::checkpoint::{self, AdapterOf, CheckpointConfig, Prefer, TrainState};
use crate::data::dataset::corpus;
use crate::data::dataset::IGNORE;
use crate::data::tokenizer::utf8;
use crate::data::{tiny_shakespeare, ChatTemplate, Dataset, Split, Tokenizer};
use crate::engine::comm::{Comm, Single};
use crate::engine::device::check_fits;
use crate::engine::fastmath::derive_seed;
use crate::engine::{Backend, Dropout};
use crate::eval::sampled::sampled_loss_sum;
use crate::model::info::TrainMemory;
use crate::model::lora::{LoraConfig, LoraLayout, Naming};
use crate::model::params::Layout;
use crate::model::{Activations, Gpt, ModelConfig};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub struct Trainer<B: Backend> {
    pub cfg: TrainConfig,
    pub model: Gpt<B>,
    pub opt: AdamW<B>,
    pub tokenizer: Tokenizer,
    /// How the training data wrote conversations (a chat dataset's), saved
    /// in every checkpoint for `chat` and `serve`.
    pub chat_template: Option<ChatTemplate>,
    pub data: Dataset,
    pub state: TrainState,
    acts: Activations<B>,
    run_dir: PathBuf,
    /// The checkpoint a resumed run started from.
    pub resumed_from: Option<PathBuf>,
    /// A LoRA run's base checkpoint and its step (its adapters are what it
    /// trains), as its checkpoints record them.
    pub lora_base: Option<AdapterOf>,
    x: Vec<u32>,
    y: Vec<u32>,
    /// The processes of a data-parallel run (one: [`Single`]). Rank r of N
    /// trains micro-batches r, r + N, ... of each step; rank 0 logs,
    /// prints and writes checkpoints.
    comm: Rc<dyn Comm>,
}

/// What one optimizer update did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// The loss or gradient norm was not finite and the update was skipped.
    pub skipped: bool,
    /// Seconds spent summing gradients across processes (0 alone).
    pub all_reduce_s: f64,
}

/// How [`Trainer::run`] ended.
#[derive(Clone, Copy, Debug)]
pub enum RunEnd {
    /// At `max_iters`, with the final evaluation (none: a run resumed at
    /// its end had nothing left to do).
    Done(Option<EvalResult>),
    /// Asked to stop at `step`; `saved`: `last` was written there (a run
    /// stopped before its first new step has nothing new to save).
    Interrupted { step: usize, saved: bool },
}

/// Result of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct EvalResult {
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_bpb: f64,
}

/// Skipped (non-finite) steps in a row after which a run counts as diverged.
const MAX_SKIPS_IN_A_ROW: usize = 20;

// Streams of randomness (evaluation batches use `eval::SEED_EVAL`).
const SEED_BATCH: u64 = 1;
const SEED_DROPOUT: u64 = 2;

impl<B: Backend> Trainer<B> {
    /// A new run from a configuration, reading and tokenising its data file.
    pub fn new(be: B, cfg: TrainConfig) -> Result<Self> {
        if cfg.vocab_size.is_some() {
            bail!("vocab_size comes from the tokenizer when training on data; it can only be set for `ferrite bench`");
        }
        if !cfg.init_from.is_empty() {
            return Self::fine_tune(be, cfg);
        }
        let (tokenizer, data, chat_template) = load_data(&cfg, None)?;
        let mut t = Self::from_parts(be, cfg, tokenizer, data)?;
        t.chat_template = chat_template;
        Ok(t)
    }

    /// A new run that starts from `cfg.init_from`'s weights and tokenizer:
    /// step 0, a fresh optimizer. Its architecture must be the checkpoint's
    /// but for dropout and a block_size up to the checkpoint's (a learned
    /// position table keeps its first rows, as nanoGPT's crop_block_size).
    fn fine_tune(be: B, mut cfg: TrainConfig) -> Result<Self> {
        let dir = checkpoint::resolve_dir(Path::new(&cfg.init_from), Prefer::Best)?;
        let ck = checkpoint::load(&dir, false)?;
        if ck.lora.is_some() {
            bail!("--init-from {} is a LoRA adapter: merge it first (`ferrite lora merge`)", dir.display());
        }
        let base = &ck.config.model;
        if cfg.model.block_size > base.block_size {
            bail!(
                "block_size {} is longer than the context {} of {} (fine-tuning can only shorten it)",
                cfg.model.block_size,
                base.block_size,
                dir.display()
            );
        }
        let model_cfg = ModelConfig { dropout: cfg.model.dropout, block_size: cfg.model.block_size, ..base.clone() };
        let asked = cfg.model_for_vocab(base.vocab_size);
        if asked != model_cfg {
            let (a, b) = (serde_json::to_value(&asked)?, serde_json::to_value(&model_cfg)?);
            let differ: Vec<String> = (b.as_object().into_iter().flatten())
                .filter(|(k, v)| a.get(k.as_str()) != Some(v))
                .map(|(k, v)| format!("{k} is {v} there, not {}", a[k.as_str()]))
                .collect();
            bail!(
                "the architecture comes from --init-from {} ({}; only dropout and block_size can change)",
                dir.display(),
                differ.join(", ")
            );
        }
        cfg.model = model_cfg.clone();
        let (_, data, chat_template) = load_data(&cfg, Some(&ck.config.tokenizer))?;
        let lora = lora_config(&cfg, &model_cfg)?;
        check_memory(&be, &cfg, &model_cfg)?;
        let mut model = Gpt::from_host(be, model_cfg.clone(), &cropped(ck.params, &model_cfg))?;
        if let Some(lora) = lora {
            model.attach_lora(lora, None, cfg.seed)?;
        }
        let opt = AdamW::new(&model)?;
        let state = TrainState { step: 0, best_val_loss: None, tokens_seen: 0, updates: Some(0) };
        let mut t = Self::assemble(cfg, model, opt, ck.config.tokenizer, data, state)?;
        t.chat_template = chat_template.or(ck.config.chat_template);
        if t.model.lora.is_some() {
            let base = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
            // The run's checkpoints must not replace the base they name.
            let out = std::fs::create_dir_all(&t.run_dir).and_then(|_| t.run_dir.canonicalize());
            if out.is_ok_and(|out| base.starts_with(&out)) {
                bail!(
                    "--out {} holds the base {}: a LoRA run needs a directory of its own",
                    t.run_dir.display(),
                    base.display()
                );
            }
            t.lora_base = Some(AdapterOf { base: base.display().to_string(), step: Some(ck.state.step) });
        }
        Ok(t)
    }

    /// A new run on an already tokenised dataset.
    pub fn from_parts(be: B, cfg: TrainConfig, tokenizer: Tokenizer, data: Dataset) -> Result<Self> {
        if cfg.lora_rank > 0 {
            bail!("--lora-rank trains adapters on a trained model: `ferrite train --init-from CKPT --lora-rank R`");
        }
        lora_config(&cfg, &cfg.model)?;
        let model_cfg = cfg.model_for_vocab(tokenizer.vocab_size());
        model_cfg.validate()?;
        check_memory(&be, &cfg, &model_cfg)?;
        let model = Gpt::new(be, model_cfg, cfg.seed)?;
        let opt = AdamW::new(&model)?;
        let state = TrainState { step: 0, best_val_loss: None, tokens_seen: 0, updates: Some(0) };
        Self::assemble(cfg, model, opt, tokenizer, data, state)
    }

    /// Continues a run from a checkpoint (or run directory: its `last`).
    /// `overrides` maps the saved training configuration to the one to use;
    /// it starts with `out_dir` set to the directory holding the checkpoint.
    pub fn resume(be: B, dir: &Path, overrides: impl FnOnce(TrainConfig) -> Result<TrainConfig>) -> Result<Self> {
        let dir = checkpoint::resolve_dir(dir, Prefer::Last)?;
        let ck = checkpoint::load(&dir, true)?;
        let mut saved = TrainConfig::from_checkpoint(&ck.config)?;
        saved.out_dir = dir.parent().unwrap_or(Path::new(".")).display().to_string();
        let cfg = overrides(saved)?;
        if cfg.model_for_vocab(ck.config.model.vocab_size) != ck.config.model {
            bail!("model options cannot change when resuming (the architecture, block_size and dropout come from the checkpoint)");
        }
        let (_, data, chat_template) = load_data(&cfg, Some(&ck.config.tokenizer))?;
        check_memory(&be, &cfg, &ck.config.model)?;
        let (model, lora_base) = match (&ck.config.adapter, ck.lora) {
            // A LoRA run: its base, as it was, and the adapters trained so far.
            (Some(of), Some(lora)) => {
                let base_dir = PathBuf::from(&of.base);
                let base = checkpoint::load(&base_dir, false)
                    .with_context(|| format!("the base of the LoRA run {}", dir.display()))?;
                checkpoint::check_base_unchanged(of, (&base.config, &base.state), &dir)?;
                let model_cfg = &ck.config.model;
                checkpoint::check_base(model_cfg, &base.config.model, &dir)?;
                if lora_config(&cfg, model_cfg)?.as_ref() != Some(&lora) {
                    bail!(
                        "LoRA options cannot change when resuming (the run trains rank {}, alpha {}, dropout {} on {:?})",
                        lora.rank,
                        lora.alpha,
                        lora.dropout,
                        lora.targets
                    );
                }
                let mut model = Gpt::from_host(be, model_cfg.clone(), &cropped(base.params, model_cfg))?;
                model.attach_lora(lora, Some(ck.params), 0)?;
                (model, Some(of.clone()))
            }
            _ if cfg.lora_rank > 0 => {
                bail!("{} trains every weight: start LoRA from it with --init-from, not --resume", dir.display())
            }
            _ => {
                lora_config(&cfg, &ck.config.model)?;
                (Gpt::from_host(be, ck.config.model.clone(), &ck.params)?, None)
            }
        };
        let mut opt = AdamW::new(&model)?;
        let (m, v) = ck.moments.expect("loaded with optimizer");
        for i in 0..m.len() {
            model.be.write(&mut opt.m[i], &m[i])?;
            model.be.write(&mut opt.v[i], &v[i])?;
        }
        opt.t = ck.state.updates.unwrap_or(ck.state.step as u64);
        let mut t = Self::assemble(cfg, model, opt, ck.config.tokenizer, data, ck.state)?;
        t.chat_template = ck.config.chat_template.or(chat_template);
        t.resumed_from = Some(dir);
        t.lora_base = lora_base;
        Ok(t)
    }

    fn assemble(
        mut cfg: TrainConfig,
        mut model: Gpt<B>,
        opt: AdamW<B>,
        tokenizer: Tokenizer,
        data: Dataset,
        state: TrainState,
    ) -> Result<Self> {
        cfg.apply_epochs(data.split(Split::Train).len());
        model.compute = cfg.dtype;
        let acts = model.activations(cfg.batch_size, cfg.model.block_size, cfg.recompute)?;
        let run_dir = PathBuf::from(&cfg.out_dir);
        let chat_template = None;
        Ok(Trainer {
            cfg,
            model,
            opt,
            tokenizer,
            chat_template,
            data,
            state,
            acts,
            run_dir,
            resumed_from: None,
            lora_base: None,
            x: vec![],
            y: vec![],
            comm: Rc::new(Single),
        })
    }

    /// Makes this one rank of a data-parallel run over `comm`: the weights
    /// and AdamW moments become rank 0's (as PyTorch's DDP does at start),
    /// so every rank updates the same model.
    pub fn distribute(&mut self, comm: Rc<dyn Comm>) -> Result<()> {
        let n = comm.size();
        if n > self.cfg.grad_accum {
            bail!(
                "{n} processes need at least {n} micro-batches a step: set --grad-accum to a multiple of {n} \
                 (the global batch is batch_size x grad_accum sequences, whatever the number of processes)"
            );
        }
        if n > 1 {
            let be = self.model.be.clone();
            let (_, params) = self.model.trainable();
            for buf in params.iter_mut().chain(&mut self.opt.m).chain(&mut self.opt.v) {
                let mut host = be.to_host(buf)?;
                comm.broadcast(&mut host, 0)?;
                be.write(buf, &host)?;
            }
        }
        self.comm = comm;
        Ok(())
    }

    /// Processes in the run (1 unless data parallel).
    pub fn comm_size(&self) -> usize {
        self.comm.size()
    }

    /// Whether this process prints, logs and saves (rank 0).
    pub fn is_main(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Whether `flag` is set on any rank (a signal reaches the ranks one by
    /// one; they must stop at the same step).
    fn any_rank(&self, flag: bool) -> Result<bool> {
        let mut n = [f64::from(u8::from(flag))];
        self.comm.all_reduce_sum_f64(&mut n)?;
        Ok(n[0] > 0.0)
    }

    /// Sums every rank's gradients in place, as one buffer (a single
    /// collective instead of one per tensor).
    fn all_reduce_grads(&mut self) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        let be = &self.model.be;
        let mut flat = Vec::with_capacity(self.opt.grads.iter().map(|g| be.len(g)).sum());
        for g in &self.opt.grads {
            flat.extend_from_slice(&be.view(g)?);
        }
        self.comm.all_reduce_sum(&mut flat)?;
        let mut at = 0;
        for g in &mut self.opt.grads {
            let n = be.len(g);
            be.write(g, &flat[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    pub fn tokens_per_step(&self) -> usize {
        self.cfg.tokens_per_step()
    }

    /// One optimizer update (with gradient accumulation). A loss or
    /// gradient norm that is not finite stops the run before the update, or
    /// skips the update (`on_nonfinite`).
    pub fn step(&mut self) -> Result<StepStats> {
        let it = self.state.step;
        let (b, t, accum) = (self.cfg.batch_size, self.cfg.model.block_size, self.cfg.grad_accum);
        self.opt.zero_grad(&self.model.be);
        let mut loss = 0.0;
        // This rank's micro-batches of the step's sequence (all of them alone).
        for micro in (self.comm.rank()..accum).step_by(self.comm.size()) {
            let seed = derive_seed(self.cfg.seed, &[SEED_BATCH, it as u64, micro as u64]);
            self.data.batch(Split::Train, b, t, seed, &mut self.x, &mut self.y)?;
            // Each micro-batch's mean over the targets it trains on (all of
            // them unless a loss mask ignores some), averaged over micro-batches.
            let counted = self.y.iter().filter(|&&y| y != IGNORE).count().max(1);
            let scale = 1.0 / (counted * accum) as f32;
            let seed = derive_seed(self.cfg.seed, &[SEED_DROPOUT, it as u64, micro as u64]);
            let drop = Dropout { p: self.cfg.dropout_at(it), seed };
            let l = self.model.forward(&mut self.acts, &self.x, Some(&self.y), Some(scale), drop)?;
            loss += l.expect("targets given") as f64 / accum as f64;
            self.model.backward(&mut self.acts, &mut self.opt.grads, &self.x, drop);
        }
        let reduce_start = Instant::now();
        self.all_reduce_grads()?;
        let all_reduce_s = reduce_start.elapsed().as_secs_f64();
        let mut total = [loss];
        self.comm.all_reduce_sum_f64(&mut total)?;
        let loss = total[0];
        let lr = learning_rate(&self.cfg, it);
        let h = Hyper {
            lr: lr as f32,
            beta1: self.cfg.beta1 as f32,
            beta2: self.cfg.beta2 as f32,
            eps: self.cfg.eps as f32,
            weight_decay: self.cfg.weight_decay as f32,
            grad_clip: self.cfg.grad_clip as f32,
        };
        let norm = self.opt.grad_norm(&self.model.be)?;
        let finite = loss.is_finite() && norm.is_finite();
        if finite {
            self.opt.apply(&mut self.model, &h, norm);
            self.state.updates = Some(self.opt.t);
        } else if self.cfg.on_nonfinite == OnNonFinite::Stop {
            let what = if loss.is_finite() { format!("gradient norm is {norm}") } else { format!("loss is {loss}") };
            bail!(
                "step {}: the {what}; stopped before the update, so the last checkpoint is sound \
                 (lower the learning rate, or pass --on-nonfinite skip to skip such steps)",
                it + 1
            );
        }
        self.state.step += 1;
        self.state.tokens_seen += self.tokens_per_step() as u64;
        Ok(StepStats { loss, lr, grad_norm: norm, skipped: !finite, all_reduce_s })
    }

    /// Mean loss over `eval_iters` random batches of a split (no dropout).
    /// Ranks split the batches and sum their losses.
    pub fn eval_split(&mut self, split: Split) -> Result<f64> {
        let (c, step) = (&self.cfg, self.state.step);
        let batches = (c.eval_iters, c.batch_size, c.model.block_size);
        let share = (self.comm.rank(), self.comm.size());
        let mut sum =
            [sampled_loss_sum(&self.model, &mut self.acts, &self.data, split, batches, (c.seed, step), share)?];
        self.comm.all_reduce_sum_f64(&mut sum)?;
        Ok(sum[0] / c.eval_iters as f64)
    }

    pub fn evaluate(&mut self) -> Result<EvalResult> {
        let train_loss = self.eval_split(Split::Train)?;
        let val_loss = self.eval_split(Split::Val)?;
        let val_bpb = val_loss / std::f64::consts::LN_2 / self.data.bytes_per_token(Split::Val);
        Ok(EvalResult { train_loss, val_loss, val_bpb })
    }

    pub fn checkpoint_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            model: self.model.cfg.clone(),
            tokenizer: self.tokenizer.clone(),
            train: self.cfg.to_keys(),
            chat_template: self.chat_template.clone(),
            adapter: self.lora_base.clone(),
        }
    }

    pub fn save(&self, name: &str) -> Result<PathBuf> {
        let dir = self.run_dir.join(name);
        let be = &self.model.be;
        // What this run trains: the model, or (LoRA) its adapters.
        let (specs, trained, lora) = match &self.model.lora {
            Some(l) => (&l.layout.specs, &l.params, Some(&l.config)),
            None => (&self.model.layout.specs, &self.model.params, None),
        };
        let (params, m, v) = (views(be, trained)?, views(be, &self.opt.m)?, views(be, &self.opt.v)?);
        // Never a poisoned checkpoint: a run that goes bad keeps its last good one.
        for (i, p) in params.iter().chain(&m).chain(&v).enumerate() {
            if p.iter().any(|x| !x.is_finite()) {
                let n = specs.len();
                let prefix = ["", "AdamW m of ", "AdamW v of "][i / n];
                bail!("not saving {}: {prefix}tensor {} is not finite", dir.display(), specs[i % n].name);
            }
        }
        let moments = (&slices(&m)[..], &slices(&v)[..]);
        checkpoint::save(&dir, &self.checkpoint_config(), specs, &slices(&params), lora, moments, &self.state)?;
        Ok(dir)
    }

    /// Runs to `max_iters` with a progress bar, evaluating and checkpointing
    /// every `eval_interval` steps and at the end. When `stop` is set (a
    /// signal), finishes the current step, saves `last` and returns.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<RunEnd> {
        let resumed_at = (self.state.step > 0).then_some(self.state.step);
        // Rank 0 speaks for a data-parallel run: the log, the bar, the checkpoints.
        let main = self.is_main();
        let mut log = if main { Some(MetricsLog::open(&self.run_dir, resumed_at)?) } else { None };
        let mut log_write = |v: serde_json::Value| log.as_mut().map_or(Ok(()), |l| l.write(v));
        let max = self.cfg.max_iters;
        let pb = if main { ProgressBar::new(max as u64) } else { ProgressBar::hidden() };
        let pb = pb.with_position(self.state.step as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        let (mut window_start, mut window_tokens) = (Instant::now(), 0usize);
        let run_start = Instant::now();
        let mut skipped_in_a_row = 0;
        loop {
            let step = self.state.step;
            let at_end = step >= max;
            if (step.is_multiple_of(self.cfg.eval_interval) || at_end) && resumed_at != Some(step) {
                let e = self.evaluate()?;
                // A NaN loss is never an improvement (nor a best to beat).
                let improved = e.val_loss.is_finite() && self.state.best_val_loss.is_none_or(|b| e.val_loss < b);
                if improved {
                    self.state.best_val_loss = Some(e.val_loss);
                }
                log_write(json!({"kind": "eval", "step": step, "train_loss": e.train_loss, "val_loss": e.val_loss,
                    "val_ppl": e.val_loss.exp(), "val_bpb": e.val_bpb, "time_s": run_start.elapsed().as_secs_f64()}))?;
                let line = format!(
                    "step {step}: train loss {:.4}, val loss {:.4}, val ppl {:.2}, val bpb {:.4}",
                    e.train_loss,
                    e.val_loss,
                    e.val_loss.exp(),
                    e.val_bpb
                );
                if main {
                    pb.suspend(|| say(&line))?;
                }
                if step > 0 && main {
                    self.save("last")?;
                    if improved {
                        self.save("best")?;
                    }
                }
                if at_end {
                    pb.finish_and_clear();
                    return Ok(RunEnd::Done(Some(e)));
                }
                window_start = Instant::now();
                window_tokens = 0;
            }
            if at_end {
                // Resumed at max_iters: nothing left to do.
                pb.finish_and_clear();
                return Ok(RunEnd::Done(None));
            }
            if self.any_rank(stop.load(Ordering::SeqCst))? {
                pb.finish_and_clear();
                let saved = resumed_at != Some(step);
                if saved && main {
                    self.save("last")?;
                }
                return Ok(RunEnd::Interrupted { step, saved });
            }
            let s = self.step()?;
            skipped_in_a_row = if s.skipped { skipped_in_a_row + 1 } else { 0 };
            if skipped_in_a_row >= MAX_SKIPS_IN_A_ROW {
                pb.abandon();
                bail!(
                    "{MAX_SKIPS_IN_A_ROW} steps in a row were not finite (the last at step {}): the run has diverged; lower the learning rate",
                    self.state.step
                );
            }
            window_tokens += self.tokens_per_step();
            let step = self.state.step;
            if s.skipped {
                log_write(json!({"kind": "skipped", "step": step, "loss": s.loss, "grad_norm": s.grad_norm}))?;
                let line = format!("step {step}: skipped the update (loss {}, gradient norm {})", s.loss, s.grad_norm);
                if main {
                    pb.suspend(|| say(&line))?;
                }
            }
            if step.is_multiple_of(self.cfg.log_interval) || step == max {
                let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64();
                let mut row = json!({"kind": "train", "step": step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm,
                    "tokens_per_s": tps, "time_s": run_start.elapsed().as_secs_f64()});
                if self.comm.size() > 1 {
                    row["all_reduce_s"] = json!(s.all_reduce_s);
                }
                log_write(row)?;
                pb.set_message(format!("loss {:.4} lr {:.2e} {:.1}k tok/s", s.loss, s.lr, tps / 1e3));
                window_start = Instant::now();
                window_tokens = 0;
            }
            pb.set_position(step as u64);
        }
    }
}

/// Prints a line on stdout; a failed write is an error, not a panic.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to stdout")
}

/// A run's parameters, gradients, AdamW moments and activations must fit
/// in the device's memory before any is allocated.
pub fn check_memory<B: Backend>(be: &B, cfg: &TrainConfig, model: &crate::model::ModelConfig) -> Result<()> {
    // The in-memory corpus or a benchmark's random tokens come on top; a
    // run that fits only without them is too close anyway.
    let lora = match lora_config(cfg, model)? {
        Some(l) => Some((LoraLayout::new(model, &l)?, l.dropout > 0.0)),
        None => None,
    };
    let shape = (cfg.batch_size, model.block_size, cfg.recompute, cfg.dtype);
    let memory = TrainMemory::new(model, shape, lora.as_ref().map(|(l, d)| (l, *d)));
    let need = memory.total() + be.attention_scratch_bytes(model.attn_shape(cfg.batch_size, model.block_size));
    let what = format!(
        "training this {:.1}M-parameter model at batch {} x block {}",
        model.num_params() as f64 / 1e6,
        cfg.batch_size,
        model.block_size
    );
    let hint = "lower batch_size, block_size or the model's size, or set recompute (see `ferrite info`)";
    check_fits(need, be.available_memory(), &what, hint)
}

/// The adapters a LoRA run trains on `model` (none: a run of every weight).
pub fn lora_config(cfg: &TrainConfig, model: &ModelConfig) -> Result<Option<LoraConfig>> {
    if cfg.lora_rank == 0 {
        let d = TrainConfig::default();
        if (cfg.lora_alpha, cfg.lora_dropout, &cfg.lora_targets) != (d.lora_alpha, d.lora_dropout, &d.lora_targets) {
            bail!("--lora-alpha, --lora-dropout and --lora-targets set LoRA runs: give --lora-rank too");
        }
        return Ok(None);
    }
    let targets = Naming::of(model).parse_targets(&cfg.lora_targets)?;
    let lora = LoraConfig {
        rank: cfg.lora_rank,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        targets,
        layers: None,
        rslora: false,
    };
    LoraLayout::new(model, &lora)?;
    Ok(Some(lora))
}

/// A checkpoint's parameters for a model of a context up to theirs: a
/// learned position table keeps its first rows (nanoGPT's crop_block_size).
fn cropped(mut params: Vec<Vec<f32>>, model: &ModelConfig) -> Vec<Vec<f32>> {
    if let Some(wpe) = Layout::new(model).wpe {
        params[wpe].truncate(model.block_size * model.n_embd);
    }
    params
}

/// Host views of buffers (borrowed on the CPU backend).
fn views<'a, B: Backend>(be: &B, bufs: &'a [B::Buf]) -> Result<Vec<Cow<'a, [f32]>>> {
    bufs.iter().map(|b| be.view(b)).collect()
}

fn slices<'a>(views: &'a [Cow<'a, [f32]>]) -> Vec<&'a [f32]> {
    views.iter().map(|c| c.as_ref()).collect()
}

/// The tokenizer and data a configuration trains on: a prepared dataset's
/// shards, or a text file tokenised here (with `saved`, a resumed run's
/// tokenizer, which the data must match).
/// A chat dataset's template comes along.
fn load_data(cfg: &TrainConfig, saved: Option<&Tokenizer>) -> Result<(Tokenizer, Dataset, Option<ChatTemplate>)> {
    if !cfg.dataset.is_empty() {
        let dir = Path::new(&cfg.dataset);
        let (manifest, data) = Dataset::open_prepared(dir, cfg.model.block_size)?;
        if saved.is_some_and(|t| *t != manifest.tokenizer) {
            bail!("dataset {} uses a different tokenizer than the checkpoint", dir.display());
        }
        return Ok((manifest.tokenizer, data, manifest.chat_template));
    }
    let path = (!cfg.data.is_empty()).then(|| Path::new(&cfg.data));
    let name = path.map_or(tiny_shakespeare::NAME.to_string(), |p| format!("data file {}", p.display()));
    let bytes = corpus(path)?;
    let tokenizer = match saved {
        Some(t) => t.clone(),
        None if cfg.tokenizer == "char" => Tokenizer::char_from_corpus(utf8(&bytes).context(name.clone())?),
        None => Tokenizer::from_spec(&cfg.tokenizer, None)?,
    };
    let data = Dataset::new(&bytes, &tokenizer, cfg.train_frac, cfg.model.block_size).context(name)?;
    Ok((tokenizer, data, None))
}
