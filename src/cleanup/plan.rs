//! What a lifecycle policy does to a repository's cached images now, with
//! pins and protection applied: the one evaluation behind PreviewCleanup,
//! SetLifecyclePolicy's at-risk report and a cleanup run's plan.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sqlx::PgPool;

use crate::domain::{Digest, RegistryRef, TagPattern};
use crate::policy::lifecycle_eval::{self, LifecycleImage};
use crate::policy::lifecycle_model::{LifecyclePolicy, RuleAction, StorageClass};
use crate::policy::protection::{self, CleanupConfig};
use crate::store::{StoreError, image_reads, pins};

/// One image a rule acts on, or would but a pin or protection saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The rule's `rulePriority`.
    pub rule_priority: u32,
    /// What the rule does.
    pub action: RuleAction,
    /// Kept anyway (see [`Preview::holders`] and [`Preview::protected`]).
    pub saved: bool,
    /// Index into [`Preview::images`].
    pub image: usize,
}

/// A policy's verdict on a repository's cached images.
#[derive(Debug)]
pub struct Preview {
    /// Acted on or saved, ordered by rule priority, then push time, then digest.
    pub verdicts: Vec<Verdict>,
    /// Every cached image of the repository.
    pub images: Vec<LifecycleImage>,
    /// Active pins' holders by digest.
    pub holders: HashMap<String, Vec<String>>,
    /// Why an image is protected, by digest: the protected tag pattern, or
    /// (with [`Floors::Protect`]) `keep_newest N `pattern`` for a retention floor.
    pub protected: HashMap<String, String>,
}

/// Whether retention floors keep images (a run) or are checked against the
/// policy separately (SetLifecyclePolicy refuses a policy that breaks one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floors {
    /// The floors' newest images are saved like protected ones.
    Protect,
    /// The floors are left to [`floor_breaches`].
    Ignore,
}

/// Evaluates `policy` over the repository's cached images now.
pub async fn preview(
    pool: &PgPool,
    cleanup: &CleanupConfig,
    registry: &RegistryRef,
    repository: &str,
    policy: &LifecyclePolicy,
    floors: Floors,
) -> Result<Preview, StoreError> {
    let rows = image_reads::lifecycle_rows(pool, registry, repository).await?;
    let pins = pins::active(pool, registry, repository, None).await?;
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for pin in pins {
        holders.entry(pin.digest).or_default().push(pin.holder);
    }
    let mut protected: HashMap<String, String> = HashMap::new();
    let mut images = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(digest) = Digest::parse(&row.digest) else {
            continue;
        };
        if let Some(pattern) = row
            .tags
            .iter()
            .find_map(|t| protection::protecting_pattern(cleanup, repository, t))
        {
            protected.insert(row.digest, pattern.to_owned());
        }
        images.push(LifecycleImage {
            digest,
            tags: row.tags,
            pushed_at: row.pushed_at,
            last_pulled_at: row.last_pulled_at,
            last_activated_at: None,
            storage_class: if row.status == "ARCHIVED" {
                StorageClass::Archive
            } else {
                StorageClass::Standard
            },
            transitioned_at: None,
        });
    }
    if floors == Floors::Protect {
        for (floor, kept) in floor_keeps(cleanup, repository, &images) {
            for index in kept {
                protected
                    .entry(images[index].digest.to_string())
                    .or_insert_with(|| format!("keep_newest {} `{}`", floor.count, floor.tags));
            }
        }
    }
    let keep: HashSet<Digest> = holders
        .keys()
        .chain(protected.keys())
        .filter_map(|d| Digest::parse(d).ok())
        .collect();
    let evaluation = lifecycle_eval::evaluate(policy, &images, &keep, Utc::now());
    let index: HashMap<&Digest, usize> = images
        .iter()
        .enumerate()
        .map(|(i, image)| (&image.digest, i))
        .collect();
    let mut verdicts: Vec<Verdict> = evaluation
        .acted_on
        .iter()
        .map(|o| (o, false))
        .chain(evaluation.saved_by_pin.iter().map(|o| (o, true)))
        .filter_map(|(outcome, saved)| {
            Some(Verdict {
                rule_priority: outcome.rule_priority,
                action: outcome.action,
                saved,
                image: *index.get(&outcome.digest)?,
            })
        })
        .collect();
    drop(index);
    verdicts.sort_by(|a, b| {
        let (x, y) = (&images[a.image], &images[b.image]);
        (a.rule_priority, x.pushed_at, &x.digest).cmp(&(b.rule_priority, y.pushed_at, &y.digest))
    });
    Ok(Preview {
        verdicts,
        images,
        holders,
        protected,
    })
}

/// Each retention floor of `repository` with the images it keeps: the
/// `count` newest with a tag matching its pattern.
pub fn floor_keeps<'a>(
    cleanup: &'a CleanupConfig,
    repository: &str,
    images: &[LifecycleImage],
) -> Vec<(&'a protection::RetentionFloor, Vec<usize>)> {
    protection::floors_for(cleanup, repository)
        .into_iter()
        .map(|floor| {
            let mut matching: Vec<usize> = (0..images.len())
                .filter(|&i| {
                    images[i]
                        .tags
                        .iter()
                        .any(|t| TagPattern::text_matches(&floor.tags, t))
                })
                .collect();
            matching.sort_by(|&a, &b| {
                let (x, y) = (&images[a], &images[b]);
                (y.pushed_at, &y.digest).cmp(&(x.pushed_at, &x.digest))
            });
            matching.truncate(floor.count as usize);
            (floor, matching)
        })
        .collect()
}

/// The retention floors `preview`'s policy breaks, with how many of each
/// floor's images it would expire.
pub fn floor_breaches<'a>(
    cleanup: &'a CleanupConfig,
    repository: &str,
    preview: &Preview,
) -> Vec<(&'a protection::RetentionFloor, usize)> {
    let expired: HashSet<usize> = preview
        .verdicts
        .iter()
        .filter(|v| v.action == RuleAction::Expire)
        .map(|v| v.image)
        .collect();
    floor_keeps(cleanup, repository, &preview.images)
        .into_iter()
        .filter_map(|(floor, kept)| {
            let hit = kept.iter().filter(|i| expired.contains(i)).count();
            (hit > 0).then_some((floor, hit))
        })
        .collect()
}
