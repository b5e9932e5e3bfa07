//! The GPT model: configuration, parameter layout, forward/backward, and
//! KV-cache inference.

pub mod config;
pub mod decode;
pub mod gpt;
pub mod params;

pub use config::ModelConfig;
pub use gpt::{Activations, Gpt};
