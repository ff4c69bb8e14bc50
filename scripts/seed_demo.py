"""Pushes three small images (tags v1.0.0, v1.1.0, latest) into each given
repository of the ECR emulator; scripts/seed-demo runs it.

A "push" is PutImage with a real Docker v2 schema-2 image manifest: a config
blob and one gzipped tar layer, built deterministically, so the same tag
always gets the same image. The digest sent is the sha256 of the exact
manifest bytes sent, as a registry computes it. An image that is already
there is skipped, so running twice is harmless.

Usage: seed_demo.py ENDPOINT REPOSITORY...
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

import boto3

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TAGS = ("v1.0.0", "v1.1.0", "latest")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(repository: str, tag: str) -> tuple[bytes, bytes]:
    """A tar with one file, and its gzip; both byte-for-byte reproducible."""
    content = f"{repository}:{tag}\n".encode()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("etc/demo-release")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    raw = tar_bytes.getvalue()
    return raw, gzip.compress(raw, mtime=0)


def manifest(repository: str, tag: str) -> str:
    raw, compressed = layer(repository, tag)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/true"], "Labels": {"org.opencontainers.image.version": tag}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": len(config), "digest": sha256(config)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "size": len(compressed), "digest": sha256(compressed)}],
        },
        indent=3,
    )


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    endpoint, repositories = sys.argv[1], sys.argv[2:]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    ecr = boto3.client("ecr", endpoint_url=endpoint, region_name=region)
    for repository in repositories:
        pushed = []
        for tag in TAGS:
            body = manifest(repository, tag)
            digest = sha256(body.encode())
            try:
                ecr.put_image(
                    repositoryName=repository,
                    imageManifest=body,
                    imageManifestMediaType=MANIFEST_MEDIA_TYPE,
                    imageDigest=digest,
                    imageTag=tag,
                )
                pushed.append(f"{tag} ({digest[:19]}…)")
            except ecr.exceptions.ImageAlreadyExistsException:
                pushed.append(f"{tag} (already there)")
        print(f"images in {repository}: {', '.join(pushed)}")


if __name__ == "__main__":
    main()
