//! Tokenizers, one interface: character-level (vocabulary from the corpus),
//! byte-level, OpenAI's BPE vocabularies (embedded, offline) and Hugging
//! Face `tokenizer.json` files (loaded, or trained by `ferrite tokenizer
//! train`). Saved in every checkpoint's `config.json`.
//!
//! Invalid UTF-8: only the byte tokenizer takes arbitrary bytes; every other
//! one needs UTF-8 text, and readers reject files that are not (see
//! [`Tokenizer::needs_utf8`]). Decoding gives bytes; text output replaces
//! incomplete sequences with U+FFFD.

mod export;
mod gpt2_fast;
mod hf;
mod openai;

pub use export::BpeVocab;
pub use hf::{HfTokenizer, SPECIAL_TOKENS};
pub use openai::{split_for_parallel, OpenAiVocab};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per Unicode scalar value seen in the corpus, in sorted order.
    Char { chars: String },
    /// One token per byte (256 symbols); any input is encodable.
    Byte,
    /// An OpenAI vocabulary: `gpt2`, `p50k_base`, `cl100k_base` or `o200k_base`.
    Tiktoken { name: OpenAiVocab },
    /// A Hugging Face tokenizer, its whole `tokenizer.json` inline.
    Hf { tokenizer: HfTokenizer },
}

impl Tokenizer {
    /// The names `--tokenizer` takes, besides a path to a `tokenizer.json`.
    pub const NAMES: &'static str = "char, byte, gpt2, p50k_base, cl100k_base, o200k_base";

    /// A tokenizer from its command-line name: `char` (needs the corpus),
    /// `byte`, an OpenAI vocabulary, or the path of a `tokenizer.json`.
    pub fn from_spec(spec: &str, corpus: Option<&str>) -> Result<Tokenizer> {
        Ok(match spec {
            "char" => match corpus {
                Some(text) => Tokenizer::char_from_corpus(text),
                None => bail!("the char tokenizer is built from a corpus; give one, or use another tokenizer"),
            },
            "byte" => Tokenizer::Byte,
            _ => match OpenAiVocab::from_name(spec) {
                Some(name) => Tokenizer::Tiktoken { name },
                None if spec.ends_with(".json") || Path::new(spec).is_file() => {
                    Tokenizer::Hf { tokenizer: HfTokenizer::from_file(Path::new(spec))? }
                }
                None => bail!("unknown tokenizer {spec:?}: use one of {} or a tokenizer.json path", Self::NAMES),
            },
        })
    }

    /// Builds a character vocabulary from a corpus (sorted unique chars).
    pub fn char_from_corpus(text: &str) -> Tokenizer {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Tokenizer::Char { chars: chars.into_iter().collect() }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char { chars } => chars.chars().count(),
            Tokenizer::Byte => 256,
            Tokenizer::Tiktoken { name } => name.vocab_size(),
            Tokenizer::Hf { tokenizer } => tokenizer.vocab_size(),
        }
    }

    /// A short name: `char`, `byte`, `gpt2`, ..., `hf`.
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Byte => "byte",
            Tokenizer::Tiktoken { name } => name.name(),
            Tokenizer::Hf { .. } => "hf",
        }
    }

    /// Whether input must be valid UTF-8 (all but the byte tokenizer).
    pub fn needs_utf8(&self) -> bool {
        !matches!(self, Tokenizer::Byte)
    }

    /// Whether `id` is a special token (only `tokenizer.json` vocabularies have them).
    pub fn is_special(&self, id: u32) -> bool {
        match self {
            Tokenizer::Hf { tokenizer } => tokenizer.is_special(id),
            _ => false,
        }
    }

    /// The end-of-text token that separates documents, if the vocabulary has one.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            Tokenizer::Char { .. } | Tokenizer::Byte => None,
            Tokenizer::Tiktoken { name } => Some(name.end_of_text()),
            Tokenizer::Hf { tokenizer } => tokenizer.end_of_text(),
        }
    }

    /// Encodes text. Special-token strings are plain text for the OpenAI
    /// vocabularies; a `tokenizer.json` decides for itself.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Char { chars } => {
                let table: std::collections::HashMap<char, u32> =
                    chars.chars().enumerate().map(|(i, c)| (c, i as u32)).collect();
                text.chars()
                    .map(|ch| match table.get(&ch) {
                        Some(&id) => Ok(id),
                        None => bail!("character {ch:?} is not in this model's vocabulary"),
                    })
                    .collect()
            }
            Tokenizer::Tiktoken { name } => Ok(name.encode(text)),
            Tokenizer::Hf { tokenizer } => tokenizer.encode(text),
        }
    }

    /// Encodes bytes: any bytes for the byte tokenizer (each is its token,
    /// so decoding gives them back exactly); UTF-8 text for the others.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(bytes.iter().map(|&b| u32::from(b)).collect()),
            _ => self.encode(utf8(bytes)?),
        }
    }

    /// Decodes tokens to bytes. Byte-level output may split a UTF-8
    /// sequence between calls; streaming callers keep the bytes and decode
    /// lossily only what is complete. Ids outside the vocabulary decode to
    /// nothing.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Tokenizer::Byte => tokens.iter().map(|&t| t as u8).collect(),
            Tokenizer::Char { chars } => {
                let table: Vec<char> = chars.chars().collect();
                let s: String = tokens.iter().filter_map(|&t| table.get(t as usize)).collect();
                s.into_bytes()
            }
            Tokenizer::Tiktoken { name } => tokens.iter().flat_map(|&t| name.token_bytes(t)).collect(),
            Tokenizer::Hf { tokenizer } => tokens.iter().flat_map(|&t| tokenizer.token_bytes(t).to_vec()).collect(),
        }
    }

    /// UTF-8 bytes of text each token stands for (bits per byte divide by
    /// these); special tokens such as end-of-text stand for none, as in the
    /// byte counts of a prepared dataset's manifest.
    pub fn token_bytes(&self) -> Vec<usize> {
        match self {
            Tokenizer::Byte => vec![1; 256],
            Tokenizer::Char { chars } => chars.chars().map(char::len_utf8).collect(),
            Tokenizer::Tiktoken { name } => (0..name.vocab_size() as u32)
                .map(|t| if name.is_special(t) { 0 } else { name.token_bytes(t).len() })
                .collect(),
            Tokenizer::Hf { tokenizer } => (0..tokenizer.vocab_size() as u32)
                .map(|t| if tokenizer.is_special(t) { 0 } else { tokenizer.token_bytes(t).len() })
                .collect(),
        }
    }

    pub fn decode(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }
}

