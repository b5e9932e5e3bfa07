//! `POST /v1/completions` and `POST /v1/chat/completions`: a request becomes
//! a job of choices for its model's batch; its text comes back whole or as
//! server-sent events, in the OpenAI API's shapes.

use super::errors::ApiError;
use super::openai::{object, read, Checked, Message, PromptIn, PromptOne, Settings};
use super::routes::{json_body, respond};
use super::worker::{Choice, Job, ModelHandle, Rejected, Update};
use super::{AppState, Shared};
use crate::data::Tokenizer;
use crate::generate::chat::{Conversation, Turn};
use crate::generate::{Finish, FinishReason, TokenLogprobs};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// `max_tokens` when a request gives none: OpenAI's 16 for completions; for
/// chat, as `ferrite chat`.
const DEFAULT_MAX_TOKENS: (usize, usize) = (16, 256);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Chat,
}

/// What a response says about itself.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    choices: usize,
    prompt_tokens: usize,
    include_usage: bool,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    tokenizer: Arc<Tokenizer>,
}

fn next_id(kind: Kind) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = crate::engine::fastmath::mix64(super::unix_time().as_nanos() as u64 ^ n.rotate_left(32));
    format!("{}-{tag:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" })
}

/// A checked request, ready to queue.
struct Prepared {
    model: usize,
    checked: Checked,
    choices: Vec<Choice>,
    /// Tokens of the whole prompts (usage counts them all).
    prompt_tokens: usize,
    kind: Kind,
}

pub async fn completions(State(s): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Response {
    let r = match prepare(&s, headers, b, Kind::Text).await {
        Ok(p) => run(&s, p).await,
        Err(e) => Err(e),
    };
    respond(&s, "completions", r)
}

pub async fn chat_completions(
    State(s): State<Shared>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let r = match prepare(&s, headers, b, Kind::Chat).await {
        Ok(p) => run(&s, p).await,
        Err(e) => Err(e),
    };
    respond(&s, "chat", r)
}

/// Parses, checks and tokenizes on a blocking thread: a long conversation
/// must not stall the runtime that serves every other connection.
async fn prepare(
    s: &Shared,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Prepared, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        s.authorize(&headers)?;
        let v = object(&json_body(&headers, b, s.opts.limits.max_body_bytes)?)?;
        match kind {
            Kind::Text => prepare_completion(&s, &v),
            Kind::Chat => prepare_chat(&s, &v),
        }
    })
    .await
    .map_err(|e| ApiError::server(format!("preparing the request failed: {e}")))?
}

/// The last `block_size` tokens: all of a prompt the model reads.
fn window(tokens: &[u32], m: &ModelHandle) -> Vec<u32> {
    tokens[tokens.len().saturating_sub(m.block_size)..].to_vec()
}

fn prepare_completion(s: &AppState, v: &Value) -> Result<Prepared, ApiError> {
    let settings: Settings = read(v, None)?;
    let (model, m) = s.model(settings.model.as_deref())?;
    let checked = settings.check(m.block_size, &s.opts.limits, DEFAULT_MAX_TOKENS.0, false)?;
    let prompt: PromptIn = read(v, Some("prompt"))?;
    let prompts = prompt.into_prompts()?;
    check_choices(prompts.len() * checked.n, &s.opts.limits)?;
    let mut choices = Vec::new();
    let mut prompt_tokens = 0;
    for p in prompts {
        let tokens = match p {
            PromptOne::Text(t) => m
                .tokenizer
                .encode(&t)
                .map_err(|e| ApiError::invalid_param("prompt", format!("cannot tokenize the prompt: {e:#}")))?,
            PromptOne::Tokens(t) => {
                if let Some(bad) = t.iter().find(|&&x| x as usize >= m.vocab_size) {
                    return Err(ApiError::invalid_param(
                        "prompt",
                        format!("prompt token {bad} is outside the model's vocabulary of {}", m.vocab_size),
                    ));
                }
                t
            }
        };
        prompt_tokens += tokens.len();
        choices.extend(checked.choices(&window(&tokens, m)));
    }
    Ok(Prepared { model, checked, choices, prompt_tokens, kind: Kind::Text })
}

