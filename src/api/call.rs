//! What every handler needs about a call: who, from where, its audit record,
//! and the two ways a call ends — recorded as a read, or through a mutation
//! whose pending record was already written ([`crate::api::mutation`]).

use std::borrow::Cow;

use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use crate::audit::{AuditLog, cap_element, cap_user_agent};
use crate::auth::authz::{Authorizer, Resource, Scope};
use crate::auth::{Caller, MissingIdentity};
use crate::domain::{AuditOutcome, AuditRecord, AuditResource, AuditStatus, Identity, RegistryRef};

/// One call in progress.
#[derive(Debug)]
pub struct Call {
    /// The caller, or why there is none.
    caller: Result<Caller, MissingIdentity>,
    /// Its audit record; the outcome is filled in when the call ends.
    pub record: AuditRecord,
    /// True once a pending record is in the database (the mutation path owns it then).
    pub persisted: bool,
}

impl Call {
    /// Starts a call: identity, source, user agent and the audit record's skeleton.
    pub fn start<T>(request: &tonic::Request<T>, event_name: &str, read_only: bool) -> Call {
        let caller = Caller::from_request(request);
        if let Ok(caller) = &caller {
            // The call's span (telemetry on; a no-op otherwise).
            tracing::Span::current().record("enduser.id", caller.identity.principal.as_str());
        }
        let identity = match &caller {
            Ok(caller) => caller.identity.clone(),
            Err(_) => Identity {
                principal: "anonymous".into(),
                principal_type: "Anonymous".into(),
                groups: Vec::new(),
                auth_method: "none".into(),
            },
        };
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(cap_user_agent);
        let record = AuditRecord {
            event_id: Uuid::now_v7(),
            event_time: Utc::now(),
            event_name: event_name.to_owned(),
            read_only,
            identity,
            source_ip: request.remote_addr().map(|a| a.ip().to_string()),
            user_agent,
            registry: None,
            gateway_request_id: Uuid::new_v4(),
            client_request_id: None,
            request_parameters: Value::Object(Default::default()),
            resources: Vec::new(),
            authorization: None,
            outcome: AuditOutcome::pending(),
        };
        Call {
            caller,
            record,
            persisted: false,
        }
    }

