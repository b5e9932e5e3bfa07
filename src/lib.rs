//! ferrite: train, sample and own GPT-style language models, with our own engine.

pub mod engine;
