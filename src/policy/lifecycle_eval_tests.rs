//! Tables from AWS's "Examples of lifecycle policies in Amazon ECR", plus properties.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn days_ago(days: i64) -> DateTime<Utc> {
    now() - TimeDelta::days(days)
}

fn digest(n: usize) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).expect("valid digest")
}

/// A standard-class image named by `n`, tagged `tags`, pushed `age` days ago.
fn image(n: usize, tags: &[&str], age: i64) -> LifecycleImage {
    LifecycleImage {
        digest: digest(n),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        pushed_at: days_ago(age),
        last_pulled_at: None,
        last_activated_at: None,
        storage_class: StorageClass::Standard,
        transitioned_at: None,
    }
}

/// A policy of `rules`, each `(priority, selection JSON, action JSON)`.
fn policy(rules: &[(u32, &str, &str)]) -> LifecyclePolicy {
    let rules: Vec<String> = rules
        .iter()
        .map(|(priority, selection, action)| {
            format!(r#"{{"rulePriority":{priority},"selection":{selection},"action":{action}}}"#)
        })
        .collect();
    let text = format!(r#"{{"rules":[{}]}}"#, rules.join(","));
    LifecyclePolicy::parse(&text, "lifecycle_policy").expect("test policy is valid")
}

const EXPIRE: &str = r#"{"type":"expire"}"#;
const ARCHIVE: &str = r#"{"type":"transition","targetStorageClass":"archive"}"#;

/// Acted-on images as `(image number, rule priority)`, in the evaluator's order.
fn acted(policy: &LifecyclePolicy, images: &[LifecycleImage]) -> Vec<(usize, u32)> {
    let evaluation = evaluate(policy, images, &HashSet::new(), now());
    evaluation
        .acted_on
        .iter()
        .map(|outcome| (number_of(images, &outcome.digest), outcome.rule_priority))
        .collect()
}

fn number_of(images: &[LifecycleImage], digest: &Digest) -> usize {
    let index = images
        .iter()
        .position(|image| &image.digest == digest)
        .expect("known image");
    usize::from_str_radix(images[index].digest.hex(), 16).expect("hex number")
}

// Images A..F of the AWS examples are numbered 1..6.
const A: usize = 1;
const B: usize = 2;
const C: usize = 3;
const D: usize = 4;
const E: usize = 5;
const F: usize = 6;

#[test]
fn filtering_on_image_age_expires_old_prod_images_only() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &["prod-1"], 20),
        image(B, &["prod-2"], 14),
        image(C, &["dev-1"], 30),
    ];

    assert_eq!(acted(&policy, &images), [(A, 1)]);
}

#[test]
fn filtering_on_last_pulled_time_archives_what_nobody_pulled() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":90}"#,
        ARCHIVE,
    )]);
    let never_pulled = image(A, &[], 100);
    let pulled_lately = LifecycleImage {
        last_pulled_at: Some(days_ago(10)),
        ..image(B, &["v1"], 200)
    };
    let restored_lately = LifecycleImage {
        last_pulled_at: Some(days_ago(300)),
        last_activated_at: Some(days_ago(5)),
        ..image(C, &["v0"], 400)
    };

    let evaluation = evaluate(
        &policy,
        &[never_pulled, pulled_lately, restored_lately],
        &HashSet::new(),
        now(),
    );

    assert_eq!(
        evaluation.acted_on,
        [LifecycleOutcome {
            digest: digest(A),
            rule_priority: 1,
            action: RuleAction::TransitionToArchive
        }]
    );
}

#[test]
fn filtering_on_archive_transition_time_expires_only_long_archived_images() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":365}"#,
        EXPIRE,
    )]);
    let archived = |n, since| LifecycleImage {
        storage_class: StorageClass::Archive,
        transitioned_at: since,
        ..image(n, &[], 1000)
    };
    let images = [
        archived(A, Some(days_ago(400))),
        archived(B, Some(days_ago(100))),
        archived(C, None),
        image(D, &[], 1000),
    ];

    assert_eq!(acted(&policy, &images), [(A, 1)]);
}

#[test]
fn filtering_on_image_count_keeps_the_newest_untagged_image() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &[], 3),
        image(B, &[], 1),
        image(C, &["v1"], 9),
        image(D, &[], 2),
    ];

    assert_eq!(acted(&policy, &images), [(A, 1), (D, 1)]);
}

