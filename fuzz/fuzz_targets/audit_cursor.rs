//! Audit stream cursors: any string decodes to a sequence the API sealed or
//! to INVALID_ARGUMENT on `cursor`; a cursor the API writes decodes to its sequence.
#![no_main]

use ecr_gateway::api::page_token::PageKey;
use ecr_gateway::api::error::ApiError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = PageKey::from_bytes(&[7; 32]);
    let text = String::from_utf8_lossy(data);
    match key.decode_cursor(&text) {
        Ok(seq) => assert!(seq >= 0),
        Err(error) => assert!(
            matches!(&error, ApiError::InvalidArgument { violations, .. }
                if violations.iter().all(|v| v.field == "cursor")),
            "{error:?}"
        ),
    }
    if data.len() >= 8 {
        let seq = i64::from_le_bytes(data[..8].try_into().unwrap_or_default()).saturating_abs();
        assert_eq!(key.decode_cursor(&key.encode_cursor(seq)).ok(), Some(seq));
    }
});
