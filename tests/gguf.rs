//! GGUF export, against llama.cpp itself: the exported file runs in
//! llama.cpp (node-llama-cpp's prebuilt CPU binary, driven by
//! `scripts/test_llama_cpp.mjs`), which must tokenize the prompt as ferrite
//! does and pick the same tokens greedily; and the `gguf` Python package
//! (llama.cpp's reader) must list the keys and tensors llama.cpp expects.
//!
//! Needs node with node-llama-cpp (`FERRITE_NODE_MODULES`, default
//! `~/.cache/ferrite-node/node_modules`) and `python3 -m pip install gguf`;
//! `.ci/run` installs both. Without them those checks are skipped with a
//! note; the bad-input checks always run.

mod common;

use common::{fails, logits_and_greedy, native_checkpoint, ok, p, scratch};
use ferrite::checkpoint;
use ferrite::data::{OpenAiVocab, Tokenizer};
use ferrite::model::ModelConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

fn node_modules() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRITE_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ferrite-node/node_modules")))?;
    let found = dir.join("node-llama-cpp").is_dir() && Command::new("node").arg("--version").output().is_ok();
    found.then_some(dir)
}

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// llama.cpp's tokens for `prompt` and its `n` greedy tokens after it.
fn llama_cpp(modules: &Path, gguf: &Path, prompt: &str, n: usize) -> (Vec<u32>, Vec<u32>) {
    let out = Command::new("node")
        .args([&script("test_llama_cpp.mjs"), &p(gguf), prompt, &n.to_string()])
        .env("FERRITE_NODE_MODULES", modules)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "llama.cpp failed on {}: {}{stdout}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line");
    let v: Value = serde_json::from_str(line).unwrap();
    let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    (ids("prompt"), ids("greedy"))
}

/// The models checked: two imported from transformers' fixtures (a byte-level
/// BPE tokenizer.json; Llama with GQA, an untied head, bf16) and ferrite's own
/// GPT-2-style model with the GPT-2 tokenizer, weights scaled up so that
/// greedy choices are clear (random weights at GPT-2's scale give nearly
/// flat logits, where llama.cpp's and our summation orders may pick differently).
fn models(dir: &Path) -> Vec<(&'static str, PathBuf, &'static str, &'static str)> {
    let imported = |name: &str| {
        let ckpt = dir.join(name);
        ok(&["import", &p(&fixture(name)), "--out", &p(&ckpt)]);
        ckpt
    };
    let gpt2 = ModelConfig { bias: true, ..ModelConfig::gpt2(50257, 64, 2, 4, 64) };
    let tiktoken = Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 };
    vec![
        ("gpt2-fixture", imported("gpt2"), "f32", "First Citizen:\nBefore we"),
        ("llama-fixture", imported("llama"), "bf16", "First Citizen:\nBefore we"),
        ("gpt2-tiktoken", native_checkpoint(&dir.join("native"), gpt2, tiktoken, 7, 5.0), "f16", "Hello, my name is"),
    ]
}

#[test]
fn llama_cpp_runs_our_gguf_files_as_ferrite_does() {
    let dir = scratch("gguf");
    let modules = node_modules();
    let python_gguf = Command::new("python3").args(["-c", "import gguf"]).output().is_ok_and(|o| o.status.success());
    if modules.is_none() {
        eprintln!("note: node-llama-cpp not found (see tests/gguf.rs): llama.cpp checks skipped");
    }
    if !python_gguf {
        eprintln!("note: the gguf Python package is missing (pip install gguf): reader checks skipped");
    }
    for (name, ckpt, dtype, prompt) in models(&dir) {
        let file = dir.join(format!("{name}.gguf"));
        ok(&["export", &p(&ckpt), "--format", "gguf", "--dtype", dtype, "--out", &p(&file)]);
        let cfg = checkpoint::load_config(&ckpt).unwrap();
        let ids = cfg.tokenizer.encode(prompt).unwrap();
        if python_gguf {
            check_keys(&file, &cfg.model, dtype);
        }
        if let Some(modules) = &modules {
            let (their_prompt, their_greedy) = llama_cpp(modules, &file, prompt, 12);
            assert_eq!(their_prompt, ids, "{name}: llama.cpp tokenizes the prompt differently");
            let (_, ours) = logits_and_greedy(&ckpt, &ids, 12);
            assert_eq!(their_greedy, ours, "{name}: llama.cpp's greedy tokens differ from ferrite's");
        }
    }
}

