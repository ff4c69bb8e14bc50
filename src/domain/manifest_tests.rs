use proptest::prelude::*;
use serde_json::json;

use super::*;

/// A digest that differs for every seed.
fn d(seed: &str) -> String {
    digest_of(seed.as_bytes()).to_string()
}

fn parse(json: &str) -> Manifest {
    Manifest::parse(json, None).unwrap_or_else(|e| panic!("should parse: {e}"))
}

fn error(json: &Value) -> ManifestError {
    Manifest::parse(&json.to_string(), None).expect_err("should be rejected")
}

/// What `docker push` sends: Docker v2 schema 2.
fn docker_image() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023, "digest": d("config")},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654, "digest": d("l0")},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 16724, "digest": d("l1")},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 73109, "digest": d("l2")}
        ]
    })
}

/// What buildkit pushes with `oci-mediatypes=true`.
fn oci_image() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 1470, "digest": d("oci-config")},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 3623807, "digest": d("oci-l0")}],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    })
}

fn index_child(seed: &str, architecture: &str, variant: Option<&str>) -> Value {
    let mut platform = json!({"os": "linux", "architecture": architecture});
    if let Some(variant) = variant {
        platform["variant"] = json!(variant);
    }
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234, "digest": d(seed), "platform": platform})
}

fn oci_index() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [index_child("amd64", "amd64", None), index_child("arm64", "arm64", Some("v8"))]
    })
}

/// cosign's classic layout: the signature is an image manifest with a cosign config type.
fn cosign_signature() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.dev.cosign.artifact.sig.v1+json", "size": 233, "digest": d("sig-config")},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": 250, "digest": d("sig"),
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ…"}
        }],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234, "digest": d("amd64")}
    })
}

/// An OCI 1.1 SBOM attached with `oras attach`: empty config, `artifactType` and `subject`.
fn sbom() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cyclonedx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": d("{}"), "data": "e30="},
        "layers": [{"mediaType": "application/vnd.cyclonedx+json", "size": 48213, "digest": d("sbom")}],
        "subject": {"mediaType": "application/vnd.oci.image.index.v1+json", "size": 856, "digest": d("index")},
        "annotations": {"org.opencontainers.image.created": "2026-01-02T00:00:00Z"}
    })
}

#[test]
fn a_docker_v2_manifest_is_an_image_sized_by_its_config_and_layers() {
    let manifest = parse(&docker_image().to_string());

    assert_eq!(manifest.kind, ManifestKind::Image);
    assert_eq!(manifest.media_type, Manifest::DOCKER_MANIFEST);
    assert_eq!(manifest.layers.len(), 3);
    assert_eq!(manifest.image_size(), Some(7023 + 32654 + 16724 + 73109));
    assert_eq!((manifest.artifact_type, manifest.subject), (None, None));
}

