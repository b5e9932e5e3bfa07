//! OpenAI's BPE vocabularies through `tiktoken-rs`, which embeds their rank
//! files: they work offline, and encode token for token like tiktoken.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenAiVocab {
    /// GPT-2's 50257 tokens (tiktoken's `r50k_base`).
    #[serde(rename = "gpt2")]
    Gpt2,
    /// GPT-2's tokens and 24 runs of spaces (Codex, GPT-3.5's text models).
    #[serde(rename = "p50k_base")]
    P50kBase,
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
    #[serde(rename = "o200k_base")]
    O200kBase,
}

impl OpenAiVocab {
    pub const ALL: [OpenAiVocab; 4] =
        [OpenAiVocab::Gpt2, OpenAiVocab::P50kBase, OpenAiVocab::Cl100kBase, OpenAiVocab::O200kBase];

    pub fn name(self) -> &'static str {
        match self {
            OpenAiVocab::Gpt2 => "gpt2",
            OpenAiVocab::P50kBase => "p50k_base",
            OpenAiVocab::Cl100kBase => "cl100k_base",
            OpenAiVocab::O200kBase => "o200k_base",
        }
    }

    pub fn from_name(name: &str) -> Option<OpenAiVocab> {
        Self::ALL.into_iter().find(|v| v.name() == name || (name == "r50k_base" && *v == OpenAiVocab::Gpt2))
    }

    pub fn bpe(self) -> &'static CoreBPE {
        match self {
            OpenAiVocab::Gpt2 => tiktoken_rs::r50k_base_singleton(),
            OpenAiVocab::P50kBase => tiktoken_rs::p50k_base_singleton(),
            OpenAiVocab::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            OpenAiVocab::O200kBase => tiktoken_rs::o200k_base_singleton(),
        }
    }

    /// One more than the largest token id (special tokens included; some
    /// ids below it are unused in cl100k and o200k).
    pub fn vocab_size(self) -> usize {
        match self {
            OpenAiVocab::Gpt2 => 50257,
            OpenAiVocab::P50kBase => 50281,
            OpenAiVocab::Cl100kBase => 100277,
            OpenAiVocab::O200kBase => 200019,
        }
    }

    /// `<|endoftext|>`: the first special token (every id from it on is
    /// one, but p50k_base's runs of spaces after it).
    pub fn end_of_text(self) -> u32 {
        match self {
            OpenAiVocab::Gpt2 | OpenAiVocab::P50kBase => 50256,
            OpenAiVocab::Cl100kBase => 100257,
            OpenAiVocab::O200kBase => 199999,
        }
    }

    /// Whether `token` is a special token (`<|endoftext|>` and, but in
    /// p50k_base, every id after it).
    pub fn is_special(self, token: u32) -> bool {
        match self {
            OpenAiVocab::P50kBase => token == self.end_of_text(),
            _ => token >= self.end_of_text(),
        }
    }

    /// Encodes `text` as plain text (special-token strings are ordinary
    /// text), in parallel over pieces split where no token can span.
    pub fn encode(self, text: &str) -> Vec<u32> {
        let bpe = self.bpe();
        let one = |t: &str| match self {
            OpenAiVocab::Gpt2 => super::gpt2_fast::encode(bpe, t),
            _ => bpe.encode_ordinary(t),
        };
        let pieces = split_for_parallel(text, 1 << 16);
        if pieces.len() == 1 {
            return one(text);
        }
        pieces.par_iter().map(|p| one(p)).collect::<Vec<_>>().concat()
    }

    /// The bytes of each token; unused ids decode to nothing.
    pub fn token_bytes(self, token: u32) -> Vec<u8> {
        self.bpe().decode_bytes(&[token]).unwrap_or_default()
    }
}

/// Cuts `text` into pieces of about `target` bytes, each cut between an
/// ASCII letter or digit and a following space. No pattern of the GPT-2,
/// cl100k or o200k pre-tokenizers matches across such a point (their letter
/// and number runs never take a trailing space, punctuation runs take only
/// trailing newlines, and whitespace runs start at whitespace), so the
/// pieces encode to the same tokens as the whole.
pub fn split_for_parallel(text: &str, target: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        let mut from = start + target;
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let mut cut = None;
        let mut prev: Option<char> = None;
        for (i, ch) in text[from..].char_indices() {
            if let Some(p) = prev {
                if p.is_ascii_alphanumeric() && ch == ' ' {
                    cut = Some(from + i);
                    break;
                }
            }
            prev = Some(ch);
        }
        match cut {
            Some(c) => {
                pieces.push(&text[start..c]);
                start = c;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_pieces_encode_like_the_whole() {
        let unit = "Hello, world!  It's 2026: naïve café — 12345 apples.\n\n  \tTabs\r\nand 🦀 crabs?!\n";
        let text = unit.repeat(40);
        for vocab in OpenAiVocab::ALL {
            let whole = vocab.bpe().encode_ordinary(&text);
            let pieces = split_for_parallel(&text, 97);
            assert!(pieces.len() > 10);
            assert_eq!(pieces.concat(), text);
            let joined: Vec<u32> = pieces.iter().flat_map(|p| vocab.bpe().encode_ordinary(p)).collect();
            assert_eq!(joined, whole, "{}", vocab.name());
        }
    }

    #[test]
    fn special_ids_and_sizes() {
        // p50k_base's ids after <|endoftext|> are runs of spaces, not specials.
        assert!(!OpenAiVocab::P50kBase.is_special(50260));
        assert_eq!(OpenAiVocab::P50kBase.token_bytes(50260), vec![b' '; 5]);
        for vocab in OpenAiVocab::ALL {
            assert_eq!(vocab.token_bytes(vocab.end_of_text()), b"<|endoftext|>", "{}", vocab.name());
            assert!(vocab.token_bytes(vocab.vocab_size() as u32 - 1).len() > 1);
            assert!(vocab.token_bytes(vocab.vocab_size() as u32).is_empty());
            assert!(vocab.is_special(vocab.end_of_text()) && !vocab.is_special(vocab.end_of_text() - 1));
        }
    }
}
