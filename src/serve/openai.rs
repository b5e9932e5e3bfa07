//! The OpenAI request bodies ferrite accepts, checked into what the
//! generation API takes. Unknown fields are ignored, as llama-server does;
//! known fields of the wrong type or out of range are 400s naming them.

use super::errors::ApiError;
use super::worker::Choice;
use crate::generate::SamplerConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The server's limits on what one request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_tokens: usize,
    pub max_messages: usize,
    pub max_choices: usize,
    pub max_body_bytes: usize,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// What `/v1/completions` continues: text or token ids, one or several.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Sampling and output fields shared by both endpoints.
#[derive(Deserialize, Debug, Default)]
pub struct Settings {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<OneOrMany<String>>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

/// A request body: one JSON object.
pub fn object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    Ok(v)
}

/// Reads `T` from a whole body (`field` none) or one field of it; the
/// error names the field at fault.
pub fn read<T: DeserializeOwned>(v: &Value, field: Option<&str>) -> Result<T, ApiError> {
    let part = match field {
        Some(f) => v.get(f).ok_or_else(|| ApiError::invalid_param(f, format!("{f} is required")))?,
        None => v,
    };
    serde_path_to_error::deserialize::<_, T>(part).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (field, inner.as_str()) {
            (Some(f), ".") => f.to_string(),
            (Some(f), p) => format!("{f}.{p}"),
            (None, p) => p.to_string(),
        };
        let msg = e.into_inner().to_string();
        let msg = if msg.contains("untagged enum PromptIn") {
            "must be a string, a list of strings, a list of token ids or a list of such lists".to_string()
        } else if msg.contains("untagged enum Content") {
            "must be a string or a list of {\"type\": \"text\", \"text\": ...} parts".to_string()
        } else if msg.contains("untagged enum OneOrMany") {
            "must be a string or a list of strings".to_string()
        } else {
            msg
        };
        if path == "." {
            ApiError::invalid(msg)
        } else {
            let field = path.split('.').next().unwrap_or(&path).to_string();
            ApiError::invalid_param(&field, format!("{path}: {msg}"))
        }
    })
}

/// A request's settings, checked.
#[derive(Clone, Debug)]
pub struct Checked {
    pub sampling: SamplerConfig,
    pub seed: u64,
    pub n: usize,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
}

impl Checked {
    /// `n` choices of one prompt: seeds `seed`, `seed + 1`, ...
    pub fn choices(&self, prompt: &[u32]) -> Vec<Choice> {
        (0..self.n)
            .map(|i| Choice {
                prompt: prompt.to_vec(),
                sampling: self.sampling,
                seed: self.seed.wrapping_add(i as u64),
                stop: self.stop.clone(),
                max_tokens: self.max_tokens,
                logprobs: self.logprobs,
            })
            .collect()
    }
}

fn in_range(name: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    match v {
        None => Ok(default as f32),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x as f32),
        Some(x) => Err(ApiError::invalid_param(name, format!("{name} must be between {lo} and {hi}, got {x}"))),
    }
}

