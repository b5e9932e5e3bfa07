//! What a caller asks of the generation API and what it gets back: a
//! [`Request`] in, a stream of [`Event`]s out (text pieces, then one
//! [`Finish`]).

use super::sampler::SamplerConfig;
use super::speculative::SpecStats;
use crate::engine::Backend;
use crate::model::Gpt;
use std::sync::Arc;
use std::time::Duration;

/// The text to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Encoded with the model's tokenizer.
    Text(String),
    Tokens(Vec<u32>),
}

/// A smaller model with the same tokenizer that drafts tokens for the
/// target to check (speculative decoding).
pub struct Draft<B: Backend> {
    pub model: Arc<Gpt<B>>,
    /// Tokens proposed per round.
    pub tokens: usize,
}

impl<B: Backend> Clone for Draft<B> {
    fn clone(&self) -> Self {
        Draft { model: self.model.clone(), tokens: self.tokens }
    }
}

/// One generation. Only the last `block_size` tokens of the prompt fit in
/// the model's context; past it the window slides.
pub struct Request<B: Backend> {
    pub prompt: Prompt,
    pub sampling: SamplerConfig,
    /// The same seed (and settings) gives the same tokens.
    pub seed: u64,
    /// Generation ends where one of these appears; it is not shown.
    pub stop: Vec<String>,
    pub max_tokens: usize,
    pub draft: Option<Draft<B>>,
    /// With `Some(n)`, each generated token also comes as an
    /// [`Event::Token`]: its log-probability under the model (the raw
    /// distribution, before penalties, truncation and temperature) and the
    /// `n` most likely tokens' (at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

/// Most alternatives a token's [`TokenLogprobs`] lists.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token and how likely the model found it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl<B: Backend> Request<B> {
    /// A request with default sampling, seed 0, no stop sequences, no draft,
    /// no log-probabilities.
    pub fn new(prompt: Prompt, max_tokens: usize) -> Self {
        Request {
            prompt,
            sampling: SamplerConfig::default(),
            seed: 0,
            stop: Vec::new(),
            max_tokens,
            draft: None,
            logprobs: None,
        }
    }
}

/// Names one sequence of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Clone, Debug, PartialEq)]
pub enum FinishReason {
    /// A stop sequence appeared.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller cancelled it.
    Cancelled,
    /// The device failed; the message says how.
    Error(String),
}

impl FinishReason {
    /// As the OpenAI API names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error(_) => "error",
        }
    }
}

/// How a sequence ended, with its counts and timings.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    /// Tokens of the whole prompt (also those cropped from the window).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From the request joining to its first token (prefill and queueing).
    pub time_to_first_token: Duration,
    /// From the request joining to its finish.
    pub total: Duration,
    /// Acceptance counts, for a request with a draft model.
    pub speculative: Option<SpecStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token's log-probabilities (only for requests that ask,
    /// [`Request::logprobs`]); it comes before the token's text, which may
    /// be held back (a split character, a possible stop sequence).
    Token(TokenLogprobs),
    /// New text: always whole UTF-8 characters; never contains a stop sequence.
    Text(String),
    /// The last event of a sequence.
    Finish(Finish),
}
