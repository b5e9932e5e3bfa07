//! `ferrite data prepare --hf-dataset` and `ferrite import --hf` against a
//! Hugging Face Hub stand-in: an HTTP server on 127.0.0.1 that this test
//! starts and fills with files (these machines cannot reach the Hub):
//! parquet shards it writes, and the sharded Llama fixture of
//! `tests/fixtures/hf`. Checks listing with paging, split filtering, the
//! cache size limit with LRU eviction, resumed partial downloads (a file
//! left half-written, and a connection that breaks off), and size and
//! SHA-256 verification.

mod common;

use common::{ferrite_env, json, p, scratch};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn parquet_bytes(docs: &[String]) -> Vec<u8> {
    let schema = Arc::new(parse_message_type("message doc { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap());
    let mut buf = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut buf, schema, Arc::new(WriterProperties::builder().build())).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = docs.iter().map(|d| ByteArray::from(d.as_str())).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }
    buf
}

/// What the stand-in serves: files by path, and what it lists for them.
struct Hub {
    files: HashMap<String, Vec<u8>>,
    /// Listed (path, size, sha256).
    listed: Vec<(String, u64, Option<String>)>,
    /// The repository's listing and download paths.
    tree: String,
    resolve: String,
    /// Files whose first download breaks off halfway.
    break_once: Mutex<Vec<String>>,
}

impl Hub {
    fn dataset(files: HashMap<String, Vec<u8>>, listed: Vec<(String, u64, Option<String>)>) -> Hub {
        Hub {
            files,
            listed,
            tree: "/api/datasets/owner/corpus/tree/main?recursive=true".into(),
            resolve: "/datasets/owner/corpus/resolve/main/".into(),
            break_once: Mutex::new(vec![]),
        }
    }
}

struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(hub: Hub) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (log, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    serve(conn, &hub, &log2);
                }
            }
        });
        Server { port, log, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, hub: &Hub, log: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range: Option<usize> = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
        .and_then(|l| l.split("bytes=").nth(1))
        .and_then(|r| r.trim().trim_end_matches('-').parse().ok());
    log.lock().unwrap().push(format!("{target} range={range:?}"));
    let tree = hub.tree.as_str();
    let (status, extra, body): (&str, String, Vec<u8>) = if target == tree || target == format!("{tree}&cursor=2") {
        // Two pages: the first links to the second.
        let half = hub.listed.len() / 2;
        let page = if target == tree { &hub.listed[..half] } else { &hub.listed[half..] };
        let mut entries = vec![serde_json::json!({"type": "directory", "path": "data"})];
        for (path, size, sha) in page {
            let mut e = serde_json::json!({"type": "file", "path": path, "size": size, "oid": "abc"});
            if let Some(sha) = sha {
                e["lfs"] = serde_json::json!({"oid": sha, "size": size});
            }
            entries.push(e);
        }
        let link = if target == tree {
            format!("Link: <http://127.0.0.1:{}{tree}&cursor=2>; rel=\"next\"\r\n", conn.local_addr().unwrap().port())
        } else {
            String::new()
        };
        ("200 OK", link, serde_json::to_vec(&entries).unwrap())
    } else if let Some(path) = target.strip_prefix(hub.resolve.as_str()) {
        let broken = {
            let mut once = hub.break_once.lock().unwrap();
            let hit = once.iter().position(|p| p == path);
            hit.map(|i| once.remove(i)).is_some()
        };
        if let (true, Some(bytes)) = (broken, hub.files.get(path)) {
            // Promise the whole file, send half, hang up.
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len());
            let _ = conn.write_all(&bytes[..bytes.len() / 2]);
            return;
        }
        match hub.files.get(path) {
            Some(bytes) => match range {
                Some(from) if from < bytes.len() => ("206 Partial Content", String::new(), bytes[from..].to_vec()),
                _ => ("200 OK", String::new(), bytes.clone()),
            },
            None => ("404 Not Found", String::new(), b"not found".to_vec()),
        }
    } else {
        ("404 Not Found", String::new(), b"not found".to_vec())
    };
    let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len());
    let _ = conn.write_all(&body);
}

fn docs(n: usize, seed: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("document {} of shard {seed}: the king shall speak and we will hear", i * 7 + seed))
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let (mut total, mut count) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                let (t, c) = dir_bytes(&e.path());
                total += t;
                count += c;
            } else {
                total += m.len();
                count += 1;
            }
        }
    }
    (total, count)
}

