//! The canonical form that an event's link hashes (object keys sorted, no
//! insignificant whitespace), written from a `Value`, from a stored row or
//! from a record about to be stored; the link hash itself; and [`LINKER`],
//! how the store links events.

use chrono::SubsecRound as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::cloudtrail::{EVENT_TIME, EVENT_VERSION, event_type, type_of};
use crate::domain::AuditRecord;
use crate::store::audit_trail::AuditRow;

/// `value` serialised with object keys sorted, without whitespace.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // Sorted here whatever the map's own order (serde_json's
            // `preserve_order` feature may be on in the dependency graph).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing JSON into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The link hash of an event (its JSON form without the chain) after `previous`.
pub fn link(previous: &[u8], event: &Value) -> Vec<u8> {
    link_bytes(previous, &canonical(event))
}

/// The link hash after `previous` of an event already in canonical form.
pub fn link_bytes(previous: &[u8], canonical: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical);
    hasher.finalize().to_vec()
}

/// The canonical form of a stored event, which its link hashes:
/// `canonical(&cloudtrail_json(row))`, written straight from the row's fields
/// (every event is hashed once, and building the JSON tree first cost more
/// than the rest of the link). Top-level keys are written in byte order;
/// a test holds both to the same bytes.
pub fn canonical_row(row: &AuditRow) -> Vec<u8> {
    write_event(&EventFields {
        event_id: &row.event_id,
        event_time: row.event_time,
        event_name: &row.event_name,
        event_source: &row.event_source,
        event_type: event_type(row),
        read_only: row.read_only,
        status: &row.status,
        principal: &row.principal,
        principal_type: &row.principal_type,
        groups: &row.groups,
        auth_method: &row.auth_method,
        source_ip: row.source_ip.as_deref(),
        user_agent: row.user_agent.as_deref(),
        registry_alias: row.registry_alias.as_deref(),
        account_id: row.account_id.as_deref(),
        region: row.region.as_deref(),
        gateway_request_id: &row.gateway_request_id,
        client_request_id: row.client_request_id.as_deref(),
        request_parameters: &row.request_parameters,
        response_elements: row.response_elements.as_ref(),
        error_code: row.error_code.as_deref(),
        error_message: row.error_message.as_deref(),
        ecr_request_ids: &row.ecr_request_ids,
        resources: &row.resources,
        authz_decision: row.authz_decision.as_ref(),
    })
}

/// The canonical form that a finalised `record` will have once stored, its
/// `resources` already as JSON: the same bytes [`canonical_row`] gives for
/// the row that `store::audit_events::insert_final_batch` writes, so the
/// writer can link a batch in the statement that inserts it, without reading
/// the rows back. `None` when Postgres could store a value other than as
/// sent: a JSON number that is not an integer (jsonb keeps numbers as
/// `numeric`, so `1e16` comes back as `10000000000000000` and `-0.0` as
/// `0.0`); such a batch is read back before it is linked.
pub fn canonical_record(record: &AuditRecord, resources: &Value) -> Option<Vec<u8>> {
    // A jsonb null is stored as SQL NULL (the insert's NULLIF).
    let response_elements = record.outcome.response_elements.as_ref().filter(|v| !v.is_null());
    let authz_decision = record.authorization.as_ref().filter(|v| !v.is_null());
    let exact = [
        Some(&record.request_parameters),
        response_elements,
        Some(resources),
        authz_decision,
    ]
    .into_iter()
    .flatten()
    .all(integers_only);
    if !exact {
        return None;
    }
    let registry = record.registry.as_ref();
    Some(write_event(&EventFields {
        event_id: &record.event_id,
        // Postgres keeps microseconds (and sqlx sends them truncated).
        event_time: record.event_time.trunc_subsecs(6),
        event_name: &record.event_name,
        event_source: crate::domain::AUDIT_EVENT_SOURCE,
        event_type: type_of(
            &record.event_name,
            &record.identity.principal_type,
            &record.identity.auth_method,
        ),
        read_only: record.read_only,
        status: record.outcome.status.as_str(),
        principal: &record.identity.principal,
        principal_type: &record.identity.principal_type,
        groups: &record.identity.groups,
        auth_method: &record.identity.auth_method,
        source_ip: record.source_ip.as_deref(),
        user_agent: record.user_agent.as_deref(),
        registry_alias: registry.map(|r| r.alias.as_str()),
        account_id: registry.map(|r| r.account_id.as_str()),
        region: registry.map(|r| r.region.as_str()),
        gateway_request_id: &record.gateway_request_id,
        client_request_id: record.client_request_id.as_deref(),
        request_parameters: &record.request_parameters,
        response_elements,
        error_code: record.outcome.error_code.as_deref(),
        error_message: record.outcome.error_message.as_deref(),
        ecr_request_ids: &record.outcome.ecr_request_ids,
        resources,
        authz_decision,
    }))
}

