//! Training: configuration and presets, schedules, the optimizer, the loop
//! and metrics (checkpoints: [`crate::checkpoint`]).

pub mod config;
pub mod metrics;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::Trainer;
