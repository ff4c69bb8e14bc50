//! The audit trail's CloudTrail-shaped JSON form and its hash chain.
//!
//! Each finalised event gets a link: `hash = SHA-256(previous hash ‖
//! canonical JSON of the event)`, where the canonical JSON has object keys
//! sorted and no insignificant whitespace. An export is one JSON object per
//! line: the event with a `chain` member (`sequence`, `previousHash`,
//! `hash`, hex). [`verify`] walks such a sequence and names the first event
//! that was modified, removed, inserted or reordered.

use std::collections::HashSet;

use chrono::SubsecRound as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::domain::AuditRecord;
use crate::store::audit_trail::AuditRow;

/// CloudTrail's record format version the events follow.
pub const EVENT_VERSION: &str = "1.09";

/// The event as CloudTrail names its fields (without the chain). The
/// `authorization` member is present only on events that carry a decision,
/// so events written before decisions were recorded hash as they did.
pub fn cloudtrail_json(row: &AuditRow) -> Value {
    let mut event = json!({
        "eventVersion": EVENT_VERSION,
        "eventID": row.event_id.to_string(),
        "eventTime": row.event_time.format(EVENT_TIME).to_string(),
        "eventSource": row.event_source,
        "eventName": row.event_name,
        "eventType": event_type(row),
        "awsRegion": row.region,
        "recipientAccountId": row.account_id,
        "registry": row.registry_alias,
        "sourceIPAddress": row.source_ip,
        "userAgent": row.user_agent,
        "userIdentity": {
            "type": row.principal_type,
            "principalId": row.principal,
            "groups": row.groups,
            "authenticationMethod": row.auth_method,
        },
        "requestParameters": row.request_parameters,
        "responseElements": row.response_elements,
        "errorCode": row.error_code,
        "errorMessage": row.error_message,
        "requestID": row.gateway_request_id.to_string(),
        "clientRequestID": row.client_request_id,
        "ecrRequestIDs": row.ecr_request_ids,
        "readOnly": row.read_only,
        "resources": row.resources,
        "status": row.status,
    });
    if let (Some(decision), Value::Object(map)) = (&row.authz_decision, &mut event) {
        map.insert("authorization".into(), decision.clone());
    }
    event
}

/// `eventType`: the gateway's own work (the sync, cleanup) is a service
/// event, a caller's call an API call.
fn event_type(row: &AuditRow) -> &'static str {
    type_of(&row.event_name, &row.principal_type, &row.auth_method)
}

fn type_of(event_name: &str, principal_type: &str, auth_method: &str) -> &'static str {
    if principal_type == "Service" && auth_method == "internal" || event_name == "BatchDeleteImage" {
        "AwsServiceEvent"
    } else {
        "AwsApiCall"
    }
}

/// The format of `eventTime`.
const EVENT_TIME: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// The event with its chain link, as an export line holds it.
pub fn export_json(row: &AuditRow) -> Value {
    let mut event = cloudtrail_json(row);
    if let (Some(seq), Some(prev), Some(hash), Value::Object(map)) =
        (row.seq, &row.prev_hash, &row.hash, &mut event)
    {
        map.insert(
            "chain".into(),
            json!({"sequence": seq, "previousHash": hex::encode(prev), "hash": hex::encode(hash)}),
        );
    }
    event
}

/// Writes events with their links, then the signed digests, as JSON lines:
/// the form `audit export` writes and `audit verify` reads.
pub fn write_export(
    out: &mut impl std::io::Write,
    rows: &[AuditRow],
    digests: &[super::digest::SignedDigest],
) -> std::io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, &export_json(row))?;
        out.write_all(b"\n")?;
    }
    for digest in digests {
        serde_json::to_writer(&mut *out, &super::digest::export_json(digest))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

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

/// What is wrong at the first event that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Its content no longer matches its hash.
    Modified,
    /// Events before it are missing.
    Removed,
    /// It is not part of the chain (it claims a place another event holds, or none).
    Inserted,
    /// It is out of order.
    Reordered,
    /// It and another event ([`Verification::rival`]) claim the same place,
    /// and nothing after them tells which one the chain goes on from.
    Contested,
}

