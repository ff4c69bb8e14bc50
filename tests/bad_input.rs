//! The bad-input catalogue over gRPC: every RPC of every service in
//! `proto/ecrgateway/v1` gets malformed and hostile requests — empty and
//! missing fields, one-past-the-maximum lengths, NUL and control characters,
//! SQL/JSON/LIKE injection, bad enums, page sizes and tokens (garbage, and
//! real tokens of other queries), out-of-range timestamps, duplicates in
//! batches, broken identity headers, undecodable protobuf and oversized
//! bodies. Each must end in a clean status (INVALID_ARGUMENT naming the
//! field, or NOT_FOUND / FAILED_PRECONDITION / OUT_OF_RANGE /
//! RESOURCE_EXHAUSTED / UNAUTHENTICATED where that is the right answer),
//! with no panic, a healthy server, every handled call audited, and nothing
//! written: neither in the gateway's tables (audit tables aside) nor in ECR.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf as _, BufMut as _};
use common::images::push;
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, tagged_repository, team_tags, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::audit_service_client::AuditServiceClient;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Panics anywhere in this process (the gateway runs in it).
static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();
/// The catalogues run one at a time: each compares the whole of (shared) ECR before and after.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PRINCIPAL_HEADER: &str = "x-ecr-gateway-principal";
const GROUPS_HEADER: &str = "x-ecr-gateway-groups";
const SQL: &str = "x'; DROP TABLE images; --";
const JSON_INJECTION: &str = r#"{"$ne":null}"#;
const UNKNOWN_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const UNKNOWN_ID: &str = "0190d7a4-0000-7000-8000-000000000000";
const CVE: &str = "CVE-2024-3094";
/// A lifecycle policy ECR accepts.
const POLICY: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged images after 30 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
/// Tables a mutation may write (the audit tables are written by every call, by design).
const TABLES: &[&str] = &[
    "repositories",
    "operations",
    "images",
    "image_tags",
    "sync_state",
    "sync_runs",
    "image_scans",
    "scan_findings",
    "vulnerability_exceptions",
    "pins",
    "cleanup_runs",
    "cleanup_run_items",
];

fn count_panics() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

// ---------------------------------------------------------------------------
// The catalogue and its runner
// ---------------------------------------------------------------------------

/// What a case must end in.
#[derive(Debug, Clone)]
enum Expect {
    /// INVALID_ARGUMENT with a BadRequest violation of this field (or of a part of it).
    Invalid(String),
    /// Exactly this code (NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE).
    Code(Code),
    /// One of these codes (size limits).
    OneOf(&'static [Code]),
    /// UNAUTHENTICATED, saying which identity header is wrong.
    Unauthenticated(&'static str),
    /// OK with nothing listed: a literal that would match everything if it
    /// reached SQL as a pattern (`_`, `%`) or free text that names nothing.
    Empty,
}

fn invalid(field: &str) -> Expect {
    Expect::Invalid(field.to_owned())
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<usize>, tonic::Status>> + Send>>;

struct Case {
    rpc: String,
    what: String,
    expect: Expect,
    answer: Answer,
}

struct Catalogue {
    principal: &'static str,
    /// The caller's groups: the payments team, or a platform admin for the
    /// admin-only calls (docs/security.md) the audit catalogue makes.
    groups: &'static str,
    cases: Vec<Case>,
    /// Cases a handler sees as this principal's call (each leaves one audit event).
    audited: usize,
}

impl Catalogue {
    fn new(principal: &'static str) -> Self {
        Self {
            principal,
            groups: "payments",
            cases: Vec::new(),
            audited: 0,
        }
    }

    fn add<R, F>(&mut self, rpc: &str, what: impl Into<String>, expect: Expect, audited: bool, call: F)
    where
        R: Send + 'static,
        F: Future<Output = Result<tonic::Response<R>, tonic::Status>> + Send + 'static,
    {
        self.audited += usize::from(audited);
        self.cases.push(Case {
            rpc: camel(rpc),
            what: what.into(),
            expect,
            answer: Box::pin(async move { call.await.map(|_| None) }),
        });
    }

    fn add_listing<F>(&mut self, rpc: &str, what: impl Into<String>, call: F)
    where
        F: Future<Output = Result<usize, tonic::Status>> + Send + 'static,
    {
        self.audited += 1;
        self.cases.push(Case {
            rpc: camel(rpc),
            what: what.into(),
            expect: Expect::Empty,
            answer: Box::pin(async move { call.await.map(Some) }),
        });
    }
}

/// A case: `case!(catalogue, client.rpc, what => expected, message)` sends
/// `message` as the catalogue's principal. (The `=>` keeps rustfmt from
/// spreading the catalogue over six lines a case.)
macro_rules! case {
    ($cat:expr, $client:ident . $rpc:ident, $what:expr => $expect:expr, $message:expr) => {{
        let mut client = $client.clone();
        let request = as_user($message, $cat.principal, $cat.groups);
        $cat.add(stringify!($rpc), $what, $expect, true, async move {
            client.$rpc(request).await
        });
    }};
}

/// A case that must answer OK with an empty `$items` list:
/// `empty_case!(catalogue, client.rpc, what => items, message)`.
macro_rules! empty_case {
    ($cat:expr, $client:ident . $rpc:ident, $what:expr => $items:ident, $message:expr) => {{
        let mut client = $client.clone();
        let request = as_user($message, $cat.principal, $cat.groups);
        $cat.add_listing(stringify!($rpc), $what, async move {
            client.$rpc(request).await.map(|r| r.into_inner().$items.len())
        });
    }};
}

/// The broken-identity cases of one RPC, around a request that is otherwise fine.
macro_rules! identity_cases {
    ($cat:expr, $client:expr, $rpc:ident, $message:expr) => {{
        for (what, header, request) in bad_identities($message) {
            let mut client = $client.clone();
            $cat.add(
                stringify!($rpc),
                what,
                Expect::Unauthenticated(header),
                false,
                async move { client.$rpc(request).await },
            );
        }
    }};
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Runs every case in order; returns one line per case that did not end as expected.
async fn run(cases: Vec<Case>) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut failures = Vec::new();
    let mut per_rpc = BTreeMap::new();
    for case in cases {
        *per_rpc.entry(case.rpc.clone()).or_insert(0) += 1;
        let label = format!("{} / {}", case.rpc, case.what);
        let answer = match tokio::time::timeout(Duration::from_secs(20), case.answer).await {
            Ok(answer) => answer,
            Err(_) => {
                failures.push(format!("{label}: no answer within 20 s"));
                continue;
            }
        };
        if let Some(problem) = judge(&case.expect, answer) {
            failures.push(format!("{label}: {problem}"));
        }
    }
    (failures, per_rpc)
}

/// None when `answer` is what `expect` asks for, else what is wrong.
fn judge(expect: &Expect, answer: Result<Option<usize>, tonic::Status>) -> Option<String> {
    let status = match (expect, answer) {
        (Expect::Empty, Ok(Some(0))) => return None,
        (Expect::Empty, Ok(n)) => return Some(format!("expected nothing listed, got {n:?} items")),
        (_, Ok(_)) => return Some(format!("accepted; expected {expect:?}")),
        (_, Err(status)) => status,
    };
    let shown = || {
        format!(
            "{:?} {:?} violations={:?}",
            status.code(),
            status.message(),
            common::violations(&status)
        )
    };
    if matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Unavailable | Code::Cancelled
    ) {
        return Some(format!("not a clean status: {}", shown()));
    }
    match expect {
        Expect::Invalid(field) => {
            if status.code() != Code::InvalidArgument {
                return Some(format!(
                    "expected INVALID_ARGUMENT naming `{field}`, got {}",
                    shown()
                ));
            }
            let named = common::violations(&status).iter().any(|(f, _)| {
                f == field || f.starts_with(&format!("{field}.")) || f.starts_with(&format!("{field}["))
            });
            (!named).then(|| format!("INVALID_ARGUMENT does not name `{field}`: {}", shown()))
        }
        Expect::Code(code) => (status.code() != *code).then(|| format!("expected {code:?}, got {}", shown())),
        Expect::OneOf(codes) => {
            (!codes.contains(&status.code())).then(|| format!("expected one of {codes:?}, got {}", shown()))
        }
        Expect::Unauthenticated(header) => (status.code() != Code::Unauthenticated
            || !status.message().contains(header))
        .then(|| format!("expected UNAUTHENTICATED naming `{header}`, got {}", shown())),
        Expect::Empty => Some(format!("expected an empty answer, got {}", shown())),
    }
}

// ---------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------

/// Repository names that are not names: (what, name).
fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("257 characters", format!("payments/{}", "a".repeat(248))),
        ("with NUL", "payments/ap\0i".into()),
        ("with a control character", "payments/api\u{1b}[2J".into()),
        ("SQL injection", format!("payments/{SQL}")),
        ("JSON injection", JSON_INJECTION.into()),
        ("LIKE %", "payments/%".into()),
        ("LIKE _", "_".into()),
        ("backslash", "payments\\api".into()),
        ("non-ASCII", "payments/äpi🦀".into()),
    ]
}

/// Repository-name prefixes no name can start with: (what, prefix).
fn bad_prefixes() -> Vec<(&'static str, String)> {
    vec![
        ("257 characters", "a".repeat(257)),
        ("with NUL", "payments/\0".into()),
        ("with a control character", "payments/\u{7}".into()),
        ("SQL injection", SQL.into()),
        ("JSON injection", JSON_INJECTION.into()),
        ("LIKE %", "%".into()),
        ("backslash", "\\".into()),
        ("non-ASCII", "päyments/".into()),
    ]
}

/// Tag globs outside the grammar.
fn bad_globs() -> Vec<(&'static str, String)> {
    vec![
        ("129 characters", "a".repeat(129)),
        ("with NUL", "v1\0*".into()),
        ("SQL injection", SQL.into()),
        ("JSON injection", JSON_INJECTION.into()),
        ("LIKE %", "%".into()),
        ("backslash", "v1\\*".into()),
        ("non-ASCII", "v1-ä*".into()),
    ]
}

fn bad_tags() -> Vec<(&'static str, String)> {
    vec![
        ("129 characters", "a".repeat(129)),
        ("with NUL", "v1\0".into()),
        ("with a control character", "v1\n".into()),
        ("SQL injection", SQL.into()),
        ("starting with a dot", ".hidden".into()),
        ("non-ASCII", "v1-ä".into()),
    ]
}

fn bad_digests() -> Vec<(&'static str, String)> {
    vec![
        ("not hex", "sha256:xyz".into()),
        ("too short", format!("sha256:{}", "a".repeat(63))),
        ("65 hex digits", format!("sha256:{}", "a".repeat(65))),
        ("with NUL", format!("sha256:{}\0", "a".repeat(64))),
        ("SQL injection", SQL.into()),
        ("unknown algorithm", format!("md5:{}", "a".repeat(32))),
    ]
}

/// Registry aliases that are not configured.
fn bad_registries() -> Vec<(&'static str, String)> {
    vec![
        ("SQL injection", SQL.into()),
        ("with NUL", "main\0".into()),
        ("1000 characters", "m".repeat(1000)),
    ]
}

/// Ids that are no UUID (of runs, exceptions).
fn bad_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{UNKNOWN_ID}\0")),
        ("a number", "42".into()),
        ("JSON injection", JSON_INJECTION.into()),
    ]
}

fn bad_request_ids() -> Vec<(&'static str, String)> {
    vec![
        ("with a space", "has space".into()),
        ("129 characters", "x".repeat(129)),
        ("with NUL", "id\0nul".into()),
        ("SQL injection", SQL.into()),
    ]
}

fn bad_page_sizes() -> Vec<(&'static str, i32)> {
    vec![
        ("-1", -1),
        ("i32::MIN", i32::MIN),
        ("1001", 1001),
        ("i32::MAX", i32::MAX),
    ]
}

fn bad_enums() -> Vec<(&'static str, i32)> {
    vec![("99", 99), ("-1", -1)]
}

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn in_days(days: i64) -> Option<prost_types::Timestamp> {
    ts(chrono::Utc::now().timestamp() + days * 86_400, 0)
}

/// Timestamps outside google.protobuf.Timestamp's range (years 1-9999, nanos 0-999,999,999).
fn bad_times() -> Vec<(&'static str, Option<prost_types::Timestamp>)> {
    let now = chrono::Utc::now().timestamp();
    vec![
        ("year 10000", ts(253_402_300_800, 0)),
        ("seconds i64::MAX", ts(i64::MAX, 0)),
        ("year -98000", ts(-3_155_695_200_000, 0)),
        ("seconds i64::MIN", ts(i64::MIN, 0)),
        ("negative nanos", ts(now, -1)),
        // 1,799,999,999 s ends a minute: where chrono would read 1e9 nanos as a leap second.
        ("nanos 1e9 at a minute's end", ts(1_799_999_999, 1_000_000_000)),
        ("nanos i32::MAX", ts(now, i32::MAX)),
    ]
}

