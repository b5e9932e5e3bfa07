//! `ferrite sample`: stream generated text from a checkpoint; many prompts
//! at once (`--prompts FILE`, JSONL out); or with a draft model
//! (speculative decoding).

use super::precision::{KvArgs, WeightArgs};
use super::sampling::SamplingArgs;
use crate::checkpoint::Loaded;
use crate::data::Tokenizer;
use crate::engine::Backend;
use crate::generate::{complete, Batch, Draft, Event, Finish, FinishReason, Prompt, Request, SeqId};
use crate::model::Gpt;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    kv: KvArgs,
}

super::on_device!(SampleArgs, sample);

fn sample<B: Backend>(a: &SampleArgs, be: B) -> Result<()> {
    let kv = a.kv.check()?;
    let Loaded { model, config: ck, .. } = a.weights.load_decoding(be.clone(), &a.checkpoint, kv)?;
    let (model, tok) = (Arc::new(model), Arc::new(ck.tokenizer));
    a.sampling.config()?;
    if let Some(file) = &a.prompts {
        return run_batch(a, &model, &tok, file);
    }
    if a.prompt.is_empty() {
        bail!("--prompt is empty: give at least one character of context");
    }
    let draft = match &a.draft {
        None => None,
        Some(dir) => {
            // The adapter is the target's; the draft is another model.
            let plain = WeightArgs { adapter: None, ..a.weights.clone() };
            let d = plain.load_decoding(be, dir, kv)?;
            if d.config.tokenizer != *tok {
                bail!("the draft checkpoint {} uses a different tokenizer than the model", dir.display());
            }
            Some(Draft { model: Arc::new(d.model), tokens: a.draft_tokens })
        }
    };
    let req = Request { prompt: Prompt::Text(a.prompt.clone()), draft, ..request(a, 0)? };
    let mut stdout = std::io::stdout();
    let finish = complete(&model, &tok, req, |text| {
        stdout.write_all(text.as_bytes())?;
        Ok(stdout.flush()?)
    })?;
    writeln!(stdout)?;
    stdout.flush()?;
    if a.stats {
        let secs = finish.total.as_secs_f64();
        let mut stats = json!({
            "prompt_tokens": finish.prompt_tokens,
            "new_tokens": finish.completion_tokens,
            "seconds": secs,
            "tokens_per_s": finish.completion_tokens as f64 / secs,
        });
        if let Some(st) = finish.speculative {
            stats["draft_tokens"] = a.draft_tokens.into();
            stats["acceptance"] = st.acceptance().into();
            stats["target_passes"] = st.target_passes.into();
        }
        eprintln!("stats: {stats}");
    }
    Ok(())
}

/// The request these options describe for prompt `i` (seed `seed + i`),
/// with an empty prompt.
fn request<B: Backend>(a: &SampleArgs, i: usize) -> Result<Request<B>> {
    Ok(Request {
        sampling: a.sampling.config()?,
        seed: a.sampling.seed.wrapping_add(i as u64),
        stop: a.sampling.stop_sequences(),
        ..Request::new(Prompt::Tokens(Vec::new()), a.max_new_tokens)
    })
}

/// Prompts from a text file (one per non-empty line) or JSONL ("prompt").
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = crate::data::files::read_small_text(path, "prompts file")?;
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
fn run_batch<B: Backend>(a: &SampleArgs, model: &Arc<Gpt<B>>, tok: &Arc<Tokenizer>, file: &Path) -> Result<()> {
    let texts = read_prompts(file)?;
    let requests = |range: std::ops::Range<usize>| -> Result<Vec<Request<B>>> {
        range
            .map(|i| {
                let prompt = tok.encode(&texts[i]).with_context(|| format!("prompt {}", i + 1))?;
                if prompt.is_empty() {
                    bail!("prompt {} is empty: give at least one token of context", i + 1);
                }
                Ok(Request { prompt: Prompt::Tokens(prompt), ..request(a, i)? })
            })
            .collect()
    };
    let start = Instant::now();
    let mut done: Vec<(String, Finish)> = Vec::with_capacity(texts.len());
    if a.sequential {
        for i in 0..texts.len() {
            done.extend(decode_together(model, tok, requests(i..i + 1)?)?);
        }
    } else {
        done = decode_together(model, tok, requests(0..texts.len())?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut total = 0;
    for (i, (completion, finish)) in done.iter().enumerate() {
        total += finish.completion_tokens;
        let line =
            json!({"index": i, "prompt": texts[i], "completion": completion, "new_tokens": finish.completion_tokens});
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if a.stats {
        let stats = json!({
            "prompts": texts.len(),
            "new_tokens": total,
            "seconds": secs,
            "tokens_per_s": total as f64 / secs,
            "batched": !a.sequential,
        });
        eprintln!("stats: {stats}");
    }
    Ok(())
}

/// Decodes requests in one batch; each one's text and finish, in order.
fn decode_together<B: Backend>(
    model: &Arc<Gpt<B>>,
    tok: &Arc<Tokenizer>,
    requests: Vec<Request<B>>,
) -> Result<Vec<(String, Finish)>> {
    let mut batch = Batch::new(model.clone(), tok.clone(), requests.len())?;
    let ids: Vec<SeqId> = requests.into_iter().map(|r| batch.add(r)).collect::<Result<_>>()?;
    let mut texts: HashMap<SeqId, String> = HashMap::new();
    let mut finishes: HashMap<SeqId, Finish> = HashMap::new();
    while batch.active() > 0 {
        for (id, event) in batch.step() {
            match event {
                Event::Text(t) => texts.entry(id).or_default().push_str(&t),
                Event::Token(_) => {}
                Event::Finish(Finish { reason: FinishReason::Error(e), .. }) => bail!("{e}"),
                Event::Finish(f) => {
                    finishes.insert(id, f);
                }
            }
        }
    }
    Ok(ids.iter().map(|id| (texts.remove(id).unwrap_or_default(), finishes.remove(id).expect("finished"))).collect())
}
