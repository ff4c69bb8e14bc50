"""Pushes three small images into each demo repository of the emulator.

A push is PutImage with a real Docker v2 schema-2 manifest; the digest sent
is the sha256 of the exact manifest bytes, as a registry computes it.
Usage: seed_demo.py ENDPOINT REPOSITORY...
"""

import hashlib
import json
import sys

import boto3

MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(seed: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer-of-{seed}".encode()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": digest(layer),
                }
            ],
        },
        separators=(",", ":"),
    )


def main() -> None:
    endpoint, repositories = sys.argv[1], sys.argv[2:]
    ecr = boto3.client("ecr", endpoint_url=endpoint)
    for repository in repositories:
        for tag in ("v1.0.0", "v1.1.0", "latest"):
            body = manifest(f"{repository}:{tag}")
            try:
                ecr.put_image(
                    repositoryName=repository,
                    imageManifest=body,
                    imageManifestMediaType=MEDIA_TYPE,
                    imageDigest=digest(body.encode()),
                    imageTag=tag,
                )
            except ecr.exceptions.ImageAlreadyExistsException:
                pass
        print(f"images in {repository}: v1.0.0, v1.1.0, latest")


if __name__ == "__main__":
    main()