fn prepare_chat(s: &AppState, v: &Value) -> Result<Prepared, ApiError> {
    let settings: Settings = read(v, None)?;
    let (model, m) = s.model(settings.model.as_deref())?;
    let limit = s.opts.limits.max_messages;
    if v["messages"].as_array().is_some_and(|a| a.len() > limit) {
        return Err(ApiError::invalid_param("messages", format!("more messages than the server's limit of {limit}")));
    }
    let messages: Vec<Message> = read(v, Some("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "messages must not be empty"));
    }
    let mut checked = settings.check(m.block_size, &s.opts.limits, DEFAULT_MAX_TOKENS.1, true)?;
    check_choices(checked.n, &s.opts.limits)?;
    let prompt = chat_prompt(m, &messages, checked.max_tokens)?;
    // The template's turn markers end an answer too.
    for stop in &m.template.stop {
        if !checked.stop.contains(stop) {
            checked.stop.push(stop.clone());
        }
    }
    let choices = checked.choices(&window(&prompt, m));
    Ok(Prepared { model, checked, choices, prompt_tokens: prompt.len(), kind: Kind::Chat })
}

/// Prompts × n within the server's limit (checked before any tokenizing).
fn check_choices(n: usize, limits: &super::Limits) -> Result<(), ApiError> {
    if n > limits.max_choices {
        return Err(ApiError::invalid_param(
            "n",
            format!("{n} choices (prompts × n) is more than the server's limit of {}", limits.max_choices),
        ));
    }
    Ok(())
}

/// The conversation as the model's prompt: system messages first, then the
/// turns, then the last user message; the oldest turns are dropped until
/// it fits with room for the answer (as `ferrite chat` does).
fn chat_prompt(m: &ModelHandle, messages: &[Message], max_tokens: usize) -> Result<Vec<u32>, ApiError> {
    let mut system = Vec::new();
    let mut turns = Vec::new();
    let mut user: Option<String> = None;
    for msg in messages {
        let text = msg.text()?;
        match msg.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => {
                user = Some(match user.take() {
                    Some(prev) => format!("{prev}\n{text}"),
                    None => text,
                })
            }
            "assistant" => turns.push(Turn { user: user.take().unwrap_or_default(), assistant: text }),
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("message role `{other}` is not supported (system, user, assistant)"),
                ))
            }
        }
    }
    let Some(question) = user else {
        return Err(ApiError::invalid_param("messages", "the last message must be the user's"));
    };
    if question.is_empty() && turns.is_empty() && system.is_empty() {
        return Err(ApiError::invalid_param("messages", "the conversation is empty"));
    }
    let system = if system.is_empty() { m.template.default_system() } else { system.join("\n") };
    let conv = Conversation { template: m.template.clone(), system, turns };
    let (tok, block) = (&m.tokenizer, m.block_size);
    let reserve = max_tokens.min(block / 2);
    let fits = |p: &str| tok.encode(p).map(|t| t.len() + reserve <= block).unwrap_or(true);
    let text = conv.prompt(&question, fits);
    let tokens = tok.encode(&text).map_err(|e| {
        ApiError::invalid_param("messages", format!("cannot write these messages in the model's vocabulary: {e:#}"))
    })?;
    if tokens.is_empty() {
        return Err(ApiError::invalid_param("messages", "the conversation is empty"));
    }
    Ok(tokens)
}

async fn run(s: &Shared, p: Prepared) -> Result<Response, ApiError> {
    let m = &s.models[p.model];
    let meta = Meta {
        kind: p.kind,
        id: next_id(p.kind),
        created: super::unix_time().as_secs(),
        model: m.name.clone(),
        choices: p.choices.len(),
        prompt_tokens: p.prompt_tokens,
        include_usage: p.checked.include_usage,
        logprobs: p.checked.logprobs.is_some(),
        tokenizer: m.tokenizer.clone(),
    };
    let (tx, rx) = unbounded_channel();
    m.submit(Job { choices: p.choices, updates: tx }).map_err(|e| match e {
        Rejected::Full => ApiError::queue_full(),
        Rejected::Stopped => ApiError::stopped(&m.name),
    })?;
    if p.checked.stream {
        Ok(stream(meta, rx))
    } else {
        whole(meta, rx).await
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn finish_reason(f: &Finish) -> Result<&'static str, ApiError> {
    match &f.reason {
        FinishReason::Error(e) => Err(ApiError::server(format!("generation failed: {e}"))),
        r => Ok(r.as_str()),
    }
}

/// Waits for every choice, then answers at once.
async fn whole(meta: Meta, mut rx: UnboundedReceiver<Update>) -> Result<Response, ApiError> {
    let mut texts = vec![String::new(); meta.choices];
    let mut tokens: Vec<Vec<TokenLogprobs>> = vec![Vec::new(); meta.choices];
    let mut finishes: Vec<Option<Finish>> = vec![None; meta.choices];
    let mut done = 0;
    while done < meta.choices {
        match rx.recv().await {
            Some(Update::Token { index, info }) => tokens[index].push(info),
            Some(Update::Text { index, text }) => texts[index].push_str(&text),
            Some(Update::Finish { index, finish }) => {
                finishes[index] = Some(finish);
                done += 1;
            }
            Some(Update::Error { message, .. }) => return Err(ApiError::invalid(message)),
            None => return Err(ApiError::server("the model's batch stopped")),
        }
    }
    let mut out = Vec::new();
    let mut completion = 0;
    for (index, ((text, f), infos)) in texts.into_iter().zip(finishes).zip(&tokens).enumerate() {
        let f = f.expect("every choice finished");
        completion += f.completion_tokens;
        let reason = finish_reason(&f)?;
        let logprobs = meta.logprobs_json(infos, &mut 0);
        out.push(match meta.kind {
            Kind::Text => json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}),
            Kind::Chat => json!({
                "index": index, "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": logprobs, "finish_reason": reason,
            }),
        });
    }
    let object = if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    Ok(Json(json!({
        "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
        "choices": out, "usage": usage(meta.prompt_tokens, completion),
    }))
    .into_response())
}

