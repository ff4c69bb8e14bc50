//! Real image manifests for pushing into the emulator. The digest is the
//! sha256 of the exact manifest bytes sent, as a registry would compute it.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};

/// The sha256 digest of `bytes` in OCI form.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A Docker v2 schema 2 manifest whose config and layer digests derive from `seed`.
pub fn docker_manifest(seed: &str) -> String {
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
pub async fn push(client: &aws_sdk_ecr::Client, repository: &str, tag: &str, seed: &str) -> String {
    let manifest = docker_manifest(seed);
    let digest = digest_of(manifest.as_bytes());
    client
        .put_image()
        .repository_name(repository)
        .image_manifest(&manifest)
        .image_manifest_media_type("application/vnd.docker.distribution.manifest.v2+json")
        .image_digest(&digest)
        .image_tag(tag)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutImage {repository}:{tag}: {e:?}"));
    digest
}
