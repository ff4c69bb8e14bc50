//! The audit record: one per call, shaped like an AWS CloudTrail record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::RegistryRef;

/// Who made a call, as the identity layer established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Principal id, e.g. `alice@example.com` or `deploy/prod`.
    pub principal: String,
    /// CloudTrail's `userIdentity.type`: `User`, `Service` or `Anonymous`.
    pub principal_type: String,
    /// Groups (teams) the principal belongs to.
    pub groups: Vec<String>,
    /// How the identity was established, e.g. `insecure-dev`.
    pub auth_method: String,
}

/// The state of an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    /// Written before ECR is called; the outcome is not known yet.
    Pending,
    /// The call succeeded.
    Succeeded,
    /// The call failed; `error_code` says why.
    Failed,
}

impl AuditStatus {
    /// The value stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Pending => "pending",
            AuditStatus::Succeeded => "succeeded",
            AuditStatus::Failed => "failed",
        }
    }
}

/// A resource a call touched (CloudTrail `resources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditResource {
    /// e.g. `AWS::ECR::Repository`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The resource ARN.
    #[serde(rename = "ARN")]
    pub arn: String,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditOutcome {
    /// Succeeded or failed.
    pub status: AuditStatus,
    /// What the call returned (size-capped).
    pub response_elements: Option<serde_json::Value>,
    /// The gRPC code name of a failure, e.g. `INVALID_ARGUMENT`.
    pub error_code: Option<String>,
    /// The message the caller saw.
    pub error_message: Option<String>,
    /// The request ids of the ECR calls this call made.
    pub ecr_request_ids: Vec<String>,
}

impl AuditOutcome {
    /// The outcome of a call not finished yet.
    pub fn pending() -> AuditOutcome {
        AuditOutcome {
            status: AuditStatus::Pending,
            response_elements: None,
            error_code: None,
            error_message: None,
            ecr_request_ids: Vec::new(),
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// CloudTrail `eventID`.
    pub event_id: Uuid,
    /// CloudTrail `eventTime`.
    pub event_time: DateTime<Utc>,
    /// The RPC name, e.g. `CreateRepository`.
    pub event_name: String,
    /// True for calls that change nothing.
    pub read_only: bool,
    /// The caller.
    pub identity: Identity,
    /// The caller's address.
    pub source_ip: Option<String>,
    /// The caller's `user-agent` (capped at 1 KiB).
    pub user_agent: Option<String>,
    /// The registry the call was about, if any.
    pub registry: Option<RegistryRef>,
    /// The gateway's id of this call (CloudTrail `requestID`).
    pub gateway_request_id: Uuid,
    /// The caller's idempotency key.
    pub client_request_id: Option<String>,
    /// What the caller asked (size-capped, secrets redacted).
    pub request_parameters: serde_json::Value,
    /// What the call touched.
    pub resources: Vec<AuditResource>,
    /// The outcome; `Pending` until the call has finished.
    pub outcome: AuditOutcome,
    /// The authorization decision: allow/deny, the action and resource, the
    /// ids of the deciding policies. None when no decision was made (no identity).
    pub authorization: Option<serde_json::Value>,
}

/// CloudTrail `eventSource` of every record the gateway writes.
pub const AUDIT_EVENT_SOURCE: &str = "ecr-gateway";