/// Repository of "Filtering on multiple rules": A [beta-1, prod-1] 10 days, B [beta-2, prod-2] 9, C [beta-3] 8.
fn beta_prod_repository() -> [LifecycleImage; 3] {
    [
        image(A, &["beta-1", "prod-1"], 10),
        image(B, &["beta-2", "prod-2"], 9),
        image(C, &["beta-3"], 8),
    ]
}

fn keep_one(pattern: &str) -> String {
    format!(
        r#"{{"tagStatus":"tagged","tagPatternList":["{pattern}"],"countType":"imageCountMoreThan","countNumber":1}}"#
    )
}

#[test]
fn multiple_rules_example_a_prod_first_expires_only_a() {
    let (prod, beta) = (keep_one("prod*"), keep_one("beta*"));
    let policy = policy(&[(1, &prod, EXPIRE), (2, &beta, EXPIRE)]);

    assert_eq!(acted(&policy, &beta_prod_repository()), [(A, 1)]);
}

#[test]
fn multiple_rules_example_b_beta_first_expires_a_and_b() {
    let (prod, beta) = (keep_one("prod*"), keep_one("beta*"));
    let policy = policy(&[(1, &beta, EXPIRE), (2, &prod, EXPIRE)]);

    assert_eq!(acted(&policy, &beta_prod_repository()), [(A, 1), (B, 1)]);
}

#[test]
fn priorities_decide_not_the_order_rules_are_written_in() {
    let (prod, beta) = (keep_one("prod*"), keep_one("beta*"));
    let policy = policy(&[(2, &beta, EXPIRE), (1, &prod, EXPIRE)]);

    assert_eq!(acted(&policy, &beta_prod_repository()), [(A, 1)]);
}

#[test]
fn multiple_rules_with_prefix_lists_give_the_same_results() {
    let prefix = |p: &str| {
        format!(
            r#"{{"tagStatus":"tagged","tagPrefixList":["{p}"],"countType":"imageCountMoreThan","countNumber":1}}"#
        )
    };
    let (prod, beta) = (prefix("prod"), prefix("beta"));

    let prod_first = policy(&[(1, &prod, EXPIRE), (2, &beta, EXPIRE)]);
    let beta_first = policy(&[(1, &beta, EXPIRE), (2, &prod, EXPIRE)]);

    assert_eq!(acted(&prod_first, &beta_prod_repository()), [(A, 1)]);
    assert_eq!(acted(&beta_first, &beta_prod_repository()), [(A, 1), (B, 1)]);
}

#[test]
fn multiple_tags_example_a_needs_every_pattern_to_match() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"tagged","tagPatternList":["alpha*","beta*"],"countType":"sinceImagePushed","countNumber":5,"countUnit":"days"}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &["alpha-1"], 12),
        image(B, &["beta-1"], 11),
        image(C, &["alpha-2", "beta-2"], 10),
        image(D, &["alpha-3"], 4),
        image(E, &["beta-3"], 3),
        image(F, &["alpha-4", "beta-4"], 2),
    ];

    assert_eq!(acted(&policy, &images), [(C, 1)]);
}

#[test]
fn multiple_tags_example_b_tags_are_not_exclusive() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"tagged","tagPatternList":["alpha*","beta*"],"countType":"imageCountMoreThan","countNumber":1}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &["alpha-1", "beta-1", "gamma-1"], 10),
        image(B, &["alpha-2", "beta-2"], 9),
        image(C, &["alpha-3", "beta-3", "gamma-2"], 8),
    ];

    assert_eq!(acted(&policy, &images), [(A, 1), (B, 1)]);
}

#[test]
fn a_multi_pattern_rule_does_not_match_on_any_single_pattern() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"tagged","tagPatternList":["prod*","*web*"],"countType":"imageCountMoreThan","countNumber":1}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &["prod-api"], 5),
        image(B, &["prod-1", "frontend-web"], 4),
        image(C, &["prod-web"], 3),
        image(D, &["staging-web"], 2),
    ];

    assert_eq!(acted(&policy, &images), [(B, 1)]);
}

#[test]
fn all_images_example_a_keeps_only_the_newest() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1}"#,
        EXPIRE,
    )]);
    let images = [
        image(A, &["alpha-1"], 4),
        image(B, &["beta-1"], 3),
        image(C, &[], 2),
        image(D, &["alpha-2"], 1),
    ];

    assert_eq!(acted(&policy, &images), [(A, 1), (B, 1), (C, 1)]);
}

