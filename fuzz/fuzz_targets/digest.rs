//! Digests: a digest that parses prints back to the same string, and is
//! `algorithm:hex` with lower-case hex.
#![no_main]

use ecr_gateway::domain::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Digest::parse(text) {
        Ok(digest) => {
            assert_eq!(digest.to_string(), text);
            assert_eq!(format!("{}:{}", digest.algorithm(), digest.hex()), text);
            assert!(
                digest
                    .hex()
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(&digest));
        }
        Err(violation) => assert!(!violation.rule.is_empty() && !violation.description.is_empty()),
    }
});
