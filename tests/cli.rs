//! End-to-end tests of the `ferrite` binary: train → checkpoint → resume →
//! sample on a tiny model, and a clear one-line error for each kind of bad
//! input.

mod common;

use common::{fails, ferrite, json, ok, p, scratch};
use std::path::Path;
use std::process::{Command, Output};

/// A small corpus with some structure to learn (~24 KB).
fn corpus(dir: &Path) -> String {
    let words = ["the", "king", "shall", "speak", "and", "we", "will", "hear", "thee", "now", "good", "lord"];
    let mut text = String::new();
    let mut state = 7u64;
    for line in 0..1000 {
        if line % 9 == 0 {
            text.push_str("\nKING:\n");
        }
        for _ in 0..4 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.push_str(words[(state >> 33) as usize % words.len()]);
            text.push(' ');
        }
        text.push_str(".\n");
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `ferrite train --preset PRESET --data DATA --out OUT` without the
/// end-of-run sample, plus `extra` options; returns stdout.
fn train(preset: &str, data: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec!["train", "--preset", preset, "--data", data, "--out", out, "--sample-tokens", "0"];
    args.extend(extra);
    ok(&args)
}

/// `(step, loss)` of the training records in a run's metrics.jsonl.
fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn train_checkpoint_resume_and_sample() {
    let dir = scratch("e2e");
    let data = corpus(&dir);
    let (full, part) = (dir.join("full"), dir.join("part"));
    // Dropout on (and annealed), so resuming must also restore the dropout
    // masks' stream and rate.
    let common = ["--preset", "tiny", "--data", &data, "--lr-decay-iters", "20", "--eval-interval", "10"];
    let common2 = ["--log-interval", "1", "--dropout", "0.2", "--dropout-final", "0.05", "--sample-tokens", "20"];
    // Activation recomputation changes what is stored, not what is computed:
    // the runs below use different modes and must still agree bit for bit.
    let run = |out: &Path, iters: &str, recompute: &str| {
        let mut args: Vec<&str> = common.iter().chain(&common2).copied().collect();
        let out = p(out);
        args.extend(["--out", &out, "--max-iters", iters, "--recompute", recompute]);
        let mut all = vec!["train"];
        all.extend(args);
        ok(&all)
    };
    let stdout = run(&full, "20", "none");
    assert!(stdout.contains("step 20: train loss"), "{stdout}");
    assert!(stdout.contains("sample:"), "{stdout}");
    for ck in ["best", "last"] {
        for f in ["model.safetensors", "optimizer.safetensors", "config.json", "state.json"] {
            assert!(full.join(ck).join(f).exists(), "{ck}/{f} missing");
        }
    }

    // Stop at step 10, then resume to 20: the same losses, bit for bit.
    run(&part, "10", "block");
    let resumed =
        ok(&["train", "--resume", &p(&part), "--max-iters", "20", "--sample-tokens", "0", "--recompute", "mlp"]);
    assert!(resumed.contains("resuming at step 10"), "{resumed}");
    let (a, b) = (train_losses(&full), train_losses(&part));
    assert_eq!(a.len(), 20);
    assert_eq!(a, b, "resumed run diverged from the uninterrupted one");
    let weights = |run: &Path| std::fs::read(run.join("last/model.safetensors")).unwrap();
    assert_eq!(weights(&full), weights(&part), "final weights differ");

    // Sampling: streams the requested length, reproducible from a seed.
    let sample = |seed: &str| ok(&["sample", "--checkpoint", &p(&full), "--max-new-tokens", "40", "--seed", seed]);
    let (s1, s2, s3) = (sample("3"), sample("3"), sample("4"));
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    assert_eq!(s1.trim_end_matches('\n').chars().count(), 40, "{s1:?}");
    // Greedy decoding past the block size (32) exercises the sliding window.
    let long = ok(&[
        "sample",
        "--checkpoint",
        &p(&full.join("last")),
        "--prompt",
        "KING:",
        "--max-new-tokens",
        "100",
        "--temperature",
        "0",
    ]);
    assert_eq!(long.trim_end_matches('\n').chars().count(), 100);
}

#[test]
fn training_learns_tiny_shakespeare() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt");
    if !data.exists() {
        eprintln!("skipping: {} not present", data.display());
        return;
    }
    let dir = scratch("shakespeare");
    let extra = [
        "--max-iters",
        "300",
        "--eval-interval",
        "300",
        "--batch-size",
        "16",
        "--block-size",
        "64",
        "--n-embd",
        "64",
        "--n-head",
        "4",
        "--learning-rate",
        "3e-3",
        "--warmup-iters",
        "20",
    ];
    let out = train("tiny", &p(&data), &p(&dir), &extra);
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = text
        .lines()
        .rev()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|r: &serde_json::Value| r["kind"] == "eval")
        .unwrap();
    let val = last["val_loss"].as_f64().unwrap();
    // ln(65) = 4.17 at the start and ~2.9 for a model that knows only how
    // often each character occurs; below 2.6 it has learned some context.
    assert!(val < 2.6, "val loss {val} after 300 steps\n{out}");
    // Characters are single bytes here, so bits per byte = loss / ln 2.
    let bpb = last["val_bpb"].as_f64().unwrap();
    assert!((bpb - val / std::f64::consts::LN_2).abs() < 1e-9);
}

