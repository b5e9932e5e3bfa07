//! Whole-model parity with PyTorch: the fixtures in `tests/fixtures/` were
//! written by `scripts/make_parity_fixture.py` (our PyTorch reference model
//! in float64). This test runs ferrite on the same weights and batch and
//! checks logits, loss, every gradient, the gradient norm, and the
//! parameters after two clipped AdamW steps; and, for mixed precision
//! (`Gpt::compute = BF16`), logits, loss and gradients against PyTorch's
//! bf16 autocast of the same float32 model, within bf16 tolerance.

mod common;

use common::assert_close;
use ferrite::engine::cpu::Cpu;
use ferrite::engine::{Backend, DType, Dropout};
use ferrite::model::params::Layout;
use ferrite::model::{Activations, Gpt, ModelConfig, Recompute};
use ferrite::train::optimizer::{AdamW, Hyper};
use safetensors::SafeTensors;
use serde_json::Value;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Fixture { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid fixture")
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
    fn u32s(&self, name: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    }
    fn meta(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        meta.metadata().as_ref().unwrap()[key].clone()
    }
}

/// Parameters after AdamW updates: to 0.1% of one update. (The fixtures use
/// eps = 1e-6 so that gradients that are zero up to rounding do not become
/// full-size updates of random sign; see the fixture script.)
fn assert_params_close(what: &str, got: &[f32], want: &[f32], lr: f32) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs() + 1e-3 * lr;
        assert!((g - w).abs() <= tol, "{what}[{i}]: ferrite {g} vs pytorch {w} (tol {tol})");
    }
}

fn run(fixture: &str) {
    let fx = Fixture::open(fixture);
    let c: Value = serde_json::from_str(&fx.meta("config")).unwrap();
    let num = |k: &str| c[k].as_f64().unwrap();
    // The fixture's config holds ferrite's ModelConfig fields (and the batch
    // and optimizer settings, which ModelConfig ignores).
    let cfg: ModelConfig = serde_json::from_value(c.clone()).expect("model config in the fixture");
    cfg.validate().unwrap();
    let (b, t) = (num("B") as usize, num("T") as usize);
    let layout = Layout::new(&cfg);
    let names: Vec<String> = layout.specs.iter().map(|s| s.name.clone()).collect();
    let params: Vec<Vec<f32>> = names.iter().map(|n| fx.f32s(&format!("param.{n}"))).collect();
    let mut model = Gpt::from_host(Cpu, cfg.clone(), &params).unwrap();
    let (x, y) = (fx.u32s("inputs"), fx.u32s("targets"));
    let mut acts = model.activations(b, t, Recompute::None).unwrap();

    // Forward: logits of the real vocabulary (padding columns are never
    // computed: nothing reads them) and loss.
    let loss = model.forward(&mut acts, &x, Some(&y), None, Dropout::OFF).unwrap().unwrap();
    let (v, pv) = (cfg.vocab_size, cfg.padded_vocab);
    let real = |l: &[f32]| l.chunks_exact(pv).flat_map(|row| row[..v].to_vec()).collect::<Vec<f32>>();
    assert_close("logits", &real(&model.be.to_host(&acts.logits).unwrap()), &real(&fx.f32s("logits")), 1e-5);
    let want_loss = fx.f32s("loss")[0];
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs {want_loss}");

    // Backward: every parameter's gradient.
    let mut opt = AdamW::new(&model).unwrap();
    let scale = 1.0 / (b * t) as f32;
    let step = |model: &mut Gpt<Cpu>, opt: &mut AdamW<Cpu>, acts: &mut Activations<Cpu>| {
        opt.zero_grad(&model.be);
        let l = model.forward(acts, &x, Some(&y), Some(scale), Dropout::OFF).unwrap().unwrap();
        model.backward(acts, &mut opt.grads, &x, Dropout::OFF);
        l
    };
    step(&mut model, &mut opt, &mut acts);
    for (i, n) in names.iter().enumerate() {
        assert_close(
            &format!("grad {n}"),
            &model.be.to_host(&opt.grads[i]).unwrap(),
            &fx.f32s(&format!("grad.{n}")),
            1e-4,
        );
    }
    let norm1: f64 = fx.meta("grad_norm_step1").parse().unwrap();
    assert!((opt.grad_norm(&model.be).unwrap() - norm1).abs() < 1e-5 * norm1);

    // Two clipped AdamW updates.
    let h = Hyper {
        lr: num("lr") as f32,
        beta1: num("beta1") as f32,
        beta2: num("beta2") as f32,
        eps: num("eps") as f32,
        weight_decay: num("weight_decay") as f32,
        grad_clip: num("grad_clip") as f32,
    };
    opt.step(&mut model, &h).unwrap();
    for (i, n) in names.iter().enumerate() {
        let (got, want) = (model.be.to_host(&model.params[i]).unwrap(), fx.f32s(&format!("step1.{n}")));
        assert_params_close(&format!("step 1 {n}"), &got, &want, h.lr);
    }
    let loss2 = step(&mut model, &mut opt, &mut acts);
    let want2: f32 = fx.meta("loss_step2").parse().unwrap();
    assert!((loss2 - want2).abs() <= 1e-5 * want2, "loss after one step {loss2} vs {want2}");
    opt.step(&mut model, &h).unwrap();
    for (i, n) in names.iter().enumerate() {
        let (got, want) = (model.be.to_host(&model.params[i]).unwrap(), fx.f32s(&format!("step2.{n}")));
        assert_params_close(&format!("step 2 {n}"), &got, &want, h.lr);
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-30)
}

