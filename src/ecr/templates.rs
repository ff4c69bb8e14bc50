//! Repository creation templates (`DescribeRepositoryCreationTemplates`,
//! `CreateRepositoryCreationTemplate`, `UpdateRepositoryCreationTemplate`)
//! and pull-through cache rules (`DescribePullThroughCacheRules`). An
//! endpoint without these operations (moto) is [`EcrError::Unsupported`].

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::types::{
    EncryptionConfigurationForRepositoryCreationTemplate, EncryptionType, ImageTagMutability,
    PullThroughCacheRule, RctAppliedFor, RepositoryCreationTemplate,
};

use super::error::classify_optional;
use super::repositories::converge::{sdk_exclusion_filters, sdk_tags};
use super::{CallLog, EcrError, Registry};
use crate::domain::{CreationTemplate, Encryption, PullThroughRule, TagMutability};

impl Registry {
    /// Every creation template of the registry, all pages.
    pub async fn describe_creation_templates(
        &self,
        log: &CallLog,
    ) -> Result<Vec<CreationTemplate>, EcrError> {
        let mut templates = Vec::new();
        let mut token = None;
        loop {
            self.budget.acquire("DescribeRepositoryCreationTemplates").await;
            let output = self
                .client
                .describe_repository_creation_templates()
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify_optional("DescribeRepositoryCreationTemplates", e))?;
            log.record(output.request_id());
            templates.extend(
                output
                    .repository_creation_templates()
                    .iter()
                    .filter_map(template_from_sdk),
            );
            token = output.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(templates);
            }
        }
    }

    /// Creates `template` (`exists` false) or replaces every setting of the one with its prefix.
    pub async fn put_creation_template(
        &self,
        log: &CallLog,
        template: &CreationTemplate,
        exists: bool,
    ) -> Result<(), EcrError> {
        let applied_for: Vec<RctAppliedFor> = template
            .applied_for
            .iter()
            .map(|a| RctAppliedFor::from(a.as_str()))
            .collect();
        let mutability = ImageTagMutability::from(template.tag_mutability.as_ecr_str());
        let filters = sdk_exclusion_filters(&template.exclusion_filters);
        let encryption = sdk_encryption(&template.encryption);
        let tags = Some(sdk_tags(&template.tags));
        // Create and Update take the same settings; their builders are distinct types.
        macro_rules! send_with_settings {
            ($builder:expr, $operation:literal) => {{
                self.budget.acquire($operation).await;
                let output = $builder
                    .prefix(&template.prefix)
                    .description(&template.description)
                    .set_applied_for(Some(applied_for))
                    .image_tag_mutability(mutability)
                    .set_image_tag_mutability_exclusion_filters(filters)
                    .encryption_configuration(encryption)
                    .set_resource_tags(tags)
                    .set_lifecycle_policy(template.lifecycle_policy.clone())
                    .set_repository_policy(template.repository_policy.clone())
                    .send()
                    .await
                    .inspect_err(|e| log.record(e.request_id()))
                    .map_err(|e| classify_optional($operation, e))?;
                log.record(output.request_id());
            }};
        }
        match exists {
            true => send_with_settings!(
                self.client.update_repository_creation_template(),
                "UpdateRepositoryCreationTemplate"
            ),
            false => send_with_settings!(
                self.client.create_repository_creation_template(),
                "CreateRepositoryCreationTemplate"
            ),
        }
        Ok(())
    }

    /// Every pull-through cache rule of the registry, all pages.
    pub async fn describe_pull_through_rules(&self, log: &CallLog) -> Result<Vec<PullThroughRule>, EcrError> {
        let mut rules = Vec::new();
        let mut token = None;
        loop {
            self.budget.acquire("DescribePullThroughCacheRules").await;
            let output = self
                .client
                .describe_pull_through_cache_rules()
                .registry_id(&self.reference.account_id)
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify_optional("DescribePullThroughCacheRules", e))?;
            log.record(output.request_id());
            rules.extend(output.pull_through_cache_rules().iter().map(rule_from_sdk));
            token = output.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(rules);
            }
        }
    }
}

fn sdk_encryption(encryption: &Encryption) -> EncryptionConfigurationForRepositoryCreationTemplate {
    let builder = match encryption {
        Encryption::Aes256 => EncryptionConfigurationForRepositoryCreationTemplate::builder()
            .encryption_type(EncryptionType::Aes256),
        Encryption::Kms { key } => EncryptionConfigurationForRepositoryCreationTemplate::builder()
            .encryption_type(EncryptionType::Kms)
            .set_kms_key(key.clone()),
    };
    builder
        .build()
        .unwrap_or_else(|_| unreachable!("encryption_type is always set"))
}

/// A template as ECR describes it; `None` without a prefix.
pub(crate) fn template_from_sdk(template: &RepositoryCreationTemplate) -> Option<CreationTemplate> {
    let mut applied_for: Vec<String> = template
        .applied_for()
        .iter()
        .map(|a| a.as_str().to_owned())
        .collect();
    applied_for.sort();
    let encryption = match template.encryption_configuration() {
        Some(config) if *config.encryption_type() == EncryptionType::Kms => Encryption::Kms {
            key: config.kms_key().map(str::to_owned),
        },
        _ => Encryption::Aes256,
    };
    Some(CreationTemplate {
        prefix: template.prefix()?.to_owned(),
        description: template.description().unwrap_or_default().to_owned(),
        applied_for,
        tag_mutability: template
            .image_tag_mutability()
            .and_then(|m| TagMutability::from_ecr_str(m.as_str()))
            .unwrap_or(TagMutability::Mutable),
        exclusion_filters: template
            .image_tag_mutability_exclusion_filters()
            .iter()
            .map(|f| f.filter().to_owned())
            .collect(),
        encryption,
        tags: template
            .resource_tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
        lifecycle_policy: template
            .lifecycle_policy()
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        repository_policy: template
            .repository_policy()
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    })
}

/// A pull-through cache rule as ECR describes it.
pub(crate) fn rule_from_sdk(rule: &PullThroughCacheRule) -> PullThroughRule {
    PullThroughRule {
        ecr_repository_prefix: rule.ecr_repository_prefix().unwrap_or_default().to_owned(),
        upstream_registry_url: rule.upstream_registry_url().unwrap_or_default().to_owned(),
        upstream_registry: rule
            .upstream_registry()
            .map(|u| u.as_str().to_owned())
            .unwrap_or_default(),
        upstream_repository_prefix: rule.upstream_repository_prefix().unwrap_or_default().to_owned(),
        credential_arn: rule.credential_arn().unwrap_or_default().to_owned(),
    }
}
