//! Page tokens: any string decodes to a position or to INVALID_ARGUMENT on
//! `page_token`; a token made for a position decodes to it for the same
//! query and is refused for another.
#![no_main]

use ecr_gateway::api::error::ApiError;
use ecr_gateway::api::page_token::PageKey;
use libfuzzer_sys::fuzz_target;

type Position = (String, i64);

fn names_page_token(error: &ApiError) -> bool {
    matches!(error, ApiError::InvalidArgument { violations, .. }
        if !violations.is_empty() && violations.iter().all(|v| v.field == "page_token"))
}

fuzz_target!(|text: &str| {
    let key = PageKey::from_bytes(&[7; 32]);
    let decode = |token: &str, query: &str| key.decode::<Position>(token, query);
    let encode = |query: &str, position: &Position| key.encode(query, position);
    match decode(text, "query-a") {
        Ok(Some(position)) => {
            let again = decode(&encode("query-a", &position), "query-a");
            assert_eq!(again.ok().flatten(), Some(position));
        }
        Ok(None) => assert!(text.is_empty()),
        Err(error) => assert!(names_page_token(&error), "{error:?}"),
    }
    // The input as a position: it survives a round trip, and only for its own
    // query. Positions come from Postgres, which stores no U+0000: a token
    // holding one was not issued by the gateway and is refused as malformed.
    let position: Position = (text.to_owned(), text.len() as i64 * 7919 - 1_000_000);
    let token = encode("query-a", &position);
    if text.contains('\0') {
        let refused = decode(&token, "query-a").expect_err("a position with U+0000");
        assert!(names_page_token(&refused), "{refused:?}");
    } else if token.len() <= 4096 {
        assert_eq!(
            decode(&token, "query-a").ok().flatten(),
            Some(position)
        );
        let other = decode(&token, "query-b").expect_err("another query's token");
        assert!(names_page_token(&other), "{other:?}");
    }
});