/// Page tokens no list issued for that query: (what, token).
fn bad_tokens(fixture: &Fixture) -> Vec<(&'static str, String)> {
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    vec![
        ("garbage", "%%%not-a-token%%%".into()),
        ("base64 of garbage", b64("\u{1}\u{2}garbage")),
        (
            "base64 of forged JSON",
            b64(r#"{"q":"000000000000000000000000","p":["a","b","c"]}"#),
        ),
        ("5000 bytes", "A".repeat(5000)),
        ("with NUL", "abc\0def".into()),
        ("a ListRepositories token", fixture.repositories_token.clone()),
        ("a LookupAuditEvents token", fixture.audit_token.clone()),
    ]
}

/// Requests whose identity headers are broken: (what, header at fault, request).
fn bad_identities<T: Clone>(message: T) -> Vec<(String, &'static str, tonic::Request<T>)> {
    let request = |principal: Option<AsciiMetadataValue>, groups: Option<AsciiMetadataValue>| {
        let mut request = tonic::Request::new(message.clone());
        if let Some(principal) = principal {
            request.metadata_mut().insert(PRINCIPAL_HEADER, principal);
        }
        if let Some(groups) = groups {
            request.metadata_mut().insert(GROUPS_HEADER, groups);
        }
        request
    };
    let ascii = |text: &str| AsciiMetadataValue::try_from(text).expect("header value");
    let bytes = |raw: &[u8]| AsciiMetadataValue::try_from(raw).expect("obs-text header value");
    let mut binary_only = request(None, Some(ascii("payments")));
    binary_only.metadata_mut().insert_bin(
        "x-ecr-gateway-principal-bin",
        BinaryMetadataValue::from_bytes(b"\xffalice@example.com"),
    );
    let many_groups = (0..65).map(|i| format!("g{i}")).collect::<Vec<_>>().join(",");
    vec![
        (
            "principal missing".into(),
            PRINCIPAL_HEADER,
            request(None, Some(ascii("payments"))),
        ),
        (
            "principal bytes 0xff 0xfe (not UTF-8)".into(),
            PRINCIPAL_HEADER,
            request(Some(bytes(b"\xff\xfealice")), None),
        ),
        (
            "principal empty".into(),
            PRINCIPAL_HEADER,
            request(Some(ascii("")), None),
        ),
        (
            "principal blank".into(),
            PRINCIPAL_HEADER,
            request(Some(ascii("   ")), None),
        ),
        (
            "principal 257 characters".into(),
            PRINCIPAL_HEADER,
            request(Some(ascii(&"a".repeat(257))), None),
        ),
        (
            "principal only as a -bin header".into(),
            PRINCIPAL_HEADER,
            binary_only,
        ),
        (
            "groups bytes 0xff (not UTF-8)".into(),
            GROUPS_HEADER,
            request(Some(ascii("alice@example.com")), Some(bytes(b"pay\xffments"))),
        ),
        (
            "65 groups".into(),
            GROUPS_HEADER,
            request(Some(ascii("alice@example.com")), Some(ascii(&many_groups))),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Raw bodies: a codec that sends bytes as they are
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A body sent as raw bytes to `/ecrgateway.v1.{service}/{method}`; it never reaches a handler.
fn raw_case(
    cat: &mut Catalogue,
    channel: &Channel,
    service: &str,
    method: &'static str,
    what: &str,
    expect: Expect,
    body: Vec<u8>,
) {
    let path = http::uri::PathAndQuery::try_from(format!("/ecrgateway.v1.{service}/{method}")).expect("path");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let request = as_user(body, cat.principal, cat.groups);
    cat.add(method, format!("raw body: {what}"), expect, false, async move {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary(request, path, RawCodec).await
    });
}

/// A length-delimited field (wire type 2) holding `payload`.
fn field_bytes(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![
        (number << 3) | 2,
        u8::try_from(payload.len()).expect("short payload"),
    ];
    out.extend_from_slice(payload);
    out
}

/// The undecodable bodies every service gets.
fn garbage_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("16 bytes of 0xff (an endless varint)", vec![0xff; 16]),
        ("wire type 7", vec![0x0f]),
        ("field number 0", vec![0x02, 0x00]),
        ("a key cut short", vec![0x80]),
        (
            "an unknown field longer than the body",
            vec![0xfa, 0x01, 0x7f, 0x61],
        ),
    ]
}

// ---------------------------------------------------------------------------
// The world before and after
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// Per table: row count and a hash of every row.
    tables: BTreeMap<&'static str, (i64, String)>,
    /// Every repository in ECR with its settings, tags, policies and images; the scanning configuration.
    ecr: Vec<String>,
}

async fn snapshot(pool: &sqlx::PgPool, ecr: &aws_sdk_ecr::Client) -> Snapshot {
    let mut tables = BTreeMap::new();
    for table in TABLES {
        // `settings_synced_at` says when ECR last confirmed a repository's
        // settings: a read-through that re-reads unchanged settings moves it,
        // and that is no write of state.
        let (count, hash): (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), md5(string_agg((to_jsonb(t) - 'settings_synced_at')::text, '|' \
             ORDER BY (to_jsonb(t) - 'settings_synced_at')::text)) FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("snapshot of {table}: {e}"));
        tables.insert(*table, (count, hash.unwrap_or_default()));
    }
    Snapshot {
        tables,
        ecr: ecr_state(ecr).await,
    }
}

