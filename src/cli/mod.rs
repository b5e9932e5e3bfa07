//! The `ferrite` command line: argument parsing and one module per command.

/// `println!` that returns an error instead of panicking when stdout fails
/// (a full disk, `/dev/full`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))
    }};
}
use out;

/// Defines `pub fn run(args, device)` for a command written once, generic
/// over the backend, as `fn body<B: Backend>(&Args, B) -> Result<()>`.
macro_rules! on_device {
    ($args:ty, $body:ident) => {
        pub fn run(args: &$args, device: crate::engine::Device) -> anyhow::Result<()> {
            struct Job<'a>(&'a $args);
            impl crate::engine::OnDevice for Job<'_> {
                type Output = ();
                fn run<B: crate::engine::Backend>(self, be: B) -> anyhow::Result<()> {
                    $body(self.0, be)
                }
            }
            device.run(Job(args))
        }
    };
}
use on_device;

mod bench;
mod chat;
mod convert;
mod data;
mod eval;
mod explain;
mod export;
mod import;
mod info;
mod lora;
mod plot;
mod precision;
mod quantize;
mod sample;
mod sampling;
mod serve;
mod tokenizer;
mod train;

use crate::engine::Device;
use crate::train::config::{self, TrainConfig, PRESETS};
use anyhow::Result;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ferrite", version, about = "Train, sample and own GPT-style language models, with our own engine.")]
struct Cli {
    /// Where the math runs: `cpu` (this machine's cores).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    device: Device,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (no arguments: the shakespeare-char-cpu preset on tiny Shakespeare).
    Train(RunArgs),
    /// Generate text from a checkpoint, streaming it to stdout.
    Sample(sample::SampleArgs),
    /// Talk with a checkpoint (instruction format; works through a pipe too).
    Chat(chat::ChatArgs),
    /// Time training steps of a model configuration on random tokens.
    Bench(bench::BenchArgs),
    /// Write a checkpoint's weights in another dtype (bf16: a half-size inference copy).
    Convert(convert::ConvertArgs),
    /// Quantize a checkpoint's weights to 8 or 4 bits (GGML's Q8_0, Q4_0, Q4_K) for inference.
    Quantize(quantize::QuantizeArgs),
    /// Import a Hugging Face model or a GGUF file (GPT-2 or Llama architecture) as a checkpoint.
    Import(import::ImportArgs),
    /// Export a checkpoint for Hugging Face transformers or llama.cpp (GGUF).
    Export(export::ExportArgs),
    /// LoRA adapters: merge one into its base.
    Lora(lora::LoraArgs),
    /// Parameters, FLOPs per token and memory of a configuration or checkpoint.
    Info(info::InfoArgs),
    /// Loss, perplexity, bits per byte and accuracy of a checkpoint; attention analysis.
    Eval(eval::EvalArgs),
    /// Show one forward and backward pass, layer by layer: tensors, attention, loss, gradients.
    Explain(explain::ExplainArgs),
    /// Draw training curves (loss, learning rate, throughput) of runs to SVG and PNG.
    Plot(plot::PlotArgs),
    /// Train a BPE tokenizer; encode, decode, and measure tokenizers.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Prepare datasets: tokenise corpora into shards for `train --dataset`.
    Data(data::DataArgs),
    /// Serve checkpoints: an OpenAI-compatible API, a chat page, a training dashboard.
    Serve(serve::ServeArgs),
}

/// Options shared by `train`, `bench` and `info`: a preset, a TOML file, and
/// `--key value` overrides of any configuration key, applied in that order.
/// Every configuration key is a real command-line option (added from
/// [`TrainConfig`]'s fields), so a misspelt key is a usage error.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// Named configuration to start from (see the list below).
    #[arg(long)]
    preset: Option<String>,
    /// TOML (or YAML: .yaml, .yml) file of configuration keys, applied on top of the preset.
    #[arg(long, value_name = "FILE.toml|FILE.yaml")]
    config: Option<PathBuf>,
    /// Continue training from a checkpoint or run directory (its `last`).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// `--key value` overrides, filled from the dynamic options.
    #[arg(skip)]
    overrides: Vec<(String, String)>,
}

/// The preset a run starts from when none is named.
pub const DEFAULT_PRESET: &str = "shakespeare-char-cpu";

impl RunArgs {
    /// The named preset, or the default one.
    pub fn preset_name(&self) -> &str {
        self.preset.as_deref().unwrap_or(DEFAULT_PRESET)
    }

