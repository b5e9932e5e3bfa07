//! Chat templates: how a conversation is written out as the text a model
//! was trained on. A checkpoint carries its model's template.

use super::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How a conversation is written out for the model. `{content}` in each
/// part is replaced by the message. Saved in a checkpoint's `config.json`
/// (`chat_template`); checkpoints without one use [`ChatTemplate::dolly`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTemplate {
    /// Written once at the start (when non-empty).
    pub system: String,
    pub user: String,
    /// The assistant's part: the text before `{content}` opens its answer.
    pub assistant: String,
    /// Text that ends an answer (the model starting the next turn).
    pub stop: Vec<String>,
}

impl ChatTemplate {
    /// The instruction format of databricks-dolly-15k / Alpaca.
    pub fn dolly() -> ChatTemplate {
        ChatTemplate {
            system: "{content}\n\n".into(),
            user: "### Instruction:\n{content}\n\n".into(),
            assistant: "### Response:\n{content}\n\n".into(),
            stop: vec!["### Instruction:".into(), "### Response:".into()],
        }
    }

    /// A plain dialogue: `User: ...` / `Assistant: ...` lines.
    pub fn dialogue() -> ChatTemplate {
        ChatTemplate {
            system: "{content}\n".into(),
            user: "User: {content}\n".into(),
            assistant: "Assistant: {content}\n".into(),
            stop: vec!["\nUser:".into()],
        }
    }

    /// No template: the conversation is the text itself, one message after
    /// another, and the model continues it (an answer ends at a blank line).
    pub fn none() -> ChatTemplate {
        ChatTemplate {
            system: "{content}\n".into(),
            user: "{content}\n".into(),
            assistant: "{content}\n".into(),
            stop: vec!["\n\n".into()],
        }
    }

    /// Turns marked by the special tokens of ferrite's BPE tokenizers
    /// (`<|system|>`, `<|user|>`, `<|assistant|>`): one token each, which
    /// no text can spell by accident.
    pub fn special() -> ChatTemplate {
        ChatTemplate {
            system: "<|system|>\n{content}\n".into(),
            user: "<|user|>\n{content}\n".into(),
            assistant: "<|assistant|>\n{content}\n".into(),
            stop: vec!["<|user|>".into(), "<|system|>".into(), "<|endoftext|>".into()],
        }
    }

    /// Whether the tokenizer has the turn markers of [`Self::special`] as
    /// single special tokens.
    pub fn has_special_tokens(tok: &Tokenizer) -> bool {
        ["<|system|>", "<|user|>", "<|assistant|>"]
            .iter()
            .all(|t| tok.encode(t).is_ok_and(|ids| ids.len() == 1 && tok.is_special(ids[0])))
    }

    /// The templates `ferrite chat --template` knows, in the order an
    /// automatic choice tries them (`special` only where the tokenizer has
    /// those tokens).
    pub const NAMES: [&'static str; 4] = ["special", "dolly", "dialogue", "none"];

    pub fn named(name: &str) -> Result<ChatTemplate> {
        Ok(match name {
            "special" => ChatTemplate::special(),
            "dolly" => ChatTemplate::dolly(),
            "dialogue" => ChatTemplate::dialogue(),
            "none" => ChatTemplate::none(),
            _ => bail!("unknown chat template '{name}' (available: {})", Self::NAMES.join(", ")),
        })
    }

    /// The system prompt the template starts with by default.
    pub fn default_system(&self) -> String {
        if *self == ChatTemplate::dolly() {
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
                .into()
        } else {
            String::new()
        }
    }

    /// Whether a tokenizer can write every fixed part of the template and
    /// the system prompt (`system`, else the template's default): a
    /// character-level model may lack `#`.
    pub fn spellable(&self, tok: &Tokenizer, system: Option<&str>) -> bool {
        let parts = [&self.system, &self.user, &self.assistant];
        let fixed = parts.iter().map(|p| p.replace("{content}", "")).chain(self.stop.iter().cloned());
        let system = system.map_or_else(|| self.default_system(), str::to_string);
        fixed.chain([system]).all(|text| tok.encode(&text).is_ok())
    }

    /// The template to chat with: `choice` (a name, or `auto`), where
    /// `auto` takes the checkpoint's own (`saved`), else the first of
    /// [`Self::NAMES`] the tokenizer can spell (with `system`, the system
    /// prompt given). Returns how to name it too.
    pub fn choose(
        choice: &str,
        saved: Option<&ChatTemplate>,
        tok: &Tokenizer,
        system: Option<&str>,
    ) -> Result<(String, ChatTemplate)> {
        let (name, t) = match (choice, saved) {
            ("auto", Some(t)) => ("the checkpoint's own".to_string(), t.clone()),
            ("auto", None) => {
                let usable = |n: &&&str| {
                    (**n != "special" || Self::has_special_tokens(tok))
                        && Self::named(n).is_ok_and(|t| t.spellable(tok, system))
                };
                let name = Self::NAMES.iter().find(usable);
                let name = name.unwrap_or(&"none");
                (name.to_string(), Self::named(name)?)
            }
            (name, _) => (name.to_string(), Self::named(name)?),
        };
        if !t.spellable(tok, system) {
            let label = if name.starts_with("the ") { name.clone() } else { format!("the {name}") };
            bail!(
                "this model's vocabulary cannot write {label} chat template or its system prompt; try --template none"
            );
        }
        Ok((name, t))
    }

    pub fn fill(part: &str, content: &str) -> String {
        part.replace("{content}", content)
    }

    /// The text before the assistant's answer (its opening, without `{content}`).
    pub fn assistant_open(&self) -> &str {
        self.assistant.split("{content}").next().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_template_is_chosen_where_the_tokenizer_has_them() {
        let text = "the king shall speak and we will hear thee now good lord ".repeat(50);
        let hf = crate::data::tokenizer::HfTokenizer::train_bpe(300, std::iter::once(text.as_str())).unwrap();
        let bpe = Tokenizer::Hf { tokenizer: hf };
        assert!(ChatTemplate::has_special_tokens(&bpe));
        let (name, t) = ChatTemplate::choose("auto", None, &bpe, None).unwrap();
        assert_eq!((name.as_str(), &t), ("special", &ChatTemplate::special()));
        // Each marker is one token in a rendered turn.
        let ids = bpe.encode(&ChatTemplate::fill(&t.user, "the king")).unwrap();
        assert!(bpe.is_special(ids[0]), "{ids:?}");
        // A character vocabulary has no special tokens: not chosen there.
        let chars = Tokenizer::char_from_corpus("<|>systemuran \nthe king");
        assert!(!ChatTemplate::has_special_tokens(&chars));
        assert_ne!(ChatTemplate::choose("auto", None, &chars, None).unwrap().0, "special");
    }
}