impl Problem {
    /// The lower-case name used in answers and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Modified => "modified",
            Problem::Removed => "removed",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
            Problem::Contested => "contested",
        }
    }

    /// What it means for the event it names.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Modified => "was modified: its content no longer matches its hash",
            Problem::Removed => "follows a gap: events before it were removed",
            Problem::Inserted => "was inserted: it is not part of the chain",
            Problem::Reordered => "is out of order",
            Problem::Contested => {
                "claims the same place in the chain as another event, and no later event shows which of \
                 the two is genuine: one of them was inserted"
            }
        }
    }
}

/// One link of a chain as read back (from the database or an export line).
#[derive(Debug, Clone)]
pub struct Link {
    /// `chain.sequence`, if present.
    pub sequence: Option<i64>,
    /// `chain.previousHash`.
    pub previous_hash: Option<Vec<u8>>,
    /// `chain.hash`.
    pub hash: Option<Vec<u8>>,
    /// The event without its chain member.
    pub event: Value,
}

impl Link {
    /// Reads an export line's object.
    pub fn from_export(mut value: Value) -> Link {
        let chain = value.as_object_mut().and_then(|m| m.remove("chain"));
        let field = |name: &str| chain.as_ref().and_then(|c| c.get(name));
        let hex_of = |name: &str| {
            field(name)
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
        };
        Link {
            sequence: field("sequence").and_then(Value::as_i64),
            previous_hash: hex_of("previousHash"),
            hash: hex_of("hash"),
            event: value,
        }
    }

    /// A stored event's link.
    pub fn from_row(row: &AuditRow) -> Link {
        Link {
            sequence: row.seq,
            previous_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            event: cloudtrail_json(row),
        }
    }

    fn event_id(&self) -> String {
        self.event["eventID"].as_str().unwrap_or_default().to_owned()
    }

    /// Its sequence, previous hash and hash, when it has all three.
    fn parts(&self) -> Option<(i64, &[u8], &[u8])> {
        Some((
            self.sequence?,
            self.previous_hash.as_deref()?,
            self.hash.as_deref()?,
        ))
    }
}

/// The outcome of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Links checked (up to and including the first bad one); with a bad
    /// one, its position in the links given (1 for the first).
    pub checked: u64,
    /// The first link that does not fit: its sequence (or position), event id and problem.
    pub first_bad: Option<(i64, String, Problem)>,
    /// With [`Problem::Contested`]: the other event that claims the same
    /// place, and its position.
    pub rival: Option<(String, u64)>,
    /// The hash of the last good link.
    pub last_hash: Vec<u8>,
}

