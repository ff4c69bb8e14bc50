//! gRPC-Web from the outside: the Node client in tests/web (connect-web, with
//! code generated from proto/ by buf at every run) and a raw HTTP/1.1
//! exchange with gRPC-Web framing for the CORS checks.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The Node client and its package.json.
pub(crate) fn web_client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// How long the Node client may take in all.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The fix for anything the Node client lacks.
const SETUP: &str = "run scripts/test (its ensure_web_client step runs `npm ci` in tests/web), \
                     or by hand: `npm ci` in tests/web and at the repository root (for buf)";

/// Generates the client's code from proto/, runs `node client.mjs <plan>`
/// and returns what it printed as JSON. Panics, with the fix, when Node, the
/// npm packages or buf are missing.
pub(crate) async fn run_web_client(plan: &serde_json::Value) -> serde_json::Value {
    let plan = plan.to_string();
    let run = tokio::task::spawn_blocking(move || {
        let node = node();
        let dir = web_client_dir();
        for needed in [
            "node_modules/@connectrpc/connect-web/package.json",
            "node_modules/@bufbuild/protobuf/package.json",
            "node_modules/.bin/protoc-gen-es",
        ] {
            assert!(
                dir.join(needed).exists(),
                "tests/web/{needed} is missing: the gRPC-Web test needs the npm packages of tests/web/package.json; {SETUP}"
            );
        }
        generate(&dir);
        let output = Command::new(&node)
            .arg("client.mjs")
            .arg(&plan)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} client.mjs: {e}", node.display()));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "node client.mjs failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(last).unwrap_or_else(|e| {
            panic!("node client.mjs printed no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}")
        })
    });
    tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("node client.mjs did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// `node` (ECR_GATEWAY_TEST_NODE, else from PATH), checked to be Node.js 20 or newer (fetch).
fn node() -> PathBuf {
    let node = std::env::var_os("ECR_GATEWAY_TEST_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let version = Command::new(&node).arg("--version").output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{}` ({e}): the gRPC-Web test needs Node.js 20 or newer \
             (Debian: apt-get install nodejs npm; or set ECR_GATEWAY_TEST_NODE), then {SETUP}",
            node.display()
        )
    });
    let text = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major = text
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    assert!(
        major.is_some_and(|major| major >= 20),
        "`{} --version` says {text:?}: the gRPC-Web test needs Node.js 20 or newer (for fetch)",
        node.display()
    );
    node
}

/// `buf generate` in tests/web (buf.gen.yaml): the client's code from proto/ as it is now.
fn generate(dir: &std::path::Path) {
    let buf = std::env::var_os("ECR_GATEWAY_TEST_BUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/buf"));
    assert!(
        buf.exists(),
        "buf not found at {}: the gRPC-Web test generates its client from proto/ with it; \
         run scripts/test (ensure_buf) or `npm ci` at the repository root, or set ECR_GATEWAY_TEST_BUF",
        buf.display()
    );
    let output = Command::new(&buf)
        .arg("generate")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} generate: {e}", buf.display()));
    assert!(
        output.status.success(),
        "buf generate in tests/web failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One gRPC-Web data frame holding `message`.
pub(crate) fn grpc_web_frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).expect("small message"));
    frame.put_slice(&encoded);
    frame.freeze()
}

/// A gRPC-Web response body split into its messages and its trailers.
#[derive(Debug, Default)]
pub(crate) struct WebFrames {
    /// The data frames' payloads.
    pub messages: Vec<Bytes>,
    /// The trailer frame's `name: value` lines, names lowercased.
    pub trailers: Vec<(String, String)>,
}

impl WebFrames {
    /// Splits `body` into frames (flag byte, 4-byte length, payload).
    pub(crate) fn parse(mut body: Bytes) -> WebFrames {
        let mut frames = WebFrames::default();
        while body.remaining() >= 5 {
            let flag = body.get_u8();
            let length = body.get_u32() as usize;
            assert!(body.remaining() >= length, "a truncated gRPC-Web frame");
            let payload = body.split_to(length);
            if flag & 0x80 != 0 {
                let text = String::from_utf8_lossy(&payload).into_owned();
                frames
                    .trailers
                    .extend(text.split("\r\n").filter(|l| !l.is_empty()).map(|line| {
                        let (name, value) = line.split_once(':').unwrap_or((line, ""));
                        (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                    }));
            } else {
                frames.messages.push(payload);
            }
        }
        assert!(!body.has_remaining(), "stray bytes after the last gRPC-Web frame");
        frames
    }

    /// A trailer's value.
    pub(crate) fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` over one HTTP/1.1 connection on `io`; returns the answer's head and body.
pub(crate) async fn http1_exchange<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("an HTTP/1.1 answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the answer's body").to_bytes();
    (parts, body)
}
