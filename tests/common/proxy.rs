//! A small fault-injecting HTTP proxy between the gateway's AWS SDK and moto:
//! it forwards every request unless told to fail an ECR action (answering
//! like ECR does, with a JSON error), to throttle a share of all ECR calls
//! (ECR's `ThrottlingException`), or to drop every connection.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Default)]
struct Faults {
    /// ECR actions (the X-Amz-Target suffix, e.g. `PutLifecyclePolicy`) answered with a server error.
    failing: HashSet<String>,
    /// Close every connection without answering.
    drop_all: bool,
    /// Requests seen, by ECR action.
    seen: std::collections::HashMap<String, u64>,
    /// ECR actions forwarded to moto (which acts on them) whose answers are
    /// held back from the gateway, after letting this many through.
    holding: std::collections::HashMap<String, u64>,
    /// Percent of ECR calls answered with `ThrottlingException` (0 forwards all).
    throttle_percent: u64,
    /// ECR calls seen since throttling was turned on.
    throttle_seq: u64,
    /// ECR calls answered with `ThrottlingException`.
    throttled: u64,
    /// Every request forwarded, in order.
    recorded: Vec<RecordedRequest>,
}

/// A request the proxy forwarded, as the SDK sent it.
#[derive(Debug, Clone)]
pub(crate) struct RecordedRequest {
    /// The ECR action (`X-Amz-Target`), or the `Action` of a form-encoded (STS) call.
    pub action: String,
    /// The `authorization` header (SigV4: `Credential=ACCESS_KEY/…`).
    pub authorization: String,
    /// The body, as text.
    pub body: String,
}

