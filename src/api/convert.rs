//! Protobuf ⇄ domain conversions for repositories. Proto types stop here.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Prefix of tag keys reserved by AWS.
const AWS_TAG_PREFIX: &str = "aws:";

use crate::domain::{Encryption, RegistryRef, RepositoryState, TagMutability, Violation};
use crate::pb;
use crate::policy::{RepositoryRequest, RepositorySpec};

/// A protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Decodes the tag mutability enum; `Ok(None)` when unset.
pub fn tag_mutability(value: i32, field: &str) -> Result<Option<TagMutability>, Violation> {
    use pb::ImageTagMutability as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Mutable) => Ok(Some(TagMutability::Mutable)),
        Ok(P::Immutable) => Ok(Some(TagMutability::Immutable)),
        Ok(P::ImmutableWithExclusion) => Ok(Some(TagMutability::ImmutableWithExclusion)),
        Ok(P::MutableWithExclusion) => Ok(Some(TagMutability::MutableWithExclusion)),
        Err(_) => Err(Violation::new(
            field,
            "enum.unknown-value",
            format!(
                "{value} is not an ImageTagMutability; use one of IMAGE_TAG_MUTABILITY_MUTABLE, _IMMUTABLE, _IMMUTABLE_WITH_EXCLUSION, _MUTABLE_WITH_EXCLUSION"
            ),
        )),
    }
}

pub(crate) fn tag_mutability_to_proto(value: TagMutability) -> pb::ImageTagMutability {
    match value {
        TagMutability::Mutable => pb::ImageTagMutability::Mutable,
        TagMutability::Immutable => pb::ImageTagMutability::Immutable,
        TagMutability::ImmutableWithExclusion => pb::ImageTagMutability::ImmutableWithExclusion,
        TagMutability::MutableWithExclusion => pb::ImageTagMutability::MutableWithExclusion,
    }
}

/// Decodes the requested encryption; `Ok(None)` when unset.
pub fn encryption(value: Option<&pb::Encryption>) -> Result<Option<Encryption>, Violation> {
    let Some(value) = value else { return Ok(None) };
    let key = (!value.kms_key.is_empty()).then(|| value.kms_key.clone());
    match pb::EncryptionType::try_from(value.encryption_type) {
        Ok(pb::EncryptionType::Unspecified) if key.is_none() => Ok(None),
        Ok(pb::EncryptionType::Aes256) if key.is_none() => Ok(Some(Encryption::Aes256)),
        Ok(pb::EncryptionType::Kms) | Ok(pb::EncryptionType::Unspecified) => {
            Ok(Some(Encryption::Kms { key }))
        }
        Ok(pb::EncryptionType::Aes256) => Err(Violation::new(
            "settings.encryption.kms_key",
            "encryption.kms-key-without-kms",
            "a KMS key only applies to ENCRYPTION_TYPE_KMS; drop the key or switch the type",
        )),
        Err(_) => Err(Violation::new(
            "settings.encryption.encryption_type",
            "enum.unknown-value",
            format!(
                "{} is not an EncryptionType; use ENCRYPTION_TYPE_AES256 or ENCRYPTION_TYPE_KMS",
                value.encryption_type
            ),
        )),
    }
}

/// A repository request from the name and settings a caller sent.
pub fn repository_request(
    name: &str,
    settings: Option<&pb::RepositorySettings>,
) -> (RepositoryRequest, Vec<Violation>) {
    let default_settings = pb::RepositorySettings::default();
    let settings = settings.unwrap_or(&default_settings);
    let mut violations = Vec::new();
    let tag_mutability = tag_mutability(settings.image_tag_mutability, "settings.image_tag_mutability")
        .unwrap_or_else(|v| {
            violations.push(v);
            None
        });
    let encryption = encryption(settings.encryption.as_ref()).unwrap_or_else(|v| {
        violations.push(v);
        None
    });
    let request = RepositoryRequest {
        name: name.to_owned(),
        tags: settings.tags.clone().into_iter().collect(),
        tag_mutability,
        exclusion_filters: settings.image_tag_mutability_exclusion_filters.clone(),
        scan_on_push: settings.scan_on_push,
        encryption,
        lifecycle_policy: non_empty(&settings.lifecycle_policy),
        repository_policy: non_empty(&settings.repository_policy),
    };
    (request, violations)
}

