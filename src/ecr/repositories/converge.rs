//! Converging a repository to a spec: creating it, or applying only the
//! settings that differ (tag mutability and its exclusion filters, scan on
//! push, tags, the lifecycle and repository policies).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType, Tag,
};

use super::{state_from_detail, unreadable};
use crate::domain::{
    Encryption, RepositoryName, RepositorySpec, RepositoryState, same_document as same_json,
};
use crate::ecr::error::{EcrError, classify};
use crate::ecr::{CallLog, Registry};

impl Registry {
    /// Brings the repository to `spec`: creates it when `current` is `None`,
    /// otherwise applies only the settings that differ. Safe to repeat.
    pub async fn converge_repository(
        &self,
        log: &CallLog,
        spec: &RepositorySpec,
        current: Option<RepositoryState>,
    ) -> Result<RepositoryState, EcrError> {
        let mut state = match current {
            Some(state) => state,
            None => self.create_repository(log, spec).await?,
        };
        if state.tag_mutability != spec.tag_mutability || state.exclusion_filters != spec.exclusion_filters {
            self.put_tag_mutability(log, spec).await?;
            state.tag_mutability = spec.tag_mutability;
            state.exclusion_filters = spec.exclusion_filters.clone();
        }
        if state.scan_on_push != spec.scan_on_push {
            self.put_scan_on_push(log, &spec.name, spec.scan_on_push).await?;
            state.scan_on_push = spec.scan_on_push;
        }
        self.converge_tags(log, &state.arn, &state.tags, &spec.tags)
            .await?;
        state.tags.retain(|k, _| k.starts_with("aws:"));
        state.tags.extend(spec.tags.clone());
        if !same_json(
            state.lifecycle_policy.as_deref(),
            spec.lifecycle_policy.as_deref(),
        ) {
            self.put_or_delete_lifecycle_policy(log, &spec.name, spec.lifecycle_policy.as_deref())
                .await?;
            state.lifecycle_policy = spec.lifecycle_policy.clone();
        }
        if !same_json(
            state.repository_policy.as_deref(),
            spec.repository_policy.as_deref(),
        ) {
            self.put_or_delete_repository_policy(log, &spec.name, spec.repository_policy.as_deref())
                .await?;
            state.repository_policy = spec.repository_policy.clone();
        }
        Ok(state)
    }

    async fn create_repository(
        &self,
        log: &CallLog,
        spec: &RepositorySpec,
    ) -> Result<RepositoryState, EcrError> {
        let output = self
            .client
            .create_repository()
            .registry_id(&self.reference.account_id)
            .repository_name(spec.name.as_str())
            .image_tag_mutability(ImageTagMutability::from(spec.tag_mutability.as_ecr_str()))
            .set_image_tag_mutability_exclusion_filters(exclusion_filters(spec))
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(spec.scan_on_push)
                    .build(),
            )
            .encryption_configuration(encryption_configuration(&spec.encryption))
            .set_tags(Some(sdk_tags(&spec.tags)))
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("CreateRepository", e))?;
        log.record(output.request_id());
        let detail = output
            .repository
            .ok_or_else(|| unreadable("CreateRepository", &spec.name))?;
        let mut state = state_from_detail(&self.reference, &detail)
            .ok_or_else(|| unreadable("CreateRepository", &spec.name))?;
        state.tags = spec.tags.clone();
        Ok(state)
    }

    async fn put_tag_mutability(&self, log: &CallLog, spec: &RepositorySpec) -> Result<(), EcrError> {
        let output = self
            .client
            .put_image_tag_mutability()
            .registry_id(&self.reference.account_id)
            .repository_name(spec.name.as_str())
            .image_tag_mutability(ImageTagMutability::from(spec.tag_mutability.as_ecr_str()))
            .set_image_tag_mutability_exclusion_filters(exclusion_filters(spec))
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("PutImageTagMutability", e))?;
        log.record(output.request_id());
        Ok(())
    }

    async fn put_scan_on_push(
        &self,
        log: &CallLog,
        name: &RepositoryName,
        scan_on_push: bool,
    ) -> Result<(), EcrError> {
        let output = self
            .client
            .put_image_scanning_configuration()
            .registry_id(&self.reference.account_id)
            .repository_name(name.as_str())
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(scan_on_push)
                    .build(),
            )
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("PutImageScanningConfiguration", e))?;
        log.record(output.request_id());
        Ok(())
    }

    async fn converge_tags(
        &self,
        log: &CallLog,
        arn: &str,
        current: &BTreeMap<String, String>,
        desired: &BTreeMap<String, String>,
    ) -> Result<(), EcrError> {
        let to_set: BTreeMap<String, String> = desired
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Tags under `aws:` are AWS's own (e.g. CloudFormation's); they are never removed.
        let to_remove: BTreeSet<&String> = current
            .keys()
            .filter(|k| !desired.contains_key(*k) && !k.starts_with("aws:"))
            .collect();
        if !to_set.is_empty() {
            let output = self
                .client
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(sdk_tags(&to_set)))
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("TagResource", e))?;
            log.record(output.request_id());
        }
        if !to_remove.is_empty() {
            let output = self
                .client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(to_remove.into_iter().cloned().collect()))
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("UntagResource", e))?;
            log.record(output.request_id());
        }
        Ok(())
    }
}

fn exclusion_filters(spec: &RepositorySpec) -> Option<Vec<ImageTagMutabilityExclusionFilter>> {
    sdk_exclusion_filters(&spec.exclusion_filters)
}

/// ECR's form of wildcard exclusion filters; `None` for none.
pub(in crate::ecr) fn sdk_exclusion_filters(
    filters: &[String],
) -> Option<Vec<ImageTagMutabilityExclusionFilter>> {
    if filters.is_empty() {
        return None;
    }
    Some(
        filters
            .iter()
            .filter_map(|filter| {
                ImageTagMutabilityExclusionFilter::builder()
                    .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                    .filter(filter)
                    .build()
                    .ok()
            })
            .collect(),
    )
}

fn encryption_configuration(encryption: &Encryption) -> EncryptionConfiguration {
    let builder = match encryption {
        Encryption::Aes256 => EncryptionConfiguration::builder().encryption_type(EncryptionType::Aes256),
        Encryption::Kms { key } => EncryptionConfiguration::builder()
            .encryption_type(EncryptionType::Kms)
            .set_kms_key(key.clone()),
    };
    builder
        .build()
        .unwrap_or_else(|_| unreachable!("encryption_type is always set"))
}

pub(in crate::ecr) fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .filter_map(|(key, value)| Tag::builder().key(key).value(value).build().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_that_differ_only_in_whitespace_are_the_same() {
        assert!(same_json(Some(r#"{"a": 1}"#), Some(r#"{ "a":1 }"#)));
        assert!(!same_json(Some(r#"{"a": 1}"#), None));
        assert!(!same_json(Some(r#"{"a": 1}"#), Some(r#"{"a": 2}"#)));
    }
}
