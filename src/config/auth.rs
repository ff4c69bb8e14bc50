//! `[auth]` and its sections: how callers prove who they are, and every
//! problem of those settings that needs no file (the files are read by
//! `auth::Authenticator::from_config`, called by `server::parts`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Older spelling of `modes` with one entry; both set is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// How callers may prove who they are, any of `oidc`, `mtls`, `insecure-dev`. Empty (and no `mode`) refuses to start.
    pub modes: Vec<AuthMode>,
    /// Lets `insecure-dev` run on a listener that is not a loopback address (logged loudly).
    pub allow_insecure_dev_on_non_loopback: bool,
    /// `[auth.oidc]`: bearer JWTs from an OpenID Connect issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    /// `[auth.mtls]`: client certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsConfig>,
}

/// How callers are identified.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `authorization: Bearer <jwt>` checked against an OIDC issuer's keys.
    Oidc,
    /// A client certificate signed by a configured CA (needs `[server.tls]`).
    Mtls,
    /// Trust `x-ecr-gateway-principal` / `x-ecr-gateway-groups`. Never in production.
    InsecureDev,
}

impl AuthMode {
    /// The name used in the configuration and in `auth_method`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Oidc => "oidc",
            AuthMode::Mtls => "mtls",
            AuthMode::InsecureDev => "insecure-dev",
        }
    }
}

/// `[auth.oidc]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The exact `iss` tokens must carry.
    pub issuer: String,
    /// Tokens must name one of these in `aud`.
    pub audiences: Vec<String>,
    /// A JWKS document on disk, read at start (exactly one of `jwks_file` / `jwks_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Where the issuer publishes its JWKS; https unless the host is loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often a `jwks_url` is fetched again.
    pub jwks_refresh_seconds: u64,
    /// Least time between fetches caused by tokens with an unknown `kid`.
    pub jwks_min_refresh_interval_seconds: u64,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// The claim listing groups (array of strings, or one string); missing means no groups.
    pub groups_claim: String,
    /// A regex; principals matching it are of type `Service`, the rest `User`. Empty: all `User`.
    pub service_subject_pattern: String,
    /// Signature algorithms accepted (asymmetric only).
    pub algorithms: Vec<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 3600,
            jwks_min_refresh_interval_seconds: 30,
            leeway_seconds: 60,
            principal_claim: "sub".into(),
            groups_claim: "groups".into(),
            service_subject_pattern: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
        }
    }
}

/// `[auth.mtls]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsConfig {
    /// PEM bundle of the CAs that sign client certificates.
    pub ca_file: PathBuf,
    /// SPIFFE trust domains allowed in URI SANs (empty: any).
    pub trust_domains: Vec<String>,
}

impl AuthConfig {
    /// The configured modes, whichever spelling was used.
    pub fn effective_modes(&self) -> Vec<AuthMode> {
        match (&self.mode, self.modes.is_empty()) {
            (Some(mode), true) => vec![*mode],
            _ => self.modes.clone(),
        }
    }

    /// Whether `mode` is on.
    pub fn has(&self, mode: AuthMode) -> bool {
        self.effective_modes().contains(&mode)
    }

