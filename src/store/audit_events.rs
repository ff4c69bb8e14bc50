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

/// Writes many finalised records in one prepared statement (arrays, UNNEST):
/// the same plan whatever the batch size, and no statement with thousands of
/// bind parameters to parse.
pub async fn insert_final_batch(pool: &PgPool, records: &[AuditRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let ids: Vec<Uuid> = records.iter().map(|r| r.event_id).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = records.iter().map(|r| r.event_time).collect();
    let names: Vec<String> = records.iter().map(|r| r.event_name.clone()).collect();
    let read_only: Vec<bool> = records.iter().map(|r| r.read_only).collect();
    let status: Vec<String> = records
        .iter()
        .map(|r| r.outcome.status.as_str().to_owned())
        .collect();
    let principals: Vec<String> = records.iter().map(|r| r.identity.principal.clone()).collect();
    let principal_types: Vec<String> = records
        .iter()
        .map(|r| r.identity.principal_type.clone())
        .collect();
    let groups: Vec<Value> = records
        .iter()
        .map(|r| Value::from(r.identity.groups.clone()))
        .collect();
    let methods: Vec<String> = records.iter().map(|r| r.identity.auth_method.clone()).collect();
    let ips: Vec<Option<String>> = records.iter().map(|r| r.source_ip.clone()).collect();
    let agents: Vec<Option<String>> = records.iter().map(|r| r.user_agent.clone()).collect();
    let aliases: Vec<Option<String>> = records
        .iter()
        .map(|r| r.registry.as_ref().map(|g| g.alias.clone()))
        .collect();
    let accounts: Vec<Option<String>> = records
        .iter()
        .map(|r| r.registry.as_ref().map(|g| g.account_id.clone()))
        .collect();
    let regions: Vec<Option<String>> = records
        .iter()
        .map(|r| r.registry.as_ref().map(|g| g.region.clone()))
        .collect();
    let gateway_ids: Vec<Uuid> = records.iter().map(|r| r.gateway_request_id).collect();
    let client_ids: Vec<Option<String>> = records.iter().map(|r| r.client_request_id.clone()).collect();
    let parameters: Vec<Value> = records.iter().map(|r| r.request_parameters.clone()).collect();
    let responses: Vec<Value> = records
        .iter()
        .map(|r| r.outcome.response_elements.clone().unwrap_or(Value::Null))
        .collect();
    let codes: Vec<Option<String>> = records.iter().map(|r| r.outcome.error_code.clone()).collect();
    let messages: Vec<Option<String>> = records.iter().map(|r| r.outcome.error_message.clone()).collect();
    let ecr_ids: Vec<Value> = records
        .iter()
        .map(|r| Value::from(r.outcome.ecr_request_ids.clone()))
        .collect();
    let resources: Vec<Value> = records
        .iter()
        .map(|r| serde_json::to_value(&r.resources).unwrap_or(Value::Array(Vec::new())))
        .collect();
    sqlx::query!(
        r#"INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status,
               principal, principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id,
               region, gateway_request_id, client_request_id, request_parameters, response_elements, error_code,
               error_message, ecr_request_ids, resources, finalized_at)
           SELECT u.id, u.at, u.name, $23, u.read_only, u.status, u.principal, u.principal_type,
                  ARRAY(SELECT jsonb_array_elements_text(u.groups)), u.method, u.ip, u.agent, u.alias, u.account,
                  u.region, u.gateway_id, u.client_id, u.parameters, NULLIF(u.response, 'null'::jsonb), u.code,
                  u.message, ARRAY(SELECT jsonb_array_elements_text(u.ecr_ids)), u.resources, $24
           FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[],
                       $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                       $15::uuid[], $16::text[], $17::jsonb[], $18::jsonb[], $19::text[], $20::text[], $21::jsonb[],
                       $22::jsonb[])
                AS u(id, at, name, read_only, status, principal, principal_type, groups, method, ip, agent, alias,
                     account, region, gateway_id, client_id, parameters, response, code, message, ecr_ids, resources)
           ON CONFLICT (event_id) DO NOTHING"#,
        &ids,
        &times,
        &names,
        &read_only,
        &status,
        &principals,
        &principal_types,
        &groups,
        &methods,
        &ips as &[Option<String>],
        &agents as &[Option<String>],
        &aliases as &[Option<String>],
        &accounts as &[Option<String>],
        &regions as &[Option<String>],
        &gateway_ids,
        &client_ids as &[Option<String>],
        &parameters,
        &responses,
        &codes as &[Option<String>],
        &messages as &[Option<String>],
        &ecr_ids,
        &resources,
        crate::domain::AUDIT_EVENT_SOURCE,
        now,
    )
    .execute(pool)
    .await?;
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
