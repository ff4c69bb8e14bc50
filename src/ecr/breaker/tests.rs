use super::*;

fn breaker(failure_threshold: u32, open_seconds: u64) -> Breaker {
    Breaker::new(
        "main",
        BreakerConfig {
            enabled: true,
            failure_threshold,
            open_seconds,
        },
        Duration::from_secs(25),
    )
}

fn down() -> Outcome {
    Outcome::Down(Failure {
        summary: "no connection to ECR".into(),
        detail: "dispatch failure: io error: tcp connect error: Connection refused (os error 111)".into(),
    })
}

fn fail(breaker: &Breaker, times: u32, now: Instant) {
    for _ in 0..times {
        let admission = breaker.admit(now).expect("closed");
        breaker.settle(admission, down(), now);
    }
}

#[test]
fn it_opens_after_the_threshold_of_consecutive_failures() {
    let breaker = breaker(3, 30);
    let now = Instant::now();

    fail(&breaker, 2, now);
    assert_eq!(breaker.status().phase, Phase::Closed);
    fail(&breaker, 1, now);

    let refused = breaker.admit(now).expect_err("open");
    assert_eq!(breaker.status().phase, Phase::Open);
    assert_eq!(refused.registry, "main");
    assert!(
        refused.reason.contains("3 ECR calls in a row failed"),
        "{}",
        refused.reason
    );
    assert!(
        refused.reason.ends_with("the last with: no connection to ECR"),
        "{}",
        refused.reason
    );
    assert!(
        !refused.reason.contains("tcp connect error"),
        "the transport's own words stay in the log: {}",
        refused.reason
    );
    assert_eq!(refused.retry_after, Duration::from_secs(30));
}

#[test]
fn an_answer_from_ecr_resets_the_count_of_failures() {
    let breaker = breaker(3, 30);
    let now = Instant::now();

    fail(&breaker, 2, now);
    let admission = breaker.admit(now).expect("closed");
    breaker.settle(admission, Outcome::Answered, now);
    fail(&breaker, 2, now);

    assert!(breaker.admit(now).is_ok(), "4 failures, but never 3 in a row");
}

#[test]
fn calls_that_say_nothing_about_ecr_neither_count_nor_reset() {
    let breaker = breaker(2, 30);
    let now = Instant::now();

    fail(&breaker, 1, now);
    let admission = breaker.admit(now).expect("closed");
    breaker.settle(admission, Outcome::Unknown, now);
    fail(&breaker, 1, now);

    assert!(
        breaker.admit(now).is_err(),
        "the unknown outcome did not reset the count"
    );
}

#[test]
fn the_retry_delay_is_the_rest_of_the_cool_down() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);

    let refused = breaker.admit(start + Duration::from_secs(18)).expect_err("open");

    assert_eq!(refused.retry_after, Duration::from_secs(12));
}

#[test]
fn after_the_cool_down_one_probe_goes_through_and_the_rest_fail_fast() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);
    let later = start + Duration::from_secs(30);

    let probe = breaker.admit(later);
    let other = breaker.admit(later);

    assert_eq!(probe, Ok(Admission::Probe));
    assert_eq!(breaker.status().phase, Phase::HalfOpen);
    assert_eq!(other.expect_err("probe running").retry_after, PROBE_RETRY_AFTER);
}

#[test]
fn a_successful_probe_closes_the_breaker() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);
    let later = start + Duration::from_secs(31);

    let probe = breaker.admit(later).expect("probe");
    breaker.settle(probe, Outcome::Answered, later);

    assert_eq!(breaker.status().phase, Phase::Closed);
    assert_eq!(breaker.admit(later), Ok(Admission::Normal));
}

#[test]
fn a_failed_probe_opens_the_breaker_for_another_cool_down() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);
    let later = start + Duration::from_secs(31);

    let probe = breaker.admit(later).expect("probe");
    breaker.settle(probe, down(), later);

    let refused = breaker
        .admit(later + Duration::from_secs(1))
        .expect_err("open again");
    assert_eq!(breaker.status().phase, Phase::Open);
    assert_eq!(refused.retry_after, Duration::from_secs(29));
    assert!(refused.reason.contains("probe"), "{}", refused.reason);
}

#[test]
fn an_abandoned_probe_lets_the_next_call_probe() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);
    let later = start + Duration::from_secs(31);

    let probe = breaker.admit(later).expect("probe");
    breaker.settle(probe, Outcome::Unknown, later);

    assert_eq!(breaker.admit(later), Ok(Admission::Probe));
}

#[test]
fn a_probe_that_never_reports_back_is_replaced_after_the_probe_timeout() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    fail(&breaker, 1, start);
    let later = start + Duration::from_secs(31);
    breaker.admit(later).expect("probe");

    assert!(breaker.admit(later + Duration::from_secs(24)).is_err());
    assert_eq!(
        breaker.admit(later + Duration::from_secs(25)),
        Ok(Admission::Probe)
    );
}

#[test]
fn late_failures_of_calls_let_through_earlier_do_not_extend_the_cool_down() {
    let breaker = breaker(1, 30);
    let start = Instant::now();
    let early = breaker.admit(start).expect("closed");
    fail(&breaker, 1, start);

    breaker.settle(early, down(), start + Duration::from_secs(20));

    let refused = breaker.admit(start + Duration::from_secs(20)).expect_err("open");
    assert_eq!(refused.retry_after, Duration::from_secs(10));
}

#[test]
fn a_disabled_breaker_never_opens() {
    let breaker = Breaker::new(
        "main",
        BreakerConfig {
            enabled: false,
            failure_threshold: 1,
            open_seconds: 30,
        },
        Duration::from_secs(25),
    );
    let now = Instant::now();

    fail(&breaker, 10, now);

    assert_eq!(breaker.admit(now), Ok(Admission::Normal));
    assert_eq!(breaker.status().phase, Phase::Closed);
}

#[test]
fn subscribers_see_it_open_and_close() {
    let breaker = breaker(1, 30);
    let mut changes = breaker.subscribe();
    let start = Instant::now();

    fail(&breaker, 1, start);
    assert!(changes.has_changed().expect("sender alive"));
    assert_eq!(changes.borrow_and_update().phase, Phase::Open);
    let probe = breaker.admit(start + Duration::from_secs(30)).expect("probe");
    assert_eq!(changes.borrow_and_update().phase, Phase::HalfOpen);
    breaker.settle(probe, Outcome::Answered, start + Duration::from_secs(30));

    assert_eq!(changes.borrow_and_update().phase, Phase::Closed);
}
