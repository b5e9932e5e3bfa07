//! Where documents come from: text files (whole, by line or by paragraph),
//! JSONL with a chosen field, parquet files with a chosen text column, and
//! databricks-dolly-15k style instruction records. Every reader streams:
//! it hands over documents in batches of about `batch_bytes`, never the
//! whole input.

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
}

/// A document; `prompt_bytes` > 0 marks its first bytes as a prompt that is
/// not trained on (instruction data).
pub struct Doc {
    pub text: String,
    pub prompt_bytes: usize,
}

impl Doc {
    fn plain(text: String) -> Doc {
        Doc { text, prompt_bytes: 0 }
    }
}

pub struct SourceOptions {
    pub format: Format,
    pub field: String,
    pub column: String,
    pub template: InstructionTemplate,
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
        Format::Jsonl | Format::Dolly => {
            let dolly = format == Format::Dolly;
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
                let doc = if dolly {
                    dolly_doc(&value, &opts.template).map_err(|e| anyhow!("{} line {}: {e}", path.display(), i + 1))?
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
    let text = format!("{prompt}{}", t.response.replace("{response}", response.trim()));
    Ok(Doc { prompt_bytes: prompt.len(), text })
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
        assert_eq!(&d[0].text[d[0].prompt_bytes..], "Blue.");
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
