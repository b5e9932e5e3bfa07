//! `ferrite sample`: stream generated text from a checkpoint; many prompts
//! at once (`--prompts FILE`, JSONL out); or with a draft model
//! (speculative decoding).

use super::sampling::SamplingArgs;
use crate::checkpoint;
use crate::data::Tokenizer;
use crate::engine::cpu::Cpu;
use crate::generate::batch::generate_batch;
use crate::generate::speculative::Speculative;
use crate::generate::{Generator, Sampler, StopMatcher, Utf8Stream};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Text the generation continues.
    #[arg(long, default_value = "\n", hide_default_value = true)]
    prompt: String,
    /// Many prompts, decoded together: a text file (one prompt per line) or
    /// JSONL with a "prompt" field. Writes one JSON object per prompt.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    prompts: Option<PathBuf>,
    /// With --prompts: decode them one after another instead of together
    /// (same output; for comparing speed).
    #[arg(long, requires = "prompts")]
    sequential: bool,
    /// Number of tokens to generate (per prompt).
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A smaller model with the same tokenizer that drafts tokens for this
    /// one to check (speculative decoding: same output distribution, faster).
    #[arg(long, value_name = "DIR", conflicts_with = "prompts")]
    draft: Option<PathBuf>,
    /// Tokens the draft proposes per round.
    #[arg(long, default_value_t = 4, requires = "draft")]
    draft_tokens: usize,
    /// Print timing as `stats: {json}` on stderr at the end.
    #[arg(long)]
    stats: bool,
}

pub fn run(a: &SampleArgs) -> Result<()> {
    let cfg = a.sampling.config()?;
    let checkpoint::Loaded { model, config: ck, .. } = checkpoint::load_model(Cpu, &a.checkpoint)?;
    let tok = &ck.tokenizer;
    if let Some(file) = &a.prompts {
        return run_batch(a, &model, tok, file);
    }
    if a.prompt.is_empty() {
        bail!("--prompt is empty: give at least one character of context");
    }
    let prompt = tok.encode(&a.prompt)?;
    let start = Instant::now();
    let mut out = Output::new(tok, &a.sampling.stop_sequences());
    let mut produced = 0;
    let mut extra = json!({});
    match &a.draft {
        None => {
            let mut g = Generator::new(&model, Sampler::new(cfg, a.sampling.seed));
            g.prefill(&prompt)?;
            while produced < a.max_new_tokens {
                produced += 1;
                if out.token(g.next_token())? {
                    break;
                }
            }
        }
        Some(dir) => {
            let checkpoint::Loaded { model: draft, config: draft_ck, .. } = checkpoint::load_model(Cpu, dir)?;
            if draft_ck.tokenizer != ck.tokenizer {
                bail!("the draft checkpoint {} uses a different tokenizer than the model", dir.display());
            }
            let mut s = Speculative::new(&model, &draft, Sampler::new(cfg, a.sampling.seed), a.draft_tokens)?;
            s.prefill(&prompt)?;
            'outer: while produced < a.max_new_tokens {
                for t in s.next_tokens() {
                    produced += 1;
                    if out.token(t)? || produced == a.max_new_tokens {
                        break 'outer;
                    }
                }
            }
            let st = s.stats;
            extra = json!({"draft_tokens": a.draft_tokens, "acceptance": st.acceptance(), "target_passes": st.target_passes});
        }
    }
    out.finish()?;
    let secs = start.elapsed().as_secs_f64();
    if a.stats {
        let mut stats = json!({
            "prompt_tokens": prompt.len(),
            "new_tokens": produced,
            "seconds": secs,
            "tokens_per_s": produced as f64 / secs,
        });
        if let (Some(s), Some(e)) = (stats.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        eprintln!("stats: {stats}");
    }
    Ok(())
}

/// Streams tokens to stdout as text: whole characters only, stop sequences
/// held back and cut.
struct Output<'t> {
    tok: &'t Tokenizer,
    utf8: Utf8Stream,
    stop: StopMatcher,
    stdout: std::io::Stdout,
}