/// AWS lists D and E as both pushed "1 day ago" and has rule 3 keep E; E is an hour newer here.
#[test]
fn all_images_example_b_lower_rules_cannot_take_what_higher_rules_selected() {
    let policy = policy(&[
        (1, &keep_one("alpha*"), EXPIRE),
        (
            2,
            r#"{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1}"#,
            EXPIRE,
        ),
        (
            3,
            r#"{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1}"#,
            EXPIRE,
        ),
    ]);
    let images = [
        image(A, &["alpha-1", "beta-1"], 4),
        image(B, &[], 3),
        image(C, &["alpha-2"], 2),
        image(D, &["git hash"], 1),
        LifecycleImage {
            pushed_at: days_ago(1) + TimeDelta::hours(1),
            ..image(E, &[], 1)
        },
    ];

    assert_eq!(acted(&policy, &images), [(A, 1), (B, 2), (D, 3)]);
}

#[test]
fn combined_archive_and_expire_rules_each_see_their_own_storage_class() {
    let policy = policy(&[
        (
            1,
            r#"{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":30}"#,
            ARCHIVE,
        ),
        (
            2,
            r#"{"tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":365}"#,
            EXPIRE,
        ),
    ]);
    let archived_long_ago = LifecycleImage {
        storage_class: StorageClass::Archive,
        transitioned_at: Some(days_ago(400)),
        ..image(C, &["v1"], 500)
    };
    let images = [image(A, &["v3"], 40), image(B, &["v4"], 10), archived_long_ago];

    let evaluation = evaluate(&policy, &images, &HashSet::new(), now());

    let actions: Vec<_> = evaluation
        .acted_on
        .iter()
        .map(|o| (o.digest.clone(), o.action))
        .collect();
    assert_eq!(
        actions,
        [
            (digest(A), RuleAction::TransitionToArchive),
            (digest(C), RuleAction::Expire)
        ]
    );
}

#[test]
fn pinned_images_are_saved_and_reported_without_changing_the_rest() {
    let policy = policy(&[(
        1,
        r#"{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1}"#,
        EXPIRE,
    )]);
    let images = [image(A, &["v1"], 3), image(B, &["v2"], 2), image(C, &["v3"], 1)];
    let keep = HashSet::from([digest(A)]);

    let evaluation = evaluate(&policy, &images, &keep, now());

    let digests =
        |outcomes: &[LifecycleOutcome]| outcomes.iter().map(|o| o.digest.clone()).collect::<Vec<_>>();
    assert_eq!(digests(&evaluation.acted_on), [digest(B)]);
    assert_eq!(digests(&evaluation.saved_by_pin), [digest(A)]);
}

#[test]
fn a_hundred_thousand_images_evaluate_quickly() {
    let policy = policy(&[
        (1, &keep_one("prod*"), EXPIRE),
        (
            2,
            r#"{"tagStatus":"tagged","tagPrefixList":["feature-"],"countType":"sinceImagePushed","countUnit":"days","countNumber":30}"#,
            EXPIRE,
        ),
        (
            3,
            r#"{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":10}"#,
            EXPIRE,
        ),
        (
            4,
            r#"{"tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":90}"#,
            ARCHIVE,
        ),
    ]);
    let images: Vec<LifecycleImage> = (0..100_000)
        .map(|n| {
            let tag = match n % 3 {
                0 => format!("prod-{n}"),
                1 => format!("feature-{n}"),
                _ => String::new(),
            };
            let tags: Vec<&str> = [tag.as_str()].into_iter().filter(|t| !t.is_empty()).collect();
            image(n, &tags, (n % 365) as i64)
        })
        .collect();

    let started = Instant::now();
    let evaluation = evaluate(&policy, &images, &HashSet::new(), now());
    let elapsed = started.elapsed();

    assert!(!evaluation.acted_on.is_empty());
    // Unoptimised test builds are several times slower than release; this still catches a quadratic loop.
    assert!(elapsed.as_secs_f64() < 3.0, "took {elapsed:?}");
}

fn tags_strategy() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec!["prod-1", "prod-2", "beta-1", "web", "alpha"]),
        0..3,
    )
    .prop_map(|tags| tags.into_iter().map(str::to_owned).collect())
}

