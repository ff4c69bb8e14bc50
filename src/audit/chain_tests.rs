use serde_json::{Value, json};

use super::*;
use crate::store::audit_trail::AuditRow;

fn chain(n: usize) -> Vec<Value> {
    let mut previous = vec![0u8; 32];
    (1..=n)
        .map(|i| {
            let event = json!({"eventID": format!("e{i}"), "eventName": "ResolveImage",
                               "requestParameters": {"b": 1, "a": [true, null, "x"]}});
            let hash = link(&previous, &event);
            let mut line = event.clone();
            line["chain"] = json!({"sequence": i, "previousHash": hex::encode(&previous),
                                   "hash": hex::encode(&hash)});
            previous = hash;
            line
        })
        .collect()
}

fn check(lines: &[Value]) -> Option<(i64, String, Problem)> {
    let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
    verify(&links, Some((0, vec![0; 32]))).first_bad
}

/// Rows that differ in every optional part and in text that needs escaping.
fn rows() -> Vec<AuditRow> {
    let base = AuditRow {
        event_id: uuid::Uuid::now_v7(),
        event_time: chrono::Utc::now(),
        event_name: "ResolveImage".into(),
        event_source: "ecr-gateway.internal".into(),
        read_only: true,
        status: "succeeded".into(),
        principal: "alice".into(),
        principal_type: "User".into(),
        groups: vec!["payments".into(), "deployers".into()],
        auth_method: "jwt".into(),
        source_ip: Some("10.0.0.1".into()),
        user_agent: Some("grpc-go/1.0 \"quoted\" \u{e9}\u{1F600}\n".into()),
        registry_alias: Some("main".into()),
        account_id: Some("123456789012".into()),
        region: Some("us-east-1".into()),
        gateway_request_id: uuid::Uuid::new_v4(),
        client_request_id: Some("req-1".into()),
        request_parameters: json!({"z": 1, "a": {"y": [1.5, -2, 18446744073709551615u64, null], "b": "\u{7f}\t"}, "": true}),
        response_elements: Some(json!({"imageDigest": "sha256:ab", "pinned": false})),
        error_code: Some("NotFound".into()),
        error_message: Some("no image `x` \\ here".into()),
        ecr_request_ids: vec!["a-1".into(), "b-2".into()],
        resources: json!([{"ARN": "arn:aws:ecr:us-east-1:123456789012:repository/payments/api", "type": "AWS::ECR::Repository"}]),
        authz_decision: Some(json!({"decision": "allow", "policies": ["p1"]})),
        finalized_at: Some(chrono::Utc::now()),
        seq: Some(7),
        prev_hash: Some(vec![1; 32]),
        hash: Some(vec![2; 32]),
    };
    let bare = AuditRow {
        groups: Vec::new(),
        source_ip: None,
        user_agent: None,
        registry_alias: None,
        account_id: None,
        region: None,
        client_request_id: None,
        request_parameters: json!({}),
        response_elements: None,
        error_code: None,
        error_message: None,
        ecr_request_ids: Vec::new(),
        resources: json!([]),
        authz_decision: None,
        ..base.clone()
    };
    let service = AuditRow {
        principal_type: "Service".into(),
        auth_method: "internal".into(),
        read_only: false,
        response_elements: Some(Value::Null),
        authz_decision: Some(Value::Null),
        ..bare.clone()
    };
    let cleanup = AuditRow {
        event_name: "BatchDeleteImage".into(),
        status: "pending".into(),
        ..base.clone()
    };
    vec![base, bare, service, cleanup]
}

#[test]
fn a_rows_canonical_form_is_that_of_its_cloudtrail_json() {
    for row in rows() {
        let direct = canonical_row(&row);
        let through_json = canonical(&cloudtrail_json(&row));
        assert_eq!(
            String::from_utf8_lossy(&direct),
            String::from_utf8_lossy(&through_json),
            "{row:?}"
        );
        let parsed: Value = serde_json::from_slice(&direct).expect("valid JSON");
        assert_eq!(parsed, cloudtrail_json(&row));
    }
}

