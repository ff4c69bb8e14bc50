//! The `ecr-gateway` binary as an operator runs it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Moto, TestDb};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

const MINIMAL: &str = concat!(
    r#"
[database]
url = "postgres://app:s3cret-password@db.internal:5432/ecr"
[auth]
mode = "insecure-dev"
[[registries]]
alias = "main"
account_id = "123456789012"
region = "eu-west-1"
[authz]
policies = ""#,
    env!("CARGO_MANIFEST_DIR"),
    r#"/deploy/policies"
"#
);

#[test]
fn check_config_prints_the_effective_configuration_with_the_password_redacted() {
    let file = config_file(MINIMAL);

    let output = binary()
        .args(["check-config", "--config"])
        .arg(file.path())
        .env("ECR_GATEWAY__SERVER__LISTEN", "127.0.0.2:6000")
        .output()
        .expect("run");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("app:***@db.internal"), "{stdout}");
    assert!(!stdout.contains("s3cret-password"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.2:6000"),
        "the environment overrides the file: {stdout}"
    );
}

#[test]
fn check_config_names_an_unknown_key_and_exits_non_zero() {
    let file = config_file(&format!("{MINIMAL}\n[server]\nlisten_addr = \"x\"\n"));

    let output = binary()
        .args(["check-config", "--config"])
        .arg(file.path())
        .output()
        .expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen_addr"), "{stderr}");
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let text = MINIMAL
        .replace("mode = \"insecure-dev\"", "")
        .replace("123456789012", "12");
    let file = config_file(&text);

    let output = binary()
        .args(["check-config", "--config"])
        .arg(file.path())
        .output()
        .expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auth.mode"), "{stderr}");
    assert!(stderr.contains("registries[0].account_id"), "{stderr}");
}

#[test]
fn check_config_validates_the_authorization_policies() {
    let output = binary()
        .args(["check-config", "--config"])
        .arg(config_file(MINIMAL).path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("5 policies"), "{stderr}");

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("typo.cedar"),
        r#"@id("typo") permit (principal, action == EcrGateway::Action::"GetRepositry", resource);"#,
    )
    .expect("write");
    let text = MINIMAL.replace(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policies"),
        &dir.path().display().to_string(),
    );
    let output = binary()
        .args(["check-config", "--config"])
        .arg(config_file(&text).path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("authz.policies") && stderr.contains("GetRepositry"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let output = binary()
        .args(["check-config", "--config", "/nonexistent/gw.toml"])
        .output()
        .expect("run");

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/gw.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_stops_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let port = common::free_port();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_grace_seconds = 5
[database]
url = "{url}"
[auth]
mode = "insecure-dev"
[authz]
policies = "{root}/deploy/policies"
[sync]
interval_seconds = 0
[[registries]]
alias = "main"
account_id = "{account}"
region = "{region}"
endpoint_url = "{endpoint}"
"#,
        url = db.url,
        account = common::ACCOUNT,
        region = common::REGION,
        endpoint = Moto::shared(),
        root = env!("CARGO_MANIFEST_DIR"),
    );
    let file = config_file(&text);
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
}
