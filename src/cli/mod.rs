//! The `ferrite` command line: argument parsing and one module per command.

mod bench;
mod chat;
mod data;
mod eval;
mod info;
mod plot;
mod sample;
mod sampling;
mod tokenizer;
mod train;

use crate::train::config::{self, TrainConfig, PRESETS};
use anyhow::Result;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ferrite", version, about = "Train, sample and own GPT-style language models, with our own engine.")]
struct Cli {
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
    /// Parameters, FLOPs per token and memory of a configuration or checkpoint.
    Info(info::InfoArgs),
    /// Loss, perplexity, bits per byte and accuracy of a checkpoint; attention analysis.
    Eval(eval::EvalArgs),
    /// Draw training curves (loss, learning rate, throughput) of runs to SVG and PNG.
    Plot(plot::PlotArgs),
    /// Train a BPE tokenizer; encode, decode, and measure tokenizers.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Prepare datasets: tokenise corpora into shards for `train --dataset`.
    Data(data::DataArgs),
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
    /// TOML file of configuration keys, applied on top of the preset.
    #[arg(long, value_name = "FILE.toml")]
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
        config::resolve(&config::preset(self.preset_name())?, self.config.as_deref(), &self.overrides)
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
    match serde_json::to_value(TrainConfig::default()).expect("serialisable") {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => unreachable!("TrainConfig serialises to an object"),
    }
}

/// One `--key VALUE` option per configuration key, with its default as help.
fn config_args() -> Vec<Arg> {
    let defaults = serde_json::to_value(TrainConfig::default()).expect("serialisable");
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
    match cli.command.unwrap_or(Command::Train(RunArgs::default())) {
        Command::Train(mut args) => {
            if let Some(("train", m)) = matches.subcommand() {
                args.collect_overrides(m);
            }
            train::run(&args)
        }
        Command::Sample(args) => sample::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Tokenizer(args) => tokenizer::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Bench(mut args) => {
            if let Some(("bench", m)) = matches.subcommand() {
                args.run.collect_overrides(m);
            }
            bench::run(&args)
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
