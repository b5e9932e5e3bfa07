//! Fuzzing on stable Rust: seeded random inputs and mutations of valid ones
//! against the parsers and round trips, each case under `catch_unwind`. A
//! case may be rejected with an error; it must never panic (nor give a
//! wrong round trip). `cargo test` runs a few hundred cases per target;
//! `scripts/fuzz.sh` runs millions (`FERRITE_FUZZ_CASES`), and RELIABILITY.md
//! records the last long run.

mod common;

use common::scratch;
use ferrite::checkpoint::{load_config, tensors};
use ferrite::data::prepare::{read_documents, Format, InstructionTemplate, SourceOptions};
use ferrite::data::{HfTokenizer, OpenAiVocab, Tokenizer};
use ferrite::model::params::param_specs;
use ferrite::model::ModelConfig;
use ferrite::train::config::{preset, resolve};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn cases(default: u64) -> u64 {
    std::env::var("FERRITE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `case(rng)` `n` times; panics (with the seed of the first failing
/// case, so it can be replayed) if any case panicked.
fn fuzz(name: &str, n: u64, mut case: impl FnMut(&mut ChaCha8Rng)) {
    let mut panics = Vec::new();
    for seed in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        if catch_unwind(AssertUnwindSafe(|| case(&mut rng))).is_err() {
            panics.push(seed);
        }
    }
    eprintln!("fuzz {name}: {n} cases, {} panics", panics.len());
    assert!(panics.is_empty(), "{name}: {} of {n} cases panicked, first seed {}", panics.len(), panics[0]);
}

/// Random text: ASCII, whitespace runs, digits, punctuation, accents,
/// CJK, emoji, control characters and the specials' spellings.
fn random_text(rng: &mut ChaCha8Rng, max: usize) -> String {
    const PIECES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "'s",
        "'ll",
        "123",
        "4567",
        "a",
        "the",
        "The",
        "é",
        "ß",
        "ﬁ",
        "中文",
        "🦀",
        "👍🏽",
        "\u{0}",
        "\u{7f}",
        "\u{200b}",
        "<|endoftext|>",
        "<|user|>",
        "!!",
        "...",
        "—",
        "ｱ",
        "\u{fffd}",
    ];
    let n = (rng.next_u64() % max as u64) as usize;
    let mut s = String::new();
    for _ in 0..n {
        match rng.next_u64() % 4 {
            0 => s.push_str(PIECES[(rng.next_u64() % PIECES.len() as u64) as usize]),
            1 => s.push((b' ' + (rng.next_u64() % 95) as u8) as char),
            2 => s.push(char::from_u32((rng.next_u64() % 0x3000) as u32).unwrap_or('x')),
            _ => s.push(char::from_u32((rng.next_u64() % 0x10ffff) as u32).unwrap_or('y')),
        }
    }
    s
}

/// A valid input with random damage: flipped, dropped, repeated or
/// inserted bytes, or a cut.
fn mutate(rng: &mut ChaCha8Rng, valid: &[u8]) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..1 + rng.next_u64() % 4 {
        if b.is_empty() {
            b.push(rng.next_u64() as u8);
            continue;
        }
        let i = (rng.next_u64() % b.len() as u64) as usize;
        match rng.next_u64() % 6 {
            0 => b[i] ^= 1 << (rng.next_u64() % 8),
            1 => b[i] = rng.next_u64() as u8,
            2 => {
                b.remove(i);
            }
            3 => b.insert(i, rng.next_u64() as u8),
            4 => b.truncate(i),
            _ => {
                let j = (i + (rng.next_u64() % 16) as usize).min(b.len());
                let piece = b[i..j].to_vec();
                b.splice(i..i, piece);
            }
        }
    }
    b
}

