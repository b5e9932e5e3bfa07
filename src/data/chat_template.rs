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

    /// The templates `ferrite chat --template` knows, in the order an
    /// automatic choice tries them.
    pub const NAMES: [&'static str; 3] = ["dolly", "dialogue", "none"];

    pub fn named(name: &str) -> Result<ChatTemplate> {
        Ok(match name {
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
                let name = Self::NAMES.iter().find(|n| Self::named(n).is_ok_and(|t| t.spellable(tok, system)));
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
