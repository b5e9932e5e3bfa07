//! Tokenizers and datasets.

pub mod chat_template;
pub mod dataset;
pub mod files;
pub mod hub;
pub mod prepare;
pub mod shards;
pub mod tiny_shakespeare;
pub mod tokenizer;
pub mod units;
pub mod untrusted;

pub use chat_template::ChatTemplate;
pub use dataset::{Dataset, Split};
pub use tokenizer::{HfTokenizer, OpenAiVocab, Tokenizer};
