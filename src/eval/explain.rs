//! `ferrite explain`'s data: one forward and one backward pass of a model
//! on one short text, with every intermediate tensor read back from the
//! engine's own activation buffers (nothing is recomputed here except the
//! attention probabilities, which training attention never stores).

use super::attention::head_attention;
use crate::engine::{Backend, Dropout};
use crate::model::{Gpt, Recompute};
use anyhow::{bail, Result};

/// One tensor of the pass: where it comes from and a summary of its values.
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The name of the buffer (or parameter) in ferrite's terms.
    pub name: String,
    /// What it is, in a few words (the formula that made it).
    pub what: String,
    pub shape: Vec<usize>,
    pub mean: f64,
    pub std: f64,
    /// The first values of its last row (the last position, which has seen
    /// the whole text).
    pub last_row: Vec<f32>,
}

impl TensorView {
    fn new(name: &str, what: &str, shape: Vec<usize>, values: &[f32], shown: usize) -> TensorView {
        let n = shape.iter().product::<usize>().max(1);
        let values = &values[..n];
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let width = *shape.last().unwrap_or(&1);
        let last = &values[n - width..];
        let last_row = last[..shown.min(width)].to_vec();
        TensorView { name: name.into(), what: what.into(), shape, mean, std: var.sqrt(), last_row }
    }
}

/// One block's tensors, in the order the block forward makes them, and the
/// chosen head's attention probabilities (`attention[t][t2]`, causal).
#[derive(Clone, Debug)]
pub struct LayerView {
    pub layer: usize,
    pub tensors: Vec<TensorView>,
    pub attention: Vec<Vec<f64>>,
}

/// A parameter's gradient after the backward pass.
#[derive(Clone, Debug)]
pub struct GradView {
    pub name: String,
    pub shape: Vec<usize>,
    /// `‖∂L/∂θ‖₂` over the tensor.
    pub norm: f64,
}

/// Everything `ferrite explain` shows.
#[derive(Clone, Debug)]
pub struct Walkthrough {
    /// Input tokens (each predicts the next: `targets[t] = tokens[t + 1]`).
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// The embedding, before the first block.
    pub embedding: TensorView,
    pub layers: Vec<LayerView>,
    /// The final norm and the logits.
    pub output: Vec<TensorView>,
    /// The mean cross-entropy over the predictions, in nats.
    pub loss: f32,
    /// `ln V`: the loss of a uniform guess over the vocabulary.
    pub uniform_loss: f64,
    /// The head whose attention each layer shows.
    pub head: usize,
    pub grads: Vec<GradView>,
    /// The norm over all gradients (what clipping compares with `grad_clip`).
    pub grad_norm: f64,
}

/// Runs the pass over `tokens` (at least 2: the inputs are all but the
/// last, the targets all but the first), showing `shown` values per tensor
/// and head `head`'s attention.
pub fn walk_through<B: Backend>(model: &Gpt<B>, tokens: &[u32], head: usize, shown: usize) -> Result<Walkthrough> {
    let cfg = &model.cfg;
    if tokens.len() < 2 {
        bail!("the text must be at least 2 tokens long (one to read, one to predict)");
    }
    let t = tokens.len() - 1;
    if t > cfg.block_size {
        bail!("the text is {t} tokens; the model reads at most {} at once", cfg.block_size);
    }
    if head >= cfg.n_head {
        bail!("--head {head}: the model has heads 0 to {}", cfg.n_head - 1);
    }
    let (inputs, targets) = (&tokens[..t], &tokens[1..]);
    let be = &model.be;
    let mut acts = model.activations(1, t, Recompute::None)?;

    // A forward without targets first: with them the logits buffer becomes
    // the loss gradient in place.
    model.forward(&mut acts, inputs, None, None, Dropout::OFF)?;
    let view = |name: &str, what: &str, buf: &B::Buf, width: usize| -> Result<TensorView> {
        Ok(TensorView::new(name, what, vec![t, width], &be.to_host(buf)?, shown))
    };
    let (c, hd) = (cfg.n_embd, cfg.head_dim());
    let embedding = view("embedding", "wte[token] + position", &acts.encoded, c)?;
    let norm = match cfg.norm {
        crate::model::config::NormKind::LayerNorm => "LayerNorm",
        crate::model::config::NormKind::RmsNorm => "RMSNorm",
    };
    let mlp = serde_json::to_value(cfg.mlp).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let shape = cfg.attn_shape(1, t);
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let (a, m) = (&acts.blocks[acts.block_slot(l)], &acts.mlps[acts.mlp_slot(l)]);
        let qkv = be.to_host(&a.qkv)?;
        let tensors = vec![
            view("ln_1", &format!("{norm}(x)"), &a.ln1, c)?,
            view(
                "qkv",
                &format!(
                    "ln_1 · W_qkvᵀ: {} query, {} key, {} value heads of {hd}",
                    cfg.n_head, shape.kv_heads, shape.kv_heads
                ),
                &a.qkv,
                shape.qkv_width(),
            )?,
            view("attention", "softmax(q·kᵀ/√d, causal) · v, heads side by side", &a.atty, c)?,
            view("x + attn", "x + attention · W_projᵀ (the residual stream)", &a.res_attn, c)?,
            view("ln_2", &format!("{norm}(x + attn)"), &a.ln2, c)?,
            view("fc", "ln_2 · W_fcᵀ", &m.fc, cfg.fc_width())?,
            view("activation", &format!("{mlp}(fc)"), &m.act, cfg.hidden())?,
            view("x + mlp", "x + activation · W_downᵀ (the block's output)", &acts.outputs[l], c)?,
        ];
        layers.push(LayerView { layer: l, tensors, attention: head_attention(&qkv, shape, 0, head) });
    }
    let output = vec![
        view("ln_f", &format!("{norm}(last block's output)"), &acts.lnf, c)?,
        TensorView::new(
            "logits",
            "ln_f · W_headᵀ: a score per vocabulary entry",
            vec![t, cfg.vocab_size],
            &real_vocab(&be.to_host(&acts.logits)?, t, cfg.vocab_size, cfg.padded_vocab),
            shown,
        ),
    ];

    // The training pass: the loss, then every gradient.
    let scale = 1.0 / t as f32;
    let loss = model.forward(&mut acts, inputs, Some(targets), Some(scale), Dropout::OFF)?.expect("targets given");
    let mut grads = model.zeros_like_trainable()?;
    model.backward(&mut acts, &mut grads, inputs, Dropout::OFF);
    let specs = model.lora.as_ref().map_or(&model.layout.specs, |l| &l.layout.specs);
    let grads = specs
        .iter()
        .zip(&grads)
        .map(|(s, g)| {
            let g = be.to_host(g)?;
            let norm = g[..s.numel()].iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            Ok(GradView { name: s.name.clone(), shape: s.shape.clone(), norm })
        })
        .collect::<Result<Vec<_>>>()?;
    let grad_norm = grads.iter().map(|g| g.norm * g.norm).sum::<f64>().sqrt();
    Ok(Walkthrough {
        inputs: inputs.to_vec(),
        targets: targets.to_vec(),
        embedding,
        layers,
        output,
        loss,
        uniform_loss: (cfg.vocab_size as f64).ln(),
        head,
        grads,
        grad_norm,
    })
}