#[test]
fn bad_data_files_are_clear_errors() {
    let dir = scratch("baddata");
    let tr = |data: &Path, extra: &[&str], needle: &str| {
        let (out, data) = (p(&dir.join("run")), p(data));
        let mut args = vec!["train", "--preset", "tiny", "--data", &data, "--out", &out];
        args.extend(extra);
        fails(&args, needle);
    };
    tr(&dir.join("missing.txt"), &[], "cannot read data file");
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    tr(&dir.join("empty.txt"), &[], "is empty");
    std::fs::write(dir.join("latin1.txt"), b"caf\xe9 au lait, encore du caf\xe9\n".repeat(100)).unwrap();
    tr(&dir.join("latin1.txt"), &[], "not valid UTF-8");
    std::fs::write(dir.join("short.txt"), "To be, or not to be.").unwrap();
    tr(&dir.join("short.txt"), &[], "too short");
    // Byte-level training accepts any bytes.
    let extra = ["--tokenizer", "byte", "--max-iters", "2", "--block-size", "16"];
    train("tiny", &p(&dir.join("latin1.txt")), &p(&dir.join("b")), &extra);
}

#[test]
fn bad_options_are_clear_errors() {
    let dir = scratch("badopts");
    let data = corpus(&dir);
    let out = p(&dir.join("run"));
    let tr = |extra: &[&str], needle: &str| {
        let mut args = vec!["train", "--preset", "tiny", "--data", &data, "--out", &out];
        args.extend(extra);
        fails(&args, needle);
    };
    fails(&["train", "--preset", "gpt-99", "--data", &data], "unknown preset 'gpt-99'");
    tr(&["--n-layers", "3"], "--n-layers");
    tr(&["--batch-size", "many"], "batch_size");
    tr(&["--batch-size", "0"], "batch_size");
    tr(&["--dropout", "1.5"], "dropout");
    tr(&["--learning-rate", "-1"], "learning_rate");
    tr(&["--n-embd", "30", "--n-head", "4"], "divisible");
    tr(&["--schedule", "linear"], "schedule");
    tr(&["--config", &p(&dir.join("nope.toml"))], "cannot read config file");
    std::fs::write(dir.join("bad.toml"), "n_layer = [").unwrap();
    tr(&["--config", &p(&dir.join("bad.toml"))], "not valid TOML");
    std::fs::write(dir.join("typo.toml"), "n_layers = 3\n").unwrap();
    tr(&["--config", &p(&dir.join("typo.toml"))], "unknown config key 'n_layers'");
    fails(&["train", "--resume", &p(&dir.join("nothing"))], "does not exist");
    fails(&["bench", "--steps", "0"], "steps");
    fails(&["info", "--device", "tpu"], "unknown device 'tpu' (available: cpu)");
}

/// No network is needed: tiny Shakespeare is built in.
#[test]
fn the_default_corpus_is_built_in() {
    let out = p(&scratch("builtin").join("run"));
    let log = ok(&["train", "--preset", "tiny", "--max-iters", "2", "--eval-iters", "1", "--out", &out]);
    assert!(log.contains("1003854 train / 111540 val tokens (char tokenizer)"), "{log}");
}

