//! The generation API from Rust: a continuous batch of requests.
//!
//! cargo run --release --example generate -- out/shakespeare-char-cpu "ROMEO:" "JULIET:"

use ferrite::checkpoint;
use ferrite::engine::cpu::Cpu;
use ferrite::generate::{Batch, Event, Prompt, Request};
use std::collections::HashMap;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, prompts)) = args.split_first() else {
        anyhow::bail!("usage: generate CHECKPOINT PROMPT...");
    };
    let loaded = checkpoint::load_model(Cpu, dir.as_ref())?;
    let (model, tok) = (Arc::new(loaded.model), Arc::new(loaded.config.tokenizer));
    let mut batch = Batch::new(model, tok, prompts.len().max(1))?;
    let mut names = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let req = Request { seed: i as u64, stop: vec!["\n\n".into()], ..Request::new(Prompt::Text(p.clone()), 100) };
        names.insert(batch.add(req)?, p.clone());
    }
    let mut texts: HashMap<_, String> = HashMap::new();
    while batch.active() > 0 {
        // Requests can join (`add`) or leave (`cancel`) between steps.
        for (id, event) in batch.step() {
            match event {
                Event::Text(t) => texts.entry(id).or_default().push_str(&t),
                // Only requests with `logprobs` set get these.
                Event::Token(_) => {}
                Event::Finish(f) => println!(
                    "{}{}\n[{}: {} tokens, first after {:?}]\n",
                    names[&id],
                    texts.remove(&id).unwrap_or_default(),
                    f.reason.as_str(),
                    f.completion_tokens,
                    f.time_to_first_token
                ),
            }
        }
    }
    Ok(())
}