/// The request that reproduces an existing repository (the base of an update).
pub fn request_from_state(state: &RepositoryState) -> RepositoryRequest {
    RepositoryRequest {
        name: state.name.to_string(),
        // Tags under `aws:` belong to AWS (e.g. CloudFormation); callers cannot set them.
        tags: state
            .tags
            .iter()
            .filter(|(key, _)| !key.starts_with(AWS_TAG_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tag_mutability: Some(state.tag_mutability),
        exclusion_filters: state.exclusion_filters.clone(),
        scan_on_push: Some(state.scan_on_push),
        encryption: Some(state.encryption.clone()),
        lifecycle_policy: state.lifecycle_policy.clone(),
        repository_policy: state.repository_policy.clone(),
    }
}

/// ECR's encryption as the API answers it.
pub(crate) fn encryption_to_proto(encryption: &Encryption) -> pb::Encryption {
    let (encryption_type, kms_key) = match encryption {
        Encryption::Aes256 => (pb::EncryptionType::Aes256, String::new()),
        Encryption::Kms { key } => (pb::EncryptionType::Kms, key.clone().unwrap_or_default()),
    };
    pb::Encryption {
        encryption_type: encryption_type as i32,
        kms_key,
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.to_owned())
}

fn settings_to_proto(
    tag_mutability: TagMutability,
    exclusion_filters: &[String],
    scan_on_push: bool,
    encryption: &Encryption,
    tags: &std::collections::BTreeMap<String, String>,
    lifecycle_policy: Option<&str>,
    repository_policy: Option<&str>,
) -> pb::RepositorySettings {
    pb::RepositorySettings {
        image_tag_mutability: tag_mutability_to_proto(tag_mutability) as i32,
        image_tag_mutability_exclusion_filters: exclusion_filters.to_vec(),
        scan_on_push: Some(scan_on_push),
        encryption: Some(encryption_to_proto(encryption)),
        tags: tags.clone().into_iter().collect(),
        lifecycle_policy: lifecycle_policy.unwrap_or_default().to_owned(),
        repository_policy: repository_policy.unwrap_or_default().to_owned(),
    }
}

/// A repository as callers see it.
pub fn repository(
    registry: &RegistryRef,
    state: &RepositoryState,
    synced_at: Option<DateTime<Utc>>,
    read_through: bool,
) -> pb::Repository {
    pb::Repository {
        registry: registry.alias.clone(),
        registry_id: registry.account_id.clone(),
        region: registry.region.clone(),
        repository: state.name.to_string(),
        arn: state.arn.clone(),
        uri: state.uri.clone(),
        create_time: state.created_at.map(timestamp),
        settings: Some(settings_to_proto(
            state.tag_mutability,
            &state.exclusion_filters,
            state.scan_on_push,
            &state.encryption,
            &state.tags,
            state.lifecycle_policy.as_deref(),
            state.repository_policy.as_deref(),
        )),
        freshness: Some(pb::Freshness {
            synced_at: synced_at.map(timestamp),
            read_through,
        }),
    }
}

/// The repository a spec would create (for `validate_only`).
pub fn planned_repository(registry: &RegistryRef, spec: &RepositorySpec) -> pb::Repository {
    pb::Repository {
        registry: registry.alias.clone(),
        registry_id: registry.account_id.clone(),
        region: registry.region.clone(),
        repository: spec.name.to_string(),
        arn: registry.repository_arn(&spec.name),
        uri: registry.repository_uri(&spec.name),
        create_time: None,
        settings: Some(settings_to_proto(
            spec.tag_mutability,
            &spec.exclusion_filters,
            spec.scan_on_push,
            &spec.encryption,
            &spec.tags,
            spec.lifecycle_policy.as_deref(),
            spec.repository_policy.as_deref(),
        )),
        freshness: None,
    }
}

/// Audit response elements of a repository.
pub fn repository_json(repository: &pb::Repository) -> Value {
    json!({
        "registry": repository.registry,
        "registryId": repository.registry_id,
        "repositoryName": repository.repository,
        "repositoryArn": repository.arn,
        "repositoryUri": repository.uri,
    })
}

/// `google.protobuf.Timestamp`'s range: 0001-01-01T00:00:00Z …
const MIN_SECONDS: i64 = -62_135_596_800;
/// … to 9999-12-31T23:59:59Z.
const MAX_SECONDS: i64 = 253_402_300_799;

/// A request's optional timestamp; outside `google.protobuf.Timestamp`'s
/// range (years 1-9999, nanos 0-999,999,999) it is a violation of `field`.
pub fn time_of(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Violation> {
    match value {
        None => Ok(None),
        Some(t) => u32::try_from(t.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000 && (MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds))
            .and_then(|n| DateTime::from_timestamp(t.seconds, n))
            .map(Some)
            .ok_or_else(|| {
                Violation::new(
                    field,
                    "timestamp.range",
                    "not a valid timestamp (seconds within years 1-9999, nanos 0-999999999)",
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_the_protobuf_range_are_violations() {
        let at = |seconds, nanos| time_of("t", Some(&prost_types::Timestamp { seconds, nanos }));
        assert!(at(MAX_SECONDS, 999_999_999).is_ok());
        assert!(at(MIN_SECONDS, 0).is_ok());
        for (seconds, nanos) in [
            (MAX_SECONDS + 1, 0),
            (MIN_SECONDS - 1, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (0, -1),
            // Ends a minute, where chrono would take 1e9 nanos for a leap second.
            (1_799_999_999, 1_000_000_000),
        ] {
            assert!(at(seconds, nanos).is_err(), "{seconds} {nanos}");
        }
        assert_eq!(time_of("t", None), Ok(None));
    }
}