fn prepare(server: &Server, args: &[&str]) -> std::process::Output {
    let mut all = vec!["data", "prepare", "--hf-dataset", "owner/corpus"];
    all.extend(args);
    ferrite_env(&all, &[("HF_ENDPOINT", &server.endpoint())])
}

#[test]
fn hub_dataset_streams_through_a_bounded_cache() {
    let dir = scratch("hub");
    let shards: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("data/train-{i:05}-of-00004.parquet"), parquet_bytes(&docs(300, i))))
        .chain([("data/test-00000-of-00001.parquet".to_string(), parquet_bytes(&docs(50, 9)))])
        .collect();
    let mut files: HashMap<String, Vec<u8>> = shards.iter().cloned().collect();
    files.insert("README.md".into(), b"# corpus".to_vec());
    let listed: Vec<(String, u64, Option<String>)> = files
        .iter()
        .map(|(path, bytes)| (path.clone(), bytes.len() as u64, Some(sha256(bytes)).filter(|_| path != "README.md")))
        .collect();
    let server = Server::start(Hub::dataset(files, listed));

    // The same train shards prepared from local copies, for comparison.
    for (path, bytes) in &shards[..4] {
        std::fs::write(dir.join(path.replace("data/", "")), bytes).unwrap();
    }
    let local = dir.join("local");
    let out =
        ferrite_env(&["data", "prepare", "--input", &format!("{}/train-*.parquet", p(&dir)), "--out", &p(&local)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A cache that holds only two shards: the other two are evicted as the run streams through.
    let biggest = shards.iter().map(|s| s.1.len()).max().unwrap();
    let limit = (2 * biggest + biggest / 2).to_string();
    let cache = dir.join("cache");
    let remote = dir.join("remote");
    let out = prepare(
        &server,
        &["--hf-split", "train", "--cache-dir", &p(&cache), "--cache-limit", &limit, "--out", &p(&remote)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (m, l) = (manifest(&remote), manifest(&local));
    assert_eq!(m["train"]["tokens"], l["train"]["tokens"]);
    assert_eq!(m["val"]["tokens"], l["val"]["tokens"]);
    let sources = m["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 4, "the test split and README are filtered out");
    assert!(sources[0]["path"].as_str().unwrap().starts_with("hf://datasets/owner/corpus@main/data/train-"));
    let (cached, count) = dir_bytes(&cache);
    assert!(cached <= limit.parse().unwrap() && count == 2, "cache holds {count} files, {cached} bytes");
    let requests = server.requests();
    assert!(requests.iter().any(|r| r.contains("cursor=2")), "the listing's second page was read: {requests:?}");

    // An interrupted download resumes with a range request.
    let cache2 = dir.join("cache2");
    let (first, bytes) = &shards[0];
    let partial = cache2.join("owner/corpus/main").join(first).with_extension("partial");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    let out = prepare(&server, &["--hf-split", "train", "--cache-dir", &p(&cache2), "--out", &p(&dir.join("resumed"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = format!("{first} range=Some({})", bytes.len() / 2);
    assert!(server.requests().iter().any(|r| r.ends_with(&want)), "no resumed request {want}");
    assert_eq!(manifest(&dir.join("resumed"))["train"]["tokens"], l["train"]["tokens"]);
}

#[test]
fn hub_downloads_are_verified() {
    let dir = scratch("hub-bad");
    let good = parquet_bytes(&docs(100, 1));
    let mut files = HashMap::new();
    files.insert("data/train-0.parquet".to_string(), good.clone());
    // Listed with the digest of other bytes.
    let server = Server::start(Hub::dataset(
        files.clone(),
        vec![("data/train-0.parquet".into(), good.len() as u64, Some(sha256(b"other")))],
    ));
    let out = dir.join("ds");
    let run = prepare(&server, &["--cache-dir", &p(&dir.join("c")), "--out", &p(&out)]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("SHA-256") && !out.exists(), "{err}");
    drop(server);
    // Listed larger than what arrives.
    let server =
        Server::start(Hub::dataset(files, vec![("data/train-0.parquet".into(), good.len() as u64 + 10, None)]));
    let run = prepare(&server, &["--cache-dir", &p(&dir.join("c")), "--out", &p(&out)]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("bytes") && !out.exists(), "{err}");
    // Nothing matches.
    let run = prepare(&server, &["--hf-split", "validation", "--cache-dir", &p(&dir.join("c")), "--out", &p(&out)]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("no files"));
    // A cache too small for a single file.
    let run = prepare(&server, &["--cache-dir", &p(&dir.join("c")), "--cache-limit", "100", "--out", &p(&out)]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("cache limit"));
}

fn manifest(dir: &Path) -> serde_json::Value {
    json(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
}

#[test]
fn hub_model_downloads_resume_verify_and_import() {
    let dir = scratch("hub-model");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let mut files = HashMap::new();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let e = e.unwrap();
        files.insert(e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap());
    }
    files.insert("pytorch_model.bin".into(), b"not read".to_vec());
    files.insert("onnx/model.onnx".into(), b"not read".to_vec());
    // The weights are LFS files (listed with their digests), the rest not.
    let listed = files
        .iter()
        .map(|(path, bytes)| {
            let lfs = path.ends_with(".safetensors");
            (path.clone(), bytes.len() as u64, lfs.then(|| sha256(bytes)))
        })
        .collect();
    let shard = "model-00002-of-00002.safetensors";
    let hub = Hub {
        files,
        listed,
        tree: "/api/models/owner/tiny-llama/tree/main?recursive=true".into(),
        resolve: "/owner/tiny-llama/resolve/main/".into(),
        break_once: Mutex::new(vec![shard.into()]),
    };
    let server = Server::start(hub);
    let (cache, out) = (dir.join("cache"), dir.join("imported"));
    let import = || {
        let args = ["import", "--hf", "owner/tiny-llama", "--cache-dir", &p(&cache), "--out", &p(&out)];
        ferrite_env(&args, &[("HF_ENDPOINT", &server.endpoint())])
    };
    // The connection breaks off in the second shard: a one-line error, nothing imported.
    let first = import();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success() && err.contains("broke off") && !out.exists(), "{err}");
    // Run again: the shard resumes where it stopped, and the import completes.
    let second = import();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let half = std::fs::metadata(fixture.join(shard)).unwrap().len() / 2;
    let requests = server.requests();
    assert!(requests.iter().any(|r| r.ends_with(&format!("{shard} range=Some({half})"))), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains("pytorch_model.bin") || r.contains("onnx")), "{requests:?}");
    // The same model as imported from the directory itself.
    let local = dir.join("local");
    let direct = ferrite_env(&["import", &p(&fixture), "--out", &p(&local)], &[]);
    assert!(direct.status.success());
    for f in ["model.safetensors", "config.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(local.join(f)).unwrap(), "{f}");
    }
    // A cached shard whose bytes changed (same size) is fetched again, not trusted.
    let cached = cache.join("models/owner/tiny-llama/main").join(shard);
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&cached, &bytes).unwrap();
    let again = dir.join("again");
    let args = ["import", "--hf", "owner/tiny-llama", "--cache-dir", &p(&cache), "--out", &p(&again)];
    let run = ferrite_env(&args, &[("HF_ENDPOINT", &server.endpoint())]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        std::fs::read(local.join("model.safetensors")).unwrap()
    );
    let fetched = server.requests().iter().filter(|r| r.contains(&format!("{shard} range=None"))).count();
    // Once broken off at the start, once now.
    assert_eq!(fetched, 2, "the changed shard was downloaded again");
    drop(server);

    // A shard whose bytes do not match the listed digest is discarded.
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let e = e.unwrap();
        files.insert(e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap());
    }
    let listed = files
        .iter()
        .map(|(path, bytes)| {
            (path.clone(), bytes.len() as u64, path.ends_with(".safetensors").then(|| sha256(b"other")))
        })
        .collect();
    let server = Server::start(Hub {
        files,
        listed,
        tree: "/api/models/owner/tiny-llama/tree/main?recursive=true".into(),
        resolve: "/owner/tiny-llama/resolve/main/".into(),
        break_once: Mutex::new(vec![]),
    });
    let args = ["import", "--hf", "owner/tiny-llama", "--cache-dir", &p(&dir.join("c2")), "--out", &p(&dir.join("x"))];
    let bad = ferrite_env(&args, &[("HF_ENDPOINT", &server.endpoint())]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("SHA-256") && !dir.join("x").exists(), "{err}");
}
