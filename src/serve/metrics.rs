//! Counters for `GET /metrics`, in Prometheus' text format.

use crate::generate::{Finish, FinishReason};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    /// Requests by endpoint and HTTP status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cancelled: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_us: AtomicU64,
    /// Each model's decoding speed over its latest steps (tokens/s, EMA).
    speed: Mutex<BTreeMap<String, f64>>,
}

impl Metrics {
    pub fn record_request(&self, endpoint: &str, status: u16) {
        *self.requests.lock().unwrap().entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn record_step(&self, model: &str, sequences: usize, took: Duration) {
        let now = sequences as f64 / took.as_secs_f64().max(1e-9);
        let mut speed = self.speed.lock().unwrap();
        let s = speed.entry(model.to_string()).or_insert(now);
        *s = 0.9 * *s + 0.1 * now;
    }

    pub fn record_finish(&self, f: &Finish) {
        self.prompt_tokens.fetch_add(f.prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens.fetch_add(f.completion_tokens as u64, Ordering::Relaxed);
        if f.reason == FinishReason::Cancelled {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        if f.completion_tokens > 0 {
            let secs = f.time_to_first_token.as_secs_f64();
            for (b, bound) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
                if secs <= bound {
                    b.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.ttft_count.fetch_add(1, Ordering::Relaxed);
            self.ttft_sum_us.fetch_add(f.time_to_first_token.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The text `GET /metrics` returns; `models` gives each model's name,
    /// queue depth and busy slots.
    pub fn render(&self, models: &[(String, usize, usize)]) -> String {
        let mut out = String::new();
        header(&mut out, "requests_total", "counter", "HTTP requests by endpoint and status.");
        for ((endpoint, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(out, "ferrite_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        for (name, help, v) in [
            ("prompt_tokens_total", "Prompt tokens of finished sequences.", &self.prompt_tokens),
            ("completion_tokens_total", "Generated tokens of finished sequences.", &self.completion_tokens),
            ("cancelled_total", "Sequences whose client went away.", &self.cancelled),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "ferrite_{name} {}", v.load(Ordering::Relaxed));
        }
        let speed = self.speed.lock().unwrap();
        for (name, help, column) in [
            ("queue_depth", "Requests waiting for the batch.", 0),
            ("active_sequences", "Sequences decoding in the batch.", 1),
            ("tokens_per_second", "Decoding speed of the latest steps, all sequences together.", 2),
        ] {
            header(&mut out, name, "gauge", help);
            for (model, waiting, active) in models {
                let v = match column {
                    0 => *waiting as f64,
                    1 => *active as f64,
                    _ => speed.get(model).copied().unwrap_or(0.0),
                };
                let _ = writeln!(out, "ferrite_{name}{{model=\"{model}\"}} {v:.1}");
            }
        }
        let name = "time_to_first_token_seconds";
        header(&mut out, name, "histogram", "From joining the batch (prefill included) to the first token.");
        for (b, bound) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(out, "ferrite_{name}_bucket{{le=\"{bound}\"}} {}", b.load(Ordering::Relaxed));
        }
        let count = self.ttft_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "ferrite_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "ferrite_{name}_sum {}", self.ttft_sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "ferrite_{name}_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ferrite_{name} {help}\n# TYPE ferrite_{name} {kind}");
}
