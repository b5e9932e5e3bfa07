//! ferrite's OpenAI vocabularies encode token for token like Python
//! tiktoken, on texts that cover whitespace, punctuation, numbers, Unicode
//! and emoji (fixture: `scripts/make_tokenizer_fixture.py`).

use ferrite::data::{OpenAiVocab, Tokenizer};

#[test]
fn encodings_match_tiktoken() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizers.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let texts: Vec<&str> = fixture["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for vocab in OpenAiVocab::ALL {
        let tok = Tokenizer::Tiktoken { name: vocab };
        let want = fixture["ids"][vocab.name()].as_array().unwrap();
        assert_eq!(want.len(), texts.len());
        let mut mismatches = Vec::new();
        for (t, ids) in texts.iter().zip(want) {
            let ids: Vec<u32> = ids.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            let got = tok.encode(t).unwrap();
            if got != ids {
                mismatches.push(format!("{t:?}: ferrite {got:?}, tiktoken {ids:?}"));
            }
            assert_eq!(tok.decode_bytes(&got), t.as_bytes());
        }
        assert!(mismatches.is_empty(), "{}: {} mismatches, first: {}", vocab.name(), mismatches.len(), mismatches[0]);
        // All texts as one: the parallel split path must agree too.
        let joined = texts.join("\n").repeat(30);
        let serial = vocab.bpe().encode_ordinary(&joined);
        assert_eq!(tok.encode(&joined).unwrap(), serial, "{} parallel", vocab.name());
    }
}
