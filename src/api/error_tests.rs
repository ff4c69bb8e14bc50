//! Unit tests of the `ApiError → tonic::Status` mapping.

use super::*;

#[test]
fn every_violation_becomes_a_field_violation_with_its_rule() {
    let error = ApiError::InvalidArgument {
        reason: "ORG_POLICY_VIOLATION",
        violations: vec![
            Violation::new("repository", "naming.namespace", "use a team namespace"),
            Violation::new("settings.tags", "tags.required", "add `team`"),
        ],
    };
    let status = error.to_status();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let bad_request = details.bad_request().expect("bad request");
    assert_eq!(bad_request.field_violations.len(), 2);
    assert_eq!(bad_request.field_violations[0].reason, "NAMING_NAMESPACE");
    assert_eq!(details.error_info().expect("info").domain, ERROR_DOMAIN);
    assert!(status.message().starts_with("2 problems"));
}

#[test]
fn unavailable_carries_retry_info() {
    let status = ApiError::Unavailable {
        reason: "ECR_UNAVAILABLE",
        description: "down".into(),
        retry_after: Duration::from_secs(5),
    }
    .to_status();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_details_retry_info().is_some());
}

#[test]
fn an_open_breaker_is_unavailable_naming_the_registry_with_the_rest_of_the_cool_down() {
    let error = EcrError::CircuitOpen {
        operation: "CreateRepository",
        refusal: crate::ecr::BreakerOpen {
            registry: "main".into(),
            reason: "5 ECR calls in a row failed".into(),
            retry_after: Duration::from_millis(11_400),
        },
    };

    let status = ApiError::from(error).to_status();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.get_details_error_info().expect("info").reason,
        "ECR_CIRCUIT_OPEN"
    );
    assert_eq!(
        status.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_millis(11_400))
    );
    assert!(status.message().contains("`main`"), "{}", status.message());
    assert!(status.message().contains("retry in 12 s"), "{}", status.message());
    assert!(
        status.message().contains("consistency CONSISTENCY_CACHED"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("5 ECR calls in a row failed"),
        "{}",
        status.message()
    );
}

#[test]
fn an_error_lists_what_fits_its_trailers_and_counts_the_rest() {
    let error = invalid(
        (0..10_000)
            .map(|i| {
                Violation::new(
                    format!("update_mask.paths[{i}]"),
                    "update-mask.unknown-path",
                    "x".repeat(600),
                )
            })
            .collect(),
    );
    let status = error.to_status();
    let listed = status
        .get_details_bad_request()
        .expect("bad request")
        .field_violations;
    assert!((1..100).contains(&listed.len()), "{}", listed.len());
    assert!(
        status
            .message()
            .ends_with(&format!("and {} more", 10_000 - listed.len()))
    );
    assert!(listed[0].description.ends_with('…'));
    let trailers: usize = status
        .into_http::<String>()
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    assert!(trailers < 8 * 1024, "{trailers} bytes of trailers");
}

#[test]
fn an_undecodable_body_names_the_field_prost_names() {
    let nested = undecodable(
        "RepositorySettings.tags: CreateRepositoryRequest.settings: invalid string value: data is not UTF-8 encoded",
    );
    let status = nested.to_status();
    assert_eq!(status.code(), Code::InvalidArgument);
    let field = &status
        .get_details_bad_request()
        .expect("bad request")
        .field_violations[0]
        .field;
    assert_eq!(field, "settings.tags");
    assert!(status.message().contains("invalid string value"));
    let whole = undecodable("invalid wire type value: 7").to_status();
    assert_eq!(
        whole
            .get_details_bad_request()
            .expect("bad request")
            .field_violations[0]
            .field,
        "body"
    );
}

#[test]
fn only_tonics_decode_failure_is_rewritten() {
    let undecodable = Status::internal(format!("{UNDECODABLE}invalid varint")).into_http::<String>();
    assert_eq!(
        Status::from_header_map(answer_undecodable(undecodable).headers()).map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let internal = ApiError::Internal {
        reference: Uuid::nil(),
    }
    .to_status()
    .into_http::<String>();
    assert_eq!(
        Status::from_header_map(answer_undecodable(internal).headers()).map(|s| s.code()),
        Some(Code::Internal)
    );
}

#[test]
fn rule_ids_become_upper_snake_reasons() {
    assert_eq!(rule_reason("naming.max-depth"), "NAMING_MAX_DEPTH");
}
