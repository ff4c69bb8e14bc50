//! `ecrgateway.v1.AuditService`: look the trail up, follow it live, verify
//! its hash chain.

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::call::{AuditParameters as _, Call};
use super::convert::{time_of, timestamp};
use super::error::{ApiError, OrRecord as _, Precondition, invalid};
use super::page_token::{self, next_token};
use super::{AppState, Shared};
use crate::audit::chain::{self, Link};
use crate::auth::authz::Resource;
use crate::domain::Violation;
use crate::pb;
use crate::pb::audit_service_server::AuditService;
use crate::store::audit_trail::{self, AuditFilter, AuditRow};

/// Longest filter value.
const MAX_FILTER: usize = 2048;
/// How often an idle stream looks for new links when no notification came
/// (the chainer notifies each step; this covers a lost listener connection).
const STREAM_POLL: Duration = Duration::from_secs(1);
/// Links read per stream query.
const STREAM_BATCH: i64 = 500;
/// Most links VerifyAuditLog checks per call.
const MAX_VERIFY: i64 = 1_000_000;

/// The AuditService implementation.
pub type AuditApi = super::Api;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamAuditEventsResponse, Status>> + Send>>;

super::rpc::unary_rpcs! {
    AuditService, AuditApi, state {
        lookup_audit_events(LookupAuditEventsRequest) -> LookupAuditEventsResponse = "LookupAuditEvents", Read, lookup;
        verify_audit_log(VerifyAuditLogRequest) -> VerifyAuditLogResponse = "VerifyAuditLog", Read, verify;
    }
type StreamAuditEventsStream = EventStream;

async fn stream_audit_events(
    &self,
    request: Request<pb::StreamAuditEventsRequest>,
) -> Result<Response<EventStream>, Status> {
    let mut call = Call::start(&request, "StreamAuditEvents", true);
    let request = request.into_inner();
    call.set_parameters(request.audit_parameters());
    match start_stream(&self.state, &mut call, &request).await {
        Ok((stream, from)) => {
            call.finish(&self.state.audit, Ok(((), json!({"fromSequence": from}))))
                .await?;
            Ok(Response::new(stream))
        }
        Err(error) => call
            .finish::<()>(&self.state.audit, Err(error))
            .await
            .map(|_| unreachable_stream()),
    }
}
}

/// Never built: `Call::finish` of an error returns the error.
fn unreachable_stream() -> Response<EventStream> {
    Response::new(Box::pin(tokio_stream::empty()))
}

/// The filters common to LookupAuditEvents and StreamAuditEvents, checked.
#[allow(clippy::too_many_arguments)]
fn filter_of(
    state: &AppState,
    event_name: &str,
    principal: &str,
    resource_arn: &str,
    resource_prefix: bool,
    registry: &str,
    read_only: i32,
    error_code: &str,
    violations: &mut Vec<Violation>,
) -> AuditFilter {
    let text = |field: &str, value: &str, violations: &mut Vec<Violation>| {
        if value.len() > MAX_FILTER || value.chars().any(char::is_control) {
            violations.push(Violation::new(
                field,
                "audit-filter.text",
                format!("at most {MAX_FILTER} characters, without control characters"),
            ));
            return None;
        }
        (!value.is_empty()).then(|| value.to_owned())
    };
    if resource_prefix && resource_arn.is_empty() {
        violations.push(Violation::new(
            "resource_arn",
            "audit-filter.prefix",
            "resource_prefix needs resource_arn: the ARN prefix to match, e.g. arn:aws:ecr:us-east-1:123456789012:repository/payments/",
        ));
    }
    if !registry.is_empty() {
        state.registry(registry).or_record(violations);
    }
    let read_only = match pb::ReadOnlyFilter::try_from(read_only) {
        Ok(pb::ReadOnlyFilter::Unspecified) => None,
        Ok(pb::ReadOnlyFilter::True) => Some(true),
        Ok(pb::ReadOnlyFilter::False) => Some(false),
        Err(_) => {
            violations.push(Violation::new(
                "read_only",
                "enum.unknown",
                format!("{read_only} is not a ReadOnlyFilter"),
            ));
            None
        }
    };
    AuditFilter {
        event_name: text("event_name", event_name, violations),
        principal: text("principal", principal, violations),
        resource_arn: text("resource_arn", resource_arn, violations).map(|a| (a, resource_prefix)),
        registry: (!registry.is_empty()).then(|| registry.to_owned()),
        read_only,
        error_code: text("error_code", error_code, violations),
        start: None,
        end: None,
    }
}

