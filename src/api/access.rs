//! `ecrgateway.v1.RegistryAccessService`: scoped, short-lived docker
//! credentials. The scope's rules live in [`crate::policy::credentials`];
//! the STS and ECR calls in [`crate::ecr`]. The password goes to the caller
//! and nowhere else: not to the log, the audit record or the cache's debug form.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::{Value, json};

use super::Shared;
use super::call::Call;
use super::convert;
use super::error::{ApiError, OrRecord as _, Precondition, invalid};
use crate::auth::authz::Resource;
use crate::config::{AccessConfig, MIN_CREDENTIAL_SECONDS};
use crate::domain::{RegistryRef, Violation};
use crate::ecr::{CallLog, DockerLogin, EcrError, Registry, SessionRequest};
use crate::pb;
use crate::pb::registry_access_service_server::RegistryAccessService;
use crate::policy::credentials::{
    Access, CredentialLimits, CredentialRequest, CredentialScope, fitting_session_policy, session_name,
};

/// The RegistryAccessService implementation.
#[derive(Debug)]
pub struct AccessApi {
    state: Shared,
    settings: AccessConfig,
    /// Credential roles by registry alias.
    roles: HashMap<String, String>,
    issued: IssuedCache,
    limiter: DefaultKeyedRateLimiter<String>,
}

/// What a request asks for, decoded.
struct Grant<'a> {
    registry: &'a Registry,
    scope: CredentialScope,
    access: Access,
}

impl AccessApi {
    /// A service over the shared state, with `[access]` and each registry's credentials role.
    pub fn new(state: Shared, settings: AccessConfig, roles: HashMap<String, String>) -> Self {
        let per_minute = NonZeroU32::new(settings.per_caller_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            state,
            issued: IssuedCache::new(settings.cache_entries),
            limiter: DefaultKeyedRateLimiter::dashmap(Quota::per_minute(per_minute)),
            settings,
            roles,
        }
    }

    async fn issue(
        &self,
        call: &mut Call,
        request: &pb::GetRegistryCredentialsRequest,
    ) -> Result<(pb::GetRegistryCredentialsResponse, Value), ApiError> {
        let principal = call.caller()?.identity.principal.clone();
        let grant = self.decode(request)?;
        call.set_registry(&grant.registry.reference);
        let resources = scope_resources(&grant.registry.reference, &grant.scope);
        call.authorize_each(&self.state.authz, grant.access.action(), &resources)?;
        self.admit(&principal)?;
        let role_arn = self.role_of(&grant.registry.reference)?;
        let key = IssuedKey {
            principal: principal.clone(),
            registry: grant.registry.reference.alias.clone(),
            scope: grant.scope.clone(),
            access: grant.access,
        };
        if let Some(login) = self.issued.fresh(&key, Utc::now()) {
            return Ok(answer(&grant, &login, true));
        }
        let login = self.assume(&grant, role_arn, &principal).await?;
        self.issued.insert(key, login.clone(), Utc::now());
        Ok(answer(&grant, &login, false))
    }

    /// The registry, the checked scope and the access, or every violation at once.
    fn decode<'a>(&'a self, request: &pb::GetRegistryCredentialsRequest) -> Result<Grant<'a>, ApiError> {
        let mut violations = Vec::new();
        let registry = self.state.registry(&request.registry).or_record(&mut violations);
        let access = decode_access(request.access).or_record(&mut violations);
        let duration = decode_duration(request.duration.as_ref()).or_record(&mut violations);
        let policy = self.state.policy.current();
        let limits = CredentialLimits {
            namespaces: &policy.config().naming.namespaces,
            default_duration: Duration::from_secs(self.settings.default_duration_seconds),
            max_duration: Duration::from_secs(self.settings.max_duration_seconds),
            min_duration: Duration::from_secs(MIN_CREDENTIAL_SECONDS),
        };
        let scope = CredentialRequest {
            repositories: &request.repositories,
            prefixes: &request.repository_prefixes,
            duration: duration.flatten(),
        }
        .check(&limits)
        .map_err(|v| violations.extend(v))
        .ok();
        match (registry, scope, access) {
            (Some(registry), Some(scope), Some(access)) if violations.is_empty() => Ok(Grant {
                registry,
                scope,
                access,
            }),
            _ => Err(invalid(violations)),
        }
    }

    /// Holds each caller to `access.per_caller_per_minute`.
    fn admit(&self, principal: &str) -> Result<(), ApiError> {
        self.limiter.check_key(&principal.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::ResourceExhausted {
                reason: "CREDENTIALS_RATE_LIMITED",
                subject: principal.to_owned(),
                description: format!(
                    "`{principal}` asked for more than {} credentials a minute (access.per_caller_per_minute); \
                     reuse the one you have until it nears its expire_time, or retry in {} s",
                    self.settings.per_caller_per_minute,
                    wait.as_secs_f64().ceil()
                ),
                retry_after: wait,
            }
        })
    }

    /// The registry's credentials role, or FAILED_PRECONDITION saying what to configure.
    fn role_of(&self, registry: &RegistryRef) -> Result<&str, ApiError> {
        let missing = |description: String| ApiError::FailedPrecondition {
            reason: "CREDENTIALS_NOT_CONFIGURED",
            violations: vec![Precondition {
                kind: "CREDENTIALS_NOT_CONFIGURED".into(),
                subject: registry.alias.clone(),
                description,
            }],
        };
        if !self.settings.enabled {
            return Err(missing(
                "this gateway issues no registry credentials ([access] enabled = false); ask the platform team".into(),
            ));
        }
        self.roles
            .get(&registry.alias)
            .map(String::as_str)
            .ok_or_else(|| {
                missing(format!(
                    "registry `{}` has no credentials_role_arn; ask the platform team",
                    registry.alias
                ))
            })
    }

    /// AssumeRole with the session policy, then GetAuthorizationToken as the session.
    async fn assume(
        &self,
        grant: &Grant<'_>,
        role_arn: &str,
        principal: &str,
    ) -> Result<DockerLogin, ApiError> {
        let reference = &grant.registry.reference;
        let policy = fitting_session_policy(
            &reference.account_id,
            &reference.region,
            &grant.scope,
            grant.access,
        )
        .map_err(|v| invalid(vec![v]))?;
        let session = SessionRequest {
            role_arn,
            policy: &policy,
            session_name: &session_name(principal),
            duration: grant.scope.duration,
        };
        grant
            .registry
            .docker_login(&CallLog::default(), &session)
            .await
            .map_err(|error| credential_error(error, role_arn))
    }
}

