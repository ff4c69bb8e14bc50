//! Opaque, query-bound page tokens (AIP-158): base64url of JSON holding the
//! keyset position and a fingerprint of the filters that made it. A token
//! used with other filters, or edited, is INVALID_ARGUMENT.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};

use super::error::ApiError;

/// Default page size.
pub const DEFAULT_PAGE_SIZE: i32 = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Serialize, Deserialize)]
struct Envelope<P> {
    /// Fingerprint of the query.
    q: String,
    /// Position.
    p: P,
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

/// Encodes a position for the query with `fingerprint`.
pub fn encode<P: Serialize>(fingerprint: &str, position: &P) -> String {
    let envelope = Envelope {
        q: fingerprint.to_owned(),
        p: position,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Decodes a token; empty means the first page.
pub fn decode<P: DeserializeOwned>(token: &str, fingerprint: &str) -> Result<Option<P>, ApiError> {
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
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
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

    #[test]
    fn a_token_round_trips_for_the_same_query() {
        let fp = fingerprint(&("payments/", 1));
        let token = encode(&fp, &("123456789012", "us-east-1", "payments/api"));
        let position: Option<(String, String, String)> = decode(&token, &fp).expect("valid");
        assert_eq!(position.expect("some").2, "payments/api");
    }

    #[test]
    fn a_token_from_another_query_is_rejected() {
        let token = encode(&fingerprint(&"a"), &1);
        let error = decode::<i32>(&token, &fingerprint(&"b")).expect_err("mismatch");
        assert!(error.to_string().contains("other filters"));
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        for token in ["%%%", "bm90IGpzb24", &"A".repeat(5000)] {
            assert!(decode::<i32>(token, "x").is_err(), "{token}");
        }
    }

    #[test]
    fn a_position_with_the_text_of_an_escaped_nul_is_still_a_token() {
        // A backslash and `u0000` are six characters of text, not U+0000 (a
        // first NUL check looked for the escape in the JSON bytes and refused this).
        let fp = fingerprint(&"q");
        let position = ("a\\u0000b".to_owned(), 1i64);
        let token = encode(&fp, &position);
        assert_eq!(
            decode::<(String, i64)>(&token, &fp).ok().flatten(),
            Some(position)
        );
    }

    #[test]
    fn a_position_with_nul_is_not_a_token_this_api_made() {
        let fp = fingerprint(&"q");
        let token = encode(&fp, &("a\u{0}b", 1));
        assert!(decode::<(String, i32)>(&token, &fp).is_err());
    }

    #[test]
    fn page_sizes_outside_the_range_are_rejected() {
        assert_eq!(page_size(0).expect("default"), 100);
        assert_eq!(page_size(1000).expect("max"), 1000);
        assert!(page_size(-1).is_err());
        assert!(page_size(1001).is_err());
    }
}