#[test]
fn bad_checkpoints_and_sample_options_are_clear_errors() {
    let dir = scratch("badck");
    let data = corpus(&dir);
    let run = dir.join("run");
    train("tiny", &data, &p(&run), &["--max-iters", "2"]);
    let ck = p(&run);
    let s = |extra: &[&str], needle: &str| {
        let mut args = vec!["sample", "--checkpoint", &ck];
        args.extend(extra);
        fails(&args, needle);
    };
    s(&["--temperature", "-1"], "temperature");
    s(&["--top-p", "0"], "top-p");
    s(&["--max-new-tokens", "lots"], "max-new-tokens");
    s(&["--prompt", "QUEEN"], "not in this model's vocabulary");
    s(&["--prompt", ""], "prompt");
    fails(&["sample", "--checkpoint", &p(&dir.join("absent"))], "does not exist");
    fails(&["sample", "--checkpoint", &p(&dir)], "not a ferrite checkpoint");

    // Corrupt files inside an otherwise complete checkpoint.
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(run.join("best")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        to
    };
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails(&["sample", "--checkpoint", &p(&truncated)], "model.safetensors");
    let garbled = copy("garbled");
    std::fs::write(garbled.join("config.json"), "{ not json").unwrap();
    fails(&["sample", "--checkpoint", &p(&garbled)], "config.json");
    let other = copy("other");
    std::fs::write(other.join("config.json"), r#"{"model": "gpt2", "framework": "pytorch"}"#).unwrap();
    fails(&["sample", "--checkpoint", &p(&other)], "config.json");
    // Weights that do not match their configuration, or are not numbers.
    type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;
    let rewrite = |name: &str, edit: &dyn Fn(&mut Tensors)| {
        let to = copy(name);
        let bytes = std::fs::read(to.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Tensors = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                (n, v.shape().to_vec(), data)
            })
            .collect();
        edit(&mut tensors);
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = raw
            .iter()
            .map(|(n, s, b)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect();
        std::fs::write(to.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        to
    };
    let extra = rewrite("extra", &|t| t.push(("transformer.h.9.attn.c_attn.weight".into(), vec![2], vec![0.0, 0.0])));
    fails(&["sample", "--checkpoint", &p(&extra)], "does not describe, e.g. transformer.h.9.attn.c_attn.weight");
    let nan = rewrite("nan", &|t| t[1].2[3] = f32::NAN);
    fails(&["eval", "--checkpoint", &p(&nan), "--data", &data], "holds NaN at index 3");
    let inf = rewrite("inf", &|t| t[0].2[0] = f32::INFINITY);
    fails(&["sample", "--checkpoint", &p(&inf)], "holds inf at index 0");
    let reshaped = rewrite("reshaped", &|t| {
        let (_, shape, data) = &mut t[0];
        data.truncate(data.len() / shape[0]);
        shape[0] = 1;
    });
    fails(&["sample", "--checkpoint", &p(&reshaped)], "has shape");
    // A model with no record of its training run still samples and evaluates
    // on given data; only --like-training needs the record.
    let bare = copy("bare");
    let mut cfg = json(&std::fs::read_to_string(bare.join("config.json")).unwrap());
    cfg["train"] = serde_json::json!({});
    std::fs::write(bare.join("config.json"), cfg.to_string()).unwrap();
    ok(&["sample", "--checkpoint", &p(&bare), "--max-new-tokens", "5"]);
    let report = json(&ok(&["eval", "--checkpoint", &p(&bare), "--data", &data, "--split", "all", "--json"]));
    assert!(report["metrics"]["tokens"].as_u64().unwrap() > 0, "{report}");
    fails(&["eval", "--checkpoint", &p(&bare), "--data", &data, "--like-training"], "does not record");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn memory_estimate_is_within_15_percent_of_a_30m_parameter_run() {
    let dir = scratch("memory");
    let data = corpus(&dir);
    let model = [
        "--preset",
        "tiny",
        "--tokenizer",
        "byte",
        "--n-layer",
        "6",
        "--n-embd",
        "640",
        "--n-head",
        "10",
        "--block-size",
        "64",
        "--batch-size",
        "4",
    ];
    let with = |extra: &[&str]| -> Vec<String> { model.iter().chain(extra).map(|s| s.to_string()).collect() };
    let mut info_args = vec!["info".to_string()];
    info_args.extend(with(&["--json"]));
    let info = json(&ok(&strs(&info_args)));
    let params = info["params"].as_f64().unwrap();
    assert!((29e6..31e6).contains(&params), "{params} parameters");
    let estimate = info["memory_bytes"]["none"]["total"].as_f64().unwrap() / (1024.0 * 1024.0);

    let out = p(&dir.join("run"));
    let mut train = vec!["train".to_string()];
    train.extend(with(&[
        "--data",
        &data,
        "--out",
        &out,
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
        "--sample-tokens",
        "0",
    ]));
    let stdout = ok(&strs(&train));
    let peak: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .and_then(|l| l.trim_end_matches(" MiB").parse().ok())
        .unwrap_or_else(|| panic!("no peak memory line: {stdout}"));
    assert!((peak - estimate).abs() <= 0.15 * peak, "estimate {estimate:.1} MiB vs peak {peak:.1} MiB");
}

#[test]
fn info_describes_presets_and_checkpoints() {
    let params = |preset: &str| json(&ok(&["info", "--preset", preset, "--json"]))["params"].as_f64().unwrap();
    // The Llama-style presets are sized like their GPT-2-style counterparts.
    for (gpt, llama) in [("shakespeare-char-cpu", "llama-tiny"), ("shakespeare-char", "llama-char")] {
        let (a, b) = (params(gpt), params(llama));
        assert!((a - b).abs() <= 0.02 * a, "{gpt} {a} vs {llama} {b}");
    }
    let gpt2 = params("gpt2-small");
    assert!((124e6..125e6).contains(&gpt2), "gpt2-small has {gpt2}");

    let dir = scratch("info-ck");
    let data = corpus(&dir);
    let run = p(&dir.join("run"));
    train("llama-tiny", &data, &run, &["--max-iters", "1", "--batch-size", "2", "--eval-iters", "1"]);
    let text = ok(&["info", "--checkpoint", &run]);
    assert!(text.contains("sharing 2 key/value heads") && text.contains("rope positions"), "{text}");
    assert!(text.contains("KV cache: 1024 bytes per token in bf16"), "{text}");
    // And the Llama-style checkpoint samples.
    let sample = ok(&["sample", "--checkpoint", &run, "--max-new-tokens", "30", "--prompt", "KING"]);
    assert_eq!(sample.trim_end_matches('\n').chars().count(), 30);
}

/// A corpus in the Dolly instruction format.
fn instruction_corpus(dir: &Path) -> String {
    let pairs = [
        ("Say hello.", "Hello there!"),
        ("Name a color.", "Blue is a color."),
        ("Count to three.", "One, two, three."),
    ];
    let mut text = String::new();
    for i in 0..300 {
        let (q, a) = pairs[(i * 7) % 3];
        text += &format!("### Instruction:\n{q}\n\n### Response:\n{a}\n\n");
    }
    let path = dir.join("instructions.txt");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_through_a_pipe() {
    let dir = scratch("chat");
    let data = instruction_corpus(&dir);
    let run = p(&dir.join("run"));
    train("tiny", &data, &run, &["--max-iters", "60", "--block-size", "64"]);
    let script = "Say hello.\n/set temperature 0\n/set bogus 1\nName a color.\n/reset\n/system\nCount to three.\n";
    let chat = || run_with_stdin(&["chat", "--checkpoint", &run, "--max-new-tokens", "20"], script);
    let (a, b) = (chat(), chat());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(stderr.contains("unknown setting 'bogus'"), "{stderr}");
    assert!(stderr.contains("conversation forgotten") && stderr.contains("no system prompt"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    // Three answers, each ending with a newline; the same seed, the same chat.
    assert!(a.stdout.iter().filter(|&&c| c == b'\n').count() >= 3);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn batch_and_speculative_sampling() {
    let dir = scratch("batch");
    let data = corpus(&dir);
    let (target, draft) = (p(&dir.join("target")), p(&dir.join("draft")));
    train("tiny", &data, &target, &["--max-iters", "40", "--n-embd", "48"]);
    train("tiny", &data, &draft, &["--max-iters", "40", "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]);

    // Many prompts together give what they give one after another.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "the king\n\nKING:\nwe will\n").unwrap();
    let batch = |extra: &[&str]| {
        let mut args =
            vec!["sample", "--checkpoint", &target, "--prompts", prompts.to_str().unwrap(), "--max-new-tokens", "45"];
        args.extend(extra);
        ok(&args)
    };
    let together = batch(&[]);
    assert_eq!(together, batch(&["--sequential"]));
    let lines: Vec<serde_json::Value> = together.lines().map(json).collect();
    assert_eq!(lines.len(), 3, "{together}");
    assert_eq!(lines[1]["prompt"], "KING:");
    assert_eq!(lines[2]["new_tokens"], 45);
    // A stop sequence cuts every completion at its first "e".
    for line in batch(&["--stop", "e"]).lines().map(json) {
        assert!(!line["completion"].as_str().unwrap().contains('e'), "{line}");
    }

    // Speculative decoding: greedy output equals the target's own.
    let greedy = |extra: &[&str]| {
        let mut args =
            vec!["sample", "--checkpoint", &target, "--prompt", "the", "--max-new-tokens", "60", "--temperature", "0"];
        args.extend(extra);
        ok(&args)
    };
    assert_eq!(greedy(&["--draft", &draft, "--draft-tokens", "3"]), greedy(&[]));
    fails(&["sample", "--checkpoint", &target, "--draft", &draft, "--draft-tokens", "40"], "draft tokens");
    fails(&["sample", "--checkpoint", &target, "--prompts", &p(&dir.join("none.txt"))], "cannot read prompts file");
}

/// Width and height of a PNG file, after checking its signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn eval_reproduces_the_training_log_and_plots_draw() {
    let dir = scratch("eval");
    let data = corpus(&dir);
    let run = dir.join("run");
    train("tiny", &data, &p(&run), &["--max-iters", "30", "--eval-interval", "10"]);

    // The training run's own evaluation, repeated from the best checkpoint,
    // gives exactly the logged numbers.
    let state = json(&std::fs::read_to_string(run.join("best/state.json")).unwrap());
    let step = state["step"].as_u64().unwrap();
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let logged = log.lines().map(json).find(|r| r["kind"] == "eval" && r["step"] == step).unwrap();
    let again = json(&ok(&["eval", "--checkpoint", &p(&run), "--like-training", "--json"]));
    assert_eq!(again["val_bpb"], logged["val_bpb"]);
    assert_eq!(again["val_loss"], logged["val_loss"]);

    // The whole validation split: every prediction once.
    let full = json(&ok(&["eval", "--checkpoint", &p(&run), "--json", "--attention", "--plot", &p(&dir.join("attn"))]));
    let m = &full["metrics"];
    let val_tokens = std::fs::read_to_string(&data).unwrap().chars().count()
        - (std::fs::read_to_string(&data).unwrap().chars().count() as f64 * 0.9) as usize;
    assert_eq!(m["tokens"].as_u64().unwrap() as usize, val_tokens - 1);
    let (loss, bpb) = (m["loss"].as_f64().unwrap(), m["bits_per_byte"].as_f64().unwrap());
    assert!((bpb - loss / std::f64::consts::LN_2).abs() < 1e-9, "ASCII: one byte per token");
    assert!(m["top1"].as_f64().unwrap() <= m["top5"].as_f64().unwrap());
    assert_eq!(full["attention"].as_array().unwrap().len(), 2 * 2, "2 layers x 2 heads");
    assert_eq!(png_size(&dir.join("attn.png")), (1200, 800));

    // Training curves of two runs, overlaid.
    let other = dir.join("other");
    train("tiny", &data, &p(&other), &["--max-iters", "20", "--seed", "2"]);
    let out =
        ok(&["plot", &p(&run), &p(&other), "--out", &p(&dir.join("curves")), "--width", "640", "--height", "480"]);
    assert!(out.contains("curves.svg") && out.contains("curves.png"), "{out}");
    assert_eq!(png_size(&dir.join("curves.png")), (640, 480));
    let svg = std::fs::read_to_string(dir.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("run val") && svg.contains("other val"));
    fails(&["plot", &p(&dir.join("nothing"))], "metrics.jsonl");
}

#[test]
fn tokenizer_train_encode_decode_stats_and_training_with_it() {
    let dir = scratch("tokenizer");
    let data = corpus(&dir);
    let tok = p(&dir.join("tok.json"));
    let out = ok(&["tokenizer", "train", "--vocab-size", "300", "--input", &data, "--out", &tok]);
    assert!(out.contains("byte-level BPE"), "{out}");
    // A standard tokenizer.json with our special tokens.
    let saved = json(&std::fs::read_to_string(&tok).unwrap());
    assert_eq!(saved["model"]["type"], "BPE");
    assert_eq!(saved["added_tokens"][0]["content"], "<|endoftext|>");
    assert_eq!(saved["added_tokens"][3]["content"], "<|assistant|>");
    let text = "the king shall speak, naïve 🦀";
    for t in [tok.as_str(), "gpt2", "cl100k_base", "o200k_base", "byte"] {
        let ids = ok(&["tokenizer", "encode", "-t", t, "--text", text]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut args = vec!["tokenizer", "decode", "-t", t];
        args.extend(&ids);
        assert_eq!(ok(&args), text, "{t}");
    }
    assert_eq!(ok(&["tokenizer", "encode", "-t", "gpt2", "--text", "Hello world"]).trim(), "15496 995");
    let stats = ok(&["tokenizer", "stats", "-t", &tok, &data]);
    let s = json(stats.lines().last().unwrap().trim_start_matches("stats: "));
    assert!(s["tokens_per_byte"].as_f64().unwrap() < 0.5, "merges compress the corpus: {stats}");

    // Training with it: the checkpoint carries the tokenizer.
    let run = dir.join("run");
    train("tiny", &data, &p(&run), &["--tokenizer", &tok, "--max-iters", "4", "--eval-interval", "2"]);
    let enc = |t: &str| ok(&["tokenizer", "encode", "-t", t, "--text", "the king"]);
    assert_eq!(enc(&p(&run)), enc(&tok));
    let sampled = ok(&["sample", "--checkpoint", &p(&run), "--prompt", "the king", "--max-new-tokens", "5"]);
    assert!(!sampled.is_empty());

    // Bad input.
    fails(&["tokenizer", "train", "--vocab-size", "100", "--input", &data], "at least 260");
    fails(&["tokenizer", "train", "--vocab-size", "300", "--input", "/nonexistent.txt"], "cannot read");
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    fails(&["tokenizer", "train", "--vocab-size", "300", "--input", &p(&latin1)], "not valid UTF-8");
    fails(&["tokenizer", "stats", "-t", "gpt2", &p(&latin1)], "not valid UTF-8");
    fails(&["tokenizer", "encode", "-t", "gpt5", "--text", "x"], "unknown tokenizer");
    fails(&["tokenizer", "decode", "-t", "gpt2", "50257"], "not a token id");
    fails(&["tokenizer", "encode", "-t", &data, "--text", "x"], "not a valid tokenizer.json");
    fails(&["train", "--preset", "tiny", "--data", &data, "--tokenizer", "bpe"], "tokenizer must be one of");
}

/// The byte tokenizer takes any bytes and gives the same bytes back: in
/// files, through encode/decode, and in training (one token per byte).
#[test]
fn the_byte_tokenizer_is_lossless() {
    let dir = scratch("bytes");
    let bytes: Vec<u8> = (0..6003u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert!(std::str::from_utf8(&bytes).is_err(), "the test needs bytes that are not UTF-8");
    let file = dir.join("bytes.bin");
    std::fs::write(&file, &bytes).unwrap();
    let ids = ok(&["tokenizer", "encode", "-t", "byte", &p(&file)]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), bytes.len());
    let mut args = vec!["tokenizer", "decode", "-t", "byte"];
    args.extend(ids.iter().copied());
    let out = ferrite(&args);
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes, "decode gives the bytes back");
    let ff = ferrite(&["tokenizer", "decode", "-t", "byte", "255", "254"]);
    assert_eq!(ff.stdout, vec![0xff, 0xfe]);
    let run = p(&dir.join("run"));
    let log = ok(&[
        "train",
        "--preset",
        "tiny",
        "--tokenizer",
        "byte",
        "--data",
        &p(&file),
        "--max-iters",
        "1",
        "--out",
        &run,
    ]);
    // 90% of 6003 tokens for training: one token per byte.
    assert!(log.contains("5402 train / 601 val tokens"), "{log}");
}

/// `(kind, step, loss)` of every record but the timings, for comparing runs.
fn records(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = r.as_object_mut().unwrap();
            o.remove("time_s");
            o.remove("tokens_per_s");
            r.to_string()
        })
        .collect()
}

/// Ctrl-C finishes the step, saves `last` and says how to resume; the
/// resumed run (after a killed save's leftovers and a torn metrics line)
/// reproduces an uninterrupted run bit for bit.
#[cfg(unix)]
#[test]
fn sigint_saves_and_the_resumed_run_matches_an_uninterrupted_one() {
    let dir = scratch("sigint");
    let data = corpus(&dir);
    // A schedule that does not depend on max_iters, so runs of any length agree.
    let cfg = [
        "--preset",
        "tiny",
        "--sample-tokens",
        "0",
        "--lr-decay-iters",
        "5000",
        "--eval-interval",
        "100",
        "--log-interval",
        "1",
    ];
    let run = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["train", "--data", &data, "--out", &p(&run), "--max-iters", "1000000"])
        .args(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (boundedly) until it has trained a few steps.
    let metrics = run.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 30 {
        assert!(t0.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: saved") && stderr.contains("--resume"), "{stderr}");
    let state = json(&std::fs::read_to_string(run.join("last/state.json")).unwrap());
    let stopped = state["step"].as_u64().unwrap();
    assert!(stopped >= 29, "saved at step {stopped}");
    // A save killed midway leaves a temporary directory; a run killed
    // between its log and its checkpoint leaves later steps and half a line.
    std::fs::create_dir_all(run.join(".last.tmp-4242424")).unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).open(&metrics).unwrap();
    use std::io::Write;
    write!(log, "{{\"kind\": \"train\", \"step\": {}, \"loss\": 1.0}}\n{{\"kind\": \"tr", stopped + 1).unwrap();
    drop(log);
    let until = (stopped + 20).to_string();
    let resumed = ok(&["train", "--resume", &p(&run), "--max-iters", &until]);
    assert!(resumed.contains(&format!("resuming at step {stopped} from")), "{resumed}");
    assert!(!run.join(".last.tmp-4242424").exists(), "the leftover was not cleaned up");
    let whole = dir.join("whole");
    train("tiny", &data, &p(&whole), &[&cfg[4..], &["--max-iters", &until]].concat());
    assert_eq!(records(&run), records(&whole));
}

/// Resuming picks the newest complete checkpoint, whatever its name.
#[test]
fn resume_takes_the_newest_complete_checkpoint() {
    let dir = scratch("newest");
    let data = corpus(&dir);
    let run = dir.join("run");
    train("tiny", &data, &p(&run), &["--max-iters", "20", "--eval-interval", "10"]);
    // An interrupted save: `last` was moved aside and never replaced, and
    // `best` is older.
    std::fs::rename(run.join("last"), run.join("last.old")).unwrap();
    let best_state = run.join("best/state.json");
    let mut s = json(&std::fs::read_to_string(&best_state).unwrap());
    s["step"] = 10.into();
    std::fs::write(&best_state, s.to_string()).unwrap();
    let out = ok(&["train", "--resume", &p(&run), "--max-iters", "25"]);
    assert!(out.contains("resuming at step 20 from") && out.contains("last.old"), "{out}");
    // A complete `last` wins over a `best` left by an older, longer run.
    s["step"] = 5000.into();
    std::fs::write(&best_state, s.to_string()).unwrap();
    let out = ok(&["train", "--resume", &p(&run), "--max-iters", "30"]);
    assert!(out.contains("resuming at step 25 from") && out.contains("/last"), "{out}");
}

/// A loss that stops being a number stops the run before the update (or
/// skips it), and never reaches a checkpoint.
#[test]
fn a_non_finite_step_stops_or_is_skipped() {
    let dir = scratch("nonfinite");
    let data = corpus(&dir);
    let run = p(&dir.join("run"));
    let args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        &data,
        "--out",
        &run,
        "--lr",
        "1e30",
        "--warmup-iters",
        "0",
        "--eval-interval",
        "1",
        "--max-iters",
        "30",
    ];
    fails(&args, "stopped before the update");
    // Whatever was saved loads: no checkpoint holds NaN or inf.
    if dir.join("run/last").exists() {
        ok(&["sample", "--checkpoint", &p(&dir.join("run/last")), "--max-new-tokens", "3"]);
    }
    let skip = p(&dir.join("skip"));
    let args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        &data,
        "--out",
        &skip,
        "--lr",
        "1e30",
        "--warmup-iters",
        "0",
        "--max-iters",
        "10",
        "--on-nonfinite",
        "skip",
        "--sample-tokens",
        "0",
    ];
    let out = ferrite(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped the update"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}

/// Every command reports a failed write to stdout (a full disk, a closed
/// descriptor) as a one-line error with a non-zero exit, never a panic or a
/// silent success.
#[cfg(unix)]
#[test]
fn output_failures_are_errors() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("stdout");
    let data = corpus(&dir);
    let run = p(&dir.join("run"));
    train("tiny", &data, &run, &["--max-iters", "4", "--eval-interval", "2"]);
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "the\nking\n").unwrap();
    let (out1, out2) = (p(&dir.join("t1")), p(&dir.join("t2")));
    let commands: Vec<Vec<&str>> = vec![
        vec!["info", "--preset", "tiny"],
        vec!["info", "--checkpoint", &run, "--json"],
        vec!["tokenizer", "encode", "-t", "gpt2", "--text", "hello"],
        vec!["tokenizer", "decode", "-t", "gpt2", "15496"],
        vec!["tokenizer", "stats", "-t", "byte", &data],
        vec!["eval", "--checkpoint", &run, "--data", &data],
        vec!["sample", "--checkpoint", &run, "--max-new-tokens", "5"],
        vec!["sample", "--checkpoint", &run, "--prompts", prompts.to_str().unwrap(), "--max-new-tokens", "3"],
        vec!["bench", "--preset", "tiny", "--steps", "1", "--warmup", "0"],
        vec!["train", "--preset", "tiny", "--data", &data, "--max-iters", "2", "--out", &out1],
        vec!["data", "prepare", "--input", &data, "-t", "byte", "--out", &out2],
        vec!["plot", &run, "--out", &out1],
    ];
    let check = |args: &[&str], out: &std::process::Output, how: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} with {how} succeeded: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} with {how} panicked: {stderr}");
        assert!(stderr.lines().last().is_some_and(|l| l.starts_with("error")), "{args:?} with {how}: {stderr}");
    };
    for args in &commands {
        let _ = std::fs::remove_dir_all(&out2);
        let full = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(args)
            .stdout(std::fs::File::options().write(true).open("/dev/full").unwrap())
            .output()
            .unwrap();
        check(args, &full, "stdout on /dev/full");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.args(args);
        // SAFETY: only close(2) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::close(1);
                Ok(())
            });
        }
        let closed = cmd.stderr(std::process::Stdio::piped()).output().unwrap();
        check(args, &closed, "stdout closed");
    }
}

