//! Opaque, tamper-evident, query-bound page tokens (AIP-158).
//!
//! A token is the keyset position and a fingerprint of the filters that made
//! it, as JSON, sealed with AES-256-GCM-SIV under the deployment's page-token
//! key ([`PageKey`]; docs/security.md, "Page tokens"): base64url of a version
//! byte, the 12-byte nonce and the ciphertext with its tag. A caller can read
//! nothing out of a token and can change nothing in one: an edited, truncated
//! or foreign token (another deployment's key) does not open and is
//! INVALID_ARGUMENT (`page-token.malformed`); one that opens but was issued
//! for other filters is `page-token.query-mismatch`. Audit stream cursors are
//! sealed the same way (under another associated-data label, so neither
//! passes for the other).
//!
//! Every replica must seal with the same key, and tokens must outlive a
//! restart: the key is `[server] page_token_key_file` when that is set, else
//! a random key generated once and kept in Postgres ([`PageKeys`]).

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};

use super::error::ApiError;
use crate::store::{Store, StoreError};

/// Default page size.
pub const DEFAULT_PAGE_SIZE: i32 = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;
/// The first byte of every sealed token: the format (and key derivation) version.
const VERSION: u8 = 1;
/// Associated data of page tokens.
const PAGE_AAD: &[u8] = b"ecr-gateway page token v1";
/// Associated data of audit stream cursors.
const CURSOR_AAD: &[u8] = b"ecr-gateway audit stream cursor v1";
/// Length of a page-token key.
pub const KEY_BYTES: usize = 32;

#[derive(Serialize, Deserialize)]
struct Envelope<P> {
    /// Fingerprint of the query.
    q: String,
    /// Position.
    p: P,
}

/// The key that seals page tokens and stream cursors. Its Debug form shows nothing of it.
pub struct PageKey {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageKey(redacted)")
    }
}

impl PageKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> PageKey {
        PageKey {
            // Only a wrong length fails, and the length is a type here.
            key: RandomizedNonceKey::new(&AES_256_GCM_SIV, bytes).expect("a 32-byte AES-256-GCM-SIV key"),
        }
    }

    /// 32 new random bytes for a key.
    pub fn generate() -> [u8; KEY_BYTES] {
        let mut bytes = [0u8; KEY_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system's random number generator");
        bytes
    }

    /// Reads a key file: 64 hex characters (surrounding whitespace ignored).
    pub fn load(path: &std::path::Path) -> Result<PageKey, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes: [u8; KEY_BYTES] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{}: not a page-token key (64 hex characters)", path.display()))?;
        Ok(PageKey::from_bytes(&bytes))
    }

    fn seal(&self, aad: &[u8], mut plaintext: Vec<u8>) -> String {
        let Ok(nonce) = self.key.seal_in_place_append_tag(Aad::from(aad), &mut plaintext) else {
            // Only a failing random number generator gets here; an empty
            // token ends the listing rather than leaking a position.
            tracing::error!("a page token could not be sealed; answering without one");
            return String::new();
        };
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&plaintext);
        URL_SAFE_NO_PAD.encode(sealed)
    }

    fn open(&self, aad: &[u8], token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut sealed = URL_SAFE_NO_PAD.decode(token).ok()?;
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).ok()?;
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut sealed[1 + NONCE_LEN..])
            .ok()?;
        Some(opened.to_vec())
    }

    /// Seals a position for the query with `fingerprint`.
    pub fn encode<P: Serialize>(&self, fingerprint: &str, position: &P) -> String {
        let envelope = Envelope {
            q: fingerprint.to_owned(),
            p: position,
        };
        self.seal(PAGE_AAD, serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// Opens a token; empty means the first page.
    pub fn decode<P: DeserializeOwned>(&self, token: &str, fingerprint: &str) -> Result<Option<P>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed = || {
            ApiError::invalid(
                "page_token",
                "page-token.malformed",
                "not a token this API issued; pass next_page_token from the previous response unchanged",
            )
        };
        let bytes = self.open(PAGE_AAD, token).ok_or_else(malformed)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        // Positions are keys read from Postgres, which holds no U+0000: such a token was made up.
        if holds_nul(&value) {
            return Err(malformed());
        }
        let envelope: Envelope<P> = serde_json::from_value(value).map_err(|_| malformed())?;
        if envelope.q != fingerprint {
            return Err(ApiError::invalid(
                "page_token",
                "page-token.query-mismatch",
                "this token was issued for a request with other filters; repeat the original filters or start without a token",
            ));
        }
        Ok(Some(envelope.p))
    }

    /// A stream cursor: the chain sequence of the last event sent (or scanned past), sealed.
    pub fn encode_cursor(&self, seq: i64) -> String {
        self.seal(CURSOR_AAD, seq.to_be_bytes().to_vec())
    }

    /// The sequence of a cursor [`PageKey::encode_cursor`] made; anything
    /// else (edited, truncated, made up, another deployment's) is INVALID_ARGUMENT.
    pub fn decode_cursor(&self, cursor: &str) -> Result<i64, ApiError> {
        self.open(CURSOR_AAD, cursor)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(i64::from_be_bytes)
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "audit-stream.cursor",
                    "not a cursor this API issued: pass a StreamAuditEventsResponse.cursor unchanged",
                )
            })
    }
}

