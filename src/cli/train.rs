//! `ferrite train`: a new run from a preset/config/overrides, or `--resume`.

use super::RunArgs;
use crate::data::Split;
use crate::engine::comm::{self, Comm};
use crate::engine::Backend;
use crate::generate::{complete, Prompt, Request};
use crate::train::trainer::RunEnd;
use crate::train::{config, Trainer};
use anyhow::Result;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

super::on_device!(RunArgs, train);

fn train<B: Backend>(args: &RunArgs, be: B) -> Result<()> {
    let comm: Rc<dyn Comm> = Rc::from(comm::from_environment()?);
    match train_on(args, be, comm.clone()) {
        Ok(()) => {
            comm.finish();
            Ok(())
        }
        // The other ranks would wait for this one forever: end them too.
        Err(e) if comm.size() > 1 => {
            eprintln!("error: rank {} of {}: {e:#}", comm.rank(), comm.size());
            comm.abort(1)
        }
        Err(e) => Err(e),
    }
}

fn train_on<B: Backend>(args: &RunArgs, be: B, comm: Rc<dyn Comm>) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            if args.overrides.iter().any(|(k, _)| config::field_name(k) == "init_from") {
                anyhow::bail!("--init-from starts a new run; it cannot be combined with --resume");
            }
            if args.preset.is_some() {
                anyhow::bail!(
                    "--preset cannot be combined with --resume (the run's configuration comes from the checkpoint)"
                );
            }
            // The checkpoint's configuration takes the place of a preset.
            Trainer::resume(be, dir, |saved| config::resolve(&saved, args.config.as_deref(), &args.overrides))?
        }
        None => Trainer::new(be, args.resolve()?)?,
    };
    let (main, parallel) = (comm.rank() == 0, comm.size() > 1);
    let described = comm.describe();
    trainer.distribute(comm)?;
    if main {
        print_summary(&trainer)?;
        if parallel {
            super::out!(
                "data parallel: {described}; each takes {} of the {} micro-batches of a step",
                trainer.cfg.grad_accum.div_ceil(trainer.comm_size()),
                trainer.cfg.grad_accum
            )?;
        }
    }
    // Ctrl-C (or SIGTERM) finishes the step, saves `last` and stops; a second one quits at once.
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_stop_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop_signal as *const () as libc::sighandler_t);
    }
    let end = trainer.run(&STOP)?;
    if !main {
        // Rank 0 reports, samples and prints; the others only train.
        if let RunEnd::Interrupted { .. } = end {
            std::process::exit(128 + SIGNAL.load(Ordering::SeqCst));
        }
        return Ok(());
    }
    match end {
        RunEnd::Done(Some(e)) => super::out!(
            "done: step {}, train loss {:.4}, val loss {:.4}, best val loss {:.4}",
            trainer.state.step,
            e.train_loss,
            e.val_loss,
            trainer.state.best_val_loss.unwrap_or(e.val_loss)
        )?,
        RunEnd::Done(None) => {
            super::out!("nothing to do: the run is at step {} of {}", trainer.state.step, trainer.cfg.max_iters)?
        }
        RunEnd::Interrupted { step, saved } => {
            let out = &trainer.cfg.out_dir;
            let what = if saved {
                format!("saved {out}/last at step {step}")
            } else {
                format!("at step {step}, nothing new to save")
            };
            eprintln!("interrupted: {what}; continue with `ferrite train --resume {out}`");
            // 128 + the signal, as shells report it (130 for Ctrl-C, 143 for SIGTERM).
            std::process::exit(128 + SIGNAL.load(Ordering::SeqCst));
        }
    }
    // The closing sample is not a step to save: signals act as usual again.
    // SAFETY: restoring the default dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
    super::out!("checkpoints in {}/{{best,last}}", trainer.cfg.out_dir)?;
    if let Some(mib) = peak_rss_mib() {
        super::out!("peak memory: {mib:.1} MiB")?;
    }
    if trainer.cfg.sample_tokens > 0 {
        print_sample(trainer)?;
    }
    Ok(())
}

fn print_summary<B: Backend>(t: &Trainer<B>) -> Result<()> {
    let m = &t.model.cfg;
    let c = &t.cfg;
    let start = match &t.resumed_from {
        Some(dir) => format!(", resuming at step {} from {}", t.state.step, dir.display()),
        None => String::new(),
    };
    super::out!(
        "model: {:.2}M parameters ({} layers, {} heads, {} wide, block {}, vocab {} padded to {})",
        m.num_params() as f64 / 1e6,
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.vocab_size,
        m.padded_vocab
    )?;
    super::out!(
        "data: {} train / {} val tokens ({} tokenizer); {} iterations of {} tokens on {}{start}",
        t.data.split(Split::Train).len(),
        t.data.split(Split::Val).len(),
        t.tokenizer.kind(),
        c.max_iters,
        t.tokens_per_step(),
        t.model.be.name()
    )?;
    Ok(())
}

/// A short sample from the model just trained, so one command shows the whole loop.
fn print_sample<B: Backend>(t: Trainer<B>) -> Result<()> {
    let prompt = match t.tokenizer.encode("\n") {
        Ok(ids) => ids,
        Err(_) => t.data.split(Split::Train).head(1)?,
    };
    let req = Request { seed: t.cfg.seed, ..Request::new(Prompt::Tokens(prompt), t.cfg.sample_tokens) };
    let (model, tok) = (Arc::new(t.model), Arc::new(t.tokenizer));
    let mut text = String::new();
    complete(&model, &tok, req, |piece| {
        text.push_str(piece);
        Ok(())
    })?;
    super::out!("sample:\n{text}")?;
    Ok(())
}

/// Set by the first SIGINT or SIGTERM; which one it was.
static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; the second signal means now.
        unsafe { libc::_exit(128 + signal) };
    }
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// The process's peak resident memory so far.
fn peak_rss_mib() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    // Linux reports ru_maxrss in KiB.
    ok.then(|| unsafe { usage.assume_init() }.ru_maxrss as f64 / 1024.0)
}
