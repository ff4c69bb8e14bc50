//! Image calls: list every image of a repository (archived ones included)
//! and fetch manifests in batches of 100.

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::types::{DescribeImagesFilter, ImageDetail, ImageIdentifier, ImageStatusFilter};
use chrono::{DateTime, Utc};

use super::error::{EcrError, classify};
use super::repositories::collect_pages;
use super::{CallLog, Registry};
use crate::domain::{Digest, ImageRecord, ImageSelector, ImageTag, RepositoryName};

/// ECR's largest page for DescribeImages.
const PAGE_SIZE: i32 = 1000;
/// ECR's largest batch for BatchGetImage.
const BATCH: usize = 100;

/// A manifest as ECR returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The manifest digest.
    pub digest: Digest,
    /// The exact manifest text.
    pub manifest: String,
    /// ECR's `imageManifestMediaType`.
    pub media_type: Option<String>,
}

impl Registry {
    /// Every image of the repository and the number of pages read, following `nextToken`, with
    /// `imageStatus = ANY`: without it ECR silently leaves out archived images.
    pub async fn describe_images(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
    ) -> Result<(Vec<ImageRecord>, i32), EcrError> {
        let pages = std::sync::atomic::AtomicI32::new(0);
        let details = collect_pages(|token| async {
            self.budget.acquire("DescribeImages").await;
            pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let output = self
                .client
                .describe_images()
                .registry_id(&self.reference.account_id)
                .repository_name(repository.as_str())
                .filter(
                    DescribeImagesFilter::builder()
                        .image_status(ImageStatusFilter::Any)
                        .build(),
                )
                .max_results(PAGE_SIZE)
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("DescribeImages", e))?;
            log.record(output.request_id());
            Ok((output.image_details.unwrap_or_default(), output.next_token))
        })
        .await?;
        let records = details
            .iter()
            .filter_map(|d| image_from_detail(repository, d))
            .collect();
        Ok((records, pages.into_inner()))
    }

    /// One BatchGetImage of at most 100 digests, accepting every manifest type the gateway reads.
    async fn batch_get_image(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> Result<aws_sdk_ecr::operation::batch_get_image::BatchGetImageOutput, EcrError> {
        let ids = digests
            .iter()
            .map(|d| ImageIdentifier::builder().image_digest(d.as_str()).build())
            .collect();
        self.budget.acquire("BatchGetImage").await;
        let output = self
            .client
            .batch_get_image()
            .registry_id(&self.reference.account_id)
            .repository_name(repository.as_str())
            .set_image_ids(Some(ids))
            .accepted_media_types("application/vnd.docker.distribution.manifest.v2+json")
            .accepted_media_types("application/vnd.docker.distribution.manifest.list.v2+json")
            .accepted_media_types("application/vnd.oci.image.manifest.v1+json")
            .accepted_media_types("application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("BatchGetImage", e))?;
        log.record(output.request_id());
        Ok(output)
    }

    /// The manifests of `digests`, 100 per call. Digests ECR no longer has are left out.
    pub async fn batch_get_manifests(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> Result<Vec<RawManifest>, EcrError> {
        let mut manifests = Vec::with_capacity(digests.len());
        for chunk in digests.chunks(BATCH) {
            let output = self.batch_get_image(log, repository, chunk).await?;
            manifests.extend(output.images.unwrap_or_default().into_iter().filter_map(|image| {
                let digest = Digest::parse(image.image_id.as_ref()?.image_digest.as_deref()?).ok()?;
                Some(RawManifest {
                    digest,
                    manifest: image.image_manifest?,
                    media_type: image.image_manifest_media_type,
                })
            }));
        }
        Ok(manifests)
    }
}

/// Reads an `ImageDetail` into a record; `None` when ECR left out the digest.
pub fn image_from_detail(repository: &RepositoryName, detail: &ImageDetail) -> Option<ImageRecord> {
    let digest = Digest::parse(detail.image_digest.as_deref()?).ok()?;
    let mut tags = detail.image_tags.clone().unwrap_or_default();
    tags.sort();
    tags.dedup();
    Some(ImageRecord {
        repository: repository.clone(),
        digest,
        tags,
        size_bytes: detail.image_size_in_bytes,
        pushed_at: detail.image_pushed_at.as_ref().and_then(to_chrono),
        last_pulled_at: detail.last_recorded_pull_time.as_ref().and_then(to_chrono),
        manifest_media_type: detail.image_manifest_media_type.clone(),
        artifact_media_type: detail.artifact_media_type.clone(),
        status: detail
            .image_status
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "ACTIVE".to_owned()),
        subject_digest: detail.subject_manifest_digest.clone(),
    })
}

fn to_chrono(time: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(time.secs(), time.subsec_nanos())
}

impl Registry {
    /// One image by tag or digest, or `None` when ECR does not have it.
    pub async fn describe_image(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        selector: &ImageSelector,
    ) -> Result<Option<ImageRecord>, EcrError> {
        let id = match selector {
            ImageSelector::Tag(tag) => ImageIdentifier::builder().image_tag(tag.as_str()).build(),
            ImageSelector::Digest(digest) => ImageIdentifier::builder().image_digest(digest.as_str()).build(),
        };
        self.budget.acquire("DescribeImages").await;
        let result = self
            .client
            .describe_images()
            .registry_id(&self.reference.account_id)
            .repository_name(repository.as_str())
            .image_ids(id)
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(output
                    .image_details
                    .unwrap_or_default()
                    .iter()
                    .find_map(|d| image_from_detail(repository, d)))
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("DescribeImages", error);
                match &error {
                    EcrError::NotFound { code, .. } if code == "ImageNotFoundException" => Ok(None),
                    _ => Err(error),
                }
            }
        }
    }
}