fn images_strategy() -> impl Strategy<Value = Vec<LifecycleImage>> {
    prop::collection::vec(
        (
            tags_strategy(),
            0..60_i64,
            prop::option::of(0..60_i64),
            any::<bool>(),
            0..200_i64,
        ),
        0..25,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(n, (tags, age, pulled, archived, archived_days))| LifecycleImage {
                    tags,
                    last_pulled_at: pulled.map(days_ago),
                    storage_class: if archived {
                        StorageClass::Archive
                    } else {
                        StorageClass::Standard
                    },
                    transitioned_at: archived.then(|| days_ago(archived_days)),
                    ..image(n, &[], age)
                },
            )
            .collect()
    })
}

fn rule_strategy() -> impl Strategy<Value = (String, &'static str)> {
    let tags = prop::sample::select(vec![
        r#""tagStatus":"tagged","tagPatternList":["prod*"]"#,
        r#""tagStatus":"tagged","tagPatternList":["*e*","prod*"]"#,
        r#""tagStatus":"tagged","tagPrefixList":["beta"]"#,
        r#""tagStatus":"tagged","tagPrefixList":["web","alpha"]"#,
        r#""tagStatus":"untagged""#,
    ]);
    let count = prop::sample::select(vec![
        (r#""countType":"imageCountMoreThan","countNumber":2"#, EXPIRE),
        (
            r#""countType":"sinceImagePushed","countUnit":"days","countNumber":20"#,
            EXPIRE,
        ),
        (
            r#""countType":"sinceImagePushed","countUnit":"days","countNumber":10"#,
            ARCHIVE,
        ),
        (
            r#""countType":"sinceImagePulled","countUnit":"days","countNumber":15"#,
            ARCHIVE,
        ),
        (
            r#""storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":100"#,
            EXPIRE,
        ),
    ]);
    (tags, count).prop_map(|(tags, (count, action))| (format!("{{{tags},{count}}}"), action))
}

/// Valid policies of up to five rules with shuffled priorities, sometimes ending with an `any` rule.
fn policy_strategy() -> impl Strategy<Value = LifecyclePolicy> {
    (prop::collection::vec((rule_strategy(), 1..1000_u32), 1..5), any::<bool>()).prop_filter_map(
        "rules ECR would refuse together",
        |(rules, any_last)| {
            let mut texts: Vec<String> = rules
                .iter()
                .map(|((selection, action), priority)| {
                    format!(r#"{{"rulePriority":{priority},"selection":{selection},"action":{action}}}"#)
                })
                .collect();
            if any_last {
                texts.push(format!(
                    r#"{{"rulePriority":1000,"selection":{{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":3}},"action":{EXPIRE}}}"#
                ));
            }
            LifecyclePolicy::parse(&format!(r#"{{"rules":[{}]}}"#, texts.join(",")), "p").ok()
        },
    )
}

fn acted_digests(evaluation: &Evaluation) -> HashSet<Digest> {
    evaluation
        .acted_on
        .iter()
        .map(|outcome| outcome.digest.clone())
        .collect()
}

proptest! {
    #[test]
    fn an_image_is_acted_on_by_at_most_one_rule(policy in policy_strategy(), images in images_strategy()) {
        let evaluation = evaluate(&policy, &images, &HashSet::new(), now());

        let digests = acted_digests(&evaluation);
        prop_assert_eq!(digests.len(), evaluation.acted_on.len());
    }

    #[test]
    fn pinning_more_images_never_acts_on_more(
        policy in policy_strategy(),
        images in images_strategy(),
        pins in prop::collection::vec(0..25_usize, 0..6),
        more_pins in prop::collection::vec(0..25_usize, 0..6),
    ) {
        let keep: HashSet<Digest> = pins.iter().map(|&n| digest(n)).collect();
        let more: HashSet<Digest> = keep.iter().cloned().chain(more_pins.iter().map(|&n| digest(n))).collect();

        let fewer_pins = acted_digests(&evaluate(&policy, &images, &keep, now()));
        let more_pins = evaluate(&policy, &images, &more, now());

        prop_assert!(acted_digests(&more_pins).is_subset(&fewer_pins));
        prop_assert!(more_pins.acted_on.iter().all(|outcome| !more.contains(&outcome.digest)));
    }
}