super::rpc::unary_rpcs! {
    RegistryAccessService, AccessApi, this {
        get_registry_credentials(GetRegistryCredentialsRequest) -> GetRegistryCredentialsResponse = "GetRegistryCredentials", Read, AccessApi::issue;
    }
}

/// PULL for UNSPECIFIED; an unknown number is a violation.
fn decode_access(value: i32) -> Result<Access, Violation> {
    match pb::RegistryAccess::try_from(value) {
        Ok(pb::RegistryAccess::Unspecified | pb::RegistryAccess::Pull) => Ok(Access::Pull),
        Ok(pb::RegistryAccess::Push) => Ok(Access::Push),
        Err(_) => Err(Violation::new(
            "access",
            "credentials.access",
            format!("{value} is not a RegistryAccess; use REGISTRY_ACCESS_PULL or REGISTRY_ACCESS_PUSH"),
        )),
    }
}

/// A whole, non-negative number of seconds (none: the default).
fn decode_duration(duration: Option<&prost_types::Duration>) -> Result<Option<Duration>, Violation> {
    match duration {
        None => Ok(None),
        Some(d) if d.seconds >= 0 && d.nanos == 0 => Ok(Some(Duration::from_secs(d.seconds as u64))),
        Some(_) => Err(Violation::new(
            "duration",
            "credentials.duration-range",
            "give a whole, positive number of seconds, e.g. 3600s",
        )),
    }
}

/// What the policies are asked about: each repository, and each prefix's namespace.
fn scope_resources(registry: &RegistryRef, scope: &CredentialScope) -> Vec<Resource> {
    let repositories = scope
        .repositories
        .iter()
        .map(|name| Resource::repository(registry, name.as_str()));
    let namespaces = scope.prefixes.iter().map(|prefix| Resource::Namespace {
        registry: registry.clone(),
        namespace: crate::auth::authz::namespace_of(prefix).to_owned(),
    });
    repositories.chain(namespaces).collect()
}

/// The answer and its audit form (everything but the password).
fn answer(
    grant: &Grant<'_>,
    login: &DockerLogin,
    cached: bool,
) -> (pb::GetRegistryCredentialsResponse, Value) {
    let repositories: Vec<String> = grant
        .scope
        .repositories
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let prefixes: Vec<String> = grant.scope.prefixes.iter().cloned().collect();
    let access = match grant.access {
        Access::Pull => pb::RegistryAccess::Pull,
        Access::Push => pb::RegistryAccess::Push,
    };
    let elements = json!({
        "registry": grant.registry.reference.alias,
        "repositories": repositories,
        "repositoryPrefixes": prefixes,
        "access": grant.access.as_str(),
        "username": login.username,
        "proxyEndpoint": login.proxy_endpoint,
        "expireTime": login.expires_at.to_rfc3339(),
        "assumedRoleId": login.assumed_role_id,
        "cached": cached,
    });
    let response = pb::GetRegistryCredentialsResponse {
        username: login.username.clone(),
        password: login.password.clone(),
        proxy_endpoint: login.proxy_endpoint.clone(),
        expire_time: Some(convert::timestamp(login.expires_at)),
        registry: grant.registry.reference.alias.clone(),
        repositories,
        repository_prefixes: prefixes,
        access: access as i32,
        cached,
    };
    (response, elements)
}

