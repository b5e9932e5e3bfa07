//! End to end: `ferrite data prepare` from text, folders, globs, JSONL,
//! parquet and Dolly records → shards → `ferrite train --dataset`, and a
//! clear error (with nothing left behind) for each kind of bad input.

mod common;

use common::{fails, json, ok, p, scratch, write_parquet};
use std::path::Path;

/// `n` short made-up documents.
fn documents(n: usize, seed: u64) -> Vec<String> {
    let words =
        ["the", "king", "shall", "speak", "and", "we", "will", "hear", "thee", "now", "good", "lord", "café", "🦀"];
    let mut state = seed;
    (0..n)
        .map(|_| {
            (0..12)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    words[(state >> 33) as usize % words.len()]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A parquet file with a `text` column (some nulls) and an integer `id` column.
fn prepare(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["data", "prepare"];
    all.extend(args);
    let out = ok(&all);
    json(out.lines().last().unwrap().trim_start_matches("stats: "))
}

fn manifest(dir: &Path) -> serde_json::Value {
    json(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
}

#[test]
fn prepare_every_input_kind_and_train_on_it() {
    let dir = scratch("prepare");
    let docs = documents(400, 1);
    // JSONL with a chosen field.
    let jsonl = dir.join("docs.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({"body": d, "n": 1}).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let from_jsonl = dir.join("ds-jsonl");
    let stats = prepare(&["--input", &p(&jsonl), "--field", "body", "--out", &p(&from_jsonl), "--val-fraction", "0.1"]);
    assert!(stats["tokens"].as_u64().unwrap() > 400 * 12);
    let m = manifest(&from_jsonl);
    assert_eq!(m["dtype"], "u16");
    assert_eq!(m["tokenizer"]["name"], "gpt2");
    assert_eq!(m["train"]["documents"].as_u64().unwrap() + m["val"]["documents"].as_u64().unwrap(), 400);
    assert!(m["val"]["documents"].as_u64().unwrap() > 10, "{m}");
    assert_eq!(m["sources"][0]["sha256"].as_str().unwrap().len(), 64);

    // The same documents as a folder of text files, reversed, in small shards:
    // the split is by document, not by order or sharding.
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    for (i, d) in docs.iter().rev().enumerate() {
        std::fs::write(folder.join(format!("{i:04}.txt")), d).unwrap();
    }
    let from_folder = dir.join("ds-folder");
    prepare(&["--input", &p(&folder), "--out", &p(&from_folder), "--val-fraction", "0.1", "--shard-tokens", "1000"]);
    let f = manifest(&from_folder);
    for split in ["train", "val"] {
        assert_eq!(f[split]["documents"], m[split]["documents"]);
        assert_eq!(f[split]["tokens"], m[split]["tokens"]);
    }
    assert!(f["train"]["shards"].as_array().unwrap().len() > 5);
    let train_bytes: u64 = std::fs::read_dir(&from_folder)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().starts_with("train_"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(train_bytes, 2 * f["train"]["tokens"].as_u64().unwrap());

    // Parquet shards through a glob; the same split again.
    for (i, chunk) in docs.chunks(200).enumerate() {
        write_parquet(&dir.join(format!("part-{i}.parquet")), chunk);
    }
    let from_parquet = dir.join("ds-parquet");
    prepare(&["--input", &format!("{}/part-*.parquet", p(&dir)), "--out", &p(&from_parquet), "--val-fraction", "0.1"]);
    let q = manifest(&from_parquet);
    assert_eq!(q["train"]["tokens"], m["train"]["tokens"]);
    assert_eq!(q["sources"].as_array().unwrap().len(), 2);

    // Train on it by token budget, resume, evaluate.
    let run = dir.join("run");
    let budget = ["--dataset", &p(&from_parquet), "--out", &p(&run), "--tokens", "2K", "--eval-interval", "8"];
    let mut args = vec!["train", "--preset", "tiny", "--sample-tokens", "0"];
    args.extend(budget);
    let out = ok(&args);
    assert!(out.contains("16 iterations of 128 tokens"), "{out}");
    let resumed =
        ok(&["train", "--resume", &p(&run), "--max-iters", "20", "--lr-decay-iters", "20", "--sample-tokens", "0"]);
    assert!(resumed.contains("done: step 20"), "{resumed}");
    let eval = ok(&["eval", "--checkpoint", &p(&run), "--json"]);
    assert!(json(&eval)["metrics"]["loss"].as_f64().unwrap() > 0.0);
    // A replaced dataset needs --force.
    fails(&["data", "prepare", "--input", &p(&jsonl), "--field", "body", "--out", &p(&from_jsonl)], "--force");
    prepare(&["--input", &p(&jsonl), "--field", "body", "--out", &p(&from_jsonl), "--force", "-t", "o200k_base"]);
    assert_eq!(manifest(&from_jsonl)["dtype"], "u32");
}

#[test]
fn dolly_records_train_only_on_responses() {
    let dir = scratch("dolly");
    let records: Vec<String> = (0..300)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Name thing number {i}."),
                "context": if i % 3 == 0 { "Some context." } else { "" },
                "response": format!("Thing {i} is a lord."),
                "category": "open_qa",
            })
            .to_string()
        })
        .collect();
    let file = dir.join("dolly.jsonl");
    std::fs::write(&file, records.join("\n")).unwrap();
    let out = dir.join("ds");
    prepare(&["--input", &p(&file), "--format", "dolly", "--out", &p(&out), "--val-fraction", "0.2"]);
    let m = manifest(&out);
    let shard = &m["train"]["shards"][0];
    let mask = std::fs::read(out.join(shard["mask"].as_str().unwrap())).unwrap();
    let tokens = std::fs::read(out.join(shard["file"].as_str().unwrap())).unwrap();
    assert_eq!(mask.len() * 2, tokens.len());
    let trained = mask.iter().filter(|&&b| b == 1).count();
    assert!(trained > 0 && trained < mask.len() / 2, "prompts are masked: {trained} of {}", mask.len());
    let run = dir.join("run");
    let out = ok(&[
        "train",
        "--preset",
        "tiny",
        "--dataset",
        &p(&out),
        "--out",
        &p(&run),
        "--max-iters",
        "4",
        "--sample-tokens",
        "0",
    ]);
    assert!(out.contains("done: step 4"), "{out}");
}

#[test]
fn bad_inputs_are_clear_errors_and_leave_nothing_behind() {
    let dir = scratch("prepare-bad");
    let out = dir.join("ds");
    let out_s = p(&out);
    let run = |input: &Path, extra: &[&str], needle: &str| {
        let input_s = p(input);
        let mut args = vec!["data", "prepare", "--input", &input_s, "--out", &out_s];
        args.extend(extra);
        fails(&args, needle);
        assert!(!out.exists(), "a failed run left {}", out.display());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().unwrap().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "temporary output left behind");
    };
    let jsonl = dir.join("a.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n").unwrap();
    run(&jsonl, &[], "no field \"text\"");
    std::fs::write(&jsonl, "{\"text\": 42}\n").unwrap();
    run(&jsonl, &[], "is a number, not a string");
    let pq = dir.join("a.parquet");
    write_parquet(&pq, &documents(50, 2));
    run(&pq, &["--column", "id"], "not a text");
    run(&pq, &["--column", "body"], "has no column \"body\"");
    let bytes = std::fs::read(&pq).unwrap();
    std::fs::write(&pq, &bytes[..bytes.len() / 2]).unwrap();
    run(&pq, &[], "parquet");
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    run(&latin1, &[], "not valid UTF-8");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    run(&empty, &[], "is empty");
    let blank = dir.join("blank.txt");
    std::fs::write(&blank, "\n\n\n").unwrap();
    run(&blank, &["--format", "lines"], "no documents");
    let text = dir.join("ok.txt");
    std::fs::write(&text, "hello there").unwrap();
    run(&text, &["-t", "o200k_base", "--dtype", "u16"], "too many for u16");
    run(&text, &["-t", "char"], "fixed vocabulary");
    run(&dir.join("missing.txt"), &[], "does not exist");
    run(&text, &["--val-fraction", "1.5"], "--val-fraction");
    fails(&["train", "--preset", "tiny", "--dataset", &p(&dir)], "not a prepared dataset");
}

/// Data that lies: a shard of random bytes under an intact manifest, and
/// inputs that never end.
#[test]
fn corrupt_shards_and_endless_inputs_are_clear_errors() {
    let dir = scratch("lying-data");
    let jsonl = dir.join("docs.jsonl");
    let lines: Vec<String> = documents(200, 3).iter().map(|d| serde_json::json!({"text": d}).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let ds = dir.join("ds");
    prepare(&["--input", &p(&jsonl), "--out", &p(&ds), "--val-fraction", "0.2"]);
    let m = manifest(&ds);
    let shard = ds.join(m["train"]["shards"][0]["file"].as_str().unwrap());
    let len = std::fs::metadata(&shard).unwrap().len() as usize;
    // u16 tokens of 0xffff: outside GPT-2's 50257, everywhere.
    std::fs::write(&shard, vec![0xffu8; len]).unwrap();
    let args = ["train", "--preset", "tiny", "--dataset", &p(&ds), "--max-iters", "3", "--out", &p(&dir.join("run"))];
    fails(&args, "outside the tokenizer's 50257 tokens");
    fails(&["eval", "--checkpoint", &p(&dir.join("none")), "--data", &p(&ds)], "does not exist");
    #[cfg(unix)]
    {
        fails(
            &["data", "prepare", "--input", "/dev/zero", "-t", "byte", "--out", &p(&dir.join("z"))],
            "not a regular file",
        );
        fails(&["train", "--preset", "tiny", "--data", "/dev/zero"], "not a regular file");
        fails(&["tokenizer", "encode", "-t", "byte", "/dev/urandom"], "not a regular file");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            fails(&["train", "--preset", "tiny", "--data", &p(&fifo)], "not a regular file");
        }
    }
}

#[test]
fn chat_conversations_train_and_the_checkpoint_keeps_their_template() {
    let dir = scratch("chat-data");
    // Synthetic facts as multi-turn conversations.
    let places = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Peru", "Lima"), ("Chad", "Ndjamena")];
    let mut lines = String::new();
    for i in 0..200 {
        let (a, b) = (places[i % 5], places[(i / 5) % 5]);
        let conv = serde_json::json!({"messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": format!("What is the capital of {}?", a.0)},
            {"role": "assistant", "content": format!("{}.", a.1)},
            {"role": "user", "content": format!("And of {}?", b.0)},
            {"role": "assistant", "content": format!("{}.", b.1)},
        ]});
        lines += &format!("{conv}\n");
    }
    let data = dir.join("chat.jsonl");
    std::fs::write(&data, &lines).unwrap();
    // A tokenizer of our own has the <|system|>/<|user|>/<|assistant|> tokens: the `special` template.
    let tok = dir.join("tok.json");
    ok(&["tokenizer", "train", "--vocab-size", "300", "--input", &p(&data), "--out", &p(&tok)]);
    let ds = dir.join("ds");
    prepare(&["--input", &p(&data), "--format", "chat", "-t", &p(&tok), "--val-fraction", "0.3", "--out", &p(&ds)]);
    let m = manifest(&ds);
    assert_eq!(m["chat_template"]["user"], "<|user|>\n{content}\n", "{m}");
    assert_eq!(m["options"]["masks"], true);
    let run = dir.join("run");
    let args =
        ["--dataset", &p(&ds), "--max-iters", "3", "--block-size", "32", "--eval-iters", "1", "--sample-tokens", "0"];
    let mut train = vec!["train", "--preset", "tiny", "--out", run.to_str().unwrap()];
    train.extend(args);
    ok(&train);
    let saved = json(&std::fs::read_to_string(run.join("best/config.json")).unwrap());
    assert_eq!(saved["chat_template"], m["chat_template"]);
    // `ferrite chat` takes it by itself.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["chat", "--checkpoint", run.to_str().unwrap(), "--max-new-tokens", "3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"What is the capital of Peru?\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("chat template: the checkpoint's own"), "{stderr}");
    // The dolly template where the tokenizer has no such tokens; bad records are one-line errors.
    prepare(&["--input", &p(&data), "--format", "chat", "-t", "gpt2", "--out", &p(&dir.join("ds2"))]);
    let m = manifest(&dir.join("ds2"));
    assert_eq!(m["chat_template"]["user"], "### Instruction:\n{content}\n\n");
    std::fs::write(&data, "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}\n").unwrap();
    let bad = dir.join("ds3");
    fails(&["data", "prepare", "--input", &p(&data), "--format", "chat", "--out", &p(&bad)], "role \"robot\"");
    assert!(!bad.exists());
}

