//! Image tags: a tag that parses prints back to the same string and keeps to
//! ECR's grammar (1-128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`).
#![no_main]

use ecr_gateway::domain::ImageTag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ImageTag::parse(text) {
        Ok(tag) => {
            assert_eq!(tag.as_str(), text);
            assert!((1..=128).contains(&text.len()));
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            );
            assert_eq!(ImageTag::parse(&tag.to_string()).as_ref(), Ok(&tag));
        }
        Err(violation) => assert!(!violation.rule.is_empty() && !violation.description.is_empty()),
    }
});
