//! Gradients and AdamW state for every trained parameter (the adapters', when
//! the model has some), with global-norm clipping.

use crate::engine::{AdamWStep, Backend};
use crate::model::Gpt;
use anyhow::Result;

pub struct AdamW<B: Backend> {
    pub grads: Vec<B::Buf>,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Updates done so far (bias correction uses `t + 1`).
    pub t: u64,
}

pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip threshold for the global gradient norm; 0 disables.
    pub grad_clip: f32,
}

impl<B: Backend> AdamW<B> {
    pub fn new(model: &Gpt<B>) -> Result<Self> {
        let zeros = || model.zeros_like_trainable();
        Ok(AdamW { grads: zeros()?, m: zeros()?, v: zeros()?, t: 0 })
    }

    pub fn zero_grad(&mut self, be: &B) {
        for g in &mut self.grads {
            be.fill(g, 0.0);
        }
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self, be: &B) -> Result<f64> {
        let mut total = 0.0;
        for g in &self.grads {
            total += be.sum_squares(g)?;
        }
        Ok(total.sqrt())
    }

    /// Clips (as `torch.nn.utils.clip_grad_norm_`) and applies one update.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, model: &mut Gpt<B>, h: &Hyper) -> Result<f64> {
        let norm = self.grad_norm(&model.be)?;
        self.apply(model, h, norm);
        Ok(norm)
    }

    /// The update of [`Self::step`], given the gradients' norm.
    pub fn apply(&mut self, model: &mut Gpt<B>, h: &Hyper, norm: f64) {
        let scale = if h.grad_clip > 0.0 { (h.grad_clip as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
        self.t += 1;
        let be = model.be.clone();
        let (specs, params) = model.trainable();
        for (i, spec) in specs.iter().enumerate() {
            let s = AdamWStep {
                lr: h.lr,
                beta1: h.beta1,
                beta2: h.beta2,
                eps: h.eps,
                weight_decay: if spec.decays() { h.weight_decay } else { 0.0 },
                t: self.t,
                grad_scale: scale as f32,
            };
            be.adamw(&mut params[i], &self.grads[i], &mut self.m[i], &mut self.v[i], s);
        }
    }
}
