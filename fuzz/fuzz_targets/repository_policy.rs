//! Repository policy JSON, checked by the org policy inside a whole
//! CreateRepository plan: an otherwise valid request is refused only under
//! `settings.repository_policy`, and an accepted policy is JSON.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ecr_gateway::domain::AccountId;
use ecr_gateway::policy::{OrgPolicy, OrgPolicyConfig, RepositoryRequest};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static (OrgPolicy, AccountId) {
    static POLICY: OnceLock<(OrgPolicy, AccountId)> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut config = OrgPolicyConfig::default();
        config.repository_policy.forbid_wildcard_principal = true;
        config.repository_policy.allowed_accounts = vec!["210987654321".into()];
        let policy = OrgPolicy::compile(&config).expect("a valid org policy");
        (policy, AccountId::parse("123456789012").expect("an account id"))
    })
}

fuzz_target!(|text: &str| {
    let (policy, account) = policy();
    let request = RepositoryRequest {
        name: "payments/api".into(),
        tags: BTreeMap::new(),
        repository_policy: Some(text.to_owned()),
        ..RepositoryRequest::default()
    };
    match policy.plan_repository(&request, account) {
        Ok(spec) => {
            if let Some(document) = &spec.repository_policy {
                serde_json::from_str::<serde_json::Value>(document).expect("an accepted policy is JSON");
            }
        }
        Err(violations) => {
            for violation in &violations {
                assert!(
                    violation.field.starts_with("settings.repository_policy"),
                    "{violation:?}"
                );
            }
        }
    }
});
