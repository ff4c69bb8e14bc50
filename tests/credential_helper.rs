//! `docker-credential-ecr-gateway` driven through Docker's credential-helper
//! protocol (its real stdin and stdout) against a running gateway with OIDC
//! authentication: a credential is fetched, cached (mode 0600) and reused,
//! fetched again near its expiry; an unreachable gateway, a refused scope and
//! an unknown host each end as the protocol says.

#[path = "common/authn.rs"]
mod authn_support;
mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use authn_support::{SigningKey, claims, config_with_auth, jwks, oidc_section, write};
use common::proxy::FaultProxy;
use common::{Gateway, Moto, TestDb, free_port};

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/ecr-gateway-credentials";

struct Helper {
    config: PathBuf,
    cache: PathBuf,
    token: String,
}

impl Helper {
    /// Runs the helper with `command`, `stdin` on its standard input.
    fn run(&self, command: &str, stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_docker-credential-ecr-gateway"))
            .arg(command)
            .env("ECR_GATEWAY_HELPER_CONFIG", &self.config)
            .env("XDG_CACHE_HOME", &self.cache)
            .env("HELPER_TEST_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the helper");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("helper output")
    }

    fn cache_files(&self) -> Vec<PathBuf> {
        let dir = self.cache.join("ecr-gateway/credentials");
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

fn helper_config(dir: &Path, gateway: &str, prefixes: &str) -> PathBuf {
    write(
        dir,
        "credential-helper.toml",
        &format!(
            "gateway = \"{gateway}\"\ntoken_env = \"HELPER_TEST_TOKEN\"\n\n[[registries]]\nhost = \"{HOST}\"\n\
             access = \"push\"\nrepository_prefixes = {prefixes}\n"
        ),
    )
}

async fn oidc_gateway(db: &TestDb, dir: &Path, proxy: &FaultProxy) -> (Gateway, SigningKey) {
    let key = SigningKey::es256("helper-1");
    let jwks_file = write(dir, "jwks.json", &jwks(&[&key]).to_string());
    let auth = format!(
        "[auth]\nmodes = [\"oidc\"]\n{}",
        oidc_section(&format!("jwks_file = \"{}\"", jwks_file.display()))
    );
    let extra = format!("credentials_role_arn = \"{ROLE}\"\n\n[access]\nenabled = true\n");
    (
        Gateway::start(config_with_auth(db, &proxy.endpoint, &auth, &extra)).await,
        key,
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_prints_a_docker_login_caches_it_privately_and_reuses_it_until_near_expiry() {
    use std::os::unix::fs::PermissionsExt as _;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let proxy = FaultProxy::start(Moto::shared()).await;
    let (gateway, key) = oidc_gateway(&db, dir.path(), &proxy).await;
    let helper = Helper {
        config: helper_config(dir.path(), &format!("http://{}", gateway.addr), "[\"payments/\"]"),
        cache: dir.path().join("cache"),
        token: key.mint(&claims("alice@example.com", &["payments"])),
    };
    let assume_roles = || {
        proxy
            .recorded()
            .iter()
            .filter(|r| r.action == "AssumeRole")
            .count()
    };

    let first = run_blocking(&helper, "get", &format!("https://{HOST}\n")).await;
    assert!(first.status.success(), "get failed: {}", stderr(&first));
    let login: serde_json::Value = serde_json::from_str(&stdout(&first)).expect("JSON on stdout");
    assert_eq!(login["ServerURL"], format!("https://{HOST}"));
    assert_eq!(login["Username"], "AWS");
    assert_eq!(login["Secret"], "123456789012-auth-token");
    assert_eq!(assume_roles(), 1);
    let files = helper.cache_files();
    assert_eq!(files.len(), 1, "one cache file");
    let mode = std::fs::metadata(&files[0]).expect("cache").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner may read the cached secret");

    // Reused: no second AssumeRole, even with the gateway's own cache out of the way.
    let again = run_blocking(&helper, "get", HOST).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&again)).expect("json")["Secret"],
        login["Secret"]
    );
    assert_eq!(assume_roles(), 1, "answered from the helper's cache");

    // Near its expiry, the cached credential is fetched anew.
    let mut cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("cache")).expect("json");
    cached["expire_time"] =
        serde_json::json!((chrono::Utc::now() + chrono::TimeDelta::minutes(2)).to_rfc3339());
    std::fs::write(&files[0], cached.to_string()).expect("age the cache");
    let renewed = run_blocking(&helper, "get", HOST).await;
    assert!(renewed.status.success(), "{}", stderr(&renewed));
    let fresh: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("cache")).expect("json");
    let expires =
        chrono::DateTime::parse_from_rfc3339(fresh["expire_time"].as_str().expect("time")).expect("time");
    assert!(
        expires > chrono::Utc::now() + chrono::TimeDelta::minutes(50),
        "a new credential was cached"
    );

    // list, store and erase.
    let listed = run_blocking(&helper, "list", "").await;
    assert!(listed.status.success());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&listed)).expect("json"),
        serde_json::json!({ HOST: "AWS" })
    );
    let store = run_blocking(
        &helper,
        "store",
        &format!("{{\"ServerURL\":\"{HOST}\",\"Username\":\"AWS\",\"Secret\":\"x\"}}"),
    )
    .await;
    assert!(store.status.success() && stdout(&store).is_empty());
    let erase = run_blocking(&helper, "erase", HOST).await;
    assert!(erase.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_scope_an_unknown_host_and_an_unreachable_gateway_end_as_the_protocol_says() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let proxy = FaultProxy::start(Moto::shared()).await;
    let (gateway, key) = oidc_gateway(&db, dir.path(), &proxy).await;

    // alice is on payments; the scope asks for search.
    let refused = Helper {
        config: helper_config(dir.path(), &format!("http://{}", gateway.addr), "[\"search/\"]"),
        cache: dir.path().join("cache-refused"),
        token: key.mint(&claims("alice@example.com", &["payments"])),
    };
    let answer = run_blocking(&refused, "get", HOST).await;
    assert_eq!(answer.status.code(), Some(1));
    assert!(stdout(&answer).is_empty(), "no credential printed");
    assert!(
        stderr(&answer).contains("PermissionDenied"),
        "{}",
        stderr(&answer)
    );
    assert!(
        stderr(&answer).contains("namespace main/search"),
        "{}",
        stderr(&answer)
    );
    assert!(refused.cache_files().is_empty(), "nothing cached");

    // A host it does not serve: docker's "not found", so docker goes on without credentials.
    let unknown = run_blocking(&refused, "get", "registry.example.com").await;
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        stdout(&unknown).trim(),
        "credentials not found in native keychain"
    );

    // An expired token is refused by the gateway, and said so.
    let expired = Helper {
        config: helper_config(dir.path(), &format!("http://{}", gateway.addr), "[\"payments/\"]"),
        cache: dir.path().join("cache-expired"),
        token: key.mint(&authn_support::with(
            claims("alice@example.com", &["payments"]),
            "exp",
            serde_json::json!(chrono::Utc::now().timestamp() - 600),
        )),
    };
    let answer = run_blocking(&expired, "get", HOST).await;
    assert_eq!(answer.status.code(), Some(1));
    assert!(stderr(&answer).contains("Unauthenticated"), "{}", stderr(&answer));

    // Nothing listens there.
    let unreachable = Helper {
        config: helper_config(
            dir.path(),
            &format!("http://127.0.0.1:{}", free_port()),
            "[\"payments/\"]",
        ),
        cache: dir.path().join("cache-unreachable"),
        token: key.mint(&claims("alice@example.com", &["payments"])),
    };
    let answer = run_blocking(&unreachable, "get", HOST).await;
    assert_eq!(answer.status.code(), Some(1));
    assert!(
        stderr(&answer).contains("cannot reach the gateway"),
        "{}",
        stderr(&answer)
    );

    // No configuration at all.
    let missing = Helper {
        config: dir.path().join("nowhere.toml"),
        cache: dir.path().join("cache-missing"),
        token: String::new(),
    };
    let answer = run_blocking(&missing, "get", HOST).await;
    assert_eq!(answer.status.code(), Some(1));
    assert!(stderr(&answer).contains("nowhere.toml"), "{}", stderr(&answer));
    let unknown_command = run_blocking(&missing, "frobnicate", "").await;
    assert_eq!(unknown_command.status.code(), Some(1));
    assert!(stderr(&unknown_command).contains("unknown command"));
}

fn helper_clone(helper: &Helper) -> Helper {
    Helper {
        config: helper.config.clone(),
        cache: helper.cache.clone(),
        token: helper.token.clone(),
    }
}

async fn run_blocking(helper: &Helper, command: &str, stdin: &str) -> Output {
    let (helper, command, stdin) = (helper_clone(helper), command.to_owned(), stdin.to_owned());
    tokio::task::spawn_blocking(move || helper.run(&command, &stdin))
        .await
        .expect("helper")
}
