//! From tokens to the text a reader sees: bytes joined into whole UTF-8
//! characters, stop sequences held back and cut.

use super::stop::StopMatcher;
use crate::data::Tokenizer;
use std::sync::Arc;

/// One sequence's text as its tokens arrive.
pub struct TextStream {
    tokenizer: Arc<Tokenizer>,
    utf8: Utf8Stream,
    stop: StopMatcher,
    stopped: bool,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>, stops: &[String]) -> Self {
        TextStream { tokenizer, utf8: Utf8Stream::default(), stop: StopMatcher::new(stops), stopped: false }
    }

    /// Adds a token; returns the text now safe to show and whether a stop
    /// sequence was reached (nothing after it is ever shown).
    pub fn push(&mut self, token: u32) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let text = self.utf8.push(&self.tokenizer.decode_bytes(&[token]));
        let (show, stopped) = self.stop.push(&text);
        self.stopped = stopped;
        (show, stopped)
    }

    /// At the end: what was held back (an incomplete character as U+FFFD, a
    /// possible start of a stop sequence that never completed).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let (show, stopped) = self.stop.push(&self.utf8.finish());
        self.stopped = stopped;
        if stopped {
            show
        } else {
            show + &self.stop.finish()
        }
    }
}

/// Turns a stream of byte chunks into text, holding back an incomplete
/// UTF-8 sequence until its remaining bytes arrive (a byte-level model can
/// split a character across tokens). Invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let mut s = Utf8Stream::default();
        let crab = "🦀".as_bytes();
        assert_eq!(s.push(&crab[..1]), "");
        assert_eq!(s.push(&crab[1..3]), "");
        assert_eq!(s.push(&[crab[3], b'a']), "🦀a");
        assert_eq!(s.push(&[0xff, b'b']), "\u{fffd}b");
        assert_eq!(s.push(&crab[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn text_stream_cuts_at_a_stop_across_tokens() {
        let mut t = TextStream::new(Arc::new(Tokenizer::Byte), &["ND".into()]);
        let shown: Vec<(String, bool)> = "aENDx".bytes().map(|b| t.push(b as u32)).collect();
        let text: String = shown.iter().map(|s| s.0.as_str()).collect();
        assert_eq!((text.as_str(), shown[3].1), ("aE", true));
        assert_eq!(t.finish(), "");
    }
}