impl Meta {
    /// A token as text (a piece of a character shows as U+FFFD) and bytes.
    fn token_text(&self, t: u32) -> (String, Vec<u8>) {
        let bytes = self.tokenizer.decode_bytes(&[t]);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// `infos` as OpenAI writes log-probabilities (null when not asked
    /// for): chat's `content` list, or completions' parallel lists, whose
    /// `text_offset`s count on from `offset`.
    fn logprobs_json(&self, infos: &[TokenLogprobs], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => {
                let entry = |t: u32, lp: f32| {
                    let (text, bytes) = self.token_text(t);
                    json!({"token": text, "logprob": lp, "bytes": bytes})
                };
                let content: Vec<Value> = infos
                    .iter()
                    .map(|i| {
                        let mut e = entry(i.token, i.logprob);
                        e["top_logprobs"] = i.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
                        e
                    })
                    .collect();
                json!({"content": content})
            }
            Kind::Text => {
                let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
                for i in infos {
                    let (text, _) = self.token_text(i.token);
                    offsets.push(*offset);
                    *offset += text.chars().count();
                    tokens.push(text);
                    lps.push(i.logprob);
                    let top: serde_json::Map<String, Value> =
                        i.top.iter().map(|&(t, lp)| (self.token_text(t).0, json!(lp))).collect();
                    tops.push(Value::Object(top));
                }
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }

    /// One streamed chunk for choice `index`: `text` (none: the opening
    /// role delta of a chat), and the finish reason on the last.
    fn chunk(&self, index: usize, text: Option<&str>, reason: Option<&str>, logprobs: Value) -> Event {
        let choice = match self.kind {
            Kind::Text => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason})
            }
            Kind::Chat => {
                let delta = match (text, reason) {
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (Some(t), _) => json!({"content": t}),
                    (None, Some(_)) => json!({}),
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
            }
        };
        self.event(vec![choice], None)
    }

    fn event(&self, choices: Vec<Value>, usage: Option<Value>) -> Event {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    }
}

/// Server-sent events: a chunk per text piece, a last chunk per choice with
/// its finish reason, the usage (when asked), then `[DONE]`. Dropping the
/// stream (the client went away) drops the receiver, which frees the slots.
fn stream(meta: Meta, rx: UnboundedReceiver<Update>) -> Response {
    struct State {
        meta: Meta,
        rx: UnboundedReceiver<Update>,
        queue: VecDeque<Event>,
        /// Per choice: log-probabilities of tokens whose text is not sent
        /// yet, and the text sent so far (completions' offsets).
        tokens: Vec<Vec<TokenLogprobs>>,
        offsets: Vec<usize>,
        done: usize,
        completion: usize,
        over: bool,
    }
    let mut queue = VecDeque::new();
    if meta.kind == Kind::Chat {
        for i in 0..meta.choices {
            queue.push_back(meta.chunk(i, None, None, Value::Null));
        }
    }
    let (tokens, offsets) = (vec![Vec::new(); meta.choices], vec![0; meta.choices]);
    let state = State { meta, rx, queue, tokens, offsets, done: 0, completion: 0, over: false };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.over {
                return None;
            }
            let fail = |st: &mut State, e: ApiError| {
                st.queue.push_back(Event::default().data(e.body().to_string()));
                st.queue.push_back(Event::default().data("[DONE]"));
                st.over = true;
            };
            match st.rx.recv().await {
                Some(Update::Token { index, info }) => st.tokens[index].push(info),
                Some(Update::Text { index, text }) => {
                    let infos = std::mem::take(&mut st.tokens[index]);
                    let lp = st.meta.logprobs_json(&infos, &mut st.offsets[index]);
                    let e = st.meta.chunk(index, Some(&text), None, lp);
                    st.queue.push_back(e);
                }
                Some(Update::Finish { index, finish }) => match finish_reason(&finish) {
                    Ok(reason) => {
                        st.completion += finish.completion_tokens;
                        let infos = std::mem::take(&mut st.tokens[index]);
                        let lp = if infos.is_empty() {
                            Value::Null
                        } else {
                            st.meta.logprobs_json(&infos, &mut st.offsets[index])
                        };
                        let e = st.meta.chunk(index, None, Some(reason), lp);
                        st.queue.push_back(e);
                        st.done += 1;
                        if st.done == st.meta.choices {
                            if st.meta.include_usage {
                                let e = st.meta.event(vec![], Some(usage(st.meta.prompt_tokens, st.completion)));
                                st.queue.push_back(e);
                            }
                            st.queue.push_back(Event::default().data("[DONE]"));
                            st.over = true;
                        }
                    }
                    Err(e) => fail(&mut st, e),
                },
                Some(Update::Error { message, .. }) => fail(&mut st, ApiError::invalid(message)),
                None => fail(&mut st, ApiError::server("the model's batch stopped")),
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
