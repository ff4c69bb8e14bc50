//! Audit stream cursors: a cursor that decodes is exactly the one the API
//! writes for that sequence; anything else is INVALID_ARGUMENT on `cursor`.
#![no_main]

use ecr_gateway::api::audit::{decode_cursor, encode_cursor};
use ecr_gateway::api::error::ApiError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match decode_cursor(&text) {
        Ok(seq) => {
            assert!(seq >= 0);
            assert_eq!(encode_cursor(seq), text);
        }
        Err(error) => assert!(
            matches!(&error, ApiError::InvalidArgument { violations, .. }
                if violations.iter().all(|v| v.field == "cursor")),
            "{error:?}"
        ),
    }
    if data.len() >= 8 {
        let seq = i64::from_le_bytes(data[..8].try_into().unwrap_or_default()).saturating_abs();
        assert_eq!(decode_cursor(&encode_cursor(seq)).ok(), Some(seq));
    }
});