/// Sizes that cannot fit are refused in one line, before anything is
/// allocated, for every size option of every command that takes them.
#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = scratch("sizes");
    let data = corpus(&dir);
    let out = p(&dir.join("run"));
    let sizes = [
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "n_kv_head",
        "mlp_hidden",
        "batch_size",
        "grad_accum",
        "eval_iters",
    ];
    for key in sizes {
        let flag = format!("--{}", key.replace('_', "-"));
        for value in ["1000000000000", "1000000", "60000"] {
            // "60000" fits the bounds for some keys: then the memory check must catch it.
            if key == "n_head"
                || key == "n_kv_head"
                || (value == "60000" && !["n_layer", "n_embd", "block_size"].contains(&key))
            {
                continue;
            }
            let train = ["train", "--preset", "tiny", "--data", &data, "--out", &out, &flag, value];
            fails(&train, "");
            fails(&["bench", "--preset", "tiny", "--steps", "1", &flag, value], "");
        }
        fails(&["info", "--preset", "tiny", &flag, "1000000000000"], "");
    }
    fails(&["bench", "--preset", "tiny", "--vocab-size", "1000000000000"], "vocab_size");
    fails(&["train", "--preset", "tiny", "--data", &data, "--n-head", "1000000000000"], "divisible");
    fails(&["train", "--preset", "tiny", "--data", &data, "--n-kv-head", "1000000000000"], "n_kv_head");
    // What fits the bounds but not the machine names what it needs.
    fails(
        &["train", "--preset", "tiny", "--data", &data, "--batch-size", "100000", "--block-size", "2048"],
        "GiB available",
    );
    let run = p(&dir.join("ok"));
    train("tiny", &data, &run, &["--max-iters", "2"]);
    fails(&["eval", "--checkpoint", &run, "--data", &data, "--batch-size", "100000000"], "at most 1048576");
    fails(&["eval", "--checkpoint", &run, "--data", &data, "--batch-size", "1000000"], "GiB available");
}

