//! Telemetry of the real binary: with `telemetry.enabled` the spans of a
//! call (the RPC, child of the caller's `traceparent`; its ECR operation; its
//! database transaction) and the metrics arrive at an OTLP receiver in the
//! test, flushed on SIGTERM, and the JSON log lines carry the trace id; off
//! (the default), the receiver hears nothing. `/metrics` shows the new series.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::Process;
use common::{Moto, TestDb, as_user, config_text, free_port, tagged_repository, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

/// The caller's trace and span (W3C trace context).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const CREATE: &str = "ecrgateway.v1.RepositoryService/CreateRepository";
/// The default filter plus the access log (a `call finished` line per call).
const LOG_FILTER: &str =
    "info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn,ecr_gateway::admin::layer=debug";

/// What the receiver got.
#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    /// Names of the metrics exported, with the number of exports naming each.
    metrics: BTreeMap<String, usize>,
}

/// A small OTLP/gRPC receiver: the collector's trace and metrics services.
#[derive(Debug, Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.received.lock().expect("lock").spans.extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut received = self.received.lock().expect("lock");
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    *received.metrics.entry(metric.name).or_default() += 1;
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free port until the test ends.
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.received.lock().expect("lock").spans.clone()
    }

    fn metrics(&self) -> BTreeMap<String, usize> {
        self.received.lock().expect("lock").metrics.clone()
    }
}

/// A span's attribute, as text (integers and booleans too).
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        Value::BoolValue(flag) => flag.to_string(),
        other => format!("{other:?}"),
    })
}

fn telemetry_config(db: &TestDb, collector: SocketAddr, admin: u16, enabled: bool) -> String {
    config_text(
        db,
        Moto::shared(),
        &format!(
            "[telemetry]\nenabled = {enabled}\nendpoint = \"http://{collector}\"\nlog_format = \"json\"\n\
             metric_export_interval_seconds = 1\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ngauge_refresh_seconds = 1\n"
        ),
    )
}

/// A request from alice that carries the test's trace context.
fn traced<T>(message: T) -> Request<T> {
    let mut request = as_user(message, "alice@example.com", "payments");
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .expect("traceparent"),
    );
    request
        .metadata_mut()
        .insert("tracestate", "test=1".parse().expect("tracestate"));
    request
}

