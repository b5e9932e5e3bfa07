//! Chat templates: how a conversation is written out as the text a model
//! was trained on. A checkpoint carries its model's template.

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

    /// The system prompt Dolly's format starts with.
    pub fn default_system() -> String {
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
            .into()
    }

    pub fn fill(part: &str, content: &str) -> String {
        part.replace("{content}", content)
    }

    /// The text before the assistant's answer (its opening, without `{content}`).
    pub fn assistant_open(&self) -> &str {
        self.assistant.split("{content}").next().unwrap_or("")
    }
}