async fn ecr_state(ecr: &aws_sdk_ecr::Client) -> Vec<String> {
    let mut lines = Vec::new();
    let mut next = None;
    loop {
        let page = ecr
            .describe_repositories()
            .set_next_token(next)
            .send()
            .await
            .expect("describe repositories");
        for repository in page.repositories() {
            let name = repository.repository_name().unwrap_or_default().to_owned();
            let arn = repository.repository_arn().unwrap_or_default().to_owned();
            let tags = ecr
                .list_tags_for_resource()
                .resource_arn(&arn)
                .send()
                .await
                .map(|t| format!("{:?}", t.tags()))
                .unwrap_or_else(|e| format!("tags: {e}"));
            let lifecycle = ecr
                .get_lifecycle_policy()
                .repository_name(&name)
                .send()
                .await
                .ok()
                .and_then(|p| p.lifecycle_policy_text().map(str::to_owned));
            let policy = ecr
                .get_repository_policy()
                .repository_name(&name)
                .send()
                .await
                .ok()
                .and_then(|p| p.policy_text().map(str::to_owned));
            let mut images = Vec::new();
            let mut image_page = None;
            loop {
                let Ok(described) = ecr
                    .describe_images()
                    .repository_name(&name)
                    .set_next_token(image_page)
                    .send()
                    .await
                else {
                    break;
                };
                for image in described.image_details() {
                    let mut tags = image.image_tags().to_vec();
                    tags.sort();
                    images.push(format!("{}{tags:?}", image.image_digest().unwrap_or_default()));
                }
                image_page = described.next_token().map(str::to_owned);
                if image_page.is_none() {
                    break;
                }
            }
            images.sort();
            lines.push(format!(
                "{name} mutability={:?} exclusions={:?} scanning={:?} encryption={:?} tags={tags} \
                 lifecycle={lifecycle:?} policy={policy:?} images={images:?}",
                repository.image_tag_mutability(),
                repository.image_tag_mutability_exclusion_filters(),
                repository.image_scanning_configuration(),
                repository.encryption_configuration(),
            ));
        }
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    lines.sort();
    let scanning = ecr.get_registry_scanning_configuration().send().await;
    lines.push(format!(
        "registry scanning: {:?}",
        scanning.map(|c| format!("{:?}", c.scanning_configuration())).ok()
    ));
    lines
}

// ---------------------------------------------------------------------------
// The fixture: two managed repositories, two images, real page tokens
// ---------------------------------------------------------------------------

struct Fixture {
    _db: TestDb,
    gateway: Gateway,
    pool: sqlx::PgPool,
    ecr: aws_sdk_ecr::Client,
    /// Holds `v1` and `v2`.
    repo_a: String,
    /// Empty.
    repo_b: String,
    digest_v1: String,
    /// A ListRepositories token (prefix `payments/`, page size 1).
    repositories_token: String,
    /// A ListImages token of repo_a ordered by digest.
    images_token: String,
    /// A LookupAuditEvents token (event_name CreateRepository).
    audit_token: String,
}

fn fixture_user<T>(message: T) -> tonic::Request<T> {
    as_user(message, "fixture@example.com", "payments")
}

async fn fixture(stem: &str) -> Fixture {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let ecr = ecr_client(Moto::shared()).await;
    let repo_a = unique("payments", &format!("{stem}-a"));
    let repo_b = unique("payments", &format!("{stem}-b"));
    for name in [&repo_a, &repo_b] {
        gateway
            .repositories()
            .create_repository(fixture_user(tagged_repository(name)))
            .await
            .expect("create fixture repository");
    }
    let digest_v1 = push(&ecr, &repo_a, "v1", &format!("{repo_a}-v1")).await;
    push(&ecr, &repo_a, "v2", &format!("{repo_a}-v2")).await;
    let images = ImageServiceClient::new(gateway.channel.clone());
    images
        .clone()
        .refresh_inventory(fixture_user(pb::RefreshInventoryRequest {
            repository: repo_a.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh fixture");
    let repositories_token = gateway
        .repositories()
        .list_repositories(fixture_user(pb::ListRepositoriesRequest {
            prefix: "payments/".into(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("list repositories")
        .into_inner()
        .next_page_token;
    let images_token = images
        .clone()
        .list_images(fixture_user(pb::ListImagesRequest {
            repository: repo_a.clone(),
            order_by: pb::ImageOrder::Digest as i32,
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("list images")
        .into_inner()
        .next_page_token;
    let audit_token = AuditServiceClient::new(gateway.channel.clone())
        .lookup_audit_events(fixture_user(pb::LookupAuditEventsRequest {
            event_name: "CreateRepository".into(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("lookup audit events")
        .into_inner()
        .next_page_token;
    for (what, token) in [
        ("ListRepositories", &repositories_token),
        ("ListImages", &images_token),
        ("LookupAuditEvents", &audit_token),
    ] {
        assert!(!token.is_empty(), "the fixture needs a {what} page token");
    }
    Fixture {
        _db: db,
        gateway,
        pool,
        ecr,
        repo_a,
        repo_b,
        digest_v1,
        repositories_token,
        images_token,
        audit_token,
    }
}

/// Runs a catalogue against the fixture and checks everything around it.
async fn check(fixture: &Fixture, service: &str, catalogue: Catalogue) {
    let principal = catalogue.principal;
    let audited = catalogue.audited;
    let panics_before = PANICS.load(Ordering::SeqCst);
    let before = snapshot(&fixture.pool, &fixture.ecr).await;
    let started = Instant::now();
    let (failures, per_rpc) = run(catalogue.cases).await;
    let elapsed = started.elapsed();
    let after = snapshot(&fixture.pool, &fixture.ecr).await;

    println!(
        "{service}: {} cases in {elapsed:?}",
        per_rpc.values().sum::<usize>()
    );
    for (rpc, count) in &per_rpc {
        println!("  {rpc:<30} {count:>3}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases did not end cleanly:\n{}",
        failures.len(),
        per_rpc.values().sum::<usize>(),
        failures.join("\n")
    );
    assert_eq!(
        PANICS.load(Ordering::SeqCst) - panics_before,
        0,
        "the gateway panicked"
    );
    for (table, counts) in &before.tables {
        assert_eq!(
            after.tables.get(table),
            Some(counts),
            "table {table} changed (rows, hash)"
        );
    }
    assert_eq!(before.ecr, after.ecr, "ECR changed");

    // Still healthy, overall and for this service.
    let mut health = HealthClient::new(fixture.gateway.channel.clone());
    for name in ["", &format!("ecrgateway.v1.{service}")] {
        let status = health
            .check(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of `{name}`");
    }
    // Every call a handler saw is in the audit trail (the writer did not choke on any of them).
    let stored = common::wait_for_audit_rows(
        &fixture.pool,
        &format!("principal = '{principal}'"),
        audited as i64,
    )
    .await;
    assert_eq!(
        stored, audited as i64,
        "audit events of {principal}: every handled call is audited once"
    );

    // Every RPC of the service is in the catalogue, several times.
    let descriptors = prost_types::FileDescriptorSet::decode(ecr_gateway::server::FILE_DESCRIPTOR_SET)
        .expect("descriptors");
    let methods: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == service)
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_owned())
        .collect();
    assert!(!methods.is_empty(), "{service} has methods");
    for method in &methods {
        let count = per_rpc.get(method).copied().unwrap_or(0);
        assert!(count >= 3, "{service}.{method} has only {count} cases");
    }
    let unknown: Vec<&String> = per_rpc.keys().filter(|rpc| !methods.contains(rpc)).collect();
    assert!(
        unknown.is_empty(),
        "cases of RPCs {service} does not have: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------
// RepositoryService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn repository_service_refuses_bad_input_cleanly() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-repos").await;
    let repos = f.gateway.repositories();
    let mut cat = Catalogue::new("bad-input-repositories@example.com");
    let unknown = unique("payments", "no-such-repo");

    // CreateRepository
    let create = tagged_repository(&unique("payments", "would-create"));
    identity_cases!(cat, repos, create_repository, create.clone());
    for (what, name) in bad_names() {
        case!(cat, repos.create_repository, format!("repository {what}") => invalid("repository"),
            pb::CreateRepositoryRequest { repository: name, ..create.clone() });
    }
    case!(cat, repos.create_repository, "repository 257 characters, validate_only" => invalid("repository"),
        pb::CreateRepositoryRequest { repository: format!("payments/{}", "a".repeat(248)), validate_only: true, ..create.clone() });
    for (what, id) in bad_request_ids() {
        case!(cat, repos.create_repository, format!("request_id {what}") => invalid("request_id"),
            pb::CreateRepositoryRequest { request_id: id, ..create.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, repos.create_repository, format!("registry {what}") => invalid("registry"),
            pb::CreateRepositoryRequest { registry, ..create.clone() });
    }
    let with_tag = |key: &str, value: &str| {
        let mut tags = team_tags();
        tags.insert(key.to_owned(), value.to_owned());
        let mut request = create.clone();
        request.settings.as_mut().expect("settings").tags = tags.into_iter().collect();
        request
    };
    for (what, key, value) in [
        ("tag key with NUL", "own\0er", "alice"),
        ("tag key SQL injection", SQL, "alice"),
        ("tag key JSON injection", JSON_INJECTION, "alice"),
        ("tag key 129 characters", &"k".repeat(129), "alice"),
        ("tag key empty", "", "alice"),
        ("tag key with a control character", "own\ter", "alice"),
        ("tag value with NUL", "owner", "al\0ice"),
        ("tag value JSON injection", "owner", JSON_INJECTION),
        ("tag value 257 characters", "owner", &"v".repeat(257)),
        ("required tag value SQL injection", "team", SQL),
    ] {
        case!(cat, repos.create_repository, what => invalid("settings.tags"),
            with_tag(key, value));
    }
    let with_settings = |change: &dyn Fn(&mut pb::RepositorySettings)| {
        let mut request = create.clone();
        change(request.settings.as_mut().expect("settings"));
        request
    };
    for (what, value) in bad_enums() {
        case!(cat, repos.create_repository, format!("image_tag_mutability {what}") => invalid("settings.image_tag_mutability"),
            with_settings(&|s| s.image_tag_mutability = value));
        case!(cat, repos.create_repository, format!("encryption_type {what}") => invalid("settings.encryption"),
            with_settings(&|s| s.encryption = Some(pb::Encryption { encryption_type: value, kms_key: String::new() })));
    }
    for (what, filter) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "late\0st".into()),
        ("129 characters", "a".repeat(129)),
        ("empty", String::new()),
    ] {
        case!(cat, repos.create_repository, format!("exclusion filter {what}") => invalid("settings.image_tag_mutability_exclusion_filters"),
            with_settings(&|s| { s.image_tag_mutability = pb::ImageTagMutability::ImmutableWithExclusion as i32; s.image_tag_mutability_exclusion_filters = vec![filter.clone()]; }));
    }
    for (what, text) in [
        ("not JSON", "not json".to_owned()),
        ("JSON injection", JSON_INJECTION.into()),
        ("with NUL", "{\"rules\":[]}\0".into()),
        ("30 KiB of garbage", "x".repeat(30_721)),
    ] {
        case!(cat, repos.create_repository, format!("lifecycle_policy {what}") => invalid("settings.lifecycle_policy"),
            with_settings(&|s| s.lifecycle_policy = text.clone()));
        case!(cat, repos.create_repository, format!("repository_policy {what}") => invalid("settings.repository_policy"),
            with_settings(&|s| s.repository_policy = text.clone()));
    }

    // GetRepository
    let get = pb::GetRepositoryRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, repos, get_repository, get.clone());
    for (what, name) in bad_names() {
        case!(cat, repos.get_repository, format!("repository {what}") => invalid("repository"),
            pb::GetRepositoryRequest { repository: name, ..get.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, repos.get_repository, format!("registry {what}") => invalid("registry"),
            pb::GetRepositoryRequest { registry, ..get.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, repos.get_repository, format!("consistency {what}") => invalid("consistency"),
            pb::GetRepositoryRequest { consistency: value, ..get.clone() });
    }
    case!(cat, repos.get_repository, "unknown repository" => Expect::Code(Code::NotFound),
        pb::GetRepositoryRequest { repository: unknown.clone(), ..get.clone() });
    case!(cat, repos.get_repository, "unknown repository, strong" => Expect::Code(Code::NotFound),
        pb::GetRepositoryRequest { repository: unknown.clone(), consistency: pb::Consistency::Strong as i32, ..get.clone() });

    // ListRepositories
    let list = pb::ListRepositoriesRequest::default();
    identity_cases!(cat, repos, list_repositories, list.clone());
    for (what, size) in bad_page_sizes() {
        case!(cat, repos.list_repositories, format!("page_size {what}") => invalid("page_size"),
            pb::ListRepositoriesRequest { page_size: size, ..list.clone() });
    }
    let mut tokens = bad_tokens(&f);
    tokens.retain(|(what, _)| *what != "a ListRepositories token");
    tokens.push(("a ListImages token", f.images_token.clone()));
    tokens.push((
        "a token of other filters (prefix payments/)",
        f.repositories_token.clone(),
    ));
    // A token in the right envelope and fingerprint, with a position no list makes.
    let fingerprint = hex::encode(
        &Sha256::digest(serde_json::to_vec(&("", "", BTreeMap::<String, String>::new())).expect("json"))
            [..12],
    );
    let forged =
        serde_json::json!({"q": fingerprint, "p": ["1234\u{0}", "us-east-1", "payments/a"]}).to_string();
    tokens.push((
        "forged, right fingerprint, position with NUL",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged),
    ));
    for (what, token) in tokens {
        case!(cat, repos.list_repositories, format!("page_token {what}") => invalid("page_token"),
            pb::ListRepositoriesRequest { page_token: token, ..list.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, repos.list_repositories, format!("registry {what}") => invalid("registry"),
            pb::ListRepositoriesRequest { registry, ..list.clone() });
    }
    for (what, prefix) in bad_prefixes() {
        case!(cat, repos.list_repositories, format!("prefix {what}") => invalid("prefix"),
            pb::ListRepositoriesRequest { prefix, ..list.clone() });
    }
    empty_case!(cat, repos.list_repositories, "prefix `_` (a literal, not LIKE's any-character)" => repositories,
        pb::ListRepositoriesRequest { prefix: "_".into(), ..list.clone() });
    empty_case!(cat, repos.list_repositories, "prefix `payments_` (a literal `_`)" => repositories,
        pb::ListRepositoriesRequest { prefix: "payments_".into(), ..list.clone() });
    for (what, key, value) in [
        ("key with NUL", "te\0am", "payments"),
        ("value with NUL", "team", "pay\0ments"),
        ("key 129 characters", &"k".repeat(129), "payments"),
        ("value 257 characters", "team", &"v".repeat(257)),
        ("key SQL injection", SQL, "payments"),
        ("value JSON injection", "team", JSON_INJECTION),
        ("key empty", "", "payments"),
    ] {
        case!(cat, repos.list_repositories, format!("tag_filter {what}") => invalid("tag_filter"),
            pb::ListRepositoriesRequest { tag_filter: [(key.to_owned(), value.to_owned())].into_iter().collect(), ..list.clone() });
    }

    // UpdateRepository
    let update = pb::UpdateRepositoryRequest {
        repository: f.repo_a.clone(),
        settings: Some(pb::RepositorySettings {
            tags: team_tags().into_iter().collect(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["tags".into()],
        }),
        ..Default::default()
    };
    identity_cases!(cat, repos, update_repository, update.clone());
    for (what, name) in bad_names() {
        case!(cat, repos.update_repository, format!("repository {what}") => invalid("repository"),
            pb::UpdateRepositoryRequest { repository: name, ..update.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, repos.update_repository, format!("registry {what}") => invalid("registry"),
            pb::UpdateRepositoryRequest { registry, ..update.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, repos.update_repository, format!("request_id {what}") => invalid("request_id"),
            pb::UpdateRepositoryRequest { request_id: id, ..update.clone() });
    }
    for (what, paths) in [
        ("update_mask missing", None),
        ("update_mask empty", Some(vec![])),
        ("update_mask SQL injection", Some(vec![SQL.to_owned()])),
        ("update_mask with NUL", Some(vec!["ta\0gs".to_owned()])),
        ("update_mask encryption", Some(vec!["encryption".to_owned()])),
        ("update_mask 10,000 paths", Some(vec!["x".to_owned(); 10_000])),
    ] {
        case!(cat, repos.update_repository, what => invalid("update_mask"),
            pb::UpdateRepositoryRequest { update_mask: paths.map(|paths| prost_types::FieldMask { paths }), ..update.clone() });
    }
    let update_tags = |key: &str, value: &str| {
        let mut tags = team_tags();
        tags.insert(key.to_owned(), value.to_owned());
        pb::UpdateRepositoryRequest {
            settings: Some(pb::RepositorySettings {
                tags: tags.into_iter().collect(),
                ..Default::default()
            }),
            ..update.clone()
        }
    };
    for (what, key, value) in [
        ("tag key with NUL", "own\0er", "alice"),
        ("tag key SQL injection", SQL, "alice"),
        ("tag value with NUL", "owner", "al\0ice"),
        ("tag value JSON injection", "owner", JSON_INJECTION),
        ("required tag value SQL injection", "team", SQL),
    ] {
        case!(cat, repos.update_repository, what => invalid("settings.tags"),
            update_tags(key, value));
    }
    for (what, value) in bad_enums() {
        case!(cat, repos.update_repository, format!("image_tag_mutability {what}") => invalid("settings.image_tag_mutability"),
            pb::UpdateRepositoryRequest { settings: Some(pb::RepositorySettings { image_tag_mutability: value, ..Default::default() }), update_mask: Some(prost_types::FieldMask { paths: vec!["image_tag_mutability".into()] }), ..update.clone() });
    }
    for (path, field) in [
        ("lifecycle_policy", "settings.lifecycle_policy"),
        ("repository_policy", "settings.repository_policy"),
    ] {
        for (what, text) in [("not JSON", "not json"), ("JSON injection", JSON_INJECTION)] {
            let mut settings = pb::RepositorySettings::default();
            if path == "lifecycle_policy" {
                settings.lifecycle_policy = text.into();
            } else {
                settings.repository_policy = text.into();
            }
            case!(cat, repos.update_repository, format!("{path} {what}") => invalid(field),
                pb::UpdateRepositoryRequest { settings: Some(settings), update_mask: Some(prost_types::FieldMask { paths: vec![path.into()] }), ..update.clone() });
        }
    }
    case!(cat, repos.update_repository, "unknown repository" => Expect::Code(Code::NotFound),
        pb::UpdateRepositoryRequest { repository: unknown.clone(), ..update.clone() });

    // DeleteRepository
    let delete = pb::DeleteRepositoryRequest {
        repository: f.repo_b.clone(),
        ..Default::default()
    };
    identity_cases!(cat, repos, delete_repository, delete.clone());
    for (what, name) in bad_names() {
        case!(cat, repos.delete_repository, format!("repository {what}") => invalid("repository"),
            pb::DeleteRepositoryRequest { repository: name, ..delete.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, repos.delete_repository, format!("registry {what}") => invalid("registry"),
            pb::DeleteRepositoryRequest { registry, ..delete.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, repos.delete_repository, format!("request_id {what}") => invalid("request_id"),
            pb::DeleteRepositoryRequest { request_id: id, ..delete.clone() });
    }
    case!(cat, repos.delete_repository, "unknown repository" => Expect::Code(Code::NotFound),
        pb::DeleteRepositoryRequest { repository: unknown.clone(), ..delete.clone() });
    case!(cat, repos.delete_repository, "repository with images, no force" => Expect::Code(Code::FailedPrecondition),
        pb::DeleteRepositoryRequest { repository: f.repo_a.clone(), ..delete.clone() });
    case!(cat, repos.delete_repository, "repository with images, no force, validate_only" => Expect::Code(Code::FailedPrecondition),
        pb::DeleteRepositoryRequest { repository: f.repo_a.clone(), validate_only: true, ..delete.clone() });

    // Bodies that are not the message.
    let channel = &f.gateway.channel;
    for method in [
        "CreateRepository",
        "GetRepository",
        "ListRepositories",
        "UpdateRepository",
        "DeleteRepository",
    ] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "RepositoryService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "RepositoryService",
        "CreateRepository",
        "repository not UTF-8",
        invalid("repository"),
        field_bytes(2, b"payments/\xff\xfe"),
    );
    raw_case(
        &mut cat,
        channel,
        "RepositoryService",
        "CreateRepository",
        "settings.tags key not UTF-8",
        invalid("settings.tags"),
        field_bytes(3, &field_bytes(5, &field_bytes(1, b"\xff"))),
    );
    raw_case(
        &mut cat,
        channel,
        "RepositoryService",
        "ListRepositories",
        "page_size as a string",
        invalid("page_size"),
        field_bytes(4, b"100"),
    );
    raw_case(
        &mut cat,
        channel,
        "RepositoryService",
        "GetRepository",
        "repository cut short",
        invalid("repository"),
        vec![0x12, 0x10, b'p'],
    );
    // Over server.max_message_bytes (4 MiB).
    case!(cat, repos.create_repository, "5 MiB body" => Expect::OneOf(&[Code::OutOfRange, Code::ResourceExhausted]),
        pb::CreateRepositoryRequest { repository: "a".repeat(5 << 20), ..create.clone() });
    cat.audited -= 1; // refused before any handler

    check(&f, "RepositoryService", cat).await;
}

// ---------------------------------------------------------------------------
// ImageService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn image_service_refuses_bad_input_cleanly() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-images").await;
    let images = ImageServiceClient::new(f.gateway.channel.clone());
    let mut cat = Catalogue::new("bad-input-images@example.com");
    let unknown = unique("payments", "no-such-repo");

    // ListImages
    let list = pb::ListImagesRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, images, list_images, list.clone());
    for (what, name) in bad_names() {
        case!(cat, images.list_images, format!("repository {what}") => invalid("repository"),
            pb::ListImagesRequest { repository: name, ..list.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.list_images, format!("registry {what}") => invalid("registry"),
            pb::ListImagesRequest { registry, ..list.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, images.list_images, format!("page_size {what}") => invalid("page_size"),
            pb::ListImagesRequest { page_size: size, ..list.clone() });
    }
    let mut tokens = bad_tokens(&f);
    tokens.push((
        "a token of other filters (order by digest)",
        f.images_token.clone(),
    ));
    for (what, token) in tokens {
        case!(cat, images.list_images, format!("page_token {what}") => invalid("page_token"),
            pb::ListImagesRequest { page_token: token, ..list.clone() });
    }
    for (what, glob) in bad_globs() {
        case!(cat, images.list_images, format!("tag_glob {what}") => invalid("tag_glob"),
            pb::ListImagesRequest { tag_glob: glob, ..list.clone() });
    }
    empty_case!(cat, images.list_images, "tag_glob `v_` (a literal `_`; v1 and v2 must not match)" => images,
        pb::ListImagesRequest { tag_glob: "v_".into(), ..list.clone() });
    case!(cat, images.list_images, "tag_glob with tag_status UNTAGGED" => invalid("tag_glob"),
        pb::ListImagesRequest { tag_glob: "v*".into(), tag_status: pb::TagStatus::Untagged as i32, ..list.clone() });
    for (what, value) in bad_enums() {
        case!(cat, images.list_images, format!("tag_status {what}") => invalid("tag_status"),
            pb::ListImagesRequest { tag_status: value, ..list.clone() });
        case!(cat, images.list_images, format!("status {what}") => invalid("status"),
            pb::ListImagesRequest { status: value, ..list.clone() });
        case!(cat, images.list_images, format!("order_by {what}") => invalid("order_by"),
            pb::ListImagesRequest { order_by: value, ..list.clone() });
    }
    for (what, time) in bad_times() {
        case!(cat, images.list_images, format!("pushed_after {what}") => invalid("pushed_after"),
            pb::ListImagesRequest { pushed_after: time, ..list.clone() });
        case!(cat, images.list_images, format!("pushed_before {what}") => invalid("pushed_before"),
            pb::ListImagesRequest { pushed_before: time, ..list.clone() });
    }
    for (what, media_type) in [
        ("256 characters", "a".repeat(256)),
        ("with NUL", "application/json\0".into()),
        ("with a control character", "application/\u{7f}json".into()),
    ] {
        case!(cat, images.list_images, format!("media_type {what}") => invalid("media_type"),
            pb::ListImagesRequest { media_type, ..list.clone() });
    }
    empty_case!(cat, images.list_images, "media_type SQL injection (free text, names nothing)" => images,
        pb::ListImagesRequest { media_type: SQL.into(), ..list.clone() });

    // GetImage
    let get = pb::GetImageRequest {
        repository: f.repo_a.clone(),
        tag: "v1".into(),
        ..Default::default()
    };
    identity_cases!(cat, images, get_image, get.clone());
    for (what, name) in bad_names() {
        case!(cat, images.get_image, format!("repository {what}") => invalid("repository"),
            pb::GetImageRequest { repository: name, ..get.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.get_image, format!("registry {what}") => invalid("registry"),
            pb::GetImageRequest { registry, ..get.clone() });
    }
    case!(cat, images.get_image, "neither tag nor digest" => invalid("tag"),
        pb::GetImageRequest { tag: String::new(), ..get.clone() });
    case!(cat, images.get_image, "both tag and digest" => invalid("tag"),
        pb::GetImageRequest { digest: f.digest_v1.clone(), ..get.clone() });
    for (what, tag) in bad_tags() {
        case!(cat, images.get_image, format!("tag {what}") => invalid("tag"),
            pb::GetImageRequest { tag, ..get.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, images.get_image, format!("digest {what}") => invalid("digest"),
            pb::GetImageRequest { tag: String::new(), digest, ..get.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, images.get_image, format!("consistency {what}") => invalid("consistency"),
            pb::GetImageRequest { consistency: value, ..get.clone() });
    }
    case!(cat, images.get_image, "unknown digest" => Expect::Code(Code::NotFound),
        pb::GetImageRequest { tag: String::new(), digest: UNKNOWN_DIGEST.into(), ..get.clone() });
    case!(cat, images.get_image, "unknown tag" => Expect::Code(Code::NotFound),
        pb::GetImageRequest { tag: "no-such-tag".into(), ..get.clone() });
    case!(cat, images.get_image, "unknown repository" => Expect::Code(Code::NotFound),
        pb::GetImageRequest { repository: unknown.clone(), ..get.clone() });

    // ResolveImage
    let resolve = pb::ResolveImageRequest {
        reference: format!("{}:v1", f.repo_a),
        ..Default::default()
    };
    identity_cases!(cat, images, resolve_image, resolve.clone());
    for (what, reference) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("JSON injection", JSON_INJECTION.to_owned()),
        ("with NUL", format!("{}:v\01", f.repo_a)),
        ("with a control character", format!("{}:v1\r\n", f.repo_a)),
        ("10,000 characters", format!("payments/{}:v1", "a".repeat(10_000))),
        ("a name only", f.repo_a.clone()),
        ("an empty tag", format!("{}:", f.repo_a)),
        ("two tags", format!("{}:v1:v2", f.repo_a)),
        ("a bad digest", format!("{}@sha256:xyz", f.repo_a)),
        ("non-ASCII", format!("{}:v1-ä", f.repo_a)),
        (
            "an unmanaged registry's URI",
            "999999999999.dkr.ecr.us-east-1.amazonaws.com/payments/api:v1".to_owned(),
        ),
        (
            "a URI with a bad host",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example/payments/api:v1".to_owned(),
        ),
    ] {
        case!(cat, images.resolve_image, format!("reference {what}") => invalid("reference"),
            pb::ResolveImageRequest { reference, ..resolve.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.resolve_image, format!("registry {what}") => invalid("registry"),
            pb::ResolveImageRequest { registry, ..resolve.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, images.resolve_image, format!("consistency {what}") => invalid("consistency"),
            pb::ResolveImageRequest { consistency: value, ..resolve.clone() });
    }
    case!(cat, images.resolve_image, "unknown tag" => Expect::Code(Code::NotFound),
        pb::ResolveImageRequest { reference: format!("{}:no-such-tag", f.repo_a), ..resolve.clone() });
    case!(cat, images.resolve_image, "unknown digest" => Expect::Code(Code::NotFound),
        pb::ResolveImageRequest { reference: format!("{}@{UNKNOWN_DIGEST}", f.repo_a), ..resolve.clone() });

    // SearchImages
    let search = pb::SearchImagesRequest {
        tag_glob: "v*".into(),
        ..Default::default()
    };
    identity_cases!(cat, images, search_images, search.clone());
    case!(cat, images.search_images, "no criterion" => invalid("digest"),
        pb::SearchImagesRequest { tag_glob: String::new(), ..search.clone() });
    case!(cat, images.search_images, "two criteria" => invalid("digest"),
        pb::SearchImagesRequest { digest: f.digest_v1.clone(), ..search.clone() });
    for (what, digest) in bad_digests() {
        case!(cat, images.search_images, format!("digest {what}") => invalid("digest"),
            pb::SearchImagesRequest { tag_glob: String::new(), digest, ..search.clone() });
    }
    for (what, glob) in bad_globs() {
        case!(cat, images.search_images, format!("tag_glob {what}") => invalid("tag_glob"),
            pb::SearchImagesRequest { tag_glob: glob, ..search.clone() });
    }
    empty_case!(cat, images.search_images, "tag_glob `v_` (a literal `_`)" => images,
        pb::SearchImagesRequest { tag_glob: "v_".into(), ..search.clone() });
    for (what, prefix) in bad_prefixes() {
        case!(cat, images.search_images, format!("repository_prefix {what}") => invalid("repository_prefix"),
            pb::SearchImagesRequest { tag_glob: String::new(), repository_prefix: prefix, ..search.clone() });
    }
    empty_case!(cat, images.search_images, "repository_prefix `_` (a literal `_`)" => images,
        pb::SearchImagesRequest { tag_glob: String::new(), repository_prefix: "_".into(), ..search.clone() });
    for (what, registry) in bad_registries() {
        case!(cat, images.search_images, format!("registry {what}") => invalid("registry"),
            pb::SearchImagesRequest { registry, ..search.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, images.search_images, format!("page_size {what}") => invalid("page_size"),
            pb::SearchImagesRequest { page_size: size, ..search.clone() });
    }
    let mut tokens = bad_tokens(&f);
    tokens.push(("a ListImages token", f.images_token.clone()));
    for (what, token) in tokens {
        case!(cat, images.search_images, format!("page_token {what}") => invalid("page_token"),
            pb::SearchImagesRequest { page_token: token, ..search.clone() });
    }

    // WatchImages
    let watch = pb::WatchImagesRequest::default();
    identity_cases!(cat, images, watch_images, watch.clone());
    for (what, prefix) in bad_prefixes() {
        case!(cat, images.watch_images, format!("repository_prefix {what}") => invalid("repository_prefix"),
            pb::WatchImagesRequest { repository_prefix: prefix, ..watch.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.watch_images, format!("registry {what}") => invalid("registry"),
            pb::WatchImagesRequest { registry, ..watch.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, images.watch_images, format!("kinds {what}") => invalid("kinds"),
            pb::WatchImagesRequest { kinds: vec![value], ..watch.clone() });
    }
    case!(cat, images.watch_images, "kinds IMAGE_CHANGE_KIND_UNSPECIFIED" => invalid("kinds"),
        pb::WatchImagesRequest { kinds: vec![0], ..watch.clone() });
    for (what, seconds) in [
        ("-1", -1),
        ("301", 301),
        ("i32::MAX", i32::MAX),
        ("i32::MIN", i32::MIN),
    ] {
        case!(cat, images.watch_images, format!("heartbeat_seconds {what}") => invalid("heartbeat_seconds"),
            pb::WatchImagesRequest { heartbeat_seconds: seconds, ..watch.clone() });
    }
    let mut cursors: Vec<(&str, String)> = bad_tokens(&f);
    cursors.push(("a ListImages token", f.images_token.clone()));
    cursors.push(("a number", "42".into()));
    for (what, cursor) in cursors {
        case!(cat, images.watch_images, format!("cursor {what}") => invalid("cursor"),
            pb::WatchImagesRequest { cursor, ..watch.clone() });
    }

    // RefreshInventory
    let refresh = pb::RefreshInventoryRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, images, refresh_inventory, refresh.clone());
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, images.refresh_inventory, format!("repository {what}") => invalid("repository"),
            pb::RefreshInventoryRequest { repository: name, ..refresh.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.refresh_inventory, format!("registry {what}") => invalid("registry"),
            pb::RefreshInventoryRequest { registry, ..refresh.clone() });
    }
    case!(cat, images.refresh_inventory, "digest without repository" => invalid("repository"),
        pb::RefreshInventoryRequest { repository: String::new(), digest: f.digest_v1.clone(), ..refresh.clone() });
    for (what, digest) in bad_digests() {
        case!(cat, images.refresh_inventory, format!("digest {what}") => invalid("digest"),
            pb::RefreshInventoryRequest { digest, ..refresh.clone() });
    }
    case!(cat, images.refresh_inventory, "digest with a bad repository" => invalid("repository"),
        pb::RefreshInventoryRequest { repository: SQL.into(), digest: f.digest_v1.clone(), ..refresh.clone() });

    // GetSyncStatus
    let status = pb::GetSyncStatusRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, images, get_sync_status, status.clone());
    for (what, limit) in [
        ("-1", -1),
        ("101", 101),
        ("i32::MAX", i32::MAX),
        ("i32::MIN", i32::MIN),
    ] {
        case!(cat, images.get_sync_status, format!("limit {what}") => invalid("limit"),
            pb::GetSyncStatusRequest { limit, ..status.clone() });
    }
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, images.get_sync_status, format!("repository {what}") => invalid("repository"),
            pb::GetSyncStatusRequest { repository: name, ..status.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.get_sync_status, format!("registry {what}") => invalid("registry"),
            pb::GetSyncStatusRequest { registry, ..status.clone() });
    }

    // PromoteImage
    let promote = pb::PromoteImageRequest {
        repository: f.repo_a.clone(),
        tag: "v1".into(),
        target_tag: "v1-promoted".into(),
        validate_only: true,
        ..Default::default()
    };
    identity_cases!(cat, images, promote_image, promote.clone());
    for (what, name) in bad_names() {
        case!(cat, images.promote_image, format!("repository {what}") => invalid("repository"),
            pb::PromoteImageRequest { repository: name, ..promote.clone() });
    }
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, images.promote_image, format!("target_repository {what}") => invalid("target_repository"),
            pb::PromoteImageRequest { target_repository: name, ..promote.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, images.promote_image, format!("registry {what}") => invalid("registry"),
            pb::PromoteImageRequest { registry, ..promote.clone() });
    }
    for (what, tag) in bad_tags() {
        case!(cat, images.promote_image, format!("tag {what}") => invalid("tag"),
            pb::PromoteImageRequest { tag: tag.clone(), ..promote.clone() });
        case!(cat, images.promote_image, format!("target_tag {what}") => invalid("target_tag"),
            pb::PromoteImageRequest { target_tag: tag, ..promote.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, images.promote_image, format!("digest {what}") => invalid("digest"),
            pb::PromoteImageRequest { tag: String::new(), digest, ..promote.clone() });
    }
    case!(cat, images.promote_image, "no target_tag" => invalid("target_tag"),
        pb::PromoteImageRequest { target_tag: String::new(), ..promote.clone() });
    case!(cat, images.promote_image, "both tag and digest" => invalid("tag"),
        pb::PromoteImageRequest { digest: f.digest_v1.clone(), ..promote.clone() });
    case!(cat, images.promote_image, "neither tag nor digest" => invalid("tag"),
        pb::PromoteImageRequest { tag: String::new(), ..promote.clone() });
    for (what, request_id) in bad_request_ids() {
        case!(cat, images.promote_image, format!("request_id {what}") => invalid("request_id"),
            pb::PromoteImageRequest { request_id, validate_only: false, ..promote.clone() });
    }
    for (what, environment) in [
        ("unknown", "moon".to_owned()),
        ("SQL injection", SQL.into()),
        ("with NUL", "prod\0".into()),
    ] {
        case!(cat, images.promote_image, format!("environment {what}") => invalid("environment"),
            pb::PromoteImageRequest { environment, validate_only: false, ..promote.clone() });
    }
    case!(cat, images.promote_image, "an unknown source tag" => Expect::Code(Code::NotFound),
        pb::PromoteImageRequest { tag: "no-such-tag".into(), validate_only: false, ..promote.clone() });
    case!(cat, images.promote_image, "an unknown source digest" => Expect::Code(Code::NotFound),
        pb::PromoteImageRequest { tag: String::new(), digest: UNKNOWN_DIGEST.into(), validate_only: false, ..promote.clone() });
    case!(cat, images.promote_image, "an unknown source repository" => Expect::Code(Code::NotFound),
        pb::PromoteImageRequest { repository: unknown.clone(), validate_only: false, ..promote.clone() });
    case!(cat, images.promote_image, "an unknown target repository" => Expect::Code(Code::NotFound),
        pb::PromoteImageRequest { target_repository: unknown.clone(), validate_only: false, ..promote.clone() });
    case!(cat, images.promote_image, "an immutable tag that names another image" => Expect::Code(Code::FailedPrecondition),
        pb::PromoteImageRequest { target_tag: "v2".into(), validate_only: false, ..promote.clone() });
    case!(cat, images.promote_image, "validate_only: an immutable tag that names another image" => Expect::Code(Code::FailedPrecondition),
        pb::PromoteImageRequest { target_tag: "v2".into(), ..promote.clone() });

    let channel = &f.gateway.channel;
    for method in [
        "ListImages",
        "GetImage",
        "ResolveImage",
        "SearchImages",
        "RefreshInventory",
        "GetSyncStatus",
        "PromoteImage",
    ] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "ImageService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "ImageService",
        "ResolveImage",
        "reference not UTF-8",
        invalid("reference"),
        field_bytes(2, b"payments/api:\xff"),
    );
    raw_case(
        &mut cat,
        channel,
        "ImageService",
        "ListImages",
        "pushed_after.seconds as bytes",
        invalid("pushed_after"),
        field_bytes(5, &field_bytes(1, b"x")),
    );

    check(&f, "ImageService", cat).await;
}

// ---------------------------------------------------------------------------
// ScanService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn scan_service_refuses_bad_input_cleanly() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-scans").await;
    let scans = ScanServiceClient::new(f.gateway.channel.clone());
    let mut cat = Catalogue::new("bad-input-scans@example.com");

    // StartImageScan
    let start = pb::StartImageScanRequest {
        repository: f.repo_a.clone(),
        tag: "v1".into(),
        ..Default::default()
    };
    identity_cases!(cat, scans, start_image_scan, start.clone());
    for (what, name) in bad_names() {
        case!(cat, scans.start_image_scan, format!("repository {what}") => invalid("repository"),
            pb::StartImageScanRequest { repository: name, ..start.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.start_image_scan, format!("registry {what}") => invalid("registry"),
            pb::StartImageScanRequest { registry, ..start.clone() });
    }
    case!(cat, scans.start_image_scan, "neither tag nor digest" => invalid("tag"),
        pb::StartImageScanRequest { tag: String::new(), ..start.clone() });
    case!(cat, scans.start_image_scan, "both tag and digest" => invalid("tag"),
        pb::StartImageScanRequest { digest: f.digest_v1.clone(), ..start.clone() });
    for (what, tag) in bad_tags() {
        case!(cat, scans.start_image_scan, format!("tag {what}") => invalid("tag"),
            pb::StartImageScanRequest { tag, ..start.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, scans.start_image_scan, format!("digest {what}") => invalid("digest"),
            pb::StartImageScanRequest { tag: String::new(), digest, ..start.clone() });
    }
    case!(cat, scans.start_image_scan, "unknown digest" => Expect::Code(Code::NotFound),
        pb::StartImageScanRequest { tag: String::new(), digest: UNKNOWN_DIGEST.into(), ..start.clone() });

    // GetScanFindings
    let findings = pb::GetScanFindingsRequest {
        repository: f.repo_a.clone(),
        tag: "v1".into(),
        ..Default::default()
    };
    identity_cases!(cat, scans, get_scan_findings, findings.clone());
    for (what, name) in bad_names() {
        case!(cat, scans.get_scan_findings, format!("repository {what}") => invalid("repository"),
            pb::GetScanFindingsRequest { repository: name, ..findings.clone() });
    }
    case!(cat, scans.get_scan_findings, "neither tag nor digest" => invalid("tag"),
        pb::GetScanFindingsRequest { tag: String::new(), ..findings.clone() });
    for (what, tag) in bad_tags() {
        case!(cat, scans.get_scan_findings, format!("tag {what}") => invalid("tag"),
            pb::GetScanFindingsRequest { tag, ..findings.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, scans.get_scan_findings, format!("digest {what}") => invalid("digest"),
            pb::GetScanFindingsRequest { tag: String::new(), digest, ..findings.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, scans.get_scan_findings, format!("minimum_severity {what}") => invalid("minimum_severity"),
            pb::GetScanFindingsRequest { minimum_severity: value, ..findings.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, scans.get_scan_findings, format!("page_size {what}") => invalid("page_size"),
            pb::GetScanFindingsRequest { page_size: size, ..findings.clone() });
    }
    let mut tokens = bad_tokens(&f);
    tokens.push(("a ListImages token", f.images_token.clone()));
    for (what, token) in tokens {
        case!(cat, scans.get_scan_findings, format!("page_token {what}") => invalid("page_token"),
            pb::GetScanFindingsRequest { page_token: token, ..findings.clone() });
    }
    case!(cat, scans.get_scan_findings, "unknown tag" => Expect::Code(Code::NotFound),
        pb::GetScanFindingsRequest { tag: "no-such-tag".into(), ..findings.clone() });
    case!(cat, scans.get_scan_findings, "unknown digest" => Expect::Code(Code::NotFound),
        pb::GetScanFindingsRequest { tag: String::new(), digest: UNKNOWN_DIGEST.into(), ..findings.clone() });

    // GetScanningConfiguration
    let get_config = pb::GetScanningConfigurationRequest::default();
    identity_cases!(cat, scans, get_scanning_configuration, get_config.clone());
    for (what, registry) in bad_registries() {
        case!(cat, scans.get_scanning_configuration, format!("registry {what}") => invalid("registry"),
            pb::GetScanningConfigurationRequest { registry });
    }
    case!(cat, scans.get_scanning_configuration, "registry with a control character" => invalid("registry"),
        pb::GetScanningConfigurationRequest { registry: "main\n".into() });

    // UpdateScanningConfiguration
    let rule = |frequency: pb::ScanFrequency, filters: &[&str]| pb::ScanningRule {
        frequency: frequency as i32,
        repository_filters: filters.iter().map(|f| (*f).to_owned()).collect(),
    };
    let update = pb::UpdateScanningConfigurationRequest {
        scan_type: pb::ScanType::Basic as i32,
        rules: vec![rule(pb::ScanFrequency::ScanOnPush, &["*"])],
        ..Default::default()
    };
    identity_cases!(cat, scans, update_scanning_configuration, update.clone());
    for (what, value) in [("unset", 0), ("99", 99), ("-1", -1)] {
        case!(cat, scans.update_scanning_configuration, format!("scan_type {what}") => invalid("scan_type"),
            pb::UpdateScanningConfigurationRequest { scan_type: value, ..update.clone() });
    }
    for (what, value) in [("unset", 0), ("99", 99)] {
        case!(cat, scans.update_scanning_configuration, format!("rules[0].frequency {what}") => invalid("rules[0].frequency"),
            pb::UpdateScanningConfigurationRequest { rules: vec![pb::ScanningRule { frequency: value, repository_filters: vec!["*".into()] }], ..update.clone() });
    }
    for (what, filter) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "payments/\0*".into()),
        ("empty", String::new()),
        ("257 characters", "a".repeat(257)),
        ("JSON injection", JSON_INJECTION.into()),
    ] {
        case!(cat, scans.update_scanning_configuration, format!("repository filter {what}") => invalid("rules[0].repository_filters"),
            pb::UpdateScanningConfigurationRequest { rules: vec![rule(pb::ScanFrequency::ScanOnPush, &["*", &filter])], ..update.clone() });
    }
    case!(cat, scans.update_scanning_configuration, "101 repository filters" => invalid("rules[0].repository_filters"),
        pb::UpdateScanningConfigurationRequest { rules: vec![pb::ScanningRule { frequency: pb::ScanFrequency::ScanOnPush as i32, repository_filters: vec!["*".into(); 101] }], ..update.clone() });
    case!(cat, scans.update_scanning_configuration, "3 rules" => invalid("rules"),
        pb::UpdateScanningConfigurationRequest { rules: vec![rule(pb::ScanFrequency::ScanOnPush, &["*"]); 3], ..update.clone() });
    case!(cat, scans.update_scanning_configuration, "the same frequency twice" => invalid("rules[1].frequency"),
        pb::UpdateScanningConfigurationRequest { rules: vec![rule(pb::ScanFrequency::ScanOnPush, &["*"]), rule(pb::ScanFrequency::ScanOnPush, &["payments/*"])], ..update.clone() });
    for (what, id) in bad_request_ids() {
        case!(cat, scans.update_scanning_configuration, format!("request_id {what}") => invalid("request_id"),
            pb::UpdateScanningConfigurationRequest { request_id: id, ..update.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.update_scanning_configuration, format!("registry {what}") => invalid("registry"),
            pb::UpdateScanningConfigurationRequest { registry, ..update.clone() });
    }

    // CheckDeployment
    let check_request = pb::CheckDeploymentRequest {
        reference: format!("{}:v1", f.repo_a),
        environment: "prod".into(),
        ..Default::default()
    };
    identity_cases!(cat, scans, check_deployment, check_request.clone());
    for (what, environment) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "prod\0".into()),
        ("10,000 characters", "p".repeat(10_000)),
        ("JSON injection", JSON_INJECTION.into()),
        ("uppercase", "PROD".into()),
    ] {
        case!(cat, scans.check_deployment, format!("environment {what}") => invalid("environment"),
            pb::CheckDeploymentRequest { environment, ..check_request.clone() });
    }
    for (what, reference) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{}:v\01", f.repo_a)),
        ("10,000 characters", format!("payments/{}:v1", "a".repeat(10_000))),
        ("a bad digest", format!("{}@sha256:xyz", f.repo_a)),
    ] {
        case!(cat, scans.check_deployment, format!("reference {what}") => invalid("reference"),
            pb::CheckDeploymentRequest { reference, ..check_request.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.check_deployment, format!("registry {what}") => invalid("registry"),
            pb::CheckDeploymentRequest { registry, ..check_request.clone() });
    }

    // CreateVulnerabilityException
    let create = pb::CreateVulnerabilityExceptionRequest {
        cve_id: CVE.into(),
        scope: pb::ExceptionScope::Repository as i32,
        repository: f.repo_a.clone(),
        justification: "not reachable in this service".into(),
        expire_time: in_days(7),
        ..Default::default()
    };
    identity_cases!(cat, scans, create_vulnerability_exception, create.clone());
    for (what, cve) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{CVE}\0")),
        ("a short year", "CVE-24-1234".into()),
        ("10,000 characters", format!("CVE-2024-{}", "1".repeat(10_000))),
        ("JSON injection", JSON_INJECTION.into()),
    ] {
        case!(cat, scans.create_vulnerability_exception, format!("cve_id {what}") => invalid("cve_id"),
            pb::CreateVulnerabilityExceptionRequest { cve_id: cve, ..create.clone() });
    }
    for (what, text) in [
        ("empty", String::new()),
        ("blank", "   ".into()),
        ("with NUL", "because\0".into()),
        ("with a control character", "because\u{1b}[2J".into()),
        ("2049 characters", "j".repeat(2049)),
    ] {
        case!(cat, scans.create_vulnerability_exception, format!("justification {what}") => invalid("justification"),
            pb::CreateVulnerabilityExceptionRequest { justification: text, ..create.clone() });
    }
    let mut times = bad_times();
    times.extend([
        ("missing", None),
        ("in the past", in_days(-1)),
        ("beyond the maximum", in_days(91)),
    ]);
    for (what, time) in times {
        case!(cat, scans.create_vulnerability_exception, format!("expire_time {what}") => invalid("expire_time"),
            pb::CreateVulnerabilityExceptionRequest { expire_time: time, ..create.clone() });
    }
    for (what, value) in [("unset", 0), ("99", 99), ("-1", -1)] {
        case!(cat, scans.create_vulnerability_exception, format!("scope {what}") => invalid("scope"),
            pb::CreateVulnerabilityExceptionRequest { scope: value, ..create.clone() });
    }
    case!(cat, scans.create_vulnerability_exception, "org scope with a repository" => invalid("repository"),
        pb::CreateVulnerabilityExceptionRequest { scope: pb::ExceptionScope::Org as i32, ..create.clone() });
    for (what, namespace) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with a slash", "payments/api".into()),
        ("with NUL", "pay\0ments".into()),
    ] {
        case!(cat, scans.create_vulnerability_exception, format!("namespace {what}") => invalid("namespace"),
            pb::CreateVulnerabilityExceptionRequest { scope: pb::ExceptionScope::Namespace as i32, repository: String::new(), namespace, ..create.clone() });
    }
    for (what, name) in bad_names() {
        case!(cat, scans.create_vulnerability_exception, format!("repository {what}") => invalid("repository"),
            pb::CreateVulnerabilityExceptionRequest { repository: name, ..create.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, scans.create_vulnerability_exception, format!("image scope, digest {what}") => invalid("digest"),
            pb::CreateVulnerabilityExceptionRequest { scope: pb::ExceptionScope::Image as i32, digest, ..create.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, scans.create_vulnerability_exception, format!("request_id {what}") => invalid("request_id"),
            pb::CreateVulnerabilityExceptionRequest { request_id: id, ..create.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.create_vulnerability_exception, format!("registry {what}") => invalid("registry"),
            pb::CreateVulnerabilityExceptionRequest { registry, ..create.clone() });
    }

    // ListVulnerabilityExceptions
    let list = pb::ListVulnerabilityExceptionsRequest::default();
    identity_cases!(cat, scans, list_vulnerability_exceptions, list.clone());
    for (what, cve) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{CVE}\0")),
        ("JSON injection", JSON_INJECTION.into()),
    ] {
        case!(cat, scans.list_vulnerability_exceptions, format!("cve_id {what}") => invalid("cve_id"),
            pb::ListVulnerabilityExceptionsRequest { cve_id: cve, ..list.clone() });
    }
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, scans.list_vulnerability_exceptions, format!("repository {what}") => invalid("repository"),
            pb::ListVulnerabilityExceptionsRequest { repository: name, ..list.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.list_vulnerability_exceptions, format!("registry {what}") => invalid("registry"),
            pb::ListVulnerabilityExceptionsRequest { registry, ..list.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, scans.list_vulnerability_exceptions, format!("page_size {what}") => invalid("page_size"),
            pb::ListVulnerabilityExceptionsRequest { page_size: size, ..list.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, scans.list_vulnerability_exceptions, format!("page_token {what}") => invalid("page_token"),
            pb::ListVulnerabilityExceptionsRequest { page_token: token, ..list.clone() });
    }

    // RevokeVulnerabilityException
    let revoke = pb::RevokeVulnerabilityExceptionRequest {
        id: UNKNOWN_ID.into(),
        reason: "fixed upstream".into(),
    };
    identity_cases!(cat, scans, revoke_vulnerability_exception, revoke.clone());
    for (what, id) in bad_ids() {
        case!(cat, scans.revoke_vulnerability_exception, format!("id {what}") => invalid("id"),
            pb::RevokeVulnerabilityExceptionRequest { id, ..revoke.clone() });
    }
    for (what, reason) in [
        ("empty", String::new()),
        ("with NUL", "fixed\0".into()),
        ("with a control character", "fixed\u{7}".into()),
        ("2049 characters", "r".repeat(2049)),
    ] {
        case!(cat, scans.revoke_vulnerability_exception, format!("reason {what}") => invalid("reason"),
            pb::RevokeVulnerabilityExceptionRequest { reason, ..revoke.clone() });
    }
    case!(cat, scans.revoke_vulnerability_exception, "unknown id" => Expect::Code(Code::NotFound),
        revoke.clone());

    // ListVulnerableImages
    let vulnerable = pb::ListVulnerableImagesRequest {
        cve_id: CVE.into(),
        ..Default::default()
    };
    identity_cases!(cat, scans, list_vulnerable_images, vulnerable.clone());
    case!(cat, scans.list_vulnerable_images, "neither cve_id nor minimum_severity" => invalid("cve_id"),
        pb::ListVulnerableImagesRequest { cve_id: String::new(), ..vulnerable.clone() });
    case!(cat, scans.list_vulnerable_images, "both cve_id and minimum_severity" => invalid("cve_id"),
        pb::ListVulnerableImagesRequest { minimum_severity: pb::Severity::High as i32, ..vulnerable.clone() });
    for (what, cve) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{CVE}\0")),
        ("LIKE %", "%".into()),
    ] {
        case!(cat, scans.list_vulnerable_images, format!("cve_id {what}") => invalid("cve_id"),
            pb::ListVulnerableImagesRequest { cve_id: cve, ..vulnerable.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, scans.list_vulnerable_images, format!("minimum_severity {what}") => invalid("minimum_severity"),
            pb::ListVulnerableImagesRequest { cve_id: String::new(), minimum_severity: value, ..vulnerable.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, scans.list_vulnerable_images, format!("registry {what}") => invalid("registry"),
            pb::ListVulnerableImagesRequest { registry, ..vulnerable.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, scans.list_vulnerable_images, format!("page_size {what}") => invalid("page_size"),
            pb::ListVulnerableImagesRequest { page_size: size, ..vulnerable.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, scans.list_vulnerable_images, format!("page_token {what}") => invalid("page_token"),
            pb::ListVulnerableImagesRequest { page_token: token, ..vulnerable.clone() });
    }

    let channel = &f.gateway.channel;
    for method in [
        "StartImageScan",
        "GetScanFindings",
        "GetScanningConfiguration",
        "UpdateScanningConfiguration",
        "CheckDeployment",
        "CreateVulnerabilityException",
        "ListVulnerabilityExceptions",
        "RevokeVulnerabilityException",
        "ListVulnerableImages",
    ] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "ScanService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "ScanService",
        "CreateVulnerabilityException",
        "justification not UTF-8",
        invalid("justification"),
        field_bytes(7, b"because \xc3\x28"),
    );
    raw_case(
        &mut cat,
        channel,
        "ScanService",
        "CreateVulnerabilityException",
        "expire_time.seconds as bytes",
        invalid("expire_time"),
        field_bytes(8, &field_bytes(1, b"\x00")),
    );

    check(&f, "ScanService", cat).await;
}

// ---------------------------------------------------------------------------
// CleanupService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_service_refuses_bad_input_cleanly() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-cleanup").await;
    let cleanup = CleanupServiceClient::new(f.gateway.channel.clone());
    // A finished (dry) run to name.
    let run_id = cleanup
        .clone()
        .run_cleanup(fixture_user(pb::RunCleanupRequest {
            repository: f.repo_a.clone(),
            policy_text: POLICY.into(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("dry run")
        .into_inner()
        .id;
    common::wait_for_run_state(
        &f.gateway.channel,
        &run_id,
        ("fixture@example.com", "payments"),
        pb::CleanupRunState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    let mut cat = Catalogue::new("bad-input-cleanup@example.com");
    let unknown = unique("payments", "no-such-repo");

    // DeleteImages
    let delete = pb::DeleteImagesRequest {
        repository: f.repo_a.clone(),
        tags: vec!["v2".into()],
        ..Default::default()
    };
    identity_cases!(cat, cleanup, delete_images, delete.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.delete_images, format!("repository {what}") => invalid("repository"),
            pb::DeleteImagesRequest { repository: name, ..delete.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, cleanup.delete_images, format!("registry {what}") => invalid("registry"),
            pb::DeleteImagesRequest { registry, ..delete.clone() });
    }
    case!(cat, cleanup.delete_images, "no tags and no digests" => invalid("tags"),
        pb::DeleteImagesRequest { tags: vec![], ..delete.clone() });
    for (what, tag) in bad_tags() {
        case!(cat, cleanup.delete_images, format!("tags[1] {what}") => invalid("tags[1]"),
            pb::DeleteImagesRequest { tags: vec!["v2".into(), tag], ..delete.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, cleanup.delete_images, format!("digests[0] {what}") => invalid("digests[0]"),
            pb::DeleteImagesRequest { digests: vec![digest], ..delete.clone() });
    }
    case!(cat, cleanup.delete_images, "101 digests" => invalid("digests"),
        pb::DeleteImagesRequest { tags: vec![], digests: vec![UNKNOWN_DIGEST.into(); 101], ..delete.clone() });
    case!(cat, cleanup.delete_images, "the same digest twice" => invalid("digests[1]"),
        pb::DeleteImagesRequest { tags: vec![], digests: vec![f.digest_v1.clone(), f.digest_v1.clone()], ..delete.clone() });
    case!(cat, cleanup.delete_images, "the same tag twice" => invalid("tags[1]"),
        pb::DeleteImagesRequest { tags: vec!["v2".into(), "v2".into()], ..delete.clone() });
    for (what, id) in bad_request_ids() {
        case!(cat, cleanup.delete_images, format!("request_id {what}") => invalid("request_id"),
            pb::DeleteImagesRequest { request_id: id, ..delete.clone() });
    }
    case!(cat, cleanup.delete_images, "unknown repository" => Expect::Code(Code::NotFound),
        pb::DeleteImagesRequest { repository: unknown.clone(), ..delete.clone() });

    // PinImage
    let pin = pb::PinImageRequest {
        repository: f.repo_a.clone(),
        tag: "v1".into(),
        holder: "deploy/prod/api".into(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, pin_image, pin.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.pin_image, format!("repository {what}") => invalid("repository"),
            pb::PinImageRequest { repository: name, ..pin.clone() });
    }
    case!(cat, cleanup.pin_image, "neither tag nor digest" => invalid("tag"),
        pb::PinImageRequest { tag: String::new(), ..pin.clone() });
    case!(cat, cleanup.pin_image, "both tag and digest" => invalid("tag"),
        pb::PinImageRequest { digest: f.digest_v1.clone(), ..pin.clone() });
    for (what, tag) in bad_tags() {
        case!(cat, cleanup.pin_image, format!("tag {what}") => invalid("tag"),
            pb::PinImageRequest { tag, ..pin.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, cleanup.pin_image, format!("digest {what}") => invalid("digest"),
            pb::PinImageRequest { tag: String::new(), digest, ..pin.clone() });
    }
    for (what, holder) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "deploy/\0".into()),
        ("257 characters", "h".repeat(257)),
        ("non-ASCII", "deploy/präd".into()),
        ("JSON injection", JSON_INJECTION.into()),
    ] {
        case!(cat, cleanup.pin_image, format!("holder {what}") => invalid("holder"),
            pb::PinImageRequest { holder, ..pin.clone() });
    }
    for (what, reason) in [
        ("with NUL", "in use\0".into()),
        ("with a control character", "in use\u{1b}[2J".into()),
        ("2049 characters", "r".repeat(2049)),
    ] {
        case!(cat, cleanup.pin_image, format!("reason {what}") => invalid("reason"),
            pb::PinImageRequest { reason, ..pin.clone() });
    }
    let mut times = bad_times();
    times.push(("in the past", in_days(-1)));
    for (what, time) in times {
        case!(cat, cleanup.pin_image, format!("expire_time {what}") => invalid("expire_time"),
            pb::PinImageRequest { expire_time: time, ..pin.clone() });
    }
    case!(cat, cleanup.pin_image, "unknown digest" => Expect::Code(Code::NotFound),
        pb::PinImageRequest { tag: String::new(), digest: UNKNOWN_DIGEST.into(), ..pin.clone() });

    // UnpinImage
    let unpin = pb::UnpinImageRequest {
        repository: f.repo_a.clone(),
        digest: f.digest_v1.clone(),
        holder: "deploy/prod/api".into(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, unpin_image, unpin.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.unpin_image, format!("repository {what}") => invalid("repository"),
            pb::UnpinImageRequest { repository: name, ..unpin.clone() });
    }
    for (what, digest) in bad_digests() {
        case!(cat, cleanup.unpin_image, format!("digest {what}") => invalid("digest"),
            pb::UnpinImageRequest { digest, ..unpin.clone() });
    }
    for (what, holder) in [
        ("empty", String::new()),
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "deploy/\0".into()),
        ("257 characters", "h".repeat(257)),
    ] {
        case!(cat, cleanup.unpin_image, format!("holder {what}") => invalid("holder"),
            pb::UnpinImageRequest { holder, ..unpin.clone() });
    }

    // ListPins
    let pins = pb::ListPinsRequest::default();
    identity_cases!(cat, cleanup, list_pins, pins.clone());
    for (what, registry) in bad_registries() {
        case!(cat, cleanup.list_pins, format!("registry {what}") => invalid("registry"),
            pb::ListPinsRequest { registry, ..pins.clone() });
    }
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, cleanup.list_pins, format!("repository {what}") => invalid("repository"),
            pb::ListPinsRequest { repository: name, ..pins.clone() });
    }
    for (what, holder) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "deploy/\0".into()),
        ("LIKE %", "%".into()),
    ] {
        case!(cat, cleanup.list_pins, format!("holder {what}") => invalid("holder"),
            pb::ListPinsRequest { holder, ..pins.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, cleanup.list_pins, format!("page_size {what}") => invalid("page_size"),
            pb::ListPinsRequest { page_size: size, ..pins.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, cleanup.list_pins, format!("page_token {what}") => invalid("page_token"),
            pb::ListPinsRequest { page_token: token, ..pins.clone() });
    }

    // GetLifecyclePolicy
    let get_policy = pb::GetLifecyclePolicyRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, get_lifecycle_policy, get_policy.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.get_lifecycle_policy, format!("repository {what}") => invalid("repository"),
            pb::GetLifecyclePolicyRequest { repository: name, ..get_policy.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, cleanup.get_lifecycle_policy, format!("registry {what}") => invalid("registry"),
            pb::GetLifecyclePolicyRequest { registry, ..get_policy.clone() });
    }
    case!(cat, cleanup.get_lifecycle_policy, "unknown repository" => Expect::Code(Code::NotFound),
        pb::GetLifecyclePolicyRequest { repository: unknown.clone(), ..get_policy.clone() });

    // SetLifecyclePolicy
    let set_policy = pb::SetLifecyclePolicyRequest {
        repository: f.repo_a.clone(),
        policy_text: POLICY.into(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, set_lifecycle_policy, set_policy.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.set_lifecycle_policy, format!("repository {what}") => invalid("repository"),
            pb::SetLifecyclePolicyRequest { repository: name, ..set_policy.clone() });
    }
    let bad_policies = || -> Vec<(&'static str, String)> {
        vec![
            ("empty", String::new()),
            ("not JSON", "not json".into()),
            ("JSON injection", JSON_INJECTION.into()),
            ("no rules", r#"{"rules":[]}"#.into()),
            ("with NUL", format!("{POLICY}\0")),
            (
                "over 30,720 characters",
                POLICY.replace("expire untagged images after 30 days", &"d".repeat(30_720)),
            ),
            (
                "countNumber as a string",
                POLICY.replace(r#""countNumber":30"#, r#""countNumber":"30; DROP TABLE images""#),
            ),
            (
                "rulePriority i64::MAX",
                POLICY.replace(r#""rulePriority":1"#, &format!(r#""rulePriority":{}"#, i64::MAX)),
            ),
        ]
    };
    for (what, text) in bad_policies() {
        case!(cat, cleanup.set_lifecycle_policy, format!("policy_text {what}") => invalid("policy_text"),
            pb::SetLifecyclePolicyRequest { policy_text: text, ..set_policy.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, cleanup.set_lifecycle_policy, format!("request_id {what}") => invalid("request_id"),
            pb::SetLifecyclePolicyRequest { request_id: id, ..set_policy.clone() });
    }
    case!(cat, cleanup.set_lifecycle_policy, "unknown repository" => Expect::Code(Code::NotFound),
        pb::SetLifecyclePolicyRequest { repository: unknown.clone(), ..set_policy.clone() });

    // DeleteLifecyclePolicy
    let delete_policy = pb::DeleteLifecyclePolicyRequest {
        repository: f.repo_a.clone(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, delete_lifecycle_policy, delete_policy.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.delete_lifecycle_policy, format!("repository {what}") => invalid("repository"),
            pb::DeleteLifecyclePolicyRequest { repository: name, ..delete_policy.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, cleanup.delete_lifecycle_policy, format!("request_id {what}") => invalid("request_id"),
            pb::DeleteLifecyclePolicyRequest { request_id: id, ..delete_policy.clone() });
    }
    case!(cat, cleanup.delete_lifecycle_policy, "unknown repository" => Expect::Code(Code::NotFound),
        pb::DeleteLifecyclePolicyRequest { repository: unknown.clone(), ..delete_policy.clone() });

    // PreviewCleanup
    let preview = pb::PreviewCleanupRequest {
        repository: f.repo_a.clone(),
        policy_text: POLICY.into(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, preview_cleanup, preview.clone());
    for (what, name) in bad_names() {
        case!(cat, cleanup.preview_cleanup, format!("repository {what}") => invalid("repository"),
            pb::PreviewCleanupRequest { repository: name, ..preview.clone() });
    }
    for (what, text) in bad_policies().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, cleanup.preview_cleanup, format!("policy_text {what}") => invalid("policy_text"),
            pb::PreviewCleanupRequest { policy_text: text, ..preview.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, cleanup.preview_cleanup, format!("page_size {what}") => invalid("page_size"),
            pb::PreviewCleanupRequest { page_size: size, ..preview.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, cleanup.preview_cleanup, format!("page_token {what}") => invalid("page_token"),
            pb::PreviewCleanupRequest { page_token: token, ..preview.clone() });
    }
    case!(cat, cleanup.preview_cleanup, "unknown repository" => Expect::Code(Code::NotFound),
        pb::PreviewCleanupRequest { repository: unknown.clone(), ..preview.clone() });

    // RunCleanup
    let run_request = pb::RunCleanupRequest {
        repository: f.repo_a.clone(),
        policy_text: POLICY.into(),
        dry_run: true,
        ..Default::default()
    };
    identity_cases!(cat, cleanup, run_cleanup, run_request.clone());
    case!(cat, cleanup.run_cleanup, "neither repository nor prefix" => invalid("repository"),
        pb::RunCleanupRequest { repository: String::new(), ..run_request.clone() });
    case!(cat, cleanup.run_cleanup, "both repository and prefix" => invalid("repository_prefix"),
        pb::RunCleanupRequest { repository_prefix: "payments/".into(), ..run_request.clone() });
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, cleanup.run_cleanup, format!("repository {what}") => invalid("repository"),
            pb::RunCleanupRequest { repository: name, ..run_request.clone() });
    }
    for (what, prefix) in bad_prefixes() {
        case!(cat, cleanup.run_cleanup, format!("repository_prefix {what}") => invalid("repository_prefix"),
            pb::RunCleanupRequest { repository: String::new(), repository_prefix: prefix, ..run_request.clone() });
    }
    for (what, text) in bad_policies().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, cleanup.run_cleanup, format!("policy_text {what}") => invalid("policy_text"),
            pb::RunCleanupRequest { policy_text: text, ..run_request.clone() });
    }
    for (what, id) in bad_request_ids() {
        case!(cat, cleanup.run_cleanup, format!("request_id {what}") => invalid("request_id"),
            pb::RunCleanupRequest { request_id: id, ..run_request.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, cleanup.run_cleanup, format!("registry {what}") => invalid("registry"),
            pb::RunCleanupRequest { registry, ..run_request.clone() });
    }
    case!(cat, cleanup.run_cleanup, "unknown repository" => Expect::Code(Code::NotFound),
        pb::RunCleanupRequest { repository: unknown.clone(), ..run_request.clone() });
    case!(cat, cleanup.run_cleanup, "a prefix nothing starts with" => Expect::Code(Code::NotFound),
        pb::RunCleanupRequest { repository: String::new(), repository_prefix: "payments/zz-nothing-".into(), ..run_request.clone() });

    // GetCleanupRun
    let get_run = pb::GetCleanupRunRequest {
        id: run_id.clone(),
        ..Default::default()
    };
    identity_cases!(cat, cleanup, get_cleanup_run, get_run.clone());
    for (what, id) in bad_ids() {
        case!(cat, cleanup.get_cleanup_run, format!("id {what}") => invalid("id"),
            pb::GetCleanupRunRequest { id, ..get_run.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, cleanup.get_cleanup_run, format!("outcome {what}") => invalid("outcome"),
            pb::GetCleanupRunRequest { outcome: value, ..get_run.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, cleanup.get_cleanup_run, format!("page_size {what}") => invalid("page_size"),
            pb::GetCleanupRunRequest { page_size: size, ..get_run.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, cleanup.get_cleanup_run, format!("page_token {what}") => invalid("page_token"),
            pb::GetCleanupRunRequest { page_token: token, ..get_run.clone() });
    }
    case!(cat, cleanup.get_cleanup_run, "unknown id" => Expect::Code(Code::NotFound),
        pb::GetCleanupRunRequest { id: UNKNOWN_ID.into(), ..get_run.clone() });

    // ListCleanupRuns
    let runs = pb::ListCleanupRunsRequest::default();
    identity_cases!(cat, cleanup, list_cleanup_runs, runs.clone());
    for (what, registry) in bad_registries() {
        case!(cat, cleanup.list_cleanup_runs, format!("registry {what}") => invalid("registry"),
            pb::ListCleanupRunsRequest { registry, ..runs.clone() });
    }
    for (what, name) in bad_names().into_iter().filter(|(what, _)| *what != "empty") {
        case!(cat, cleanup.list_cleanup_runs, format!("repository {what}") => invalid("repository"),
            pb::ListCleanupRunsRequest { repository: name, ..runs.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, cleanup.list_cleanup_runs, format!("state {what}") => invalid("state"),
            pb::ListCleanupRunsRequest { state: value, ..runs.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, cleanup.list_cleanup_runs, format!("page_size {what}") => invalid("page_size"),
            pb::ListCleanupRunsRequest { page_size: size, ..runs.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, cleanup.list_cleanup_runs, format!("page_token {what}") => invalid("page_token"),
            pb::ListCleanupRunsRequest { page_token: token, ..runs.clone() });
    }

    // CancelCleanupRun
    let cancel = pb::CancelCleanupRunRequest { id: run_id.clone() };
    identity_cases!(cat, cleanup, cancel_cleanup_run, cancel.clone());
    for (what, id) in bad_ids() {
        case!(cat, cleanup.cancel_cleanup_run, format!("id {what}") => invalid("id"),
            pb::CancelCleanupRunRequest { id });
    }
    case!(cat, cleanup.cancel_cleanup_run, "unknown id" => Expect::Code(Code::NotFound),
        pb::CancelCleanupRunRequest { id: UNKNOWN_ID.into() });
    case!(cat, cleanup.cancel_cleanup_run, "a finished run" => Expect::Code(Code::FailedPrecondition),
        cancel.clone());

    let channel = &f.gateway.channel;
    for method in [
        "DeleteImages",
        "PinImage",
        "UnpinImage",
        "ListPins",
        "GetLifecyclePolicy",
        "SetLifecyclePolicy",
        "DeleteLifecyclePolicy",
        "PreviewCleanup",
        "RunCleanup",
        "GetCleanupRun",
        "ListCleanupRuns",
        "CancelCleanupRun",
    ] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "CleanupService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "CleanupService",
        "DeleteImages",
        "digests[0] not UTF-8",
        invalid("digests"),
        field_bytes(4, b"sha256:\xff"),
    );
    raw_case(
        &mut cat,
        channel,
        "CleanupService",
        "PinImage",
        "holder not UTF-8",
        invalid("holder"),
        field_bytes(5, b"deploy/\xc0\xaf"),
    );

    check(&f, "CleanupService", cat).await;
}

// ---------------------------------------------------------------------------
// AuditService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn audit_service_refuses_bad_input_cleanly() {
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-audit").await;
    let audit = AuditServiceClient::new(f.gateway.channel.clone());
    let mut cat = Catalogue::new("bad-input-audit@example.com");
    cat.groups = "platform-admins";
    let bad_texts = || -> Vec<(&'static str, String)> {
        vec![
            ("with NUL", "Create\0Repository".into()),
            ("with a control character", "Create\u{1b}[2J".into()),
            ("2049 characters", "e".repeat(2049)),
        ]
    };

    // LookupAuditEvents
    let lookup = pb::LookupAuditEventsRequest::default();
    identity_cases!(cat, audit, lookup_audit_events, lookup.clone());
    for (what, text) in bad_texts() {
        case!(cat, audit.lookup_audit_events, format!("event_name {what}") => invalid("event_name"),
            pb::LookupAuditEventsRequest { event_name: text.clone(), ..lookup.clone() });
        case!(cat, audit.lookup_audit_events, format!("principal {what}") => invalid("principal"),
            pb::LookupAuditEventsRequest { principal: text.clone(), ..lookup.clone() });
        case!(cat, audit.lookup_audit_events, format!("resource_arn {what}") => invalid("resource_arn"),
            pb::LookupAuditEventsRequest { resource_arn: text.clone(), ..lookup.clone() });
        case!(cat, audit.lookup_audit_events, format!("error_code {what}") => invalid("error_code"),
            pb::LookupAuditEventsRequest { error_code: text, ..lookup.clone() });
    }
    case!(cat, audit.lookup_audit_events, "resource_prefix without resource_arn" => invalid("resource_arn"),
        pb::LookupAuditEventsRequest { resource_prefix: true, ..lookup.clone() });
    for (what, arn) in [("`%`", "%"), ("`_`", "_"), ("`\\`", "\\"), ("`arn:%`", "arn:%")] {
        empty_case!(cat, audit.lookup_audit_events, format!("resource_arn prefix {what} (a literal)") => events,
            pb::LookupAuditEventsRequest { resource_arn: arn.into(), resource_prefix: true, ..lookup.clone() });
    }
    for (what, text) in [("SQL injection", SQL), ("JSON injection", JSON_INJECTION)] {
        empty_case!(cat, audit.lookup_audit_events, format!("principal {what} (free text)") => events,
            pb::LookupAuditEventsRequest { principal: text.into(), ..lookup.clone() });
        empty_case!(cat, audit.lookup_audit_events, format!("event_name {what} (free text)") => events,
            pb::LookupAuditEventsRequest { event_name: text.into(), ..lookup.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, audit.lookup_audit_events, format!("registry {what}") => invalid("registry"),
            pb::LookupAuditEventsRequest { registry, ..lookup.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, audit.lookup_audit_events, format!("read_only {what}") => invalid("read_only"),
            pb::LookupAuditEventsRequest { read_only: value, ..lookup.clone() });
    }
    for (what, time) in bad_times() {
        case!(cat, audit.lookup_audit_events, format!("start_time {what}") => invalid("start_time"),
            pb::LookupAuditEventsRequest { start_time: time, ..lookup.clone() });
        case!(cat, audit.lookup_audit_events, format!("end_time {what}") => invalid("end_time"),
            pb::LookupAuditEventsRequest { end_time: time, ..lookup.clone() });
    }
    case!(cat, audit.lookup_audit_events, "end_time before start_time" => invalid("end_time"),
        pb::LookupAuditEventsRequest { start_time: in_days(0), end_time: in_days(-1), ..lookup.clone() });
    for (what, size) in bad_page_sizes() {
        case!(cat, audit.lookup_audit_events, format!("page_size {what}") => invalid("page_size"),
            pb::LookupAuditEventsRequest { page_size: size, ..lookup.clone() });
    }
    let mut tokens = bad_tokens(&f);
    tokens.retain(|(what, _)| *what != "a LookupAuditEvents token");
    tokens.push((
        "a token of other filters (event_name CreateRepository)",
        f.audit_token.clone(),
    ));
    tokens.push(("a ListImages token", f.images_token.clone()));
    for (what, token) in tokens {
        case!(cat, audit.lookup_audit_events, format!("page_token {what}") => invalid("page_token"),
            pb::LookupAuditEventsRequest { page_token: token, ..lookup.clone() });
    }

    // StreamAuditEvents
    let stream = pb::StreamAuditEventsRequest {
        event_name: "CreateRepository".into(),
        ..Default::default()
    };
    identity_cases!(cat, audit, stream_audit_events, stream.clone());
    for (what, cursor) in [
        ("negative", "seq:-1"),
        ("with a leading zero", "seq:07"),
        ("with a plus sign", "seq:+7"),
        ("past i64::MAX", "seq:99999999999999999999"),
        ("SQL injection", SQL),
        ("with NUL", "seq:1\0"),
        ("a page token", "%%%"),
    ] {
        case!(cat, audit.stream_audit_events, format!("cursor {what}") => invalid("cursor"),
            pb::StreamAuditEventsRequest { cursor: cursor.into(), ..stream.clone() });
    }
    case!(cat, audit.stream_audit_events, "cursor and start_time" => invalid("cursor"),
        pb::StreamAuditEventsRequest { cursor: "seq:1".into(), start_time: in_days(-1), ..stream.clone() });
    for (what, id) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", format!("{UNKNOWN_ID}\0")),
        ("a number", "42".into()),
    ] {
        case!(cat, audit.stream_audit_events, format!("start_event_id {what}") => invalid("start_event_id"),
            pb::StreamAuditEventsRequest { start_event_id: id, ..stream.clone() });
    }
    for (what, time) in bad_times() {
        case!(cat, audit.stream_audit_events, format!("start_time {what}") => invalid("start_time"),
            pb::StreamAuditEventsRequest { start_time: time, ..stream.clone() });
    }
    for (what, text) in bad_texts() {
        case!(cat, audit.stream_audit_events, format!("event_name {what}") => invalid("event_name"),
            pb::StreamAuditEventsRequest { event_name: text.clone(), ..stream.clone() });
        case!(cat, audit.stream_audit_events, format!("principal {what}") => invalid("principal"),
            pb::StreamAuditEventsRequest { principal: text, ..stream.clone() });
    }
    for (what, value) in bad_enums() {
        case!(cat, audit.stream_audit_events, format!("read_only {what}") => invalid("read_only"),
            pb::StreamAuditEventsRequest { read_only: value, ..stream.clone() });
    }
    for (what, registry) in bad_registries() {
        case!(cat, audit.stream_audit_events, format!("registry {what}") => invalid("registry"),
            pb::StreamAuditEventsRequest { registry, ..stream.clone() });
    }
    case!(cat, audit.stream_audit_events, "unknown start_event_id" => Expect::Code(Code::NotFound),
        pb::StreamAuditEventsRequest { start_event_id: UNKNOWN_ID.into(), ..stream.clone() });

    // VerifyAuditLog
    let verify = pb::VerifyAuditLogRequest::default();
    identity_cases!(cat, audit, verify_audit_log, verify);
    for (what, from) in [
        ("-1", -1),
        ("i64::MIN", i64::MIN),
        ("i64::MAX (past the newest)", i64::MAX),
    ] {
        case!(cat, audit.verify_audit_log, format!("from_sequence {what}") => invalid("from_sequence"),
            pb::VerifyAuditLogRequest { from_sequence: from, ..verify });
    }
    for (what, to) in [
        ("-1", -1),
        ("i64::MIN", i64::MIN),
        ("i64::MAX (past the newest)", i64::MAX),
    ] {
        case!(cat, audit.verify_audit_log, format!("to_sequence {what}") => invalid("to_sequence"),
            pb::VerifyAuditLogRequest { to_sequence: to, ..verify });
    }
    case!(cat, audit.verify_audit_log, "from i64::MIN to i64::MAX" => invalid("from_sequence"),
        pb::VerifyAuditLogRequest { from_sequence: i64::MIN, to_sequence: i64::MAX });

    let channel = &f.gateway.channel;
    for method in ["LookupAuditEvents", "StreamAuditEvents", "VerifyAuditLog"] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "AuditService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "AuditService",
        "LookupAuditEvents",
        "principal not UTF-8",
        invalid("principal"),
        field_bytes(2, b"alice\xff"),
    );
    raw_case(
        &mut cat,
        channel,
        "AuditService",
        "VerifyAuditLog",
        "from_sequence as bytes",
        invalid("from_sequence"),
        field_bytes(1, b"1"),
    );

    check(&f, "AuditService", cat).await;
}

// ---------------------------------------------------------------------------
// RegistryAccessService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn registry_access_service_refuses_bad_input_cleanly() {
    use ecr_gateway::pb::registry_access_service_client::RegistryAccessServiceClient;
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-access").await;
    let access = RegistryAccessServiceClient::new(f.gateway.channel.clone());
    let mut cat = Catalogue::new("bad-input-access@example.com");
    let fine = pb::GetRegistryCredentialsRequest {
        repositories: vec![f.repo_a.clone()],
        access: pb::RegistryAccess::Pull as i32,
        ..Default::default()
    };
    let duration = |seconds: i64, nanos: i32| Some(prost_types::Duration { seconds, nanos });

    identity_cases!(cat, access, get_registry_credentials, fine.clone());
    for (what, registry) in bad_registries() {
        case!(cat, access.get_registry_credentials, format!("registry {what}") => invalid("registry"),
            pb::GetRegistryCredentialsRequest { registry, ..fine.clone() });
    }
    for (what, name) in bad_names() {
        case!(cat, access.get_registry_credentials, format!("repositories[1] {what}") => invalid("repositories[1]"),
            pb::GetRegistryCredentialsRequest { repositories: vec![f.repo_a.clone(), name], ..fine.clone() });
    }
    for (what, prefix) in bad_prefixes().into_iter().chain([
        ("empty", String::new()),
        ("spanning namespaces", "pay".into()),
        ("outside every namespace", "elsewhere/".into()),
        ("a bare slash", "/".into()),
    ]) {
        case!(cat, access.get_registry_credentials, format!("repository_prefixes[0] {what}") => invalid("repository_prefixes[0]"),
            pb::GetRegistryCredentialsRequest { repositories: vec![], repository_prefixes: vec![prefix], ..fine.clone() });
    }
    case!(cat, access.get_registry_credentials, "an empty scope" => invalid("repositories"),
        pb::GetRegistryCredentialsRequest { repositories: vec![], ..fine.clone() });
    case!(cat, access.get_registry_credentials, "51 repositories" => invalid("repositories"),
    pb::GetRegistryCredentialsRequest {
        repositories: (0..51).map(|i| format!("payments/r{i}")).collect(),
        ..fine.clone()
    });
    for (what, value) in bad_enums() {
        case!(cat, access.get_registry_credentials, format!("access {what}") => invalid("access"),
            pb::GetRegistryCredentialsRequest { access: value, ..fine.clone() });
    }
    for (what, value) in [
        ("negative", duration(-1, 0)),
        ("with nanos", duration(3600, 5)),
        ("zero", duration(0, 0)),
        ("under 15 minutes", duration(899, 0)),
        ("over the configured maximum", duration(3601, 0)),
        ("over 12 hours", duration(12 * 3600 + 1, 0)),
        ("i64::MAX seconds", duration(i64::MAX, 0)),
        ("i64::MIN seconds", duration(i64::MIN, 0)),
    ] {
        case!(cat, access.get_registry_credentials, format!("duration {what}") => invalid("duration"),
            pb::GetRegistryCredentialsRequest { duration: value, ..fine.clone() });
    }
    // Valid, but this gateway issues no credentials ([access] is off): a clean refusal.
    case!(cat, access.get_registry_credentials, "valid while [access] is off" => Expect::Code(Code::FailedPrecondition),
        fine.clone());

    check(&f, "RegistryAccessService", cat).await;
}

// ---------------------------------------------------------------------------
// ComplianceService
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn compliance_service_refuses_bad_input_cleanly() {
    use ecr_gateway::pb::compliance_service_client::ComplianceServiceClient;
    let _serial = SERIAL.lock().await;
    count_panics();
    let f = fixture("bad-compliance").await;
    let compliance = ComplianceServiceClient::new(f.gateway.channel.clone());
    let mut cat = Catalogue::new("bad-input-compliance@example.com");
    // The gateway judges every registry as it starts; until then a listing is UNAVAILABLE.
    let mut waiting = compliance.clone();
    for _ in 0..100 {
        let first = waiting
            .get_compliance_summary(as_user(
                pb::GetComplianceSummaryRequest::default(),
                "waiter@example.com",
                "payments",
            ))
            .await;
        match first {
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => break,
        }
    }

    // ListPolicyViolations
    let list = pb::ListPolicyViolationsRequest::default();
    identity_cases!(cat, compliance, list_policy_violations, list.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.list_policy_violations, format!("registry {what}") => invalid("registry"),
            pb::ListPolicyViolationsRequest { registry, ..list.clone() });
    }
    for (what, prefix) in bad_prefixes() {
        case!(cat, compliance.list_policy_violations, format!("prefix {what}") => invalid("prefix"),
            pb::ListPolicyViolationsRequest { prefix, ..list.clone() });
    }
    for (what, rule) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "tags.required\0".into()),
        ("upper case", "TAGS.REQUIRED".into()),
        ("a family without a rule", "tags.".into()),
        ("of another kind", "deploy.scan-missing".into()),
        ("1000 characters", format!("tags.{}", "a".repeat(995))),
    ] {
        case!(cat, compliance.list_policy_violations, format!("rule {what}") => invalid("rule"),
            pb::ListPolicyViolationsRequest { rule, ..list.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, compliance.list_policy_violations, format!("page_size {what}") => invalid("page_size"),
            pb::ListPolicyViolationsRequest { page_size: size, ..list.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, compliance.list_policy_violations, format!("page_token {what}") => invalid("page_token"),
            pb::ListPolicyViolationsRequest { page_token: token, ..list.clone() });
    }
    empty_case!(cat, compliance.list_policy_violations, "prefix `_` (a LIKE wildcard, taken literally)" => violations,
        pb::ListPolicyViolationsRequest { prefix: "_".into(), ..list.clone() });
    case!(cat, compliance.list_policy_violations, "every error at once" => Expect::Invalid("registry".into()),
        pb::ListPolicyViolationsRequest { registry: "nope".into(), rule: "x".into(), page_size: -1, ..list.clone() });

    // GetComplianceSummary
    let summary = pb::GetComplianceSummaryRequest::default();
    identity_cases!(cat, compliance, get_compliance_summary, summary.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.get_compliance_summary, format!("registry {what}") => invalid("registry"),
            pb::GetComplianceSummaryRequest { registry, ..summary.clone() });
    }
    for (what, prefix) in bad_prefixes() {
        case!(cat, compliance.get_compliance_summary, format!("prefix {what}") => invalid("prefix"),
            pb::GetComplianceSummaryRequest { prefix, ..summary.clone() });
    }

    // RemediateRepositories (every case is refused before anything is recorded)
    let remediate = pb::RemediateRepositoriesRequest {
        repositories: vec![f.repo_a.clone()],
        dry_run: true,
        ..Default::default()
    };
    identity_cases!(cat, compliance, remediate_repositories, remediate.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.remediate_repositories, format!("registry {what}") => invalid("registry"),
            pb::RemediateRepositoriesRequest { registry, ..remediate.clone() });
    }
    case!(cat, compliance.remediate_repositories, "neither prefix nor repositories" => invalid("prefix"),
        pb::RemediateRepositoriesRequest { repositories: vec![], ..remediate.clone() });
    case!(cat, compliance.remediate_repositories, "both prefix and repositories" => invalid("repositories"),
        pb::RemediateRepositoriesRequest { prefix: "payments/".into(), ..remediate.clone() });
    for (what, prefix) in bad_prefixes() {
        case!(cat, compliance.remediate_repositories, format!("prefix {what}") => invalid("prefix"),
            pb::RemediateRepositoriesRequest { repositories: vec![], prefix, ..remediate.clone() });
    }
    for (what, name) in bad_names() {
        case!(cat, compliance.remediate_repositories, format!("repositories[1] {what}") => invalid("repositories[1]"),
            pb::RemediateRepositoriesRequest { repositories: vec![f.repo_a.clone(), name], ..remediate.clone() });
    }
    case!(cat, compliance.remediate_repositories, "1001 repositories" => invalid("repositories"),
    pb::RemediateRepositoriesRequest {
        repositories: (0..1001).map(|i| format!("payments/r{i}")).collect(),
        ..remediate.clone()
    });
    for (what, rule) in [
        ("SQL injection", SQL.to_owned()),
        ("with NUL", "tags.required\0".into()),
        ("upper case", "TAGS.REQUIRED".into()),
    ] {
        case!(cat, compliance.remediate_repositories, format!("rules[0] {what}") => invalid("rules[0]"),
            pb::RemediateRepositoriesRequest { rules: vec![rule], ..remediate.clone() });
    }
    for (what, key) in [
        ("empty key", String::new()),
        ("key with NUL", "team\0".into()),
        ("aws: key", "aws:team".into()),
    ] {
        case!(cat, compliance.remediate_repositories, format!("tags {what}") => invalid("tags"),
            pb::RemediateRepositoriesRequest { tags: [(key, "payments".to_owned())].into_iter().collect(), ..remediate.clone() });
    }
    for (what, request_id) in bad_request_ids() {
        case!(cat, compliance.remediate_repositories, format!("request_id {what}") => invalid("request_id"),
            pb::RemediateRepositoriesRequest { request_id, ..remediate.clone() });
    }
    case!(cat, compliance.remediate_repositories, "a repository the cache does not have" => Expect::Code(Code::NotFound),
        pb::RemediateRepositoriesRequest { repositories: vec!["payments/never-made".into()], ..remediate.clone() });
    case!(cat, compliance.remediate_repositories, "a prefix no repository has" => Expect::Code(Code::NotFound),
        pb::RemediateRepositoriesRequest { repositories: vec![], prefix: "payments/never-made-".into(), ..remediate.clone() });

    // GetRemediationRun, CancelRemediationRun
    let get = pb::GetRemediationRunRequest {
        id: UNKNOWN_ID.into(),
    };
    identity_cases!(cat, compliance, get_remediation_run, get.clone());
    for (what, id) in bad_ids() {
        case!(cat, compliance.get_remediation_run, format!("id {what}") => invalid("id"),
            pb::GetRemediationRunRequest { id });
    }
    case!(cat, compliance.get_remediation_run, "unknown id" => Expect::Code(Code::NotFound), get.clone());
    let cancel = pb::CancelRemediationRunRequest {
        id: UNKNOWN_ID.into(),
    };
    identity_cases!(cat, compliance, cancel_remediation_run, cancel.clone());
    for (what, id) in bad_ids() {
        case!(cat, compliance.cancel_remediation_run, format!("id {what}") => invalid("id"),
            pb::CancelRemediationRunRequest { id });
    }
    case!(cat, compliance.cancel_remediation_run, "unknown id" => Expect::Code(Code::NotFound), cancel.clone());

    // ListRemediationRuns
    let runs = pb::ListRemediationRunsRequest::default();
    identity_cases!(cat, compliance, list_remediation_runs, runs.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.list_remediation_runs, format!("registry {what}") => invalid("registry"),
            pb::ListRemediationRunsRequest { registry, ..runs.clone() });
    }
    for (what, size) in bad_page_sizes() {
        case!(cat, compliance.list_remediation_runs, format!("page_size {what}") => invalid("page_size"),
            pb::ListRemediationRunsRequest { page_size: size, ..runs.clone() });
    }
    for (what, token) in bad_tokens(&f) {
        case!(cat, compliance.list_remediation_runs, format!("page_token {what}") => invalid("page_token"),
            pb::ListRemediationRunsRequest { page_token: token, ..runs.clone() });
    }

    // GetCreationTemplates, SyncCreationTemplates, ListPullThroughCacheRules (admin only)
    let templates = pb::GetCreationTemplatesRequest::default();
    identity_cases!(cat, compliance, get_creation_templates, templates.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.get_creation_templates, format!("registry {what}") => invalid("registry"),
            pb::GetCreationTemplatesRequest { registry });
    }
    case!(cat, compliance.get_creation_templates, "a team member" => Expect::Code(Code::PermissionDenied), templates);
    let sync = pb::SyncCreationTemplatesRequest {
        validate_only: true,
        ..Default::default()
    };
    identity_cases!(cat, compliance, sync_creation_templates, sync.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.sync_creation_templates, format!("registry {what}") => invalid("registry"),
            pb::SyncCreationTemplatesRequest { registry, ..sync.clone() });
    }
    for (what, request_id) in bad_request_ids() {
        case!(cat, compliance.sync_creation_templates, format!("request_id {what}") => invalid("request_id"),
            pb::SyncCreationTemplatesRequest { request_id, validate_only: false, ..sync.clone() });
    }
    case!(cat, compliance.sync_creation_templates, "a team member" => Expect::Code(Code::PermissionDenied), sync);
    let rules = pb::ListPullThroughCacheRulesRequest::default();
    identity_cases!(cat, compliance, list_pull_through_cache_rules, rules.clone());
    for (what, registry) in bad_registries() {
        case!(cat, compliance.list_pull_through_cache_rules, format!("registry {what}") => invalid("registry"),
            pb::ListPullThroughCacheRulesRequest { registry });
    }
    case!(cat, compliance.list_pull_through_cache_rules, "a team member" => Expect::Code(Code::PermissionDenied), rules);

    let channel = &f.gateway.channel;
    for method in [
        "GetCreationTemplates",
        "SyncCreationTemplates",
        "ListPullThroughCacheRules",
        "ListPolicyViolations",
        "GetComplianceSummary",
        "RemediateRepositories",
        "GetRemediationRun",
        "ListRemediationRuns",
        "CancelRemediationRun",
    ] {
        for (what, body) in garbage_bodies() {
            raw_case(
                &mut cat,
                channel,
                "ComplianceService",
                method,
                what,
                invalid("body"),
                body,
            );
        }
    }
    raw_case(
        &mut cat,
        channel,
        "ComplianceService",
        "ListPolicyViolations",
        "rule not UTF-8",
        invalid("rule"),
        field_bytes(3, b"tags.\xc3\x28"),
    );

    check(&f, "ComplianceService", cat).await;
}