#[test]
fn tokenizers_round_trip_any_text() {
    let corpus: Vec<String> = (0..200).map(|i| random_text(&mut ChaCha8Rng::seed_from_u64(i), 60)).collect();
    let bpe = HfTokenizer::train_bpe(400, corpus.iter().map(String::as_str)).unwrap();
    let tokenizers = [
        Tokenizer::Byte,
        Tokenizer::Tiktoken { name: OpenAiVocab::from_name("gpt2").unwrap() },
        Tokenizer::Tiktoken { name: OpenAiVocab::from_name("cl100k_base").unwrap() },
        Tokenizer::Tiktoken { name: OpenAiVocab::from_name("o200k_base").unwrap() },
        Tokenizer::Hf { tokenizer: bpe },
    ];
    let n = cases(300);
    for tok in &tokenizers {
        fuzz(&format!("round trip {}", tok.kind()), n, |rng| {
            let text = random_text(rng, 80);
            let ids = tok.encode(&text).unwrap();
            assert!(ids.iter().all(|&t| (t as usize) < tok.vocab_size()));
            assert_eq!(tok.decode(&ids), text);
        });
    }
    // Any bytes through the byte tokenizer; the char tokenizer on its own alphabet.
    fuzz("round trip byte (any bytes)", n, |rng| {
        let bytes: Vec<u8> = (0..rng.next_u64() % 100).map(|_| rng.next_u64() as u8).collect();
        let ids = Tokenizer::Byte.encode_bytes(&bytes).unwrap();
        assert_eq!(Tokenizer::Byte.decode_bytes(&ids), bytes);
    });
    fuzz("round trip char", n, |rng| {
        let alphabet = random_text(rng, 40) + "x";
        let tok = Tokenizer::char_from_corpus(&alphabet);
        let chars: Vec<char> = alphabet.chars().collect();
        let text: String =
            (0..rng.next_u64() % 50).map(|_| chars[(rng.next_u64() % chars.len() as u64) as usize]).collect();
        assert_eq!(tok.decode(&tok.encode(&text).unwrap()), text);
        let _ = tok.encode(&random_text(rng, 20));
    });
    // Arbitrary bytes to the UTF-8 tokenizers: an error, never a panic.
    fuzz("encode arbitrary bytes", n, |rng| {
        let bytes: Vec<u8> = (0..rng.next_u64() % 100).map(|_| rng.next_u64() as u8).collect();
        for tok in &tokenizers {
            let _ = tok.encode_bytes(&bytes);
        }
    });
}

