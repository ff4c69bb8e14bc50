use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message as _;

use super::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn default_config() -> AuthzConfig {
    AuthzConfig {
        policies: Some(repo_root().join("deploy/policies")),
        entities: Some(repo_root().join("deploy/policies/entities.json")),
    }
}

fn main_registry() -> RegistryRef {
    RegistryRef {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

fn authorizer(config: &AuthzConfig) -> Authorizer {
    Authorizer::load(
        config,
        vec![main_registry()],
        ["payments".to_owned(), "search".to_owned()],
    )
    .unwrap_or_else(|problems| panic!("load: {problems:?}"))
}

fn user(principal: &str, groups: &[&str]) -> Identity {
    Identity {
        principal: principal.into(),
        principal_type: "User".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        auth_method: "oidc".into(),
    }
}

fn service(principal: &str) -> Identity {
    Identity {
        principal: principal.into(),
        principal_type: "Service".into(),
        groups: Vec::new(),
        auth_method: "mtls".into(),
    }
}

fn repo(name: &str) -> Resource {
    Resource::repository(&main_registry(), name)
}

#[test]
fn the_schema_compiles_and_names_every_rpc_of_the_api() {
    let actions = schema_actions().expect("schema");
    let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
    let rpcs: BTreeSet<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "ecrgateway.v1")
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect();
    assert!(rpcs.len() >= 35, "{rpcs:?}");
    // GetRegistryCredentials is authorized per scope entry as PullImages or
    // PushImages; PromoteImage as PullImages on its source and PushImages on its target;
    let mut rpcs = rpcs;
    assert!(rpcs.remove("GetRegistryCredentials"), "{rpcs:?}");
    assert!(rpcs.remove("PromoteImage"), "{rpcs:?}");
    // RemediateRepositories as UpdateRepository on every repository it selects.
    assert!(rpcs.remove("RemediateRepositories"), "{rpcs:?}");
    rpcs.extend(["PullImages".to_owned(), "PushImages".to_owned()]);
    assert_eq!(
        actions, rpcs,
        "every RPC needs exactly one action in src/auth/schema.cedarschema (and no action without an RPC)"
    );
}

#[test]
fn the_default_policy_loads_against_the_schema() {
    let authz = authorizer(&default_config());
    let summary = authz.summary();
    assert_eq!(summary.policies, 5);
    assert!(summary.entities > 5, "{summary:?}");
}

#[test]
fn team_members_manage_their_namespace_only() {
    let authz = authorizer(&default_config());
    let alice = user("alice@example.com", &["payments"]);
    for action in [
        "CreateRepository",
        "DeleteImages",
        "ResolveImage",
        "RunCleanup",
        "GetRepository",
    ] {
        let decision = authz.decide(&alice, action, &repo("payments/api"));
        assert!(decision.allowed, "{action}");
        assert_eq!(decision.policies, vec!["team-manages-namespace"], "{action}");
        assert!(
            !authz.decide(&alice, action, &repo("search/api")).allowed,
            "{action} elsewhere"
        );
    }
    // The admin group of actions is not the team's.
    for action in ["CreateVulnerabilityException", "RevokeVulnerabilityException"] {
        assert!(
            !authz.decide(&alice, action, &repo("payments/api")).allowed,
            "{action}"
        );
    }
    assert!(
        !authz
            .decide(
                &alice,
                "UpdateScanningConfiguration",
                &Resource::Registry(main_registry())
            )
            .allowed
    );
}

#[test]
fn deploy_services_resolve_check_and_pin_where_granted() {
    let authz = authorizer(&default_config());
    let argo = service("spiffe://example.org/ns/deploy/sa/argo-cd");
    for action in ["ResolveImage", "CheckDeployment", "PinImage", "UnpinImage"] {
        let decision = authz.decide(&argo, action, &repo("search/indexer"));
        assert!(decision.allowed, "{action}");
        assert_eq!(decision.policies, vec!["deployers-in-granted-namespaces"]);
    }
    for action in ["DeleteImages", "CreateRepository", "GetRepository", "ListImages"] {
        assert!(
            !authz.decide(&argo, action, &repo("search/indexer")).allowed,
            "{action}"
        );
    }
    // An unknown service is nobody.
    let stranger = service("spiffe://example.org/ns/other/sa/x");
    assert!(
        !authz
            .decide(&stranger, "ResolveImage", &repo("search/indexer"))
            .allowed
    );
}

#[test]
fn readers_read_and_admins_do_everything() {
    let authz = authorizer(&default_config());
    let reader = user("rita@example.com", &["engineering"]);
    assert!(
        authz
            .decide(&reader, "GetRepository", &repo("payments/api"))
            .allowed
    );
    assert!(
        authz
            .decide(&reader, "ResolveImage", &repo("payments/api"))
            .allowed
    );
    assert!(!authz.decide(&reader, "PinImage", &repo("payments/api")).allowed);
    assert!(
        !authz
            .decide(&reader, "CreateRepository", &repo("payments/api"))
            .allowed
    );
    let admin = user("root@example.com", &["platform-admins"]);
    for action in schema_actions().expect("actions") {
        let resource = match action.as_str() {
            "UpdateScanningConfiguration"
            | "GetScanningConfiguration"
            | "StreamAuditEvents"
            | "VerifyAuditLog"
            | "GetRemediationRun"
            | "ListRemediationRuns"
            | "CancelRemediationRun"
            | "GetCreationTemplates"
            | "SyncCreationTemplates"
            | "ListPullThroughCacheRules" => Resource::Registry(main_registry()),
            "ListRepositories" | "SearchImages" | "WatchImages" => Resource::Namespace {
                registry: main_registry(),
                namespace: "legacy".into(),
            },
            _ => repo("legacy/thing"),
        };
        let decision = authz.decide(&admin, &action, &resource);
        assert!(decision.allowed, "{action}");
        assert!(
            decision.policies.contains(&"platform-admins".to_owned()),
            "{action}: {:?}",
            decision.policies
        );
    }
}

#[test]
fn a_request_the_schema_does_not_allow_is_denied() {
    let authz = authorizer(&default_config());
    let admin = user("root@example.com", &["platform-admins"]);
    // GetRepository applies to repositories only; an unknown action is no action.
    assert!(
        !authz
            .decide(&admin, "GetRepository", &Resource::Registry(main_registry()))
            .allowed
    );
    assert!(
        !authz
            .decide(&admin, "DropEverything", &repo("payments/api"))
            .allowed
    );
}

#[test]
fn registry_status_is_everyones() {
    let authz = authorizer(&default_config());
    let nobody = user("new@example.com", &[]);
    let registry = Resource::Registry(main_registry());
    assert!(authz.decide(&nobody, "GetSyncStatus", &registry).allowed);
    assert!(
        authz
            .decide(&nobody, "GetScanningConfiguration", &registry)
            .allowed
    );
    assert!(
        !authz
            .decide(&nobody, "GetSyncStatus", &repo("payments/api"))
            .allowed
    );
    assert!(!authz.decide(&nobody, "RefreshInventory", &registry).allowed);
}

#[test]
fn list_scopes_are_the_readable_namespaces() {
    let authz = authorizer(&default_config());
    let registry = main_registry();
    let alice = user("alice@example.com", &["payments"]);
    let scope = authz.scope(&alice, "ListRepositories", [&registry]);
    assert!(scope.allows("main", "payments/api"));
    assert!(!scope.allows("main", "search/api"));
    assert!(!scope.allows("other", "payments/api"));
    assert!(!scope.unrestricted());
    assert_eq!(
        scope.audit_json()["scope"],
        json!({"main": ["payments"]}),
        "{}",
        scope.audit_json()
    );
    let admin = user("root@example.com", &["platform-admins"]);
    let scope = authz.scope(&admin, "ListRepositories", [&registry]);
    assert!(scope.unrestricted());
    assert!(scope.allows("main", "anything/at-all"));
    let nobody = user("new@example.com", &[]);
    let scope = authz.scope(&nobody, "SearchImages", [&registry]);
    assert_eq!(scope.access("main"), Some(&Access::Namespaces(BTreeSet::new())));
}

#[test]
fn tags_reach_the_policies() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"
@id("all-read") permit (principal, action in EcrGateway::Action::"read", resource);
@id("no-restricted") forbid (principal, action, resource is EcrGateway::Repository)
  when { resource.hasTag("classification") && resource.getTag("classification") == "restricted" };
"#,
    )
    .expect("write");
    let config = AuthzConfig {
        policies: Some(dir.path().join("p.cedar")),
        entities: None,
    };
    let authz = authorizer(&config);
    let alice = user("alice@example.com", &[]);
    let plain = repo("payments/api");
    let restricted = Resource::Repository {
        registry: main_registry(),
        name: "payments/vault".into(),
        tags: BTreeMap::from([("classification".to_owned(), "restricted".to_owned())]),
    };
    assert!(authz.decide(&alice, "GetRepository", &plain).allowed);
    let denied = authz.decide(&alice, "GetRepository", &restricted);
    assert!(!denied.allowed);
    assert_eq!(
        denied.policies,
        vec!["no-restricted"],
        "a denial names the forbid that decided it"
    );
}

