//! Evaluation: how well a model predicts a token stream, and what its
//! attention heads look at.

pub mod attention;
pub mod metrics;

pub use attention::{attention_stats, HeadStats};
pub use metrics::{evaluate, EvalReport};
