//! Plain records describing images as ECR lists them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Digest, RepositoryName};

/// One image as `DescribeImages` reports it (a digest with its tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// The repository holding it.
    pub repository: RepositoryName,
    /// The manifest digest.
    pub digest: Digest,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// `imageSizeInBytes` (for an index: ECR reports the largest child).
    pub size_bytes: Option<i64>,
    /// When it was pushed.
    pub pushed_at: Option<DateTime<Utc>>,
    /// `lastRecordedPullTime` (ECR updates it about once a day).
    pub last_pulled_at: Option<DateTime<Utc>>,
    /// `imageManifestMediaType`.
    pub manifest_media_type: Option<String>,
    /// `artifactMediaType` (the config media type).
    pub artifact_media_type: Option<String>,
    /// `ACTIVE`, `ARCHIVED` or `ACTIVATING`.
    pub status: String,
    /// `subjectManifestDigest`: the image this artifact refers to (signatures, SBOMs).
    pub subject_digest: Option<String>,
}
