//! Evaluation: how well a model predicts a token stream (all of it, or
//! training's random batches), and what its attention heads look at.

pub mod attention;
pub mod explain;
pub mod metrics;
pub mod sampled;

pub use attention::{attention_stats, HeadStats};
pub use metrics::{evaluate, EvalReport};
pub use sampled::sampled_loss;
