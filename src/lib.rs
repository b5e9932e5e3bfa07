//! ferrite: train, sample and own GPT-style language models, with our own engine.
//!
//! Layers, bottom up: [`engine`] (device-neutral kernels), [`model`] (the
//! GPT and its KV-cache inference), [`data`] (tokenizers, datasets, chat
//! templates), [`checkpoint`] (saving and loading models), then its users:
//! [`train`] (the loop, optimizer), [`generate`] (the generation API),
//! [`eval`], [`serve`] (the HTTP server), and [`cli`] (the `ferrite` command). See ARCHITECTURE.md.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod model;
pub mod plot;
pub mod serve;
pub mod train;
