//! The README's walkthrough, run as it stands against `scripts/dev`: every
//! command of its "A walk through with grpcurl" block runs in order, and the
//! `# -> CODE "text"…` line after each one is checked against what it answered.
//! A walkthrough that stops telling the truth (a demo scan gone stale, a
//! renamed field, a call that now fails) fails here.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// What the README says one command answers.
#[derive(Debug, PartialEq)]
struct Expectation {
    /// The gRPC status as grpcurl names it (`OK`, `InvalidArgument`, …); `OK` for other commands.
    code: String,
    /// Texts the answer contains.
    contains: Vec<String>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The walkthrough's shell block.
fn walkthrough_block(readme: &str) -> String {
    let section = readme
        .split("## A walk through with grpcurl")
        .nth(1)
        .expect("README.md has a section '## A walk through with grpcurl'");
    let start = section.find("```sh\n").expect("the section has a ```sh block") + "```sh\n".len();
    let end = section[start..].find("\n```").expect("the block is closed") + start;
    section[start..end].to_owned()
}

/// The `# -> ` lines of `block`, in order.
fn expectations(block: &str) -> Vec<Expectation> {
    block
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("# -> "))
        .map(parse_expectation)
        .collect()
}

/// `CODE "text" "text"` (a `\"` inside a text stands for `"`).
fn parse_expectation(line: &str) -> Expectation {
    let (code, rest) = line.split_once(' ').unwrap_or((line, ""));
    let mut contains = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            assert!(c == ' ', "stray {c:?} in README expectation `{line}`");
            continue;
        }
        let mut text = String::new();
        loop {
            match chars.next() {
                Some('\\') => text.push(chars.next().expect("an escaped character")),
                Some('"') => break,
                Some(other) => text.push(other),
                None => panic!("unclosed text in README expectation `{line}`"),
            }
        }
        contains.push(text);
    }
    Expectation {
        code: code.to_owned(),
        contains,
    }
}

/// The gRPC status grpcurl printed, `OK` when it printed none and exited 0.
fn outcome(output: &str, exit_code: i32) -> String {
    match output.lines().find_map(|line| line.trim().strip_prefix("Code: ")) {
        Some(code) => code.trim().to_owned(),
        None if exit_code == 0 => "OK".to_owned(),
        None => format!("exit status {exit_code}"),
    }
}

/// `scripts/dev`, started with its own ports, database and state directory.
struct DevStack {
    child: Child,
    listen: String,
    moto_endpoint: String,
    database: String,
    dev_dir: tempfile::TempDir,
}

