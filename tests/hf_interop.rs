//! Hugging Face interop, against the real other side:
//! - import: `tests/fixtures/hf/{gpt2,llama}` were written by transformers
//!   (`scripts/make_hf_fixture.py`) with the logits and greedy tokens it
//!   computes; ferrite imports each and must agree.
//! - export: ferrite's own models exported as HF directories; what
//!   transformers computes with them is recorded by
//!   `scripts/check_hf_export.py` in `tests/fixtures/hf_export.json`,
//!   with the hashes of the files it checked. The export must still write
//!   exactly those files (else the script must be run again, with
//!   transformers, to re-verify) and ferrite must match the logits.
//! - round trip: import, export, and the HF tensors come back unchanged.
//! - bad input: one-line errors, nothing written.

mod common;

use common::{assert_close, fails, logits_and_greedy, native_checkpoint, ok, p, scratch};
use ferrite::checkpoint;
use ferrite::data::{OpenAiVocab, Tokenizer};
use ferrite::engine::DType;
use ferrite::model::config::{MlpKind, NormKind, PosEncoding};
use ferrite::model::ModelConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

#[test]
fn imported_models_match_transformers() {
    let dir = scratch("hf-import");
    for name in ["gpt2", "llama"] {
        let ckpt = dir.join(name);
        ok(&["import", &p(&fixture(name)), "--out", &p(&ckpt)]);
        let reference = read_json(&fixture(name).join("reference.json"));
        let prompt = ids(&reference["ids"]);
        // Our tokenizer (the imported tokenizer.json) encodes the prompt as transformers did.
        let cfg = checkpoint::load_config(&ckpt).unwrap();
        assert_eq!(cfg.tokenizer.encode(reference["prompt"].as_str().unwrap()).unwrap(), prompt, "{name}");
        let greedy = ids(&reference["greedy"]);
        let (logits, ours) = logits_and_greedy(&ckpt, &prompt, greedy.len());
        assert_close(name, &logits, &floats(&reference["logits"]), 1e-4);
        assert_eq!(ours, greedy, "{name}: greedy continuation");
    }
    // The Llama fixture is stored in bf16, and so is its checkpoint.
    let (_, stored) = checkpoint::tensors::load_safetensors_typed(&dir.join("llama/model.safetensors")).unwrap();
    assert_eq!(stored, DType::BF16);
}

#[test]
fn import_then_export_gives_back_the_same_tensors() {
    let dir = scratch("hf-roundtrip");
    for name in ["gpt2", "llama"] {
        let (ckpt, out) = (dir.join(name), dir.join(format!("{name}-hf")));
        ok(&["import", &p(&fixture(name)), "--out", &p(&ckpt)]);
        ok(&["export", &p(&ckpt), "--format", "hf", "--out", &p(&out)]);
        let original = hf_tensors(&fixture(name));
        let again = hf_tensors(&out);
        let mut names: Vec<&String> = original.keys().collect();
        names.sort();
        let mut names_again: Vec<&String> = again.keys().collect();
        names_again.sort();
        assert_eq!(names, names_again, "{name}: tensor names");
        for n in names {
            assert_eq!(original[n], again[n], "{name}: {n}");
        }
        // A bare relative name works too (its parent is the working directory).
        let rel = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["export", &p(&ckpt), "--format", "gguf", "--out", "here.gguf"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(rel.status.success() && dir.join("here.gguf").is_file(), "{}", String::from_utf8_lossy(&rel.stderr));
        std::fs::remove_file(dir.join("here.gguf")).unwrap();
        let again_dir = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["export", &p(&ckpt), "--format", "hf", "--out", "here"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(again_dir.status.success(), "{}", String::from_utf8_lossy(&again_dir.stderr));
        std::fs::remove_dir_all(dir.join("here")).unwrap();
        let (c1, c2) = (read_json(&fixture(name).join("config.json")), read_json(&out.join("config.json")));
        for key in ["architectures", "vocab_size", "num_key_value_heads", "rope_parameters", "rms_norm_eps", "n_embd"] {
            assert_eq!(c1[key], c2[key], "{name}: {key}");
        }
    }
}

/// Every tensor of an HF directory (one file or shards), as (shape, f32 values).
fn hf_tensors(dir: &Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut all = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            all.extend(checkpoint::tensors::load_safetensors(&path).unwrap());
        }
    }
    all
}

