//! Where documents come from: text files (whole, by line or by paragraph),
//! JSONL with a chosen field, parquet files with a chosen text column, and
//! databricks-dolly-15k style instruction records, chat conversations
//! (OpenAI-style `messages`). Every reader streams:
//! it hands over documents in batches of about `batch_bytes`, never the
//! whole input.

use crate::data::ChatTemplate;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// By file extension: .jsonl/.json → jsonl, .parquet → parquet, else text.
    Auto,
    /// Each file is one document.
    Text,
    /// Each non-empty line is a document.
    Lines,
    /// Documents separated by blank lines (plays' speeches, paragraphs).
    Paragraphs,
    /// One JSON object per line; the document is its `--field`.
    Jsonl,
    /// Parquet files; the document is the `--column` of each row.
    Parquet,
    /// JSONL records with instruction, context, response (databricks-dolly-15k).
    Dolly,
    /// JSONL records with OpenAI-style `messages` (system, user, assistant;
    /// multi-turn), written with the chat template; only the assistant's
    /// answers are trained on.
    Chat,
}

impl Format {
    /// Formats whose documents mark stretches that are not trained on.
    pub fn masks(self) -> bool {
        matches!(self, Format::Dolly | Format::Chat)
    }
}

/// A document. `spans` (instruction and chat data) cut it into stretches
/// that are or are not trained on: `(end byte, trained)` in order, the last
/// ending at `text.len()`; empty: all of it is trained on.
pub struct Doc {
    pub text: String,
    pub spans: Vec<(usize, bool)>,
}

impl Doc {
    fn plain(text: String) -> Doc {
        Doc { text, spans: vec![] }
    }

    /// A document from its stretches, each `(text, trained)`.
    fn from_parts(parts: &[(String, bool)]) -> Doc {
        let (mut text, mut spans) = (String::new(), Vec::new());
        for (part, trained) in parts.iter().filter(|p| !p.0.is_empty()) {
            text.push_str(part);
            spans.push((text.len(), *trained));
        }
        Doc { text, spans }
    }
}

pub struct SourceOptions {
    pub format: Format,
    pub field: String,
    pub column: String,
    pub template: InstructionTemplate,
    /// How `chat` conversations are written.
    pub chat: ChatTemplate,
}

/// How instruction records become text: the prompt part (instruction and
/// optional context) and the response part that is trained on.
#[derive(Clone, Debug)]
pub struct InstructionTemplate {
    pub with_context: String,
    pub without_context: String,
    pub response: String,
}

impl Default for InstructionTemplate {
    /// The Dolly / Alpaca format that `ferrite chat` uses by default.
    fn default() -> Self {
        InstructionTemplate {
            with_context: "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n".into(),
            without_context: "### Instruction:\n{instruction}\n\n### Response:\n".into(),
            response: "{response}".into(),
        }
    }
}

/// Files named by `inputs`: files as given, directories walked (sorted,
/// hidden entries skipped), anything with `*?[` expanded as a glob.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.contains(['*', '?', '[']) {
            let mut matched: Vec<PathBuf> = glob::glob(input)
                .map_err(|e| anyhow!("bad pattern {input:?}: {e}"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if matched.is_empty() {
                bail!("no files match {input:?}");
            }
            matched.sort();
            files.extend(matched);
        } else {
            let path = PathBuf::from(input);
            if !path.exists() {
                bail!("input {input} does not exist");
            }
            if path.is_dir() {
                walk(&path, &mut files)?;
            } else {
                crate::data::files::regular_file(&path, "input")?;
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        bail!("no input files");
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            crate::data::files::regular_file(&p, "input")?;
            out.push(p);
        }
    }
    Ok(())
}

/// The format a file is read in.
pub fn resolve_format(path: &Path, format: Format) -> Format {
    if format != Format::Auto {
        return format;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "json") => Format::Jsonl,
        Some("parquet") => Format::Parquet,
        _ => Format::Text,
    }
}

