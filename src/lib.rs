//! ferrite: train, sample and own GPT-style language models, with our own engine.
//!
//! Layers, bottom up: [`engine`] (device-neutral kernels), [`model`] (the
//! GPT and its KV-cache inference), [`data`] (tokenizers and datasets),
//! [`train`] (the loop, optimizer, checkpoints), [`generate`] (sampling),
//! [`cli`] (the `ferrite` command).

pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod model;
pub mod plot;
pub mod train;