impl PageKey {
    /// A WatchImages cursor: the change-log seq of the last change sent (or
    /// scanned past), sealed apart from audit cursors (neither opens as the other).
    pub fn encode_change_cursor(&self, seq: i64) -> String {
        self.seal(CHANGE_CURSOR_AAD, seq.to_be_bytes().to_vec())
    }

    /// The seq of a cursor [`PageKey::encode_change_cursor`] made; anything
    /// else is INVALID_ARGUMENT.
    pub fn decode_change_cursor(&self, cursor: &str) -> Result<i64, crate::domain::Violation> {
        self.open(CHANGE_CURSOR_AAD, cursor)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(i64::from_be_bytes)
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                crate::domain::Violation::new(
                    "cursor",
                    "watch-images.cursor",
                    "not a cursor this API issued: pass a WatchImagesResponse.cursor unchanged",
                )
            })
    }
}

/// The additional data that tells change-log cursors from audit cursors and page tokens.
const CHANGE_CURSOR_AAD: &[u8] = b"ecr-gateway watch-images cursor v1";

/// The deployment's page-token key: the configured one, or the one kept in
/// Postgres (generated by whichever replica asks first, read by the others),
/// fetched on first use and kept for the life of the process.
#[derive(Debug, Default)]
pub struct PageKeys {
    configured: Option<Arc<PageKey>>,
    stored: tokio::sync::OnceCell<Arc<PageKey>>,
}

impl PageKeys {
    /// Keys from `[server] page_token_key_file`, or (None) from Postgres.
    pub fn new(configured: Option<PageKey>) -> PageKeys {
        PageKeys {
            configured: configured.map(Arc::new),
            stored: tokio::sync::OnceCell::new(),
        }
    }

    /// The key (from Postgres on first use when none is configured).
    pub async fn get(&self, store: &Store) -> Result<Arc<PageKey>, StoreError> {
        if let Some(key) = &self.configured {
            return Ok(key.clone());
        }
        let key = self
            .stored
            .get_or_try_init(|| async {
                let bytes = crate::store::secrets::page_token_key(store.pool(), &PageKey::generate()).await?;
                Ok::<_, StoreError>(Arc::new(stored_key(&bytes)?))
            })
            .await?;
        Ok(key.clone())
    }
}

/// A key read back from Postgres (the column is checked to hold 32 bytes).
fn stored_key(bytes: &[u8]) -> Result<PageKey, StoreError> {
    let bytes: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
        StoreError::Other(sqlx::Error::Protocol(
            "the stored page-token key is not 32 bytes".into(),
        ))
    })?;
    Ok(PageKey::from_bytes(&bytes))
}

