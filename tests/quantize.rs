//! `ferrite quantize` end to end: the quantized checkpoint is smaller, its
//! blocks are what quantizing at load time gives (`--dtype q8_0`), its
//! logits stay close to the f32 model's, and the inference commands load
//! it. Bad requests are one-line errors.

mod common;

use common::{fails, logits_and_greedy_as, native_checkpoint, ok, p, scratch};
use ferrite::checkpoint;
use ferrite::data::Tokenizer;
use ferrite::engine::DType;
use ferrite::model::ModelConfig;
use std::path::Path;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("model.safetensors")).unwrap().len()
}

#[test]
fn quantized_checkpoints_are_small_close_and_load_everywhere() {
    let dir = scratch("quantize");
    let corpus = "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20);
    let data = dir.join("input.txt");
    std::fs::write(&data, &corpus).unwrap();
    let tok = Tokenizer::char_from_corpus(&corpus);
    let cfg = ModelConfig::gpt2(tok.vocab_size(), 64, 2, 4, 256);
    let full = native_checkpoint(&dir.join("f32"), cfg, tok.clone(), 5, 1.0);
    let prompt = tok.encode("First Citizen:\nBefore").unwrap();
    let (want, _) = logits_and_greedy_as(&full, &prompt, 4, None);
    for (to, bits, min_cosine) in [("q8_0", 8.5, 0.9999), ("q4_0", 4.5, 0.99), ("q4_k", 4.5, 0.995)] {
        let q = dir.join(to);
        let said =
            String::from_utf8(common::ferrite(&["quantize", &p(&full), "--to", to, "--out", &p(&q)]).stderr).unwrap();
        assert!(said.contains("wrote") && said.contains("q8_0"), "{said}");
        // Matrices at `bits` a weight (the head at 8.5), vectors f32: about bits/32 of the f32 file.
        let ratio = size(&q) as f64 / size(&full) as f64;
        assert!(ratio < (bits + 2.0) / 32.0, "{to}: {ratio:.3} of the f32 size");
        let (got, _) = logits_and_greedy_as(&q, &prompt, 4, None);
        let c = cosine(&got, &want);
        assert!(c > min_cosine, "{to}: logits' cosine similarity {c}");
        // Quantizing while loading (`--dtype`) gives the same model, to the bit.
        let dtype: DType = to.parse().unwrap();
        let (at_load, _) = logits_and_greedy_as(&full, &prompt, 4, Some(dtype));
        assert_eq!(got, at_load, "{to}: the checkpoint's blocks are what loading with --dtype {to} makes");
        // The inference commands take it.
        ok(&["sample", "--checkpoint", &p(&q), "--max-new-tokens", "8", "--seed", "1"]);
        ok(&["eval", "--checkpoint", &p(&q), "--data", &p(&data), "--tokens", "500"]);
    }
    // A q8_0 head under q4_k unless told otherwise; a wider one on request.
    let wide = dir.join("q4_k-f16-head");
    ok(&["quantize", &p(&full), "--to", "q4_k", "--head", "f16", "--out", &p(&wide)]);
    assert!(checkpoint::load(&wide, false).unwrap().types().contains(&DType::F16));
    assert!(size(&wide) > size(&dir.join("q4_k")));
    // Bad requests.
    fails(&["quantize", &p(&full), "--to", "bf16", "--out", &p(&dir.join("x"))], "ferrite convert --dtype bf16");
    fails(&["quantize", &p(&full), "--to", "q3_k", "--out", &p(&dir.join("x"))], "unknown dtype");
    fails(&["quantize", &p(&full), "--to", "q8_0", "--out", &p(&dir.join("q8_0"))], "already exists");
    fails(
        &["export", &p(&dir.join("q8_0")), "--format", "hf", "--dtype", "q8_0", "--out", &p(&dir.join("x"))],
        "not q8_0",
    );
    // A checkpoint whose blocks were cut short.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "state.json"] {
        std::fs::copy(dir.join("q8_0").join(f), bad.join(f)).unwrap();
    }
    let bytes = std::fs::read(dir.join("q8_0/model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    fails(&["sample", "--checkpoint", &p(&bad), "--max-new-tokens", "2"], "not a valid safetensors file");
    assert!(!dir.join("x").exists());
}
