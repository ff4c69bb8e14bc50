//! Classification of ECR failures: the rest of the gateway decides on the
//! class, never on SDK types.

use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};

use super::breaker::BreakerOpen;

/// What went wrong with an ECR call. Each variant's doc names the gRPC code it becomes.
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// The repository, image or policy does not exist. → NOT_FOUND
    #[error("{operation}: not found ({code}): {message}")]
    NotFound {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// The resource already exists. → ALREADY_EXISTS
    #[error("{operation}: already exists ({code}): {message}")]
    AlreadyExists {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// ECR refused because of the resource's state, e.g. a non-empty repository. → FAILED_PRECONDITION
    #[error("{operation}: conflict ({code}): {message}")]
    Conflict {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// ECR throttled the call even after retries. → UNAVAILABLE with RetryInfo
    #[error("{operation}: throttled by ECR ({code}): {message}")]
    Throttled {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// The gateway's AWS identity may not do this. → PERMISSION_DENIED (the gateway's own permission, reported as such)
    #[error("{operation}: access denied ({code}): {message}")]
    AccessDenied {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// ECR rejected a parameter. → INVALID_ARGUMENT
    #[error("{operation}: rejected by ECR ({code}): {message}")]
    Invalid {
        /// The ECR operation.
        operation: &'static str,
        /// ECR's error code.
        code: String,
        /// ECR's message.
        message: String,
    },
    /// The registry's circuit breaker is open, so nothing was sent. → UNAVAILABLE with RetryInfo (the rest of the cool-down)
    #[error("{operation}: {refusal}")]
    CircuitOpen {
        /// The ECR operation that was not sent.
        operation: &'static str,
        /// The registry, why the breaker is open and for how long.
        refusal: BreakerOpen,
    },
    /// ECR could not be reached, timed out or failed on its side. → UNAVAILABLE with RetryInfo
    #[error("{operation}: ECR unavailable: {message}")]
    Unavailable {
        /// The ECR operation.
        operation: &'static str,
        /// What happened.
        message: String,
    },
    /// The endpoint does not implement the operation (an emulator, or a
    /// partition without the API): it answered HTTP 500/501 without an AWS
    /// error document, or `UnknownOperationException`. → FAILED_PRECONDITION naming the API
    #[error("{operation}: the ECR endpoint does not implement it")]
    Unsupported {
        /// The ECR operation.
        operation: &'static str,
    },
}

impl EcrError {
    /// ECR's error code (or `Unavailable`), for audit records.
    pub fn code(&self) -> &str {
        match self {
            EcrError::NotFound { code, .. }
            | EcrError::AlreadyExists { code, .. }
            | EcrError::Conflict { code, .. }
            | EcrError::Throttled { code, .. }
            | EcrError::AccessDenied { code, .. }
            | EcrError::Invalid { code, .. } => code,
            EcrError::CircuitOpen { .. } => "CircuitOpen",
            EcrError::Unavailable { .. } => "Unavailable",
            EcrError::Unsupported { .. } => "Unsupported",
        }
    }

    /// True when the resource was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, EcrError::NotFound { .. })
    }
}

/// Error codes ECR uses, grouped by class.
const NOT_FOUND: &[&str] = &[
    "RepositoryNotFoundException",
    "ImageNotFoundException",
    "LifecyclePolicyNotFoundException",
    "RepositoryPolicyNotFoundException",
    "RegistryPolicyNotFoundException",
    "ScanNotFoundException",
    "LifecyclePolicyPreviewNotFoundException",
];
const ALREADY_EXISTS: &[&str] = &[
    "RepositoryAlreadyExistsException",
    "ImageAlreadyExistsException",
    "ImageTagAlreadyExistsException",
];
const CONFLICT: &[&str] = &[
    "RepositoryNotEmptyException",
    "ReferencedImagesNotFoundException",
    "LifecyclePolicyPreviewInProgressException",
    // PutImage: the repository lacks the manifest's layers, or the digest
    // given does not match the manifest.
    "LayersNotFoundException",
    "ImageDigestDoesNotMatchException",
];
const THROTTLED: &[&str] = &[
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
];
const DENIED: &[&str] = &[
    "AccessDeniedException",
    // STS (AssumeRole): the gateway may not assume the role.
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "KmsException",
];
const INVALID: &[&str] = &[
    "InvalidParameterException",
    "InvalidTagParameterException",
    "TooManyTagsException",
    "ValidationException",
    "InvalidLayerException",
    "UnsupportedImageTypeException",
    // STS (AssumeRole): the session policy or duration was refused.
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "ValidationError",
];

/// Turns an SDK failure into an [`EcrError`], keeping ECR's code and message.
pub fn classify<E, R>(operation: &'static str, error: SdkError<E, R>) -> EcrError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    if let Some(refusal) = breaker_refusal(&error) {
        return EcrError::CircuitOpen {
            operation,
            refusal: refusal.clone(),
        };
    }
    let code = error.code().map(str::to_owned);
    let message = error
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| error_chain(&error));
    let Some(code) = code else {
        return EcrError::Unavailable {
            operation,
            message: error_chain(&error),
        };
    };
    classify_code(operation, code, message)
}

/// Operations the gateway calls that an endpoint may lack (moto lacks all
/// of these): an answer that says so is [`EcrError::Unsupported`], and it is
/// no sign that ECR is down (the circuit breaker does not count it).
pub(crate) const OPTIONAL_OPERATIONS: &[&str] = &[
    "DescribeRepositoryCreationTemplates",
    "CreateRepositoryCreationTemplate",
    "UpdateRepositoryCreationTemplate",
    "DescribePullThroughCacheRules",
];

/// [`classify`] for an [`OPTIONAL_OPERATIONS`] call: an endpoint that
/// answers HTTP 500 or 501 without an AWS error document (a JSON body), or
/// with `UnknownOperationException`, does not implement the operation.
pub(crate) fn classify_optional<E>(
    operation: &'static str,
    error: SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
) -> EcrError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let lacks = error.code() == Some("UnknownOperationException")
        || error.raw_response().is_some_and(|response| {
            let status = response.status().as_u16();
            let json = response
                .body()
                .bytes()
                .is_some_and(|b| b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{'));
            matches!(status, 500 | 501) && !json
        });
    if lacks {
        return EcrError::Unsupported { operation };
    }
    classify(operation, error)
}

/// Classifies by ECR's error code alone.
pub fn classify_code(operation: &'static str, code: String, message: String) -> EcrError {
    let code_str = code.as_str();
    if NOT_FOUND.contains(&code_str) {
        EcrError::NotFound {
            operation,
            code,
            message,
        }
    } else if ALREADY_EXISTS.contains(&code_str) {
        EcrError::AlreadyExists {
            operation,
            code,
            message,
        }
    } else if CONFLICT.contains(&code_str) {
        EcrError::Conflict {
            operation,
            code,
            message,
        }
    } else if THROTTLED.contains(&code_str) {
        EcrError::Throttled {
            operation,
            code,
            message,
        }
    } else if DENIED.contains(&code_str) {
        EcrError::AccessDenied {
            operation,
            code,
            message,
        }
    } else if INVALID.contains(&code_str) {
        EcrError::Invalid {
            operation,
            code,
            message,
        }
    } else {
        EcrError::Unavailable {
            operation,
            message: format!("{code}: {message}"),
        }
    }
}

/// The breaker's refusal, when the SDK call failed because of it.
fn breaker_refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BreakerOpen> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(refusal) = cause.downcast_ref::<BreakerOpen>() {
            return Some(refusal);
        }
        current = cause.source();
    }
    None
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_ecr::operation::create_repository::CreateRepositoryError;

    use super::*;

    #[test]
    fn a_call_the_breaker_refused_is_circuit_open_with_its_retry_delay() {
        let refusal = BreakerOpen {
            registry: "main".into(),
            reason: "5 ECR calls in a row failed".into(),
            retry_after: Duration::from_secs(12),
        };
        // How the SDK reports an interceptor's refusal before serialisation.
        let error = SdkError::<CreateRepositoryError>::construction_failure(refusal.clone());

        let classified = classify("CreateRepository", error);

        assert!(
            matches!(&classified, EcrError::CircuitOpen { operation: "CreateRepository", refusal: r } if *r == refusal),
            "{classified:?}"
        );
        assert_eq!(classified.code(), "CircuitOpen");
    }

    #[test]
    fn throttling_codes_are_classified_as_throttled() {
        let error = classify_code(
            "DescribeImages",
            "ThrottlingException".into(),
            "Rate exceeded".into(),
        );
        assert!(matches!(error, EcrError::Throttled { .. }));
    }

    #[test]
    fn a_missing_repository_is_not_found() {
        let error = classify_code(
            "DescribeRepositories",
            "RepositoryNotFoundException".into(),
            "x".into(),
        );
        assert!(error.is_not_found());
        assert_eq!(error.code(), "RepositoryNotFoundException");
    }

    #[test]
    fn an_unknown_code_counts_as_unavailable() {
        let error = classify_code("PutImage", "ServerException".into(), "boom".into());
        assert!(matches!(error, EcrError::Unavailable { .. }));
    }

    #[test]
    fn non_empty_repository_is_a_conflict() {
        let error = classify_code(
            "DeleteRepository",
            "RepositoryNotEmptyException".into(),
            "x".into(),
        );
        assert!(matches!(error, EcrError::Conflict { .. }));
    }
}
