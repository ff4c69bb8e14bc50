//! The audit_events table: pending rows for mutations, finalised rows for
//! everything, written in batches for read calls.

use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::audit_trail::{AuditRow, Linker, append_links, audit_rows};
use super::{StoreError, Tx};
use crate::domain::{AuditOutcome, AuditRecord};

/// Writes a record (pending or final) inside the caller's transaction; a
/// final one joins the chain queue.
pub async fn insert(tx: &mut Tx, record: &AuditRecord) -> Result<(), StoreError> {
    let mut builder = insert_builder();
    push_values(&mut builder, std::slice::from_ref(record));
    builder.build().execute(&mut **tx).await?;
    if record.outcome.status != crate::domain::AuditStatus::Pending {
        enqueue(tx, record.event_id).await?;
    }
    Ok(())
}

/// Puts a finalised event in the chain queue (same transaction as the finalisation).
async fn enqueue(tx: &mut Tx, event_id: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO audit_chain_queue (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
        event_id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Finalised records as the columns [`insert_final_batch`] sends: built once
/// per batch by moving the records' fields (no copies of their JSON), and
/// reused as they are if the insert has to be retried.
#[derive(Debug, Default)]
pub struct FinalBatch {
    ids: Vec<Uuid>,
    times: Vec<chrono::DateTime<chrono::Utc>>,
    names: Vec<String>,
    read_only: Vec<bool>,
    status: Vec<String>,
    principals: Vec<String>,
    principal_types: Vec<String>,
    groups: Vec<String>,
    methods: Vec<String>,
    ips: Vec<Option<String>>,
    agents: Vec<Option<String>>,
    aliases: Vec<Option<String>>,
    accounts: Vec<Option<String>>,
    regions: Vec<Option<String>>,
    gateway_ids: Vec<Uuid>,
    client_ids: Vec<Option<String>>,
    parameters: Vec<Value>,
    responses: Vec<Value>,
    codes: Vec<Option<String>>,
    messages: Vec<Option<String>>,
    ecr_ids: Vec<String>,
    resources: Vec<Value>,
    authorizations: Vec<Value>,
    /// Each record's canonical form as it will be stored ([`Linker::record`]);
    /// `None` for one that has to be read back to be linked.
    canonicals: Vec<Option<Vec<u8>>>,
}

impl FinalBatch {
    /// The columns of `records`, and their canonical forms.
    pub fn new(records: Vec<AuditRecord>, linker: Linker) -> FinalBatch {
        let mut batch = FinalBatch::default();
        for r in records {
            let resources = serde_json::to_value(&r.resources).unwrap_or(Value::Array(Vec::new()));
            batch.canonicals.push((linker.record)(&r, &resources));
            batch.ids.push(r.event_id);
            batch.times.push(r.event_time);
            batch.names.push(r.event_name);
            batch.read_only.push(r.read_only);
            batch.status.push(r.outcome.status.as_str().to_owned());
            batch.principals.push(r.identity.principal);
            batch.principal_types.push(r.identity.principal_type);
            batch.groups.push(array_literal(&r.identity.groups));
            batch.methods.push(r.identity.auth_method);
            batch.ips.push(r.source_ip);
            batch.agents.push(r.user_agent);
            batch.aliases.push(r.registry.as_ref().map(|g| g.alias.clone()));
            batch
                .accounts
                .push(r.registry.as_ref().map(|g| g.account_id.clone()));
            batch.regions.push(r.registry.map(|g| g.region));
            batch.gateway_ids.push(r.gateway_request_id);
            batch.client_ids.push(r.client_request_id);
            batch.parameters.push(r.request_parameters);
            batch
                .responses
                .push(r.outcome.response_elements.unwrap_or(Value::Null));
            batch.codes.push(r.outcome.error_code);
            batch.messages.push(r.outcome.error_message);
            batch.ecr_ids.push(array_literal(&r.outcome.ecr_request_ids));
            batch.resources.push(resources);
            batch.authorizations.push(r.authorization.unwrap_or(Value::Null));
        }
        batch
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// One batch per record, to find the record Postgres refuses.
    pub fn split(self) -> Vec<FinalBatch> {
        let mut singles: Vec<FinalBatch> = (0..self.len()).map(|_| FinalBatch::default()).collect();
        macro_rules! deal {
            ($($column:ident),*) => {
                $(for (single, value) in singles.iter_mut().zip(self.$column) {
                    single.$column.push(value);
                })*
            };
        }
        deal!(
            ids,
            times,
            names,
            read_only,
            status,
            principals,
            principal_types,
            groups,
            methods,
            ips,
            agents,
            aliases,
            accounts,
            regions,
            gateway_ids,
            client_ids,
            parameters,
            responses,
            codes,
            messages,
            ecr_ids,
            resources,
            authorizations,
            canonicals
        );
        singles
    }

    /// Replaces the caller-supplied free text of every record (request
    /// parameters, response elements, error message, user agent; the client
    /// request id escaped) with a note of why: for a record whose values
    /// Postgres refused, so that the event itself is still stored.
    pub fn strip(&mut self, why: &str) {
        let note = serde_json::json!({"unstorable": true, "reason": why});
        // The values change: the rows are read back to be linked.
        self.canonicals.iter_mut().for_each(|c| *c = None);
        self.parameters.iter_mut().for_each(|p| *p = note.clone());
        self.responses.iter_mut().for_each(|r| *r = Value::Null);
        self.agents.iter_mut().for_each(|a| *a = None);
        for message in self.messages.iter_mut().flatten() {
            *message = format!("(not storable: {why})");
        }
        for id in self.client_ids.iter_mut().flatten() {
            *id = id.escape_default().to_string();
        }
    }
}

/// Calls `$then!([head…, INSERT, middle…], [tail…], $1..$25, extra…)`: the
/// INSERT of [`insert_final_batch`] (one row per element of its arrays)
/// between the literals `$head` and `$middle`, with a [`FinalBatch`]'s
/// columns bound as `$1`..`$25`, then `$extra` as `$26`….
macro_rules! final_statement {
    (
        $then:ident,
        [$($head:literal),*],
        [$($middle:literal),*],
        [$($tail:literal),+],
        $batch:expr,
        $now:expr
        $(, $extra:expr)* $(,)?
    ) => {{
        let b: &FinalBatch = $batch;
        $then!(
            [
                $($head,)*
                r#"INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status,
                       principal, principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id,
                       region, gateway_request_id, client_request_id, request_parameters, response_elements, error_code,
                       error_message, ecr_request_ids, resources, finalized_at, authz_decision)
                   SELECT u.id, u.at, u.name, $23, u.read_only, u.status, u.principal, u.principal_type,
                          u.groups::text[], u.method, u.ip, u.agent, u.alias, u.account,
                          u.region, u.gateway_id, u.client_id, u.parameters, NULLIF(u.response, 'null'::jsonb), u.code,
                          u.message, u.ecr_ids::text[], u.resources, $24,
                          NULLIF(u.authz, 'null'::jsonb)
                   FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[],
                               $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                               $15::uuid[], $16::text[], $17::jsonb[], $18::jsonb[], $19::text[], $20::text[], $21::text[],
                               $22::jsonb[], $25::jsonb[])
                        AS u(id, at, name, read_only, status, principal, principal_type, groups, method, ip, agent, alias,
                             account, region, gateway_id, client_id, parameters, response, code, message, ecr_ids, resources,
                             authz)
                   ON CONFLICT (event_id) DO NOTHING"#
                $(, $middle)*
            ],
            [$($tail),+],
            &b.ids,
            &b.times,
            &b.names,
            &b.read_only,
            &b.status,
            &b.principals,
            &b.principal_types,
            &b.groups,
            &b.methods,
            &b.ips as &[Option<String>],
            &b.agents as &[Option<String>],
            &b.aliases as &[Option<String>],
            &b.accounts as &[Option<String>],
            &b.regions as &[Option<String>],
            &b.gateway_ids,
            &b.client_ids as &[Option<String>],
            &b.parameters,
            &b.responses,
            &b.codes as &[Option<String>],
            &b.messages as &[Option<String>],
            &b.ecr_ids,
            &b.resources,
            crate::domain::AUDIT_EVENT_SOURCE,
            $now,
            &b.authorizations
            $(, $extra)*
        )
    }};
}

/// `query_scalar!` over literal lists, for [`final_statement!`].
macro_rules! scalar_statement {
    ([$($head:literal),+], [$($tail:literal),+] $(, $arg:expr)* $(,)?) => {
        sqlx::query_scalar!($($head +)+ "" $(+ $tail)+ $(, $arg)*)
    };
}

/// Writes many finalised records in one prepared statement (arrays, UNNEST):
/// the same plan whatever the batch size, and no statement with thousands of
/// bind parameters to parse. They are linked into the hash chain by the same
/// statement (in event-id order), so they never pass through the chain
/// queue: Postgres takes the chain head's lock, appends the links and
/// commits without a round trip to the gateway in between. Rows already
/// there (a retry after a commit whose answer was lost) are neither written
/// nor linked again.
///
/// The links cover the records' canonical forms computed before they were
/// sent ([`FinalBatch::new`]); a batch with a record whose stored form could
/// differ (see [`Linker::record`]) is instead inserted with `RETURNING` and
/// linked from the rows as stored, in the same transaction.
pub async fn insert_final_batch(pool: &PgPool, batch: &FinalBatch, linker: Linker) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let canonicals: Option<Vec<&[u8]>> = batch.canonicals.iter().map(|c| c.as_deref()).collect();
    if let Some(canonicals) = canonicals {
        // No row when every record was there already; else the new head's sequence.
        final_statement!(
            scalar_statement,
            ["WITH e AS ("],
            [],
            [r#" RETURNING event_id),
             linked AS (
               SELECT array_agg(c.id ORDER BY c.id) AS ids, array_agg(c.canonical ORDER BY c.id) AS canonicals
               FROM UNNEST($1::uuid[], $26::bytea[]) AS c(id, canonical) JOIN e ON e.event_id = c.id)
           SELECT audit_append_links(ids, canonicals, $27) FROM linked WHERE ids IS NOT NULL"#],
            batch,
            now,
            &canonicals as &[&[u8]],
            super::audit_trail::CHANNEL,
        )
        .fetch_optional(pool)
        .await?;
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let rows = final_statement!(
        audit_rows,
        ["WITH e AS ("],
        [" RETURNING *) SELECT "],
        [" FROM e LEFT JOIN audit_chain_links l ON false ORDER BY e.event_id"],
        batch,
        now,
    )
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        append_links(&mut tx, &rows, linker).await?;
    }
    tx.commit().await?;
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
    if updated == 1 {
        enqueue(tx, event_id).await?;
    }
    Ok(updated == 1)
}

/// `values` as a Postgres array literal (`{"a","b\"c"}`), which `::text[]`
/// reads back exactly: one text per row in the batch's UNNEST, where a
/// `jsonb` array and a subquery per row to unpack it cost Postgres more.
/// Every element is quoted, so none reads as NULL or loses its spaces.
fn array_literal(values: &[String]) -> String {
    let mut literal = String::with_capacity(2 + values.iter().map(|v| v.len() + 3).sum::<usize>());
    literal.push('{');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

fn insert_builder() -> QueryBuilder<sqlx::Postgres> {
    QueryBuilder::new(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, \
         principal, principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id, \
         region, gateway_request_id, client_request_id, request_parameters, response_elements, error_code, \
         error_message, ecr_request_ids, resources, finalized_at, authz_decision) ",
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
            .push_bind(if pending { None } else { Some(chrono::Utc::now()) })
            .push_bind(record.authorization.clone());
    });
}

