//! LoRA: parity with Hugging Face `peft` (fixtures from
//! scripts/make_lora_fixture.py; scripts/check_peft_adapter.py checks that
//! `peft` loads ours), and LoRA runs through the command line: frozen base,
//! adapter files, resume, merge, `--adapter`, bad input.

mod common;

use common::{assert_close, fails, ok, p, scratch};
use ferrite::checkpoint::{self, adapter, hf};
use ferrite::engine::cpu::Cpu;
use ferrite::engine::Dropout;
use ferrite::model::lora::{LoraConfig, LoraLayout, Naming};
use ferrite::model::{Gpt, Recompute};
use ferrite::train::optimizer::{AdamW, Hyper};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny Hugging Face model `name` of tests/fixtures/hf, in f32.
fn hf_model(name: &str) -> Gpt<Cpu> {
    let imported = hf::import(&fixtures().join("hf").join(name)).unwrap();
    Gpt::from_host(Cpu, imported.config.model, &imported.params).unwrap()
}

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

#[test]
fn peft_and_ferrite_train_the_same_adapters() {
    for name in ["gpt2", "llama"] {
        let dir = fixtures().join("lora").join(name);
        let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let want: Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let mut model = hf_model(name);
        // The adapter as PEFT saved it.
        let (lora, weights) = adapter::read(&dir.join("init"), &model.cfg).unwrap();
        assert_eq!(lora.targets, Naming::of(&model.cfg).targets(), "{name}: every projection");
        model.attach_lora(lora, Some(weights), 0).unwrap();
        let (x, y) = (ids(&st, "x"), ids(&st, "y"));
        let (b, t) = (2, x.len() / 2);
        let mut acts = model.activations(b, t, Recompute::None).unwrap();
        let mut opt = AdamW::new(&model).unwrap();
        let f = |k: &str| want[k].as_f64().unwrap() as f32;
        let h = Hyper {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
            grad_clip: 0.0,
        };
        let specs = model.lora.as_ref().unwrap().layout.specs.clone();
        for step in 0..2 {
            opt.zero_grad(&model.be);
            let scale = 1.0 / x.len() as f32;
            let loss = model.forward(&mut acts, &x, Some(&y), Some(scale), Dropout::OFF).unwrap().unwrap();
            let peft_loss = want["losses"][step].as_f64().unwrap() as f32;
            assert!(
                ((loss - peft_loss) / peft_loss).abs() < 1e-5,
                "{name} step {step}: loss {loss} vs peft {peft_loss}"
            );
            model.backward(&mut acts, &mut opt.grads, &x, Dropout::OFF);
            if step == 0 {
                for (spec, g) in specs.iter().zip(&opt.grads) {
                    assert_close(
                        &format!("{name} grad {}", spec.name),
                        g,
                        &tensor(&st, &format!("grad.{}", spec.name)),
                        1e-4,
                    );
                }
            }
            opt.step(&mut model, &h).unwrap();
        }
        let trained = model.lora_to_host().unwrap().unwrap();
        for (spec, w) in specs.iter().zip(&trained) {
            assert_close(&format!("{name} {}", spec.name), w, &tensor(&st, &format!("final.{}", spec.name)), 1e-4);
        }
    }
}

/// A seeded adapter with every weight random (B too) on fixture `name`.
fn random_adapter(model: &Gpt<Cpu>, targets: &str, seed: u64) -> (LoraConfig, Vec<Vec<f32>>) {
    let targets = Naming::of(&model.cfg).parse_targets(targets).unwrap();
    let lora = LoraConfig { rank: 3, alpha: 5.0, dropout: 0.0, targets, layers: None, rslora: false };
    let layout = LoraLayout::new(&model.cfg, &lora).unwrap();
    let specs: Vec<_> = layout
        .specs
        .iter()
        .map(|s| ferrite::model::params::ParamSpec { init: ferrite::model::params::Init::Normal(0.3), ..s.clone() })
        .collect();
    (lora, ferrite::model::params::init_params(&specs, seed))
}

/// Logits at every position of `ids` (a full forward, no cache).
fn logits(model: &Gpt<Cpu>, ids: &[u32]) -> Vec<f32> {
    let mut acts = model.activations(1, ids.len(), Recompute::None).unwrap();
    model.forward(&mut acts, ids, None, None, Dropout::OFF).unwrap();
    let (v, pv) = (model.cfg.vocab_size, model.cfg.padded_vocab);
    let all = acts.logits.to_vec();
    all.chunks_exact(pv).take(ids.len()).flat_map(|r| r[..v].to_vec()).collect()
}