#[test]
fn signed_digests_catch_a_recomputed_chain() {
    let key = crate::audit::digest::generate();
    let lines = chain(4);
    let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
    let signed = crate::audit::digest::sign(&key, 3, links[2].hash.as_ref().unwrap(), chrono::Utc::now());
    let good = check_digests(&links, std::slice::from_ref(&signed), &key.verifying_key());
    assert_eq!((good.matched, good.unsigned_tail, good.problem), (1, 1, None));

    // Edit event 2 and recompute every hash after it: the links verify, the digest does not.
    let mut forged = lines.clone();
    forged[1]["eventName"] = json!("DeleteRepository");
    let mut previous = hex::decode(forged[1]["chain"]["previousHash"].as_str().unwrap()).unwrap();
    for line in forged.iter_mut().skip(1) {
        let mut event = line.clone();
        event.as_object_mut().unwrap().remove("chain");
        let hash = link(&previous, &event);
        line["chain"]["previousHash"] = json!(hex::encode(&previous));
        line["chain"]["hash"] = json!(hex::encode(&hash));
        previous = hash;
    }
    let forged: Vec<Link> = forged.into_iter().map(Link::from_export).collect();
    assert_eq!(verify(&forged, Some((0, vec![0; 32]))).first_bad, None);
    let caught = check_digests(&forged, &[signed], &key.verifying_key());
    assert!(caught.problem.unwrap().contains("recomputed"));
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let value: Value = serde_json::from_str(r#"{"b":{"z":1,"a":2},"a":[{"y":1,"x":2}]}"#).unwrap();
    assert_eq!(canonical(&value), br#"{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}}"#);
}

#[test]
fn an_untouched_export_verifies() {
    let lines = chain(5);
    assert_eq!(check(&lines), None);
    let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
    assert_eq!(verify(&links, None).checked, 5);
}

/// An event that claims place `sequence` of `lines` with a link that is
/// right in itself: that sequence, the hash of the event before, and its own hash.
fn forged(lines: &[Value], sequence: usize, id: &str) -> Value {
    let previous = match sequence {
        1 => vec![0; 32],
        n => hex::decode(lines[n - 2]["chain"]["hash"].as_str().unwrap()).unwrap(),
    };
    let mut event = json!({"eventID": id, "eventName": "CreateRepository"});
    let hash = link(&previous, &event);
    event["chain"] =
        json!({"sequence": sequence, "previousHash": hex::encode(&previous), "hash": hex::encode(hash)});
    event
}

fn check_untrusted(lines: &[Value]) -> Option<(i64, String, Problem)> {
    let links: Vec<Link> = lines.iter().cloned().map(Link::from_export).collect();
    verify(&links, None).first_bad
}

#[test]
fn a_self_consistent_insertion_is_named_not_the_genuine_event_after_it() {
    let lines = chain(5);
    // Before the genuine event whose place it claims, at the start, in the middle, before the last.
    for sequence in [1, 3, 4] {
        let mut inserted = lines.clone();
        inserted.insert(sequence - 1, forged(&lines, sequence, "forged"));
        let want = Some((sequence as i64, "forged".to_owned(), Problem::Inserted));
        assert_eq!(check(&inserted), want, "before e{sequence}");
        assert_eq!(check_untrusted(&inserted), want, "before e{sequence}, no start");
        let links: Vec<Link> = inserted.iter().cloned().map(Link::from_export).collect();
        assert_eq!(verify(&links, None).checked, sequence as u64, "its line");
    }
    // After the genuine event, and far from it.
    let mut after = lines.clone();
    after.insert(3, forged(&lines, 3, "forged"));
    assert_eq!(check(&after), Some((3, "forged".into(), Problem::Inserted)));
    let mut far = lines.clone();
    far.push(forged(&lines, 2, "forged"));
    assert_eq!(check(&far), Some((2, "forged".into(), Problem::Inserted)));
    // At the start of an export that does not begin at the chain's start:
    // the walk trusts the first link, yet the chain goes on from the next one.
    let mut first = lines.clone();
    let mut stray = json!({"eventID": "forged", "eventName": "CreateRepository"});
    let hash = link(&[9; 32], &stray);
    stray["chain"] = json!({"sequence": 0, "previousHash": hex::encode([9; 32]), "hash": hex::encode(hash)});
    first.insert(0, stray);
    assert_eq!(
        check_untrusted(&first),
        Some((0, "forged".into(), Problem::Inserted))
    );
    // With a sequence of its own between two events that follow each other.
    let mut numbered = lines.clone();
    let mut loose = forged(&lines, 3, "forged");
    loose["chain"]["sequence"] = json!(9);
    loose["chain"]["previousHash"] = json!(hex::encode([3; 32]));
    let mut event = loose.clone();
    event.as_object_mut().unwrap().remove("chain");
    loose["chain"]["hash"] = json!(hex::encode(link(&[3; 32], &event)));
    numbered.insert(2, loose);
    assert_eq!(check(&numbered), Some((9, "forged".into(), Problem::Inserted)));
}

#[test]
fn an_insertion_before_the_last_event_is_contested_until_a_digest_settles_it() {
    let lines = chain(5);
    let mut inserted = lines.clone();
    inserted.insert(4, forged(&lines, 5, "forged"));
    let links: Vec<Link> = inserted.iter().cloned().map(Link::from_export).collect();
    let verdict = verify(&links, None);
    assert_eq!(verdict.first_bad, Some((5, "forged".into(), Problem::Contested)));
    assert_eq!(verdict.rival, Some(("e5".into(), 6)));

    let key = crate::audit::digest::generate();
    let genuine = crate::audit::digest::sign(&key, 5, links[5].hash.as_ref().unwrap(), chrono::Utc::now());
    let settled = settle_contest(
        verdict.clone(),
        &links,
        std::slice::from_ref(&genuine),
        &key.verifying_key(),
    );
    assert_eq!(settled.first_bad, Some((5, "forged".into(), Problem::Inserted)));
    assert_eq!(settled.checked, 5);
    // The genuine one stands first: the other is named.
    let mut reversed = lines.clone();
    reversed.push(forged(&lines, 5, "forged"));
    let links: Vec<Link> = reversed.iter().cloned().map(Link::from_export).collect();
    let verdict = verify(&links, None);
    assert_eq!(verdict.first_bad, Some((5, "e5".into(), Problem::Contested)));
    let settled = settle_contest(
        verdict.clone(),
        &links,
        std::slice::from_ref(&genuine),
        &key.verifying_key(),
    );
    assert_eq!(settled.first_bad, Some((5, "forged".into(), Problem::Inserted)));
    assert_eq!(settled.checked, 6);
    // A digest signed by another key settles nothing.
    let other = crate::audit::digest::generate();
    let unsettled = settle_contest(verdict.clone(), &links, &[genuine], &other.verifying_key());
    assert_eq!(unsettled, verdict);
}

#[test]
fn removals_and_reorderings_are_still_told_from_insertions() {
    let mut first_gone = chain(5);
    first_gone.remove(0);
    assert_eq!(check(&first_gone), Some((2, "e2".into(), Problem::Removed)));
    let mut last_two_swapped = chain(5);
    last_two_swapped.swap(3, 4);
    assert_eq!(
        check(&last_two_swapped),
        Some((5, "e5".into(), Problem::Reordered))
    );
    let mut moved_to_the_end = chain(5);
    let moved = moved_to_the_end.remove(1);
    moved_to_the_end.push(moved);
    assert_eq!(
        check(&moved_to_the_end),
        Some((3, "e3".into(), Problem::Reordered))
    );
    let mut far_swap = chain(6);
    far_swap.swap(1, 4);
    assert_eq!(check(&far_swap), Some((5, "e5".into(), Problem::Reordered)));
    let mut copied = chain(5);
    let copy = copied[1].clone();
    copied.insert(2, copy);
    assert_eq!(check(&copied), Some((2, "e2".into(), Problem::Reordered)));
}

#[test]
fn each_kind_of_tampering_is_caught_and_located() {
    let mut edited = chain(5);
    edited[2]["eventName"] = json!("DeleteRepository");
    assert_eq!(check(&edited), Some((3, "e3".into(), Problem::Modified)));

    let mut dropped = chain(5);
    dropped.remove(1);
    assert_eq!(check(&dropped), Some((3, "e3".into(), Problem::Removed)));

    let mut swapped = chain(5);
    swapped.swap(1, 2);
    assert_eq!(check(&swapped), Some((3, "e3".into(), Problem::Reordered)));

    let mut inserted = chain(5);
    let mut forged = json!({"eventID": "forged", "eventName": "CreateRepository"});
    let hash = link(&[7; 32], &forged);
    forged["chain"] = json!({"sequence": 3, "previousHash": hex::encode([7; 32]), "hash": hex::encode(hash)});
    inserted.insert(2, forged);
    assert_eq!(check(&inserted), Some((3, "forged".into(), Problem::Inserted)));

    let mut unchained = chain(3);
    unchained.insert(1, json!({"eventID": "bare"}));
    assert_eq!(check(&unchained), Some((2, "bare".into(), Problem::Inserted)));
}
