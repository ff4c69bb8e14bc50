//! OIDC bearer tokens: `authorization: Bearer <jwt>` checked against the
//! issuer's keys ([`super::jwks`]): algorithm allowed, `kid` known, signature,
//! `iss` exact, `aud` one of the audiences, `exp`/`nbf` with leeway, then the
//! principal and groups claims. Reasons say what is wrong without echoing the
//! token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use regex::Regex;
use serde_json::{Map, Value};

use super::jwks::{Jwks, KeyLookupError};
use crate::config::OidcConfig;
use crate::domain::Identity;

/// Longest principal accepted, in bytes.
const MAX_PRINCIPAL_BYTES: usize = 256;
/// Most groups accepted.
const MAX_GROUPS: usize = 64;
/// Longest `authorization` value read, in bytes.
pub const MAX_AUTHORIZATION_BYTES: usize = 16 * 1024;

/// Checks bearer tokens of one issuer.
#[derive(Debug)]
pub struct OidcVerifier {
    jwks: Arc<Jwks>,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    principal_claim: String,
    groups_claim: String,
    service_subjects: Option<Regex>,
}

impl OidcVerifier {
    /// Builds the verifier; a `jwks_file` is read now (problems name the key),
    /// a `jwks_url` is fetched by [`OidcVerifier::jwks`]'s refresh.
    pub fn from_config(config: &OidcConfig) -> Result<OidcVerifier, Vec<String>> {
        let jwks = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => {
                let document = std::fs::read(path).map_err(|e| {
                    vec![format!(
                        "auth.oidc.jwks_file: cannot read {}: {e}",
                        path.display()
                    )]
                })?;
                Jwks::from_document(&path.display().to_string(), &document)
                    .map_err(|e| vec![format!("auth.oidc.jwks_file: {}: {e}", path.display())])?
            }
            (None, Some(url)) => Jwks::from_url(
                url,
                Duration::from_secs(config.jwks_refresh_seconds),
                Duration::from_secs(config.jwks_min_refresh_interval_seconds),
            ),
            (None, None) => {
                return Err(vec![
                    "auth.oidc.jwks_file / auth.oidc.jwks_url: one is required".into(),
                ]);
            }
        };
        let service_subjects = match config.service_subject_pattern.as_str() {
            "" => None,
            pattern => Some(Regex::new(pattern).map_err(|e| {
                vec![format!(
                    "auth.oidc.service_subject_pattern: not a valid regex: {e}"
                )]
            })?),
        };
        Ok(OidcVerifier {
            jwks: Arc::new(jwks),
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            algorithms: config.algorithms.iter().filter_map(|a| a.parse().ok()).collect(),
            leeway: Duration::from_secs(config.leeway_seconds),
            principal_claim: config.principal_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            service_subjects,
        })
    }

    /// The issuer's key set (for the start-up fetch and the refresh task).
    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// The identity a token proves, or why it proves none.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = TokenHeader::read(token)?;
        let Some(algorithm) = self
            .algorithms
            .iter()
            .copied()
            .find(|a| header.alg == alg_name(*a))
        else {
            return Err(format!("algorithm {} not allowed", printable(&header.alg)));
        };
        let Some(kid) = header.kid else {
            return Err("bearer token has no key id (kid) in its header".into());
        };
        let key = self.jwks.key(&kid).await.map_err(|error| match error {
            KeyLookupError::UnknownKid => "signed with unknown key id".to_owned(),
            KeyLookupError::Unavailable(reason) => reason,
        })?;
        if key.algorithm.is_some_and(|pinned| pinned != algorithm) {
            return Err(format!(
                "algorithm {} does not match the key's algorithm",
                alg_name(algorithm)
            ));
        }
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &self.validation(algorithm))
                .map_err(|e| self.describe(e.kind(), algorithm))?
                .claims;
        self.identity(&claims)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&self.audiences);
        validation.set_issuer(&[&self.issuer]);
        validation.required_spec_claims = HashSet::from(["exp", "iss", "aud"].map(String::from));
        validation
    }

    fn describe(&self, error: &ErrorKind, algorithm: Algorithm) -> String {
        match error {
            ErrorKind::ExpiredSignature => "bearer token expired".into(),
            ErrorKind::ImmatureSignature => "bearer token not yet valid (nbf is in the future)".into(),
            ErrorKind::InvalidAudience => format!("audience is not one of {}", self.audiences.join(", ")),
            ErrorKind::InvalidIssuer => format!("issuer is not {}", self.issuer),
            ErrorKind::InvalidSignature => "bad signature".into(),
            ErrorKind::MissingRequiredClaim(claim) => format!("bearer token has no `{claim}` claim"),
            ErrorKind::InvalidClaimFormat(claim) => {
                format!("bearer token claim `{claim}` has the wrong type")
            }
            ErrorKind::InvalidAlgorithm => format!(
                "algorithm {} does not fit the key the token names",
                alg_name(algorithm)
            ),
            ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEddsaKey => {
                "bad signature (the token does not fit the key it names)".into()
            }
            _ => "malformed token".into(),
        }
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, String> {
        let claim = &self.principal_claim;
        let principal = match claims.get(claim) {
            None | Some(Value::Null) => return Err(format!("bearer token has no `{claim}` claim")),
            Some(Value::String(p)) if !p.is_empty() && p.len() <= MAX_PRINCIPAL_BYTES => p.clone(),
            Some(_) => {
                return Err(format!(
                    "bearer token claim `{claim}` must be a string of 1-{MAX_PRINCIPAL_BYTES} bytes"
                ));
            }
        };
        let groups = self.groups(claims.get(&self.groups_claim))?;
        let service = self
            .service_subjects
            .as_ref()
            .is_some_and(|re| re.is_match(&principal));
        Ok(Identity {
            principal,
            principal_type: if service { "Service" } else { "User" }.into(),
            groups,
            auth_method: "oidc".into(),
        })
    }

    fn groups(&self, value: Option<&Value>) -> Result<Vec<String>, String> {
        let claim = &self.groups_claim;
        let wrong_type =
            || format!("bearer token claim `{claim}` must be an array of strings (or one string)");
        let groups: Vec<String> = match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(group)) => vec![group.clone()],
            Some(Value::Array(items)) => {
                if items.len() > MAX_GROUPS {
                    return Err(format!(
                        "bearer token claim `{claim}` lists more than {MAX_GROUPS} groups"
                    ));
                }
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned).ok_or_else(wrong_type))
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(wrong_type()),
        };
        if groups.iter().any(|g| g.len() > MAX_PRINCIPAL_BYTES) {
            return Err(format!(
                "bearer token claim `{claim}` has a group longer than {MAX_PRINCIPAL_BYTES} bytes"
            ));
        }
        Ok(groups.into_iter().filter(|g| !g.is_empty()).collect())
    }
}

/// The parts of a JOSE header read before any key is chosen.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

impl TokenHeader {
    fn read(token: &str) -> Result<TokenHeader, String> {
        let malformed =
            || "malformed token (expected a JWT: three base64url parts joined by dots)".to_owned();
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(malformed());
        };
        let Some(Value::String(alg)) = header.get("alg") else {
            return Err("malformed token (its header has no alg)".into());
        };
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => Some(kid.clone()),
            _ => None,
        };
        Ok(TokenHeader {
            alg: alg.clone(),
            kid,
        })
    }
}

fn alg_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "(another algorithm)",
    }
}

/// An algorithm name as the caller sent it, if it looks like one; never arbitrary header text.
fn printable(alg: &str) -> &str {
    if (1..=16).contains(&alg.len()) && alg.bytes().all(|b| b.is_ascii_alphanumeric()) {
        alg
    } else {
        "(unrecognised)"
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
