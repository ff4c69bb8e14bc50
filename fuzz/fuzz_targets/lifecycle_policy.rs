//! Lifecycle policy JSON: a policy that parses serialises to JSON that parses
//! to the same policy (and serialises the same again); every refusal names a
//! field under the prefix given.
#![no_main]

use ecr_gateway::policy::lifecycle_model::LifecyclePolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match LifecyclePolicy::parse(text, "lifecycle_policy") {
        Ok(policy) => {
            let json = policy.to_json();
            let again = LifecyclePolicy::parse(&json, "lifecycle_policy").expect("its own JSON parses");
            assert_eq!(again, policy, "{json}");
            assert_eq!(again.to_json(), json);
            assert!(!policy.rules().is_empty());
        }
        Err(violations) => {
            assert!(!violations.is_empty());
            for violation in &violations {
                assert!(violation.field.starts_with("lifecycle_policy"), "{violation:?}");
            }
        }
    }
});
