use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn prod() -> EnvironmentRules {
    DeployConfig::default().environments["prod"].clone()
}

fn dev() -> EnvironmentRules {
    DeployConfig::default().environments["dev"].clone()
}

fn finding(name: &str, severity: Severity) -> GateFinding {
    GateFinding {
        name: name.into(),
        severity,
    }
}

fn scanned(findings: Vec<GateFinding>) -> GateImage {
    let mut counts = BTreeMap::new();
    for f in &findings {
        *counts.entry(f.severity).or_insert(0) += 1;
    }
    GateImage {
        pushed_at: now() - Duration::days(3),
        status: "ACTIVE".into(),
        scan: Some(GateScan {
            status: "COMPLETE".into(),
            completed_at: Some(now() - Duration::days(1)),
            counts,
            findings,
        }),
    }
}

fn rule_ids(verdict: &Verdict) -> Vec<&'static str> {
    verdict.reasons.iter().map(|r| r.rule_id).collect()
}

#[test]
fn severity_thresholds_per_environment() {
    let critical = || scanned(vec![finding("CVE-2024-0001", Severity::Critical)]);
    let high = || scanned(vec![finding("CVE-2024-0002", Severity::High)]);
    let low = || scanned(vec![finding("CVE-2024-0003", Severity::Low)]);
    // (environment rules, image, denied?)
    let table: Vec<(&str, EnvironmentRules, GateImage, bool)> = vec![
        ("prod", prod(), critical(), true),
        ("prod", prod(), high(), true),
        ("prod", prod(), low(), false),
        ("dev", dev(), critical(), true),
        ("dev", dev(), high(), false),
        ("dev", dev(), low(), false),
        ("prod", prod(), scanned(vec![]), false),
    ];
    for (env, rules, image, denied) in table {
        let verdict = decide(env, &rules, &Reference::Digest, Some(&image), &[], now());
        assert_eq!(!verdict.allowed(), denied, "{env}: {image:?} → {verdict:?}");
        if denied {
            assert_eq!(rule_ids(&verdict), ["deploy.severity-threshold"]);
            assert_eq!(verdict.reasons[0].findings.len(), 1);
        }
    }
}

#[test]
fn ecr_counts_above_the_listed_findings_still_block() {
    let mut image = scanned(vec![]);
    image.scan.as_mut().unwrap().counts.insert(Severity::Critical, 2);
    let verdict = decide("prod", &prod(), &Reference::Digest, Some(&image), &[], now());
    assert_eq!(rule_ids(&verdict), ["deploy.severity-threshold"]);
    assert!(verdict.reasons[0].message.contains("2 CRITICAL"), "{verdict:?}");
}

#[test]
fn exceptions_remove_only_their_findings() {
    let image = scanned(vec![
        finding("CVE-2024-0001", Severity::Critical),
        finding("CVE-2024-0002", Severity::High),
    ]);
    let one = decide(
        "prod",
        &prod(),
        &Reference::Digest,
        Some(&image),
        &["CVE-2024-0001".into()],
        now(),
    );
    assert_eq!(rule_ids(&one), ["deploy.severity-threshold"]);
    assert_eq!(one.reasons[0].findings, ["CVE-2024-0002 (HIGH)"]);
    assert_eq!(one.excepted, ["CVE-2024-0001 (CRITICAL)"]);
    let both = decide(
        "prod",
        &prod(),
        &Reference::Digest,
        Some(&image),
        &["cve-2024-0001".into(), "CVE-2024-0002".into()],
        now(),
    );
    assert!(both.allowed(), "{both:?}");
    assert_eq!(both.excepted.len(), 2);
}