/// Who follows whom in a set of links, to tell an inserted event from the
/// genuine one whose place it claims: the chain goes on from the genuine one.
struct Places<'a> {
    /// The (sequence, previous hash) each link claims, with its hash.
    claims: std::collections::HashMap<(i64, &'a [u8]), Vec<&'a [u8]>>,
    /// (sequence, hash) of every link.
    links: HashSet<(i64, &'a [u8])>,
}

impl<'a> Places<'a> {
    fn of(links: &'a [Link]) -> Places<'a> {
        let mut claims: std::collections::HashMap<(i64, &[u8]), Vec<&[u8]>> = Default::default();
        let mut all = HashSet::new();
        for (sequence, previous, hash) in links.iter().filter_map(Link::parts) {
            claims.entry((sequence, previous)).or_default().push(hash);
            all.insert((sequence, hash));
        }
        Places { claims, links: all }
    }

    /// Whether some link follows `(sequence, hash)`.
    fn continued(&self, sequence: i64, hash: &[u8]) -> bool {
        self.claims.contains_key(&(sequence + 1, hash))
    }

    /// Whether some link is the one `(sequence, previous)` follows.
    fn has_predecessor(&self, sequence: i64, previous: &[u8]) -> bool {
        self.links.contains(&(sequence - 1, previous))
    }

    /// Whether another link claims the same place and the chain goes on from
    /// it but not from this one: this one was inserted.
    fn displaced(&self, (sequence, previous, hash): (i64, &[u8], &[u8])) -> bool {
        !self.continued(sequence, hash)
            && self.claims[&(sequence, previous)]
                .iter()
                .any(|other| *other != hash && self.continued(sequence, other))
    }
}

/// Walks `links` in the order given. `start` is the sequence and hash the
/// first link must follow (`None`: trust the first link's own).
///
/// At the first link that does not follow the one before, the links around
/// it are compared with the rest: an event that claims a place the chain
/// holds (another event has its sequence and previous hash, and the next
/// event goes on from that other one) is named as inserted, whether it
/// stands before or after the genuine event; two events that claim one
/// place with nothing after either are contested.
pub fn verify(links: &[Link], start: Option<(i64, Vec<u8>)>) -> Verification {
    let present: HashSet<i64> = links.iter().filter_map(|l| l.sequence).collect();
    let places = Places::of(links);
    let trusted_first = start.is_none();
    let mut expected = start;
    // The state the last accepted link followed.
    let mut before_last: Option<(i64, Vec<u8>)> = None;
    let last_of = |state: &Option<(i64, Vec<u8>)>| state.as_ref().map(|l| l.1.clone()).unwrap_or_default();
    let bad = |index: usize, problem: Problem, last: &Option<(i64, Vec<u8>)>| {
        let link = &links[index];
        let position = index as u64 + 1;
        Verification {
            checked: position,
            first_bad: Some((link.sequence.unwrap_or(position as i64), link.event_id(), problem)),
            rival: None,
            last_hash: last_of(last),
        }
    };
    for (i, entry) in links.iter().enumerate() {
        let Some(parts @ (sequence, previous, hash)) = entry.parts() else {
            return bad(i, Problem::Inserted, &expected);
        };
        if link(previous, &entry.event) != hash {
            return bad(i, Problem::Modified, &expected);
        }
        if let Some((last_sequence, last_hash)) = &expected {
            let want = last_sequence + 1;
            if sequence != want || previous != last_hash.as_slice() {
                // The link accepted before this one, when there is one.
                let before = i.checked_sub(1).and_then(|p| Some((p, links[p].parts()?)));
                if let Some((p, earlier)) = before
                    && places.displaced(earlier)
                {
                    return bad(p, Problem::Inserted, &before_last);
                }
                if places.displaced(parts) {
                    return bad(i, Problem::Inserted, &expected);
                }
                if let Some((p, (earlier_sequence, earlier_previous, earlier_hash))) = before {
                    let same_place = (earlier_sequence, earlier_previous) == (sequence, previous);
                    if same_place && earlier_hash != hash {
                        // Neither or both go on: nothing here tells which is genuine.
                        let mut verdict = bad(p, Problem::Contested, &before_last);
                        verdict.checked = i as u64 + 1;
                        verdict.rival = Some((entry.event_id(), i as u64 + 1));
                        return verdict;
                    }
                    // The chain goes on from this link and not from the one
                    // accepted before it (which the walk had to trust, or
                    // which holds this link's sequence): that one was inserted.
                    let takes_the_place = sequence == want || (trusted_first && p == 0);
                    if takes_the_place
                        && places.continued(sequence, hash)
                        && !places.continued(earlier_sequence, earlier_hash)
                    {
                        return bad(p, Problem::Inserted, &before_last);
                    }
                }
                if sequence == want {
                    return bad(i, Problem::Inserted, &expected);
                }
                // Between two links that follow each other, and following no link at all.
                let next_fits = links
                    .get(i + 1)
                    .and_then(Link::parts)
                    .is_some_and(|(s, prev, _)| s == want && prev == last_hash.as_slice());
                if next_fits && !places.has_predecessor(sequence, previous) {
                    return bad(i, Problem::Inserted, &expected);
                }
                // The missing ones may stand later in the file (reordered) or nowhere (removed).
                let problem = if sequence > want && !present.contains(&want) {
                    Problem::Removed
                } else {
                    Problem::Reordered
                };
                return bad(i, problem, &expected);
            }
        }
        before_last = expected;
        expected = Some((sequence, hash.to_vec()));
    }
    Verification {
        checked: links.len() as u64,
        first_bad: None,
        rival: None,
        last_hash: last_of(&expected),
    }
}

/// Settles a [`Problem::Contested`] verdict with the signed digests: the
/// event whose hash a valid digest signed for that sequence is genuine, the
/// other one was inserted. Any other verdict is returned as it is.
pub fn settle_contest(
    verification: Verification,
    links: &[Link],
    digests: &[super::digest::SignedDigest],
    trusted: &ed25519_dalek::VerifyingKey,
) -> Verification {
    let (Some((sequence, first, Problem::Contested)), Some((second, second_position))) =
        (&verification.first_bad, &verification.rival)
    else {
        return verification;
    };
    let hash_of = |id: &str| {
        links
            .iter()
            .find(|l| l.sequence == Some(*sequence) && l.event_id() == id)
            .and_then(|l| l.hash.clone())
    };
    let signed = digests
        .iter()
        .filter(|d| d.sequence == *sequence && super::digest::check(d, trusted).is_ok())
        .map(|d| &d.hash)
        .next();
    let Some(signed) = signed else {
        return verification;
    };
    let (inserted, position, last_hash) = if hash_of(first).as_ref() == Some(signed) {
        (second.clone(), *second_position, signed.clone())
    } else if hash_of(second).as_ref() == Some(signed) {
        (
            first.clone(),
            verification.checked - 1,
            verification.last_hash.clone(),
        )
    } else {
        return verification;
    };
    Verification {
        checked: position,
        first_bad: Some((*sequence, inserted, Problem::Inserted)),
        rival: None,
        last_hash,
    }
}

/// What the signed digests say about a chain that verified link by link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCheck {
    /// Digests that cover an event of the chain and match it.
    pub matched: usize,
    /// Events after the newest matching digest (not protected by a signature yet).
    pub unsigned_tail: usize,
    /// The first problem: a digest that does not verify, or a signed hash the chain does not reproduce.
    pub problem: Option<String>,
}

/// Checks `digests` against `links` (already verified by [`verify`]) with the trusted key.
pub fn check_digests(
    links: &[Link],
    digests: &[super::digest::SignedDigest],
    trusted: &ed25519_dalek::VerifyingKey,
) -> DigestCheck {
    let (Some(first), Some(last)) = (
        links.first().and_then(|l| l.sequence),
        links.last().and_then(|l| l.sequence),
    ) else {
        return DigestCheck {
            matched: 0,
            unsigned_tail: 0,
            problem: None,
        };
    };
    let mut matched = 0;
    let mut newest = first - 1;
    for digest in digests.iter().filter(|d| (first..=last).contains(&d.sequence)) {
        if let Err(problem) = super::digest::check(digest, trusted) {
            return DigestCheck {
                matched,
                unsigned_tail: 0,
                problem: Some(problem),
            };
        }
        let link = links.iter().find(|l| l.sequence == Some(digest.sequence));
        if link.and_then(|l| l.hash.as_ref()) != Some(&digest.hash) {
            return DigestCheck {
                matched,
                unsigned_tail: 0,
                problem: Some(format!(
                    "the chain does not reproduce the hash signed at {} for sequence {}: events up to it were \
                     changed and the chain recomputed",
                    digest.signed_at.to_rfc3339(),
                    digest.sequence
                )),
            };
        }
        matched += 1;
        newest = newest.max(digest.sequence);
    }
    let problem = (matched == 0).then(|| "no signed digest covers these events".to_owned());
    DigestCheck {
        matched,
        unsigned_tail: (last - newest).max(0) as usize,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<Value> {
        let mut previous = vec![0u8; 32];
        (1..=n)
            .map(|i| {
                let event = json!({"eventID": format!("e{i}"), "eventName": "ResolveImage",
                                   "requestParameters": {"b": 1, "a": [true, null, "x"]}});
                let hash = link(&previous, &event);
                let mut line = event.clone();
                line["chain"] = json!({"sequence": i, "previousHash": hex::encode(&previous),
                                       "hash": hex::encode(&hash)});
                previous = hash;
                line
            })
            .collect()
    }

    fn check(lines: &[Value]) -> Option<(i64, String, Problem)> {
        let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
        verify(&links, Some((0, vec![0; 32]))).first_bad
    }

    /// Rows that differ in every optional part and in text that needs escaping.
    fn rows() -> Vec<AuditRow> {
        let base = AuditRow {
            event_id: uuid::Uuid::now_v7(),
            event_time: chrono::Utc::now(),
            event_name: "ResolveImage".into(),
            event_source: "ecr-gateway.internal".into(),
            read_only: true,
            status: "succeeded".into(),
            principal: "alice".into(),
            principal_type: "User".into(),
            groups: vec!["payments".into(), "deployers".into()],
            auth_method: "jwt".into(),
            source_ip: Some("10.0.0.1".into()),
            user_agent: Some("grpc-go/1.0 \"quoted\" \u{e9}\u{1F600}\n".into()),
            registry_alias: Some("main".into()),
            account_id: Some("123456789012".into()),
            region: Some("us-east-1".into()),
            gateway_request_id: uuid::Uuid::new_v4(),
            client_request_id: Some("req-1".into()),
            request_parameters: json!({"z": 1, "a": {"y": [1.5, -2, 18446744073709551615u64, null], "b": "\u{7f}\t"}, "": true}),
            response_elements: Some(json!({"imageDigest": "sha256:ab", "pinned": false})),
            error_code: Some("NotFound".into()),
            error_message: Some("no image `x` \\ here".into()),
            ecr_request_ids: vec!["a-1".into(), "b-2".into()],
            resources: json!([{"ARN": "arn:aws:ecr:us-east-1:123456789012:repository/payments/api", "type": "AWS::ECR::Repository"}]),
            authz_decision: Some(json!({"decision": "allow", "policies": ["p1"]})),
            finalized_at: Some(chrono::Utc::now()),
            seq: Some(7),
            prev_hash: Some(vec![1; 32]),
            hash: Some(vec![2; 32]),
        };
        let bare = AuditRow {
            groups: Vec::new(),
            source_ip: None,
            user_agent: None,
            registry_alias: None,
            account_id: None,
            region: None,
            client_request_id: None,
            request_parameters: json!({}),
            response_elements: None,
            error_code: None,
            error_message: None,
            ecr_request_ids: Vec::new(),
            resources: json!([]),
            authz_decision: None,
            ..base.clone()
        };
        let service = AuditRow {
            principal_type: "Service".into(),
            auth_method: "internal".into(),
            read_only: false,
            response_elements: Some(Value::Null),
            authz_decision: Some(Value::Null),
            ..bare.clone()
        };
        let cleanup = AuditRow {
            event_name: "BatchDeleteImage".into(),
            status: "pending".into(),
            ..base.clone()
        };
        vec![base, bare, service, cleanup]
    }

    #[test]
    fn a_rows_canonical_form_is_that_of_its_cloudtrail_json() {
        for row in rows() {
            let direct = canonical_row(&row);
            let through_json = canonical(&cloudtrail_json(&row));
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&through_json),
                "{row:?}"
            );
            let parsed: Value = serde_json::from_slice(&direct).expect("valid JSON");
            assert_eq!(parsed, cloudtrail_json(&row));
        }
    }

    #[test]
    fn signed_digests_catch_a_recomputed_chain() {
        let key = crate::audit::digest::generate();
        let lines = chain(4);
        let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
        let signed = crate::audit::digest::sign(&key, 3, links[2].hash.as_ref().unwrap(), chrono::Utc::now());
        let good = check_digests(&links, std::slice::from_ref(&signed), &key.verifying_key());
        assert_eq!((good.matched, good.unsigned_tail, good.problem), (1, 1, None));

        // Edit event 2 and recompute every hash after it: the links verify, the digest does not.
        let mut forged = lines.clone();
        forged[1]["eventName"] = json!("DeleteRepository");
        let mut previous = hex::decode(forged[1]["chain"]["previousHash"].as_str().unwrap()).unwrap();
        for line in forged.iter_mut().skip(1) {
            let mut event = line.clone();
            event.as_object_mut().unwrap().remove("chain");
            let hash = link(&previous, &event);
            line["chain"]["previousHash"] = json!(hex::encode(&previous));
            line["chain"]["hash"] = json!(hex::encode(&hash));
            previous = hash;
        }
        let forged: Vec<Link> = forged.into_iter().map(Link::from_export).collect();
        assert_eq!(verify(&forged, Some((0, vec![0; 32]))).first_bad, None);
        let caught = check_digests(&forged, &[signed], &key.verifying_key());
        assert!(caught.problem.unwrap().contains("recomputed"));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value: Value = serde_json::from_str(r#"{"b":{"z":1,"a":2},"a":[{"y":1,"x":2}]}"#).unwrap();
        assert_eq!(canonical(&value), br#"{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}}"#);
    }

    #[test]
    fn an_untouched_export_verifies() {
        let lines = chain(5);
        assert_eq!(check(&lines), None);
        let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
        assert_eq!(verify(&links, None).checked, 5);
    }

    /// An event that claims place `sequence` of `lines` with a link that is
    /// right in itself: that sequence, the hash of the event before, and its own hash.
    fn forged(lines: &[Value], sequence: usize, id: &str) -> Value {
        let previous = match sequence {
            1 => vec![0; 32],
            n => hex::decode(lines[n - 2]["chain"]["hash"].as_str().unwrap()).unwrap(),
        };
        let mut event = json!({"eventID": id, "eventName": "CreateRepository"});
        let hash = link(&previous, &event);
        event["chain"] =
            json!({"sequence": sequence, "previousHash": hex::encode(&previous), "hash": hex::encode(hash)});
        event
    }

    fn check_untrusted(lines: &[Value]) -> Option<(i64, String, Problem)> {
        let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
        verify(&links, None).first_bad
    }

    #[test]
    fn a_self_consistent_insertion_is_named_not_the_genuine_event_after_it() {
        let lines = chain(5);
        // Before the genuine event whose place it claims, at the start, in the middle, before the last.
        for sequence in [1, 3, 4] {
            let mut inserted = lines.clone();
            inserted.insert(sequence - 1, forged(&lines, sequence, "forged"));
            let want = Some((sequence as i64, "forged".to_owned(), Problem::Inserted));
            assert_eq!(check(&inserted), want, "before e{sequence}");
            assert_eq!(check_untrusted(&inserted), want, "before e{sequence}, no start");
            let links: Vec<Link> = inserted.iter().cloned().map(Link::from_export).collect();
            assert_eq!(verify(&links, None).checked, sequence as u64, "its line");
        }
        // After the genuine event, and far from it.
        let mut after = lines.clone();
        after.insert(3, forged(&lines, 3, "forged"));
        assert_eq!(check(&after), Some((3, "forged".into(), Problem::Inserted)));
        let mut far = lines.clone();
        far.push(forged(&lines, 2, "forged"));
        assert_eq!(check(&far), Some((2, "forged".into(), Problem::Inserted)));
        // At the start of an export that does not begin at the chain's start:
        // the walk trusts the first link, yet the chain goes on from the next one.
        let mut first = lines.clone();
        let mut stray = json!({"eventID": "forged", "eventName": "CreateRepository"});
        let hash = link(&[9; 32], &stray);
        stray["chain"] =
            json!({"sequence": 0, "previousHash": hex::encode([9; 32]), "hash": hex::encode(hash)});
        first.insert(0, stray);
        assert_eq!(
            check_untrusted(&first),
            Some((0, "forged".into(), Problem::Inserted))
        );
        // With a sequence of its own between two events that follow each other.
        let mut numbered = lines.clone();
        let mut loose = forged(&lines, 3, "forged");
        loose["chain"]["sequence"] = json!(9);
        loose["chain"]["previousHash"] = json!(hex::encode([3; 32]));
        let mut event = loose.clone();
        event.as_object_mut().unwrap().remove("chain");
        loose["chain"]["hash"] = json!(hex::encode(link(&[3; 32], &event)));
        numbered.insert(2, loose);
        assert_eq!(check(&numbered), Some((9, "forged".into(), Problem::Inserted)));
    }

    #[test]
    fn an_insertion_before_the_last_event_is_contested_until_a_digest_settles_it() {
        let lines = chain(5);
        let mut inserted = lines.clone();
        inserted.insert(4, forged(&lines, 5, "forged"));
        let links: Vec<Link> = inserted.iter().cloned().map(Link::from_export).collect();
        let verdict = verify(&links, None);
        assert_eq!(verdict.first_bad, Some((5, "forged".into(), Problem::Contested)));
        assert_eq!(verdict.rival, Some(("e5".into(), 6)));

        let key = crate::audit::digest::generate();
        let genuine =
            crate::audit::digest::sign(&key, 5, links[5].hash.as_ref().unwrap(), chrono::Utc::now());
        let settled = settle_contest(
            verdict.clone(),
            &links,
            std::slice::from_ref(&genuine),
            &key.verifying_key(),
        );
        assert_eq!(settled.first_bad, Some((5, "forged".into(), Problem::Inserted)));
        assert_eq!(settled.checked, 5);
        // The genuine one stands first: the other is named.
        let mut reversed = lines.clone();
        reversed.push(forged(&lines, 5, "forged"));
        let links: Vec<Link> = reversed.iter().cloned().map(Link::from_export).collect();
        let verdict = verify(&links, None);
        assert_eq!(verdict.first_bad, Some((5, "e5".into(), Problem::Contested)));
        let settled = settle_contest(
            verdict.clone(),
            &links,
            std::slice::from_ref(&genuine),
            &key.verifying_key(),
        );
        assert_eq!(settled.first_bad, Some((5, "forged".into(), Problem::Inserted)));
        assert_eq!(settled.checked, 6);
        // A digest signed by another key settles nothing.
        let other = crate::audit::digest::generate();
        let unsettled = settle_contest(verdict.clone(), &links, &[genuine], &other.verifying_key());
        assert_eq!(unsettled, verdict);
    }

    #[test]
    fn removals_and_reorderings_are_still_told_from_insertions() {
        let mut first_gone = chain(5);
        first_gone.remove(0);
        assert_eq!(check(&first_gone), Some((2, "e2".into(), Problem::Removed)));
        let mut last_two_swapped = chain(5);
        last_two_swapped.swap(3, 4);
        assert_eq!(
            check(&last_two_swapped),
            Some((5, "e5".into(), Problem::Reordered))
        );
        let mut moved_to_the_end = chain(5);
        let moved = moved_to_the_end.remove(1);
        moved_to_the_end.push(moved);
        assert_eq!(
            check(&moved_to_the_end),
            Some((3, "e3".into(), Problem::Reordered))
        );
        let mut far_swap = chain(6);
        far_swap.swap(1, 4);
        assert_eq!(check(&far_swap), Some((5, "e5".into(), Problem::Reordered)));
        let mut copied = chain(5);
        let copy = copied[1].clone();
        copied.insert(2, copy);
        assert_eq!(check(&copied), Some((2, "e2".into(), Problem::Reordered)));
    }

    #[test]
    fn each_kind_of_tampering_is_caught_and_located() {
        let mut edited = chain(5);
        edited[2]["eventName"] = json!("DeleteRepository");
        assert_eq!(check(&edited), Some((3, "e3".into(), Problem::Modified)));

        let mut dropped = chain(5);
        dropped.remove(1);
        assert_eq!(check(&dropped), Some((3, "e3".into(), Problem::Removed)));

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(check(&swapped), Some((3, "e3".into(), Problem::Reordered)));

        let mut inserted = chain(5);
        let mut forged = json!({"eventID": "forged", "eventName": "CreateRepository"});
        let hash = link(&[7; 32], &forged);
        forged["chain"] =
            json!({"sequence": 3, "previousHash": hex::encode([7; 32]), "hash": hex::encode(hash)});
        inserted.insert(2, forged);
        assert_eq!(check(&inserted), Some((3, "forged".into(), Problem::Inserted)));

        let mut unchained = chain(3);
        unchained.insert(1, json!({"eventID": "bare"}));
        assert_eq!(check(&unchained), Some((2, "bare".into(), Problem::Inserted)));
    }
}
