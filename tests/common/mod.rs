//! Helpers shared by the end-to-end tests: run the `ferrite` binary, expect
//! success or a one-line error, scratch directories.
#![allow(dead_code)]

use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

pub fn ferrite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        // Never touch the user's cache from a test.
        .env("XDG_CACHE_HOME", scratch("cache"))
        .output()
        .expect("ferrite runs")
}

pub fn ok(args: &[&str]) -> String {
    let out = ferrite(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferrite {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a command that must fail with a one-line `error:` message (the last
/// line of stderr, after any progress notes) containing `needle`, and no panic.
pub fn fails(args: &[&str], needle: &str) {
    let out = ferrite(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "ferrite {args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "ferrite {args:?} panicked: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "ferrite {args:?}: expected one line of error, got: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "ferrite {args:?}: the error must be the last line: {stderr}");
    assert!(errors[0].starts_with("error"), "{stderr}");
    assert!(errors[0].contains(needle), "ferrite {args:?}: error lacks {needle:?}: {stderr}");
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrite-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn p(path: &Path) -> String {
    path.display().to_string()
}

pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Like [`ferrite`] with extra environment variables.
pub fn ferrite_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("ferrite runs")
}

/// A parquet file of `docs` in a `text` column (two row groups, one null
/// row each) beside an `id` column.
pub fn write_parquet(path: &Path, docs: &[String]) {
    let schema =
        Arc::new(parse_message_type("message doc { OPTIONAL BYTE_ARRAY text (UTF8); REQUIRED INT32 id; }").unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).unwrap();
    // Two row groups, so reading crosses a group boundary.
    for chunk in docs.chunks(docs.len().div_ceil(2)) {
        let mut rg = writer.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = chunk.iter().map(|d| ByteArray::from(d.as_str())).collect();
        let mut defs = vec![1i16; chunk.len()];
        defs.push(0); // one null row
        col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i32> = (0..=chunk.len() as i32).collect();
        col.typed::<Int32Type>().write_batch(&ids, None, None).unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Ferrite's logits at every position of `prompt` (f32 weights and cache),
/// and `n` greedily chosen tokens after it.
pub fn logits_and_greedy(ckpt: &Path, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    logits_and_greedy_as(ckpt, prompt, n, Some(ferrite::engine::DType::F32))
}

/// [`logits_and_greedy`] with the weights in `weights` (none: as stored).
pub fn logits_and_greedy_as(
    ckpt: &Path,
    prompt: &[u32],
    n: usize,
    weights: Option<ferrite::engine::DType>,
) -> (Vec<f32>, Vec<u32>) {
    let loaded = ferrite::checkpoint::load_model_as(ferrite::engine::cpu::Cpu, ckpt, weights).unwrap();
    let model = loaded.model;
    let mut cache = ferrite::model::decode::KvCache::new(&model, 1).unwrap();
    let rows = cache.forward_from(&model, 0, prompt, 0).unwrap();
    let argmax = |l: &[f32]| l.iter().enumerate().fold(0, |b, (i, &x)| if x > l[b] { i } else { b }) as u32;
    let mut greedy = vec![argmax(rows.last().unwrap())];
    while greedy.len() < n {
        let next = cache.forward(&model, 0, &[*greedy.last().unwrap()]).unwrap();
        greedy.push(argmax(&next));
    }
    (rows.concat(), greedy)
}

/// A ferrite inference checkpoint at `dir` with freshly initialised weights
/// (from `seed`), each multiplied by `scale`.
pub fn native_checkpoint(
    dir: &Path,
    model: ferrite::model::ModelConfig,
    tokenizer: ferrite::data::Tokenizer,
    seed: u64,
    scale: f32,
) -> PathBuf {
    use ferrite::checkpoint::{self, CheckpointConfig, TrainState};
    let config = CheckpointConfig {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::VERSION,
        model,
        tokenizer,
        train: Default::default(),
        chat_template: None,
        adapter: None,
    };
    let specs = ferrite::model::params::Layout::new(&config.model).specs;
    let mut params = ferrite::model::params::init_params(&specs, seed);
    for p in params.iter_mut().flatten() {
        *p *= scale;
    }
    let state = TrainState { step: 0, best_val_loss: None, tokens_seen: 0, updates: Some(0) };
    let (none, types) = (vec![None; params.len()], checkpoint::param_types(&config.model, ferrite::engine::DType::F32));
    checkpoint::save_inference(dir, &config, (&params, &none), &types, &state).unwrap();
    dir.to_path_buf()
}

/// Asserts `got` ≈ `want` (the reference: PyTorch, transformers) elementwise:
/// |d| <= rtol * (|want| + max|want|).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * (w.abs() + scale);
        assert!((g - w).abs() <= tol, "{what}[{i}]: ferrite {g} vs reference {w} (tol {tol})");
    }
}

/// SHA-256 of each file of a directory, by name.
pub fn file_hashes(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.file_name().unwrap() != "ferrite.json")
        .map(|f| {
            let digest = Sha256::digest(std::fs::read(&f).unwrap());
            (f.file_name().unwrap().to_string_lossy().to_string(), digest.iter().map(|b| format!("{b:02x}")).collect())
        })
        .collect()
}
