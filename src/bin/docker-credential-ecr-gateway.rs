//! `docker-credential-ecr-gateway`: Docker's credential-helper protocol over
//! the gateway's `GetRegistryCredentials`, so that `docker push` and `docker
//! pull` work with no AWS credentials on the machine (README, "Docker
//! credentials"). Like `amazon-ecr-credential-helper`:
//!
//! - `get`: reads a registry host on stdin, prints `{"ServerURL","Username","Secret"}`;
//! - `list`: prints `{"<host>": "AWS", …}` for the registries it serves;
//! - `store`, `erase`: read stdin and do nothing (the gateway issues, docker does not store);
//! - `version`.
//!
//! Configured by a TOML file (`ECR_GATEWAY_HELPER_CONFIG`, default
//! `~/.config/ecr-gateway/credential-helper.toml`); credentials are cached per
//! registry in `~/.cache/ecr-gateway/credentials/` (mode 0600) until five
//! minutes before they expire. Errors go to stderr, one line saying what to
//! do, with exit status 1; a host it does not serve answers docker's
//! "credentials not found in native keychain".

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ecr_gateway::pb;
use ecr_gateway::pb::registry_access_service_client::RegistryAccessServiceClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Docker's message for "no credentials here": it then goes on without any.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A cached credential is used until this long before it expires.
const EXPIRY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// How long one call to the gateway may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The helper's configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct HelperConfig {
    /// The gateway: `https://host:port` (TLS) or `http://host:port`.
    gateway: String,
    /// PEM CA bundle for the gateway's certificate (default: the system roots).
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// The bearer token: a file holding it …
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// … or an environment variable …
    #[serde(default)]
    token_env: Option<String>,
    /// … or a command that prints it (e.g. a cloud CLI), run each time a credential is fetched.
    #[serde(default)]
    token_command: Option<Vec<String>>,
    /// Local development only (`auth.mode = "insecure-dev"`): the principal and groups headers.
    #[serde(default)]
    dev_principal: Option<String>,
    #[serde(default)]
    dev_groups: Option<String>,
    /// The registries it serves.
    registries: Vec<RegistryEntry>,
}

/// One registry the helper logs docker in to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    /// The host docker names, `ACCOUNT.dkr.ecr.REGION.amazonaws.com`.
    host: String,
    /// The gateway's alias for it (empty: the default registry).
    #[serde(default)]
    alias: String,
    /// `pull` or `push`.
    #[serde(default = "pull")]
    access: String,
    /// Repositories to ask for.
    #[serde(default)]
    repositories: Vec<String>,
    /// Repository prefixes to ask for, e.g. `payments/`.
    #[serde(default)]
    repository_prefixes: Vec<String>,
    /// How long a credential should live (default: the gateway's).
    #[serde(default)]
    duration_seconds: Option<i64>,
}

fn pull() -> String {
    "pull".into()
}

/// What is cached of a credential (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Cached {
    username: String,
    secret: String,
    expire_time: DateTime<Utc>,
}