#[test]
fn missing_failed_and_stale_scans() {
    let mut unscanned = scanned(vec![]);
    unscanned.scan = None;
    let v = decide("prod", &prod(), &Reference::Digest, Some(&unscanned), &[], now());
    assert_eq!(rule_ids(&v), ["deploy.scan-missing"]);
    assert!(v.reasons[0].message.contains("NOT_SCANNED"));
    assert!(decide("dev", &dev(), &Reference::Digest, Some(&unscanned), &[], now()).allowed());

    let mut failed = scanned(vec![]);
    failed.scan.as_mut().unwrap().status = "FAILED".into();
    let v = decide("prod", &prod(), &Reference::Digest, Some(&failed), &[], now());
    assert_eq!(rule_ids(&v), ["deploy.scan-missing"]);
    assert!(v.reasons[0].message.contains("FAILED"));

    let mut stale = scanned(vec![]);
    stale.scan.as_mut().unwrap().completed_at = Some(now() - Duration::days(31));
    assert_eq!(
        rule_ids(&decide(
            "prod",
            &prod(),
            &Reference::Digest,
            Some(&stale),
            &[],
            now()
        )),
        ["deploy.scan-stale"]
    );
    stale.scan.as_mut().unwrap().completed_at = Some(now() - Duration::days(29));
    assert!(decide("prod", &prod(), &Reference::Digest, Some(&stale), &[], now()).allowed());
}

#[test]
fn references_images_and_ages() {
    let clean = scanned(vec![]);
    let mutable = decide(
        "prod",
        &prod(),
        &Reference::MutableTag("latest".into()),
        Some(&clean),
        &[],
        now(),
    );
    assert_eq!(rule_ids(&mutable), ["deploy.reference-mutable"]);
    assert!(mutable.reasons[0].message.contains("`latest`"));
    assert!(
        decide(
            "prod",
            &prod(),
            &Reference::ImmutableTag("v1".into()),
            Some(&clean),
            &[],
            now()
        )
        .allowed()
    );

    let unknown = decide(
        "prod",
        &prod(),
        &Reference::MutableTag("x".into()),
        None,
        &[],
        now(),
    );
    assert_eq!(
        rule_ids(&unknown),
        ["deploy.reference-mutable", "deploy.image-unknown"]
    );

    let mut archived = scanned(vec![]);
    archived.status = "ARCHIVED".into();
    assert_eq!(
        rule_ids(&decide(
            "prod",
            &prod(),
            &Reference::Digest,
            Some(&archived),
            &[],
            now()
        )),
        ["deploy.image-archived"]
    );

    let mut rules = prod();
    rules.max_image_age_days = 2;
    assert_eq!(
        rule_ids(&decide(
            "prod",
            &rules,
            &Reference::Digest,
            Some(&clean),
            &[],
            now()
        )),
        ["deploy.image-too-old"]
    );
}

#[test]
fn every_reason_at_once() {
    let mut rules = prod();
    rules.max_image_age_days = 1;
    let mut image = scanned(vec![finding("CVE-2024-0001", Severity::Critical)]);
    image.status = "ARCHIVED".into();
    image.scan.as_mut().unwrap().completed_at = Some(now() - Duration::days(40));
    let verdict = decide(
        "prod",
        &rules,
        &Reference::MutableTag("main".into()),
        Some(&image),
        &[],
        now(),
    );
    assert_eq!(
        rule_ids(&verdict),
        [
            "deploy.reference-mutable",
            "deploy.image-archived",
            "deploy.image-too-old",
            "deploy.scan-stale",
            "deploy.severity-threshold"
        ]
    );
}

#[test]
fn vulnerability_ids() {
    for (raw, want) in [
        ("CVE-2024-3094", "CVE-2024-3094"),
        (" cve-2021-44228 ", "CVE-2021-44228"),
        ("CVE-2024-1234567", "CVE-2024-1234567"),
        ("GHSA-jfh8-c2jp-5v3q", "GHSA-jfh8-c2jp-5v3q"),
        ("ghsa-JFH8-c2jp-5v3q", "GHSA-jfh8-c2jp-5v3q"),
        ("ALAS2-2024-2500", "ALAS2-2024-2500"),
        ("CVE-2024-3094\n", "CVE-2024-3094"),
    ] {
        assert_eq!(
            parse_vulnerability_id("cve_id", raw).as_deref(),
            Ok(want),
            "{raw}"
        );
    }
    for raw in [
        "",
        "CVE",
        "CVE-24-1234",
        "CVE-2024-12",
        "CVE-2024-12a4",
        "2024-3094",
        "GHSA-jfh8-c2jp",
        "'; DROP TABLE x; --",
        "CVE-2024-\n3094",
    ] {
        let violation = parse_vulnerability_id("cve_id", raw).expect_err(raw);
        assert_eq!(
            (violation.field.as_str(), violation.rule),
            ("cve_id", "exception.cve-id")
        );
    }
}

