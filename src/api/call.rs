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

/// What the generic adapter ([`super::rpc`]) needs of an RPC's request
/// message. build.rs implements it for every RPC's request from the
/// descriptors, so a new RPC needs no line of its own.
pub trait RequestMessage: AuditParameters {
    /// The caller's idempotency key (`request_id`), empty when the message
    /// has none; recorded, as sent, as the audit record's `clientRequestID`
    /// when the call starts (it is checked later).
    fn client_request_id(&self) -> &str;
    /// True when the message asks only to validate (`validate_only`): the
    /// call is then recorded as a read.
    fn validate_only(&self) -> bool;
}

/// A message's form in the audit record's `requestParameters`: every field,
/// in ECR's parameter names where there is one (build.rs, `audit_key`).
pub trait AuditParameters {
    /// The JSON object.
    fn audit_parameters(&self) -> Value;
}

/// An enum field's audit form: its name, or the number when it names no value.
fn enum_name<E>(name: Result<&str, E>, number: i32) -> Value {
    match name {
        Ok(name) => Value::String(name.to_owned()),
        Err(_) => Value::from(number),
    }
}

include!(concat!(env!("OUT_DIR"), "/request_messages.rs"));

/// One call in progress.
#[derive(Debug)]
pub struct Call {
    /// The caller, or why there is none.
    caller: Result<Caller, MissingIdentity>,
    /// Its audit record; the outcome is filled in when the call ends.
    pub record: AuditRecord,
    /// True once a pending record is in the database (the mutation path owns it then).
    pub persisted: bool,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub deadline: Option<std::time::Instant>,
}

impl Call {
    /// Starts a call: identity, source, user agent, the caller's idempotency
    /// key and the audit record's skeleton.
    pub fn start<T: RequestMessage>(request: &tonic::Request<T>, event_name: &str, read_only: bool) -> Call {
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
            client_request_id: Some(request.get_ref().client_request_id())
                .filter(|id| !id.is_empty())
                .map(|id| storable(id).into_owned()),
            request_parameters: Value::Object(Default::default()),
            resources: Vec::new(),
            authorization: None,
            outcome: AuditOutcome::pending(),
        };
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .and_then(|timeout| std::time::Instant::now().checked_add(timeout));
        Call {
            caller,
            record,
            persisted: false,
            deadline,
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

    /// Records that the call is allowed because it concerns what the caller
    /// itself started (`what` names it, e.g. a remediation run).
    pub fn allow_own(&mut self, what: &str) {
        self.record.authorization = Some(serde_json::json!({
            "decision": "allow",
            "action": self.record.event_name,
            "resource": what,
            "reason": "the caller started it",
        }));
    }

    /// Asks the policies whether the caller may do `action` (not the RPC's
    /// name: e.g. `PushImages` for a credential) on every one of `resources`,
    /// and records every decision. Any refusal refuses the whole call:
    /// PERMISSION_DENIED naming the action and each resource refused.
    pub fn authorize_each(
        &mut self,
        authz: &Authorizer,
        action: &str,
        resources: &[Resource],
    ) -> Result<(), ApiError> {
        let pairs: Vec<(&str, &Resource)> = resources.iter().map(|r| (action, r)).collect();
        self.authorize_all(authz, action, &pairs)
    }

    /// Asks the policies about every `(action, resource)` pair (e.g.
    /// PromoteImage: `PullImages` on the source, `PushImages` on the target)
    /// and records every decision under `summary` (the audit event's
    /// `action`). Any refusal refuses the call: PERMISSION_DENIED naming each
    /// action and resource refused, and the RPC.
    pub fn authorize_all(
        &mut self,
        authz: &Authorizer,
        summary: &str,
        pairs: &[(&str, &Resource)],
    ) -> Result<(), ApiError> {
        let identity = self.caller()?.identity.clone();
        let mut decisions = Vec::with_capacity(pairs.len());
        let mut refused: Vec<(&str, String)> = Vec::new();
        for (action, resource) in pairs {
            let decision = authz.decide(&identity, action, resource);
            decisions.push(crate::auth::authz::decision_json(action, resource, &decision));
            if !decision.allowed {
                refused.push((action, resource.describe()));
            }
        }
        let allowed = refused.is_empty();
        self.record.authorization = Some(serde_json::json!({
            "decision": if allowed { "allow" } else { "deny" },
            "action": summary,
            "decisions": decisions,
        }));
        if allowed {
            return Ok(());
        }
        // "PullImages on a, b or PushImages on c", in the order asked.
        let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
        for (action, resource) in refused {
            match groups.last_mut() {
                Some((last, names)) if *last == action => names.push(resource),
                _ => groups.push((action, vec![resource])),
            }
        }
        let what: Vec<String> = groups
            .iter()
            .map(|(action, names)| format!("{action} on {}", names.join(", ")))
            .collect();
        let rpc = &self.record.event_name;
        Err(ApiError::PermissionDenied {
            reason: "ACCESS_DENIED",
            description: format!(
                "{} `{}` may not {}{}: no authorization policy permits it; ask the owners of the \
                 namespace or a platform admin for access (docs/security.md)",
                identity.principal_type.to_lowercase(),
                identity.principal,
                what.join(" or "),
                if groups.iter().all(|(action, _)| action == rpc) {
                    String::new()
                } else {
                    format!(" (needed by {rpc})")
                },
            ),
        })
    }

    /// Records what the caller asked (size-capped).
    pub fn set_parameters(&mut self, parameters: Value) {
        self.record.request_parameters = cap_element(storable_json(parameters));
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

/// A `grpc-timeout` header's value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
    fn a_grpc_timeout_header_is_read_in_each_unit() {
        use std::time::Duration;
        assert_eq!(grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "m", "5", "123456789S", "-1S", "1.5S", "5x", "5\u{e9}"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

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