#[test]
fn peft_loads_ferrite_adapters() {
    // FERRITE_PEFT_DIR: scripts/check_peft_adapter.py collects the adapters there.
    let keep = std::env::var_os("FERRITE_PEFT_DIR").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| scratch("peft-adapters"));
    let record_file = fixtures().join("lora_peft.json");
    let record: Option<Value> =
        keep.is_none().then(|| serde_json::from_slice(&std::fs::read(&record_file).unwrap()).unwrap());
    // Some targets only, so the adapter config's module list matters.
    for (name, targets) in [("gpt2", "q,k,v,down"), ("llama", "k,v,o,gate")] {
        let mut model = hf_model(name);
        let (lora, weights) = random_adapter(&model, targets, 21);
        let layout = LoraLayout::new(&model.cfg, &lora).unwrap();
        let out = dir.join(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let views: Vec<&[f32]> = weights.iter().map(|w| &w[..]).collect();
        adapter::write(&out, &model.cfg, &lora, &layout.specs, &views, &format!("tests/fixtures/hf/{name}")).unwrap();
        model.attach_lora(lora, Some(weights), 0).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % model.cfg.vocab_size as u32).collect();
        let got = logits(&model, &ids);
        // KV-cache decoding applies the adapters as the full forward does.
        let mut cache = ferrite::model::decode::KvCache::new(&model, 1).unwrap();
        let decoded: Vec<f32> = cache.forward_from(&model, 0, &ids, 0).unwrap().concat();
        assert_close(&format!("{name} decoding"), &decoded, &got, 1e-5);
        let hashes = common::file_hashes(&out);
        match &record {
            None => {
                let mine = serde_json::json!({"ids": ids, "ferrite_logits": got, "files": hashes});
                std::fs::write(out.join("ferrite.json"), mine.to_string()).unwrap();
            }
            Some(r) => {
                assert_eq!(
                    r[name]["files"],
                    serde_json::json!(hashes),
                    "{name}: the adapter files changed since peft checked them: run scripts/check_peft_adapter.py"
                );
                let peft: Vec<f32> =
                    r[name]["peft_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                assert_close(name, &got, &peft, 1e-4);
            }
        }
    }
}

/// A small text, a base trained on it, and its directory.
fn base_run(dir: &Path) -> (PathBuf, PathBuf) {
    let text: String = (0..400).map(|i| format!("the {} cat sat on the {} mat.\n", i % 7, i % 5)).collect();
    let data = dir.join("text.txt");
    std::fs::write(&data, text).unwrap();
    let base = dir.join("base");
    ok(&[
        "train",
        "--data",
        &p(&data),
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "32",
        "--batch-size",
        "4",
        "--max-iters",
        "30",
        "--eval-interval",
        "30",
        "--eval-iters",
        "2",
        "--sample-tokens",
        "0",
        "--out",
        &p(&base),
    ]);
    (data, base)
}

fn lora_args<'a>(data: &'a str, base: &'a str, out: &'a str, iters: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--init-from",
        base,
        "--data",
        data,
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0.1",
        "--lora-targets",
        "q,k,v,o,up,down",
        "--learning-rate",
        "1e-2",
        "--warmup-iters",
        "0",
        "--max-iters",
        iters,
        "--eval-interval",
        "2",
        "--eval-iters",
        "2",
        "--batch-size",
        "4",
        "--sample-tokens",
        "0",
        "--out",
        out,
    ]
}