fn native(dir: &Path, model: ModelConfig, tokenizer: Tokenizer, seed: u64) -> PathBuf {
    native_checkpoint(dir, model, tokenizer, seed, 1.0)
}

/// Ferrite's own models of each exportable kind: (name, checkpoint, prompt).
pub fn native_models(dir: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    let gpt2 = ModelConfig { mlp: MlpKind::Gelu, ..ModelConfig::gpt2(50257, 32, 2, 4, 32) };
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
    let llama = ModelConfig {
        n_kv_head: Some(2),
        pos: PosEncoding::Rope,
        rope_base: 500.0,
        norm: NormKind::RmsNorm,
        mlp: MlpKind::Swiglu,
        tie_embeddings: false,
        ..ModelConfig::gpt2(0, 32, 2, 4, 32)
    };
    let chars = Tokenizer::char_from_corpus(text);
    let llama = ModelConfig { vocab_size: chars.vocab_size(), padded_vocab: 64, ..llama };
    let bytes = ModelConfig { bias: true, tie_embeddings: false, ..ModelConfig::gpt2(256, 32, 2, 2, 16) };
    vec![
        (
            "gpt2-tiktoken",
            native(&dir.join("gpt2-tiktoken"), gpt2, Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 }, 1),
            "Hello, my name is",
        ),
        ("llama-char", native(&dir.join("llama-char"), llama, chars, 2), "First Citizen:\nBefore"),
        ("gpt2-byte", native(&dir.join("gpt2-byte"), bytes, Tokenizer::Byte, 3), "naïve café"),
    ]
}

#[test]
fn exported_models_match_what_transformers_computed() {
    // FERRITE_HF_EXPORT_DIR: scripts/check_hf_export.py collects the exports there.
    let keep = std::env::var_os("FERRITE_HF_EXPORT_DIR").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| scratch("hf-export"));
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_export.json");
    let verified = keep.is_none().then(|| read_json(&record));
    for (name, ckpt, prompt) in native_models(&dir.join("ckpt")) {
        let out = dir.join(name);
        let _ = std::fs::remove_dir_all(&out);
        ok(&["export", &p(&ckpt), "--format", "hf", "--out", &p(&out)]);
        let cfg = checkpoint::load_config(&ckpt).unwrap();
        let prompt_ids = cfg.tokenizer.encode(prompt).unwrap();
        let (logits, _) = logits_and_greedy(&ckpt, &prompt_ids, 1);
        let v = cfg.model.vocab_size;
        // The first 64 logits of each position (the whole rows are large).
        let head: Vec<Vec<f32>> = logits.chunks_exact(v).map(|r| r[..64.min(v)].to_vec()).collect();
        let hashes = common::file_hashes(&out);
        match &verified {
            None => {
                let mine =
                    serde_json::json!({"prompt": prompt, "ids": prompt_ids, "ferrite_logits": head, "files": hashes});
                std::fs::write(out.join("ferrite.json"), mine.to_string()).unwrap();
            }
            Some(v) => {
                let want = &v[name];
                assert_eq!(
                    want["files"],
                    serde_json::json!(hashes),
                    "{name}: the HF export changed since transformers checked it: run scripts/check_hf_export.py"
                );
                assert_eq!(
                    ids(&want["ids"]),
                    prompt_ids,
                    "{name}: transformers' tokenizer encoded the prompt differently"
                );
                assert_close(name, &head.concat(), &floats(&want["transformers_logits"]), 1e-4);
            }
        }
    }
}