/// Whether every number in `value` is an integer, which jsonb gives back
/// digit for digit.
fn integers_only(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::Array(items) => items.iter().all(integers_only),
        Value::Object(map) => map.values().all(integers_only),
        _ => true,
    }
}

/// The members of an event that its canonical form covers, borrowed from a
/// stored row or from a record about to be stored.
struct EventFields<'a> {
    event_id: &'a uuid::Uuid,
    event_time: chrono::DateTime<chrono::Utc>,
    event_name: &'a str,
    event_source: &'a str,
    event_type: &'static str,
    read_only: bool,
    status: &'a str,
    principal: &'a str,
    principal_type: &'a str,
    groups: &'a [String],
    auth_method: &'a str,
    source_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    registry_alias: Option<&'a str>,
    account_id: Option<&'a str>,
    region: Option<&'a str>,
    gateway_request_id: &'a uuid::Uuid,
    client_request_id: Option<&'a str>,
    request_parameters: &'a Value,
    response_elements: Option<&'a Value>,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    ecr_request_ids: &'a [String],
    resources: &'a Value,
    authz_decision: Option<&'a Value>,
}

fn write_event(e: &EventFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut event = Object::new(&mut out);
    if let Some(decision) = e.authz_decision {
        write_canonical(decision, event.key("authorization"));
    }
    event.opt_str("awsRegion", e.region);
    event.opt_str("clientRequestID", e.client_request_id);
    event.strings("ecrRequestIDs", e.ecr_request_ids);
    event.opt_str("errorCode", e.error_code);
    event.opt_str("errorMessage", e.error_message);
    event.uuid("eventID", e.event_id);
    event.str("eventName", e.event_name);
    event.str("eventSource", e.event_source);
    event.str("eventTime", &e.event_time.format(EVENT_TIME).to_string());
    event.str("eventType", e.event_type);
    event.str("eventVersion", EVENT_VERSION);
    event.raw("readOnly", if e.read_only { b"true" } else { b"false" });
    event.opt_str("recipientAccountId", e.account_id);
    event.opt_str("registry", e.registry_alias);
    event.uuid("requestID", e.gateway_request_id);
    write_canonical(e.request_parameters, event.key("requestParameters"));
    write_canonical(e.resources, event.key("resources"));
    match e.response_elements {
        Some(elements) => write_canonical(elements, event.key("responseElements")),
        None => event.raw("responseElements", b"null"),
    }
    event.opt_str("sourceIPAddress", e.source_ip);
    event.str("status", e.status);
    event.opt_str("userAgent", e.user_agent);
    let identity = event.key("userIdentity");
    let mut identity = Object::new(identity);
    identity.str("authenticationMethod", e.auth_method);
    identity.strings("groups", e.groups);
    identity.str("principalId", e.principal);
    identity.str("type", e.principal_type);
    identity.end();
    event.end();
    out
}

/// Writes a JSON object member by member; the caller gives the keys in
/// byte order, and they are plain ASCII names that need no escaping.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Writes `"key":` and returns the buffer for the value.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn raw(&mut self, key: &str, value: &[u8]) {
        self.key(key).extend_from_slice(value);
    }

    fn str(&mut self, key: &str, value: &str) {
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(self.key(key), value);
    }

    /// A UUID as `to_string` writes it (hyphenated, lower case).
    fn uuid(&mut self, key: &str, value: &uuid::Uuid) {
        self.str(
            key,
            value.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        let _ = serde_json::to_writer(self.key(key), &value);
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        let _ = serde_json::to_writer(self.key(key), values);
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// How the store links events: [`canonical_row`] of a stored row, or
/// [`canonical_record`] of a record about to be stored; Postgres computes the
/// same link [`link_bytes`] does (`audit_append_links`).
pub const LINKER: crate::store::audit_trail::Linker = crate::store::audit_trail::Linker {
    canonical: canonical_row,
    record: canonical_record,
};
