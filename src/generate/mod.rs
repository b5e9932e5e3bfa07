//! Text generation: the API a command or a server calls ([`Batch`],
//! [`complete`]: requests in, text events out), and what it is made of:
//! samplers, stop sequences, text streaming, speculative decoding, chat
//! conversations.

pub mod batch;
pub mod chat;
pub mod request;
pub mod sampler;
pub mod speculative;
pub mod stop;
pub mod text;

pub use batch::{complete, Batch};
pub use request::{Draft, Event, Finish, FinishReason, Prompt, Request, SeqId, TokenLogprobs, MAX_TOP_LOGPROBS};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::StopMatcher;
pub use text::{TextStream, Utf8Stream};
