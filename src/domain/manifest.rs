//! Manifests as `BatchGetImage` returns them (`imageManifest`, `imageManifestMediaType`).
//!
//! Understood: Docker v2 schema 2 manifests and manifest lists, OCI image manifests and
//! indexes, and OCI 1.1 artifacts (`artifactType`, `subject`: signatures and SBOMs point at
//! the image they describe). Docker schema 1 manifests (`…manifest.v1+json`,
//! `…v1+prettyjws`) are read as images without descriptors: their `fsLayers` carry no media
//! types or sizes, so `config` is `None`, `layers` is empty and [`Manifest::image_size`] is
//! unknown. Unknown extra fields are ignored; a `null` field counts as absent.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::Digest;

/// Config media types of container images; any other config makes an image manifest an artifact.
const IMAGE_CONFIGS: [&str; 2] = [Manifest::DOCKER_IMAGE_CONFIG, Manifest::OCI_IMAGE_CONFIG];

/// What a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// A single-platform container image.
    Image,
    /// An index or manifest list: one child manifest per platform (or per artifact).
    Index,
    /// An image manifest whose `artifactType` or config media type says it is not a container
    /// image: a signature, an SBOM, a Helm chart…
    Artifact,
}

/// The platform an index child runs on, e.g. `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Platform {
    /// The operating system, e.g. `linux`.
    pub os: String,
    /// The CPU architecture, e.g. `arm64`.
    pub architecture: String,
    /// The CPU variant, e.g. `v8`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// `os/architecture[/variant]`, as `docker --platform` writes it.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// A content descriptor: what a manifest says about a blob or manifest it refers to.
///
/// Serializes to the OCI descriptor JSON shape (`mediaType`, `digest`, `size`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The referenced content's media type.
    pub media_type: String,
    /// The referenced content's digest.
    pub digest: Digest,
    /// The referenced content's size in bytes.
    pub size: i64,
    /// The platform of an index child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type of an index child or subject (OCI 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The descriptor's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's own `mediaType`, else ECR's `imageManifestMediaType`, else inferred from
    /// its shape (`manifests`: OCI index, `config`: OCI image manifest).
    pub media_type: String,
    /// What it is.
    pub kind: ManifestKind,
    /// The config descriptor of an image or artifact manifest.
    pub config: Option<Descriptor>,
    /// The layers of an image or artifact manifest.
    pub layers: Vec<Descriptor>,
    /// The children of an index, with their platforms.
    pub manifests: Vec<Descriptor>,
    /// OCI 1.1 `artifactType`, or for an artifact without one its config media type.
    pub artifact_type: Option<String>,
    /// The manifest this one is about (OCI 1.1 referrers: signatures, SBOMs).
    pub subject: Option<Descriptor>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest could not be read; every variant but `NotJson` names the JSON path at fault,
/// e.g. `layers[2].digest` (`$` is the whole document).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not JSON at all.
    #[error("the manifest is not JSON: {reason}")]
    NotJson {
        /// The JSON parser's message, with line and column.
        reason: String,
    },
    /// A required field is absent (or `null`).
    #[error("the manifest has no `{path}`; it is required there")]
    MissingField {
        /// Where the field should be.
        path: String,
    },
    /// A field holds the wrong kind of JSON value.
    #[error("`{path}` in the manifest should be {expected}")]
    WrongType {
        /// The field.
        path: String,
        /// What it should hold, e.g. `a non-negative integer`.
        expected: &'static str,
    },
    /// A descriptor's digest is not `sha256:` and 64 lowercase hex digits.
    #[error("`{path}` in the manifest is not a usable digest: {reason}")]
    BadDigest {
        /// The digest field, e.g. `layers[2].digest`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest media type the gateway does not understand.
    #[error(
        "unsupported manifest media type `{media_type}`; understood are Docker v2 schema 1 and 2 \
         manifests and manifest lists, OCI image manifests and OCI image indexes"
    )]
    UnsupportedMediaType {
        /// The media type found (`mediaType`, or ECR's when the manifest has none).
        media_type: String,
    },
}

impl ManifestError {
    /// The JSON path at fault, if the error has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ManifestError::MissingField { path }
            | ManifestError::WrongType { path, .. }
            | ManifestError::BadDigest { path, .. } => Some(path),
            ManifestError::NotJson { .. } | ManifestError::UnsupportedMediaType { .. } => None,
        }
    }
}