#[test]
fn bad_hugging_face_directories_are_one_line_errors() {
    let dir = scratch("hf-bad");
    let copy = |name: &str, from: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(fixture(from)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let out = dir.join("out");
    let import = |src: &Path, needle: &str| {
        fails(&["import", &p(src), "--out", &p(&out)], needle);
        assert!(!out.exists(), "nothing is written on failure");
    };
    // No config.json.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    import(&empty, "no config.json");
    // An architecture we do not read.
    let d = copy("bert", "gpt2");
    let mut c = read_json(&d.join("config.json"));
    c["architectures"] = serde_json::json!(["BertForMaskedLM"]);
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    import(&d, "BertForMaskedLM is not supported");
    // An option we cannot express.
    let d = copy("scaling", "llama");
    let mut c = read_json(&d.join("config.json"));
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    import(&d, "rope_scaling");
    let mut c = read_json(&d.join("config.json"));
    c.as_object_mut().unwrap().remove("rope_scaling");
    c["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0});
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    import(&d, "llama3");
    // A misshapen tensor: the config says wider than the weights.
    let d = copy("shape", "gpt2");
    let mut c = read_json(&d.join("config.json"));
    c["n_positions"] = serde_json::json!(128);
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    import(&d, "has shape");
    // A missing tensor: a config with one layer more than the weights.
    let d = copy("missing", "gpt2");
    let mut c = read_json(&d.join("config.json"));
    c["n_layer"] = serde_json::json!(3);
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    import(&d, "missing tensor transformer.h.2");
    // A truncated shard.
    let d = copy("truncated", "llama");
    let shard = d.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    import(&d, "not a valid safetensors file");
    // A tokenizer.json that does not load.
    let d = copy("tokenizer", "gpt2");
    std::fs::write(d.join("tokenizer.json"), "{\"model\": 7}").unwrap();
    import(&d, "not a valid tokenizer.json");
    // A vocabulary with a gap in its ids.
    let gap = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"a":0,"c":2},"unk_token":"a"}}"#;
    std::fs::write(d.join("tokenizer.json"), gap).unwrap();
    import(&d, "without gaps");
    // Exports that neither class can express.
    let ckpt = native(
        &dir.join("softcap"),
        ModelConfig { logit_softcap: Some(30.0), ..ModelConfig::gpt2(256, 16, 1, 2, 16) },
        Tokenizer::Byte,
        1,
    );
    fails(&["export", &p(&ckpt), "--format", "hf", "--out", &p(&out)], "logit_softcap has no counterpart");
    assert!(!out.exists());
}

#[test]
fn an_imported_model_fine_tunes_with_init_from() {
    let dir = scratch("hf-finetune");
    let (base, run) = (dir.join("base"), dir.join("run"));
    ok(&["import", &p(&fixture("gpt2")), "--out", &p(&base)]);
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--init-from", base.to_str().unwrap(), "--out-dir", run.to_str().unwrap()];
        args.extend(["--max-iters", "40", "--batch-size", "8", "--eval-interval", "40", "--eval-iters", "10"]);
        args.extend(["--learning-rate", "3e-3", "--warmup-iters", "5", "--sample-tokens", "0"]);
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = train(&["--block-size", "32"]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let loss = |step: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(&format!("step {step}:"))).unwrap_or_else(|| panic!("{out}"));
        line.split("val loss ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap()
    };
    assert!(loss("40") < loss("0") - 1.0, "the loss falls: {out}");
    let saved = checkpoint::load_config(&run.join("best")).unwrap();
    assert_eq!(saved.model.block_size, 32);
    assert_eq!(saved.tokenizer, checkpoint::load_config(&base).unwrap().tokenizer);
    // The architecture is the checkpoint's.
    let bad = train(&["--n-layer", "3"]);
    fails(&bad.iter().map(String::as_str).collect::<Vec<_>>(), "n_layer is 2 there, not 3");
    let long = train(&["--block-size", "128"]);
    fails(&long.iter().map(String::as_str).collect::<Vec<_>>(), "longer than the context 64");
    let tok = train(&["--tokenizer", "byte"]);
    fails(&tok.iter().map(String::as_str).collect::<Vec<_>>(), "--tokenizer cannot be combined with --init-from");
    fails(&["train", "--resume", &p(&run), "--init-from", &p(&base)], "cannot be combined with --resume");
}

