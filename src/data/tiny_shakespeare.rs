//! The default corpus: tiny Shakespeare (public domain, 1,115,394 bytes),
//! built into the binary zstd-compressed (~0.37 MB), so the default run needs
//! no network. `assets/tinyshakespeare.txt.zst` is `zstd -19` of the file
//! nanoGPT downloads (its SHA-256 is checked by a test).

/// How commands name it.
pub const NAME: &str = "tiny Shakespeare (built in)";

const COMPRESSED: &[u8] = include_bytes!("../../assets/tinyshakespeare.txt.zst");

/// The corpus' bytes.
pub fn bytes() -> Vec<u8> {
    zstd::decode_all(COMPRESSED).expect("the built-in corpus decompresses")
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_built_in_corpus_is_tiny_shakespeare() {
        let b = super::bytes();
        assert_eq!(b.len(), 1_115_394);
        let hex: String = Sha256::digest(&b).iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed");
    }
}