    /// Every problem of `[auth]` that needs no file: spellings, sections, values,
    /// and the loopback rule of insecure-dev (given the listen address).
    pub fn problems(&self, listen: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.mode.is_some() && !self.modes.is_empty() {
            problems.push(
                "auth.mode and auth.modes: both set; keep only `modes = [...]` (`mode` is the older spelling)".into(),
            );
        }
        let modes = self.effective_modes();
        if modes.is_empty() {
            problems.push(
                "auth.modes (or auth.mode): not set; the gateway refuses to start without a way to identify callers \
                 (e.g. modes = [\"oidc\", \"mtls\"]; for local use: mode = \"insecure-dev\")"
                    .into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for mode in &modes {
            if !seen.insert(*mode) {
                problems.push(format!("auth.modes: \"{}\" is listed twice", mode.as_str()));
            }
        }
        problems.extend(self.section_problems(&modes));
        if let Some(oidc) = &self.oidc {
            problems.extend(oidc.problems());
        }
        if modes.contains(&AuthMode::InsecureDev)
            && !self.allow_insecure_dev_on_non_loopback
            && let Ok(addr) = listen.parse::<SocketAddr>()
            && !addr.ip().is_loopback()
        {
            problems.push(format!(
                "auth.modes: \"insecure-dev\" lets any caller claim any identity and server.listen `{listen}` \
                 is not a loopback address; listen on 127.0.0.1 or [::1], use oidc or mtls, or set \
                 auth.allow_insecure_dev_on_non_loopback = true if the network is otherwise closed"
            ));
        }
        problems
    }

    fn section_problems(&self, modes: &[AuthMode]) -> Vec<String> {
        let mut problems = Vec::new();
        let has = |mode| modes.contains(&mode);
        match (has(AuthMode::Oidc), self.oidc.is_some()) {
            (true, false) => problems.push(
                "auth.oidc: required when auth.modes has \"oidc\"; add [auth.oidc] with issuer, audiences and jwks_file or jwks_url".into(),
            ),
            (false, true) => problems.push(
                "auth.oidc: set but auth.modes does not have \"oidc\"; add \"oidc\" to auth.modes or remove [auth.oidc]".into(),
            ),
            _ => {}
        }
        match (has(AuthMode::Mtls), &self.mtls) {
            (true, None) => problems.push(
                "auth.mtls: required when auth.modes has \"mtls\"; add [auth.mtls] with ca_file (the CAs that sign client certificates)".into(),
            ),
            (false, Some(_)) => problems.push(
                "auth.mtls: set but auth.modes does not have \"mtls\"; add \"mtls\" to auth.modes or remove [auth.mtls]".into(),
            ),
            (true, Some(mtls)) => {
                if mtls.ca_file.as_os_str().is_empty() {
                    problems.push("auth.mtls.ca_file: required; give the PEM bundle of the CAs that sign client certificates".into());
                }
                for domain in &mtls.trust_domains {
                    if domain.is_empty() || domain.contains('/') || domain.contains(':') {
                        problems.push(format!(
                            "auth.mtls.trust_domains: `{domain}` is not a trust domain; give the host part of spiffe://<trust-domain>/..., e.g. \"prod.example.com\""
                        ));
                    }
                }
            }
            (false, None) => {}
        }
        problems
    }
}

/// Algorithms `auth.oidc.algorithms` may list.
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl OidcConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.issuer.trim().is_empty() {
            problems.push("auth.oidc.issuer: required; give the exact `iss` of the tokens, e.g. \"https://login.example.com/\"".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.trim().is_empty()) {
            problems.push(
                "auth.oidc.audiences: give at least one non-empty audience, e.g. [\"ecr-gateway\"]".into(),
            );
        }
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => problems.push(
                "auth.oidc.jwks_file / auth.oidc.jwks_url: one is required; give the issuer's JWKS as a file or a URL".into(),
            ),
            (Some(_), Some(_)) => problems.push(
                "auth.oidc.jwks_file / auth.oidc.jwks_url: both set; keep exactly one".into(),
            ),
            (None, Some(url)) => {
                if let Err(problem) = check_jwks_url(url) {
                    problems.push(format!("auth.oidc.jwks_url: {problem}"));
                }
            }
            (Some(_), None) => {}
        }
        if self.jwks_refresh_seconds == 0 {
            problems.push("auth.oidc.jwks_refresh_seconds: must be at least 1".into());
        }
        if self.jwks_min_refresh_interval_seconds == 0 {
            problems.push("auth.oidc.jwks_min_refresh_interval_seconds: must be at least 1 (it bounds fetches caused by unknown key ids)".into());
        }
        if self.principal_claim.trim().is_empty() {
            problems.push("auth.oidc.principal_claim: must not be empty, e.g. \"sub\"".into());
        }
        if self.groups_claim.trim().is_empty() {
            problems.push("auth.oidc.groups_claim: must not be empty, e.g. \"groups\"".into());
        }
        if !self.service_subject_pattern.is_empty()
            && let Err(error) = regex::Regex::new(&self.service_subject_pattern)
        {
            problems.push(format!(
                "auth.oidc.service_subject_pattern: not a valid regex: {error}"
            ));
        }
        if self.algorithms.is_empty() {
            problems.push("auth.oidc.algorithms: give at least one, e.g. [\"RS256\", \"ES256\"]".into());
        }
        for algorithm in &self.algorithms {
            if algorithm.eq_ignore_ascii_case("none") {
                problems.push(
                    "auth.oidc.algorithms: \"none\" is never allowed (it means an unsigned token)".into(),
                );
            } else if algorithm.to_ascii_uppercase().starts_with("HS") {
                problems.push(format!(
                    "auth.oidc.algorithms: \"{algorithm}\" is not allowed (a shared secret is not an issuer's key); use one of {}",
                    OIDC_ALGORITHMS.join(", ")
                ));
            } else if !OIDC_ALGORITHMS.contains(&algorithm.as_str()) {
                problems.push(format!(
                    "auth.oidc.algorithms: \"{algorithm}\" is unknown; use some of {}",
                    OIDC_ALGORITHMS.join(", ")
                ));
            }
        }
        problems
    }
}

