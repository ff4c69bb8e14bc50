//! The OIDC issuer's signing keys (a JWKS), from a file read at start or from
//! a URL: fetched at start (a failure does not stop the gateway; tokens are
//! refused saying why until a fetch succeeds), refreshed periodically, and
//! refreshed when a token names an unknown `kid`, at most once per
//! `jwks_min_refresh_interval_seconds`. Concurrent callers share one fetch.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, watch};

/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Timeout of one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One verification key.
pub struct Key {
    /// The key as jsonwebtoken uses it.
    pub decoding: DecodingKey,
    /// The `alg` the JWKS pins the key to, if any.
    pub algorithm: Option<Algorithm>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Gets the JWKS document from where it is published.
#[async_trait::async_trait]
pub trait Fetch: Send + Sync {
    /// The raw document, or why there is none.
    async fn fetch(&self) -> Result<Vec<u8>, String>;
}

/// Why no key was found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The keys are known and none has this id.
    UnknownKid,
    /// No JWKS was ever loaded (the fetch failed), with the last failure.
    Unavailable(String),
}

/// One snapshot of the keys; replaced whole, never changed in place.
#[derive(Default)]
struct KeySet {
    keys: Arc<HashMap<String, Arc<Key>>>,
    /// Bumped by every successful load, so waiting callers see a refresh happened.
    generation: u64,
    last_error: Option<String>,
}

/// The cached key set and how it is refreshed.
pub struct Jwks {
    fetcher: Option<Box<dyn Fetch>>,
    /// Shown in reasons and logs: the URL or file.
    origin: String,
    /// Read without locking; only `fetch_and_store` replaces it, under `last_fetch`.
    set: ArcSwap<KeySet>,
    /// Held during a fetch (so there is one writer of `set`); the time of the last fetch attempt.
    last_fetch: Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
    refresh_interval: Duration,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Keys read once from a document (a `jwks_file`); never refreshed.
    pub fn from_document(origin: &str, document: &[u8]) -> Result<Jwks, String> {
        let keys = parse_jwks(document)?;
        Ok(Jwks {
            fetcher: None,
            origin: origin.to_owned(),
            set: ArcSwap::from_pointee(KeySet {
                keys: Arc::new(keys),
                generation: 1,
                last_error: None,
            }),
            last_fetch: Mutex::new(None),
            min_refresh_interval: Duration::MAX,
            refresh_interval: Duration::MAX,
        })
    }

    /// Keys fetched by `fetcher`; empty until [`Jwks::refresh`] succeeds.
    pub fn fetched(
        origin: &str,
        fetcher: Box<dyn Fetch>,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
    ) -> Jwks {
        Jwks {
            fetcher: Some(fetcher),
            origin: origin.to_owned(),
            set: ArcSwap::from_pointee(KeySet {
                last_error: Some("not fetched yet".into()),
                ..KeySet::default()
            }),
            last_fetch: Mutex::new(None),
            min_refresh_interval,
            refresh_interval,
        }
    }

    /// Keys fetched over HTTP(S) from `url`.
    pub fn from_url(url: &str, refresh_interval: Duration, min_refresh_interval: Duration) -> Jwks {
        Self::fetched(
            url,
            Box::new(HttpFetcher::new(url)),
            refresh_interval,
            min_refresh_interval,
        )
    }

    /// Whether the keys come from a URL (and are refreshed).
    pub fn is_fetched(&self) -> bool {
        self.fetcher.is_some()
    }

    /// The key with id `kid`; an unknown id triggers a (rate-limited) refresh.
    pub async fn key(&self, kid: &str) -> Result<Arc<Key>, KeyLookupError> {
        let generation = {
            let set = self.set.load();
            if let Some(key) = set.keys.get(kid) {
                return Ok(key.clone());
            }
            set.generation
        };
        if self.fetcher.is_some() {
            self.refresh_for_unknown_kid(generation).await;
        }
        let set = self.set.load();
        match (set.keys.get(kid), &set.last_error) {
            (Some(key), _) => Ok(key.clone()),
            (None, Some(error)) if set.generation == 0 => Err(KeyLookupError::Unavailable(format!(
                "the issuer's signing keys are not available yet (fetching {} failed: {error}); retrying",
                self.origin
            ))),
            (None, _) => Err(KeyLookupError::UnknownKid),
        }
    }

