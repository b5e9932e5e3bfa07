//! Chat: a conversation rendered with a template into the text the model
//! continues, trimmed to the model's context.

pub use crate::data::chat_template::ChatTemplate;

/// One exchange: the user's message and the assistant's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
}

/// A conversation: system prompt and finished turns.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub template: ChatTemplate,
    pub system: String,
    pub turns: Vec<Turn>,
}

impl Conversation {
    pub fn new(template: ChatTemplate, system: String) -> Self {
        Conversation { template, system, turns: Vec::new() }
    }

    /// The prompt for answering `question` after the finished turns:
    /// system, every turn, the question, and the opening of the answer.
    /// Until `fits(prompt)` holds, the oldest turns are dropped, then the
    /// system prompt; if even the question alone does not fit, the caller's
    /// window keeps the newest tokens.
    pub fn prompt(&self, question: &str, fits: impl Fn(&str) -> bool) -> String {
        let t = &self.template;
        let system = if self.system.is_empty() { String::new() } else { ChatTemplate::fill(&t.system, &self.system) };
        let tail = format!("{}{}", ChatTemplate::fill(&t.user, question), t.assistant_open());
        let render = |head: &str, turns: &[Turn]| {
            let mut s = head.to_string();
            for turn in turns {
                s += &ChatTemplate::fill(&t.user, &turn.user);
                s += &ChatTemplate::fill(&t.assistant, &turn.assistant);
            }
            s + &tail
        };
        (0..=self.turns.len())
            .map(|first| render(&system, &self.turns[first..]))
            .find(|p| fits(p))
            .unwrap_or_else(|| render("", &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dolly_and_trims_old_turns() {
        let mut c = Conversation::new(ChatTemplate::dolly(), "Be brief.".into());
        assert_eq!(c.prompt("Hi?", |_| true), "Be brief.\n\n### Instruction:\nHi?\n\n### Response:\n");
        c.turns.push(Turn { user: "one".into(), assistant: "1".into() });
        c.turns.push(Turn { user: "two".into(), assistant: "2".into() });
        let full = c.prompt("three", |_| true);
        assert!(full.starts_with("Be brief.\n\n### Instruction:\none\n\n### Response:\n1\n\n### Instruction:\ntwo"));
        assert!(full.ends_with("### Instruction:\nthree\n\n### Response:\n"));
        // Too long: the oldest turn goes first, the system prompt stays.
        let trimmed = c.prompt("three", |p| p.len() < full.len());
        assert!(trimmed.starts_with("Be brief.\n\n### Instruction:\ntwo"), "{trimmed}");
        // Still too long: the system prompt goes too.
        assert_eq!(c.prompt("three", |_| false), "### Instruction:\nthree\n\n### Response:\n");
    }
}