impl<'t> Output<'t> {
    fn new(tok: &'t Tokenizer, stops: &[String]) -> Self {
        Output { tok, utf8: Utf8Stream::default(), stop: StopMatcher::new(stops), stdout: std::io::stdout() }
    }

    /// Shows a token; true when a stop sequence was reached.
    fn token(&mut self, t: u32) -> Result<bool> {
        let text = self.utf8.push(&self.tok.decode_bytes(&[t]));
        let (show, stopped) = self.stop.push(&text);
        self.write(&show)?;
        Ok(stopped)
    }

    fn finish(&mut self) -> Result<()> {
        let rest = self.utf8.finish();
        let (show, stopped) = self.stop.push(&rest);
        let held = if stopped { String::new() } else { self.stop.finish() };
        self.write(&(show + &held + "\n"))
    }

    fn write(&mut self, s: &str) -> Result<()> {
        let mut out = self.stdout.lock();
        out.write_all(s.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// Prompts from a text file (one per non-empty line) or JSONL ("prompt").
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))?;
            match v.get("prompt").and_then(|p| p.as_str()) {
                Some(p) => prompts.push(p.to_string()),
                None => bail!("{} line {}: no \"prompt\" string", path.display(), i + 1),
            }
        } else {
            prompts.push(line.to_string());
        }
    }
    if prompts.is_empty() {
        bail!("prompts file {} has no prompts", path.display());
    }
    Ok(prompts)
}

/// `--prompts`: every prompt decoded together (prompt `i` with seed
/// `seed + i`), one JSON line per prompt.
fn run_batch(a: &SampleArgs, model: &crate::model::Gpt<Cpu>, tok: &Tokenizer, file: &Path) -> Result<()> {
    let cfg = a.sampling.config()?;
    let texts = read_prompts(file)?;
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, p)| tok.encode(p).with_context(|| format!("prompt {}", i + 1)))
        .collect::<Result<_>>()?;
    let seeds: Vec<u64> = (0..prompts.len() as u64).map(|i| a.sampling.seed.wrapping_add(i)).collect();
    let stops = a.sampling.stop_sequences();
    // Per sequence: the text shown so far and the stream state behind it.
    let mut state: Vec<(String, Utf8Stream, StopMatcher)> =
        prompts.iter().map(|_| (String::new(), Utf8Stream::default(), StopMatcher::new(&stops))).collect();
    let mut on_token = |i: usize, t: u32| {
        let (shown, utf8, stop) = &mut state[i];
        let (text, stopped) = stop.push(&utf8.push(&tok.decode_bytes(&[t])));
        shown.push_str(&text);
        stopped
    };
    let start = Instant::now();
    let seqs = if a.sequential {
        let mut all = Vec::new();
        for i in 0..prompts.len() {
            let one =
                generate_batch(model, &prompts[i..=i], cfg, &seeds[i..=i], a.max_new_tokens, |_, t| on_token(i, t))?;
            all.extend(one);
        }
        all
    } else {
        generate_batch(model, &prompts, cfg, &seeds, a.max_new_tokens, &mut on_token)?
    };
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut total = 0;
    for (i, (seq, (shown, utf8, stop))) in seqs.iter().zip(state.iter_mut()).enumerate() {
        let (tail, stopped) = stop.push(&utf8.finish());
        let completion = if stopped { format!("{shown}{tail}") } else { format!("{shown}{tail}{}", stop.finish()) };
        total += seq.generated;
        let line = json!({"index": i, "prompt": texts[i], "completion": completion, "new_tokens": seq.generated});
        writeln!(out, "{line}")?;
    }
    if a.stats {
        let stats = json!({
            "prompts": prompts.len(),
            "new_tokens": total,
            "seconds": secs,
            "tokens_per_s": total as f64 / secs,
            "batched": !a.sequential,
        });
        eprintln!("stats: {stats}");
    }
    Ok(())
}