    async fn refresh_for_unknown_kid(&self, seen_generation: u64) {
        let mut last_fetch = self.last_fetch.lock().await;
        if self.generation() != seen_generation {
            return; // another caller's refresh finished while this one waited
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return;
        }
        *last_fetch = Some(Instant::now());
        self.fetch_and_store().await;
    }

    /// Fetches now (at start, and periodically); returns whether keys were loaded.
    pub async fn refresh(&self) -> bool {
        let mut last_fetch = self.last_fetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch_and_store().await
    }

    fn generation(&self) -> u64 {
        self.set.load().generation
    }

    async fn fetch_and_store(&self) -> bool {
        let Some(fetcher) = &self.fetcher else {
            return false;
        };
        let result = fetcher.fetch().await.and_then(|document| parse_jwks(&document));
        // The caller holds `last_fetch`, so nothing replaces `set` between this load and the store.
        let held = self.set.load_full();
        match result {
            Ok(keys) => {
                tracing::info!(origin = %self.origin, keys = keys.len(), "loaded the OIDC issuer's signing keys");
                self.set.store(Arc::new(KeySet {
                    keys: Arc::new(keys),
                    generation: held.generation + 1,
                    last_error: None,
                }));
                true
            }
            Err(error) => {
                tracing::warn!(origin = %self.origin, %error, "fetching the OIDC issuer's signing keys failed; keeping the keys held");
                self.set.store(Arc::new(KeySet {
                    keys: held.keys.clone(),
                    generation: held.generation,
                    last_error: Some(error),
                }));
                false
            }
        }
    }

    /// Refreshes a fetched key set until `stop` flips: every refresh interval
    /// after a success, every minimum refresh interval while fetches fail.
    pub async fn run_refresh(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.fetcher.is_none() {
            return;
        }
        loop {
            let loaded = {
                let set = self.set.load();
                set.generation > 0 && set.last_error.is_none()
            };
            let wait = if loaded {
                self.refresh_interval
            } else {
                self.min_refresh_interval
            };
            if !crate::tasks::pause(wait, &mut stop).await {
                return;
            }
            self.refresh().await;
        }
    }
}

/// Reads a JWKS document; keys that cannot verify signatures (no `kid`,
/// symmetric, encryption-only, unknown types) are skipped.
pub fn parse_jwks(document: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document)
        .map_err(|e| format!("not a JWKS document (a JSON object with `keys`): {e}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some((kid, key)) = usable_key(&jwk) {
            keys.insert(kid, Arc::new(key));
        }
    }
    if keys.is_empty() {
        return Err("holds no usable signing key (RSA, EC or OKP with a `kid`)".into());
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk) -> Option<(String, Key)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None; // a shared secret is never an issuer's verification key
    }
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, Key { decoding, algorithm }))
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Fetches a JWKS over HTTP(S) with a timeout and a body limit.
struct HttpFetcher {
    url: String,
    /// Built at the first fetch: checking a configuration reads no CA store.
    client: std::sync::OnceLock<HttpClient>,
}

impl HttpFetcher {
    fn new(url: &str) -> HttpFetcher {
        HttpFetcher {
            url: url.to_owned(),
            client: std::sync::OnceLock::new(),
        }
    }

    fn client(&self) -> &HttpClient {
        self.client.get_or_init(Self::build_client)
    }

