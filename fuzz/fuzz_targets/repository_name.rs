//! Repository names: a name that parses prints back to the same string, its
//! segments join back to it, and a refusal names the field and the rule.
#![no_main]

use ecr_gateway::domain::RepositoryName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match RepositoryName::parse(text) {
        Ok(name) => {
            assert_eq!(name.to_string(), text);
            assert_eq!(name.segments().collect::<Vec<_>>().join("/"), text);
            assert!(name.segments().all(RepositoryName::is_valid_segment));
            assert!(text.len() <= 256, "{} characters accepted", text.len());
            assert_eq!(RepositoryName::parse(&name.to_string()).as_ref(), Ok(&name));
        }
        Err(violation) => {
            assert!(!violation.rule.is_empty() && !violation.description.is_empty());
        }
    }
});
