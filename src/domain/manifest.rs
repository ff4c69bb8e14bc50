//! Manifests as `BatchGetImage` returns them: Docker v2 schema 2, Docker
//! manifest lists, OCI image manifests and indexes, and OCI 1.1 artifacts
//! (`artifactType`, `subject`: signatures and SBOMs refer to their image).

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::Digest;

/// Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Config media types of container images; any other config makes an artifact.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
];

/// What a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform container image.
    Image,
    /// An index / manifest list.
    Index,
    /// A non-image artifact (its config or `artifactType` says so).
    Artifact,
}

/// A platform of an index child.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `arm64`.
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: i64,
    /// Its platform (index children).
    pub platform: Option<Platform>,
    /// Its artifact type (OCI 1.1).
    pub artifact_type: Option<String>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's media type (its own field, else ECR's).
    pub media_type: String,
    /// What it is.
    pub kind: ManifestKind,
    /// The config descriptor (image manifests).
    pub config: Option<Descriptor>,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// The children (indexes).
    pub manifests: Vec<Descriptor>,
    /// `artifactType`, or the config media type of an artifact.
    pub artifact_type: Option<String>,
    /// The manifest this one refers to.
    pub subject: Option<Descriptor>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest could not be read; each names the JSON path at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not a JSON object.
    #[error("manifest is not JSON: {0}")]
    NotJson(String),
    /// A required field is missing or has the wrong type.
    #[error("manifest field `{0}` is missing or malformed")]
    Field(String),
    /// A descriptor's digest is not `sha256:` + 64 hex.
    #[error("manifest field `{0}` is not a sha256 digest")]
    BadDigest(String),
    /// A media type the gateway does not understand.
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    artifact_type: Option<String>,
    subject: Option<RawDescriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    platform: Option<Platform>,
    artifact_type: Option<String>,
}

impl Manifest {
    /// Parses manifest JSON; `media_type_hint` is ECR's `imageManifestMediaType`.
    pub fn parse(json: &str, media_type_hint: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            serde_json::from_str(json).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let media_type = raw
            .media_type
            .clone()
            .or_else(|| media_type_hint.map(str::to_owned))
            .or_else(|| (!raw.manifests.is_empty()).then(|| OCI_INDEX.to_owned()))
            .or_else(|| raw.config.as_ref().map(|_| OCI_MANIFEST.to_owned()))
            .ok_or_else(|| ManifestError::Field("mediaType".into()))?;
        match media_type.as_str() {
            DOCKER_MANIFEST_LIST | OCI_INDEX => Self::index(media_type, raw),
            DOCKER_MANIFEST | OCI_MANIFEST => Self::image(media_type, raw),
            other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
        }
    }

    fn index(media_type: String, raw: RawManifest) -> Result<Manifest, ManifestError> {
        let manifests = descriptors(&raw.manifests, "manifests")?;
        Ok(Manifest {
            media_type,
            kind: if raw.artifact_type.is_some() {
                ManifestKind::Artifact
            } else {
                ManifestKind::Index
            },
            config: None,
            layers: Vec::new(),
            manifests,
            artifact_type: raw.artifact_type,
            subject: raw
                .subject
                .as_ref()
                .map(|s| descriptor(s, "subject"))
                .transpose()?,
            annotations: raw.annotations,
        })
    }

    fn image(media_type: String, raw: RawManifest) -> Result<Manifest, ManifestError> {
        let config = raw
            .config
            .as_ref()
            .map(|c| descriptor(c, "config"))
            .transpose()?
            .ok_or_else(|| ManifestError::Field("config".into()))?;
        let is_image = raw.artifact_type.is_none() && IMAGE_CONFIGS.contains(&config.media_type.as_str());
        let artifact_type = raw
            .artifact_type
            .clone()
            .or_else(|| (!is_image).then(|| config.media_type.clone()));
        Ok(Manifest {
            media_type,
            kind: if is_image {
                ManifestKind::Image
            } else {
                ManifestKind::Artifact
            },
            layers: descriptors(&raw.layers, "layers")?,
            config: Some(config),
            manifests: Vec::new(),
            artifact_type,
            subject: raw
                .subject
                .as_ref()
                .map(|s| descriptor(s, "subject"))
                .transpose()?,
            annotations: raw.annotations,
        })
    }

    /// Config plus layers: what ECR's `imageSizeInBytes` approximates; `None` for an index.
    pub fn image_size(&self) -> Option<i64> {
        let config = self.config.as_ref()?;
        Some(config.size + self.layers.iter().map(|l| l.size).sum::<i64>())
    }
}

fn descriptors(raw: &[RawDescriptor], path: &str) -> Result<Vec<Descriptor>, ManifestError> {
    raw.iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, &format!("{path}[{i}]")))
        .collect()
}

