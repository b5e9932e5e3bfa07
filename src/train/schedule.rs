//! Learning-rate schedules, as a pure function of the update index.

use super::config::{Schedule, TrainConfig};

/// Learning rate for the update with 0-based index `it`: linear warmup, then
/// cosine decay to `min_lr` at `lr_decay_iters` (held there after), a
/// constant rate, or warmup-stable-decay with a final linear decay.
pub fn learning_rate(cfg: &TrainConfig, it: usize) -> f64 {
    let (lr, min_lr) = (cfg.learning_rate, cfg.min_lr());
    let warmup = cfg.warmup_iters;
    if it < warmup {
        return lr * (it + 1) as f64 / (warmup + 1) as f64;
    }
    let decay_iters = cfg.lr_decay_iters();
    match cfg.schedule {
        Schedule::Constant => lr,
        Schedule::Wsd => {
            let decay_len = ((decay_iters as f64) * cfg.decay_frac).round() as usize;
            let decay_start = decay_iters.saturating_sub(decay_len).max(warmup);
            if it < decay_start {
                lr
            } else if it >= decay_iters {
                min_lr
            } else {
                let frac = (it - decay_start) as f64 / (decay_iters - decay_start) as f64;
                lr + (min_lr - lr) * frac
            }
        }
        Schedule::Cosine => {
            if it >= decay_iters || decay_iters <= warmup {
                return min_lr;
            }
            let ratio = (it - warmup) as f64 / (decay_iters - warmup) as f64;
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
            min_lr + coeff * (lr - min_lr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warmup_and_floor() {
        let cfg = TrainConfig {
            learning_rate: 1e-3,
            min_lr: Some(1e-4),
            warmup_iters: 100,
            lr_decay_iters: Some(2000),
            ..TrainConfig::default()
        };
        assert!((learning_rate(&cfg, 0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((learning_rate(&cfg, 100) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(&cfg, 1050) - 5.5e-4).abs() < 1e-9);
        assert_eq!(learning_rate(&cfg, 2000), 1e-4);
        assert_eq!(learning_rate(&cfg, 9999), 1e-4);
        for it in 0..3000 {
            assert!(learning_rate(&cfg, it) >= 1e-4 - 1e-15 || it < 100);
        }
    }

    #[test]
    fn wsd_and_constant() {
        let base = TrainConfig {
            learning_rate: 1.0,
            min_lr: Some(0.1),
            warmup_iters: 10,
            lr_decay_iters: Some(100),
            decay_frac: 0.2,
            ..TrainConfig::default()
        };
        let wsd = TrainConfig { schedule: Schedule::Wsd, ..base.clone() };
        assert_eq!(learning_rate(&wsd, 50), 1.0);
        assert_eq!(learning_rate(&wsd, 80), 1.0);
        assert!((learning_rate(&wsd, 90) - 0.55).abs() < 1e-12);
        assert_eq!(learning_rate(&wsd, 100), 0.1);
        let constant = TrainConfig { schedule: Schedule::Constant, ..base };
        assert_eq!(learning_rate(&constant, 99), 1.0);
    }
}