impl RecordedRequest {
    /// A form field of the body (`application/x-www-form-urlencoded`), decoded.
    pub(crate) fn form(&self, name: &str) -> Option<String> {
        self.body.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| percent_decode(value))
        })
    }

    /// The access key the request was signed with.
    pub(crate) fn access_key(&self) -> Option<&str> {
        let credential = self.authorization.split("Credential=").nth(1)?;
        credential.split('/').next()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Faults {
    /// Whether the next ECR call is throttled: spread evenly, every call
    /// whose number crosses a whole multiple of 100 / percent (at 30 %: the
    /// 4th, 7th, 10th...), so a test sees the same pattern on every run and
    /// a throttled call's retry gets through.
    fn throttle_next(&mut self) -> bool {
        if self.throttle_percent == 0 {
            return false;
        }
        self.throttle_seq += 1;
        let n = self.throttle_seq;
        let throttle = n * self.throttle_percent / 100 > (n - 1) * self.throttle_percent / 100;
        if throttle {
            self.throttled += 1;
        }
        throttle
    }
}

/// A running proxy; configure faults while it runs.
#[derive(Clone)]
pub(crate) struct FaultProxy {
    /// The URL to give the gateway as its endpoint.
    pub endpoint: String,
    faults: Arc<Mutex<Faults>>,
    released: Arc<tokio::sync::Notify>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (e.g. moto's URL).
    pub(crate) async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let released = Arc::new(tokio::sync::Notify::new());
        let upstream = upstream.to_owned();
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let shared = faults.clone();
        let released_by_proxy = released.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                if shared.lock().expect("faults").drop_all {
                    drop(stream);
                    continue;
                }
                let (client, upstream, faults) = (client.clone(), upstream.clone(), shared.clone());
                let released = released_by_proxy.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(
                            client.clone(),
                            upstream.clone(),
                            faults.clone(),
                            released.clone(),
                            request,
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            faults,
            released,
        }
    }

    /// Answers the first `answered` requests of the ECR action ever seen;
    /// forwards later ones to moto (which acts on them) but holds their
    /// answers back: the gateway sees a call that hangs after ECR did the
    /// work, as when it dies mid-call. Calling it again with a larger number
    /// releases the requests up to that number; [`FaultProxy::heal`] releases all.
    pub(crate) fn hold_answers(&self, action: &str, answered: u64) {
        self.faults
            .lock()
            .expect("faults")
            .holding
            .insert(action.to_owned(), answered);
        self.released.notify_waiters();
    }

    /// Answers the ECR action with a server error until [`FaultProxy::heal`].
    pub(crate) fn fail_action(&self, action: &str) {
        self.faults
            .lock()
            .expect("faults")
            .failing
            .insert(action.to_owned());
    }

    /// Answers `percent` of all later ECR calls (evenly spread, see
    /// `Faults::throttle_next`) the way ECR throttles: HTTP 400 with
    /// `ThrottlingException` in `x-amzn-ErrorType` and the JSON `__type`.
    /// [`FaultProxy::heal`] stops it.
    pub(crate) fn throttle(&self, percent: u64) {
        assert!(percent <= 100, "a share in percent");
        let mut faults = self.faults.lock().expect("faults");
        faults.throttle_percent = percent;
        faults.throttle_seq = 0;
    }

    /// How many calls the proxy has answered with `ThrottlingException`.
    pub(crate) fn throttled(&self) -> u64 {
        self.faults.lock().expect("faults").throttled
    }

    /// Closes every connection without answering: new ones at once, live
    /// (pooled) ones at their next request.
    pub(crate) fn drop_all(&self) {
        self.faults.lock().expect("faults").drop_all = true;
    }

    /// How many requests of `action` the proxy has seen (failed ones included).
    pub(crate) fn count(&self, action: &str) -> u64 {
        self.faults
            .lock()
            .expect("faults")
            .seen
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// Every request forwarded so far, in order.
    pub(crate) fn recorded(&self) -> Vec<RecordedRequest> {
        self.faults.lock().expect("faults").recorded.clone()
    }

    /// How many requests of any action the proxy has seen.
    pub(crate) fn total(&self) -> u64 {
        self.faults.lock().expect("faults").seen.values().sum()
    }

    /// Forwards everything again.
    pub(crate) fn heal(&self) {
        let mut faults = self.faults.lock().expect("faults");
        faults.failing.clear();
        faults.drop_all = false;
        faults.holding.clear();
        faults.throttle_percent = 0;
        self.released.notify_waiters();
    }
}

async fn forward(
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    faults: Arc<Mutex<Faults>>,
    released: Arc<tokio::sync::Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let action = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
        .to_owned();
    let (failing, held, seq, throttled) = {
        let mut faults = faults.lock().expect("faults");
        if faults.drop_all {
            // hyper closes the connection without an answer.
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "proxy dropping every connection",
            ));
        }
        let seen = faults.seen.entry(action.clone()).or_default();
        *seen += 1;
        let seq = *seen;
        let held = faults
            .holding
            .get(&action)
            .is_some_and(|&answered| seq > answered);
        let throttled = !action.is_empty() && faults.throttle_next();
        (faults.failing.contains(&action), held, seq, throttled)
    };
    if throttled {
        return Ok(throttling_answer());
    }
    if failing {
        let body = format!(r#"{{"__type":"ServerException","message":"injected failure of {action}"}}"#);
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-requestid", "injected-failure")
            .body(Full::new(Bytes::from(body)))
            .expect("response"));
    }
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    {
        let text = String::from_utf8_lossy(&body).into_owned();
        let action = if action.is_empty() {
            text.split('&')
                .find_map(|pair| pair.strip_prefix("Action="))
                .unwrap_or_default()
                .to_owned()
        } else {
            action.clone()
        };
        let authorization = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        faults.lock().expect("faults").recorded.push(RecordedRequest {
            action,
            authorization,
            body: text,
        });
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    parts.uri = format!("{upstream}{path}").parse().expect("upstream uri");
    let answer = match client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(error) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::from(error.to_string())))
            .expect("response"),
    };
    if held {
        loop {
            // Registered before checking, so a release in between is not missed.
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let still_held = faults
                .lock()
                .expect("faults")
                .holding
                .get(&action)
                .is_some_and(|&answered| seq > answered);
            if !still_held {
                break;
            }
            notified.await;
        }
    }
    Ok(answer)
}

/// ECR's answer to a throttled call (aws-json-1.1: the SDK reads the code
/// from `x-amzn-ErrorType`, else from the body's `__type`).
fn throttling_answer() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", "injected-throttling")
        .header("x-amzn-errortype", "ThrottlingException")
        .body(Full::new(Bytes::from_static(
            br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        )))
        .expect("response")
}

/// A TCP proxy in front of a server (e.g. NATS) that can be cut: every
/// live connection is closed and new ones are refused until restored.
#[derive(Clone)]
pub(crate) struct TcpProxy {
    /// host:port to give the client.
    pub addr: String,
    cut: Arc<Mutex<(bool, Vec<tokio::task::AbortHandle>)>>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (host:port).
    pub(crate) async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut: Arc<Mutex<(bool, Vec<tokio::task::AbortHandle>)>> = Arc::default();
        let (shared, upstream) = (cut.clone(), upstream.to_owned());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut state = shared.lock().expect("proxy state");
                if state.0 {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state.1.push(task.abort_handle());
            }
        });
        TcpProxy { addr, cut }
    }

    /// Closes every live connection and refuses new ones.
    pub(crate) fn cut(&self) {
        let mut state = self.cut.lock().expect("proxy state");
        state.0 = true;
        for task in state.1.drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again.
    pub(crate) fn restore(&self) {
        self.cut.lock().expect("proxy state").0 = false;
    }
}