/// `ferrite chat` works with a character-level model (whose vocabulary has
/// no `#` for Dolly's template): it picks a template the model can write,
/// says which, and a message it cannot write fails a script.
#[test]
fn chat_works_with_a_character_model() {
    let dir = scratch("chat-char");
    let data = corpus(&dir);
    let run = p(&dir.join("run"));
    train("tiny", &data, &run, &["--max-iters", "20"]);
    let out = run_with_stdin(&["chat", "--checkpoint", &run, "--max-new-tokens", "10"], "the king\nshall we\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("chat template: none"), "{stderr}");
    assert!(out.stdout.iter().filter(|&&c| c == b'\n').count() >= 2);
    let bad = run_with_stdin(&["chat", "--checkpoint", &run], "what? #1\n");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("is not in this model's vocabulary"), "{stderr}");
    let dolly = run_with_stdin(&["chat", "--checkpoint", &run, "--template", "dolly"], "the\n");
    assert!(!dolly.status.success() && String::from_utf8_lossy(&dolly.stderr).contains("cannot write the dolly"));
    let unknown = run_with_stdin(&["chat", "--checkpoint", &run, "--template", "alpaca"], "the\n");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown chat template 'alpaca'"));
}

/// An endless stdin is an error, not a hang or an exhausted memory.
#[cfg(unix)]
#[test]
fn endless_stdin_is_an_error() {
    let dir = scratch("endless");
    let run = p(&dir.join("run"));
    train("tiny", &corpus(&dir), &run, &["--max-iters", "2"]);
    for args in [vec!["chat", "--checkpoint", &run], vec!["tokenizer", "decode", "-t", "byte"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(&args)
            .stdin(std::fs::File::open("/dev/zero").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The dtype of every tensor in a safetensors file's header.
fn stored_dtypes(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let obj = header.as_object().unwrap();
    obj.iter().filter(|(k, _)| *k != "__metadata__").map(|(_, v)| v["dtype"].as_str().unwrap().to_string()).collect()
}

#[test]
fn bf16_training_resumes_exactly_and_converts_to_a_half_size_checkpoint() {
    let dir = scratch("bf16");
    let data = corpus(&dir);
    let (full, part) = (dir.join("full"), dir.join("part"));
    let args = ["--dtype", "bf16", "--eval-interval", "10", "--log-interval", "1", "--lr-decay-iters", "20"];
    let run = |out: &Path, iters: &str| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--max-iters", iters]);
        train("tiny", &data, &p(out), &a)
    };
    run(&full, "20");
    run(&part, "10");
    ok(&["train", "--resume", &p(&part), "--max-iters", "20", "--sample-tokens", "0"]);
    let (a, b) = (train_losses(&full), train_losses(&part));
    assert_eq!(a.len(), 20);
    assert_eq!(a, b, "a resumed bf16 run diverged from the uninterrupted one");
    assert!(a[19].1 < a[0].1, "bf16 training did not learn: {a:?}");
    // Master weights stay f32 in training checkpoints.
    assert!(stored_dtypes(&full.join("last/model.safetensors")).iter().all(|d| d == "F32"));
    // The run's own (bf16) evaluation, repeated, gives the logged numbers.
    let state = json(&std::fs::read_to_string(full.join("best/state.json")).unwrap());
    let log = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let logged = log.lines().map(json).find(|r| r["kind"] == "eval" && r["step"] == state["step"]).unwrap();
    let again = json(&ok(&["eval", "--checkpoint", &p(&full), "--like-training", "--json"]));
    assert_eq!(again["val_loss"], logged["val_loss"]);

    let half = dir.join("half");
    ok(&["convert", &p(&full), &p(&half), "--dtype", "bf16"]);
    assert!(stored_dtypes(&half.join("model.safetensors")).iter().all(|d| d == "BF16"));
    let size = |f: &Path| std::fs::metadata(f).unwrap().len() as f64;
    let ratio = size(&half.join("model.safetensors")) / size(&full.join("best/model.safetensors"));
    assert!((0.49..0.52).contains(&ratio), "bf16 checkpoint is {ratio} of the f32 one");
    assert!(!half.join("optimizer.safetensors").exists());
    // The converted checkpoint samples and evaluates, in bf16 or widened to f32.
    for dtype in ["bf16", "f32"] {
        let text = ok(&["sample", "--checkpoint", &p(&half), "--max-new-tokens", "30", "--dtype", dtype]);
        assert_eq!(text.trim_end_matches('\n').chars().count(), 30);
        let eval = ok(&["eval", "--checkpoint", &p(&half), "--data", &data, "--dtype", dtype, "--json"]);
        assert!(json(&eval)["metrics"]["loss"].as_f64().unwrap().is_finite(), "{eval}");
    }
    // f16 too, and a KV cache in f32 as well as the default bf16.
    let f16 = dir.join("f16");
    ok(&["convert", &p(&full), &p(&f16), "--dtype", "f16"]);
    assert!(stored_dtypes(&f16.join("model.safetensors")).iter().all(|d| d == "F16"));
    ok(&["sample", "--checkpoint", &p(&f16), "--max-new-tokens", "10", "--kv-dtype", "f32"]);

    fails(&["convert", &p(&full), &p(&half), "--dtype", "bf16"], "already exists");
    fails(&["convert", &p(&full), &p(&dir.join("x")), "--dtype", "int3"], "valid: f32, bf16, f16");
    fails(&["train", "--preset", "tiny", "--data", &data, "--dtype", "f16"], "f32 or bf16");
    fails(&["sample", "--checkpoint", &p(&half), "--kv-dtype", "f16"], "f32 or bf16");
}

#[test]
fn epochs_count_passes_over_the_training_tokens() {
    let dir = scratch("epochs");
    let data = corpus(&dir);
    let train_tokens = (std::fs::read_to_string(&data).unwrap().chars().count() as f64 * 0.9) as usize;
    let out = dir.join("run");
    // tiny: batch 4 x block 32 = 128 tokens a step.
    let log = train("tiny", &data, &p(&out), &["--epochs", "0.5", "--eval-interval", "1000", "--eval-iters", "1"]);
    let want = (0.5 * train_tokens as f64 / 128.0).ceil() as usize;
    let done = log.lines().find(|l| l.starts_with("done: step ")).unwrap_or_else(|| panic!("{log}"));
    let step: usize = done["done: step ".len()..].split(',').next().unwrap().parse().unwrap();
    assert!(step.abs_diff(want) <= 1, "{done}: expected about {want} steps");
    // Both budgets at once are refused.
    fails(
        &["train", "--preset", "dolly", "--dataset", &p(&dir), "--tokens", "1M", "--epochs", "2"],
        "tokens or epochs",
    );
}