#[test]
fn exception_expiry_window() {
    let check = |e| check_expiry("expire_time", e, 90, now()).map_err(|v| v.rule);
    assert_eq!(check(None), Err("exception.expiry-required"));
    assert_eq!(
        check(Some(now() - Duration::seconds(1))),
        Err("exception.expiry-past")
    );
    assert_eq!(check(Some(now())), Err("exception.expiry-past"));
    assert_eq!(
        check(Some(now() + Duration::days(91))),
        Err("exception.expiry-too-far")
    );
    assert!(check(Some(now() + Duration::days(90))).is_ok());
    assert!(check(Some(now() + Duration::minutes(5))).is_ok());
}

#[test]
fn scanning_configuration_against_the_policy() {
    let ns = vec!["payments".to_owned(), "search".to_owned()];
    let rule = |f, filters: &[&str]| (f, filters.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let rules_of = |v: Vec<Violation>| v.into_iter().map(|v| v.rule).collect::<Vec<_>>();
    assert!(scanning_violations(false, &[rule(Frequency::ScanOnPush, &["*"])], &ns, true).is_empty());
    assert!(
        scanning_violations(
            false,
            &[rule(Frequency::ScanOnPush, &["payments/*", "search/*"])],
            &ns,
            true
        )
        .is_empty()
    );
    assert!(
        scanning_violations(false, &[rule(Frequency::ScanOnPush, &["pay*", "s*"])], &ns, true).is_empty()
    );
    let missing = scanning_violations(false, &[rule(Frequency::ScanOnPush, &["payments/*"])], &ns, true);
    assert_eq!(rules_of(missing.clone()), ["scanning.require-scan-on-push"]);
    assert!(missing[0].description.contains("`search`"));
    // A filter with a star in the middle does not cover a whole namespace.
    assert_eq!(
        rules_of(scanning_violations(
            false,
            &[rule(Frequency::ScanOnPush, &["payments/*-api", "search/*"])],
            &ns,
            true
        )),
        ["scanning.require-scan-on-push"]
    );
    assert!(scanning_violations(false, &[], &ns, false).is_empty());
    assert_eq!(
        rules_of(scanning_violations(false, &[], &[], true)),
        ["scanning.require-scan-on-push"]
    );
    assert_eq!(
        rules_of(scanning_violations(
            false,
            &[rule(Frequency::Continuous, &["*"])],
            &ns,
            true
        )),
        ["scanning.continuous-needs-enhanced"]
    );
    assert!(scanning_violations(true, &[rule(Frequency::Continuous, &["*"])], &ns, true).is_empty());
    assert_eq!(
        rules_of(scanning_violations(
            true,
            &[
                rule(Frequency::ScanOnPush, &["Bad Filter"]),
                rule(Frequency::Continuous, &[])
            ],
            &ns,
            false
        )),
        ["scanning.filter-syntax", "scanning.filters"]
    );
    assert_eq!(
        rules_of(scanning_violations(
            false,
            &[
                rule(Frequency::ScanOnPush, &["payments/*"]),
                rule(Frequency::ScanOnPush, &["search/*"])
            ],
            &ns,
            true
        )),
        ["scanning.duplicate-frequency"]
    );
}

#[test]
fn severity_order_and_codes() {
    assert!(Severity::Critical > Severity::High && Severity::High > Severity::Low);
    assert_eq!(Severity::High.codes_at_or_above(), vec![4, 5]);
    assert_eq!(Severity::Undefined.codes_at_or_above(), vec![6]);
    for s in Severity::ALL {
        assert_eq!(Severity::from_code(s.code()), s);
        assert_eq!(Severity::from_ecr(s.as_str()), s);
    }
    assert_eq!(Severity::from_ecr("UNTRIAGED"), Severity::Undefined);
}

#[test]
fn deploy_config_problems() {
    assert!(config_problems(&DeployConfig::default()).is_empty());
    let mut config = DeployConfig::default();
    config
        .environments
        .insert("Prod EU".into(), EnvironmentRules::default());
    config.max_exception_days = 0;
    let problems = config_problems(&config);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("policy.deploy.environments.Prod EU"));
    config.environments.clear();
    assert!(config_problems(&config)[0].contains("at least one environment"));
}
