//! Remediation runs as the API answers them, and the JSON their items store.

use serde_json::Value;
use uuid::Uuid;

use crate::api::convert::timestamp;
use crate::pb;
use crate::store::remediation_runs::{ItemRow, NewRun, RunRow};

/// The counts of `run` among `counts` (run, outcome, count).
pub(super) fn counts_of(run: Uuid, counts: &[(Uuid, String, i64)]) -> pb::RemediationRunCounts {
    let mut message = pb::RemediationRunCounts::default();
    for (_, outcome, count) in counts.iter().filter(|(id, _, _)| *id == run) {
        let slot = match outcome.as_str() {
            "pending" => &mut message.pending,
            "mended" => &mut message.mended,
            "unchanged" => &mut message.unchanged,
            "gone" => &mut message.gone,
            "failed" => &mut message.failed,
            "cancelled" => &mut message.cancelled,
            _ => continue,
        };
        *slot += count;
    }
    message
}

/// Counts from the items themselves (a run's full answer).
pub(super) fn counted(run: Uuid, items: &[ItemRow]) -> pb::RemediationRunCounts {
    let counts: Vec<(Uuid, String, i64)> = items.iter().map(|i| (run, i.outcome.clone(), 1)).collect();
    counts_of(run, &counts)
}

pub(super) fn run_message(alias: &str, run: &RunRow, items: &[ItemRow]) -> pb::RemediationRun {
    let state = match run.state.as_str() {
        "pending" => pb::RemediationRunState::Pending,
        "running" => pb::RemediationRunState::Running,
        "succeeded" => pb::RemediationRunState::Succeeded,
        "failed" => pb::RemediationRunState::Failed,
        "cancelled" => pb::RemediationRunState::Cancelled,
        _ => pb::RemediationRunState::Unspecified,
    };
    pb::RemediationRun {
        id: run.id.to_string(),
        registry: alias.to_owned(),
        state: state as i32,
        cancel_requested: run.cancel_requested,
        created_by: run.principal.clone(),
        create_time: Some(timestamp(run.created_at)),
        update_time: Some(timestamp(run.updated_at)),
        end_time: run.finished_at.map(timestamp),
        rules: run.rules.clone(),
        repositories: items.iter().map(|i| item_message(alias, i)).collect(),
        error: run.error.clone(),
        counts: Some(counted(run.id, items)),
    }
}

pub(super) fn item_message(alias: &str, item: &ItemRow) -> pb::RepositoryRemediation {
    let outcome = match item.outcome.as_str() {
        "pending" => pb::RemediationOutcome::Pending,
        "mended" => pb::RemediationOutcome::Mended,
        "unchanged" => pb::RemediationOutcome::Unchanged,
        "gone" => pb::RemediationOutcome::Gone,
        "failed" => pb::RemediationOutcome::Failed,
        "cancelled" => pb::RemediationOutcome::Cancelled,
        _ => pb::RemediationOutcome::Unspecified,
    };
    pb::RepositoryRemediation {
        repository: item.repository.clone(),
        changes: changes_of(&item.changes),
        left: left_of(alias, &item.repository, &item.left_findings),
        outcome: outcome as i32,
        message: item.message.clone(),
    }
}

/// The run as first recorded (every item pending with its plan).
pub(super) fn row_of(run: &NewRun) -> RunRow {
    RunRow {
        id: run.id,
        account_id: run.registry.account_id.clone(),
        region: run.registry.region.clone(),
        rules: run.rules.clone(),
        tags: run.tags.clone(),
        state: "pending".into(),
        cancel_requested: false,
        principal: run.identity.principal.clone(),
        principal_type: run.identity.principal_type.clone(),
        groups: run.identity.groups.clone(),
        auth_method: run.identity.auth_method.clone(),
        created_at: run.created_at,
        updated_at: run.created_at,
        finished_at: None,
        attempts: 0,
        error: String::new(),
    }
}

pub(super) fn items_of(run: &NewRun) -> Vec<ItemRow> {
    run.items
        .iter()
        .map(|(repository, changes, left)| ItemRow {
            repository: repository.clone(),
            outcome: "pending".into(),
            changes: changes.clone(),
            left_findings: left.clone(),
            message: String::new(),
            audit_event_id: None,
        })
        .collect()
}

pub(super) fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn changes_of(changes: &Value) -> Vec<pb::RemediationChange> {
    changes
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| pb::RemediationChange {
                    field: text(c, "field"),
                    before: text(c, "before"),
                    after: text(c, "after"),
                    rules: c
                        .get("rules")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn left_of(alias: &str, repository: &str, left: &Value) -> Vec<pb::PolicyViolation> {
    left.as_array()
        .map(|list| {
            list.iter()
                .map(|f| pb::PolicyViolation {
                    registry: alias.to_owned(),
                    repository: repository.to_owned(),
                    rule: text(f, "rule"),
                    field: text(f, "field"),
                    actual: text(f, "actual"),
                    wanted: text(f, "wanted"),
                    mendable: f.get("mendable").and_then(Value::as_bool).unwrap_or(false),
                    description: text(f, "description"),
                    since: None,
                })
                .collect()
        })
        .unwrap_or_default()
}
