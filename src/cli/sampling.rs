//! Sampling options shared by `ferrite sample` and `ferrite chat`.

use crate::generate::SamplerConfig;
use anyhow::Result;

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Sample only among the most likely tokens that together reach this probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise recently seen tokens: > 1 discourages repeats (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Subtract this times a token's recent count from its logit.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Subtract this from the logit of every recently seen token.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at (0: all).
    #[arg(long, default_value_t = 64)]
    pub penalty_last_n: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Stop when this text appears (repeatable; `\n` and `\t` are understood).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stops: Vec<String>,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let cfg = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.penalty_last_n,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The stop sequences with their escapes resolved.
    pub fn stop_sequences(&self) -> Vec<String> {
        self.stops.iter().map(|s| unescape(s)).collect()
    }
}

/// Resolves `\n`, `\t` and `\\`; leaves other backslashes alone.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape_resolves_common_escapes() {
        assert_eq!(super::unescape(r"a\n\nb\tc\\d\qe\"), "a\n\nb\tc\\d\\qe\\");
    }
}