    /// The authenticated caller, or UNAUTHENTICATED saying why.
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller.as_ref().map_err(|missing| ApiError::Unauthenticated {
            description: missing.reason.clone(),
        })
    }

    /// Asks the policies whether the caller may make this call (the RPC's
    /// name is the action) on `resource`, and records the decision. A denial
    /// is PERMISSION_DENIED naming the caller, the action and the resource.
    pub fn authorize(&mut self, authz: &Authorizer, resource: &Resource) -> Result<(), ApiError> {
        let identity = self.caller()?.identity.clone();
        let action = self.record.event_name.clone();
        let decision = authz.decide(&identity, &action, resource);
        self.record.authorization = Some(crate::auth::authz::decision_json(&action, resource, &decision));
        if decision.allowed {
            return Ok(());
        }
        let why = if decision.policies.is_empty() {
            "no authorization policy permits it".to_owned()
        } else {
            format!("forbidden by policy {}", decision.policies.join(", "))
        };
        let ask = match resource {
            Resource::Registry(_) => "a platform admin".to_owned(),
            Resource::Namespace { namespace, .. } => {
                format!("the owners of namespace `{namespace}` or a platform admin")
            }
            Resource::Repository { name, .. } => format!(
                "the owners of namespace `{}` or a platform admin",
                crate::auth::authz::namespace_of(name)
            ),
        };
        Err(ApiError::PermissionDenied {
            reason: "ACCESS_DENIED",
            description: format!(
                "{} `{}` (groups: {}) may not call {action} on {}: {why}; ask {ask} for access (docs/security.md)",
                identity.principal_type.to_lowercase(),
                identity.principal,
                if identity.groups.is_empty() {
                    "none".to_owned()
                } else {
                    identity.groups.join(", ")
                },
                resource.describe(),
            ),
        })
    }

    /// The denial of a call on an object addressed by id (`object`, e.g.
    /// ``cleanup run `…` ``) that the caller may not even read: it names the
    /// caller, the action and the object as the caller named it, and nothing
    /// the object is about (its repository, namespace, the deciding policies).
    pub fn denied_by_id(&self, object: &str) -> ApiError {
        let (principal_type, principal, groups) = match self.caller() {
            Ok(caller) => (
                caller.identity.principal_type.to_lowercase(),
                caller.identity.principal.clone(),
                caller.identity.groups.clone(),
            ),
            Err(error) => return error,
        };
        ApiError::PermissionDenied {
            reason: "ACCESS_DENIED",
            description: format!(
                "{principal_type} `{principal}` (groups: {}) may not call {} on {object}: no authorization policy \
                 permits it; ask the owners of what it covers or a platform admin for access (docs/security.md)",
                if groups.is_empty() {
                    "none".to_owned()
                } else {
                    groups.join(", ")
                },
                self.record.event_name,
            ),
        }
    }

    /// For list and search calls: what the caller may see in `registries`,
    /// recorded as the call's decision. Never a denial: an empty scope lists nothing.
    pub fn authorize_list<'a>(
        &mut self,
        authz: &Authorizer,
        registries: impl IntoIterator<Item = &'a RegistryRef>,
    ) -> Result<Scope, ApiError> {
        let identity = self.caller()?.identity.clone();
        let scope = authz.scope(&identity, &self.record.event_name, registries);
        let mut decision = scope.audit_json();
        if let Value::Object(map) = &mut decision {
            map.insert("action".into(), Value::String(self.record.event_name.clone()));
        }
        self.record.authorization = Some(decision);
        Ok(scope)
    }

    /// Records that the call needs no policy decision because it concerns no
    /// resource the gateway manages (`why` says so in the audit event).
    pub fn allow_unscoped(&mut self, why: &str) {
        self.record.authorization = Some(serde_json::json!({
            "decision": "allow",
            "action": self.record.event_name,
            "resource": "none",
            "reason": why,
        }));
    }

    /// Records what the caller asked (size-capped).
    pub fn set_parameters(&mut self, parameters: Value) {
        self.record.request_parameters = cap_element(storable_json(parameters));
    }

    /// Records the caller's idempotency key, as sent (it is checked later).
    pub fn set_client_request_id(&mut self, request_id: &str) {
        self.record.client_request_id = (!request_id.is_empty()).then(|| storable(request_id).into_owned());
    }

    /// Records the registry the call is about (in the audit record, and as an
    /// attribute of the call's span).
    pub fn set_registry(&mut self, registry: &RegistryRef) {
        tracing::Span::current().record("registry", registry.alias.as_str());
        self.record.registry = Some(registry.clone());
    }

    /// Records the registry and the repository the call is about (in the
    /// audit record, and as attributes of the call's span).
    pub fn set_repository(&mut self, registry: &RegistryRef, arn: String) {
        let span = tracing::Span::current();
        span.record("registry", registry.alias.as_str());
        if let Some((_, repository)) = arn.split_once(":repository/") {
            span.record("repository", repository);
        }
        self.record.registry = Some(registry.clone());
        self.record.resources = vec![AuditResource {
            resource_type: "AWS::ECR::Repository".into(),
            arn,
        }];
    }

    /// Ends the call: records the outcome (unless the mutation path already
    /// finalised the persisted record) and turns errors into statuses.
    pub async fn finish<R>(
        mut self,
        audit: &AuditLog,
        result: Result<(R, Value), ApiError>,
    ) -> Result<tonic::Response<R>, tonic::Status> {
        // Deny by default: a call that succeeded without asking the policies is a gateway bug.
        let result = match result {
            Ok(_) if self.record.authorization.is_none() => {
                let reference = Uuid::new_v4();
                tracing::error!(%reference, event = %self.record.event_name, "a call succeeded without an authorization decision (a gateway bug); answering INTERNAL");
                Err(ApiError::Internal { reference })
            }
            other => other,
        };
        let (result, outcome) = match result {
            Ok((response, elements)) => (Ok(response), succeeded(elements, Vec::new())),
            Err(error) => {
                let outcome = failed(&error, Vec::new());
                (Err(error), outcome)
            }
        };
        if !self.persisted {
            self.record.outcome = outcome;
            audit.record(self.record).await;
        }
        result.map(tonic::Response::new).map_err(|e| e.to_status())
    }
}

/// The outcome of a succeeded call.
pub fn succeeded(elements: Value, ecr_request_ids: Vec<String>) -> AuditOutcome {
    AuditOutcome {
        status: AuditStatus::Succeeded,
        response_elements: Some(cap_element(storable_json(elements))),
        error_code: None,
        error_message: None,
        ecr_request_ids,
    }
}

/// The outcome of a failed call.
pub fn failed(error: &ApiError, ecr_request_ids: Vec<String>) -> AuditOutcome {
    AuditOutcome {
        status: AuditStatus::Failed,
        response_elements: None,
        error_code: Some(format!("{:?}", error.code())),
        error_message: Some(storable(&error.to_string()).into_owned()),
        ecr_request_ids,
    }
}

/// What Postgres can store of a caller's text: its `text` and `jsonb` hold
/// no U+0000, so a NUL (which callers can send in any string field, and
/// which an error may quote back) is recorded as U+FFFD. Without this the
/// record could not be stored, and it would hold up the audit writer's batch.
fn storable(text: &str) -> Cow<'_, str> {
    match text.contains('\0') {
        true => Cow::Owned(text.replace('\0', "\u{FFFD}")),
        false => Cow::Borrowed(text),
    }
}

/// [`storable`] for every string and key of a JSON value.
fn storable_json(value: Value) -> Value {
    match value {
        Value::String(text) if text.contains('\0') => Value::String(storable(&text).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (storable(&key).into_owned(), storable_json(value)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters() {
        let value = serde_json::json!({"prefix": "a\u{0}b", "tags": {"k\u{0}": ["\u{0}"]}, "n": 1});
        assert_eq!(
            storable_json(value),
            serde_json::json!({"prefix": "a\u{FFFD}b", "tags": {"k\u{FFFD}": ["\u{FFFD}"]}, "n": 1})
        );
        assert_eq!(storable("plain"), Cow::Borrowed("plain"));
    }
}
