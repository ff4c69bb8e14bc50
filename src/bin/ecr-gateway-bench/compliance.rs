//! The compliance benchmark's data set and its evaluation timings: cached
//! repositories straight in SQL (registry `main`, 123456789012/us-east-1),
//! half compliant and half breaking one rule each, judged by the gateway's
//! own evaluation (`compliance::evaluate_registry`) under the org policy of a
//! gateway configuration file.

use std::sync::Arc;
use std::time::Instant;

use ecr_gateway::config::Config;
use ecr_gateway::domain::RegistryRef;
use ecr_gateway::policy::OrgPolicy;

use crate::seed::connect;

/// The benchmark's registry.
fn registry() -> RegistryRef {
    RegistryRef {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

/// A repository policy open to anyone (breaks the guard).
const OPEN_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"anyone","Effect":"Allow","Principal":"*","Action":["ecr:BatchGetImage"]}]}"#;

/// Seeds `repositories` cached repositories (replacing the registry's rows),
/// then times three whole evaluations: the first (every violation new), one
/// with nothing changed, and one after 1 % of the repositories changed.
pub(crate) async fn seed_compliance(
    database_url: &str,
    config_path: &str,
    repositories: usize,
) -> anyhow::Result<()> {
    let config = Config::load(Some(std::path::Path::new(config_path)))?;
    let policy = Arc::new(OrgPolicy::compile(&config.policy).map_err(|p| anyhow::anyhow!(p.join("; ")))?);
    let template = config
        .policy
        .settings
        .lifecycle_templates
        .for_namespace("payments")
        .map(str::to_owned);
    let store = connect(database_url, 4).await?;
    let registry = registry();
    let started = Instant::now();
    sqlx::query("DELETE FROM policy_violations")
        .execute(store.pool())
        .await?;
    sqlx::query("DELETE FROM repositories WHERE account_id = $1 AND region = $2")
        .bind(&registry.account_id)
        .bind(&registry.region)
        .execute(store.pool())
        .await?;
    // Every tenth repository of each kind: 0-4 compliant; 5 no team tag; 6
    // mutable; 7 no scan on push; 8 no lifecycle policy; 9 an open policy.
    sqlx::query(
        "INSERT INTO repositories (account_id, region, name, arn, uri, created_at, tag_mutability, exclusion_filters,
             scan_on_push, encryption_type, tags, lifecycle_policy, repository_policy, synced_at, settings_synced_at,
             policies_synced_at)
         SELECT $1, $2, n.name, 'arn:aws:ecr:us-east-1:123456789012:repository/' || n.name,
                '123456789012.dkr.ecr.us-east-1.amazonaws.com/' || n.name, now(),
                CASE WHEN i % 10 = 6 THEN 'MUTABLE' ELSE 'IMMUTABLE' END, '[]'::jsonb,
                i % 10 <> 7, 'AES256',
                CASE WHEN i % 10 = 5 THEN '{\"cost-center\": \"cc-1001\", \"managed-by\": \"ecr-gateway\"}'::jsonb
                     ELSE jsonb_build_object('team', split_part(n.name, '/', 1), 'cost-center', 'cc-1001',
                                             'managed-by', 'ecr-gateway') END,
                CASE WHEN i % 10 = 8 THEN NULL ELSE $4 END,
                CASE WHEN i % 10 = 9 THEN $5 ELSE NULL END,
                now(), now(), now()
         FROM generate_series(0, $3 - 1) AS i,
              LATERAL (SELECT (CASE WHEN i % 2 = 0 THEN 'payments' ELSE 'search' END) || '/app-' || lpad(i::text, 6, '0') AS name) n",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .bind(repositories as i64)
    .bind(&template)
    .bind(OPEN_POLICY)
    .execute(store.pool())
    .await?;
    sqlx::query("ANALYZE repositories").execute(store.pool()).await?;
    println!(
        "seeded {repositories} cached repositories in {:.1?}",
        started.elapsed()
    );

    let first = ecr_gateway::compliance::evaluate_registry(&store, &policy, &registry).await?;
    println!("first evaluation (every violation new): {first:?}");
    let unchanged = ecr_gateway::compliance::evaluate_registry(&store, &policy, &registry).await?;
    println!("evaluation with nothing changed: {unchanged:?}");
    sqlx::query(
        "UPDATE repositories SET scan_on_push = NOT scan_on_push
         WHERE account_id = $1 AND region = $2 AND right(name, 2) = '00'",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .execute(store.pool())
    .await?;
    let changed = ecr_gateway::compliance::evaluate_registry(&store, &policy, &registry).await?;
    println!("evaluation after 1 % changed: {changed:?}");
    sqlx::query("ANALYZE policy_violations")
        .execute(store.pool())
        .await?;
    Ok(())
}
