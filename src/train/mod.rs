//! Training: configuration and presets, schedules, the optimizer, the loop,
//! checkpoints and metrics.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::Trainer;
