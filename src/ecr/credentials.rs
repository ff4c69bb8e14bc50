//! Scoped docker credentials: STS `AssumeRole` into the registry's
//! credentials role with an inline session policy, then ECR
//! `GetAuthorizationToken` signed with the assumed session's keys, so that
//! the token carries only the session's permissions and dies with it.

use std::time::Duration;

use aws_sdk_ecr::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_ecr::operation::RequestId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};

use super::error::{EcrError, classify};
use super::{CallLog, Registry};

/// What to assume: the role, the session policy and who the session is for.
#[derive(Debug, Clone)]
pub struct SessionRequest<'a> {
    /// The registry's `credentials_role_arn`.
    pub role_arn: &'a str,
    /// The inline session policy (minified JSON).
    pub policy: &'a str,
    /// `RoleSessionName` and `SourceIdentity`: the caller.
    pub session_name: &'a str,
    /// How long the session lives.
    pub duration: Duration,
}

/// A docker login. `Debug` leaves the password out.
#[derive(Clone)]
pub struct DockerLogin {
    /// The docker username (`AWS`).
    pub username: String,
    /// The docker password: a secret.
    pub password: String,
    /// The registry endpoint, `https://ACCOUNT.dkr.ecr.REGION.amazonaws.com`.
    pub proxy_endpoint: String,
    /// When it stops working: the session's end, or the token's if earlier.
    pub expires_at: DateTime<Utc>,
    /// The assumed session's id (`AROA…:session-name`), for the audit record.
    pub assumed_role_id: String,
}

impl std::fmt::Debug for DockerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("proxy_endpoint", &self.proxy_endpoint)
            .field("expires_at", &self.expires_at)
            .field("assumed_role_id", &self.assumed_role_id)
            .finish()
    }
}

impl Registry {
    /// Assumes the credentials role narrowed by the session policy, and asks
    /// ECR for a docker login with the session's keys.
    pub async fn docker_login(
        &self,
        log: &CallLog,
        session: &SessionRequest<'_>,
    ) -> Result<DockerLogin, EcrError> {
        let assumed = self
            .sts
            .assume_role()
            .role_arn(session.role_arn)
            .role_session_name(session.session_name)
            .source_identity(session.session_name)
            .policy(session.policy)
            .duration_seconds(i32::try_from(session.duration.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("AssumeRole", e))?;
        log.record(assumed.request_id());
        let unexpected = |what: &str| EcrError::Unavailable {
            operation: "AssumeRole",
            message: format!("the answer has no {what}"),
        };
        let keys = assumed.credentials.ok_or_else(|| unexpected("credentials"))?;
        let session_end = DateTime::<Utc>::from_timestamp(keys.expiration.secs(), 0).unwrap_or_else(Utc::now);
        let assumed_role_id = assumed
            .assumed_role_user
            .map(|user| user.assumed_role_id)
            .unwrap_or_default();
        let credentials = Credentials::new(
            keys.access_key_id,
            keys.secret_access_key,
            Some(keys.session_token),
            Some(session_end.into()),
            "ecr-gateway-scoped-session",
        );
        let client = aws_sdk_ecr::Client::from_conf(
            self.client
                .config()
                .to_builder()
                .credentials_provider(SharedCredentialsProvider::new(credentials))
                .build(),
        );
        let output = client
            .get_authorization_token()
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("GetAuthorizationToken", e))?;
        log.record(output.request_id());
        let data = output
            .authorization_data
            .and_then(|data| data.into_iter().next())
            .ok_or_else(|| EcrError::Unavailable {
                operation: "GetAuthorizationToken",
                message: "the answer has no authorizationData".into(),
            })?;
        let (username, password) = decode_token(data.authorization_token.as_deref().unwrap_or_default())
            .ok_or_else(|| EcrError::Unavailable {
                operation: "GetAuthorizationToken",
                message: "the authorization token is not base64 of USER:PASSWORD".into(),
            })?;
        let token_end = data
            .expires_at
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0));
        Ok(DockerLogin {
            username,
            password,
            proxy_endpoint: data.proxy_endpoint.unwrap_or_else(|| self.proxy_endpoint()),
            expires_at: effective_expiry(session_end, token_end, Utc::now()),
            assumed_role_id,
        })
    }

    /// `https://ACCOUNT.dkr.ecr.REGION.amazonaws.com` (`.amazonaws.com.cn` in China).
    pub fn proxy_endpoint(&self) -> String {
        format!("https://{}", self.registry_host())
    }

    /// `ACCOUNT.dkr.ecr.REGION.amazonaws.com`, the host docker logs in to.
    pub fn registry_host(&self) -> String {
        let suffix = if self.reference.region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!(
            "{}.dkr.ecr.{}.{suffix}",
            self.reference.account_id, self.reference.region
        )
    }
}

/// `base64("USER:PASSWORD")` → (USER, PASSWORD).
fn decode_token(token: &str) -> Option<(String, String)> {
    let bytes = STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty() && !password.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// The credential works until the session ends, or the token's end if that
/// is earlier. A token "expiring" before it was issued is not an expiry ECR
/// gives (it issues 12 h tokens); an emulator's fixed date is ignored then.
fn effective_expiry(
    session_end: DateTime<Utc>,
    token_end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match token_end {
        Some(token_end) if token_end > now && token_end < session_end => token_end,
        _ => session_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_decodes_into_user_and_password() {
        let token = STANDARD.encode("AWS:eyJwYXlsb2FkIjoi:with:colons");
        assert_eq!(
            decode_token(&token),
            Some(("AWS".to_owned(), "eyJwYXlsb2FkIjoi:with:colons".to_owned()))
        );
        assert_eq!(decode_token("not base64!"), None);
        assert_eq!(decode_token(&STANDARD.encode("no-colon")), None);
        assert_eq!(decode_token(&STANDARD.encode("AWS:")), None);
    }

    #[test]
    fn the_credential_ends_with_the_session_or_an_earlier_real_token_expiry() {
        let now = Utc::now();
        let session_end = now + chrono::Duration::hours(1);
        assert_eq!(
            effective_expiry(session_end, Some(now + chrono::Duration::hours(12)), now),
            session_end
        );
        let early = now + chrono::Duration::minutes(30);
        assert_eq!(effective_expiry(session_end, Some(early), now), early);
        // moto answers a fixed expiresAt in 2015.
        let past = DateTime::<Utc>::from_timestamp(1_420_070_400, 0).expect("2015");
        assert_eq!(effective_expiry(session_end, Some(past), now), session_end);
        assert_eq!(effective_expiry(session_end, None, now), session_end);
    }

    #[test]
    fn a_login_debug_print_hides_the_password() {
        let login = DockerLogin {
            username: "AWS".into(),
            password: "s3cr3t-token".into(),
            proxy_endpoint: "https://x".into(),
            expires_at: Utc::now(),
            assumed_role_id: "AROA:alice".into(),
        };
        let printed = format!("{login:?}");
        assert!(!printed.contains("s3cr3t-token") && printed.contains("<redacted>"));
    }
}
