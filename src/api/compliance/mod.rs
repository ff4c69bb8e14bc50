//! `ecrgateway.v1.ComplianceService`: the org rules cached repositories
//! break, read from what the compliance evaluation stored (no ECR call);
//! remediation plans and runs in `remediation.rs`.

mod remediation;
mod run_messages;
mod templates;

use serde_json::{Value, json};

use super::call::Call;
use super::convert::timestamp;
use super::error::{ApiError, OrRecord as _, invalid};
use super::page_token::{self, next_token};
use super::{AppState, check_prefix};
use crate::domain::{RegistryRef, Violation};
use crate::ecr::Registry;
use crate::pb;
use crate::pb::compliance_service_server::ComplianceService;
use crate::policy::compliance::is_rule_id;
use crate::store::compliance::{self, StoredViolation, ViolationFilter};

/// The ComplianceService implementation.
pub type ComplianceApi = super::Api;

super::rpc::unary_rpcs! {
    ComplianceService, ComplianceApi, state {
        list_policy_violations(ListPolicyViolationsRequest) -> ListPolicyViolationsResponse = "ListPolicyViolations", Read, list;
        get_compliance_summary(GetComplianceSummaryRequest) -> GetComplianceSummaryResponse = "GetComplianceSummary", Read, summary;
        remediate_repositories(RemediateRepositoriesRequest) -> RemediateRepositoriesResponse = "RemediateRepositories", Write, remediation::remediate;
        get_remediation_run(GetRemediationRunRequest) -> RemediationRun = "GetRemediationRun", Read, remediation::get_run;
        list_remediation_runs(ListRemediationRunsRequest) -> ListRemediationRunsResponse = "ListRemediationRuns", Read, remediation::list_runs;
        cancel_remediation_run(CancelRemediationRunRequest) -> RemediationRun = "CancelRemediationRun", Write, remediation::cancel_run;
        get_creation_templates(GetCreationTemplatesRequest) -> GetCreationTemplatesResponse = "GetCreationTemplates", Read, templates::get_templates;
        sync_creation_templates(SyncCreationTemplatesRequest) -> SyncCreationTemplatesResponse = "SyncCreationTemplates", Write, templates::sync_templates;
        list_pull_through_cache_rules(ListPullThroughCacheRulesRequest) -> ListPullThroughCacheRulesResponse = "ListPullThroughCacheRules", Read, templates::list_pull_through_rules;
    }
}

/// A decoded ListPolicyViolations.
struct ListCommand<'a> {
    registries: Vec<&'a Registry>,
    limit: i64,
    rule: Option<String>,
}

fn parse_list<'a>(
    state: &'a AppState,
    request: &pb::ListPolicyViolationsRequest,
) -> Result<ListCommand<'a>, ApiError> {
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations);
    violations.extend(check_prefix("prefix", &request.prefix));
    let rule = (!request.rule.is_empty()).then(|| request.rule.clone());
    if let Some(rule) = rule.as_deref().filter(|r| !is_rule_id(r)) {
        violations.push(Violation::new(
            "rule",
            "compliance.rule-id",
            format!(
                "`{}` is not a rule id: use one a violation reports, e.g. `tags.required` or `settings.scan-on-push`",
                rule.escape_debug()
            ),
        ));
    }
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    match (registries, limit) {
        (Some(registries), Some(limit)) if violations.is_empty() => Ok(ListCommand {
            registries,
            limit,
            rule,
        }),
        _ => Err(invalid(violations)),
    }
}

