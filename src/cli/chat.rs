//! `ferrite chat`: a conversation with a checkpoint, in the terminal or
//! through a pipe (one message per line).

use super::precision::{KvArgs, WeightArgs};
use super::sampling::SamplingArgs;
use crate::checkpoint;
use crate::engine::Backend;
use crate::generate::chat::{ChatTemplate, Conversation, Turn};
use crate::generate::{Batch, Event, Finish, FinishReason, Prompt, Request, SamplerConfig};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Checkpoint directory, or a run directory (its best checkpoint).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// System prompt (default: the template's; "" for none).
    #[arg(long)]
    system: Option<String>,
    /// How the conversation is written for the model: `special`
    /// (`<|system|>`/`<|user|>`/`<|assistant|>` tokens), `dolly`, `dialogue`
    /// (User:/Assistant:), `none` (plain text), or `auto`: the checkpoint's
    /// own, else `special` where the tokenizer has those tokens, else the
    /// first its vocabulary can write.
    #[arg(long, default_value = "auto")]
    template: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    kv: KvArgs,
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT, /set KEY VALUE \
(temperature, top_k, top_p, min_p, repetition_penalty, frequency_penalty, presence_penalty, \
max_new_tokens, seed), /show, /help, /quit";

/// Set by Ctrl-C: stops the answer being generated, not the session.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Settings {
    sampling: SamplerConfig,
    max_new_tokens: usize,
    seed: u64,
}

super::on_device!(ChatArgs, chat);

fn chat<B: Backend>(a: &ChatArgs, be: B) -> Result<()> {
    let kv = a.kv.check()?;
    let checkpoint::Loaded { model, config: ck, dir, .. } = a.weights.load_decoding(be, &a.checkpoint, kv)?;
    let (model, tok) = (Arc::new(model), Arc::new(ck.tokenizer.clone()));
    let (template_name, template) =
        ChatTemplate::choose(&a.template, ck.chat_template.as_ref(), &tok, a.system.as_deref())?;
    let system = a.system.clone().unwrap_or_else(|| template.default_system());
    eprintln!("chat template: {template_name} (--template {} to choose)", ChatTemplate::NAMES.join("|"));
    let mut conv = Conversation::new(template, system);
    let mut stops = conv.template.stop.clone();
    stops.extend(a.sampling.stop_sequences());
    let mut set = Settings { sampling: a.sampling.config()?, max_new_tokens: a.max_new_tokens, seed: a.sampling.seed };
    // Answer `i` since the seed was set samples with `seed + i`.
    let mut answers = 0u64;
    let mut batch = Batch::new(model.clone(), tok.clone(), 1)?;
    let interactive = std::io::stdin().is_terminal();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
    }
    if interactive {
        eprintln!("chatting with {} ({} block). {HELP}; Ctrl-C stops an answer.", dir.display(), model.cfg.block_size);
    }
    let block = model.cfg.block_size;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        // One message at most 1 MiB: an endless stdin (`< /dev/zero`) is an error, not a hang.
        const LIMIT: u64 = 1 << 20;
        if stdin.lock().take(LIMIT).read_line(&mut line).context("cannot read stdin")? == 0 {
            break;
        }
        if line.len() as u64 >= LIMIT && !line.ends_with('\n') {
            bail!("a message longer than {} KiB on stdin", LIMIT >> 10);
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            match command(cmd, &mut conv, &mut set) {
                Ok(Command::Quit) => break,
                Ok(Command::Reseed) => answers = 0,
                Ok(Command::Done(msg)) => {
                    if !msg.is_empty() {
                        eprintln!("{msg}");
                    }
                }
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        // Keep room for the answer: at least half the context, at most max_new_tokens.
        let reserve = set.max_new_tokens.min(block / 2);
        let fits = |p: &str| tok.encode(p).map(|t| t.len() + reserve <= block).unwrap_or(true);
        let prompt = match tok.encode(&conv.prompt(line, fits)) {
            Ok(p) => p,
            // At a terminal, say so and let the user rephrase; in a script, fail.
            Err(e) if interactive => {
                eprintln!("error: {e:#}");
                continue;
            }
            Err(e) => return Err(e.context("cannot write this message in the model's vocabulary")),
        };
        let req = Request {
            sampling: set.sampling,
            seed: set.seed.wrapping_add(answers),
            stop: stops.clone(),
            ..Request::new(Prompt::Tokens(prompt), set.max_new_tokens)
        };
        answers += 1;
        let id = batch.add(req)?;
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut answer = String::new();
        'answer: loop {
            if INTERRUPTED.swap(false, Ordering::SeqCst) {
                if let Some((held, _)) = batch.cancel(id) {
                    answer.push_str(&held);
                    stdout.write_all(held.as_bytes())?;
                }
                break;
            }
            for (_, event) in batch.step() {
                match event {
                    Event::Text(text) => {
                        answer.push_str(&text);
                        stdout.write_all(text.as_bytes())?;
                        stdout.flush()?;
                    }
                    Event::Finish(Finish { reason: FinishReason::Error(e), .. }) => bail!("{e}"),
                    Event::Finish(_) => break 'answer,
                    Event::Token(_) => {}
                }
            }
        }
        writeln!(stdout)?;
        conv.turns.push(Turn { user: line.to_string(), assistant: answer.trim().to_string() });
    }
    Ok(())
}

enum Command {
    Quit,
    /// The seed changed: start a new random stream.
    Reseed,
    Done(String),
}

fn command(cmd: &str, conv: &mut Conversation, set: &mut Settings) -> Result<Command> {
    let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
    let rest = rest.trim();
    Ok(match name {
        "quit" | "exit" => Command::Quit,
        "reset" => {
            conv.turns.clear();
            Command::Done("(conversation forgotten)".into())
        }
        "system" => {
            conv.system = rest.to_string();
            Command::Done(if rest.is_empty() { "(no system prompt)".into() } else { "(system prompt set)".into() })
        }
        "help" => Command::Done(HELP.into()),
        "show" => Command::Done(format!(
            "max_new_tokens {}, seed {}, {:?}, system prompt {:?}",
            set.max_new_tokens, set.seed, set.sampling, conv.system
        )),
        "set" => {
            let (key, value) = rest.split_once(' ').context("usage: /set KEY VALUE")?;
            let value = value.trim();
            let f = || value.parse::<f32>().with_context(|| format!("{key} needs a number, got '{value}'"));
            let u = || value.parse::<usize>().with_context(|| format!("{key} needs a whole number, got '{value}'"));
            let mut s = set.sampling;
            match key {
                "temperature" => s.temperature = f()?,
                "top_k" | "top-k" => s.top_k = u()?,
                "top_p" | "top-p" => s.top_p = f()?,
                "min_p" | "min-p" => s.min_p = f()?,
                "repetition_penalty" => s.repetition_penalty = f()?,
                "frequency_penalty" => s.frequency_penalty = f()?,
                "presence_penalty" => s.presence_penalty = f()?,
                "max_new_tokens" => {
                    set.max_new_tokens = u()?;
                    return Ok(Command::Done(String::new()));
                }
                "seed" => {
                    set.seed = value.parse().with_context(|| format!("seed needs a whole number, got '{value}'"))?;
                    return Ok(Command::Reseed);
                }
                _ => bail!("unknown setting '{key}' ({HELP})"),
            }
            s.validate()?;
            set.sampling = s;
            Command::Done(String::new())
        }
        _ => bail!("unknown command '/{name}' ({HELP})"),
    })
}
