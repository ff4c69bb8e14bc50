//! Planning a cleanup run: the run's lifecycle policy (or each repository's
//! own) evaluated over the cached images, every selected image stored as an
//! item with its outcome to be, and the repositories skipped with why.

use serde_json::{Value, json};

use super::{Stop, Worker};
use crate::cleanup::plan::{self, Floors};
use crate::domain::{RegistryRef, RepositoryName};
use crate::policy::lifecycle_model::{LifecyclePolicy, RuleAction};
use crate::store::cleanup_runs::{self, ItemRow, RunRow};
use crate::store::{StoreError, repositories};

impl Worker {
    /// Evaluates the policy over each repository's cached images and stores every selected image.
    pub(super) async fn plan(&self, run: &RunRow, registry: &RegistryRef) -> Result<(), Stop> {
        let pool = self.store.pool();
        let names: Vec<String> = if run.repository.is_empty() {
            repositories::names(pool, registry)
                .await?
                .into_iter()
                .map(|n| n.to_string())
                .filter(|n| n.starts_with(&run.repository_prefix))
                .collect()
        } else {
            vec![run.repository.clone()]
        };
        let given = run
            .policy_text
            .as_deref()
            .map(|text| LifecyclePolicy::parse(text, "policy_text"));
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for name in names {
            let Ok(repository) = RepositoryName::parse(&name) else {
                continue;
            };
            let Some(cached) = repositories::get(pool, registry, &repository).await? else {
                skipped.push(json!({"repository": name, "reason": "not in the inventory (deleted?)"}));
                continue;
            };
            let policy = match (&given, cached.state.lifecycle_policy.as_deref()) {
                (Some(Ok(policy)), _) => policy.clone(),
                (Some(Err(_)), _) => {
                    skipped.push(json!({"repository": name, "reason": "the run's policy does not parse"}));
                    continue;
                }
                (None, None) => {
                    skipped.push(json!({"repository": name, "reason": "it has no lifecycle policy"}));
                    continue;
                }
                (None, Some(text)) => match LifecyclePolicy::parse(text, "lifecyclePolicy") {
                    Ok(policy) => policy,
                    Err(problems) => {
                        let first = problems
                            .first()
                            .map(|v| v.description.clone())
                            .unwrap_or_default();
                        skipped.push(json!({"repository": name,
                            "reason": format!("its lifecycle policy does not parse: {first}")}));
                        continue;
                    }
                },
            };
            let preview =
                plan::preview(pool, &self.protection, registry, &name, &policy, Floors::Protect).await?;
            for verdict in &preview.verdicts {
                let image = &preview.images[verdict.image];
                let digest = image.digest.to_string();
                let (outcome, message) = if verdict.saved {
                    match (preview.holders.get(&digest), preview.protected.get(&digest)) {
                        (Some(holders), _) => ("saved_by_pin", format!("pinned by {}", holders.join(", "))),
                        (None, why) => (
                            "saved_by_protection",
                            format!("protected: {}", why.map(String::as_str).unwrap_or("org policy")),
                        ),
                    }
                } else if verdict.action == RuleAction::TransitionToArchive {
                    (
                        "skipped",
                        "a transition rule: archiving is left to ECR's own lifecycle; RunCleanup only expires".into(),
                    )
                } else if run.dry_run {
                    ("would_expire", String::new())
                } else {
                    ("pending", String::new())
                };
                items.push(ItemRow {
                    repository: name.clone(),
                    digest,
                    tags: image.tags.clone(),
                    pushed_at: image.pushed_at,
                    rule_priority: i32::try_from(verdict.rule_priority).unwrap_or(i32::MAX),
                    action: match verdict.action {
                        RuleAction::Expire => "expire",
                        RuleAction::TransitionToArchive => "transition",
                    }
                    .into(),
                    outcome: outcome.into(),
                    message,
                    batch: None,
                    audit_event_id: None,
                });
            }
        }
        let mut tx = self.store.begin().await?;
        if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
            return Err(Stop::Lost);
        }
        cleanup_runs::store_plan(&mut tx, run.id, &items, &Value::Array(skipped)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(run = %run.id, images = items.len(), "cleanup run planned");
        Ok(())
    }
}
