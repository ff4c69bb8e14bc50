use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://login.example.com/";

struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn es256_key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let point = pair.public_key_raw(); // 0x04 || x || y
    TestKey {
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

fn verifier(keys: &[&TestKey], service_pattern: Option<&str>) -> OidcVerifier {
    let document = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    OidcVerifier {
        jwks: Arc::new(Jwks::from_document("test", document.to_string().as_bytes()).expect("jwks")),
        issuer: ISSUER.into(),
        audiences: vec!["ecr-gateway".into(), "other".into()],
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway: Duration::from_secs(60),
        principal_claim: "sub".into(),
        groups_claim: "groups".into(),
        service_subjects: service_pattern.map(|p| Regex::new(p).expect("regex")),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": "ecr-gateway",
        "sub": "alice@example.com",
        "groups": ["payments", "search"],
        "exp": now() + 600,
        "iat": now(),
    })
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn a_valid_token_gives_principal_groups_and_method() {
    let key = es256_key("k1");
    let identity = verifier(&[&key], None)
        .verify(&sign(&key, &claims()))
        .await
        .expect("valid");
    assert_eq!(identity.principal, "alice@example.com");
    assert_eq!(identity.principal_type, "User");
    assert_eq!(identity.groups, vec!["payments", "search"]);
    assert_eq!(identity.auth_method, "oidc");
}

#[tokio::test]
async fn principals_matching_the_service_pattern_are_services() {
    let key = es256_key("k1");
    let token = sign(&key, &with(claims(), "sub", json!("svc:deployer")));
    let identity = verifier(&[&key], Some("^svc:"))
        .verify(&token)
        .await
        .expect("valid");
    assert_eq!(identity.principal_type, "Service");
}

#[tokio::test]
async fn groups_may_be_one_string_or_missing() {
    let key = es256_key("k1");
    let verifier = verifier(&[&key], None);
    let one = sign(&key, &with(claims(), "groups", json!("payments")));
    assert_eq!(
        verifier.verify(&one).await.expect("valid").groups,
        vec!["payments"]
    );
    let mut none = claims();
    none.as_object_mut().expect("object").remove("groups");
    assert!(
        verifier
            .verify(&sign(&key, &none))
            .await
            .expect("valid")
            .groups
            .is_empty()
    );
}

async fn reason(verifier: &OidcVerifier, token: &str) -> String {
    verifier.verify(token).await.expect_err("refused")
}

#[tokio::test]
async fn every_time_and_audience_rule_has_its_reason() {
    let key = es256_key("k1");
    let verifier = verifier(&[&key], None);
    let expired = sign(&key, &with(claims(), "exp", json!(now() - 3600)));
    assert_eq!(reason(&verifier, &expired).await, "bearer token expired");
    let within_leeway = sign(&key, &with(claims(), "exp", json!(now() - 30)));
    assert!(verifier.verify(&within_leeway).await.is_ok());
    let early = sign(&key, &with(claims(), "nbf", json!(now() + 3600)));
    assert!(reason(&verifier, &early).await.contains("not yet valid"));
    let foreign = sign(&key, &with(claims(), "aud", json!(["someone-else"])));
    assert_eq!(
        reason(&verifier, &foreign).await,
        "audience is not one of ecr-gateway, other"
    );
    let second_audience = sign(&key, &with(claims(), "aud", json!(["x", "other"])));
    assert!(verifier.verify(&second_audience).await.is_ok());
    let issuer = sign(&key, &with(claims(), "iss", json!("https://evil.example.com/")));
    let issuer_reason = reason(&verifier, &issuer).await;
    assert_eq!(issuer_reason, format!("issuer is not {ISSUER}"));
    assert!(!issuer_reason.contains("evil"), "the token's content is echoed");
    let mut no_exp = claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        reason(&verifier, &sign(&key, &no_exp)).await,
        "bearer token has no `exp` claim"
    );
}