/// Reads the documents of one file, calling `each(batch, bytes_read)` every
/// `batch_bytes` of text and at the end (`bytes_read`: of the file, for
/// progress).
pub fn read_documents(
    path: &Path,
    opts: &SourceOptions,
    batch_bytes: usize,
    each: &mut dyn FnMut(Vec<Doc>, u64) -> Result<()>,
) -> Result<()> {
    let mut batch = Batcher { docs: Vec::new(), bytes: 0, limit: batch_bytes, each };
    let open = || std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()));
    let format = resolve_format(path, opts.format);
    match format {
        Format::Text => {
            let mut bytes = Vec::new();
            open()?.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
            let n = bytes.len() as u64;
            batch.push(Doc::plain(utf8(path, bytes, None)?), n)?;
        }
        Format::Lines | Format::Paragraphs => {
            let paragraphs = format == Format::Paragraphs;
            let mut reader = BufReader::with_capacity(1 << 20, open()?);
            let (mut line, mut doc, mut read, mut number) = (Vec::new(), String::new(), 0u64, 0usize);
            loop {
                line.clear();
                let n =
                    reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {}", path.display()))?;
                read += n as u64;
                number += 1;
                if n == 0 {
                    break;
                }
                let text = utf8(path, std::mem::take(&mut line), Some(number))?;
                let blank = text.trim().is_empty();
                if !paragraphs {
                    if !blank {
                        batch.push(Doc::plain(text.trim_end_matches(['\n', '\r']).to_string()), read)?;
                    }
                } else if blank {
                    if !doc.is_empty() {
                        batch.push(Doc::plain(std::mem::take(&mut doc)), read)?;
                    }
                } else {
                    doc.push_str(&text);
                }
                line = text.into_bytes();
            }
            if !doc.is_empty() {
                batch.push(Doc::plain(doc), read)?;
            }
        }
        Format::Jsonl | Format::Dolly | Format::Chat => {
            let reader = BufReader::with_capacity(1 << 20, open()?);
            let mut read = 0u64;
            for (i, line) in reader.split(b'\n').enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                read += line.len() as u64 + 1;
                let text = utf8(path, line, Some(i + 1))?;
                if text.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("{} line {}: not JSON: {e}", path.display(), i + 1))?;
                let at = |e: anyhow::Error| anyhow!("{} line {}: {e}", path.display(), i + 1);
                let doc = if format == Format::Dolly {
                    dolly_doc(&value, &opts.template).map_err(at)?
                } else if format == Format::Chat {
                    chat_doc(&value, &opts.chat).map_err(at)?
                } else {
                    match value.get(&opts.field) {
                        Some(serde_json::Value::String(s)) => Doc::plain(s.clone()),
                        Some(serde_json::Value::Null) => continue,
                        Some(other) => bail!(
                            "{} line {}: field {:?} is {}, not a string",
                            path.display(),
                            i + 1,
                            opts.field,
                            json_kind(other)
                        ),
                        None => bail!("{} line {}: no field {:?} (use --field)", path.display(), i + 1, opts.field),
                    }
                };
                batch.push(doc, read)?;
            }
        }
        Format::Parquet => {
            super::parquet::read_column(path, &opts.column, &mut |text, read| batch.push(Doc::plain(text), read))?
        }
        Format::Auto => unreachable!("resolved above"),
    }
    batch.flush()
}

struct Batcher<'a> {
    docs: Vec<Doc>,
    bytes: usize,
    limit: usize,
    each: &'a mut dyn FnMut(Vec<Doc>, u64) -> Result<()>,
}

impl Batcher<'_> {
    fn push(&mut self, doc: Doc, read: u64) -> Result<()> {
        self.bytes += doc.text.len();
        self.docs.push(doc);
        if self.bytes >= self.limit {
            self.bytes = 0;
            (self.each)(std::mem::take(&mut self.docs), read)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        (self.each)(std::mem::take(&mut self.docs), 0)
    }
}

fn utf8(path: &Path, bytes: Vec<u8>, line: Option<usize>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = match line {
            Some(l) => format!("line {l}"),
            None => format!("byte {}", e.utf8_error().valid_up_to()),
        };
        anyhow!("{} is not valid UTF-8 ({at}); only UTF-8 text can be prepared", path.display())
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A databricks-dolly-15k record rendered with the template: the prompt
/// (instruction, context) and the response after it.
fn dolly_doc(v: &serde_json::Value, t: &InstructionTemplate) -> Result<Doc> {
    let field = |name: &str, required: bool| -> Result<String> {
        match v.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
            Some(other) => bail!("field {name:?} is {}, not a string", json_kind(other)),
            None => bail!("no field {name:?} (dolly records have instruction, context, response)"),
        }
    };
    let (instruction, context, response) =
        (field("instruction", true)?, field("context", false)?, field("response", true)?);
    let prompt = if context.trim().is_empty() { &t.without_context } else { &t.with_context };
    let prompt = prompt.replace("{instruction}", instruction.trim()).replace("{context}", context.trim());
    let answer = t.response.replace("{response}", response.trim());
    Ok(Doc::from_parts(&[(prompt, false), (answer, true)]))
}

