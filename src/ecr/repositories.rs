//! Repository calls: read the whole state of a repository, count its images,
//! delete it, and page through a registry's repositories.
//!
//! Converging a repository to a spec is in `repositories/converge.rs`; the
//! lifecycle and repository policy calls (get, put, delete) in
//! `repositories/policies.rs`.

pub(super) mod converge;
mod policies;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::types::{EncryptionType, Repository};
use chrono::{DateTime, Utc};

use super::error::{EcrError, classify};
use super::{CallLog, Registry};
use crate::domain::{Encryption, RegistryRef, RepositoryName, RepositoryState, TagMutability};

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
        self.list_repositories_reading_tags(log, |_| true).await
    }

    /// [`Registry::list_repositories`], reading the tags only of the
    /// repositories `read_tags` names (the others' come back empty): with
    /// events on, the cache's tags are kept by CloudTrail's TagResource events.
    pub async fn list_repositories_reading_tags(
        &self,
        log: &CallLog,
        read_tags: impl Fn(&str) -> bool,
    ) -> Result<Vec<RepositoryState>, EcrError> {
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
            if !read_tags(state.name.as_str()) {
                states.push(state);
                continue;
            }
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

fn unreadable(operation: &'static str, name: &RepositoryName) -> EcrError {
    EcrError::Unavailable {
        operation,
        message: format!("ECR's answer about {name} lacked required fields"),
    }
}

#[cfg(test)]
#[path = "repositories_tests.rs"]
mod tests;