fn descriptor(raw: &RawDescriptor, path: &str) -> Result<Descriptor, ManifestError> {
    let media_type = raw
        .media_type
        .clone()
        .ok_or_else(|| ManifestError::Field(format!("{path}.mediaType")))?;
    let digest = raw
        .digest
        .as_deref()
        .ok_or_else(|| ManifestError::Field(format!("{path}.digest")))?;
    let digest = Digest::parse(digest).map_err(|_| ManifestError::BadDigest(format!("{path}.digest")))?;
    let size = raw
        .size
        .ok_or_else(|| ManifestError::Field(format!("{path}.size")))?;
    Ok(Descriptor {
        media_type,
        digest,
        size,
        platform: raw.platform.clone(),
        artifact_type: raw.artifact_type.clone(),
    })
}

/// The sha256 of the exact bytes, as a registry computes a manifest digest.
pub fn digest_of(bytes: &[u8]) -> Digest {
    let text = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    Digest::parse(&text).unwrap_or_else(|_| unreachable!("a sha256 hex digest always parses"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(seed: &str) -> String {
        digest_of(seed.as_bytes()).to_string()
    }

    fn docker_image() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"{}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"{}"}}]}}"#,
            d("config"),
            d("layer")
        )
    }

    #[test]
    fn a_docker_image_manifest_is_an_image_with_its_size() {
        let manifest = Manifest::parse(&docker_image(), None).expect("valid");
        assert_eq!(manifest.kind, ManifestKind::Image);
        assert_eq!(manifest.image_size(), Some(7023 + 32654));
        assert_eq!(manifest.artifact_type, None);
    }

    #[test]
    fn an_oci_index_lists_children_with_platforms() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","size":100,"digest":"{}","platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","size":101,"digest":"{}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d("a"),
            d("b")
        );
        let manifest = Manifest::parse(&json, None).expect("valid");
        assert_eq!(manifest.kind, ManifestKind::Index);
        assert_eq!(manifest.image_size(), None);
        let platforms: Vec<_> = manifest
            .manifests
            .iter()
            .map(|c| c.platform.clone().expect("platform"))
            .collect();
        assert_eq!(platforms[1].variant.as_deref(), Some("v8"));
    }

    #[test]
    fn a_docker_manifest_list_without_its_own_media_type_uses_ecrs() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{}"}}]}}"#,
            d("x")
        );
        let manifest = Manifest::parse(&json, Some(DOCKER_MANIFEST_LIST)).expect("valid");
        assert_eq!(manifest.media_type, DOCKER_MANIFEST_LIST);
        assert_eq!(manifest.kind, ManifestKind::Index);
    }

    #[test]
    fn an_sbom_with_artifact_type_and_subject_is_a_referrer() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.cyclonedx+json",
              "config":{{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"{}"}},"layers":[],
              "subject":{{"mediaType":"{OCI_MANIFEST}","size":500,"digest":"{}"}}}}"#,
            d("{}"),
            d("image")
        );
        let manifest = Manifest::parse(&json, None).expect("valid");
        assert_eq!(manifest.kind, ManifestKind::Artifact);
        assert_eq!(
            manifest.artifact_type.as_deref(),
            Some("application/vnd.cyclonedx+json")
        );
        assert_eq!(manifest.subject.map(|s| s.digest.to_string()), Some(d("image")));
    }

    #[test]
    fn a_cosign_signature_is_an_artifact_by_its_config_type() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
              "config":{{"mediaType":"application/vnd.dev.cosign.artifact.sig.v1+json","size":233,"digest":"{}"}},
              "layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":250,"digest":"{}"}}]}}"#,
            d("sigconfig"),
            d("sig")
        );
        let manifest = Manifest::parse(&json, None).expect("valid");
        assert_eq!(manifest.kind, ManifestKind::Artifact);
        assert_eq!(
            manifest.artifact_type.as_deref(),
            Some("application/vnd.dev.cosign.artifact.sig.v1+json")
        );
    }

    #[test]
    fn malformed_manifests_name_the_path_at_fault() {
        assert!(matches!(
            Manifest::parse("not json", None),
            Err(ManifestError::NotJson(_))
        ));
        let bad_layer = docker_image().replace(&d("layer"), "sha256:short");
        assert_eq!(
            Manifest::parse(&bad_layer, None),
            Err(ManifestError::BadDigest("layers[0].digest".into()))
        );
        let no_config = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        assert_eq!(
            Manifest::parse(&no_config, None),
            Err(ManifestError::Field("config".into()))
        );
        let schema1 =
            r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
        assert!(matches!(
            Manifest::parse(schema1, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,400}") {
            let _ = Manifest::parse(&text, None);
        }

        #[test]
        fn built_manifests_parse_back_with_their_descriptors(sizes in proptest::collection::vec(1i64..1_000_000, 0..5)) {
            let layers: Vec<serde_json::Value> = sizes.iter().enumerate().map(|(i, size)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": size, "digest": d(&i.to_string()),
            })).collect();
            let json = serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 10, "digest": d("c")},
                "layers": layers,
            }).to_string();
            let manifest = Manifest::parse(&json, None).expect("valid");
            prop_assert_eq!(manifest.layers.len(), sizes.len());
            prop_assert_eq!(manifest.image_size(), Some(10 + sizes.iter().sum::<i64>()));
            let digest = digest_of(json.as_bytes());
            prop_assert_eq!(digest.hex(), hex::encode(Sha256::digest(json.as_bytes())));
        }
    }
}
