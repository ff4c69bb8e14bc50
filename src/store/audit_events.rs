//! The audit_events table: pending rows for mutations, finalised rows for
//! everything, written in batches for read calls.

use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{AuditOutcome, AuditRecord};

/// Writes a record (pending or final) inside the caller's transaction.
pub async fn insert(tx: &mut Tx, record: &AuditRecord) -> Result<(), StoreError> {
    let mut builder = insert_builder();
    push_values(&mut builder, std::slice::from_ref(record));
    builder.build().execute(&mut **tx).await?;
    Ok(())
}

/// Writes many finalised records in one statement.
pub async fn insert_final_batch(pool: &PgPool, records: &[AuditRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut builder = insert_builder();
    push_values(&mut builder, records);
    builder.push(" ON CONFLICT (event_id) DO NOTHING");
    builder.build().execute(pool).await?;
    Ok(())
}

/// Finalises a pending record with the call's outcome; returns false when no pending record had that id.
pub async fn finalize(tx: &mut Tx, event_id: Uuid, outcome: &AuditOutcome) -> Result<bool, StoreError> {
    let updated = sqlx::query!(
        r#"UPDATE audit_events
           SET status = $2, response_elements = $3, error_code = $4, error_message = $5,
               ecr_request_ids = $6, finalized_at = now()
           WHERE event_id = $1 AND status = 'pending'"#,
        event_id,
        outcome.status.as_str(),
        outcome.response_elements.clone() as Option<Value>,
        outcome.error_code,
        outcome.error_message,
        &outcome.ecr_request_ids,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

fn insert_builder() -> QueryBuilder<sqlx::Postgres> {
    QueryBuilder::new(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, \
         principal, principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id, \
         region, gateway_request_id, client_request_id, request_parameters, response_elements, error_code, \
         error_message, ecr_request_ids, resources, finalized_at) ",
    )
}

fn push_values(builder: &mut QueryBuilder<sqlx::Postgres>, records: &[AuditRecord]) {
    builder.push_values(records, |mut row, record| {
        let registry = record.registry.as_ref();
        let pending = record.outcome.status == crate::domain::AuditStatus::Pending;
        row.push_bind(record.event_id)
            .push_bind(record.event_time)
            .push_bind(record.event_name.clone())
            .push_bind(crate::domain::AUDIT_EVENT_SOURCE)
            .push_bind(record.read_only)
            .push_bind(record.outcome.status.as_str())
            .push_bind(record.identity.principal.clone())
            .push_bind(record.identity.principal_type.clone())
            .push_bind(record.identity.groups.clone())
            .push_bind(record.identity.auth_method.clone())
            .push_bind(record.source_ip.clone())
            .push_bind(record.user_agent.clone())
            .push_bind(registry.map(|r| r.alias.clone()))
            .push_bind(registry.map(|r| r.account_id.clone()))
            .push_bind(registry.map(|r| r.region.clone()))
            .push_bind(record.gateway_request_id)
            .push_bind(record.client_request_id.clone())
            .push_bind(record.request_parameters.clone())
            .push_bind(record.outcome.response_elements.clone())
            .push_bind(record.outcome.error_code.clone())
            .push_bind(record.outcome.error_message.clone())
            .push_bind(record.outcome.ecr_request_ids.clone())
            .push_bind(serde_json::to_value(&record.resources).unwrap_or(Value::Array(Vec::new())))
            .push_bind(if pending { None } else { Some(chrono::Utc::now()) });
    });
}