/// A conversation (`{"messages": [{"role": ..., "content": ...}, ...]}`)
/// written with the chat template: the system and user turns and each
/// answer's opening are context; the answers themselves, with the text that
/// closes them, are trained on.
fn chat_doc(v: &serde_json::Value, t: &ChatTemplate) -> Result<Doc> {
    let messages = match v.get("messages") {
        Some(serde_json::Value::Array(m)) => m,
        Some(other) => bail!("\"messages\" is {}, not an array", json_kind(other)),
        None => bail!("no field \"messages\" (chat records hold a list of {{role, content}} messages)"),
    };
    if messages.is_empty() {
        bail!("an empty conversation");
    }
    let mut parts = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let content = match m.get("content") {
            Some(serde_json::Value::String(s)) => s.trim(),
            Some(other) => bail!("message {} has content that is {}, not a string", i + 1, json_kind(other)),
            None => bail!("message {} has no content", i + 1),
        };
        match m.get("role").and_then(|r| r.as_str()) {
            Some("system") if i == 0 => parts.push((ChatTemplate::fill(&t.system, content), false)),
            Some("system") => bail!("message {}: a system message must come first", i + 1),
            Some("user") => parts.push((ChatTemplate::fill(&t.user, content), false)),
            Some("assistant") => {
                let open = t.assistant_open();
                parts.push((open.to_string(), false));
                parts.push((ChatTemplate::fill(&t.assistant, content)[open.len()..].to_string(), true));
            }
            Some(other) => bail!("message {} has role {other:?} (roles: system, user, assistant)", i + 1),
            None => bail!("message {} has no role", i + 1),
        }
    }
    if !parts.iter().any(|p| p.1) {
        bail!("a conversation without an assistant message has nothing to train on");
    }
    Ok(Doc::from_parts(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(path: &Path, format: Format, field: &str) -> Result<Vec<Doc>> {
        let opts = SourceOptions {
            format,
            field: field.into(),
            column: "text".into(),
            template: InstructionTemplate::default(),
            chat: ChatTemplate::special(),
        };
        let mut all = Vec::new();
        read_documents(path, &opts, 10, &mut |batch, _| {
            all.extend(batch);
            Ok(())
        })?;
        Ok(all)
    }

    #[test]
    fn formats_split_documents() {
        let dir = std::env::temp_dir().join(format!("ferrite-sources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("a.txt");
        std::fs::write(&text, "one\ntwo\n\n\nthree\n\nfour").unwrap();
        let texts = |d: Vec<Doc>| d.into_iter().map(|d| d.text).collect::<Vec<_>>();
        assert_eq!(texts(docs(&text, Format::Text, "").unwrap()), ["one\ntwo\n\n\nthree\n\nfour"]);
        assert_eq!(texts(docs(&text, Format::Lines, "").unwrap()), ["one", "two", "three", "four"]);
        assert_eq!(texts(docs(&text, Format::Paragraphs, "").unwrap()), ["one\ntwo\n", "three\n", "four"]);

        let jsonl = dir.join("b.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"hi\", \"n\": 1}\n\n{\"text\": null}\n{\"text\": \"there\"}\n").unwrap();
        assert_eq!(texts(docs(&jsonl, Format::Auto, "text").unwrap()), ["hi", "there"]);
        let err = docs(&jsonl, Format::Jsonl, "body").err().unwrap().to_string();
        assert!(err.contains("no field \"body\""), "{err}");
        let err = docs(&jsonl, Format::Jsonl, "n").err().unwrap().to_string();
        assert!(err.contains("is a number, not a string"), "{err}");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{broken\n").unwrap();
        assert!(docs(&jsonl, Format::Jsonl, "text").err().unwrap().to_string().contains("line 2: not JSON"));

        let dolly = dir.join("d.jsonl");
        std::fs::write(
            &dolly,
            "{\"instruction\": \"Name a color.\", \"context\": \"\", \"response\": \"Blue.\", \"category\": \"brainstorming\"}\n\
             {\"instruction\": \"Summarize.\", \"context\": \"Long text.\", \"response\": \"Short.\", \"category\": \"summarization\"}\n",
        )
        .unwrap();
        let d = docs(&dolly, Format::Dolly, "").unwrap();
        assert_eq!(d[0].text, "### Instruction:\nName a color.\n\n### Response:\nBlue.");
        assert_eq!(d[0].spans, vec![(d[0].text.len() - "Blue.".len(), false), (d[0].text.len(), true)]);
        assert!(d[1].text.contains("### Input:\nLong text.\n\n"));
        std::fs::write(&dolly, "{\"instruction\": \"x\"}\n").unwrap();
        assert!(docs(&dolly, Format::Dolly, "").err().unwrap().to_string().contains("no field \"response\""));

        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"ok\n\xff\n").unwrap();
        assert!(docs(&bad, Format::Lines, "").err().unwrap().to_string().contains("line 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inputs_expand_dirs_and_globs() {
        let dir = std::env::temp_dir().join(format!("ferrite-inputs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in ["b.txt", "a.txt", "sub/c.txt", ".hidden"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let names =
            |v: Vec<PathBuf>| v.iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect::<Vec<_>>();
        assert_eq!(names(expand_inputs(&[dir.display().to_string()]).unwrap()), ["a.txt", "b.txt", "sub/c.txt"]);
        assert_eq!(names(expand_inputs(&[format!("{}/*.txt", dir.display())]).unwrap()), ["a.txt", "b.txt"]);
        assert!(expand_inputs(&[format!("{}/*.md", dir.display())]).is_err());
        assert!(expand_inputs(&["/nonexistent/x".into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod chat_tests {
    use super::*;
    use serde_json::json;

    /// The stretches of a document, as `(text, trained)`.
    fn parts(d: &Doc) -> Vec<(&str, bool)> {
        let mut start = 0;
        d.spans
            .iter()
            .map(|&(end, trained)| {
                let part = (&d.text[start..end], trained);
                start = end;
                part
            })
            .collect()
    }

    #[test]
    fn conversations_train_on_the_answers_only() {
        let conv = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": " Madrid. "},
        ]});
        let d = chat_doc(&conv, &ChatTemplate::special()).unwrap();
        assert_eq!(
            parts(&d),
            vec![
                ("<|system|>\nBe brief.\n", false),
                ("<|user|>\nCapital of France?\n", false),
                ("<|assistant|>\n", false),
                ("Paris.\n", true),
                ("<|user|>\nAnd of Spain?\n", false),
                ("<|assistant|>\n", false),
                ("Madrid.\n", true),
            ]
        );
        // The text is what `ferrite chat` writes for the same conversation.
        let mut c = crate::generate::chat::Conversation::new(ChatTemplate::special(), "Be brief.".into());
        c.turns.push(crate::generate::chat::Turn { user: "Capital of France?".into(), assistant: "Paris.".into() });
        let prompt = c.prompt("And of Spain?", |_| true);
        assert!(d.text.starts_with(&prompt), "{prompt:?}");
        assert_eq!(&d.text[prompt.len()..], "Madrid.\n");
    }

    #[test]
    fn bad_conversations_are_errors_naming_the_problem() {
        let t = ChatTemplate::dolly();
        let err = |v: serde_json::Value| chat_doc(&v, &t).err().map(|e| e.to_string()).unwrap_or_default();
        let answer = json!({"role": "assistant", "content": "x"});
        assert!(err(json!({"text": "hi"})).contains("no field \"messages\""));
        assert!(err(json!({"messages": "hi"})).contains("not an array"));
        assert!(err(json!({"messages": []})).contains("empty conversation"));
        assert!(err(json!({"messages": [{"content": "hi"}, answer]})).contains("message 1 has no role"));
        assert!(err(json!({"messages": [{"role": "bot", "content": "hi"}, answer]})).contains("role \"bot\""));
        assert!(err(json!({"messages": [{"role": "user", "content": 7}, answer]})).contains("a number, not a string"));
        assert!(err(json!({"messages": [{"role": "user"}, answer]})).contains("message 1 has no content"));
        let late = json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, answer]});
        assert!(err(late).contains("system message must come first"));
        assert!(err(json!({"messages": [{"role": "user", "content": "a"}]})).contains("nothing to train on"));
    }
}
