//! Hugging Face tokenizers (`tokenizer.json`): loaded from disk, or trained
//! here as a byte-level BPE with our special tokens. The whole
//! `tokenizer.json` is kept inside the checkpoint's `config.json`, so a
//! checkpoint never depends on a file beside it.

use super::split_for_parallel;
use anyhow::{anyhow, bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

/// Special tokens of the tokenizers we train: end of text first (id 0), then
/// the chat roles.
pub const SPECIAL_TOKENS: [&str; 4] = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"];

#[derive(Clone)]
pub struct HfTokenizer {
    inner: Arc<Tokenizer>,
    /// Bytes of each id (specials: their text), for streaming and bits per byte.
    bytes: Arc<Vec<Vec<u8>>>,
}

impl HfTokenizer {
    pub fn new(inner: Tokenizer) -> HfTokenizer {
        let bytes = token_bytes_table(&inner);
        HfTokenizer { inner: Arc::new(inner), bytes: Arc::new(bytes) }
    }

    pub fn from_file(path: &Path) -> Result<HfTokenizer> {
        let text = crate::data::files::read_small_text(path, "tokenizer file")?;
        let inner = Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| anyhow!("{} is not a valid tokenizer.json: {e}", path.display()))?;
        HfTokenizer::without_gaps(inner).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// [`HfTokenizer::new`] for a vocabulary from outside: its ids must run
    /// from 0 without gaps (an id past the count would index past the model's
    /// embedding).
    pub fn without_gaps(inner: Tokenizer) -> Result<HfTokenizer> {
        let n = inner.get_vocab_size(true) as u32;
        if let Some(id) = (0..n).find(|&id| inner.id_to_token(id).is_none()) {
            bail!("the vocabulary has {n} tokens but no token with id {id}: ids must run from 0 without gaps");
        }
        Ok(HfTokenizer::new(inner))
    }

    /// Trains a byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) of
    /// up to `vocab_size` tokens, specials included, on `texts` (fewer when
    /// the corpus runs out of pairs seen twice).
    pub fn train_bpe<I, S>(vocab_size: usize, texts: I) -> Result<HfTokenizer>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let min = 256 + SPECIAL_TOKENS.len();
        if vocab_size < min {
            bail!("--vocab-size must be at least {min} (256 bytes and {} special tokens)", SPECIAL_TOKENS.len());
        }
        let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        tok.train(&mut trainer, texts).map_err(|e| anyhow!("BPE training failed: {e}"))?;
        Ok(HfTokenizer::new(tok))
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn end_of_text(&self) -> Option<u32> {
        ["<|endoftext|>", "</s>", "<eos>"].iter().find_map(|t| self.inner.token_to_id(t))
    }

    /// Encodes `text`; in parallel over pieces when the tokenizer is GPT-2
    /// style byte-level (no normalizer, the byte-level regex split), whose
    /// tokens never span the cut points of [`split_for_parallel`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let one = |t: &str| -> Result<Vec<u32>> {
            let enc = self.inner.encode_fast(t, false).map_err(|e| anyhow!("tokenizer failed: {e}"))?;
            Ok(enc.get_ids().to_vec())
        };
        let splittable = self.inner.get_normalizer().is_none()
            && matches!(self.inner.get_pre_tokenizer(), Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space);
        let pieces = if splittable { split_for_parallel(text, 1 << 16) } else { vec![text] };
        if pieces.len() == 1 {
            return one(text);
        }
        Ok(pieces.par_iter().map(|p| one(p)).collect::<Result<Vec<_>>>()?.concat())
    }

    /// Whether `id` is a special (added) token such as `<|endoftext|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.id_to_token(id).is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    pub fn to_json(&self, pretty: bool) -> Result<String> {
        self.inner.to_string(pretty).map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))
    }
}

/// For byte-level tokenizers each token's characters map back to bytes
/// through GPT-2's byte alphabet; for others, the decoder's text.
fn token_bytes_table(tok: &Tokenizer) -> Vec<Vec<u8>> {
    let n = tok.get_vocab_size(true);
    let byte_level = matches!(tok.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    let unicode_to_byte = byte_alphabet();
    (0..n as u32)
        .map(|id| {
            let Some(token) = tok.id_to_token(id) else { return Vec::new() };
            let special = tok.get_added_vocabulary().is_special_token(&token);
            if byte_level && !special {
                if let Some(bytes) = token.chars().map(|c| unicode_to_byte.get(&c).copied()).collect() {
                    return bytes;
                }
            }
            if special {
                return token.into_bytes();
            }
            tok.decode(&[id], false).map(String::into_bytes).unwrap_or_default()
        })
        .collect()
}

/// GPT-2's printable stand-ins for the 256 byte values (the byte-level
/// format of `tokenizer.json` and GGUF vocabularies), indexed by byte.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("a valid code point")
            }
        })
        .collect()
}

/// [`byte_chars`], inverted.
fn byte_alphabet() -> HashMap<char, u8> {
    byte_chars().into_iter().zip(0..=255u8).collect()
}

impl PartialEq for HfTokenizer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.to_json(false).ok() == other.to_json(false).ok()
    }
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer({} tokens)", self.vocab_size())
    }
}

impl Serialize for HfTokenizer {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.inner.serialize(s)
    }
}

impl<'de> Deserialize<'de> for HfTokenizer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        HfTokenizer::without_gaps(Tokenizer::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let map = byte_alphabet();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
    }

    #[test]
    fn trained_bpe_round_trips_and_keeps_specials() {
        let corpus = "the cat sat on the mat. the dog sat on the log.\n".repeat(50);
        let tok = HfTokenizer::train_bpe(300, corpus.lines()).unwrap();
        // A tiny corpus runs out of pairs to merge before 300.
        assert!((270..=300).contains(&tok.vocab_size()), "{}", tok.vocab_size());
        assert_eq!(tok.end_of_text(), Some(0));
        let ids = tok.encode("the cat sat").unwrap();
        assert!(ids.len() < 11, "merges were learned: {ids:?}");
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).to_vec()).collect();
        assert_eq!(bytes, b"the cat sat");
        assert_eq!(tok.encode("<|user|>").unwrap(), vec![2]);
        // Through JSON and back.
        let again: HfTokenizer = serde_json::from_str(&serde_json::to_string(&tok).unwrap()).unwrap();
        assert_eq!(again, tok);
        assert!(HfTokenizer::train_bpe(100, corpus.lines()).is_err());
    }
}
