"""Pushes three small images (tags v1.0.0, v1.1.0, latest) into each given
repository of the ECR emulator, and tells the emulator what their scans will
find (v1.0.0: a CRITICAL and a LOW finding, v1.1.0: one LOW, latest: none);
scripts/seed-demo runs it, then starts the scans through the gateway.

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
import time

import urllib.request

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


FINDINGS = {
    "v1.0.0": [("CVE-2024-3094", "CRITICAL", "xz-utils", "5.6.0"), ("CVE-2023-4911", "LOW", "glibc", "2.36")],
    "v1.1.0": [("CVE-2023-4911", "LOW", "glibc", "2.36")],
    "latest": [],
}


def seed_findings(endpoint: str, region: str, account: str, repository: str, tag: str, digest: str) -> None:
    """The emulator answers the next DescribeImageScanFindings of `digest` (after a scan) with these."""
    findings = FINDINGS[tag]
    now = int(time.time())
    counts: dict[str, int] = {}
    for _, severity, _, _ in findings:
        counts[severity] = counts.get(severity, 0) + 1
    result = {
        "registryId": account,
        "repositoryName": repository,
        "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
        "imageScanFindings": {
            # Now, so that the demo's scans are fresh on any date (prod denies scans older than 30 days).
            "imageScanCompletedAt": now,
            "vulnerabilitySourceUpdatedAt": now,
            "findingSeverityCounts": counts,
            "findings": [
                {
                    "name": name,
                    "severity": severity,
                    "uri": f"https://nvd.nist.gov/vuln/detail/{name}",
                    "description": f"{name} in {package}",
                    "attributes": [
                        {"key": "package_name", "value": package},
                        {"key": "package_version", "value": version},
                    ],
                }
                for name, severity, package, version in findings
            ],
        },
    }
    body = json.dumps({"region": region, "account_id": account, "results": [result]}).encode()
    request = urllib.request.Request(
        f"{endpoint}/moto-api/static/ecr/scan-finding-results",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    endpoint, repositories = sys.argv[1], sys.argv[2:]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    ecr = boto3.client("ecr", endpoint_url=endpoint, region_name=region)
    account = os.environ.get("DEMO_ACCOUNT_ID", "123456789012")
    for repository in repositories:
        pushed = []
        for tag in TAGS:
            body = manifest(repository, tag)
            digest = sha256(body.encode())
            seed_findings(endpoint, region, account, repository, tag, digest)
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