#[test]
fn an_oci_image_manifest_is_an_image_with_its_annotations() {
    let manifest = parse(&oci_image().to_string());

    assert_eq!(manifest.kind, ManifestKind::Image);
    assert_eq!(
        manifest.config.map(|c| c.digest.to_string()),
        Some(d("oci-config"))
    );
    assert_eq!(
        manifest.annotations["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
}

#[test]
fn an_oci_index_lists_its_children_with_their_platforms() {
    let manifest = parse(&oci_index().to_string());

    assert_eq!(manifest.kind, ManifestKind::Index);
    assert_eq!(manifest.image_size(), None);
    let platforms: Vec<String> = manifest
        .manifests
        .iter()
        .filter_map(|child| child.platform.as_ref().map(Platform::to_string))
        .collect();
    assert_eq!(platforms, vec!["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(manifest.manifests[1].digest.to_string(), d("arm64"));
}

#[test]
fn a_docker_manifest_list_without_its_own_media_type_takes_ecrs() {
    let mut list = json!({"schemaVersion": 2, "manifests": [index_child("amd64", "amd64", None)]});
    list["manifests"][0]["mediaType"] = json!(Manifest::DOCKER_MANIFEST);

    let manifest = Manifest::parse(&list.to_string(), Some(Manifest::DOCKER_MANIFEST_LIST)).expect("valid");

    assert_eq!(manifest.media_type, Manifest::DOCKER_MANIFEST_LIST);
    assert_eq!(manifest.kind, ManifestKind::Index);
    assert_eq!(manifest.manifests[0].media_type, Manifest::DOCKER_MANIFEST);
}

#[test]
fn the_manifests_own_media_type_wins_over_ecrs() {
    let manifest = Manifest::parse(&oci_image().to_string(), Some(Manifest::DOCKER_MANIFEST)).expect("valid");

    assert_eq!(manifest.media_type, Manifest::OCI_MANIFEST);
}

#[test]
fn a_manifest_without_any_media_type_is_inferred_from_its_shape() {
    let mut image = oci_image();
    if let Some(fields) = image.as_object_mut() {
        fields.remove("mediaType");
    }

    assert_eq!(parse(&image.to_string()).media_type, Manifest::OCI_MANIFEST);
}

#[test]
fn a_cosign_signature_is_an_artifact_typed_by_its_config_pointing_at_its_image() {
    let manifest = parse(&cosign_signature().to_string());

    assert_eq!(manifest.kind, ManifestKind::Artifact);
    assert_eq!(
        manifest.artifact_type.as_deref(),
        Some("application/vnd.dev.cosign.artifact.sig.v1+json")
    );
    assert_eq!(manifest.subject.map(|s| s.digest.to_string()), Some(d("amd64")));
    assert_eq!(manifest.layers[0].annotations.len(), 1);
}

#[test]
fn an_sbom_with_artifact_type_and_subject_is_an_artifact_of_that_type() {
    let manifest = parse(&sbom().to_string());

    assert_eq!(manifest.kind, ManifestKind::Artifact);
    assert_eq!(
        manifest.artifact_type.as_deref(),
        Some("application/vnd.cyclonedx+json")
    );
    assert_eq!(
        manifest.config.map(|c| c.media_type),
        Some(Manifest::OCI_EMPTY.to_owned())
    );
    let subject = manifest.subject.expect("subject");
    assert_eq!(
        (subject.media_type.as_str(), subject.digest.to_string()),
        (Manifest::OCI_INDEX, d("index"))
    );
}

#[test]
fn an_index_with_an_artifact_type_stays_an_index() {
    let mut index = oci_index();
    index["artifactType"] = json!("application/vnd.example.bundle");

    let manifest = parse(&index.to_string());

    assert_eq!(manifest.kind, ManifestKind::Index);
    assert_eq!(
        manifest.artifact_type.as_deref(),
        Some("application/vnd.example.bundle")
    );
}

#[test]
fn a_docker_schema1_manifest_is_an_image_without_descriptors_or_size() {
    let signed = json!({
        "schemaVersion": 1, "name": "payments/api", "tag": "v1", "architecture": "amd64",
        "fsLayers": [{"blobSum": d("l0")}], "history": [{"v1Compatibility": "{}"}],
        "signatures": [{"header": {"alg": "ES256"}, "signature": "…", "protected": "…"}]
    });

    let manifest =
        Manifest::parse(&signed.to_string(), Some(Manifest::DOCKER_SCHEMA1_SIGNED)).expect("valid");

    assert_eq!(manifest.kind, ManifestKind::Image);
    assert_eq!((manifest.image_size(), manifest.config), (None, None));
    assert_eq!(parse(&signed.to_string()).media_type, Manifest::DOCKER_SCHEMA1);
}

#[test]
fn unknown_extra_fields_and_null_optionals_are_tolerated() {
    let mut image = oci_image();
    image["x-vendor"] = json!({"anything": [1, 2, 3]});
    image["subject"] = Value::Null;
    image["layers"][0]["urls"] = json!(["https://example.com/blob"]);

    assert_eq!(parse(&image.to_string()).subject, None);
}

#[test]
fn text_that_is_not_json_is_reported_with_the_parsers_position() {
    let error = Manifest::parse("{\"schemaVersion\": 2,", None).expect_err("truncated");

    assert!(matches!(error, ManifestError::NotJson { .. }), "{error:?}");
    assert!(error.to_string().contains("line 1"), "{error}");
}

#[test]
fn json_that_is_not_an_object_names_the_document() {
    assert_eq!(error(&json!([1, 2])).path(), Some("$"));
}

#[test]
fn a_bad_layer_digest_names_its_path_and_what_is_wrong() {
    let mut image = docker_image();
    image["layers"][2]["digest"] = json!("sha256:abcde");

    let error = error(&image);

    assert_eq!(error.path(), Some("layers[2].digest"));
    assert!(error.to_string().contains("has 5 hex digits"), "{error}");
}

#[test]
fn a_missing_config_is_reported_as_a_missing_field() {
    let mut image = oci_image();
    if let Some(fields) = image.as_object_mut() {
        fields.remove("config");
    }

    assert_eq!(
        error(&image),
        ManifestError::MissingField {
            path: "config".to_owned()
        }
    );
}

#[test]
fn a_child_without_an_os_names_the_platform_path() {
    let mut index = oci_index();
    index["manifests"][1]["platform"] = json!({"architecture": "arm64"});

    assert_eq!(error(&index).path(), Some("manifests[1].platform.os"));
}

#[test]
fn a_subject_without_a_digest_names_the_subject_path() {
    let mut artifact = sbom();
    if let Some(fields) = artifact["subject"].as_object_mut() {
        fields.remove("digest");
    }

    assert_eq!(error(&artifact).path(), Some("subject.digest"));
}

#[test]
fn a_negative_or_textual_size_is_the_wrong_type() {
    let mut image = docker_image();
    image["config"]["size"] = json!(-1);
    assert_eq!(error(&image).path(), Some("config.size"));

    image["config"]["size"] = json!("7023");
    assert_eq!(error(&image).path(), Some("config.size"));
}

#[test]
fn a_non_string_annotation_names_its_key() {
    let mut image = oci_image();
    image["layers"][0]["annotations"] = json!({"org.example.count": 3});

    assert_eq!(
        error(&image).path(),
        Some("layers[0].annotations[\"org.example.count\"]")
    );
}

#[test]
fn an_unknown_media_type_is_reported_by_name() {
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"});

    assert_eq!(
        error(&manifest),
        ManifestError::UnsupportedMediaType {
            media_type: "application/vnd.oci.artifact.manifest.v1+json".to_owned()
        }
    );
}

#[test]
fn a_manifest_with_no_media_type_and_no_shape_asks_for_the_media_type() {
    assert_eq!(error(&json!({"schemaVersion": 2})).path(), Some("mediaType"));
}

#[test]
fn digest_of_the_empty_input_is_the_well_known_empty_sha256() {
    assert_eq!(
        digest_of(b"").as_str(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn image_size_saturates_instead_of_overflowing() {
    let mut image = docker_image();
    image["config"]["size"] = json!(i64::MAX);

    assert_eq!(parse(&image.to_string()).image_size(), Some(i64::MAX));
}

fn descriptor_strategy() -> impl Strategy<Value = Descriptor> {
    let platform = proptest::option::of(
        ("[a-z]{3,7}", "[a-z0-9]{3,7}", proptest::option::of("v[5-8]")).prop_map(
            |(os, architecture, variant)| Platform {
                os,
                architecture,
                variant,
            },
        ),
    );
    let annotations = proptest::collection::btree_map("[a-z.]{1,12}", "\\PC{0,12}", 0..3);
    (
        "application/[a-z.+]{1,30}",
        "[0-9a-f]{64}",
        0..i64::MAX / 64,
        platform,
        proptest::option::of("application/[a-z.+]{1,20}"),
        annotations,
    )
        .prop_map(
            |(media_type, hex, size, platform, artifact_type, annotations)| Descriptor {
                media_type,
                digest: Digest::parse(&format!("sha256:{hex}")).expect("generated digest"),
                size,
                platform,
                artifact_type,
                annotations,
            },
        )
}

proptest! {
    #[test]
    fn a_built_image_manifest_digests_to_its_sha256_and_parses_back_to_its_descriptors(
        config in descriptor_strategy(),
        layers in proptest::collection::vec(descriptor_strategy(), 0..5),
        subject in proptest::option::of(descriptor_strategy()),
        pretty in any::<bool>(),
    ) {
        let mut manifest = json!({"schemaVersion": 2, "mediaType": Manifest::OCI_MANIFEST, "config": config, "layers": layers});
        if let Some(subject) = &subject {
            manifest["subject"] = json!(subject);
        }
        let text = if pretty { serde_json::to_string_pretty(&manifest) } else { serde_json::to_string(&manifest) }
            .expect("serializable");

        let digest = digest_of(text.as_bytes());
        prop_assert_eq!(digest.hex(), hex::encode(Sha256::digest(text.as_bytes())));
        let parsed = Manifest::parse(&text, None).expect("valid");
        prop_assert_eq!(parsed.config, Some(config));
        prop_assert_eq!(parsed.layers, layers);
        prop_assert_eq!(parsed.subject, subject);
        prop_assert_eq!(parsed.kind, ManifestKind::Artifact);
    }

    #[test]
    fn a_built_index_parses_back_to_its_children(
        children in proptest::collection::vec(descriptor_strategy(), 0..6),
        media_type in prop_oneof![Just(Manifest::OCI_INDEX), Just(Manifest::DOCKER_MANIFEST_LIST)],
    ) {
        let text = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": children}).to_string();

        let parsed = Manifest::parse(&text, None).expect("valid");

        prop_assert_eq!(parsed.kind, ManifestKind::Index);
        prop_assert_eq!(parsed.manifests, children);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in "\\PC{0,400}", hint in proptest::option::of("\\PC{0,40}")) {
        let _ = Manifest::parse(&text, hint.as_deref());
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_json_in_manifest_fields(
        value in prop_oneof![Just(json!(null)), Just(json!(-1)), Just(json!(1.5)), Just(json!("x")), Just(json!([{}])), Just(json!({}))],
        field in prop_oneof![Just("config"), Just("layers"), Just("manifests"), Just("subject"), Just("annotations"), Just("artifactType")],
    ) {
        let mut manifest = sbom();
        manifest[field] = value;
        let _ = Manifest::parse(&manifest.to_string(), None);
    }
}
