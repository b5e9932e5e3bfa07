//! Amounts written the way people type them: `200M` tokens, `20GB` of cache.

/// `s` as a positive number times the multiplier of its one-letter suffix
/// (any case), e.g. `"1.5M"` with `('m', 1e6)` is 1,500,000; `None` unless
/// the result is positive and below 10^18.
pub fn parse_scaled(s: &str, suffixes: &[(char, f64)]) -> Option<f64> {
    let t = s.trim();
    let (i, last) = t.char_indices().last()?;
    let (num, mult) = match suffixes.iter().find(|(c, _)| last.eq_ignore_ascii_case(c)) {
        Some(&(_, m)) => (&t[..i], m),
        None => (t, 1.0),
    };
    let n = num.trim().parse::<f64>().ok()? * mult;
    (n > 0.0 && n < 1e18).then_some(n)
}

/// Decimal multipliers of token counts: K, M, B.
pub const COUNT_SUFFIXES: &[(char, f64)] = &[('k', 1e3), ('m', 1e6), ('b', 1e9)];
/// Decimal multipliers of byte sizes: K, M, G, T (a trailing B is dropped first).
pub const SIZE_SUFFIXES: &[(char, f64)] = &[('k', 1e3), ('m', 1e6), ('g', 1e9), ('t', 1e12)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_spaces_and_bad_input() {
        assert_eq!(parse_scaled("1.5M", COUNT_SUFFIXES), Some(1.5e6));
        assert_eq!(parse_scaled(" 200m ", COUNT_SUFFIXES), Some(2e8));
        assert_eq!(parse_scaled("2 B", COUNT_SUFFIXES), Some(2e9));
        assert_eq!(parse_scaled("50000", COUNT_SUFFIXES), Some(5e4));
        assert_eq!(parse_scaled("3T", SIZE_SUFFIXES), Some(3e12));
        for bad in ["", "M", "lots", "-1K", "0", "1e20", "NaN", "inf"] {
            assert_eq!(parse_scaled(bad, COUNT_SUFFIXES), None, "{bad:?}");
        }
    }
}