    fn build_client() -> HttpClient {
        let provider = crate::tls::provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(%error, "no system CA certificates: https JWKS URLs cannot be verified");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("aws-lc-rs supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        // Plain http is accepted by the configuration only for loopback hosts.
        let connector = builder.https_or_http().enable_http1().build();
        Client::builder(TokioExecutor::new()).build(connector)
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let uri: http::Uri = self.url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let response = self
            .client()
            .get(uri)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed (limit {MAX_JWKS_BYTES} bytes): {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
}

#[async_trait::async_trait]
impl Fetch for HttpFetcher {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Serves a fixed document and counts the fetches.
    struct Counting {
        document: Vec<u8>,
        fetches: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl Fetch for Counting {
        async fn fetch(&self) -> Result<Vec<u8>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(self.document.clone())
        }
    }

    const EC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn counting(min_interval: Duration) -> (Jwks, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = Jwks::fetched(
            "test",
            Box::new(Counting {
                document: EC_JWKS.as_bytes().to_vec(),
                fetches: fetches.clone(),
            }),
            Duration::from_secs(3600),
            min_interval,
        );
        (jwks, fetches)
    }

    #[tokio::test]
    async fn unknown_key_ids_refresh_at_most_once_per_interval() {
        let (jwks, fetches) = counting(Duration::from_secs(60));
        assert!(jwks.refresh().await);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // The start-up fetch was just now: unknown ids do not fetch again.
        for _ in 0..5 {
            assert_eq!(jwks.key("other").await.err(), Some(KeyLookupError::UnknownKid));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(jwks.key("k1").await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_callers_with_an_unknown_key_id_share_one_fetch() {
        let (jwks, fetches) = counting(Duration::from_millis(1));
        let jwks = Arc::new(jwks);
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let jwks = jwks.clone();
                tokio::spawn(async move { jwks.key("k1").await.is_ok() })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.expect("task"));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_that_never_loaded_say_why() {
        struct Failing;
        #[async_trait::async_trait]
        impl Fetch for Failing {
            async fn fetch(&self) -> Result<Vec<u8>, String> {
                Err("connection refused".into())
            }
        }
        let jwks = Jwks::fetched(
            "https://login.example.com/jwks",
            Box::new(Failing),
            Duration::from_secs(3600),
            Duration::from_secs(30),
        );
        assert!(!jwks.refresh().await);
        match jwks.key("k1").await {
            Err(KeyLookupError::Unavailable(reason)) => {
                assert!(reason.contains("connection refused"), "{reason}");
                assert!(reason.contains("https://login.example.com/jwks"), "{reason}");
            }
            other => panic!("expected Unavailable, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_keys_held() {
        /// Serves the document once, then fails.
        struct Once(AtomicUsize);
        #[async_trait::async_trait]
        impl Fetch for Once {
            async fn fetch(&self) -> Result<Vec<u8>, String> {
                match self.0.fetch_add(1, Ordering::SeqCst) {
                    0 => Ok(EC_JWKS.as_bytes().to_vec()),
                    _ => Err("connection refused".into()),
                }
            }
        }
        let jwks = Jwks::fetched(
            "test",
            Box::new(Once(AtomicUsize::new(0))),
            Duration::from_secs(3600),
            Duration::from_millis(1),
        );
        assert!(jwks.refresh().await);
        assert!(!jwks.refresh().await);
        assert!(jwks.key("k1").await.is_ok());
        // Keys were loaded once, so an unknown id is unknown, not unavailable.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(jwks.key("other").await.err(), Some(KeyLookupError::UnknownKid));
        assert_eq!(jwks.generation(), 1);
    }

    #[test]
    fn symmetric_and_unnamed_keys_are_skipped() {
        let document = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(
            parse_jwks(document.as_bytes())
                .expect_err("nothing usable")
                .contains("no usable")
        );
        assert!(parse_jwks(b"[]").expect_err("not a set").contains("not a JWKS"));
        assert_eq!(parse_jwks(EC_JWKS.as_bytes()).expect("keys").len(), 1);
    }
}
