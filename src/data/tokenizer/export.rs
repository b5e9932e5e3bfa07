//! Our tokenizers in other tools' forms: a Hugging Face `tokenizer.json`
//! (what `AutoTokenizer` loads) and the byte-level BPE vocabulary a GGUF
//! file carries (llama.cpp's `gpt2` tokenizer model). Both are built from
//! one [`BpeVocab`], so the two exports cannot disagree.

use super::hf::byte_chars;
use super::{HfTokenizer, OpenAiVocab, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// A vocabulary as byte-level BPE: every token in GPT-2's byte alphabet
/// (special tokens as their text), merges in priority order.
#[derive(Clone, Debug, PartialEq)]
pub struct BpeVocab {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
    pub special: Vec<bool>,
    /// Tokens are byte-level strings (else: characters, the char tokenizer).
    pub byte_level: bool,
}

impl Tokenizer {
    /// The vocabulary as BPE, for `tokenizer.json` and GGUF files.
    pub fn bpe_vocab(&self) -> Result<BpeVocab> {
        let alphabet = byte_chars();
        let bytes_to_string = |b: &[u8]| b.iter().map(|&b| alphabet[b as usize]).collect::<String>();
        match self {
            Tokenizer::Byte => Ok(BpeVocab {
                tokens: (0..=255u8).map(|b| bytes_to_string(&[b])).collect(),
                merges: vec![],
                special: vec![false; 256],
                byte_level: true,
            }),
            Tokenizer::Char { chars } => Ok(BpeVocab {
                tokens: chars.chars().map(String::from).collect(),
                merges: vec![],
                special: vec![false; chars.chars().count()],
                byte_level: false,
            }),
            Tokenizer::Tiktoken { name } => tiktoken_vocab(*name, &bytes_to_string),
            Tokenizer::Hf { tokenizer } => {
                hf_vocab(&serde_json::from_str(&tokenizer.to_json(false)?)?, tokenizer.vocab_size())
            }
        }
    }

    /// A `tokenizer.json` that Hugging Face `tokenizers` (and so
    /// `AutoTokenizer`) loads and that encodes as this tokenizer does.
    pub fn to_hf_json(&self) -> Result<String> {
        if let Tokenizer::Hf { tokenizer } = self {
            return tokenizer.to_json(true);
        }
        // The byte tokenizer splits nothing; the OpenAI ones split as GPT-2 does.
        let tok = self.bpe_vocab()?.build(!matches!(self, Tokenizer::Byte))?;
        tok.to_string(true).map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))
    }

    /// Our tokenizer for a Hugging Face one: GPT-2's own vocabulary becomes
    /// the built-in `gpt2` (the same tokens, encoded faster).
    pub fn from_hf(hf: HfTokenizer) -> Tokenizer {
        let gpt2 = OpenAiVocab::Gpt2;
        if hf.vocab_size() == gpt2.vocab_size()
            && (0..gpt2.vocab_size() as u32).all(|id| hf.token_bytes(id) == gpt2.token_bytes(id).as_slice())
        {
            return Tokenizer::Tiktoken { name: gpt2 };
        }
        Tokenizer::Hf { tokenizer: hf }
    }
}

impl BpeVocab {
    /// A byte-level BPE tokenizer of this vocabulary that splits text with
    /// GPT-2's pre-tokenizer (`split`) or not at all (as one piece).
    pub fn build(&self, split: bool) -> Result<tokenizers::Tokenizer> {
        let vocab: Vocab = self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if vocab.len() != self.tokens.len() {
            bail!("the vocabulary lists a token twice");
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .build()
            .map_err(|e| anyhow!("cannot build the BPE model: {e}"))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        if self.byte_level {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, split)));
            tok.with_decoder(Some(ByteLevelDecoder::default()));
        } else {
            tok.with_decoder(Some(Fuse::new()));
        }
        let specials: Vec<AddedToken> = (self.tokens.iter().zip(&self.special))
            .filter(|(_, &s)| s)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(&specials);
        Ok(tok)
    }
}

/// An OpenAI vocabulary: tokens are its ranks' bytes; the merges, which
/// tiktoken does not store, are recovered from the ranks (each token of two
/// bytes or more is the merge of the two parts that BPE with the lower
/// ranks leaves of it).
fn tiktoken_vocab(name: OpenAiVocab, to_string: &dyn Fn(&[u8]) -> String) -> Result<BpeVocab> {
    if !matches!(name, OpenAiVocab::Gpt2 | OpenAiVocab::P50kBase) {
        bail!(
            "the {} tokenizer cannot be exported yet (its pre-tokenizer is not GPT-2's); gpt2 and p50k_base can",
            name.name()
        );
    }
    let eot = name.end_of_text() as usize;
    let bytes: Vec<Vec<u8>> = (0..name.vocab_size() as u32).map(|id| name.token_bytes(id)).collect();
    let rank: HashMap<&[u8], usize> =
        bytes.iter().enumerate().filter(|(i, _)| *i != eot).map(|(i, b)| (b.as_slice(), i)).collect();
    let mut merges = Vec::new();
    for (r, token) in bytes.iter().enumerate() {
        if r == eot || token.len() < 2 {
            continue;
        }
        let mut parts: Vec<&[u8]> = (0..token.len()).map(|i| &token[i..i + 1]).collect();
        while parts.len() > 2 {
            let best = (0..parts.len() - 1)
                .filter_map(|i| {
                    let joined = &token[offset(token, parts[i])..offset(token, parts[i + 1]) + parts[i + 1].len()];
                    rank.get(joined).filter(|&&k| k < r).map(|&k| (k, i))
                })
                .min()
                .with_context(|| format!("{}: token {r} is no merge of lower-ranked tokens", name.name()))?;
            let i = best.1;
            let start = offset(token, parts[i]);
            parts[i] = &token[start..start + parts[i].len() + parts[i + 1].len()];
            parts.remove(i + 1);
        }
        merges.push((to_string(parts[0]), to_string(parts[1])));
    }
    let tokens = bytes.iter().enumerate().map(|(i, b)| if i == eot { "<|endoftext|>".into() } else { to_string(b) });
    Ok(BpeVocab {
        tokens: tokens.collect(),
        merges,
        special: (0..bytes.len()).map(|i| i == eot).collect(),
        byte_level: true,
    })
}

