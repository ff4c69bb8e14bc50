//! Caller identity. [`IdentityLayer`] asks the [`Authenticator`] who is
//! calling and puts the answer — a [`Caller`] or why there is none — into
//! every request's extensions; handlers ask for it with
//! [`Caller::from_request`] and answer UNAUTHENTICATED when it is absent.
//! Health and reflection need no identity.
//!
//! Modes (`auth.modes`), judged in this order: a bearer token is judged by
//! OIDC alone ([`jwt`]; a bad token is refused, never passed on to another
//! mode); else a client certificate verified against `auth.mtls.ca_file`
//! ([`mtls`]); else the `insecure-dev` headers when that mode is on.

pub mod authz;
pub mod jwks;
pub mod jwt;
mod layer;
pub mod mtls;

use std::sync::Arc;

use http::{Extensions, HeaderMap};
use tokio::sync::watch;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub use layer::{IdentityLayer, IdentityService};

use crate::config::{AuthConfig, AuthMode};
use crate::domain::Identity;
use jwt::{MAX_AUTHORIZATION_BYTES, OidcVerifier};
use mtls::MtlsAuthenticator;

/// Header carrying the principal in `insecure-dev` mode.
pub const PRINCIPAL_HEADER: &str = "x-ecr-gateway-principal";
/// Header carrying comma-separated groups in `insecure-dev` mode.
pub const GROUPS_HEADER: &str = "x-ecr-gateway-groups";
/// Longest principal accepted, in bytes.
const MAX_PRINCIPAL_BYTES: usize = 256;
/// Most groups accepted.
const MAX_GROUPS: usize = 64;

/// The identity of the caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who is calling.
    pub identity: Identity,
}

/// Why a request carries no usable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIdentity {
    /// Said to the caller as the UNAUTHENTICATED message.
    pub reason: String,
}

impl Caller {
    /// The caller the identity layer established, or why there is none.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Caller, MissingIdentity> {
        match request.extensions().get::<Result<Caller, MissingIdentity>>() {
            Some(result) => result.clone(),
            None => Err(MissingIdentity {
                reason: "no identity layer ran for this request".into(),
            }),
        }
    }
}

/// Establishes callers in the configured modes.
#[derive(Debug)]
pub struct Authenticator {
    modes: Vec<AuthMode>,
    oidc: Option<OidcVerifier>,
    mtls: Option<MtlsAuthenticator>,
}

impl Authenticator {
    /// Checks `[auth]` (given the listen address, for the loopback rule of
    /// insecure-dev) and reads its files; every problem names its key.
    pub fn from_config(config: &AuthConfig, listen: &str) -> Result<Authenticator, Vec<String>> {
        let mut problems = config.problems(listen);
        if !problems.is_empty() {
            return Err(problems);
        }
        let modes = config.effective_modes();
        let oidc = match config.oidc.as_ref().filter(|_| modes.contains(&AuthMode::Oidc)) {
            Some(oidc) => OidcVerifier::from_config(oidc)
                .map_err(|p| problems.extend(p))
                .ok(),
            None => None,
        };
        let mtls = match config.mtls.as_ref().filter(|_| modes.contains(&AuthMode::Mtls)) {
            Some(mtls) => MtlsAuthenticator::from_config(mtls)
                .map_err(|p| problems.extend(p))
                .ok(),
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Authenticator { modes, oidc, mtls })
    }

    /// The configured modes.
    pub fn modes(&self) -> &[AuthMode] {
        &self.modes
    }

