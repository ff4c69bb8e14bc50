//! Repository calls: read the whole state of a repository, converge it to a
//! spec, delete it, and page through a registry's repositories.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType, Repository, Tag,
};
use chrono::{DateTime, Utc};

use super::error::{EcrError, classify};
use super::{CallLog, Registry};
use crate::domain::{
    Encryption, RegistryRef, RepositoryName, RepositorySpec, RepositoryState, TagMutability,
};

/// ECR's page size limit for DescribeRepositories.
const PAGE_SIZE: i32 = 1000;

impl Registry {
    /// Reads everything the gateway manages about `name`, or `None` when it does not exist.
    pub async fn fetch_repository(
        &self,
        log: &CallLog,
        name: &RepositoryName,
    ) -> Result<Option<RepositoryState>, EcrError> {
        let Some(detail) = self.describe_repository(log, name).await? else {
            return Ok(None);
        };
        let mut state = state_from_detail(&self.reference, &detail)
            .ok_or_else(|| unreadable("DescribeRepositories", name))?;
        state.tags = self.list_tags(log, &state.arn).await?;
        state.lifecycle_policy = self.get_lifecycle_policy(log, name).await?;
        state.repository_policy = self.get_repository_policy(log, name).await?;
        Ok(Some(state))
    }

    /// What one `DescribeRepositories` says of `name` (tag mutability, exclusion
    /// filters, scanning, encryption; no tags, no policies), or `None` when ECR
    /// does not have it. With `with_tags`, its tags too (`ListTagsForResource`).
    pub async fn describe_repository_state(
        &self,
        log: &CallLog,
        name: &RepositoryName,
        with_tags: bool,
    ) -> Result<Option<RepositoryState>, EcrError> {
        self.budget.acquire("DescribeRepositories").await;
        let Some(detail) = self.describe_repository(log, name).await? else {
            return Ok(None);
        };
        let mut state = state_from_detail(&self.reference, &detail)
            .ok_or_else(|| unreadable("DescribeRepositories", name))?;
        if with_tags {
            match self.list_tags(log, &state.arn).await {
                Ok(tags) => state.tags = tags,
                // Deleted between the two calls.
                Err(error) if error.is_not_found() => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(Some(state))
    }

    async fn describe_repository(
        &self,
        log: &CallLog,
        name: &RepositoryName,
    ) -> Result<Option<Repository>, EcrError> {
        let result = self
            .client
            .describe_repositories()
            .registry_id(&self.reference.account_id)
            .repository_names(name.as_str())
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(output.repositories.unwrap_or_default().into_iter().next())
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("DescribeRepositories", error);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn list_tags(&self, log: &CallLog, arn: &str) -> Result<BTreeMap<String, String>, EcrError> {
        self.budget.acquire("ListTagsForResource").await;
        let output = self
            .client
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("ListTagsForResource", e))?;
        log.record(output.request_id());
        Ok(output
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key, t.value))
            .collect())
    }

