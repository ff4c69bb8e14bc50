//! What the configuration is turned into before anything runs: the
//! authenticator (its OIDC keys file and mTLS CAs read), the serving TLS
//! identity, the compiled org policy, the audit signing key and the
//! page-token key. They are built here, once, for every command: a problem
//! found while building them is reported with the configuration's own
//! problems ([`Config::problems`]), all at once, each naming its key — by
//! `check-config` as by `serve` — and `serve` runs with what was built.

use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::api::page_token::PageKey;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::policy::OrgPolicy;
use crate::tls::ServerIdentity;

/// Everything built from a [`Config`] that a file or a compilation could refuse.
pub struct Parts {
    /// Identifies callers (`[auth]`).
    pub authenticator: Authenticator,
    /// The certificate chain and key of `[server.tls]`, when set.
    pub tls_identity: Option<ServerIdentity>,
    /// `[policy]`, compiled.
    pub policy: OrgPolicy,
    /// `audit.signing_key_file`, when set.
    pub signing_key: Option<SigningKey>,
    /// `server.page_token_key_file`, when set.
    pub page_key: Option<PageKey>,
}

impl Parts {
    /// Checks `config` and builds its parts: the configuration's own problems
    /// first, then what building each part found, every one at once.
    pub fn build(config: &Config) -> Result<Parts, ConfigError> {
        let mut problems = config.problems();
        let page_key = config
            .server
            .page_token_key_file
            .as_deref()
            .map(|path| {
                PageKey::load(path).map_err(|problem| vec![format!("server.page_token_key_file: {problem}")])
            })
            .transpose();
        let page_key = keep(page_key, &mut problems);
        let signing_key = config
            .audit
            .signing_key_file
            .as_deref()
            .map(|path| {
                crate::audit::digest::load_signing_key(path)
                    .map_err(|problem| vec![format!("audit.signing_key_file: {problem}")])
            })
            .transpose();
        let signing_key = keep(signing_key, &mut problems);
        let tls_identity = config
            .server
            .tls
            .as_ref()
            .map(crate::tls::load_server_identity)
            .transpose();
        let tls_identity = keep(tls_identity, &mut problems);
        // An `[auth]` with problems of its own (among `config.problems()`) is
        // not built: building would report them a second time.
        let authenticator = if config.auth.problems(&config.server.listen).is_empty() {
            keep(
                Authenticator::from_config(&config.auth, &config.server.listen),
                &mut problems,
            )
        } else {
            None
        };
        let policy = keep(OrgPolicy::compile(&config.policy), &mut problems);
        match (page_key, signing_key, tls_identity, authenticator, policy) {
            (Some(page_key), Some(signing_key), Some(tls_identity), Some(authenticator), Some(policy))
                if problems.is_empty() =>
            {
                Ok(Parts {
                    authenticator,
                    tls_identity,
                    policy,
                    signing_key,
                    page_key,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }
}

/// [`Config::read`], then [`Parts::build`]: what every command of the
/// `ecr-gateway` binary starts with.
pub fn load(path: Option<&Path>) -> Result<(Config, Parts), ConfigError> {
    let config = Config::read(path)?;
    let parts = Parts::build(&config)?;
    Ok((config, parts))
}

/// [`load`] for a TOML document on top of the defaults (no environment):
/// whether the gateway would start with it. For tests and tools.
pub fn from_toml(text: &str) -> Result<(Config, Parts), ConfigError> {
    let config = Config::read_toml(text)?;
    let parts = Parts::build(&config)?;
    Ok((config, parts))
}

fn keep<T>(built: Result<T, Vec<String>>, problems: &mut Vec<String>) -> Option<T> {
    built.map_err(|found| problems.extend(found)).ok()
}