/// The page size a request asked for: 0 → default; outside 1..=1000 → INVALID_ARGUMENT.
pub fn page_size(requested: i32) -> Result<i64, ApiError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as i64),
        1..=MAX_PAGE_SIZE => Ok(requested as i64),
        _ => Err(ApiError::invalid(
            "page_size",
            "page-size.range",
            format!("{requested} is outside 0-{MAX_PAGE_SIZE}; 0 means {DEFAULT_PAGE_SIZE}"),
        )),
    }
}

/// A fingerprint of the filters of a query.
pub fn fingerprint(query: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(query).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// Whether any string in `value` (keys included) holds U+0000.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
    }
}

/// Cuts `rows` (fetched with `limit + 1`) to `limit` and returns the token of
/// the next page (empty on the last page), made by `token` from the last row kept.
pub fn next_token<T>(rows: &mut Vec<T>, limit: i64, token: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(token).unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PageKey {
        PageKey::from_bytes(&[7u8; KEY_BYTES])
    }

    fn rule_of(error: &ApiError) -> (String, &'static str) {
        match error {
            ApiError::InvalidArgument { violations, .. } => (violations[0].field.clone(), violations[0].rule),
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn a_token_round_trips_for_the_same_query() {
        let fp = fingerprint(&("payments/", 1));
        let token = key().encode(&fp, &("123456789012", "us-east-1", "payments/api"));
        let position: Option<(String, String, String)> = key().decode(&token, &fp).expect("valid");
        assert_eq!(position.expect("some").2, "payments/api");
    }

    #[test]
    fn a_token_from_another_query_is_rejected() {
        let token = key().encode(&fingerprint(&"a"), &1);
        let error = key()
            .decode::<i32>(&token, &fingerprint(&"b"))
            .expect_err("mismatch");
        assert!(error.to_string().contains("other filters"));
        assert_eq!(
            rule_of(&error),
            ("page_token".into(), "page-token.query-mismatch")
        );
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        for token in ["%%%", "bm90IGpzb24", &"A".repeat(5000)] {
            assert!(key().decode::<i32>(token, "x").is_err(), "{token}");
        }
    }

    #[test]
    fn a_token_reveals_nothing_of_its_position_or_its_query() {
        let fp = fingerprint(&"search/");
        let token = key().encode(&fp, &("123456789012", "us-east-1", "search/indexer"));
        let bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["search", "indexer", "123456789012", "us-east-1", fp.as_str()] {
            assert!(!text.contains(secret), "{secret} readable in {text:?}");
        }
        assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
        // Two tokens of the same position differ (a fresh nonce each time).
        assert_ne!(
            token,
            key().encode(&fp, &("123456789012", "us-east-1", "search/indexer"))
        );
    }

    #[test]
    fn an_edited_token_is_malformed() {
        let fp = fingerprint(&"q");
        let token = key().encode(&fp, &("acct", "region", "payments/api"));
        let bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        for index in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut edited = bytes.clone();
                edited[index] ^= bit;
                let error = key()
                    .decode::<(String, String, String)>(&URL_SAFE_NO_PAD.encode(&edited), &fp)
                    .expect_err("edited");
                assert_eq!(
                    rule_of(&error),
                    ("page_token".into(), "page-token.malformed"),
                    "byte {index}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_or_extended_token_is_malformed() {
        let fp = fingerprint(&"q");
        let token = key().encode(&fp, &1);
        let bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        for cut in 0..bytes.len() {
            let truncated = URL_SAFE_NO_PAD.encode(&bytes[..cut]);
            if truncated.is_empty() {
                continue; // empty is the first page
            }
            let error = key().decode::<i32>(&truncated, &fp).expect_err("truncated");
            assert_eq!(rule_of(&error), ("page_token".into(), "page-token.malformed"));
        }
        let error = key()
            .decode::<i32>(&format!("{token}AA"), &fp)
            .expect_err("extended");
        assert_eq!(rule_of(&error), ("page_token".into(), "page-token.malformed"));
    }

    #[test]
    fn a_token_of_another_deployment_is_malformed() {
        let fp = fingerprint(&"q");
        let foreign = PageKey::from_bytes(&[8u8; KEY_BYTES]).encode(&fp, &1);
        let error = key().decode::<i32>(&foreign, &fp).expect_err("foreign");
        assert_eq!(rule_of(&error), ("page_token".into(), "page-token.malformed"));
    }

    #[test]
    fn a_plain_token_of_the_old_format_is_malformed() {
        // What tokens used to be: readable JSON, editable at will.
        let fp = fingerprint(&"q");
        let plain =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&serde_json::json!({"q": fp, "p": 1})).unwrap());
        let error = key().decode::<i32>(&plain, &fp).expect_err("plain");
        assert_eq!(rule_of(&error), ("page_token".into(), "page-token.malformed"));
    }

    #[test]
    fn a_position_with_the_text_of_an_escaped_nul_is_still_a_token() {
        // A backslash and `u0000` are six characters of text, not U+0000 (a
        // first NUL check looked for the escape in the JSON bytes and refused this).
        let fp = fingerprint(&"q");
        let position = ("a\\u0000b".to_owned(), 1i64);
        let token = key().encode(&fp, &position);
        assert_eq!(
            key().decode::<(String, i64)>(&token, &fp).ok().flatten(),
            Some(position)
        );
    }

    #[test]
    fn a_position_with_nul_is_not_a_token_this_api_made() {
        let fp = fingerprint(&"q");
        let token = key().encode(&fp, &("a\u{0}b", 1));
        assert!(key().decode::<(String, i32)>(&token, &fp).is_err());
    }

    #[test]
    fn cursors_round_trip_and_edited_ones_are_refused() {
        let cursor = key().encode_cursor(42);
        assert_eq!(key().decode_cursor(&cursor).expect("valid"), 42);
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).expect("base64url");
        for index in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[index] ^= 0x01;
            let error = key()
                .decode_cursor(&URL_SAFE_NO_PAD.encode(&edited))
                .expect_err("edited");
            assert_eq!(rule_of(&error), ("cursor".into(), "audit-stream.cursor"));
        }
        for made_up in ["seq:7", "", "AAAA"] {
            assert!(key().decode_cursor(made_up).is_err(), "{made_up}");
        }
        assert!(
            PageKey::from_bytes(&[9u8; KEY_BYTES])
                .decode_cursor(&cursor)
                .is_err()
        );
    }

    #[test]
    fn a_page_token_is_not_a_cursor_nor_a_cursor_a_page_token() {
        let fp = fingerprint(&"q");
        let token = key().encode(&fp, &42i64);
        assert!(key().decode_cursor(&token).is_err());
        let cursor = key().encode_cursor(42);
        assert!(key().decode::<i64>(&cursor, &fp).is_err());
    }

    #[test]
    fn the_key_is_not_in_its_debug_form() {
        assert_eq!(format!("{:?}", key()), "PageKey(redacted)");
    }

    #[test]
    fn a_key_file_holds_64_hex_characters() {
        let dir = std::env::temp_dir().join(format!("page-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", hex::encode([7u8; KEY_BYTES]))).expect("write");
        let token = PageKey::load(&good).expect("loads").encode("fp", &1);
        assert_eq!(key().decode::<i32>(&token, "fp").expect("same key"), Some(1));
        let bad = dir.join("bad");
        std::fs::write(&bad, "abcd").expect("write");
        let problem = PageKey::load(&bad).expect_err("short");
        assert!(problem.contains("64 hex characters"), "{problem}");
        assert!(!problem.contains("abcd"), "{problem}");
    }

    #[test]
    fn page_sizes_outside_the_range_are_rejected() {
        assert_eq!(page_size(0).expect("default"), 100);
        assert_eq!(page_size(1000).expect("max"), 1000);
        assert!(page_size(-1).is_err());
        assert!(page_size(1001).is_err());
    }
}