/// A JWKS URL must be https, or http on a loopback host (tests, a local sidecar).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL like https://login.example.com/.well-known/jwks.json"))?;
    let host = parsed.host().unwrap_or_default();
    match parsed.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err(format!(
            "`{url}` must use https (plain http is allowed only for a loopback host)"
        )),
        _ => Err(format!("`{url}` must be an https:// URL with a host")),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    fn auth_problems(auth: &str) -> String {
        let text = MINIMAL.replace("[auth]\n        mode = \"insecure-dev\"", auth);
        match Config::from_toml(&text) {
            Ok(_) => String::new(),
            Err(err) => err.problems.join("\n"),
        }
    }

    #[test]
    fn auth_mode_and_modes_together_are_refused() {
        let problems = auth_problems("[auth]\nmode = \"insecure-dev\"\nmodes = [\"insecure-dev\"]");
        assert!(
            problems.contains("auth.mode and auth.modes: both set"),
            "{problems}"
        );
        assert_eq!(auth_problems("[auth]\nmodes = [\"insecure-dev\"]"), "");
        let twice = auth_problems("[auth]\nmodes = [\"insecure-dev\", \"insecure-dev\"]");
        assert!(twice.contains("listed twice"), "{twice}");
        let unknown = auth_problems("[auth]\nmodes = [\"kerberos\"]");
        assert!(unknown.contains("auth.modes"), "{unknown}");
    }

    #[test]
    fn each_mode_needs_its_section_and_mtls_needs_tls() {
        let problems = auth_problems("[auth]\nmodes = [\"oidc\", \"mtls\"]");
        assert!(
            problems.contains("auth.oidc: required when auth.modes has \"oidc\""),
            "{problems}"
        );
        assert!(
            problems.contains("auth.mtls: required when auth.modes has \"mtls\""),
            "{problems}"
        );
        assert!(
            problems.contains("server.tls: required when auth.modes has \"mtls\""),
            "{problems}"
        );
        let stray = auth_problems("[auth]\nmodes = [\"insecure-dev\"]\n[auth.oidc]\nissuer = \"x\"");
        assert!(
            stray.contains("auth.oidc: set but auth.modes does not have"),
            "{stray}"
        );
    }

    #[test]
    fn oidc_settings_are_checked_key_by_key() {
        let problems = auth_problems(
            r#"[auth]
            modes = ["oidc"]
            [auth.oidc]
            jwks_file = "/etc/jwks.json"
            jwks_url = "https://login.example.com/jwks"
            algorithms = ["none", "HS256", "XX1", "ES256"]
            service_subject_pattern = "("
            jwks_min_refresh_interval_seconds = 0"#,
        );
        for expected in [
            "auth.oidc.issuer: required",
            "auth.oidc.audiences: give at least one",
            "auth.oidc.jwks_file / auth.oidc.jwks_url: both set",
            "auth.oidc.algorithms: \"none\" is never allowed",
            "auth.oidc.algorithms: \"HS256\" is not allowed",
            "auth.oidc.algorithms: \"XX1\" is unknown",
            "auth.oidc.service_subject_pattern: not a valid regex",
            "auth.oidc.jwks_min_refresh_interval_seconds: must be at least 1",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in:\n{problems}"
            );
        }
        let typo = auth_problems("[auth]\nmodes = [\"oidc\"]\n[auth.oidc]\nissuers = \"x\"");
        assert!(typo.contains("issuers"), "{typo}");
    }

    #[test]
    fn jwks_urls_must_be_https_unless_loopback() {
        assert_eq!(check_jwks_url("https://login.example.com/jwks"), Ok(()));
        assert_eq!(check_jwks_url("http://127.0.0.1:8080/jwks"), Ok(()));
        assert_eq!(check_jwks_url("http://localhost/jwks"), Ok(()));
        assert_eq!(check_jwks_url("http://[::1]:9/jwks"), Ok(()));
        assert!(
            check_jwks_url("http://login.example.com/jwks")
                .expect_err("plain")
                .contains("must use https")
        );
        assert!(check_jwks_url("ftp://x/jwks").is_err());
        assert!(check_jwks_url("not a url").is_err());
    }
}
