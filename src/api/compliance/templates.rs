//! GetCreationTemplates, SyncCreationTemplates and ListPullThroughCacheRules:
//! what ECR gives the repositories it creates itself. Admin only.

use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::call::Call;
use crate::api::convert::{encryption_to_proto, tag_mutability_to_proto};
use crate::api::error::{ApiError, invalid};
use crate::api::mutation::{self, CacheChange, Done, check_request_id};
use crate::auth::authz::Resource;
use crate::domain::CreationTemplate;
use crate::ecr::{CallLog, Registry};
use crate::pb;
use crate::policy::templates::{TemplatePlan, TemplateState};

/// The registry named, authorized for the call's action on the registry as a whole.
fn registry_for<'a>(state: &'a AppState, call: &mut Call, alias: &str) -> Result<&'a Registry, ApiError> {
    let registry = state.registry(alias).map_err(|v| invalid(vec![v]))?;
    call.set_registry(&registry.reference);
    call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    Ok(registry)
}

/// ECR's templates against the policy's, by prefix.
async fn plans(state: &AppState, registry: &Registry, log: &CallLog) -> Result<Vec<TemplatePlan>, ApiError> {
    let actual = registry.describe_creation_templates(log).await?;
    Ok(state.policy.current().plan_templates(&actual))
}

/// GetCreationTemplates.
pub(super) async fn get_templates(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetCreationTemplatesRequest,
) -> Result<(pb::GetCreationTemplatesResponse, Value), ApiError> {
    call.caller()?;
    let registry = registry_for(state, call, &request.registry)?;
    let log = CallLog::default();
    let result = plans(state, registry, &log).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let templates: Vec<pb::CreationTemplateStatus> = result?.iter().map(status_message).collect();
    let elements = json!({"templates": templates.len()});
    Ok((pb::GetCreationTemplatesResponse { templates }, elements))
}

/// SyncCreationTemplates: writes each missing or drifted template, under `request_id`.
pub(super) async fn sync_templates(
    state: &AppState,
    call: &mut Call,
    request: &pb::SyncCreationTemplatesRequest,
) -> Result<(pb::SyncCreationTemplatesResponse, Value), ApiError> {
    call.caller()?;
    if let Some(violation) = check_request_id(&request.request_id).into_iter().next() {
        return Err(invalid(vec![violation]));
    }
    let registry = registry_for(state, call, &request.registry)?;
    if request.validate_only {
        let log = CallLog::default();
        let result = plans(state, registry, &log).await;
        call.record.outcome.ecr_request_ids = log.ids();
        let plans = result?;
        let response = sync_message(&plans);
        let elements = json!({"validateOnly": true, "written": response.written});
        return Ok((response, elements));
    }
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            let plans = plans(state, registry, &attempt.log).await?;
            for plan in plans.iter().filter(|p| p.needs_write()) {
                if let Some(desired) = &plan.desired {
                    registry
                        .put_creation_template(&attempt.log, desired, plan.actual.is_some())
                        .await?;
                }
            }
            let response = sync_message(&plans);
            Ok(Done {
                elements: json!({"written": response.written}),
                response,
                change: CacheChange::Nothing,
            })
        },
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"written": response.written, "replayed": replayed});
    Ok((response, elements))
}

/// ListPullThroughCacheRules.
pub(super) async fn list_pull_through_rules(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListPullThroughCacheRulesRequest,
) -> Result<(pb::ListPullThroughCacheRulesResponse, Value), ApiError> {
    call.caller()?;
    let registry = registry_for(state, call, &request.registry)?;
    let log = CallLog::default();
    let result = registry.describe_pull_through_rules(&log).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let policy = state.policy.current();
    let alias = &registry.reference.alias;
    let mut rules: Vec<pb::PullThroughCacheRule> = result?
        .into_iter()
        .map(|rule| {
            let violation = policy.judge_pull_through(&rule).map(|v| pb::PolicyViolation {
                registry: alias.clone(),
                repository: rule.ecr_repository_prefix.clone(),
                rule: v.rule.to_owned(),
                field: v.field,
                actual: rule.ecr_repository_prefix.clone(),
                wanted: "a prefix inside a managed namespace".into(),
                mendable: false,
                description: v.description,
                since: None,
            });
            pb::PullThroughCacheRule {
                namespace: rule.namespace().to_owned(),
                ecr_repository_prefix: rule.ecr_repository_prefix,
                upstream_registry_url: rule.upstream_registry_url,
                upstream_registry: rule.upstream_registry,
                upstream_repository_prefix: rule.upstream_repository_prefix,
                credential_arn: rule.credential_arn,
                violation,
            }
        })
        .collect();
    rules.sort_by(|a, b| a.ecr_repository_prefix.cmp(&b.ecr_repository_prefix));
    let violations = rules.iter().filter(|r| r.violation.is_some()).count();
    let elements = json!({"rules": rules.len(), "violations": violations});
    Ok((pb::ListPullThroughCacheRulesResponse { rules }, elements))
}

fn sync_message(plans: &[TemplatePlan]) -> pb::SyncCreationTemplatesResponse {
    pb::SyncCreationTemplatesResponse {
        templates: plans.iter().map(status_message).collect(),
        written: plans
            .iter()
            .filter(|p| p.needs_write())
            .map(|p| p.prefix.clone())
            .collect(),
        replayed: false,
    }
}

fn status_message(plan: &TemplatePlan) -> pb::CreationTemplateStatus {
    let (state, differences) = match &plan.state {
        TemplateState::InSync => (pb::CreationTemplateState::InSync, Vec::new()),
        TemplateState::Missing => (pb::CreationTemplateState::Missing, Vec::new()),
        TemplateState::Drifted(fields) => (
            pb::CreationTemplateState::Drifted,
            fields.iter().map(|f| (*f).to_owned()).collect(),
        ),
        TemplateState::Unmanaged => (pb::CreationTemplateState::Unmanaged, Vec::new()),
    };
    pb::CreationTemplateStatus {
        prefix: plan.prefix.clone(),
        state: state as i32,
        differences,
        desired: plan.desired.as_ref().map(template_message),
        actual: plan.actual.as_ref().map(template_message),
    }
}

fn template_message(template: &CreationTemplate) -> pb::CreationTemplate {
    pb::CreationTemplate {
        prefix: template.prefix.clone(),
        description: template.description.clone(),
        applied_for: template.applied_for.clone(),
        image_tag_mutability: tag_mutability_to_proto(template.tag_mutability) as i32,
        image_tag_mutability_exclusion_filters: template.exclusion_filters.clone(),
        encryption: Some(encryption_to_proto(&template.encryption)),
        tags: template.tags.clone().into_iter().collect(),
        lifecycle_policy: template.lifecycle_policy.clone().unwrap_or_default(),
        repository_policy: template.repository_policy.clone().unwrap_or_default(),
    }
}