/// Where `part` (a subslice of `token`) starts in it.
fn offset(token: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - token.as_ptr() as usize
}

/// A `tokenizer.json` of a byte-level BPE model, read from its JSON: GPT-2's
/// kind only (its byte-level pre-tokenizer with the regex, no normalizer),
/// the one whose splitting llama.cpp's `gpt-2` pre-tokenizer reproduces.
fn hf_vocab(json: &Value, size: usize) -> Result<BpeVocab> {
    let model = &json["model"];
    let pre = &json["pre_tokenizer"];
    let gpt2_split = pre["type"] == "ByteLevel" && pre["use_regex"] != false && pre["add_prefix_space"] != true;
    if model["type"] != "BPE" || json["decoder"]["type"] != "ByteLevel" || !gpt2_split || !json["normalizer"].is_null()
    {
        bail!(
            "only GPT-2-style tokenizers (byte-level BPE, GPT-2's pre-tokenizer, no normalizer) can go into a GGUF file; \
             this one would split text differently in llama.cpp"
        );
    }
    let vocab = model["vocab"].as_object().context("tokenizer.json has no BPE vocabulary")?;
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    let mut tokens: Vec<Option<String>> = vec![None; size];
    let mut special = vec![false; size];
    let mut place = |id: Option<u64>, text: &str| -> Result<usize> {
        let id =
            id.filter(|&i| (i as usize) < size).with_context(|| format!("token {text:?} has no id below {size}"))?;
        let slot = &mut tokens[id as usize];
        if slot.as_deref().is_some_and(|t| t != text) {
            bail!("tokenizer.json gives id {id} to both {:?} and {text:?}", slot.as_deref().unwrap_or(""));
        }
        *slot = Some(text.to_string());
        Ok(id as usize)
    };
    for (t, id) in vocab {
        place(id.as_u64(), t)?;
    }
    for a in &added {
        let text = a["content"].as_str().context("an added token without content")?;
        let id = place(a["id"].as_u64(), text)?;
        special[id] = a["special"].as_bool().unwrap_or(false);
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.with_context(|| format!("tokenizer.json has no token with id {i}")))
        .collect::<Result<Vec<_>>>()?;
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json has no BPE merges")?
        .iter()
        .map(|m| match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(p) if p.len() == 2 => Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .context("tokenizer.json has a malformed merge")?;
    Ok(BpeVocab { tokens, merges, special, byte_level: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::HfTokenizer;

    fn reload(tok: &Tokenizer) -> Tokenizer {
        let json = tok.to_hf_json().unwrap();
        Tokenizer::Hf { tokenizer: HfTokenizer::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap()) }
    }

    #[test]
    fn exported_tokenizers_encode_and_decode_as_ours() {
        let text = "Hello, world!  It's 2026:\n\n  naïve café, 12345 apples.    Indented\tline\n";
        let ascii = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
        let cases = [
            (Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 }, text),
            (Tokenizer::Tiktoken { name: OpenAiVocab::P50kBase }, text),
            (Tokenizer::Byte, text),
            (Tokenizer::char_from_corpus(ascii), ascii),
        ];
        for (ours, text) in cases {
            let theirs = reload(&ours);
            assert_eq!(theirs.vocab_size(), ours.vocab_size(), "{}", ours.kind());
            let ids = ours.encode(text).unwrap();
            assert_eq!(theirs.encode(text).unwrap(), ids, "{}", ours.kind());
            assert_eq!(theirs.decode(&ids), text, "{}", ours.kind());
        }
    }

    #[test]
    fn gpt2_merges_are_recovered_in_rank_order() {
        let v = Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 }.bpe_vocab().unwrap();
        // GPT-2's merges.txt: 50000 merges, the first "Ġ t".
        assert_eq!(v.merges.len(), 50000);
        assert_eq!(v.merges[0], ("Ġ".to_string(), "t".to_string()));
        assert_eq!(v.tokens[50256], "<|endoftext|>");
        assert!(v.special[50256] && !v.special[50255]);
        // An HF tokenizer's vocabulary reads back the same.
        let again = reload(&Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 }).bpe_vocab().unwrap();
        assert_eq!(again, v);
        assert!(Tokenizer::Tiktoken { name: OpenAiVocab::Cl100kBase }.bpe_vocab().is_err());
    }
}
