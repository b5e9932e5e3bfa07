//! `ferrite explain`: the walkthrough of one forward and backward pass, as
//! text and as a page a real browser opens with no network.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// The number after `label` on the line starting with it.
fn number_after(out: &str, label: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in {out}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn it_prints_every_layer_the_attention_the_loss_and_the_gradients() {
    let out = ok(&["explain", "--text", "to be or not to be", "--seed", "3"]);
    for needle in [
        "FORWARD",
        "embedding",
        "block 0",
        "block 1",
        "ln_1",
        "qkv",
        "x + mlp",
        "attention of head 0",
        "logits",
        "BACKWARD",
        "transformer.wte.weight",
        "all parameters",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    // 18 characters: 17 predictions over a vocabulary of 7; at initialisation
    // the loss is close to a uniform guess's ln 7.
    assert!(out.contains("18 tokens, 17 predictions"), "{out}");
    let loss = number_after(&out, "loss");
    assert!((loss - 7f64.ln()).abs() < 0.2, "{loss}");
    // The first query attends only to itself: 100% of its row.
    let row = out.lines().find(|l| l.trim_start().starts_with("t ") && l.contains("100")).expect("first query row");
    assert_eq!(row.split_whitespace().count(), 2, "{row}");
    // The same seed, the same numbers.
    assert_eq!(out, ok(&["explain", "--text", "to be or not to be", "--seed", "3"]));
}

#[test]
fn it_explains_a_checkpoint_in_its_own_tokenizer() {
    let dir = scratch("explain-ckpt");
    let cfg = ferrite::model::ModelConfig::gpt2(40, 32, 1, 2, 8);
    let tok = ferrite::data::Tokenizer::char_from_corpus("abcdefghijklmnopqrstuvwxyz .,;:!?'\n-ABCD");
    let ck = native_checkpoint(&dir.join("ck"), cfg, tok, 5, 1.0);
    let out = ok(&["explain", "--checkpoint", &p(&ck), "--text", "a bad cab", "--head", "1", "--values", "2"]);
    assert!(out.contains("the checkpoint") && out.contains("attention of head 1"), "{out}");
    assert!(out.contains("block 0") && !out.contains("block 1"), "{out}");
    fails(&["explain", "--checkpoint", &p(&ck), "--text", &"a".repeat(40)], "at most 32");
}

#[test]
fn bad_requests_are_one_line_errors() {
    fails(&["explain", "--head", "2"], "heads 0 to 1");
    fails(&["explain", "--text", "a"], "at least 2 tokens");
    fails(&["explain", "--values", "0"], "--values");
    fails(&["explain", "--checkpoint", "/nonexistent/ferrite-ckpt"], "nonexistent");
    fails(&["explain", "--html", "/dev/null/page.html"], "cannot write");
}

/// The page opens in headless Chromium with the network shut off: no
/// console errors, nothing fetched (skipped without Chromium, chromedriver
/// and Selenium; CI installs them).
#[test]
fn the_page_is_self_contained_in_a_real_browser() {
    let dir = scratch("explain-html");
    let page = dir.join("explain.html");
    ok(&["explain", "--html", &p(&page)]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("Block 1") && html.contains("<svg"), "{html}");
    assert!(!html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"));
    let has = Command::new("python3").args(["-c", "import selenium"]).status().is_ok_and(|s| s.success())
        && ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().any(|p| Path::new(p).exists())
        && Path::new("/usr/bin/chromedriver").exists();
    if !has {
        eprintln!("skipped: install chromium, chromium-driver and selenium to run scripts/check_explain_page.py");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_explain_page.py");
    let shot = dir.join("explain.png");
    let out = Command::new("python3")
        .args([script, "--page", &p(&page), "--blocks", "2", "--shot", &p(&shot)])
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(shot.exists(), "no screenshot: {log}");
}