impl DevStack {
    fn start() -> DevStack {
        use std::os::unix::process::CommandExt as _;
        let listen = format!("127.0.0.1:{}", free_port());
        let moto_port = free_port();
        let database = format!("ecr_gateway_walkthrough_{}", std::process::id());
        let dev_dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("bash")
            .arg(repo_root().join("scripts/dev"))
            .current_dir(repo_root())
            .env("LISTEN", &listen)
            .env("MOTO_PORT", moto_port.to_string())
            .env("DEV_DATABASE", &database)
            .env("ECR_GATEWAY_DEV_DIR", dev_dir.path())
            .env("ECR_GATEWAY_BIN", env!("CARGO_BIN_EXE_ecr-gateway"))
            .env("PGPORT", postgres_port())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start scripts/dev");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_log.lock().expect("log").push_str(&format!("{line}\n"));
            }
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let out_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ecr-gateway is running on") {
                    let _ = ready_tx.send(());
                }
                out_log.lock().expect("log").push_str(&format!("{line}\n"));
            }
        });
        let mut stack = DevStack {
            child,
            listen,
            moto_endpoint: format!("http://127.0.0.1:{moto_port}"),
            database,
            dev_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return stack;
            }
            let exited = stack.child.try_wait().expect("wait").is_some();
            if exited || Instant::now() > deadline {
                panic!(
                    "scripts/dev did not get ready ({}):\n{}",
                    if exited { "it exited" } else { "240 s passed" },
                    log.lock().expect("log")
                );
            }
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        // Ctrl-C as a developer would: the script's exit trap stops the gateway and moto.
        let pid = self.child.id() as i32;
        // SAFETY: signals to the process group of our own child.
        unsafe { libc::kill(-pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = Command::new("psql")
            .arg(admin_url())
            .args(["-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database))
            .output();
    }
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The port of the Postgres the tests use (DATABASE_URL), for scripts/dev.
fn postgres_port() -> String {
    let url = admin_url();
    let authority = url.split('@').nth(1).unwrap_or("127.0.0.1:5432");
    let host_port = authority.split('/').next().unwrap_or("127.0.0.1:5432");
    host_port
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .unwrap_or_else(|| "5432".into())
}

/// The block, pointed at this stack, with every command run through `__walk`,
/// which keeps each command's output and exit status in `out`.
fn runnable(block: &str, stack: &DevStack, out: &Path) -> String {
    let grpcurl = std::env::var("ECR_GATEWAY_TEST_GRPCURL").unwrap_or_else(|_| ".venv/bin/grpcurl".into());
    let aws = std::env::var("ECR_GATEWAY_TEST_AWS").unwrap_or_else(|_| ".venv/bin/aws".into());
    let dev_dir = stack.dev_dir.path().display().to_string();
    let pg = format!("127.0.0.1:{}", postgres_port());
    let mut script = format!(
        "set -u\n\
         __n=0\n\
         __walk() {{ __n=$((__n + 1)); \"$@\" >{out}/$__n.out 2>&1; echo $? >{out}/$__n.rc; }}\n",
        out = out.display()
    );
    for line in block.lines() {
        let line = if line.trim_start().starts_with("G=") {
            format!("G=\"__walk {grpcurl}\"")
        } else if let Some(rest) = line.strip_prefix(".venv/bin/aws ") {
            format!("__walk {aws} {rest}")
        } else if let Some(rest) = line.strip_prefix("target/debug/ecr-gateway ") {
            format!("__walk {} {rest}", env!("CARGO_BIN_EXE_ecr-gateway"))
        } else if let Some(rest) = line.strip_prefix("psql ") {
            format!("__walk psql {rest}")
        } else {
            line.to_owned()
        };
        let line = line
            .replace("localhost:50051", &stack.listen)
            .replace("http://127.0.0.1:5000", &stack.moto_endpoint)
            .replace(".dev/", &format!("{dev_dir}/"))
            .replace("/tmp/audit.jsonl", &format!("{}/audit.jsonl", out.display()))
            .replace(
                "127.0.0.1:5432/ecr_gateway_dev",
                &format!("{pg}/{}", stack.database),
            );
        script.push_str(&line);
        script.push('\n');
    }
    script
}

#[test]
fn readme_expectations_parse_with_their_texts() {
    let parsed = parse_expectation(r#"OK "\"replayed\": true" "payments/api""#);
    assert_eq!(
        parsed,
        Expectation {
            code: "OK".into(),
            contains: vec!["\"replayed\": true".into(), "payments/api".into()],
        }
    );
    assert_eq!(
        parse_expectation("FailedPrecondition").contains,
        Vec::<String>::new()
    );
    assert_eq!(
        outcome("ERROR:\n  Code: InvalidArgument\n  Message: x", 67),
        "InvalidArgument"
    );
    assert_eq!(outcome("{}", 0), "OK");
    assert_eq!(outcome("boom", 2), "exit status 2");
}

#[test]
fn the_readme_walkthrough_answers_what_the_readme_says_against_scripts_dev() {
    common::init();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let block = walkthrough_block(&readme);
    let expected = expectations(&block);
    assert!(
        expected.len() >= 20,
        "the walkthrough lost its `# -> ` lines: {expected:?}"
    );

    let stack = DevStack::start();
    let out = tempfile::tempdir().expect("temp dir");
    let script = runnable(&block, &stack, out.path());
    // As on a new user's machine: no AWS settings but what the walkthrough itself sets.
    let mut walk = Command::new("bash");
    walk.arg("-c").arg(&script).current_dir(repo_root());
    for setting in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
    ] {
        walk.env_remove(setting);
    }
    let status = walk.status().expect("run the walkthrough");
    assert!(status.success(), "the walkthrough script itself failed: {status}");

    let mut failures = Vec::new();
    let mut ran = 0;
    for (index, expectation) in expected.iter().enumerate() {
        let n = index + 1;
        let Ok(output) = std::fs::read_to_string(out.path().join(format!("{n}.out"))) else {
            failures.push(format!("command {n}: did not run (expected {expectation:?})"));
            continue;
        };
        ran = n;
        let rc: i32 = std::fs::read_to_string(out.path().join(format!("{n}.rc")))
            .expect("exit status")
            .trim()
            .parse()
            .expect("a number");
        let code = outcome(&output, rc);
        if code != expectation.code {
            failures.push(format!(
                "command {n}: answered {code}, the README says {}:\n{output}",
                expectation.code
            ));
            continue;
        }
        for text in &expectation.contains {
            if !output.contains(text.as_str()) {
                failures.push(format!("command {n}: the answer lacks {text:?}:\n{output}"));
            }
        }
    }
    let extra = out.path().join(format!("{}.out", expected.len() + 1));
    if extra.exists() {
        failures.push(format!(
            "the walkthrough ran more commands than it has `# -> ` lines (after {ran})"
        ));
    }
    assert!(
        failures.is_empty(),
        "README walkthrough:\n{}",
        failures.join("\n\n")
    );
}