#[test]
fn a_broken_reload_keeps_the_policy_in_force() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.cedar");
    std::fs::write(
        &file,
        r#"@id("a") permit (principal, action == EcrGateway::Action::"GetRepository", resource);"#,
    )
    .expect("write");
    let config = AuthzConfig {
        policies: Some(file.clone()),
        entities: None,
    };
    let authz = authorizer(&config);
    let alice = user("alice@example.com", &[]);
    assert!(
        authz
            .decide(&alice, "GetRepository", &repo("payments/api"))
            .allowed
    );

    std::fs::write(&file, "permit (principal, action, resource").expect("write");
    let problems = authz.reload().expect_err("broken");
    assert!(problems[0].contains("does not parse"), "{problems:?}");
    assert!(
        authz
            .decide(&alice, "GetRepository", &repo("payments/api"))
            .allowed,
        "old policy kept"
    );

    std::fs::write(
        &file,
        r#"@id("b") permit (principal, action == EcrGateway::Action::"ListImages", resource);"#,
    )
    .expect("write");
    authz.reload().expect("reload");
    assert!(
        !authz
            .decide(&alice, "GetRepository", &repo("payments/api"))
            .allowed
    );
    assert!(authz.decide(&alice, "ListImages", &repo("payments/api")).allowed);
}

