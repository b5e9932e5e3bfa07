//! The teaching docs (`docs/`) stay true: every code link names an item
//! that exists in the file it points at, every relative link resolves, and
//! every page's worked example (its `check` block) is what ferrite's own
//! functions compute (`docs/numbers.rs`).

#[path = "docs/numbers.rs"]
mod numbers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Pages that teach no formula (so have no worked example).
const NO_NUMBERS: [&str; 2] = ["README.md", "glossary.md"];

fn pages() -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    pages.sort();
    assert!(pages.len() >= 10, "docs/ has only {} pages", pages.len());
    pages
}

/// The page's text outside fenced code blocks (links there are not links).
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// `(text, target)` of each inline Markdown link `[text](target)`.
fn links(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let before = &rest[..at];
        let after = &rest[at + 2..];
        let Some(close) = after.find(')') else { break };
        if let Some(open) = before.rfind('[') {
            out.push((before[open + 1..].to_string(), after[..close].to_string()));
        }
        rest = &after[close..];
    }
    out
}

/// Whether `source` defines `name`: a function, type, constant, module or
/// enum variant.
fn defines(source: &str, name: &str) -> bool {
    let item = ["fn", "struct", "enum", "trait", "const", "static", "type", "mod", "macro_rules!"].iter().any(|kw| {
        source.match_indices(&format!("{kw} {name}")).any(|(i, m)| {
            let next = source[i + m.len()..].chars().next();
            let starts_word = i == 0 || !source[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            starts_word && !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    });
    let variant = source.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix(name).is_some_and(|r| r.starts_with(',') || r.starts_with('(') || r.starts_with(" {"))
    });
    item || variant
}

#[test]
fn every_link_resolves_and_every_code_link_names_an_item_of_its_file() {
    let mut bad = Vec::new();
    let mut code_links = 0;
    for (page, text) in pages() {
        for (label, target) in links(&prose(&text)) {
            if target.starts_with("http") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let path: PathBuf = Path::new(ROOT).join("docs").join(file);
            if !path.exists() {
                bad.push(format!("{page}: [{label}]({target}): no such file"));
                continue;
            }
            if !file.starts_with("../src/") {
                continue;
            }
            code_links += 1;
            let name = label.trim();
            if !(name.starts_with('`') && name.ends_with('`') && name.len() > 2) {
                bad.push(format!("{page}: [{label}]({target}): a code link's text must be one `item`"));
                continue;
            }
            let name = name.trim_matches('`').trim_end_matches("()");
            if name.ends_with(".rs") {
                continue; // a whole file, named by its path
            }
            let last = name.rsplit("::").next().unwrap();
            let last = last.split('<').next().unwrap();
            if !defines(&std::fs::read_to_string(&path).unwrap(), last) {
                bad.push(format!("{page}: [{label}]({target}): {target} defines no `{last}`"));
            }
        }
    }
    assert!(bad.is_empty(), "broken links in docs/:\n{}", bad.join("\n"));
    assert!(code_links >= 50, "only {code_links} code links in docs/");
}

#[test]
fn the_link_checker_catches_what_it_should() {
    let src = "pub fn block_forward(\nenum A {\n    Window(Dropout),\n    Rope,\n}\nstruct Gpt<B>";
    assert!(defines(src, "block_forward") && defines(src, "Window") && defines(src, "Rope") && defines(src, "Gpt"));
    assert!(!defines(src, "block") && !defines(src, "forward") && !defines(src, "Gp"));
    let l = links("see [`Gpt::forward`](../src/model/gpt.rs) and [a page](attention.md#x).");
    assert_eq!(
        l,
        vec![("`Gpt::forward`".into(), "../src/model/gpt.rs".into()), ("a page".into(), "attention.md#x".into())]
    );
    assert_eq!(prose("a\n```\n[x](y)\n```\nb"), "a\nb\n");
}

/// Each page's `check` block: key → the value as printed.
fn checks() -> BTreeMap<String, (String, String)> {
    let mut all = BTreeMap::new();
    for (page, text) in pages() {
        let mut blocks = 0;
        let mut inside = false;
        for line in text.lines() {
            let t = line.trim();
            if t == "```check" {
                inside = true;
                blocks += 1;
            } else if inside && t.starts_with("```") {
                inside = false;
            } else if inside && !t.is_empty() {
                let (k, v) = t.split_once('=').unwrap_or_else(|| panic!("{page}: `{t}` is not key = value"));
                let old = all.insert(k.trim().to_string(), (page.clone(), v.trim().to_string()));
                assert!(old.is_none(), "{page}: key {} is also on {}", k.trim(), old.unwrap().0);
            }
        }
        let want = usize::from(!NO_NUMBERS.contains(&page.as_str()));
        assert_eq!(blocks, want, "{page}: {blocks} check blocks, expected {want}");
    }
    all
}

/// Half a unit of the last printed decimal (a hair more for float noise).
fn tolerance(printed: &str) -> f64 {
    let mantissa = printed.split(['e', 'E']).next().unwrap();
    let exponent: i32 = printed.split(['e', 'E']).nth(1).map_or(0, |e| e.parse().unwrap());
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    0.5001 * 10f64.powi(exponent - decimals)
}

#[test]
fn every_worked_example_is_what_ferrite_computes() {
    let values = numbers::computed();
    let mut bad = Vec::new();
    for (key, (page, printed)) in checks() {
        let want: f64 = printed.parse().unwrap_or_else(|_| panic!("{page}: {key} = {printed} is not a number"));
        match values.get(key.as_str()) {
            None => bad.push(format!("{page}: {key}: no test computes it (add it to tests/docs/numbers.rs)")),
            Some(&got) if (got - want).abs() > tolerance(&printed) => {
                bad.push(format!("{page}: {key} = {printed}, but ferrite computes {got}"))
            }
            Some(_) => {}
        }
    }
    let printed = checks();
    for key in values.keys().filter(|k| !printed.contains_key(**k)) {
        bad.push(format!("tests/docs/numbers.rs computes {key}, which no page prints"));
    }
    assert!(bad.is_empty(), "worked examples in docs/ that do not hold:\n{}", bad.join("\n"));
}

#[test]
fn the_readme_links_the_docs_and_the_explain_command() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(readme.contains("](docs/README.md)") && readme.contains("ferrite explain"));
    assert!(Path::new(ROOT).join("docs/images/explain.png").exists(), "the explain page's screenshot");
}
