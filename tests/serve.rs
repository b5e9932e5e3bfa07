//! `ferrite serve` end to end, over real HTTP on loopback: the OpenAI
//! shapes, batching that changes no answer, errors with the right status,
//! disconnects that free their slot, and garbage that never stops it.

mod common;

use common::{ok, p, scratch};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A tiny model with a 256-token context, trained a few steps.
fn model(dir: &Path) -> String {
    model_with(dir, &[])
}

/// [`model`] with more training options (a bigger model decodes slower).
fn model_with(dir: &Path, extra: &[&str]) -> String {
    let data = dir.join("corpus.txt");
    let pangram = "the quick brown fox jumps over the lazy dog";
    let text: String = (0..400)
        .map(|i| format!("KING:\nthe lord {i} shall speak now.\n{pangram}, {}!\n", pangram.to_uppercase()))
        .collect();
    std::fs::write(&data, text).unwrap();
    let (data, out) = (p(&data), p(&dir.join("run")));
    let iters = if extra.contains(&"--max-iters") { vec![] } else { vec!["--max-iters", "5"] };
    let mut args = vec!["train", "--preset", "tiny", "--data", &data, "--block-size", "256"];
    args.extend(iters);
    args.extend(["--out", &out, "--sample-tokens", "0"]);
    args.extend(extra);
    ok(&args);
    out
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ferrite serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}"));
        Server { child, url: url.to_string() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// POSTs `body` (raw) with `headers`; returns status, headers' Retry-After and body.
fn post_raw(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), retry, resp.body_mut().read_to_string().unwrap())
}

/// GETs `path`; the body as text.
fn get(s: &Server, path: &str) -> String {
    agent().get(format!("{}{path}", s.url)).call().unwrap().body_mut().read_to_string().unwrap()
}

fn post(s: &Server, path: &str, body: Value) -> Value {
    let (status, _, text) = post_raw(&format!("{}{path}", s.url), &body.to_string(), &[]);
    assert_eq!(status, 200, "{path} {body}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A streamed request's `data:` payloads, `[DONE]` last.
fn stream(s: &Server, path: &str, body: Value) -> Vec<String> {
    let mut resp = agent()
        .post(format!("{}{path}", s.url))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = BufReader::new(resp.body_mut().as_reader());
    reader.lines().map(|l| l.unwrap()).filter_map(|l| l.strip_prefix("data: ").map(String::from)).collect()
}

fn streamed_text(events: &[String]) -> String {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            text += c["text"].as_str().or(c["delta"]["content"].as_str()).unwrap_or("");
        }
    }
    text
}

