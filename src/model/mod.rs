//! The model: configuration, parameter layout, activations, forward and
//! backward passes, and KV-cache inference.

pub mod activations;
pub mod config;
pub mod decode;
pub mod gpt;
pub mod info;
pub mod lora;
pub mod params;
pub mod positions;
pub mod quantize;

pub use activations::{Activations, Recompute};
pub use config::ModelConfig;
pub use gpt::Gpt;