async fn scrape(admin: u16) -> String {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = client
        .get(format!("http://127.0.0.1:{admin}/metrics").parse().expect("uri"))
        .await
        .expect("the admin endpoint answers");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Scrapes until `wanted` says yes (up to 10 s); the last scrape.
async fn scrape_until(admin: u16, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(admin).await;
        if wanted(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The JSON lines the gateway logged.
fn json_lines(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .expect("the gateway's log")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traced_call_reaches_the_collector_with_its_ecr_and_database_spans_and_logs_its_trace_id() {
    let db = TestDb::create().await;
    let (receiver, collector) = Receiver::start().await;
    let admin = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let gateway = Process::start_with(
        &telemetry_config(&db, collector, admin, true),
        &[("RUST_LOG", LOG_FILTER)],
        Stdio::from(log.reopen().expect("log file")),
    )
    .await;
    let name = unique("payments", "traced");

    RepositoryServiceClient::new(gateway.channel.clone())
        .create_repository(traced(tagged_repository(&name)))
        .await
        .expect("CreateRepository succeeds");
    ImageServiceClient::new(gateway.channel.clone())
        .refresh_inventory(as_user(
            pb::RefreshInventoryRequest {
                repository: name.clone(),
                ..Default::default()
            },
            "alice@example.com",
            "payments",
        ))
        .await
        .expect("RefreshInventory succeeds");
    let metrics = scrape_until(admin, |text| {
        text.contains("ecr_gateway_sync_lag_seconds{registry=\"main\"}")
    })
    .await;
    // Gauges are exported while the gateway runs (every second here).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver.metrics().contains_key("ecr_gateway.sync.lag") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = gateway.terminate(Duration::from_secs(20));

    // Prometheus: the ECR counter and the database gauges.
    assert!(status.success(), "{status}");
    for series in [
        "ecr_gateway_ecr_calls_total{registry=\"main\",action=\"CreateRepository\",outcome=\"ok\",throttled=\"false\"} 1\n",
        "ecr_gateway_sync_lag_seconds{registry=\"main\"} ",
        "ecr_gateway_cache_age_seconds{registry=\"main\"} ",
        "\necr_gateway_audit_events_pending ",
        "# TYPE ecr_gateway_cleanup_images_planned gauge\n",
        "# TYPE ecr_gateway_cleanup_images_deleted gauge\n",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // Traces, flushed on SIGTERM.
    let spans: Vec<Span> = receiver
        .spans()
        .into_iter()
        .filter(|span| hex(&span.trace_id) == TRACE_ID)
        .collect();
    let rpc = spans
        .iter()
        .find(|span| span.name == CREATE)
        .unwrap_or_else(|| panic!("no {CREATE} span in the caller's trace: {spans:#?}"));
    assert_eq!(
        hex(&rpc.parent_span_id),
        PARENT_SPAN_ID,
        "the caller's span is the parent"
    );
    assert_eq!(rpc.trace_state, "test=1");
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "ecrgateway.v1.RepositoryService"),
        ("rpc.method", "CreateRepository"),
        ("rpc.grpc.status_code", "0"),
        ("enduser.id", "alice@example.com"),
        ("registry", "main"),
        ("repository", name.as_str()),
    ] {
        assert_eq!(attribute(rpc, key).as_deref(), Some(value), "{key} of {rpc:#?}");
    }
    let ecr = spans
        .iter()
        .find(|span| attribute(span, "action").as_deref() == Some("CreateRepository"))
        .unwrap_or_else(|| panic!("no ECR CreateRepository span: {spans:#?}"));
    assert_eq!(
        ecr.parent_span_id, rpc.span_id,
        "the ECR call is a child of the RPC"
    );
    for (key, value) in [
        ("registry", "main"),
        ("region", common::REGION),
        ("outcome", "ok"),
        ("throttled", "false"),
        ("attempts", "1"),
    ] {
        assert_eq!(attribute(ecr, key).as_deref(), Some(value), "{key} of {ecr:#?}");
    }
    let database = spans
        .iter()
        .find(|span| attribute(span, "db.operation.name").as_deref() == Some("record_pending"))
        .unwrap_or_else(|| panic!("no database span: {spans:#?}"));
    assert_eq!(attribute(database, "db.system").as_deref(), Some("postgresql"));
    assert_eq!(database.parent_span_id, rpc.span_id);

    // Metrics by OTLP.
    let exported = receiver.metrics();
    for metric in [
        "ecr_gateway.rpc.duration",
        "ecr_gateway.ecr.calls",
        "ecr_gateway.rpc.in_flight",
        "ecr_gateway.sync.lag",
        "ecr_gateway.cache.age",
        "ecr_gateway.audit.events_pending",
    ] {
        assert!(exported.contains_key(metric), "{metric} in {exported:?}");
    }

    // The JSON access log line of the call names its trace and span.
    let lines = json_lines(log.path());
    let line = lines
        .iter()
        .find(|line| {
            line["fields"]["message"] == "call finished" && line["fields"]["method"] == format!("/{CREATE}")
        })
        .unwrap_or_else(|| panic!("no access log line of the call in {lines:#?}"));
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span_id"], hex(&rpc.span_id), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_telemetry_off_the_collector_hears_nothing_and_logs_carry_no_trace() {
    let db = TestDb::create().await;
    let (receiver, collector) = Receiver::start().await;
    let admin = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let gateway = Process::start_with(
        &telemetry_config(&db, collector, admin, false),
        &[("RUST_LOG", LOG_FILTER)],
        Stdio::from(log.reopen().expect("log file")),
    )
    .await;

    RepositoryServiceClient::new(gateway.channel.clone())
        .create_repository(traced(tagged_repository(&unique("payments", "untraced"))))
        .await
        .expect("CreateRepository succeeds");
    let metrics = scrape(admin).await;
    // Longer than the export interval the config would have used.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = gateway.terminate(Duration::from_secs(20));

    assert!(status.success(), "{status}");
    assert!(
        metrics.contains("action=\"CreateRepository\",outcome=\"ok\""),
        "Prometheus counts ECR calls without telemetry:\n{metrics}"
    );
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    assert!(receiver.metrics().is_empty(), "{:?}", receiver.metrics());
    let lines = json_lines(log.path());
    let line = lines
        .iter()
        .find(|line| line["fields"]["message"] == "call finished")
        .unwrap_or_else(|| panic!("no access log line in {lines:#?}"));
    assert_eq!(line.get("trace_id"), None, "{line}");
}