    /// The TLS handshake's client-certificate verifier when mTLS is on.
    pub fn client_cert_verifier(&self) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
        self.mtls.as_ref().map(MtlsAuthenticator::handshake_verifier)
    }

    /// Fetches a `jwks_url` once (a failure is logged; tokens are refused
    /// saying why until a later fetch succeeds) and spawns its refresh task.
    pub async fn start(&self, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
        let jwks = self.oidc.as_ref()?.jwks().clone();
        if jwks.is_fetched() {
            jwks.refresh().await;
            Some(tokio::spawn(jwks.run_refresh(stop)))
        } else {
            None
        }
    }

    /// The caller of a request, from its headers and the connection's
    /// extensions (TLS peer certificates).
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Caller, MissingIdentity> {
        self.refuse_repeated_credentials(headers)?;
        if let Some(oidc) = &self.oidc
            && let Some(authorization) = headers.get(http::header::AUTHORIZATION)
        {
            let token = bearer_token(authorization)?;
            return oidc
                .verify(token)
                .await
                .map(|identity| Caller { identity })
                .map_err(|reason| MissingIdentity { reason });
        }
        if let Some(mtls) = &self.mtls
            && let Some(chain) = peer_certificates(extensions)
        {
            return mtls.identify(&chain);
        }
        if self.modes.contains(&AuthMode::InsecureDev)
            && (self.modes.len() == 1 || headers.contains_key(PRINCIPAL_HEADER))
        {
            return identify_insecure_dev(headers);
        }
        Err(MissingIdentity {
            reason: self.no_credentials(),
        })
    }

    /// Refuses a request that carries a credential header more than once:
    /// whichever entry the gateway judged, a proxy or a sidecar in front of
    /// it may read another and disagree about who called. `authorization`
    /// is checked in every mode; the insecure-dev headers when that mode is on.
    fn refuse_repeated_credentials(&self, headers: &HeaderMap) -> Result<(), MissingIdentity> {
        let insecure_dev = self.modes.contains(&AuthMode::InsecureDev);
        let checked = [
            (http::header::AUTHORIZATION.as_str(), true),
            (PRINCIPAL_HEADER, insecure_dev),
            (GROUPS_HEADER, insecure_dev),
        ];
        for (name, _) in checked.iter().filter(|(_, checked)| *checked) {
            let entries = headers.get_all(*name).iter().count();
            if entries > 1 {
                return Err(MissingIdentity {
                    reason: format!(
                        "`{name}` metadata appears {entries} times: send it once; with more than one \
                         entry, proxies in front of the gateway could take the caller to be someone else"
                    ),
                });
            }
        }
        Ok(())
    }

    fn no_credentials(&self) -> String {
        let accepted: Vec<String> = self
            .modes
            .iter()
            .map(|mode| match mode {
                AuthMode::Oidc => "a bearer token (`authorization: Bearer <jwt>`, oidc)".to_owned(),
                AuthMode::Mtls => "a client certificate over TLS (mtls)".to_owned(),
                AuthMode::InsecureDev => format!("`{PRINCIPAL_HEADER}` metadata (insecure-dev)"),
            })
            .collect();
        format!("no credentials: this gateway accepts {}", accepted.join(" or "))
    }
}

/// The token of `authorization: Bearer <token>`; anything else is refused with a reason.
fn bearer_token(value: &http::HeaderValue) -> Result<&str, MissingIdentity> {
    let refuse = |reason: String| MissingIdentity { reason };
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(refuse(format!(
            "`authorization` metadata is {} bytes; at most {MAX_AUTHORIZATION_BYTES} are read",
            value.len()
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| refuse("`authorization` metadata must be printable ASCII".into()))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim())
        }
        _ => Err(refuse("`authorization` metadata must be `Bearer <token>`".into())),
    }
}

/// The client's certificate chain, leaf first, when the connection is TLS and the client sent one.
fn peer_certificates(extensions: &Extensions) -> Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>> {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .filter(|chain| !chain.is_empty())
}

fn identify_insecure_dev(headers: &HeaderMap) -> Result<Caller, MissingIdentity> {
    let principal = match headers.get(PRINCIPAL_HEADER) {
        None => {
            return Err(MissingIdentity {
                reason: format!(
                    "missing `{PRINCIPAL_HEADER}` metadata: auth mode insecure-dev takes the caller from it"
                ),
            });
        }
        Some(value) => value.to_str().map_err(|_| MissingIdentity {
            reason: format!("`{PRINCIPAL_HEADER}` must be printable ASCII"),
        })?,
    };
    let principal = principal.trim();
    if principal.is_empty() || principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(MissingIdentity {
            reason: format!("`{PRINCIPAL_HEADER}` must be 1-{MAX_PRINCIPAL_BYTES} characters"),
        });
    }
    let groups = match headers.get(GROUPS_HEADER) {
        None => Vec::new(),
        Some(value) => parse_groups(value.to_str().map_err(|_| MissingIdentity {
            reason: format!("`{GROUPS_HEADER}` must be printable ASCII"),
        })?)?,
    };
    Ok(Caller {
        identity: Identity {
            principal: principal.to_owned(),
            principal_type: "User".into(),
            groups,
            auth_method: "insecure-dev".into(),
        },
    })
}