#[test]
fn chat_fine_tuning_answers_held_out_phrasings() {
    // scripts/sft_facts.py, smaller: 30 invented facts (chance: 1 in 30).
    let dir = scratch("sft-facts");
    let syllables = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "pe", "zo", "qu", "ba", "ri", "fe", "go"];
    let mut state = 11u64;
    let mut name = |n: usize| {
        let mut s = String::new();
        for _ in 0..n {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s += syllables[(state >> 33) as usize % syllables.len()];
        }
        s[..1].to_uppercase() + &s[1..]
    };
    let mut facts: Vec<(String, String)> = Vec::new();
    while facts.len() < 30 {
        let (c, cap) = (name(3), name(2));
        if !facts.iter().any(|f| f.0 == c) {
            facts.push((c, cap));
        }
    }
    let mut lines = String::new();
    for (c, cap) in &facts {
        for q in [format!("What is the capital of {c}?"), format!("Tell me the capital of {c}.")] {
            let conv = serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": format!("{cap}.")}]});
            lines += &format!("{conv}\n");
        }
    }
    let data = dir.join("chat.jsonl");
    std::fs::write(&data, &lines).unwrap();
    let (tok, base, ds, sft) = (dir.join("tok.json"), dir.join("base"), dir.join("ds"), dir.join("sft"));
    ok(&["tokenizer", "train", "--vocab-size", "400", "--input", &p(&data), "--out", &p(&tok)]);
    // A base on the built-in tiny Shakespeare, then full fine-tuning on the conversations.
    let quiet = ["--eval-iters", "5", "--sample-tokens", "0"];
    let mut args = vec!["train", "--preset", "shakespeare-char-cpu", "--tokenizer", tok.to_str().unwrap()];
    args.extend(["--max-iters", "200", "--eval-interval", "200", "--out", base.to_str().unwrap()]);
    args.extend(quiet);
    ok(&args);
    prepare(&["--input", &p(&data), "--format", "chat", "-t", &p(&tok), "--val-fraction", "0.3", "--out", &p(&ds)]);
    let mut args = vec!["train", "--init-from", base.to_str().unwrap(), "--dataset", ds.to_str().unwrap()];
    args.extend(["--max-iters", "400", "--learning-rate", "1e-3", "--warmup-iters", "20", "--eval-interval", "400"]);
    args.extend(["--batch-size", "12", "--out", sft.to_str().unwrap()]);
    args.extend(quiet);
    ok(&args);
    // The same fine-tuning with LoRA: the base frozen, rank-16 adapters on
    // every projection. Facts are harder to learn through adapters over
    // frozen embeddings: it takes more steps (1,500 here; at 400, 1/30).
    let lora = dir.join("lora");
    let mut args = vec!["train", "--init-from", base.to_str().unwrap(), "--dataset", ds.to_str().unwrap()];
    args.extend(["--lora-rank", "16", "--lora-alpha", "32", "--lora-targets", "q,k,v,o,up,down"]);
    args.extend(["--max-iters", "1500", "--learning-rate", "3e-3", "--warmup-iters", "20", "--eval-interval", "1500"]);
    args.extend(["--batch-size", "12", "--out", lora.to_str().unwrap()]);
    args.extend(quiet);
    ok(&args);
    // Greedy answers to a phrasing never trained on.
    let prompts: String = facts
        .iter()
        .map(|(c, _)| {
            let prompt = format!("<|user|>\nWhich city is the capital of {c}?\n<|assistant|>\n");
            format!("{}\n", serde_json::json!({ "prompt": prompt }))
        })
        .collect();
    std::fs::write(dir.join("held.jsonl"), prompts).unwrap();
    let right = |run: &Path| {
        let out = ok(&[
            "sample",
            "--checkpoint",
            &p(run),
            "--prompts",
            &p(&dir.join("held.jsonl")),
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ]);
        let answers: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| json(l)["completion"].as_str().unwrap().to_string())
            .collect();
        let right = answers.iter().zip(&facts).filter(|(a, f)| a.trim().starts_with(f.1.as_str())).count();
        (right, answers)
    };
    // Full fine-tuning: 26/30 here (some facts fall wholly in the validation
    // split); LoRA 21/30 (10 to 21 over the settings tried). Chance is 1.
    let (full, answers) = right(&sft);
    assert!(full >= 15, "full fine-tuning: {full}/30 held-out answers right: {answers:?}");
    let (adapted, answers) = right(&lora);
    eprintln!("held-out answers right: full fine-tuning {full}/30, LoRA {adapted}/30");
    assert!(adapted >= 8, "LoRA: {adapted}/30 held-out answers right: {answers:?}");
}
