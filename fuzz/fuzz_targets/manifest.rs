//! Image manifests as ECR hands them over (Docker v2, OCI manifests and
//! indexes, artifacts), with any media-type hint: parsing never panics, is
//! deterministic, and what parses is coherent (an index lists manifests, an
//! image has no child manifests, every descriptor has a digest).
#![no_main]

use ecr_gateway::domain::{Manifest, ManifestKind};
use libfuzzer_sys::fuzz_target;

const HINTS: [Option<&str>; 5] = [
    None,
    Some(Manifest::DOCKER_MANIFEST),
    Some(Manifest::DOCKER_MANIFEST_LIST),
    Some(Manifest::OCI_MANIFEST),
    Some(Manifest::OCI_INDEX),
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    let hint = HINTS[first as usize % HINTS.len()];
    let parsed = Manifest::parse(json, hint);
    assert_eq!(parsed, Manifest::parse(json, hint));
    if let Ok(manifest) = parsed {
        assert!(!manifest.media_type.is_empty());
        if !matches!(manifest.kind, ManifestKind::Index) {
            assert!(manifest.manifests.is_empty(), "{manifest:?}");
        }
        for descriptor in manifest
            .config
            .iter()
            .chain(&manifest.layers)
            .chain(&manifest.manifests)
        {
            assert!(!descriptor.digest.as_str().is_empty());
        }
    }
});
