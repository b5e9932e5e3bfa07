//! Tokenizers: character-level (vocabulary from the corpus) and byte-level.
//! Saved in every checkpoint's `config.json`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per Unicode scalar value seen in the corpus, in sorted order.
    Char { chars: String },
    /// One token per byte (256 symbols); any input is encodable.
    Byte,
}

impl Tokenizer {
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
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Byte => "byte",
        }
    }

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
        }
    }

    /// Decodes tokens to bytes. Byte-level output may split a UTF-8
    /// sequence between calls; streaming callers keep the bytes and decode
    /// lossily only what is complete.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Tokenizer::Byte => tokens.iter().map(|&t| t as u8).collect(),
            Tokenizer::Char { chars } => {
                let table: Vec<char> = chars.chars().collect();
                let s: String = tokens.iter().map(|&t| table[t as usize]).collect();
                s.into_bytes()
            }
        }
    }

    /// UTF-8 bytes each token stands for (bits per byte divide by these).
    pub fn token_bytes(&self) -> Vec<usize> {
        match self {
            Tokenizer::Byte => vec![1; 256],
            Tokenizer::Char { chars } => chars.chars().map(char::len_utf8).collect(),
        }
    }

    pub fn decode(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }
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
}