/// Bytes as UTF-8 text, or an error giving the offset of the first bad byte.
pub fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "is not valid UTF-8 (first bad byte at offset {}); this tokenizer needs UTF-8 text (use --tokenizer byte for arbitrary bytes)",
            e.valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_round_trip_and_unknown() {
        let t = Tokenizer::char_from_corpus("hello world\n");
        assert_eq!(t.vocab_size(), 9);
        let ids = t.encode("low\n").unwrap();
        assert_eq!(t.decode(&ids), "low\n");
        assert!(t.encode("xyz").unwrap_err().to_string().contains("'x'"));
    }

    #[test]
    fn byte_round_trip_unicode() {
        let s = "héllo 🦀";
        let ids = Tokenizer::Byte.encode(s).unwrap();
        assert_eq!(ids.len(), s.len());
        assert_eq!(Tokenizer::Byte.decode(&ids), s);
    }

    /// Random strings over a mix of ASCII, whitespace runs, accented and
    /// combining letters, CJK, emoji (with joiners) and the special-token text.
    fn random_strings(count: usize) -> Vec<String> {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{RngCore, SeedableRng};
        let pieces = [
            "a",
            "Z",
            "0",
            "42",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            "\r\n",
            ".",
            ",",
            "'s",
            "'",
            "!?",
            "é",
            "e\u{301}",
            "ß",
            "中文",
            "日本",
            "🦀",
            "👩\u{200d}💻",
            "🇫🇷",
            "\u{0}",
            "\u{7f}",
            "\u{feff}",
            "<|endoftext|>",
            "ﬁ",
            "Ω",
            "١٢٣",
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..count)
            .map(|_| {
                let n = (rng.next_u32() % 40) as usize;
                (0..n).map(|_| pieces[(rng.next_u32() as usize) % pieces.len()]).collect()
            })
            .collect()
    }

    #[test]
    fn byte_level_tokenizers_round_trip_arbitrary_utf8() {
        let strings = random_strings(300);
        let corpus = strings.join("\n");
        let trained = HfTokenizer::train_bpe(400, strings.iter()).unwrap();
        let mut toks = vec![Tokenizer::Byte, Tokenizer::Hf { tokenizer: trained }];
        toks.extend(OpenAiVocab::ALL.map(|name| Tokenizer::Tiktoken { name }));
        for tok in &toks {
            for s in strings.iter().chain([&corpus]) {
                let ids = tok.encode(s).unwrap();
                assert_eq!(tok.decode_bytes(&ids), s.as_bytes(), "{} on {s:?}", tok.kind());
            }
        }
    }

    #[test]
    fn specs_and_bad_specs() {
        let gpt2 = Tokenizer::from_spec("gpt2", None).unwrap();
        assert_eq!(gpt2.vocab_size(), 50257);
        // End-of-text stands for no text in bits per byte.
        assert_eq!((gpt2.token_bytes()[50256], gpt2.token_bytes()[995]), (0, 6));
        assert_eq!(Tokenizer::from_spec("byte", None).unwrap(), Tokenizer::Byte);
        assert_eq!(Tokenizer::from_spec("char", Some("ba")).unwrap().vocab_size(), 2);
        assert!(Tokenizer::from_spec("char", None).is_err());
        assert!(Tokenizer::from_spec("gpt5", None).unwrap_err().to_string().contains("unknown tokenizer"));
        assert!(Tokenizer::from_spec("/nonexistent/tokenizer.json", None).is_err());
        // A config.json entry names its vocabulary.
        let json = serde_json::to_string(&Tokenizer::Tiktoken { name: OpenAiVocab::Cl100kBase }).unwrap();
        assert_eq!(json, r#"{"kind":"tiktoken","name":"cl100k_base"}"#);
        assert!(serde_json::from_str::<Tokenizer>(r#"{"kind":"tiktoken","name":"p99k"}"#).is_err());
    }
}
