//! What a lifecycle policy does to a repository's images, computed the way ECR does it.
//!
//! [`evaluate`] is pure: images, pins and `now` in, one [`LifecycleOutcome`] per image acted
//! on out. It follows the AWS page "Automate the cleanup of images by using lifecycle policies
//! in Amazon ECR", section "Lifecycle policy evaluation rules", and the worked examples of
//! "Examples of lifecycle policies in Amazon ECR". What those pages say, as implemented here:
//!
//! - All rules are evaluated, then applied by priority, lowest number first; an image is
//!   expired or archived by exactly one rule or none.
//! - "An image that matches the tagging requirements of a rule cannot be expired or archived
//!   by a rule with a lower priority", even when that rule left it alone (in the "all images"
//!   example B, rule 3 cannot take image C, which rule 1 kept as its newest `alpha` image).
//!   Rules still *count* such images ("can still identify them as if they haven't been
//!   expired"): in "multiple rules" example A, rule 2 keeps only the newest `beta` image, C,
//!   and B survives solely because rule 1 saw it. Since `storageClass` is part of a rule's
//!   selection, an image shields only rules of its own storage class; otherwise AWS's
//!   "archive then expire" example could never expire anything.
//! - Several entries in `tagPatternList` or `tagPrefixList` must *all* match, each against
//!   any of the image's tags ("An image is successfully matched if all of the tags in the
//!   tagPatternList or tagPrefixList value are matched against any of the image's tags";
//!   the multiple-tags examples select only images tagged both `alpha*` and `beta*`).
//! - `imageCountMoreThan` ranks the selected images newest first by push time (a restored
//!   image's `last_activated_at` replaces its push time) and acts on those past the count.
//! - `sinceImagePushed` acts on images pushed more than N days ago (again `last_activated_at`
//!   for restored images: the page says it replaces `pushed_at_time`; reading that for ages
//!   as well as for ordering keeps a just-restored image from being archived at once).
//! - `sinceImagePulled` uses the last pull, else the push, and after a restore with no pull
//!   since, the restore time: the latest of the three.
//! - `sinceImageTransitioned` acts on archived images archived more than N days ago; an
//!   archived image with no archive time is left alone.
//! - An expired image goes whole, with all its tags.
//!
//! Not modelled: ECR will not expire an image a manifest list still references; the caller
//! passes images without that relationship, so it must keep such images out (or pin them).

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};

use super::lifecycle_model::{CountCriterion, LifecyclePolicy, LifecycleRule, RuleAction, StorageClass};
use crate::domain::Digest;

/// One image as the lifecycle evaluator sees it (ECR's `DescribeImages` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleImage {
    /// The image's digest: lifecycle actions take the whole image, every tag with it.
    pub digest: Digest,
    /// Its tags; empty for an untagged image.
    pub tags: Vec<String>,
    /// `imagePushedAt`.
    pub pushed_at: DateTime<Utc>,
    /// `lastRecordedPullTime`, if ECR recorded a pull.
    pub last_pulled_at: Option<DateTime<Utc>>,
    /// `lastActivatedAt`: when the image was last restored from archive, if ever.
    pub last_activated_at: Option<DateTime<Utc>>,
    /// Where the image is stored now.
    pub storage_class: StorageClass,
    /// `lastArchivedAt`: when the image moved to archive, if it did.
    pub transitioned_at: Option<DateTime<Utc>>,
}

/// One image a rule acts on (or would act on, for a pinned image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleOutcome {
    /// The image.
    pub digest: Digest,
    /// `rulePriority` of the rule that takes it.
    pub rule_priority: u32,
    /// What the rule does to it.
    pub action: RuleAction,
}

/// The result of applying a policy: what happens, and what pins prevent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Images acted on, by rule priority, oldest first within a rule.
    pub acted_on: Vec<LifecycleOutcome>,
    /// Pinned images a rule would have acted on, in the same order; they stay untouched.
    pub saved_by_pin: Vec<LifecycleOutcome>,
}

impl LifecycleImage {
    /// The time ECR ranks and ages by: the push, or the latest restore from archive.
    fn ranking_time(&self) -> DateTime<Utc> {
        self.last_activated_at.unwrap_or(self.pushed_at)
    }

    /// The time `sinceImagePulled` measures from: last pull, push or restore, whichever is latest.
    fn last_used_at(&self) -> DateTime<Utc> {
        [Some(self.pushed_at), self.last_pulled_at, self.last_activated_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.pushed_at)
    }
}

/// What `policy` does to `images` at `now`. Pinned digests in `keep` are never acted on: a rule
/// that would take one reports it in [`Evaluation::saved_by_pin`] instead, and every other image
/// fares exactly as without the pin. Sorts once; each rule is then one pass over the images.
pub fn evaluate(
    policy: &LifecyclePolicy,
    images: &[LifecycleImage],
    keep: &HashSet<Digest>,
    now: DateTime<Utc>,
) -> Evaluation {
    let mut newest_first: Vec<usize> = (0..images.len()).collect();
    newest_first.sort_by(|&a, &b| {
        let (a, b) = (&images[a], &images[b]);
        b.ranking_time()
            .cmp(&a.ranking_time())
            .then_with(|| a.digest.cmp(&b.digest))
    });
    let mut seen_by_earlier_rule = vec![false; images.len()];
    let mut evaluation = Evaluation::default();
    for rule in policy.rules_by_priority() {
        let marked = apply_rule(rule, images, &newest_first, &mut seen_by_earlier_rule, now);
        for index in marked.into_iter().rev() {
            let image = &images[index];
            let outcome = LifecycleOutcome {
                digest: image.digest.clone(),
                rule_priority: rule.priority,
                action: rule.action,
            };
            match keep.contains(&image.digest) {
                true => evaluation.saved_by_pin.push(outcome),
                false => evaluation.acted_on.push(outcome),
            }
        }
    }
    evaluation
}

/// The images `rule` takes, newest first; afterwards every image it selected is shielded
/// from the rules after it.
fn apply_rule(
    rule: &LifecycleRule,
    images: &[LifecycleImage],
    newest_first: &[usize],
    seen_by_earlier_rule: &mut [bool],
    now: DateTime<Utc>,
) -> Vec<usize> {
    let selection = &rule.selection;
    let mut marked = Vec::new();
    let mut rank = 0_u64;
    for &index in newest_first {
        let image = &images[index];
        if image.storage_class != selection.storage_class || !selection.tags.matches(&image.tags) {
            continue;
        }
        rank += 1;
        if !seen_by_earlier_rule[index] && criterion_marks(selection.count, image, rank, now) {
            marked.push(index);
        }
        seen_by_earlier_rule[index] = true;
    }
    marked
}

/// Whether `count` marks `image`, the `rank`-th newest image the rule selects.
fn criterion_marks(count: CountCriterion, image: &LifecycleImage, rank: u64, now: DateTime<Utc>) -> bool {
    let older_than = |time: DateTime<Utc>, days: u32| now - time > TimeDelta::days(i64::from(days));
    match count {
        CountCriterion::ImageCountMoreThan(keep) => rank > u64::from(keep),
        CountCriterion::SinceImagePushed(days) => older_than(image.ranking_time(), days),
        CountCriterion::SinceImagePulled(days) => older_than(image.last_used_at(), days),
        CountCriterion::SinceImageTransitioned(days) => image
            .transitioned_at
            .is_some_and(|archived| older_than(archived, days)),
    }
}

#[cfg(test)]
#[path = "lifecycle_eval_tests.rs"]
mod tests;