async fn list(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListPolicyViolationsRequest,
) -> Result<(pb::ListPolicyViolationsResponse, Value), ApiError> {
    call.caller()?;
    let command = parse_list(state, request)?;
    let references: Vec<&RegistryRef> = command.registries.iter().map(|r| &r.reference).collect();
    let scope = call.authorize_list(&state.authz, references.iter().copied())?;
    let fingerprint = page_token::fingerprint(&(
        &request.registry,
        &request.prefix,
        &command.rule,
        request.mendable,
    ));
    let key = state.page_key().await?;
    let filter = ViolationFilter {
        visibility: super::visibility(&scope, references.iter().copied()),
        prefix: request.prefix.clone(),
        rule: command.rule,
        mendable: request.mendable,
        after: key.decode(&request.page_token, &fingerprint)?,
        limit: command.limit + 1,
    };
    let (evaluated_at, synced_at) = evaluated(state, &references).await?;
    let mut rows = compliance::list(state.store.pool(), &filter).await?;
    let next_page_token = next_token(&mut rows, command.limit, |r| {
        key.encode(
            &fingerprint,
            &(
                &r.account_id,
                &r.region,
                &r.repository,
                &r.finding.rule,
                &r.finding.field,
            ),
        )
    });
    let violations: Vec<pb::PolicyViolation> = rows.into_iter().map(|r| violation(state, r)).collect();
    let elements = json!({"count": violations.len(), "nextPageToken": !next_page_token.is_empty()});
    let response = pb::ListPolicyViolationsResponse {
        violations,
        next_page_token,
        freshness: Some(freshness(synced_at)),
        evaluated_at: Some(timestamp(evaluated_at)),
    };
    Ok((response, elements))
}

async fn summary(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetComplianceSummaryRequest,
) -> Result<(pb::GetComplianceSummaryResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations);
    violations.extend(check_prefix("prefix", &request.prefix));
    let Some(registries) = registries.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let references: Vec<&RegistryRef> = registries.iter().map(|r| &r.reference).collect();
    let scope = call.authorize_list(&state.authz, references.iter().copied())?;
    let (evaluated_at, synced_at) = evaluated(state, &references).await?;
    let visibility = super::visibility(&scope, references.iter().copied());
    let summary = compliance::summary(state.store.pool(), &visibility, &request.prefix).await?;
    let count = |c: compliance::Count| pb::ComplianceCount {
        key: c.key,
        violations: c.violations,
        repositories: c.repositories,
        mendable: c.mendable,
    };
    let response = pb::GetComplianceSummaryResponse {
        repositories: summary.repositories,
        compliant_repositories: summary.repositories - summary.violating,
        violations: summary.violations,
        rules: summary.rules.into_iter().map(count).collect(),
        namespaces: summary.namespaces.into_iter().map(count).collect(),
        freshness: Some(freshness(synced_at)),
        evaluated_at: Some(timestamp(evaluated_at)),
    };
    let elements = json!({"violations": response.violations, "repositories": response.repositories});
    Ok((response, elements))
}

/// When the registries were last judged whole, and the oldest ECR
/// confirmation of what was judged; UNAVAILABLE with `RetryInfo` while one
/// of them was never judged (an empty answer would claim compliance; the
/// gateway judges every registry as it starts).
async fn evaluated(
    state: &AppState,
    registries: &[&RegistryRef],
) -> Result<
    (
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
    ApiError,
> {
    let owned: Vec<RegistryRef> = registries.iter().map(|r| (*r).clone()).collect();
    compliance::freshness(state.store.pool(), &owned)
        .await?
        .ok_or_else(|| ApiError::Unavailable {
            reason: "COMPLIANCE_NOT_EVALUATED",
            description: format!(
                "registry {} has not been judged yet: the gateway judges every registry as it starts and after \
                 each repository listing of the sync; retry in a moment",
                owned.iter().map(|r| format!("`{}`", r.alias)).collect::<Vec<_>>().join(", ")
            ),
            retry_after: std::time::Duration::from_secs(1),
        })
}

fn freshness(synced_at: Option<chrono::DateTime<chrono::Utc>>) -> pb::Freshness {
    pb::Freshness {
        synced_at: synced_at.map(timestamp),
        read_through: false,
    }
}

fn violation(state: &AppState, row: StoredViolation) -> pb::PolicyViolation {
    pb::PolicyViolation {
        registry: state
            .registries
            .alias_of(&row.account_id, &row.region)
            .unwrap_or_default()
            .to_owned(),
        repository: row.repository,
        rule: row.finding.rule,
        field: row.finding.field,
        actual: row.finding.actual,
        wanted: row.finding.wanted,
        mendable: row.finding.mendable,
        description: row.finding.description,
        since: Some(timestamp(row.since)),
    }
}