    /// The configuration these arguments describe (without `--resume`).
    pub fn resolve(&self) -> Result<TrainConfig> {
        if self.resume.is_some() {
            anyhow::bail!("--resume is only valid for `ferrite train`");
        }
        let preset = config::preset(self.preset_name())?;
        let cfg = config::resolve(&preset, self.config.as_deref(), &self.overrides)?;
        if cfg.init_from.is_empty() {
            return Ok(cfg);
        }
        // A fine-tune: the checkpoint's model takes the preset's place, so the
        // keys not given keep the checkpoint's values (Trainer checks the rest).
        if self.overrides.iter().any(|(k, _)| config::field_name(k) == "tokenizer") {
            anyhow::bail!("--tokenizer cannot be combined with --init-from (the checkpoint's tokenizer is used)");
        }
        let dir =
            crate::checkpoint::resolve_dir(std::path::Path::new(&cfg.init_from), crate::checkpoint::Prefer::Best)?;
        let model = crate::checkpoint::load_config(&dir)?.model;
        config::resolve(&TrainConfig { model, ..preset }, self.config.as_deref(), &self.overrides)
    }

    fn collect_overrides(&mut self, m: &ArgMatches) {
        for key in config_keys() {
            if let Some(v) = m.get_one::<String>(&key) {
                self.overrides.push((key.clone(), v.clone()));
            }
        }
    }
}

/// Every key of [`TrainConfig`], sorted.
fn config_keys() -> Vec<String> {
    let mut keys: Vec<String> = TrainConfig::default().to_keys().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    keys
}

/// One `--key VALUE` option per configuration key, with its default as help.
fn config_args() -> Vec<Arg> {
    let defaults = TrainConfig::default().to_keys();
    config_keys()
        .into_iter()
        .map(|key| {
            let long = key.replace('_', "-");
            let default = match &defaults[&key] {
                _ if key == "data" => "tiny Shakespeare, downloaded once and cached".to_string(),
                serde_json::Value::Null => "preset's choice".to_string(),
                v => v.to_string(),
            };
            let mut arg = Arg::new(key.clone())
                .long(long)
                .value_name("VALUE")
                .allow_negative_numbers(true)
                .help(format!("default {default}"))
                .help_heading("Configuration keys");
            for (alias, target) in config::ALIASES {
                if *target == key {
                    arg = arg.visible_alias(*alias);
                }
            }
            arg
        })
        .collect()
}

