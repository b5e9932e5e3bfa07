//! Stop sequences on streamed text: generation ends where one appears, and
//! any tail that could be the start of one is held back until it is clear.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// Empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Feeds newly generated text. Returns the text that is safe to show and
    /// whether a stop sequence was reached (the sequence itself is not shown).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest tail that is a proper prefix of a stop sequence.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// What is held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_and_holds_back_possible_starts() {
        let mut m = StopMatcher::new(&["\n\n".into(), "THE END".into()]);
        assert_eq!(m.push("Once upon"), ("Once upon".into(), false));
        assert_eq!(m.push(" a time THE"), (" a time ".into(), false));
        assert_eq!(m.push(" ENDING"), ("".into(), true));
        let mut m = StopMatcher::new(&["\n\n".into()]);
        assert_eq!(m.push("a\n"), ("a".into(), false));
        assert_eq!(m.push("b"), ("\nb".into(), false));
        assert_eq!(m.push("\n"), ("".into(), false));
        assert_eq!(m.finish(), "\n");
        let mut none = StopMatcher::new(&["".into()]);
        assert_eq!(none.push("x"), ("x".into(), false));
    }
}