#[tokio::test]
async fn keys_signatures_and_algorithms_are_checked() {
    let key = es256_key("k1");
    let verifier = verifier(&[&key], None);
    let impostor = es256_key("k1");
    assert_eq!(
        reason(&verifier, &sign(&impostor, &claims())).await,
        "bad signature"
    );
    let stranger = es256_key("k9");
    assert_eq!(
        reason(&verifier, &sign(&stranger, &claims())).await,
        "signed with unknown key id"
    );
    let none = unsigned(json!({"alg": "none", "kid": "k1"}), &claims());
    assert_eq!(reason(&verifier, &none).await, "algorithm none not allowed");
    let hmac = unsigned(json!({"alg": "HS256", "kid": "k1"}), &claims());
    assert_eq!(reason(&verifier, &hmac).await, "algorithm HS256 not allowed");
    let odd = unsigned(json!({"alg": "<script>", "kid": "k1"}), &claims());
    assert_eq!(
        reason(&verifier, &odd).await,
        "algorithm (unrecognised) not allowed"
    );
    // RS256 is allowed, but the key named is pinned to ES256.
    let mismatched = unsigned(json!({"alg": "RS256", "kid": "k1"}), &claims());
    assert!(reason(&verifier, &mismatched).await.contains("does not match"));
    let no_kid = unsigned(json!({"alg": "ES256"}), &claims());
    assert!(reason(&verifier, &no_kid).await.contains("no key id"));
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_echo() {
    let key = es256_key("k1");
    let verifier = verifier(&[&key], None);
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30.e30"] {
        let reason = reason(&verifier, token).await;
        assert!(reason.starts_with("malformed token"), "{token:?}: {reason}");
    }
    let valid = sign(&key, &claims());
    let (head, signature) = valid.rsplit_once('.').expect("parts");
    let (header, _) = head.split_once('.').expect("parts");
    let garbage_payload = format!("{header}.bm90IGpzb24.{signature}");
    let reason = reason(&verifier, &garbage_payload).await;
    assert!(
        reason == "bad signature" || reason.starts_with("malformed"),
        "{reason}"
    );
}

#[tokio::test]
async fn principal_and_groups_claims_are_bounded() {
    let key = es256_key("k1");
    let verifier = verifier(&[&key], None);
    let mut no_sub = claims();
    no_sub.as_object_mut().expect("object").remove("sub");
    assert_eq!(
        reason(&verifier, &sign(&key, &no_sub)).await,
        "bearer token has no `sub` claim"
    );
    for bad in [json!(""), json!("x".repeat(257)), json!(42)] {
        let token = sign(&key, &with(claims(), "sub", bad));
        assert!(reason(&verifier, &token).await.contains("1-256 bytes"));
    }
    let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
    let token = sign(&key, &with(claims(), "groups", json!(many)));
    assert!(reason(&verifier, &token).await.contains("more than 64 groups"));
    let token = sign(&key, &with(claims(), "groups", json!([1, 2])));
    assert!(reason(&verifier, &token).await.contains("array of strings"));
}

#[test]
fn a_broken_jwks_file_refuses_start_naming_the_key() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), "{\"keys\": 5}").expect("write");
    let config = OidcConfig {
        issuer: ISSUER.into(),
        audiences: vec!["ecr-gateway".into()],
        jwks_file: Some(file.path().to_path_buf()),
        ..OidcConfig::default()
    };
    let problems = OidcVerifier::from_config(&config).expect_err("refused");
    assert!(problems[0].starts_with("auth.oidc.jwks_file:"), "{problems:?}");
    let missing = OidcConfig {
        jwks_file: Some("/nonexistent/jwks.json".into()),
        ..config
    };
    let problems = OidcVerifier::from_config(&missing).expect_err("refused");
    assert!(
        problems[0].contains("cannot read /nonexistent/jwks.json"),
        "{problems:?}"
    );
}