/// What BatchDeleteImage did to one requested id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Gone (for a tag: the tag; for a digest: the image); the digest it named.
    Deleted(String),
    /// ECR refused it: failure code and reason (ImageNotFound, ImageReferencedByManifestList, …).
    Failed(String, String),
}

impl Registry {
    /// BatchDeleteImage, at most 100 ids a call, in the registry's budget.
    /// Returns one outcome per id, in order.
    pub async fn batch_delete_images(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        ids: &[ImageSelector],
    ) -> Result<Vec<DeleteOutcome>, EcrError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let identifiers = chunk
                .iter()
                .map(|id| match id {
                    ImageSelector::Tag(tag) => ImageIdentifier::builder().image_tag(tag.as_str()).build(),
                    ImageSelector::Digest(d) => ImageIdentifier::builder().image_digest(d.as_str()).build(),
                })
                .collect();
            self.budget.acquire("BatchDeleteImage").await;
            let output = self
                .client
                .batch_delete_image()
                .registry_id(&self.reference.account_id)
                .repository_name(repository.as_str())
                .set_image_ids(Some(identifiers))
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("BatchDeleteImage", e))?;
            log.record(output.request_id());
            let deleted = output.image_ids.unwrap_or_default();
            let failures = output.failures.unwrap_or_default();
            for id in chunk {
                let matches = |tag: Option<&str>, digest: Option<&str>| match id {
                    ImageSelector::Tag(t) => tag == Some(t.as_str()),
                    ImageSelector::Digest(d) => digest == Some(d.as_str()),
                };
                let outcome = if let Some(done) = deleted
                    .iter()
                    .find(|i| matches(i.image_tag.as_deref(), i.image_digest.as_deref()))
                {
                    DeleteOutcome::Deleted(done.image_digest.clone().unwrap_or_default())
                } else if let Some(failure) = failures.iter().find(|f| {
                    f.image_id
                        .as_ref()
                        .is_some_and(|i| matches(i.image_tag.as_deref(), i.image_digest.as_deref()))
                }) {
                    DeleteOutcome::Failed(
                        failure
                            .failure_code
                            .as_ref()
                            .map(|c| c.as_str().to_owned())
                            .unwrap_or_else(|| "Unknown".into()),
                        failure.failure_reason.clone().unwrap_or_default(),
                    )
                } else {
                    DeleteOutcome::Failed("Unknown".into(), "ECR did not report on this id".into())
                };
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }
}

impl Registry {
    /// Which of `digests` ECR no longer has, 100 per call (BatchGetImage), in
    /// the registry's budget. A digest is gone when ECR returns no image for
    /// it and no failure other than ImageNotFound names it (moto names no
    /// digest in its ImageNotFound failures; ECR does).
    pub async fn gone_digests(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, EcrError> {
        let mut gone = Vec::new();
        for chunk in digests.chunks(BATCH) {
            let output = self.batch_get_image(log, repository, chunk).await?;
            let found: Vec<String> = output
                .images
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.image_id?.image_digest)
                .collect();
            let unsure: Vec<String> = output
                .failures
                .unwrap_or_default()
                .into_iter()
                .filter(|f| {
                    f.failure_code
                        .as_ref()
                        .is_some_and(|c| c.as_str() != "ImageNotFound")
                })
                .filter_map(|f| f.image_id?.image_digest)
                .collect();
            gone.extend(not_found(chunk, &found, &unsure));
        }
        Ok(gone)
    }
}

