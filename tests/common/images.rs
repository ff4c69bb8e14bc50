//! Real image manifests for pushing into the emulator. The digest is the
//! sha256 of the exact manifest bytes sent, as a registry would compute it.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};

/// The sha256 digest of `bytes` in OCI form.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A Docker v2 schema 2 manifest whose config and layer digests derive from `seed`.
pub(crate) fn docker_manifest(seed: &str) -> String {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer-of-{seed}");
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": digest_of(config.as_bytes()),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer.len(),
            "digest": digest_of(layer.as_bytes()),
        }],
    })
    .to_string()
}

/// Pushes an image (PutImage with the manifest) and returns its digest.
pub(crate) async fn push(client: &aws_sdk_ecr::Client, repository: &str, tag: &str, seed: &str) -> String {
    put_docker_image(client, repository, Some(tag), seed).await
}

/// Pushes an image without a tag (PutImage with no imageTag) and returns its digest.
pub(crate) async fn push_untagged(client: &aws_sdk_ecr::Client, repository: &str, seed: &str) -> String {
    put_docker_image(client, repository, None, seed).await
}

async fn put_docker_image(
    client: &aws_sdk_ecr::Client,
    repository: &str,
    tag: Option<&str>,
    seed: &str,
) -> String {
    let manifest = docker_manifest(seed);
    let digest = digest_of(manifest.as_bytes());
    client
        .put_image()
        .repository_name(repository)
        .image_manifest(&manifest)
        .image_manifest_media_type("application/vnd.docker.distribution.manifest.v2+json")
        .image_digest(&digest)
        .set_image_tag(tag.map(str::to_owned))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutImage {repository}:{tag:?}: {e:?}"));
    digest
}

/// An OCI image manifest (optionally an artifact with `artifactType` and a `subject`).
pub(crate) fn oci_manifest(
    seed: &str,
    artifact_type: Option<&str>,
    subject: Option<(&str, usize)>,
) -> String {
    let config = format!(r#"{{"seed":"{seed}"}}"#);
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": if artifact_type.is_some() { "application/vnd.oci.empty.v1+json" } else { "application/vnd.oci.image.config.v1+json" },
            "size": config.len(),
            "digest": digest_of(config.as_bytes()),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "size": seed.len(),
            "digest": digest_of(seed.as_bytes()),
        }],
    });
    if let Some(kind) = artifact_type {
        manifest["artifactType"] = kind.into();
    }
    if let Some((digest, size)) = subject {
        manifest["subject"] = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
        });
    }
    manifest.to_string()
}

/// An OCI image index over `children` (digest, size, architecture, variant).
pub(crate) fn oci_index(children: &[(String, usize, &str, Option<&str>)]) -> String {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|(digest, size, arch, variant)| {
            let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(variant) = variant {
                platform["variant"] = (*variant).into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": platform,
            })
        })
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string()
}

/// Pushes an exact manifest with its media type, tagged or not; returns its digest.
pub(crate) async fn push_manifest(
    client: &aws_sdk_ecr::Client,
    repository: &str,
    manifest: &str,
    media_type: &str,
    tag: Option<&str>,
) -> String {
    let digest = digest_of(manifest.as_bytes());
    client
        .put_image()
        .repository_name(repository)
        .image_manifest(manifest)
        .image_manifest_media_type(media_type)
        .image_digest(&digest)
        .set_image_tag(tag.map(str::to_owned))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutImage {repository} {tag:?}: {e:?}"));
    digest
}