    /// The repository's lifecycle policy text; `None` when it has none.
    pub async fn get_lifecycle_policy(
        &self,
        log: &CallLog,
        name: &RepositoryName,
    ) -> Result<Option<String>, EcrError> {
        let result = self
            .client
            .get_lifecycle_policy()
            .registry_id(&self.reference.account_id)
            .repository_name(name.as_str())
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(output.lifecycle_policy_text)
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("GetLifecyclePolicy", error);
                // A missing repository is not a missing policy.
                if error.code() == "LifecyclePolicyNotFoundException" {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn get_repository_policy(
        &self,
        log: &CallLog,
        name: &RepositoryName,
    ) -> Result<Option<String>, EcrError> {
        let result = self
            .client
            .get_repository_policy()
            .registry_id(&self.reference.account_id)
            .repository_name(name.as_str())
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(output.policy_text)
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("GetRepositoryPolicy", error);
                // A missing repository is not a missing policy.
                if error.code() == "RepositoryPolicyNotFoundException" {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

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

    /// Puts the lifecycle policy, or deletes it for `None` (a missing one is not an error).
    pub async fn put_or_delete_lifecycle_policy(
        &self,
        log: &CallLog,
        name: &RepositoryName,
        policy: Option<&str>,
    ) -> Result<(), EcrError> {
        let (account, repository) = (&self.reference.account_id, name.as_str());
        let request_id = match policy {
            Some(text) => {
                let put = self
                    .client
                    .put_lifecycle_policy()
                    .registry_id(account)
                    .repository_name(repository);
                let output = put.lifecycle_policy_text(text).send().await;
                recorded(log, "PutLifecyclePolicy", output)?
                    .request_id()
                    .map(str::to_owned)
            }
            None => {
                let delete = self
                    .client
                    .delete_lifecycle_policy()
                    .registry_id(account)
                    .repository_name(repository);
                let output = delete.send().await;
                absent_if_missing(recorded(log, "DeleteLifecyclePolicy", output))?
                    .and_then(|o| o.request_id().map(str::to_owned))
            }
        };
        log.record(request_id.as_deref());
        Ok(())
    }

    async fn put_or_delete_repository_policy(
        &self,
        log: &CallLog,
        name: &RepositoryName,
        policy: Option<&str>,
    ) -> Result<(), EcrError> {
        let (account, repository) = (&self.reference.account_id, name.as_str());
        let request_id = match policy {
            Some(text) => {
                let set = self
                    .client
                    .set_repository_policy()
                    .registry_id(account)
                    .repository_name(repository);
                let output = set.policy_text(text).send().await;
                recorded(log, "SetRepositoryPolicy", output)?
                    .request_id()
                    .map(str::to_owned)
            }
            None => {
                let delete = self
                    .client
                    .delete_repository_policy()
                    .registry_id(account)
                    .repository_name(repository);
                let output = delete.send().await;
                absent_if_missing(recorded(log, "DeleteRepositoryPolicy", output))?
                    .and_then(|o| o.request_id().map(str::to_owned))
            }
        };
        log.record(request_id.as_deref());
        Ok(())
    }

    /// Counts the repository's images (all pages).
    pub async fn count_images(&self, log: &CallLog, name: &RepositoryName) -> Result<i64, EcrError> {
        let ids = collect_pages(|token| async move {
            let output = self
                .client
                .list_images()
                .registry_id(&self.reference.account_id)
                .repository_name(name.as_str())
                .max_results(PAGE_SIZE)
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("ListImages", e))?;
            log.record(output.request_id());
            Ok((output.image_ids.unwrap_or_default(), output.next_token))
        })
        .await?;
        let digests: BTreeSet<String> = ids.into_iter().filter_map(|id| id.image_digest).collect();
        Ok(digests.len() as i64)
    }

    /// Deletes the repository; with `force`, together with its images.
    pub async fn delete_repository(
        &self,
        log: &CallLog,
        name: &RepositoryName,
        force: bool,
    ) -> Result<(), EcrError> {
        let output = self
            .client
            .delete_repository()
            .registry_id(&self.reference.account_id)
            .repository_name(name.as_str())
            .force(force)
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("DeleteRepository", e))?;
        log.record(output.request_id());
        Ok(())
    }

    /// Every repository of the registry with its tags (policies are not read here).
    pub async fn list_repositories(&self, log: &CallLog) -> Result<Vec<RepositoryState>, EcrError> {
        let details = collect_pages(|token| async move {
            self.budget.acquire("DescribeRepositories").await;
            let output = self
                .client
                .describe_repositories()
                .registry_id(&self.reference.account_id)
                .max_results(PAGE_SIZE)
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("DescribeRepositories", e))?;
            log.record(output.request_id());
            Ok((output.repositories.unwrap_or_default(), output.next_token))
        })
        .await?;
        let mut states = Vec::with_capacity(details.len());
        for detail in &details {
            let Some(mut state) = state_from_detail(&self.reference, detail) else {
                tracing::warn!(repository = ?detail.repository_name, "skipping a repository ECR described incompletely");
                continue;
            };
            match self.list_tags(log, &state.arn).await {
                Ok(tags) => state.tags = tags,
                // Deleted between the two calls: it is gone, leave it out.
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error),
            }
            states.push(state);
        }
        Ok(states)
    }
}

/// Follows `nextToken` until ECR says there is no more. Stops with an error
/// when ECR hands back a token it already gave (a loop would never end).
pub async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, EcrError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), EcrError>>,
{
    let mut items = Vec::new();
    let mut seen = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        match next.filter(|t| !t.is_empty()) {
            None => return Ok(items),
            Some(next) if !seen.insert(next.clone()) => {
                return Err(EcrError::Unavailable {
                    operation: "pagination",
                    message: format!("ECR returned the page token {next} twice"),
                });
            }
            Some(next) => token = Some(next),
        }
    }
}

/// Records a failed call's request id and classifies its error.
fn recorded<T, E, R>(
    log: &CallLog,
    operation: &'static str,
    result: Result<T, aws_sdk_ecr::error::SdkError<E, R>>,
) -> Result<T, EcrError>
where
    E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
    aws_sdk_ecr::error::SdkError<E, R>: RequestId,
{
    result
        .inspect_err(|e| log.record(e.request_id()))
        .map_err(|e| classify(operation, e))
}