/// STS's refusals in the caller's terms; the rest as any ECR failure.
fn credential_error(error: EcrError, role_arn: &str) -> ApiError {
    match error {
        EcrError::AccessDenied {
            operation: "AssumeRole",
            message,
            ..
        } => ApiError::PermissionDenied {
            reason: "CREDENTIALS_ROLE_DENIED",
            description: format!(
                "STS refused the gateway's AssumeRole of {role_arn} ({message}); the platform team must let the \
                 gateway assume it (docs/security.md, \"Registry credentials\")"
            ),
        },
        EcrError::Invalid {
            operation: "AssumeRole",
            code,
            message,
        } => ApiError::InvalidArgument {
            reason: "CREDENTIALS_REFUSED_BY_STS",
            violations: vec![Violation::new(
                "repositories",
                "credentials.sts-refused",
                format!(
                    "STS refused the session ({code}: {message}); for PackedPolicyTooLarge use a prefix such as \
                     `payments/`, for a duration error ask for less"
                ),
            )],
        },
        other => other.into(),
    }
}

/// Who asked for what: an identical request of the same caller may get the same credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IssuedKey {
    principal: String,
    registry: String,
    scope: CredentialScope,
    access: Access,
}

/// Credentials issued lately, answered again while more than half their life is left.
struct IssuedCache {
    capacity: usize,
    entries: Mutex<HashMap<IssuedKey, (DockerLogin, DateTime<Utc>)>>,
}

impl std::fmt::Debug for IssuedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("IssuedCache")
            .field("capacity", &self.capacity)
            .field("held", &held)
            .finish()
    }
}

impl IssuedCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The credential issued for `key`, while more than half its life is left at `now`.
    fn fresh(&self, key: &IssuedKey, now: DateTime<Utc>) -> Option<DockerLogin> {
        let entries = self.entries.lock().ok()?;
        let (login, issued_at) = entries.get(key)?;
        (now < half_life(*issued_at, login.expires_at)).then(|| login.clone())
    }

    /// Remembers a credential; a full cache first drops what is past half its life, then everything.
    fn insert(&self, key: IssuedKey, login: DockerLogin, now: DateTime<Utc>) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, (login, issued_at)| now < half_life(*issued_at, login.expires_at));
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (login, now));
    }
}

/// The middle of a credential's life.
fn half_life(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    issued_at + (expires_at - issued_at) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(expires_at: DateTime<Utc>) -> DockerLogin {
        DockerLogin {
            username: "AWS".into(),
            password: "secret".into(),
            proxy_endpoint: "https://123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
            expires_at,
            assumed_role_id: "AROA:alice".into(),
        }
    }

    fn key(principal: &str) -> IssuedKey {
        IssuedKey {
            principal: principal.into(),
            registry: "main".into(),
            scope: CredentialScope {
                repositories: Default::default(),
                prefixes: ["payments/".to_owned()].into(),
                duration: Duration::from_secs(3600),
            },
            access: Access::Pull,
        }
    }

    #[test]
    fn a_credential_is_answered_again_only_while_more_than_half_its_life_is_left() {
        let cache = IssuedCache::new(10);
        let issued = Utc::now();
        cache.insert(key("alice"), login(issued + chrono::Duration::hours(1)), issued);
        let at = |minutes| issued + chrono::Duration::minutes(minutes);
        assert!(cache.fresh(&key("alice"), at(29)).is_some());
        assert!(cache.fresh(&key("alice"), at(31)).is_none());
        assert!(
            cache.fresh(&key("bob"), at(1)).is_none(),
            "another caller never gets it"
        );
        let mut push = key("alice");
        push.access = Access::Push;
        assert!(cache.fresh(&push, at(1)).is_none(), "nor another access");
    }

    #[test]
    fn a_full_cache_makes_room_and_a_zero_capacity_keeps_nothing() {
        let now = Utc::now();
        let cache = IssuedCache::new(2);
        cache.insert(key("a"), login(now + chrono::Duration::hours(1)), now);
        cache.insert(key("b"), login(now + chrono::Duration::hours(1)), now);
        cache.insert(key("c"), login(now + chrono::Duration::hours(1)), now);
        assert!(cache.fresh(&key("c"), now).is_some());
        assert!(cache.entries.lock().expect("lock").len() <= 2);
        let off = IssuedCache::new(0);
        off.insert(key("a"), login(now + chrono::Duration::hours(1)), now);
        assert!(off.fresh(&key("a"), now).is_none());
    }

    #[test]
    fn access_and_duration_decode_with_named_violations() {
        assert_eq!(decode_access(0).expect("pull"), Access::Pull);
        assert_eq!(decode_access(2).expect("push"), Access::Push);
        assert_eq!(decode_access(9).expect_err("unknown").field, "access");
        assert_eq!(decode_duration(None).expect("none"), None);
        let half = prost_types::Duration { seconds: 1, nanos: 5 };
        assert_eq!(decode_duration(Some(&half)).expect_err("nanos").field, "duration");
        let negative = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(
            decode_duration(Some(&negative)).expect_err("negative").field,
            "duration"
        );
    }

    #[test]
    fn the_cache_debug_form_shows_no_credential() {
        let cache = IssuedCache::new(2);
        cache.insert(
            key("a"),
            login(Utc::now() + chrono::Duration::hours(1)),
            Utc::now(),
        );
        assert!(!format!("{cache:?}").contains("secret"));
    }
}
