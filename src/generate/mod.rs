//! Text generation: samplers and the KV-cache decoding loop.

pub mod generator;
pub mod sampler;

pub use generator::{Generator, Utf8Stream};
pub use sampler::{Sampler, SamplerConfig};
