//! The lifecycle and repository policy calls: read a repository's policy
//! text, put it, or delete it (a missing one is not an error).

use aws_sdk_ecr::operation::RequestId;

use crate::domain::RepositoryName;
use crate::ecr::error::{EcrError, classify};
use crate::ecr::{CallLog, Registry};

impl Registry {
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

    /// The repository's lifecycle and repository policy texts (`None`: it has
    /// none), within the request budget. A repository gone meanwhile is an
    /// error that `is_not_found`.
    pub async fn read_policies(
        &self,
        log: &CallLog,
        name: &RepositoryName,
    ) -> Result<(Option<String>, Option<String>), EcrError> {
        self.budget.acquire("GetLifecyclePolicy").await;
        let lifecycle = self.get_lifecycle_policy(log, name).await?;
        self.budget.acquire("GetRepositoryPolicy").await;
        let policy = self.get_repository_policy(log, name).await?;
        Ok((lifecycle, policy))
    }

    pub(super) async fn get_repository_policy(
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

    pub(super) async fn put_or_delete_repository_policy(
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