/// A pending record whose call is certainly over, which recovery may resolve.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// The record.
    pub event_id: Uuid,
    /// Its call.
    pub event_name: String,
    /// Who made it.
    pub principal: String,
    /// The caller's `request_id`, if any.
    pub client_request_id: Option<String>,
    /// The registry it named.
    pub registry_alias: Option<String>,
    /// `requestParameters`.
    pub request_parameters: Value,
}

/// Up to `limit` pending records whose call is certainly over, oldest
/// first: the operation's lease has expired or another attempt ended it,
/// or, without an operation, the record is older than `older_than`.
/// Cleanup batches and remediations of unfinished runs are left out (their
/// workers settle those).
pub async fn interrupted(
    pool: &PgPool,
    older_than: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Vec<Interrupted>, StoreError> {
    Ok(sqlx::query_as!(
        Interrupted,
        r#"SELECT e.event_id, e.event_name, e.principal, e.client_request_id, e.registry_alias, e.request_parameters
           FROM audit_events e
           LEFT JOIN operations o ON o.principal = e.principal AND o.request_id = e.client_request_id
           WHERE e.status = 'pending'
             AND CASE WHEN o.principal IS NOT NULL THEN o.state <> 'pending' OR o.lease_until < now()
                      ELSE e.event_time < $1 END
             AND NOT EXISTS (SELECT 1 FROM cleanup_run_items i JOIN cleanup_runs r ON r.id = i.run_id
                             WHERE i.audit_event_id = e.event_id AND r.state IN ('pending', 'running'))
             AND NOT EXISTS (SELECT 1 FROM remediation_items i JOIN remediation_runs r ON r.id = i.run_id
                             WHERE i.audit_event_id = e.event_id AND r.state IN ('pending', 'running'))
           ORDER BY e.event_time LIMIT $2"#,
        older_than,
        limit,
    )
    .fetch_all(pool)
    .await?)
}