fn parse_groups(text: &str) -> Result<Vec<String>, MissingIdentity> {
    let groups: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    if groups.len() > MAX_GROUPS {
        return Err(MissingIdentity {
            reason: format!("`{GROUPS_HEADER}` lists more than {MAX_GROUPS} groups"),
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header value"));
        }
        map
    }

    fn authenticator(modes: &[AuthMode]) -> Authenticator {
        Authenticator {
            modes: modes.to_vec(),
            oidc: None,
            mtls: None,
        }
    }

    async fn identify(modes: &[AuthMode], headers: &HeaderMap) -> Result<Caller, MissingIdentity> {
        authenticator(modes).identify(headers, &Extensions::new()).await
    }

    #[tokio::test]
    async fn insecure_dev_reads_principal_and_groups() {
        let caller = identify(
            &[AuthMode::InsecureDev],
            &headers(&[
                (PRINCIPAL_HEADER, "alice@example.com"),
                (GROUPS_HEADER, "payments, search ,"),
            ]),
        )
        .await
        .expect("caller");
        assert_eq!(caller.identity.principal, "alice@example.com");
        assert_eq!(caller.identity.groups, vec!["payments", "search"]);
        assert_eq!(caller.identity.auth_method, "insecure-dev");
    }

    #[tokio::test]
    async fn a_missing_principal_says_which_header_is_needed() {
        let error = identify(&[AuthMode::InsecureDev], &HeaderMap::new())
            .await
            .expect_err("no caller");
        assert!(error.reason.contains(PRINCIPAL_HEADER));
    }

    #[tokio::test]
    async fn a_blank_principal_is_refused() {
        let error = identify(&[AuthMode::InsecureDev], &headers(&[(PRINCIPAL_HEADER, "   ")]))
            .await
            .expect_err("blank");
        assert!(error.reason.contains("1-256"));
    }

    #[tokio::test]
    async fn no_credentials_names_what_each_configured_mode_accepts() {
        let error = identify(&[AuthMode::Mtls, AuthMode::InsecureDev], &HeaderMap::new())
            .await
            .expect_err("no caller");
        assert!(error.reason.contains("client certificate"), "{}", error.reason);
        assert!(error.reason.contains(PRINCIPAL_HEADER), "{}", error.reason);
        assert!(!error.reason.contains("bearer"), "{}", error.reason);
    }

    #[tokio::test]
    async fn a_repeated_credential_header_is_refused_in_every_mode() {
        let mut twice = HeaderMap::new();
        twice.append(
            http::header::AUTHORIZATION,
            "Bearer a.b.c".parse().expect("value"),
        );
        twice.append(
            http::header::AUTHORIZATION,
            "Bearer d.e.f".parse().expect("value"),
        );
        for modes in [
            &[AuthMode::InsecureDev][..],
            &[AuthMode::Mtls][..],
            &[AuthMode::Oidc, AuthMode::Mtls, AuthMode::InsecureDev][..],
        ] {
            let error = identify(modes, &twice).await.expect_err("refused");
            assert!(
                error.reason.contains("`authorization` metadata appears 2 times"),
                "{modes:?}: {}",
                error.reason
            );
        }
        for header in [PRINCIPAL_HEADER, GROUPS_HEADER] {
            let mut map = headers(&[
                (PRINCIPAL_HEADER, "alice@example.com"),
                (GROUPS_HEADER, "payments"),
            ]);
            map.append(header, "admins".parse().expect("value"));
            let error = identify(&[AuthMode::InsecureDev], &map)
                .await
                .expect_err("refused");
            assert!(
                error
                    .reason
                    .contains(&format!("`{header}` metadata appears 2 times")),
                "{}",
                error.reason
            );
        }
    }

    #[test]
    fn authorization_must_be_a_bearer_token_of_bounded_size() {
        let value = |text: &str| http::HeaderValue::from_str(text).expect("value");
        assert_eq!(
            bearer_token(&value("Bearer abc.def.ghi")).expect("token"),
            "abc.def.ghi"
        );
        assert_eq!(bearer_token(&value("bearer  abc ")).expect("token"), "abc");
        let basic = bearer_token(&value("Basic dXNlcjpwYXNz")).expect_err("basic");
        assert!(basic.reason.contains("Bearer <token>"), "{}", basic.reason);
        let huge = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        let oversized = bearer_token(&value(&huge)).expect_err("oversized");
        assert!(oversized.reason.contains("at most 16384"), "{}", oversized.reason);
    }

    #[test]
    fn insecure_dev_refuses_a_non_loopback_listener_unless_allowed() {
        let mut config = AuthConfig {
            mode: Some(AuthMode::InsecureDev),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&config, "127.0.0.1:50051").is_ok());
        assert!(Authenticator::from_config(&config, "[::1]:50051").is_ok());
        let problems = Authenticator::from_config(&config, "0.0.0.0:50051").expect_err("refused");
        assert!(
            problems[0].contains("allow_insecure_dev_on_non_loopback"),
            "{problems:?}"
        );
        config.allow_insecure_dev_on_non_loopback = true;
        assert!(Authenticator::from_config(&config, "0.0.0.0:50051").is_ok());
    }
}