impl Manifest {
    /// Docker v2 schema 2 image manifest.
    pub const DOCKER_MANIFEST: &'static str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (multi-platform).
    pub const DOCKER_MANIFEST_LIST: &'static str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker v2 schema 1 manifest, unsigned.
    pub const DOCKER_SCHEMA1: &'static str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker v2 schema 1 manifest, signed.
    pub const DOCKER_SCHEMA1_SIGNED: &'static str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// OCI image manifest (also used by OCI 1.1 artifacts).
    pub const OCI_MANIFEST: &'static str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &'static str = "application/vnd.oci.image.index.v1+json";
    /// Docker container image config.
    pub const DOCKER_IMAGE_CONFIG: &'static str = "application/vnd.docker.container.image.v1+json";
    /// OCI container image config.
    pub const OCI_IMAGE_CONFIG: &'static str = "application/vnd.oci.image.config.v1+json";
    /// OCI empty descriptor (`{}`), the config of artifacts that set `artifactType`.
    pub const OCI_EMPTY: &'static str = "application/vnd.oci.empty.v1+json";

    /// Parses manifest JSON; `media_type_hint` is ECR's `imageManifestMediaType`, used when the
    /// manifest has no `mediaType` of its own (the manifest's own field wins when both exist).
    pub fn parse(json: &str, media_type_hint: Option<&str>) -> Result<Manifest, ManifestError> {
        let document: Value = serde_json::from_str(json).map_err(|e| ManifestError::NotJson {
            reason: e.to_string(),
        })?;
        let root = as_object(&document, "$")?;
        let media_type = media_type_of(root, media_type_hint)?;
        match media_type.as_str() {
            Self::DOCKER_MANIFEST_LIST | Self::OCI_INDEX => index(root, media_type),
            Self::DOCKER_MANIFEST | Self::OCI_MANIFEST => image(root, media_type),
            Self::DOCKER_SCHEMA1 | Self::DOCKER_SCHEMA1_SIGNED => Ok(schema1(media_type)),
            _ => Err(ManifestError::UnsupportedMediaType { media_type }),
        }
    }

    /// Config plus layers (what ECR's `imageSizeInBytes` approximates for an image); `None` for
    /// an index and for a schema 1 manifest, which records no sizes.
    pub fn image_size(&self) -> Option<i64> {
        let config = self.config.as_ref()?;
        Some(
            self.layers
                .iter()
                .fold(config.size, |total, layer| total.saturating_add(layer.size)),
        )
    }
}

/// sha256 of the exact bytes, in OCI digest form: what a registry computes for a manifest.
pub fn digest_of(bytes: &[u8]) -> Digest {
    let text = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    // Not input-dependent: 64 lowercase hex digits after `sha256:` is exactly Digest's grammar.
    Digest::parse(&text).expect("a hex-encoded sha256 is a valid digest")
}

/// The manifest's own media type, else ECR's, else one inferred from the manifest's shape.
fn media_type_of(root: &Map<String, Value>, hint: Option<&str>) -> Result<String, ManifestError> {
    let inferred = || {
        if present(root, "manifests").is_some() {
            Some(Manifest::OCI_INDEX)
        } else if present(root, "config").is_some() {
            Some(Manifest::OCI_MANIFEST)
        } else if root.get("schemaVersion").and_then(Value::as_i64) == Some(1) {
            Some(Manifest::DOCKER_SCHEMA1)
        } else {
            None
        }
    };
    let fallback = hint
        .filter(|hint| !hint.is_empty())
        .or_else(inferred)
        .map(str::to_owned);
    optional_string(root, "mediaType", "")?
        .or(fallback)
        .ok_or_else(|| ManifestError::MissingField {
            path: "mediaType".to_owned(),
        })
}

/// An image manifest: an image, or an artifact when its config or `artifactType` says so.
fn image(root: &Map<String, Value>, media_type: String) -> Result<Manifest, ManifestError> {
    let config = descriptor(required(root, "config", "")?, "config")?;
    let declared_type = optional_string(root, "artifactType", "")?;
    let is_image = declared_type.is_none() && IMAGE_CONFIGS.contains(&config.media_type.as_str());
    let (kind, artifact_type) = match is_image {
        true => (ManifestKind::Image, None),
        false => (
            ManifestKind::Artifact,
            declared_type.or_else(|| Some(config.media_type.clone())),
        ),
    };
    Ok(Manifest {
        media_type,
        kind,
        layers: descriptors(root, "layers")?,
        config: Some(config),
        manifests: Vec::new(),
        artifact_type,
        subject: subject(root)?,
        annotations: annotations(root, "")?,
    })
}