/// The `[rows, vocab]` part of `[rows, padded]` logits.
fn real_vocab(logits: &[f32], rows: usize, vocab: usize, padded: usize) -> Vec<f32> {
    (0..rows).flat_map(|r| logits[r * padded..r * padded + vocab].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::model::ModelConfig;
    use crate::train::optimizer::AdamW;

    #[test]
    fn the_walkthrough_is_the_training_pass() {
        let cfg = ModelConfig::gpt2(13, 16, 2, 2, 8);
        let model = Gpt::new(Cpu, cfg.clone(), 7).unwrap();
        let tokens: Vec<u32> = (0..11).map(|i| (i * 5 % 13) as u32).collect();
        let w = walk_through(&model, &tokens, 1, 3).unwrap();
        assert_eq!((w.inputs.len(), w.layers.len(), w.grads.len()), (10, 2, model.layout.specs.len()));

        // The loss and the gradient norm are what a training step computes.
        let mut acts = model.activations(1, 10, Recompute::None).unwrap();
        let loss = model.forward(&mut acts, &tokens[..10], Some(&tokens[1..]), Some(0.1), Dropout::OFF).unwrap();
        let mut opt = AdamW::new(&model).unwrap();
        model.backward(&mut acts, &mut opt.grads, &tokens[..10], Dropout::OFF);
        assert_eq!(loss, Some(w.loss));
        let norm = opt.grad_norm(&model.be).unwrap();
        assert!((norm - w.grad_norm).abs() <= 1e-6 * norm, "{norm} vs {}", w.grad_norm);
        // At initialisation the model guesses about uniformly.
        assert!((w.loss as f64 - w.uniform_loss).abs() < 0.2, "{} vs {}", w.loss, w.uniform_loss);

        // Attention rows are causal distributions.
        for layer in &w.layers {
            for (t, row) in layer.attention.iter().enumerate() {
                assert_eq!(row.len(), t + 1);
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            }
            assert_eq!(layer.tensors[1].shape, vec![10, 24]);
            assert_eq!(layer.tensors[0].last_row.len(), 3);
        }
        assert_eq!(w.output[1].shape, vec![10, 13]);
    }

    #[test]
    fn bad_requests_are_errors() {
        let model = Gpt::new(Cpu, ModelConfig::gpt2(13, 4, 1, 2, 8), 7).unwrap();
        let err = |tokens: &[u32], head| walk_through(&model, tokens, head, 3).unwrap_err().to_string();
        assert!(err(&[1], 0).contains("at least 2 tokens"));
        assert!(err(&[1, 2, 3, 4, 5, 6], 0).contains("at most 4"));
        assert!(err(&[1, 2, 3], 2).contains("heads 0 to 1"));
    }
}
