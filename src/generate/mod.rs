//! Text generation: samplers, stop sequences and the KV-cache decoding loop.

pub mod batch;
pub mod chat;
pub mod generator;
pub mod sampler;
pub mod speculative;
pub mod stop;

pub use generator::{Generator, Utf8Stream};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::StopMatcher;
