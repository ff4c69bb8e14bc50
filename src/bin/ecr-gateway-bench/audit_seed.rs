//! The seeded audit trail of the LookupAuditEvents benchmark (`seed-audit`):
//! events written straight in SQL, and the event names they use.

use std::time::Instant;

use chrono::Utc;

use crate::seed::connect;

/// Event names of the seeded audit trail.
pub(crate) const AUDIT_NAMES: [&str; 20] = [
    "ResolveImage",
    "CheckDeployment",
    "ListImages",
    "GetImage",
    "SearchImages",
    "GetRepository",
    "ListRepositories",
    "CreateRepository",
    "UpdateRepository",
    "DeleteRepository",
    "PinImage",
    "UnpinImage",
    "DeleteImages",
    "PreviewCleanup",
    "RunCleanup",
    "GetScanFindings",
    "StartImageScan",
    "RefreshInventory",
    "SetLifecyclePolicy",
    "BatchDeleteImage",
];

pub(crate) async fn seed_audit(database_url: &str, events: u64) -> anyhow::Result<()> {
    let store = connect(database_url, 4).await?;
    store.migrate().await?;
    let chunk = 1_000_000u64;
    let base = Utc::now();
    let mut start = 0;
    while start < events {
        let end = (start + chunk).min(events);
        let began = Instant::now();
        // Times rise with g over 30 days and event ids are UUIDv7 of that
        // time (as the gateway writes them), so rows arrive in index order.
        // Each dimension comes from its own hash of g, so that they are
        // independent: a principal has errors, a namespace has mutations.
        sqlx::query(
            "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
             principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id, region, \
             gateway_request_id, request_parameters, response_elements, error_code, error_message, resources, \
             finalized_at) \
             SELECT (substr(x.hex, 1, 12) || '7' || substr(x.m, 1, 3) || '8' || substr(x.m, 4, 15))::uuid, x.t, \
                    $3[(1 + x.name)::int], 'ecr-gateway', x.name < 14, \
                    CASE WHEN x.failed THEN 'failed' ELSE 'succeeded' END, \
                    'user-' || x.principal || '@example.com', 'User', ARRAY['team-' || x.team], 'insecure-dev', \
                    '10.0.' || (g % 250) || '.' || (g % 200), 'grpc-go/1.60', 'main', '123456789012', 'us-east-1', \
                    gen_random_uuid(), \
                    jsonb_build_object('repositoryName', 'team-' || x.team || '/svc-' || x.svc), \
                    CASE WHEN x.failed THEN NULL ELSE '{\"ok\": true}'::jsonb END, \
                    CASE WHEN x.failed THEN 'InvalidArgument' END, \
                    CASE WHEN x.failed THEN 'repository: not a repository name' END, \
                    jsonb_build_array(jsonb_build_object('type', 'AWS::ECR::Repository', 'ARN', \
                      'arn:aws:ecr:us-east-1:123456789012:repository/team-' || x.team || '/svc-' || x.svc)), \
                    x.t \
             FROM generate_series($1::bigint, $2::bigint - 1) g \
             CROSS JOIN LATERAL (SELECT t, \
                    lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS hex, md5(g::text) AS m, \
                    (hashint8extended(g, 1) & 9223372036854775807) % 20 AS name, \
                    (hashint8extended(g, 2) & 9223372036854775807) % 1000 AS principal, \
                    (hashint8extended(g, 3) & 9223372036854775807) % 25 = 0 AS failed, \
                    (hashint8extended(g, 4) & 9223372036854775807) % 50 AS team, \
                    (hashint8extended(g, 5) & 9223372036854775807) % 20 AS svc \
                 FROM (SELECT $5::timestamptz - interval '30 days' + (g::float8 / $4) * interval '30 days' AS t) tt) x",
        )
        .bind(start as i64)
        .bind(end as i64)
        .bind(AUDIT_NAMES.to_vec())
        .bind(events as f64)
        .bind(base)
        .execute(store.pool())
        .await?;
        println!(
            "audit events {start}..{end} in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        start = end;
    }
    sqlx::query("ANALYZE audit_events").execute(store.pool()).await?;
    Ok(())
}