#[test]
fn openai_shapes_and_batching_that_changes_no_answer() {
    let dir = scratch("serve-api");
    let run = model(&dir);
    let s = Server::start(&["--checkpoint", &format!("shakes={run}"), "--parallel", "4"]);

    let health: Value = serde_json::from_str(&get(&s, "/health")).unwrap();
    assert_eq!(health["status"], "ok");
    let models: Value = serde_json::from_str(&get(&s, "/v1/models")).unwrap();
    assert_eq!(models["data"][0]["id"], "shakes");

    // Completions: whole and streamed agree; usage and finish as OpenAI gives them.
    let req = json!({"model": "shakes", "prompt": "KING:\n", "max_tokens": 40, "seed": 5, "temperature": 0.9});
    let whole = post(&s, "/v1/completions", req.clone());
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 40);
    assert_eq!(whole["usage"]["prompt_tokens"], 6);
    let mut streamed_req = req.clone();
    streamed_req["stream"] = json!(true);
    streamed_req["stream_options"] = json!({"include_usage": true});
    let events = stream(&s, "/v1/completions", streamed_req);
    assert_eq!(streamed_text(&events), whole["choices"][0]["text"].as_str().unwrap());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 46);

    // Chat, whole and streamed (role first, then content, then the finish).
    let chat = json!({"messages": [{"role": "system", "content": "speak."}, {"role": "user", "content": "the king"}], "max_tokens": 30, "seed": 3});
    let answer = post(&s, "/v1/chat/completions", chat.clone());
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    let events = stream(&s, "/v1/chat/completions", sc);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&events), answer["choices"][0]["message"]["content"].as_str().unwrap());

    // n choices: choice i samples with seed + i.
    let two = post(&s, "/v1/completions", json!({"prompt": "the", "max_tokens": 20, "seed": 8, "n": 2}));
    let alone = post(&s, "/v1/completions", json!({"prompt": "the", "max_tokens": 20, "seed": 9}));
    assert_eq!(two["choices"][1]["index"], 1);
    assert_eq!(two["choices"][1]["text"], alone["choices"][0]["text"]);

    // Twelve requests at once, through 4 slots: each gets what it gets alone.
    let reqs: Vec<Value> = (0..12)
        .map(|i| json!({"prompt": format!("the lord {i}"), "max_tokens": 25 + 7 * i, "seed": 100 + i, "temperature": 1.0, "top_k": 20}))
        .collect();
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = reqs.iter().map(|r| scope.spawn(|| post(&s, "/v1/completions", r.clone()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, t) in reqs.iter().zip(&together) {
        let one = post(&s, "/v1/completions", r.clone());
        assert_eq!(t["choices"][0]["text"], one["choices"][0]["text"], "{r}");
    }

    // Log-probabilities: one entry per token, spelling the text, streamed
    // as whole; the chosen token no likelier than the likeliest.
    let lp = post(&s, "/v1/completions", json!({"prompt": "the", "max_tokens": 15, "seed": 2, "logprobs": 2}));
    let l = &lp["choices"][0]["logprobs"];
    let toks: Vec<&str> = l["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(toks.len(), 15);
    assert_eq!(toks.concat(), lp["choices"][0]["text"].as_str().unwrap());
    for (i, top) in l["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let chosen = l["token_logprobs"][i].as_f64().unwrap();
        assert!(chosen <= best + 1e-6 && chosen <= 0.0, "{l}");
        assert_eq!(top.as_object().unwrap().len(), 2);
    }
    let chat_lp = json!({"messages": [{"role": "user", "content": "the lord"}], "max_tokens": 12, "seed": 6,
        "logprobs": true, "top_logprobs": 3});
    let whole = post(&s, "/v1/chat/completions", chat_lp.clone());
    let content = whole["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len(), whole["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert!(content.iter().all(|c| c["top_logprobs"].as_array().unwrap().len() == 3 && c["bytes"].is_array()));
    let mut streamed_lp = chat_lp.clone();
    streamed_lp["stream"] = json!(true);
    let mut streamed = Vec::new();
    for e in stream(&s, "/v1/chat/completions", streamed_lp) {
        if let Ok(v) = serde_json::from_str::<Value>(&e) {
            if let Some(c) = v["choices"][0]["logprobs"]["content"].as_array() {
                streamed.extend(c.iter().cloned());
            }
        }
    }
    assert_eq!(streamed, content);

    // Tokenize and detokenize round-trip; metrics count what happened.
    let toks = post(&s, "/tokenize", json!({"content": "the king"}));
    let back = post(&s, "/detokenize", json!({"tokens": toks["tokens"]}));
    assert_eq!(back["content"], "the king");
    let metrics = get(&s, "/metrics");
    assert!(metrics.contains("ferrite_requests_total{endpoint=\"completions\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("ferrite_time_to_first_token_seconds_count"), "{metrics}");
    for page in ["/", "/runs"] {
        let html = get(&s, page);
        assert!(html.contains("<title>ferrite"), "{page}");
    }
}

#[test]
fn bad_requests_get_openai_errors_with_the_right_status() {
    let dir = scratch("serve-errors");
    let run = model(&dir);
    let s = Server::start(&["--checkpoint", &run, "--api-key", "sekret", "--max-body-bytes", "4096"]);
    let key = [("Authorization", "Bearer sekret")];
    let url = |path: &str| format!("{}{path}", s.url);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/completions", "{\"prompt\": ".into(), 400, "not valid JSON"),
        ("/v1/completions", "[1, 2]".into(), 400, "JSON object"),
        ("/v1/completions", json!({"prompt": "a", "temperature": "hot"}).to_string(), 400, "temperature"),
        ("/v1/completions", json!({"prompt": "a", "temperature": 7}).to_string(), 400, "between 0 and 2"),
        ("/v1/completions", json!({"prompt": "a", "top_p": 0}).to_string(), 400, "top_p"),
        ("/v1/completions", json!({"prompt": "a", "n": 0}).to_string(), 400, "n must be"),
        ("/v1/completions", json!({"prompt": ""}).to_string(), 400, "empty"),
        ("/v1/completions", json!({"prompt": []}).to_string(), 400, "empty"),
        ("/v1/completions", json!({"prompt": [999999]}).to_string(), 400, "outside the model's vocabulary"),
        ("/v1/completions", json!({"prompt": {"x": 1}}).to_string(), 400, "prompt"),
        ("/v1/completions", json!({"max_tokens": 3}).to_string(), 400, "prompt is required"),
        ("/v1/completions", json!({"prompt": "a", "max_tokens": 100000}).to_string(), 400, "context"),
        ("/v1/completions", json!({"prompt": "a", "max_tokens": -1}).to_string(), 400, "at least 1"),
        ("/v1/completions", json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}).to_string(), 400, "stop"),
        ("/v1/completions", json!({"prompt": "a", "logprobs": 6}).to_string(), 400, "from 0 to 5"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}).to_string(),
            400,
            "needs logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "logprobs": 3}).to_string(),
            400,
            "true or false",
        ),
        ("/v1/completions", json!({"prompt": "a", "model": "nope"}).to_string(), 404, "does not exist"),
        ("/v1/completions", json!({"prompt": "a".repeat(5000)}).to_string(), 413, "limit"),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400, "messages"),
        ("/v1/chat/completions", json!({"messages": "hi"}).to_string(), 400, "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "assistant", "content": "x"}]}).to_string(),
            400,
            "last message",
        ),
        ("/v1/chat/completions", json!({"messages": [{"role": "tool", "content": "x"}]}).to_string(), 400, "role"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "\u{1F600}"}]}).to_string(),
            400,
            "vocabulary",
        ),
        ("/detokenize", json!({"tokens": [70000]}).to_string(), 400, "outside"),
        ("/nowhere", "{}".into(), 404, "no such endpoint"),
    ];
    for (path, body, status, needle) in &cases {
        let (got, _, text) = post_raw(&url(path), body, &key);
        assert_eq!(got, *status, "{path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} {body}: not JSON: {text}"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{path} {body}: {msg:?} lacks {needle:?}");
        assert!(v["error"]["type"].is_string());
    }
    // Not declared JSON (a plain form post from another web page): 415.
    let mut resp = agent()
        .post(url("/v1/completions"))
        .header("Authorization", "Bearer sekret")
        .header("Content-Type", "text/plain")
        .send(json!({"prompt": "a"}).to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert!(resp.body_mut().read_to_string().unwrap().contains("application/json"));
    for auth in [vec![], vec![("Authorization", "Bearer wrong")], vec![("Authorization", "sekret")]] {
        let (got, _, text) = post_raw(&url("/v1/completions"), &json!({"prompt": "a"}).to_string(), &auth);
        assert_eq!(got, 401, "{auth:?}: {text}");
        assert!(text.contains("invalid_api_key"));
    }
    let (got, _, _) = post_raw(&url("/v1/completions"), &json!({"prompt": "a", "max_tokens": 2}).to_string(), &key);
    assert_eq!(got, 200);
}

#[test]
fn a_full_queue_says_429_and_a_gone_client_frees_its_slot() {
    let dir = scratch("serve-queue");
    // Big enough that 250 tokens take a while to decode.
    let run = model_with(&dir, &["--n-layer", "4", "--n-embd", "256", "--max-iters", "1"]);
    let s = Server::start(&["--checkpoint", &run, "--parallel", "1", "--queue", "1"]);
    let long = json!({"prompt": "the", "max_tokens": 250, "seed": 1}).to_string();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let hs: Vec<_> =
            (0..16).map(|_| scope.spawn(|| post_raw(&format!("{}/v1/completions", s.url), &long, &[]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).map(|(st, retry, _)| (st, retry)).collect()
    });
    assert!(statuses.iter().any(|(st, _)| *st == 200), "{statuses:?}");
    let rejected: Vec<_> = statuses.iter().filter(|(st, _)| *st == 429).collect();
    assert!(!rejected.is_empty(), "16 requests at once through 1 slot and a queue of 1: {statuses:?}");
    assert!(rejected.iter().all(|(_, retry)| retry.as_deref() == Some("1")), "{rejected:?}");

    // A streaming client that reads one event and hangs up frees the slot.
    for _ in 0..3 {
        let addr = s.url.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        let body = json!({"prompt": "the", "max_tokens": 250, "stream": true}).to_string();
        write!(tcp, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        // Until the first event: the headers alone can come before the
        // sequence starts decoding, and a client gone by then is never a
        // cancelled sequence.
        let (mut got, mut buf) = (Vec::new(), [0u8; 256]);
        while !String::from_utf8_lossy(&got).contains("data:") {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended before its first event");
            got.extend_from_slice(&buf[..n]);
        }
        drop(tcp);
    }
    // The slot is free again well before 3 x 250 tokens could decode.
    let start = std::time::Instant::now();
    loop {
        let health = get(&s, "/health");
        if health.contains("\"slots_processing\":0") {
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "the slot stays busy: {health}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after = post(&s, "/v1/completions", json!({"prompt": "the", "max_tokens": 10}));
    assert_eq!(after["usage"]["completion_tokens"], 10);
    let metrics = get(&s, "/metrics");
    let cancelled = metrics.lines().find_map(|l| l.strip_prefix("ferrite_cancelled_total ")).unwrap();
    assert!(cancelled.parse::<u64>().unwrap() >= 1, "no sequence was cancelled: {metrics}");
}

#[test]
fn garbage_on_every_endpoint_never_stops_the_server() {
    let dir = scratch("serve-fuzz");
    let run = model(&dir);
    let s = Server::start(&["--checkpoint", &run, "--max-body-bytes", "65536"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let endpoints = [
        "/v1/completions",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/v1/models",
        "/health",
        "/metrics",
        "/api/runs",
    ];
    let valid = [
        json!({"prompt": "the king", "max_tokens": 5}).to_string(),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).to_string(),
        json!({"content": "the"}).to_string(),
        json!({"tokens": [1, 2, 3]}).to_string(),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..200 {
        let path = endpoints[(next() % endpoints.len() as u64) as usize];
        let base = &valid[case % valid.len()];
        let body: Vec<u8> = match case % 3 {
            // Truncated JSON.
            0 => base.as_bytes()[..(next() as usize % base.len())].to_vec(),
            // Random bytes.
            1 => (0..next() % 300).map(|_| next() as u8).collect(),
            // A valid body with one byte flipped.
            _ => {
                let mut b = base.as_bytes().to_vec();
                let i = next() as usize % b.len();
                b[i] = next() as u8;
                b
            }
        };
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(&body).unwrap();
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 "), "case {case} {path}: {reply:?}");
        let status: u16 = reply[9..12].parse().unwrap();
        assert!([200, 400, 404, 405, 413, 415].contains(&status), "case {case} {path}: {reply}");
    }
    // And garbage that is not even HTTP.
    for _ in 0..20 {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        let junk: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
        let _ = tcp.write_all(&junk);
    }
    let ok = post(&s, "/v1/completions", json!({"prompt": "the", "max_tokens": 3}));
    assert_eq!(ok["usage"]["completion_tokens"], 3);
}

/// The official `openai` Python package against the server (skipped, with
/// a note, where the package is not installed; CI installs it).
#[test]
fn the_openai_python_client_drives_both_endpoints() {
    let has = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has {
        eprintln!("skipped: `pip install openai` to run scripts/test_openai_client.py");
        return;
    }
    let dir = scratch("serve-openai");
    let run = model(&dir);
    let s = Server::start(&["--checkpoint", &run, "--api-key", "k3y"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test_openai_client.py");
    let out = Command::new("python3")
        .args([script, "--base-url", &format!("{}/v1", s.url), "--api-key", "k3y"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Headless Chromium on the chat page and the dashboard (skipped, with a
/// note, without Chromium, chromedriver and Selenium; CI installs them).
#[test]
fn a_real_browser_chats_and_watches_a_run_train() {
    let has = Command::new("python3").args(["-c", "import selenium"]).status().is_ok_and(|s| s.success())
        && ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().any(|p| Path::new(p).exists())
        && Path::new("/usr/bin/chromedriver").exists();
    if !has {
        eprintln!("skipped: install chromium, chromium-driver and selenium to run scripts/test_browser.py");
        return;
    }
    let dir = scratch("serve-browser");
    let run = model(&dir);
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    // A run that keeps writing metrics.jsonl while the page watches.
    let data = dir.join("corpus.txt");
    let mut training = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["train", "--preset", "tiny", "--data", &p(&data), "--max-iters", "1000000", "--log-interval", "1"])
        .args(["--eval-interval", "500", "--sample-tokens", "0", "--out", &p(&runs.join("live"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server::start(&["--checkpoint", &run, "--runs", &p(&runs)]);
    let shots = dir.join("screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test_browser.py");
    let out =
        Command::new("python3").args([script, "--url", &s.url, "--shots", &p(&shots), "--runs"]).output().unwrap();
    let _ = training.kill();
    let _ = training.wait();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    for shot in ["chat.png", "chat-phone.png", "runs.png"] {
        assert!(shots.join(shot).exists(), "no {shot}");
    }
    eprintln!("{log}screenshots in {}", shots.display());
}