/// The requested digests BatchGetImage neither returned nor failed on for a
/// reason other than ImageNotFound.
fn not_found(requested: &[Digest], found: &[String], unsure: &[String]) -> Vec<Digest> {
    requested
        .iter()
        .filter(|d| !found.iter().chain(unsure).any(|f| f == d.as_str()))
        .cloned()
        .collect()
}

/// What PutImage did with a manifest under a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The tag names the image now.
    Tagged,
    /// ECR already had this image under this tag (`ImageAlreadyExistsException`).
    AlreadyTagged,
    /// The tag is immutable and names another image (`ImageTagAlreadyExistsException`); ECR's message.
    TagImmutable(String),
    /// The repository lacks layers of the image (`LayersNotFoundException`); ECR's message.
    LayersMissing(String),
    /// An index's child manifests are not in the repository (`ReferencedImagesNotFoundException`).
    ReferencesMissing(String),
}

impl PutOutcome {
    /// The refusals of PutImage that are answers about the image, not failures of the call.
    fn of_error(error: &EcrError) -> Option<PutOutcome> {
        let (code, message) = match error {
            EcrError::AlreadyExists { code, message, .. } | EcrError::Conflict { code, message, .. } => {
                (code.as_str(), message.clone())
            }
            _ => return None,
        };
        Some(match code {
            "ImageAlreadyExistsException" => PutOutcome::AlreadyTagged,
            "ImageTagAlreadyExistsException" => PutOutcome::TagImmutable(message),
            "LayersNotFoundException" => PutOutcome::LayersMissing(message),
            "ReferencedImagesNotFoundException" => PutOutcome::ReferencesMissing(message),
            _ => return None,
        })
    }
}

impl Registry {
    /// One image's manifest by digest (BatchGetImage), or `None` when the repository lacks it.
    pub async fn get_manifest(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<RawManifest>, EcrError> {
        let mut manifests = self
            .batch_get_manifests(log, repository, std::slice::from_ref(digest))
            .await?;
        Ok(manifests.pop().filter(|m| &m.digest == digest))
    }

    /// PutImage of the exact manifest bytes under `tag`, with the digest it
    /// must have (ECR checks it), in the registry's budget. ECR's refusals
    /// about the image come back as outcomes; other failures as errors.
    pub async fn put_image(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        manifest: &RawManifest,
        tag: &ImageTag,
    ) -> Result<PutOutcome, EcrError> {
        self.budget.acquire("PutImage").await;
        let result = self
            .client
            .put_image()
            .registry_id(&self.reference.account_id)
            .repository_name(repository.as_str())
            .image_manifest(&manifest.manifest)
            .set_image_manifest_media_type(manifest.media_type.clone())
            .image_digest(manifest.digest.as_str())
            .image_tag(tag.as_str())
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(PutOutcome::Tagged)
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("PutImage", error);
                PutOutcome::of_error(&error).ok_or(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).expect("digest")
    }

    #[test]
    fn only_digests_ecr_has_not_got_are_gone() {
        let (a, b, c, d) = (digest('a'), digest('b'), digest('c'), digest('d'));
        // ECR returned a; failed on b with e.g. UnsupportedImageType; c and d
        // failed with ImageNotFound (named or, as moto does, not).
        let gone = not_found(
            &[a.clone(), b.clone(), c.clone(), d.clone()],
            &[a.to_string()],
            &[b.to_string()],
        );
        assert_eq!(gone, vec![c, d]);
    }

    fn put_refusal(code: &str) -> Option<PutOutcome> {
        PutOutcome::of_error(&super::super::error::classify_code(
            "PutImage",
            code.into(),
            format!("recorded {code}"),
        ))
    }

    #[test]
    fn put_image_refusals_about_the_image_are_outcomes() {
        // The codes and messages as ECR returns them (recorded from its API model).
        assert_eq!(
            put_refusal("ImageAlreadyExistsException"),
            Some(PutOutcome::AlreadyTagged)
        );
        assert_eq!(
            put_refusal("ImageTagAlreadyExistsException"),
            Some(PutOutcome::TagImmutable(
                "recorded ImageTagAlreadyExistsException".into()
            ))
        );
        assert_eq!(
            put_refusal("LayersNotFoundException"),
            Some(PutOutcome::LayersMissing(
                "recorded LayersNotFoundException".into()
            ))
        );
        assert_eq!(
            put_refusal("ReferencedImagesNotFoundException"),
            Some(PutOutcome::ReferencesMissing(
                "recorded ReferencedImagesNotFoundException".into()
            ))
        );
        // Anything else stays an error of the call.
        assert_eq!(put_refusal("RepositoryNotFoundException"), None);
        assert_eq!(put_refusal("ImageDigestDoesNotMatchException"), None);
        assert_eq!(put_refusal("ThrottlingException"), None);
    }
}
