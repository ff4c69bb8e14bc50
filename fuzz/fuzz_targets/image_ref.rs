//! Image references (`name:tag`, `name@sha256:…`, full ECR URIs): the
//! canonical form of a reference that parses parses to the same reference,
//! and every refusal is reported under the field `reference`.
#![no_main]

use ecr_gateway::domain::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ImageRef::parse(text) {
        Ok(reference) => {
            let canonical = reference.to_string();
            assert_eq!(
                ImageRef::parse(&canonical).as_ref(),
                Ok(&reference),
                "{canonical}"
            );
            assert!(reference.tag().is_some() || reference.digest().is_some());
        }
        Err(violations) => {
            assert!(!violations.is_empty());
            for violation in &violations {
                assert_eq!(violation.field, "reference", "{violation:?}");
                assert!(!violation.description.is_empty());
            }
        }
    }
});