/// The metadata llama.cpp reads, and the tensors, as the `gguf` package sees them.
fn check_keys(file: &Path, m: &ModelConfig, dtype: &str) {
    let out = Command::new("python3").args([&script("check_gguf.py"), &p(file)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arch = v["keys"]["general.architecture"].as_str().unwrap().to_string();
    let key = |k: &str| v["keys"][format!("{arch}.{k}")].clone();
    assert_eq!(key("context_length"), m.block_size);
    assert_eq!(key("embedding_length"), m.n_embd);
    assert_eq!(key("block_count"), m.n_layer);
    assert_eq!(key("feed_forward_length"), m.hidden());
    assert_eq!(key("attention.head_count"), m.n_head);
    assert_eq!(v["keys"]["tokenizer.ggml.model"], "gpt2");
    assert_eq!(v["keys"]["tokenizer.ggml.tokens"], m.vocab_size);
    assert_eq!(v["keys"]["tokenizer.ggml.token_type"], m.vocab_size);
    let tensors = v["tensors"].as_array().unwrap();
    let find = |n: &str| tensors.iter().find(|t| t["name"] == n).unwrap_or_else(|| panic!("no tensor {n}"));
    assert_eq!(find("token_embd.weight")["shape"], serde_json::json!([m.n_embd, m.vocab_size]));
    assert_eq!(find("token_embd.weight")["type"], dtype.to_uppercase());
    assert_eq!(find("output_norm.weight")["type"], "F32");
    let per_block = if arch == "llama" {
        assert_eq!(key("attention.head_count_kv"), m.kv_heads());
        assert_eq!(key("rope.dimension_count"), m.head_dim());
        assert_eq!(find("blk.0.attn_k.weight")["shape"], serde_json::json!([m.n_embd, m.kv_heads() * m.head_dim()]));
        9
    } else {
        assert_eq!(find("position_embd.weight")["shape"], serde_json::json!([m.n_embd, m.block_size]));
        12
    };
    let head = usize::from(!m.tie_embeddings);
    let wpe = usize::from(arch == "gpt2");
    let lnf = 1 + usize::from(arch == "gpt2");
    assert_eq!(tensors.len(), 1 + wpe + per_block * m.n_layer + lnf + head, "{arch}: tensor count");
}

#[test]
fn what_llama_cpp_cannot_read_is_refused() {
    let dir = scratch("gguf-bad");
    let out = dir.join("x.gguf");
    let chars = native_checkpoint(
        &dir.join("chars"),
        ModelConfig::gpt2(3, 16, 1, 2, 16),
        Tokenizer::char_from_corpus("abc"),
        1,
        1.0,
    );
    fails(&["export", &p(&chars), "--format", "gguf", "--out", &p(&out)], "no end-of-text token");
    let softcap = native_checkpoint(
        &dir.join("softcap"),
        ModelConfig { logit_softcap: Some(30.0), ..ModelConfig::gpt2(50257, 16, 1, 2, 16) },
        Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 },
        1,
        1.0,
    );
    fails(&["export", &p(&softcap), "--format", "gguf", "--out", &p(&out)], "logit_softcap");
    // A tokenizer.json that splits text otherwise than GPT-2 (here: no regex) would tokenize differently in llama.cpp.
    let mut tok: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gpt2").join("tokenizer.json")).unwrap()).unwrap();
    tok["pre_tokenizer"]["use_regex"] = Value::Bool(false);
    let file = dir.join("tokenizer.json");
    std::fs::write(&file, tok.to_string()).unwrap();
    let other = native_checkpoint(
        &dir.join("other-split"),
        ModelConfig::gpt2(320, 16, 1, 2, 16),
        Tokenizer::from_spec(&p(&file), None).unwrap(),
        1,
        1.0,
    );
    fails(&["export", &p(&other), "--format", "gguf", "--out", &p(&out)], "only GPT-2-style tokenizers");
    assert!(!out.exists(), "nothing is written on failure");
}
