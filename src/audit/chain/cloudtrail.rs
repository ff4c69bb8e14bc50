//! The CloudTrail-shaped JSON form of a stored audit event: the members
//! CloudTrail names, the export line with its `chain` link, and the JSON
//! lines `audit export` writes.

use serde_json::{Value, json};

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
pub(super) fn event_type(row: &AuditRow) -> &'static str {
    type_of(&row.event_name, &row.principal_type, &row.auth_method)
}

pub(super) fn type_of(event_name: &str, principal_type: &str, auth_method: &str) -> &'static str {
    if principal_type == "Service" && auth_method == "internal" || event_name == "BatchDeleteImage" {
        "AwsServiceEvent"
    } else {
        "AwsApiCall"
    }
}

/// The format of `eventTime`.
pub(super) const EVENT_TIME: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

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
    digests: &[crate::audit::digest::SignedDigest],
) -> std::io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, &export_json(row))?;
        out.write_all(b"\n")?;
    }
    for digest in digests {
        serde_json::to_writer(&mut *out, &crate::audit::digest::export_json(digest))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