/// An index or manifest list; it stays an index even when it declares an `artifactType`.
fn index(root: &Map<String, Value>, media_type: String) -> Result<Manifest, ManifestError> {
    required(root, "manifests", "")?;
    Ok(Manifest {
        media_type,
        kind: ManifestKind::Index,
        config: None,
        layers: Vec::new(),
        manifests: descriptors(root, "manifests")?,
        artifact_type: optional_string(root, "artifactType", "")?,
        subject: subject(root)?,
        annotations: annotations(root, "")?,
    })
}

/// A Docker schema 1 manifest: an image whose `fsLayers` are not descriptors.
fn schema1(media_type: String) -> Manifest {
    Manifest {
        media_type,
        kind: ManifestKind::Image,
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        artifact_type: None,
        subject: None,
        annotations: BTreeMap::new(),
    }
}

fn subject(root: &Map<String, Value>) -> Result<Option<Descriptor>, ManifestError> {
    present(root, "subject")
        .map(|value| descriptor(value, "subject"))
        .transpose()
}

/// The descriptors in the array `key` of `root`; an absent array is empty.
fn descriptors(root: &Map<String, Value>, key: &str) -> Result<Vec<Descriptor>, ManifestError> {
    let Some(value) = present(root, key) else {
        return Ok(Vec::new());
    };
    let items = value
        .as_array()
        .ok_or_else(|| wrong_type(key, "an array of descriptors"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| descriptor(item, &format!("{key}[{i}]")))
        .collect()
}

fn descriptor(value: &Value, path: &str) -> Result<Descriptor, ManifestError> {
    let object = as_object(value, path)?;
    Ok(Descriptor {
        media_type: required_string(object, "mediaType", path)?,
        digest: digest(object, path)?,
        size: size(object, path)?,
        platform: present(object, "platform")
            .map(|platform| self::platform(platform, &join(path, "platform")))
            .transpose()?,
        artifact_type: optional_string(object, "artifactType", path)?,
        annotations: annotations(object, path)?,
    })
}

fn digest(object: &Map<String, Value>, path: &str) -> Result<Digest, ManifestError> {
    let text = required_string(object, "digest", path)?;
    Digest::parse(&text).map_err(|violation| ManifestError::BadDigest {
        path: join(path, "digest"),
        reason: violation.description,
    })
}

fn size(object: &Map<String, Value>, path: &str) -> Result<i64, ManifestError> {
    required(object, "size", path)?
        .as_i64()
        .filter(|size| *size >= 0)
        .ok_or_else(|| wrong_type(&join(path, "size"), "a non-negative integer"))
}

fn platform(value: &Value, path: &str) -> Result<Platform, ManifestError> {
    let object = as_object(value, path)?;
    Ok(Platform {
        os: required_string(object, "os", path)?,
        architecture: required_string(object, "architecture", path)?,
        variant: optional_string(object, "variant", path)?,
    })
}

/// The string map `annotations` of `object`; absent is empty.
fn annotations(object: &Map<String, Value>, path: &str) -> Result<BTreeMap<String, String>, ManifestError> {
    let path = join(path, "annotations");
    let Some(value) = present(object, "annotations") else {
        return Ok(BTreeMap::new());
    };
    as_object(value, &path)?
        .iter()
        .map(|(key, value)| match value.as_str() {
            Some(text) => Ok((key.clone(), text.to_owned())),
            None => Err(wrong_type(&format!("{path}[{key:?}]"), "a string")),
        })
        .collect()
}

/// The field `key` of `object`, treating `null` as absent.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn required<'a>(object: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, ManifestError> {
    present(object, key).ok_or_else(|| ManifestError::MissingField {
        path: join(path, key),
    })
}

fn required_string(object: &Map<String, Value>, key: &str, path: &str) -> Result<String, ManifestError> {
    let value = required(object, key, path)?;
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| wrong_type(&join(path, key), "a string"))
}

fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ManifestError> {
    present(object, key)
        .map(|value| {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| wrong_type(&join(path, key), "a string"))
        })
        .transpose()
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ManifestError> {
    value.as_object().ok_or_else(|| wrong_type(path, "a JSON object"))
}

fn wrong_type(path: &str, expected: &'static str) -> ManifestError {
    ManifestError::WrongType {
        path: path.to_owned(),
        expected,
    }
}

/// `parent.key`, or `key` at the top level.
fn join(parent: &str, key: &str) -> String {
    match parent {
        "" => key.to_owned(),
        _ => format!("{parent}.{key}"),
    }
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