/// A small model's checkpoint files, written by the real code.
fn checkpoint_files(dir: &Path) -> (PathBuf, PathBuf, ModelConfig) {
    let cfg = ModelConfig::gpt2(7, 8, 1, 2, 8);
    let specs = param_specs(&cfg);
    let data: Vec<Vec<f32>> = specs.iter().map(|s| (0..s.numel()).map(|i| i as f32 * 0.01).collect()).collect();
    let named: Vec<(String, Vec<usize>, &[f32])> =
        specs.iter().zip(&data).map(|(s, d)| (s.name.clone(), s.shape.clone(), &d[..])).collect();
    let weights = dir.join("model.safetensors");
    tensors::save_safetensors(&weights, &named).unwrap();
    let config = serde_json::json!({
        "format": "ferrite-checkpoint", "version": 1, "model": cfg,
        "tokenizer": Tokenizer::char_from_corpus("abcdefg"), "train": {"batch_size": 2, "seed": 1},
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    (weights, config_path, cfg)
}

#[test]
fn checkpoint_loaders_reject_damage_without_panicking() {
    let dir = scratch("checkpoint");
    let (weights, config_path, cfg) = checkpoint_files(&dir);
    let (valid_weights, valid_config) = (std::fs::read(&weights).unwrap(), std::fs::read(&config_path).unwrap());
    let specs = param_specs(&cfg);
    assert!(tensors::take_params(&specs, tensors::load_safetensors(&weights).unwrap(), "", &weights).is_ok());
    let n = cases(300);
    let damaged = dir.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    fuzz("safetensors", n, |rng| {
        let f = damaged.join("model.safetensors");
        std::fs::write(&f, mutate(rng, &valid_weights)).unwrap();
        if let Ok(t) = tensors::load_safetensors(&f) {
            let _ = tensors::take_params(&specs, t, "", &f);
        }
    });
    fuzz("config.json", n, |rng| {
        std::fs::write(damaged.join("config.json"), mutate(rng, &valid_config)).unwrap();
        let _ = load_config(&damaged);
    });
}

#[test]
fn configuration_rejects_bad_keys_and_values_without_panicking() {
    let base = preset("shakespeare-char-cpu").unwrap();
    let keys: Vec<String> = base.to_keys().into_iter().map(|(k, _)| k).collect();
    let values =
        ["0", "-1", "1e309", "nan", "inf", "none", "true", "3.5", "18446744073709551616", "", "rope", "50K", "1B"];
    let n = cases(300);
    fuzz("--key value", n, |rng| {
        let mut overrides = Vec::new();
        for _ in 0..1 + rng.next_u64() % 3 {
            let key = keys[(rng.next_u64() % keys.len() as u64) as usize].clone();
            let value = if rng.next_u64() % 3 == 0 {
                random_text(rng, 8)
            } else {
                values[(rng.next_u64() % values.len() as u64) as usize].to_string()
            };
            overrides.push((key, value));
        }
        if let Ok(cfg) = resolve(&base, None, &overrides) {
            // What resolves is usable: its model validates and sizes compute.
            let m = cfg.model_for_vocab(65);
            m.validate().unwrap();
            let _ = m.num_params();
        }
    });
    let dir = scratch("toml");
    let file = dir.join("run.toml");
    let valid =
        b"n_layer = 2\nn_embd = 64\nlearning_rate = 3e-4\nschedule = \"wsd\"\npos = \"rope\"\ntokens = \"1M\"\n";
    fuzz("TOML", n, |rng| {
        std::fs::write(&file, mutate(rng, valid)).unwrap();
        let _ = resolve(&base, Some(&file), &[]);
    });
}

#[test]
fn data_readers_reject_damage_without_panicking() {
    let dir = scratch("readers");
    let jsonl = b"{\"text\": \"the king\"}\n{\"text\": \"shall speak\", \"n\": 1}\n".to_vec();
    let dolly = br#"{"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "open_qa"}
{"instruction": "Sum", "context": "1 and 2", "response": "3", "category": "x"}
"#
    .to_vec();
    let chat = br#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
"#
    .to_vec();
    let text = b"First paragraph.\n\nSecond one,\nwith two lines.\n".to_vec();
    let n = cases(200);
    let opts = |format| SourceOptions {
        format,
        field: "text".into(),
        column: "text".into(),
        template: InstructionTemplate::default(),
        chat: ferrite::data::ChatTemplate::special(),
    };
    let pq = dir.join("valid.parquet");
    let docs: Vec<String> = (0..20).map(|i| format!("document {i}: the king shall speak")).collect();
    common::write_parquet(&pq, &docs);
    let parquet = std::fs::read(&pq).unwrap();
    for (name, valid, format, ext) in [
        ("parquet", &parquet, Format::Parquet, "parquet"),
        ("jsonl", &jsonl, Format::Jsonl, "jsonl"),
        ("dolly", &dolly, Format::Dolly, "jsonl"),
        ("chat", &chat, Format::Chat, "jsonl"),
        ("lines", &text, Format::Lines, "txt"),
        ("paragraphs", &text, Format::Paragraphs, "txt"),
        ("text", &text, Format::Text, "txt"),
    ] {
        let file = dir.join(format!("input.{ext}"));
        let o = opts(format);
        fuzz(&format!("reader {name}"), n, |rng| {
            std::fs::write(&file, mutate(rng, valid)).unwrap();
            let _ = read_documents(&file, &o, 1 << 10, &mut |_, _| Ok(()));
        });
    }
}