#[test]
fn load_problems_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let load = |policies: PathBuf, entities: Option<PathBuf>| {
        Authorizer::load(
            &AuthzConfig {
                policies: Some(policies),
                entities,
            },
            vec![main_registry()],
            [],
        )
        .expect_err("refused")
        .join("\n")
    };
    let no_id = write("no-id.cedar", "permit (principal, action, resource);");
    assert!(load(no_id, None).contains("has no @id"));
    let twice = write(
        "twice.cedar",
        r#"@id("x") permit (principal, action, resource); @id("x") forbid (principal, action, resource);"#,
    );
    assert!(load(twice, None).contains("used twice"));
    let typo = write(
        "typo.cedar",
        r#"@id("t") permit (principal, action, resource is EcrGateway::Repository) when { resource.nmae == "x" };"#,
    );
    assert!(load(typo, None).contains("does not match the schema"));
    let fine = write("fine.cedar", r#"@id("f") permit (principal, action, resource);"#);
    let registry_entity = write(
        "e.json",
        r#"[{"uid":{"type":"EcrGateway::Registry","id":"main"},"attrs":{"account":"1","region":"r"},"parents":[]}]"#,
    );
    assert!(load(fine.clone(), Some(registry_entity)).contains("registries come from [[registries]]"));
    let bad_entity = write(
        "bad.json",
        r#"[{"uid":{"type":"EcrGateway::Namespace","id":"x"},"attrs":{"owners":"payments"},"parents":[]}]"#,
    );
    assert!(load(fine.clone(), Some(bad_entity)).contains("authz.entities"));
    let empty = tempfile::tempdir().expect("dir");
    assert!(load(empty.path().to_owned(), None).contains("holds no .cedar files"));
    let unset = Authorizer::load(&AuthzConfig::default(), vec![], [])
        .expect_err("unset")
        .join("\n");
    assert!(unset.contains("authz.policies: not set"), "{unset}");
}

#[test]
fn remembered_decisions_keep_requests_apart() {
    let authz = authorizer(&default_config());
    let r = repo("payments/api");
    // Asked twice each, in alternation: the second answers come from the cache.
    for _ in 0..2 {
        assert!(
            authz
                .decide(&user("alice@example.com", &["payments"]), "DeleteImages", &r)
                .allowed
        );
        assert!(
            !authz
                .decide(&user("alice@example.com", &["search"]), "DeleteImages", &r)
                .allowed
        );
        assert!(
            !authz
                .decide(&user("alice@example.com", &[]), "DeleteImages", &r)
                .allowed
        );
        // One group named "payments,x" is not the groups "payments" and "x".
        assert!(
            !authz
                .decide(&user("alice@example.com", &["payments,x"]), "DeleteImages", &r)
                .allowed
        );
        assert!(
            authz
                .decide(&user("alice@example.com", &["payments", "x"]), "DeleteImages", &r)
                .allowed
        );
        assert!(
            !authz
                .decide(&service("alice@example.com"), "DeleteImages", &r)
                .allowed
        );
    }
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("tagged") permit (principal, action, resource is EcrGateway::Repository)
  when { resource.hasTag("open") };"#,
    )
    .expect("write");
    let tagged = authorizer(&AuthzConfig {
        policies: Some(dir.path().join("p.cedar")),
        entities: None,
    });
    let with = |tags: &[(&str, &str)]| Resource::Repository {
        registry: main_registry(),
        name: "payments/api".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let nobody = user("n@example.com", &[]);
    for _ in 0..2 {
        assert!(
            tagged
                .decide(&nobody, "GetRepository", &with(&[("open", "1")]))
                .allowed
        );
        assert!(!tagged.decide(&nobody, "GetRepository", &with(&[])).allowed);
        assert!(
            !tagged
                .decide(&nobody, "GetRepository", &with(&[("closed", "1")]))
                .allowed
        );
    }
}