/// The API form of a stored event.
fn event_message(row: &AuditRow) -> pb::AuditEvent {
    let json_text = |v: &Value| if v.is_null() { String::new() } else { v.to_string() };
    let resources = row
        .resources
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|r| pb::AuditResource {
                    r#type: r["type"].as_str().unwrap_or_default().to_owned(),
                    arn: r["ARN"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::AuditEvent {
        event_id: row.event_id.to_string(),
        event_time: Some(timestamp(row.event_time)),
        event_source: row.event_source.clone(),
        event_name: row.event_name.clone(),
        aws_region: row.region.clone().unwrap_or_default(),
        recipient_account_id: row.account_id.clone().unwrap_or_default(),
        registry: row.registry_alias.clone().unwrap_or_default(),
        source_ip_address: row.source_ip.clone().unwrap_or_default(),
        user_agent: row.user_agent.clone().unwrap_or_default(),
        user_identity: Some(pb::AuditIdentity {
            r#type: row.principal_type.clone(),
            principal_id: row.principal.clone(),
            groups: row.groups.clone(),
            authentication_method: row.auth_method.clone(),
        }),
        request_parameters: json_text(&row.request_parameters),
        response_elements: row.response_elements.as_ref().map(json_text).unwrap_or_default(),
        error_code: row.error_code.clone().unwrap_or_default(),
        error_message: row.error_message.clone().unwrap_or_default(),
        request_id: row.gateway_request_id.to_string(),
        client_request_id: row.client_request_id.clone().unwrap_or_default(),
        ecr_request_ids: row.ecr_request_ids.clone(),
        read_only: row.read_only,
        resources,
        status: row.status.clone(),
        sequence: row.seq.unwrap_or(0),
        previous_hash: row.prev_hash.as_ref().map(hex::encode).unwrap_or_default(),
        hash: row.hash.as_ref().map(hex::encode).unwrap_or_default(),
        authorization: row.authz_decision.as_ref().map(|d| {
            let text = |key: &str| d[key].as_str().unwrap_or_default().to_owned();
            pb::AuditAuthorization {
                decision: text("decision"),
                action: text("action"),
                resource: text("resource"),
                scope: d.get("scope").map(Value::to_string).unwrap_or_default(),
                policies: d["policies"]
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
            }
        }),
    }
}

/// Page position of LookupAuditEvents.
type LookupPosition = (DateTime<Utc>, Uuid);

async fn lookup(
    state: &AppState,
    call: &mut Call,
    request: &pb::LookupAuditEventsRequest,
) -> Result<(pb::LookupAuditEventsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let mut filter = filter_of(
        state,
        &request.event_name,
        &request.principal,
        &request.resource_arn,
        request.resource_prefix,
        &request.registry,
        request.read_only,
        &request.error_code,
        &mut violations,
    );
    filter.start = time_of("start_time", request.start_time.as_ref())
        .or_record(&mut violations)
        .flatten();
    filter.end = time_of("end_time", request.end_time.as_ref())
        .or_record(&mut violations)
        .flatten();
    if let (Some(start), Some(end)) = (filter.start, filter.end)
        && start >= end
    {
        violations.push(Violation::new(
            "end_time",
            "audit-filter.time-range",
            "end_time must be after start_time",
        ));
    }
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let fingerprint = page_token::fingerprint(&filter);
    let key = state.page_key().await?;
    let after: Option<LookupPosition> = key.decode(&request.page_token, &fingerprint)?;
    let scope = call.authorize_list(&state.authz, state.registries.all().map(|r| &r.reference))?;
    let visibility = super::visibility(&scope, state.registries.all().map(|r| &r.reference));
    let mut rows = audit_trail::lookup(state.store.pool(), &filter, &visibility, after, limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(&fingerprint, &(r.event_time, r.event_id))
    });
    let response = pb::LookupAuditEventsResponse {
        events: rows.iter().map(event_message).collect(),
        next_page_token,
    };
    let elements = json!({"count": response.events.len()});
    Ok((response, elements))
}

/// The audit trail spans every registry: streaming or verifying it needs
/// the action allowed on each.
fn authorize_everywhere(state: &AppState, call: &mut Call) -> Result<(), ApiError> {
    for registry in state.registries.all() {
        call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    }
    Ok(())
}

async fn start_stream(
    state: &Shared,
    call: &mut Call,
    request: &pb::StreamAuditEventsRequest,
) -> Result<(EventStream, i64), ApiError> {
    call.caller()?;
    let key = state.page_key().await?;
    let mut violations = Vec::new();
    let filter = filter_of(
        state,
        &request.event_name,
        &request.principal,
        &request.resource_arn,
        request.resource_prefix,
        &request.registry,
        request.read_only,
        &request.error_code,
        &mut violations,
    );
    let starts = [
        !request.cursor.is_empty(),
        !request.start_event_id.is_empty(),
        request.start_time.is_some(),
    ];
    if starts.iter().filter(|s| **s).count() > 1 {
        violations.push(Violation::new(
            "cursor",
            "audit-stream.start",
            "give at most one of cursor, start_event_id and start_time",
        ));
    }
    let cursor = (!request.cursor.is_empty())
        .then(|| key.decode_cursor(&request.cursor))
        .transpose()
        .or_record(&mut violations)
        .flatten();
    let start_event = (!request.start_event_id.is_empty())
        .then(|| {
            Uuid::parse_str(&request.start_event_id).map_err(|_| {
                Violation::new(
                    "start_event_id",
                    "audit-stream.event-id",
                    "not an event id (a UUID)",
                )
            })
        })
        .transpose()
        .or_record(&mut violations)
        .flatten();
    let start_time = time_of("start_time", request.start_time.as_ref())
        .or_record(&mut violations)
        .flatten();
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    authorize_everywhere(state, call)?;
    let pool = state.store.pool().clone();
    if let Some(purge) = audit_trail::last_purge(&pool).await? {
        let lost = match (cursor, start_time) {
            (Some(seq), _) => seq < purge.through_seq,
            (None, Some(time)) => time < purge.cutoff,
            (None, None) => false,
        };
        if lost {
            return Err(ApiError::FailedPrecondition {
                reason: "AUDIT_EVENTS_PURGED",
                violations: vec![Precondition {
                    kind: "AUDIT_EVENTS_PURGED".into(),
                    subject: key.encode_cursor(purge.through_seq),
                    description: format!(
                        "events up to sequence {} (chained before {}) were archived and purged by retention, the \
                         newest in {}; stream what remains from cursor `{}`, and read the archives for the rest",
                        purge.through_seq,
                        purge.cutoff.to_rfc3339(),
                        purge.archive,
                        key.encode_cursor(purge.through_seq)
                    ),
                }],
            });
        }
    }
    let from = match cursor {
        Some(seq) => seq,
        None => audit_trail::sequence_before(&pool, start_event, start_time)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource_type: "ecrgateway.auditEvent",
                resource_name: request.start_event_id.clone(),
                description: format!(
                    "event `{}` is not in the chain (yet): events are chained within a second of being \
                     finalised; pending ones are not streamed",
                    request.start_event_id
                ),
            })?,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let mut head = state.store.audit_head();
    tokio::spawn(async move {
        let mut after = from;
        loop {
            // Seen before the query, so that a link committed after it wakes the wait below.
            head.mark_unchanged();
            match audit_trail::chained_after(&pool, &filter, after, STREAM_BATCH).await {
                Ok((rows, upto)) => {
                    for row in &rows {
                        let item = pb::StreamAuditEventsResponse {
                            event: Some(event_message(row)),
                            cursor: key.encode_cursor(row.seq.unwrap_or(after)),
                        };
                        if sender.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                    if upto == after {
                        tokio::select! {
                            Ok(()) = head.changed() => {}
                            _ = tokio::time::sleep(STREAM_POLL) => {}
                            _ = sender.closed() => return,
                        }
                    }
                    after = upto;
                }
                Err(error) => {
                    let status = ApiError::from(error).to_status();
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Ok((
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        from,
    ))
}

async fn verify(
    state: &AppState,
    call: &mut Call,
    request: &pb::VerifyAuditLogRequest,
) -> Result<(pb::VerifyAuditLogResponse, Value), ApiError> {
    call.caller()?;
    authorize_everywhere(state, call)?;
    let pool = state.store.pool();
    let head = audit_trail::head(pool).await?;
    let purge = audit_trail::last_purge(pool).await?;
    let purged_through = purge.as_ref().map_or(0, |p| p.through_seq);
    let from = if request.from_sequence == 0 {
        purged_through + 1
    } else {
        request.from_sequence
    };
    let to = if request.to_sequence == 0 {
        head
    } else {
        request.to_sequence
    };
    let mut violations = Vec::new();
    if from < 1 {
        violations.push(Violation::new(
            "from_sequence",
            "audit-verify.range",
            "sequence numbers start at 1",
        ));
    } else if let Some(purge) = purge.as_ref().filter(|p| from <= p.through_seq) {
        violations.push(Violation::new(
            "from_sequence",
            "audit-verify.purged",
            format!(
                "events up to sequence {} were archived and purged by retention at {} (the newest in {}); check \
                 archives offline with `ecr-gateway audit verify`, or start at {}",
                purge.through_seq,
                purge.purged_at.to_rfc3339(),
                purge.archive,
                purge.through_seq + 1
            ),
        ));
    }
    if request.from_sequence > head.max(1) {
        violations.push(Violation::new(
            "from_sequence",
            "audit-verify.range",
            format!("must be at most the newest sequence, {head}"),
        ));
    }
    if to < from.min(head) || to > head {
        violations.push(Violation::new(
            "to_sequence",
            "audit-verify.range",
            format!("must be between from_sequence and the newest sequence, {head}"),
        ));
    } else if to.saturating_sub(from) >= MAX_VERIFY {
        violations.push(Violation::new(
            "to_sequence",
            "audit-verify.range",
            format!("at most {MAX_VERIFY} events per call; verify a longer range in parts"),
        ));
    }
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let start = audit_trail::hash_at(pool, from - 1).await?.map(|h| (from - 1, h));
    let rows = audit_trail::chain_range(pool, from, to).await?;
    let links: Vec<Link> = rows.iter().map(Link::from_row).collect();
    let mut verification = chain::verify(&links, start);
    // A range whose last links were removed ends early: the head says how far it should go.
    if verification.first_bad.is_none() && rows.len() as i64 != (to - from + 1).max(0) {
        let missing = rows.last().and_then(|r| r.seq).map_or(from, |s| s + 1);
        verification.first_bad = Some((missing, String::new(), chain::Problem::Removed));
    }
    let (first_bad_sequence, first_bad_event_id, mut problem) = verification
        .first_bad
        .map(|(seq, id, problem)| (seq, id, problem.as_str().to_owned()))
        .unwrap_or_default();
    let (mut digests_checked, mut unsigned_tail) = (0, 0);
    if let (Some(key), true) = (&state.audit_key, problem.is_empty() && !links.is_empty()) {
        let digests = audit_trail::digests_between(pool, from, to).await?;
        let signed = chain::check_digests(&links, &digests, key);
        digests_checked = signed.matched as i64;
        unsigned_tail = signed.unsigned_tail as i64;
        // A range newer than the last digest is not an error; a bad digest is.
        if let Some(why) = signed.problem.filter(|_| !digests.is_empty()) {
            problem = format!("signature: {why}");
        }
    }
    let response = pb::VerifyAuditLogResponse {
        valid: problem.is_empty(),
        checked: verification.checked as i64,
        first_bad_sequence,
        first_bad_event_id,
        problem,
        last_hash: hex::encode(&verification.last_hash),
        digests_checked,
        unsigned_tail,
        purged_through_sequence: purged_through,
        purged_archive: purge.map(|p| p.archive).unwrap_or_default(),
    };
    let elements = json!({"valid": response.valid, "checked": response.checked});
    Ok((response, elements))
}