/// A resource ECR does not have is `None`, not an error.
fn absent_if_missing<T>(result: Result<T, EcrError>) -> Result<Option<T>, EcrError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Reads a `Repository` from ECR into a state (tags and policies left empty).
pub fn state_from_detail(registry: &RegistryRef, detail: &Repository) -> Option<RepositoryState> {
    let name = RepositoryName::parse(detail.repository_name.as_deref()?).ok()?;
    let tag_mutability = detail
        .image_tag_mutability
        .as_ref()
        .and_then(|m| TagMutability::from_ecr_str(m.as_str()))
        .unwrap_or(TagMutability::Mutable);
    let exclusion_filters = detail
        .image_tag_mutability_exclusion_filters
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|f| f.filter.clone())
        .collect();
    let encryption = match detail.encryption_configuration.as_ref() {
        Some(config) if config.encryption_type == EncryptionType::Kms => Encryption::Kms {
            key: config.kms_key.clone(),
        },
        _ => Encryption::Aes256,
    };
    Some(RepositoryState {
        arn: detail
            .repository_arn
            .clone()
            .unwrap_or_else(|| registry.repository_arn(&name)),
        uri: detail
            .repository_uri
            .clone()
            .unwrap_or_else(|| registry.repository_uri(&name)),
        created_at: detail
            .created_at
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
        tag_mutability,
        exclusion_filters,
        scan_on_push: detail
            .image_scanning_configuration
            .as_ref()
            .is_some_and(|c| c.scan_on_push),
        encryption,
        tags: BTreeMap::new(),
        lifecycle_policy: None,
        repository_policy: None,
        name,
    })
}

fn exclusion_filters(spec: &RepositorySpec) -> Option<Vec<ImageTagMutabilityExclusionFilter>> {
    if spec.exclusion_filters.is_empty() {
        return None;
    }
    Some(
        spec.exclusion_filters
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

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .filter_map(|(key, value)| Tag::builder().key(key).value(value).build().ok())
        .collect()
}

/// Two policy documents are the same when they parse to equal JSON.
fn same_json(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            match (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            }
        }
        _ => false,
    }
}

fn unreadable(operation: &'static str, name: &RepositoryName) -> EcrError {
    EcrError::Unavailable {
        operation,
        message: format!("ECR's answer about {name} lacked required fields"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded_pages() -> Vec<(Vec<u32>, Option<String>)> {
        vec![
            (vec![1, 2], Some("t1".into())),
            (vec![3], Some("t2".into())),
            (vec![4, 5], None),
        ]
    }

    #[tokio::test]
    async fn collect_pages_follows_every_next_token_in_order() {
        let pages = recorded_pages();
        let requested = std::sync::Mutex::new(Vec::new());
        let items = collect_pages(|token| {
            requested.lock().unwrap().push(token.clone());
            let index = match token.as_deref() {
                None => 0,
                Some("t1") => 1,
                Some("t2") => 2,
                Some(other) => panic!("unexpected token {other}"),
            };
            let page = pages[index].clone();
            async move { Ok(page) }
        })
        .await
        .expect("pages");
        assert_eq!(items, vec![1, 2, 3, 4, 5]);
        assert_eq!(
            *requested.lock().unwrap(),
            vec![None, Some("t1".to_string()), Some("t2".to_string())]
        );
    }

    #[tokio::test]
    async fn collect_pages_stops_on_a_repeated_token() {
        let result = collect_pages(|_| async { Ok((vec![1u32], Some("same".to_string()))) }).await;
        assert!(matches!(result, Err(EcrError::Unavailable { .. })));
    }

    #[tokio::test]
    async fn collect_pages_treats_an_empty_token_as_the_end() {
        let items = collect_pages(|_| async { Ok((vec![7u32], Some(String::new()))) })
            .await
            .expect("one page");
        assert_eq!(items, vec![7]);
    }

    #[tokio::test]
    async fn collect_pages_passes_errors_through() {
        let result: Result<Vec<u32>, _> = collect_pages(|token| async move {
            match token {
                None => Ok((vec![1], Some("t1".into()))),
                Some(_) => Err(EcrError::Throttled {
                    operation: "DescribeImages",
                    code: "ThrottlingException".into(),
                    message: "slow down".into(),
                }),
            }
        })
        .await;
        assert!(matches!(result, Err(EcrError::Throttled { .. })));
    }

    #[test]
    fn policies_that_differ_only_in_whitespace_are_the_same() {
        assert!(same_json(Some(r#"{"a": 1}"#), Some(r#"{ "a":1 }"#)));
        assert!(!same_json(Some(r#"{"a": 1}"#), None));
        assert!(!same_json(Some(r#"{"a": 1}"#), Some(r#"{"a": 2}"#)));
    }
}