/// Help text listing the presets.
fn presets_help() -> String {
    let mut s = String::from("Presets:\n");
    for (name, desc) in PRESETS {
        s += &format!("  {name:<22} {desc}\n");
    }
    s
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let help = presets_help();
    let command = Cli::command()
        .mut_subcommand("train", |c| c.args(config_args()).after_help(help.clone()))
        .mut_subcommand("bench", |c| c.args(config_args()).after_help(help.clone()))
        .mut_subcommand("info", |c| c.args(config_args()).after_help(help.clone()));
    let matches = command.try_get_matches().unwrap_or_else(|e| exit_with_clap_error(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_with_clap_error(e));
    let device = cli.device;
    match cli.command.unwrap_or(Command::Train(RunArgs::default())) {
        Command::Train(mut args) => {
            if let Some(("train", m)) = matches.subcommand() {
                args.collect_overrides(m);
            }
            train::run(&args, device)
        }
        Command::Sample(args) => sample::run(&args, device),
        Command::Chat(args) => chat::run(&args, device),
        Command::Eval(args) => eval::run(&args, device),
        Command::Explain(args) => explain::run(&args, device),
        Command::Plot(args) => plot::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Lora(args) => lora::run(&args),
        Command::Tokenizer(args) => tokenizer::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Serve(args) => serve::run(&args, device),
        Command::Bench(mut args) => {
            if let Some(("bench", m)) = matches.subcommand() {
                args.run.collect_overrides(m);
            }
            bench::run(&args, device)
        }
        Command::Info(mut args) => {
            if let Some(("info", m)) = matches.subcommand() {
                args.run.collect_overrides(m);
            }
            info::run(&args)
        }
    }
}

/// Help and version go to stdout as usual; usage errors become one line.
fn exit_with_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments").trim();
    eprintln!("{first} (see --help)");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A valid value other than the default for every key: `(key, value
    /// given, value resolved)`. A new key must be added here to pass.
    fn every_key() -> Vec<(&'static str, &'static str, Value)> {
        vec![
            ("batch_size", "7", json!(7)),
            ("beta1", "0.8", json!(0.8)),
            ("beta2", "0.95", json!(0.95)),
            ("bias", "true", json!(true)),
            ("block_size", "96", json!(96)),
            ("data", "corpus.txt", json!("corpus.txt")),
            ("dataset", "data/mine", json!("data/mine")),
            ("decay_frac", "0.3", json!(0.3)),
            ("dropout", "0.1", json!(0.1)),
            ("dropout_final", "0.05", json!(0.05)),
            ("dtype", "bf16", json!("bf16")),
            ("epochs", "2.5", json!(2.5)),
            ("eps", "1e-6", json!(1e-6)),
            ("eval_interval", "100", json!(100)),
            ("eval_iters", "50", json!(50)),
            ("grad_accum", "2", json!(2)),
            ("grad_clip", "0.5", json!(0.5)),
            ("init_from", "runs/base", json!("runs/base")),
            ("learning_rate", "3e-4", json!(3e-4)),
            ("log_interval", "5", json!(5)),
            ("logit_softcap", "30", json!(30.0)),
            ("lora_alpha", "32", json!(32.0)),
            ("lora_dropout", "0.05", json!(0.05)),
            ("lora_rank", "8", json!(8)),
            ("lora_targets", "q,v", json!("q,v")),
            ("lr_decay_iters", "1500", json!(1500)),
            ("max_iters", "300", json!(300)),
            ("min_lr", "none", Value::Null),
            ("mlp", "swiglu", json!("swiglu")),
            ("mlp_hidden", "320", json!(320)),
            ("n_embd", "256", json!(256)),
            ("n_head", "8", json!(8)),
            ("n_kv_head", "2", json!(2)),
            ("n_layer", "3", json!(3)),
            ("norm", "rmsnorm", json!("rmsnorm")),
            ("norm_eps", "0.25", json!(0.25)),
            ("on_nonfinite", "skip", json!("skip")),
            ("out_dir", "runs/x", json!("runs/x")),
            ("pos", "rope", json!("rope")),
            ("qk_norm", "true", json!(true)),
            ("recompute", "block", json!("block")),
            ("rope_base", "500000", json!(500000.0)),
            ("sample_tokens", "0", json!(0)),
            ("schedule", "wsd", json!("wsd")),
            ("seed", "7", json!(7)),
            ("tie_embeddings", "false", json!(false)),
            ("tokenizer", "byte", json!("byte")),
            ("tokens", "1M", json!(1_000_000)),
            ("train_frac", "0.8", json!(0.8)),
            ("vocab_size", "100", json!(100)),
            ("warmup_iters", "10", json!(10)),
            ("weight_decay", "0.01", json!(0.01)),
        ]
    }

    #[test]
    fn every_key_of_train_help_can_be_set() {
        let train = Cli::command().mut_subcommand("train", |c| c.args(config_args()));
        let train = train.find_subcommand("train").expect("a train command").clone();
        let mut listed: Vec<String> = train
            .get_arguments()
            .filter(|a| a.get_help_heading() == Some("Configuration keys"))
            .map(|a| a.get_id().to_string())
            .collect();
        listed.sort();
        let table = every_key();
        let known: Vec<&str> = table.iter().map(|k| k.0).collect();
        assert_eq!(listed, known, "train --help lists these keys; give each a test value");
        let default = TrainConfig::default().to_keys();
        for (key, raw, want) in table {
            assert_ne!(default[key], want, "{key}: pick a value that differs from the default");
            let long = format!("--{}", key.replace('_', "-"));
            let m = train.clone().try_get_matches_from(["train", &long, raw]).unwrap_or_else(|e| panic!("{key}: {e}"));
            let mut args = RunArgs::from_arg_matches(&m).expect("run arguments");
            args.collect_overrides(&m);
            let cfg = match args.resolve() {
                // Resolving reads the checkpoint (tests/hf_interop.rs fine-tunes one).
                Err(e) if key == "init_from" => {
                    assert!(e.to_string().contains("checkpoint runs/base does not exist"), "{e}");
                    continue;
                }
                r => r.unwrap_or_else(|e| panic!("--{key} {raw}: {e:#}")),
            };
            assert_eq!(cfg.to_keys()[key], want, "--{key} {raw}");
        }
    }
}