impl Settings {
    /// Checks the settings against the model's context and the server's
    /// limits. `default_max`: `max_tokens` when the request gives none;
    /// `chat`: the chat endpoint's (its `logprobs` differ).
    pub fn check(&self, context: usize, limits: &Limits, default_max: usize, chat: bool) -> Result<Checked, ApiError> {
        let cap = limits.max_tokens.min(context);
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => default_max.min(cap),
            Some(m) if m < 1 => {
                return Err(ApiError::invalid_param("max_tokens", format!("max_tokens must be at least 1, got {m}")))
            }
            Some(m) if m as u64 > cap as u64 => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    format!(
                        "max_tokens {m} is more than this model's context of {context} tokens{}",
                        if limits.max_tokens < context {
                            format!(" or the server's limit of {}", limits.max_tokens)
                        } else {
                            String::new()
                        }
                    ),
                ))
            }
            Some(m) => m as usize,
        };
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= 0 => k as usize,
            Some(k) => return Err(ApiError::invalid_param("top_k", format!("top_k must be 0 (off) or more, got {k}"))),
        };
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid_param("top_p", "top_p must be above 0"));
        }
        let repetition_penalty = match self.repetition_penalty {
            None => 1.0,
            Some(r) if r.is_finite() && r > 0.0 && r <= 10.0 => r as f32,
            Some(r) => {
                return Err(ApiError::invalid_param(
                    "repetition_penalty",
                    format!("repetition_penalty must be in (0, 10], got {r}"),
                ))
            }
        };
        let sampling = SamplerConfig {
            temperature: in_range("temperature", self.temperature, 0.0, 2.0, 1.0)?,
            top_k,
            top_p,
            min_p: in_range("min_p", self.min_p, 0.0, 1.0, 0.0)?,
            repetition_penalty,
            frequency_penalty: in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?,
            presence_penalty: in_range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?,
            ..SamplerConfig::default()
        };
        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n as u64 <= limits.max_choices as u64 => n as usize,
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("n must be between 1 and {}, got {n}", limits.max_choices),
                ))
            }
        };
        let stop = self.stop.as_ref().map(|s| match s {
            OneOrMany::One(x) => vec![x.clone()],
            OneOrMany::Many(v) => v.clone(),
        });
        let stop = stop.unwrap_or_default();
        if stop.len() > 4 {
            return Err(ApiError::invalid_param("stop", format!("at most 4 stop sequences, got {}", stop.len())));
        }
        if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid_param("stop", "stop sequences must be 1 to 256 bytes long"));
        }
        let logprobs = self.logprobs(chat)?;
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid_param("stream_options", "stream_options is only allowed with stream: true"));
        }
        let seed = match self.seed {
            Some(s) => s as u64,
            // No seed: a fresh one, as OpenAI and llama-server do.
            None => crate::engine::fastmath::mix64(super::unix_time().as_nanos() as u64),
        };
        Ok(Checked { sampling, seed, n, max_tokens, stop, stream, include_usage, logprobs })
    }

    /// Alternatives per token to report, if any: the completions endpoint's
    /// `logprobs` (0 to 5), the chat endpoint's `logprobs: true` with
    /// `top_logprobs` (0 to 20).
    fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        let int = |name: &str, v: &Value, max: u64| match v.as_u64() {
            Some(n) if n <= max => Ok(n as usize),
            _ => Err(ApiError::invalid_param(name, format!("{name} must be an integer from 0 to {max}, got {v}"))),
        };
        let given = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_null()).cloned();
        match (chat, given(&self.logprobs), given(&self.top_logprobs)) {
            (false, None, None) => Ok(None),
            (false, Some(v), None) => int("logprobs", &v, 5).map(Some),
            (false, _, Some(_)) => {
                Err(ApiError::invalid_param("top_logprobs", "top_logprobs is for chat; completions take logprobs: N"))
            }
            (true, lp, top) => {
                let on = match lp {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(v) => {
                        return Err(ApiError::invalid_param(
                            "logprobs",
                            format!("logprobs must be true or false, got {v}"),
                        ))
                    }
                };
                match (on, top) {
                    (false, None) => Ok(None),
                    (false, Some(_)) => {
                        Err(ApiError::invalid_param("top_logprobs", "top_logprobs needs logprobs: true"))
                    }
                    (true, None) => Ok(Some(0)),
                    (true, Some(v)) => int("top_logprobs", &v, crate::generate::MAX_TOP_LOGPROBS as u64).map(Some),
                }
            }
        }
    }
}

impl PromptIn {
    /// The prompts as text or tokens (at least one, none empty).
    pub fn into_prompts(self) -> Result<Vec<PromptOne>, ApiError> {
        let prompts: Vec<PromptOne> = match self {
            PromptIn::Text(t) => vec![PromptOne::Text(t)],
            PromptIn::Tokens(t) => vec![PromptOne::Tokens(t)],
            PromptIn::Texts(v) => v.into_iter().map(PromptOne::Text).collect(),
            PromptIn::TokenLists(v) => v.into_iter().map(PromptOne::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid_param("prompt", "prompt is an empty list"));
        }
        if prompts.iter().any(|p| match p {
            PromptOne::Text(t) => t.is_empty(),
            PromptOne::Tokens(t) => t.is_empty(),
        }) {
            return Err(ApiError::invalid_param("prompt", "the prompt is empty: give at least one token of context"));
        }
        Ok(prompts)
    }
}

pub enum PromptOne {
    Text(String),
    Tokens(Vec<u32>),
}

impl Message {
    /// The text of the message (parts joined).
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                format!("content parts of type `{kind}` are not supported (text only)"),
                            ))
                        }
                    }
                }
                Ok(s)
            }
        }
    }
}