/// bf16 mixed precision against PyTorch's autocast: the loss within 1e-2
/// relative, the whole gradient's cosine similarity above 0.999, and each
/// weight matrix's above 0.99 (the two round different intermediates:
/// PyTorch also rounds matmul outputs and attention to bf16, ferrite keeps
/// them in f32, so they are not expected to agree closer than bf16 noise).
fn run_bf16(fixture: &str) {
    let fx = Fixture::open(fixture);
    let c: Value = serde_json::from_str(&fx.meta("config")).unwrap();
    let cfg: ModelConfig = serde_json::from_value(c.clone()).unwrap();
    let (b, t) = (c["B"].as_u64().unwrap() as usize, c["T"].as_u64().unwrap() as usize);
    let layout = Layout::new(&cfg);
    let names: Vec<String> = layout.specs.iter().map(|s| s.name.clone()).collect();
    let params: Vec<Vec<f32>> = names.iter().map(|n| fx.f32s(&format!("param.{n}"))).collect();
    let mut model = Gpt::from_host(Cpu, cfg.clone(), &params).unwrap();
    model.compute = DType::BF16;
    let (x, y) = (fx.u32s("inputs"), fx.u32s("targets"));
    let mut acts = model.activations(b, t, Recompute::None).unwrap();
    let mut opt = AdamW::new(&model).unwrap();
    opt.zero_grad(&model.be);
    let loss = model.forward(&mut acts, &x, Some(&y), Some(1.0 / (b * t) as f32), Dropout::OFF).unwrap().unwrap();
    let want = fx.f32s("bf16.loss")[0];
    assert!(((loss - want) / want).abs() < 1e-2, "{fixture}: bf16 loss {loss} vs autocast {want}");
    model.backward(&mut acts, &mut opt.grads, &x, Dropout::OFF);
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for (i, n) in names.iter().enumerate() {
        let (got, want) = (model.be.to_host(&opt.grads[i]).unwrap(), fx.f32s(&format!("bf16.grad.{n}")));
        if layout.specs[i].shape.len() >= 2 {
            let cos = cosine(&got, &want);
            assert!(cos > 0.99, "{fixture}: grad {n} cosine {cos}");
        }
        all_got.extend(got);
        all_want.extend(want);
    }
    let cos = cosine(&all_got, &all_want);
    assert!(cos > 0.999, "{fixture}: whole gradient cosine {cos}");
}

#[test]
fn bf16_mixed_precision_matches_pytorch_autocast() {
    for f in [
        "gpt_parity.safetensors",
        "gpt_parity_nobias.safetensors",
        "gpt_parity_llama.safetensors",
        "gpt_parity_options.safetensors",
    ] {
        run_bf16(f);
    }
}

#[test]
fn gpt_with_biases_matches_pytorch() {
    run("gpt_parity.safetensors");
}

#[test]
fn nanogpt_style_without_biases_matches_pytorch() {
    run("gpt_parity_nobias.safetensors");
}

#[test]
fn llama_style_matches_pytorch() {
    // RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head, no biases.
    run("gpt_parity_llama.safetensors");
}

#[test]
fn remaining_options_match_pytorch() {
    // Sinusoidal positions, multi-query attention, QK-norm, ReLU², soft-capping.
    run("gpt_parity_options.safetensors");
}