#[test]
fn openai_gpt2_layout_and_vocabulary_are_recognised() {
    let dir = scratch("hf-openai-layout");
    // openai-community/gpt2 names the base model's tensors without
    // `transformer.` and keeps each layer's causal mask (`h.N.attn.bias`).
    let src = dir.join("gpt2-style");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("gpt2").join(f), src.join(f)).unwrap();
    }
    let tensors = hf_tensors(&fixture("gpt2"));
    let mut renamed: Vec<(String, Vec<usize>, Vec<f32>)> =
        tensors.into_iter().map(|(k, (s, d))| (k.trim_start_matches("transformer.").to_string(), s, d)).collect();
    for l in 0..2 {
        renamed.push((format!("h.{l}.attn.bias"), vec![1, 1, 64, 64], vec![1.0; 64 * 64]));
    }
    let views: Vec<(String, Vec<usize>, &[f32])> =
        renamed.iter().map(|(n, s, d)| (n.clone(), s.clone(), &d[..])).collect();
    checkpoint::tensors::save_safetensors(&src.join("model.safetensors"), &views).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["import", &p(&src), "--out", &p(&a)]);
    ok(&["import", &p(&fixture("gpt2")), "--out", &p(&b)]);
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b));

    // GPT-2's own tokenizer.json becomes our built-in gpt2 vocabulary.
    let models = native_models(&dir.join("native"));
    let (_, ckpt, _) = &models[0];
    let (hf, back) = (dir.join("hf"), dir.join("back"));
    ok(&["export", &p(ckpt), "--format", "hf", "--out", &p(&hf)]);
    ok(&["import", &p(&hf), "--out", &p(&back)]);
    let cfg = checkpoint::load_config(&back).unwrap();
    assert_eq!(cfg.tokenizer, Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 });
    // GPT2LMHeadModel always has biases: a bias-free model comes back with zero ones, computing the same.
    assert_eq!(cfg.model, ModelConfig { bias: true, ..checkpoint::load_config(ckpt).unwrap().model });
    let prompt = cfg.tokenizer.encode("Hello there").unwrap();
    assert_eq!(logits_and_greedy(&back, &prompt, 4), logits_and_greedy(ckpt, &prompt, 4));
}

#[test]
fn imported_models_work_in_every_inference_command() {
    let dir = scratch("hf-commands");
    let ckpt = dir.join("llama");
    ok(&["import", &p(&fixture("llama")), "--out", &p(&ckpt)]);
    let text = dir.join("eval.txt");
    std::fs::write(&text, "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20)).unwrap();
    let c = p(&ckpt);
    let sampled =
        ok(&["sample", "--checkpoint", &c, "--prompt", "First", "--max-new-tokens", "8", "--temperature", "0"]);
    assert!(!sampled.trim().is_empty());
    let eval = ok(&["eval", "--checkpoint", &c, "--data", &p(&text), "--split", "all", "--json"]);
    assert!(common::json(&eval)["metrics"]["loss"].as_f64().unwrap().is_finite(), "{eval}");
    let bench = ok(&["bench", "--init-from", &c, "--batch-size", "2", "--max-iters", "2", "--json"]);
    // bench times the checkpoint's architecture, vocabulary included.
    let bench = common::json(&bench);
    let imported = checkpoint::load_config(&ckpt).unwrap().model;
    assert_eq!(bench["params"].as_u64().unwrap() as usize, imported.num_params(), "{bench}");
    assert!(bench["tokens_per_s"].as_f64().unwrap() > 0.0);
    // chat reads the conversation from stdin.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["chat", "--checkpoint", &c, "--max-new-tokens", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"Hello there\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