#[test]
fn lora_runs_save_adapters_resume_merge_and_apply() {
    let dir = scratch("lora-run");
    let (data, base) = base_run(&dir);
    let (data_s, base_s) = (p(&data), p(&base));
    let base_files = common::file_hashes(&base.join("best"));
    // Four steps straight, and two then two resumed: the same adapter.
    let (full, split) = (p(&dir.join("full")), p(&dir.join("split")));
    ok(&lora_args(&data_s, &base_s, &full, "4"));
    ok(&lora_args(&data_s, &base_s, &split, "2"));
    let mut resume = vec!["train", "--resume", &split, "--max-iters", "4"];
    resume.extend(["--sample-tokens", "0"]);
    ok(&resume);
    fails(&["train", "--resume", &split, "--lora-rank", "8"], "cannot change when resuming");
    fails(&["train", "--resume", &base_s, "--lora-rank", "8"], "not --resume");
    let last = |run: &str| std::fs::read(Path::new(run).join("last").join(adapter::WEIGHTS)).unwrap();
    assert_eq!(last(&full), last(&split), "a resumed LoRA run continues exactly");
    // The run holds the adapter, PEFT's way, and no copy of the base.
    let best = Path::new(&full).join("best");
    assert!(!best.join("model.safetensors").exists());
    let cfg: Value = serde_json::from_slice(&std::fs::read(best.join(adapter::CONFIG)).unwrap()).unwrap();
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64()), (Some("LORA"), Some(4)));
    assert_eq!(cfg["target_modules"], serde_json::json!(["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]));
    // Frozen means frozen: the base checkpoint is untouched.
    assert_eq!(common::file_hashes(&base.join("best")), base_files);
    // The run evaluates as base + adapter, as `--adapter` does, as the merged model does.
    let loss = |args: &[&str]| {
        let mut a = vec!["eval", "--data", &data_s, "--json"];
        a.extend(args);
        common::json(&ok(&a))["metrics"]["loss"].as_f64().unwrap()
    };
    let merged = p(&dir.join("merged"));
    ok(&["lora", "merge", &base_s, "--adapter", &full, "--out", &merged]);
    let (run, applied, folded, plain) = (
        loss(&["--checkpoint", &full]),
        loss(&["--checkpoint", &base_s, "--adapter", &full]),
        loss(&["--checkpoint", &merged]),
        loss(&["--checkpoint", &base_s]),
    );
    assert_eq!(run, applied);
    assert!((folded - applied).abs() < 1e-5 * applied, "merged {folded} vs unmerged {applied}");
    assert_ne!(plain, applied, "the adapter changed nothing");
    ok(&["sample", "--checkpoint", &base_s, "--adapter", &full, "--max-new-tokens", "5", "--prompt", "the"]);
    // Merging the run itself gives the same checkpoint.
    let merged2 = p(&dir.join("merged2"));
    ok(&["lora", "merge", &full, "--out", &merged2]);
    assert_eq!(
        std::fs::read(Path::new(&merged).join("model.safetensors")).unwrap(),
        std::fs::read(Path::new(&merged2).join("model.safetensors")).unwrap()
    );
    // `info` counts the frozen base out of gradients and AdamW.
    let info = common::json(&ok(&["info", "--checkpoint", &full, "--json"]));
    let mem = &info["memory_bytes"]["none"];
    let adapter_params = info["lora_params"].as_u64().unwrap();
    assert_eq!(mem["grads"].as_u64().unwrap(), 4 * adapter_params);
    assert_eq!(mem["optimizer"].as_u64().unwrap(), 8 * adapter_params);
    assert_eq!(mem["params"].as_u64().unwrap(), 4 * (info["params"].as_u64().unwrap() + adapter_params));

    // Bad input.
    fails(&["train", "--data", &data_s, "--lora-rank", "4"], "--init-from");
    let mut a = lora_args(&data_s, &base_s, &full, "4");
    a.iter_mut().filter(|x| **x == "q,k,v,o,up,down").for_each(|x| *x = "gate");
    fails(&a, "not gated");
    let mut a = lora_args(&data_s, &base_s, &full, "4");
    a.iter_mut().filter(|x| **x == "q,k,v,o,up,down").for_each(|x| *x = "q,v");
    fails(&a, "together");
    fails(&["lora", "merge", &full, "--adapter", &full, "--out", &p(&dir.join("m3"))], "without --adapter");
    fails(&["lora", "merge", &base_s, "--out", &p(&dir.join("m4"))], "has no adapter");
    fails(&["export", &full, "--format", "hf", "--out", &p(&dir.join("hf"))], "LoRA adapter");
    let two = ["serve", "--checkpoint", &base_s, "--checkpoint", &full, "--adapter", &full];
    fails(&two, "applies to one checkpoint");
    fails(&["eval", "--checkpoint", &full, "--adapter", &full, "--data", &data_s], "already has an adapter");
    // An adapter for another base: a base of another width.
    let other = dir.join("other");
    ok(&[
        "train",
        "--data",
        &data_s,
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "32",
        "--max-iters",
        "1",
        "--eval-iters",
        "1",
        "--sample-tokens",
        "0",
        "--out",
        &p(&other),
    ]);
    fails(&["eval", "--checkpoint", &p(&other), "--adapter", &full, "--data", &data_s], "another architecture");
    // PEFT files alone (no ferrite config): shapes catch it.
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in [adapter::CONFIG, adapter::WEIGHTS] {
        std::fs::copy(best.join(f), bare.join(f)).unwrap();
    }
    fails(&["eval", "--checkpoint", &p(&other), "--adapter", &p(&bare), "--data", &data_s], "another base");
    // A lying or unsupported adapter config.
    let cfg_file = bare.join(adapter::CONFIG);
    let good = std::fs::read_to_string(&cfg_file).unwrap();
    for (from, to, needle) in [
        ("\"use_dora\": false", "\"use_dora\": true", "DoRA"),
        ("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "not LORA"),
        ("\"r\": 4", "\"r\": 5", "shape"),
        ("\"r\": 4", "\"r\": \"four\"", "not a PEFT LoRA config"),
    ] {
        std::fs::write(&cfg_file, good.replace(from, to)).unwrap();
        fails(&["eval", "--checkpoint", &base_s, "--adapter", &p(&bare), "--data", &data_s], needle);
    }
    std::fs::write(&cfg_file, &good).unwrap();
    std::fs::write(bare.join(adapter::WEIGHTS), b"not safetensors").unwrap();
    fails(&["eval", "--checkpoint", &base_s, "--adapter", &p(&bare), "--data", &data_s], "not a valid safetensors");
    fails(
        &["eval", "--checkpoint", &base_s, "--adapter", &p(&dir.join("nowhere")), "--data", &data_s],
        "does not exist",
    );
    let empty = safetensors::serialize(Vec::<(&str, safetensors::tensor::TensorView)>::new(), None).unwrap();
    std::fs::write(bare.join(adapter::WEIGHTS), empty).unwrap();
    fails(&["eval", "--checkpoint", &base_s, "--adapter", &p(&bare), "--data", &data_s], "holds no tensors");
    // The draft of speculative decoding is another model: the adapter is the target's only.
    let draft = ["--draft", other.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "5"];
    let mut a = vec!["sample", "--checkpoint", &base_s, "--adapter", &full];
    a.extend(draft);
    ok(&a);
    // LoRA options without a rank; a run that would overwrite its own base.
    fails(&["train", "--data", &data_s, "--lora-alpha", "4"], "give --lora-rank too");
    fails(&lora_args(&data_s, &base_s, &base_s, "4"), "a directory of its own");
    // A base trained further is another model: its adapters say so.
    // (As if it had: its best checkpoint now says a later step.)
    let state_file = base.join("best").join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["step"] = serde_json::json!(state["step"].as_u64().unwrap() + 10);
    std::fs::write(&state_file, state.to_string()).unwrap();
    fails(&["eval", "--checkpoint", &full, "--data", &data_s], "it has changed");
    fails(&["train", "--resume", &full, "--max-iters", "6", "--sample-tokens", "0"], "it has changed");
}

#[test]
fn a_lora_run_leaves_the_base_bit_identical_and_trains_only_adapters() {
    use ferrite::train::{config::TrainConfig, Trainer};
    let dir = scratch("lora-frozen");
    let (data, base) = base_run(&dir);
    let cfg = TrainConfig {
        init_from: p(&base),
        data: p(&data),
        lora_rank: 2,
        lora_targets: "q,k,v,o,up,down".into(),
        learning_rate: 1e-2,
        warmup_iters: 0,
        batch_size: 4,
        out_dir: p(&dir.join("run")),
        ..TrainConfig::default()
    };
    let resolved = ferrite::train::config::resolve(&cfg, None, &[]).unwrap();
    let cfg = TrainConfig { model: checkpoint::load_config(&base.join("best")).unwrap().model, ..resolved };
    let mut t = Trainer::new(Cpu, cfg).unwrap();
    let start = t.model.params_to_host().unwrap();
    let adapters = t.model.lora_to_host().unwrap().unwrap();
    assert_eq!(t.opt.grads.len(), adapters.len(), "gradients and AdamW state only for the adapters");
    for _ in 0..3 {
        t.step().unwrap();
    }
    assert_eq!(t.model.params_to_host().unwrap(), start, "the base moved");
    assert_ne!(t.model.lora_to_host().unwrap().unwrap(), adapters, "the adapters did not train");
}