/// A failure, said in one line on stderr.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.to_string())
    }
}

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    let mut input = String::new();
    if matches!(command.as_str(), "get" | "store" | "erase")
        && std::io::stdin().read_to_string(&mut input).is_err()
    {
        eprintln!("docker-credential-ecr-gateway: could not read standard input");
        return ExitCode::FAILURE;
    }
    let result = match command.as_str() {
        "get" => get(input.trim()),
        "list" => list(),
        "store" | "erase" => Ok(String::new()),
        "version" => Ok(format!(
            "docker-credential-ecr-gateway {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        other => Err(Failure(format!(
            "unknown command `{other}`: use get, list, store, erase or version (Docker's credential-helper protocol)"
        ))),
    };
    match result {
        Ok(output) => {
            print!("{output}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(Failure(message)) if message == NOT_FOUND => {
            // Docker reads this one on stdout and goes on without credentials.
            println!("{NOT_FOUND}");
            ExitCode::FAILURE
        }
        Err(Failure(message)) => {
            eprintln!("docker-credential-ecr-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `get`: a cached credential, or a new one from the gateway.
fn get(server_url: &str) -> Result<String, Failure> {
    let config = load_config()?;
    let host = host_of(server_url);
    let Some(entry) = config.registries.iter().find(|r| host_of(&r.host) == host) else {
        return Err(Failure(NOT_FOUND.into()));
    };
    let cache_file = cache_path(entry)?;
    let cached = match read_cache(&cache_file, Utc::now()) {
        Some(cached) => cached,
        None => {
            let fetched = fetch(&config, entry)?;
            write_cache(&cache_file, &fetched)?;
            fetched
        }
    };
    Ok(serde_json::json!({
        "ServerURL": server_url,
        "Username": cached.username,
        "Secret": cached.secret,
    })
    .to_string()
        + "\n")
}

/// `list`: every configured host, with docker's username.
fn list() -> Result<String, Failure> {
    let config = load_config()?;
    let hosts: BTreeMap<String, &str> = config
        .registries
        .iter()
        .map(|r| (host_of(&r.host), "AWS"))
        .collect();
    Ok(serde_json::to_string(&hosts)? + "\n")
}

/// The host of a server URL as docker passes it: no scheme, path or trailing slash.
fn host_of(server_url: &str) -> String {
    let without_scheme = server_url
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn config_path() -> Result<PathBuf, Failure> {
    if let Some(path) = std::env::var_os("ECR_GATEWAY_HELPER_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .ok_or_else(|| Failure("neither ECR_GATEWAY_HELPER_CONFIG nor HOME is set".into()))?;
    Ok(base.join("ecr-gateway/credential-helper.toml"))
}

fn load_config() -> Result<HelperConfig, Failure> {
    let path = config_path()?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure(format!(
            "cannot read {} ({e}); see the README, \"Docker credentials\"",
            path.display()
        ))
    })?;
    parse_config(&text).map_err(|e| Failure(format!("{}: {e}", path.display())))
}

fn parse_config(text: &str) -> Result<HelperConfig, String> {
    let config: HelperConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let sources = [
        config.token_file.is_some(),
        config.token_env.is_some(),
        config.token_command.is_some(),
        config.dev_principal.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err("give exactly one of token_file, token_env, token_command or dev_principal".into());
    }
    if !(config.gateway.starts_with("https://") || config.gateway.starts_with("http://")) {
        return Err(format!(
            "gateway `{}` must start with https:// or http://",
            config.gateway
        ));
    }
    for (index, entry) in config.registries.iter().enumerate() {
        if !matches!(entry.access.as_str(), "pull" | "push") {
            return Err(format!(
                "registries[{index}].access: `{}` is not pull or push",
                entry.access
            ));
        }
        if entry.repositories.is_empty() && entry.repository_prefixes.is_empty() {
            return Err(format!(
                "registries[{index}]: name repositories or repository_prefixes (e.g. [\"payments/\"])"
            ));
        }
    }
    Ok(config)
}

/// `~/.cache/ecr-gateway/credentials/<hash of what is asked>.json`.
fn cache_path(entry: &RegistryEntry) -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| Failure("neither XDG_CACHE_HOME nor HOME is set".into()))?;
    let asked = format!("{entry:?}");
    let name = hex::encode(&Sha256::digest(asked.as_bytes())[..12]);
    Ok(base.join("ecr-gateway/credentials").join(format!("{name}.json")))
}

/// The cached credential, unless missing, unreadable or within the margin of its expiry.
fn read_cache(path: &Path, now: DateTime<Utc>) -> Option<Cached> {
    let text = std::fs::read_to_string(path).ok()?;
    let cached: Cached = serde_json::from_str(&text).ok()?;
    (cached.expire_time - EXPIRY_MARGIN > now).then_some(cached)
}

/// Writes the cache file readable by its owner only (created 0600, then renamed into place).
fn write_cache(path: &Path, cached: &Cached) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path
        .parent()
        .ok_or_else(|| Failure("cache path has no directory".into()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(serde_json::to_string(cached)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// The caller's bearer token, from the one configured source.
fn bearer_token(config: &HelperConfig) -> Result<Option<String>, Failure> {
    let token = if let Some(path) = &config.token_file {
        let path = expand_home(path);
        std::fs::read_to_string(&path).map_err(|e| Failure(format!("token_file {}: {e}", path.display())))?
    } else if let Some(name) = &config.token_env {
        std::env::var(name).map_err(|_| Failure(format!("token_env: ${name} is not set")))?
    } else if let Some(command) = &config.token_command {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Failure("token_command is empty".into()))?;
        let output = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Failure(format!("token_command `{program}`: {e}")))?;
        if !output.status.success() {
            return Err(Failure(format!(
                "token_command `{program}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        String::from_utf8(output.stdout)
            .map_err(|_| Failure(format!("token_command `{program}` printed no text")))?
    } else {
        return Ok(None);
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Failure("the bearer token is empty".into()));
    }
    Ok(Some(token))
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// Asks the gateway for a credential.
fn fetch(config: &HelperConfig, entry: &RegistryEntry) -> Result<Cached, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let token = bearer_token(config)?;
        let channel = connect(config).await?;
        let mut request = tonic::Request::new(credentials_request(entry));
        request.set_timeout(CALL_TIMEOUT);
        let metadata = request.metadata_mut();
        if let Some(token) = token {
            metadata.insert("authorization", format!("Bearer {token}").parse()?);
        }
        if let Some(principal) = &config.dev_principal {
            metadata.insert("x-ecr-gateway-principal", principal.parse()?);
            if let Some(groups) = &config.dev_groups {
                metadata.insert("x-ecr-gateway-groups", groups.parse()?);
            }
        }
        let answer = RegistryAccessServiceClient::new(channel)
            .get_registry_credentials(request)
            .await
            .map_err(|status| {
                Failure(format!(
                    "the gateway refused ({:?}): {}",
                    status.code(),
                    status.message()
                ))
            })?
            .into_inner();
        let expire_time = answer
            .expire_time
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
            .ok_or_else(|| Failure("the gateway's answer has no expire_time".into()))?;
        Ok(Cached {
            username: answer.username,
            secret: answer.password,
            expire_time,
        })
    })
}

fn credentials_request(entry: &RegistryEntry) -> pb::GetRegistryCredentialsRequest {
    let access = match entry.access.as_str() {
        "push" => pb::RegistryAccess::Push,
        _ => pb::RegistryAccess::Pull,
    };
    pb::GetRegistryCredentialsRequest {
        registry: entry.alias.clone(),
        repositories: entry.repositories.clone(),
        repository_prefixes: entry.repository_prefixes.clone(),
        access: access as i32,
        duration: entry
            .duration_seconds
            .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    }
}

async fn connect(config: &HelperConfig) -> Result<tonic::transport::Channel, Failure> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.gateway.clone())
        .map_err(|e| Failure(format!("gateway `{}`: {e}", config.gateway)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT);
    if config.gateway.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(expand_home(path))
                    .map_err(|e| Failure(format!("ca_file {}: {e}", path.display())))?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await.map_err(|e| {
        Failure(format!(
            "cannot reach the gateway at {} ({}); check `gateway` in the helper's configuration",
            config.gateway,
            error_chain(&e)
        ))
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
gateway = "https://ecr-gateway.example.com"
token_env = "ECR_GATEWAY_TOKEN"

[[registries]]
host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
access = "push"
repository_prefixes = ["payments/"]
"#;

    #[test]
    fn hosts_match_however_docker_spells_them() {
        for spelled in [
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",
            "123456789012.DKR.ecr.us-east-1.amazonaws.com/v2/",
            " 123456789012.dkr.ecr.us-east-1.amazonaws.com\n",
        ] {
            assert_eq!(
                host_of(spelled),
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "{spelled:?}"
            );
        }
    }

    #[test]
    fn a_config_takes_one_token_source_and_valid_registries() {
        let config = parse_config(CONFIG).expect("valid");
        assert_eq!(config.registries[0].access, "push");
        let two_sources = CONFIG.replace("token_env", "token_file = \"/t\"\ntoken_env");
        assert!(
            parse_config(&two_sources)
                .expect_err("two")
                .contains("exactly one")
        );
        let bad_access = CONFIG.replace("\"push\"", "\"write\"");
        assert!(
            parse_config(&bad_access)
                .expect_err("bad")
                .contains("registries[0].access")
        );
        let no_scope = CONFIG.replace("repository_prefixes = [\"payments/\"]", "");
        assert!(
            parse_config(&no_scope)
                .expect_err("scope")
                .contains("repository_prefixes")
        );
        let unknown_key = format!("{CONFIG}colour = \"blue\"\n");
        assert!(parse_config(&unknown_key).is_err());
    }

    #[test]
    fn the_request_asks_for_the_configured_scope_and_access() {
        let config = parse_config(CONFIG).expect("valid");
        let request = credentials_request(&config.registries[0]);
        assert_eq!(request.access, pb::RegistryAccess::Push as i32);
        assert_eq!(request.repository_prefixes, ["payments/"]);
        assert_eq!(request.duration, None);
    }

    #[test]
    fn the_cache_is_private_and_used_until_shortly_before_expiry() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a/b/cred.json");
        let now = Utc::now();
        let cached = Cached {
            username: "AWS".into(),
            secret: "s".into(),
            expire_time: now + chrono::TimeDelta::minutes(30),
        };
        write_cache(&path, &cached).expect("written");
        assert_eq!(
            std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_cache(&path, now), Some(cached.clone()));
        assert_eq!(
            read_cache(&path, now + chrono::TimeDelta::minutes(26)),
            None,
            "within the margin"
        );
        std::fs::write(&path, "not json").expect("corrupt");
        assert_eq!(read_cache(&path, now), None, "a corrupt cache is fetched anew");
    }
}
