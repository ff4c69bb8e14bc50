//! ECR's EventBridge events, as SQS delivers them (the message body is the
//! EventBridge envelope), turned into what the inventory must re-read.
//!
//! An event is a hint, never the truth: delivery is best effort and may be
//! out of order, so each names the one image, scan or repository to read
//! again from ECR (docs/events.md). Shapes: ../shared/ECR-NOTES.md, "Events",
//! and AWS's "Amazon ECR events and EventBridge".

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Digest, RepositoryName};

/// The event types the intake knows (the `type` label of its metrics).
pub const EVENT_TYPES: [&str; 9] = [
    "ECR Image Action",
    "ECR Image Scan",
    "ECR Scan Resource Change",
    "ECR Replication Action",
    "ECR Referrer Action",
    "ECR Pull Through Cache Action",
    "Inspector2 Scan",
    "AWS API Call via CloudTrail",
    "AWS Service Event via CloudTrail",
];

/// The metrics label of an event whose type the intake does not know.
pub const UNKNOWN_TYPE: &str = "unknown";

/// What the inventory must read again because of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reread {
    /// One image, by digest (its row and tags; gone: removed).
    Image {
        /// Its repository.
        repository: RepositoryName,
        /// Its digest.
        digest: Digest,
    },
    /// One image's scan findings.
    Scan {
        /// Its repository.
        repository: RepositoryName,
        /// The image.
        digest: Digest,
    },
    /// A repository's settings, and its tags when `tags` (gone: forgotten).
    Repository {
        /// The repository.
        repository: RepositoryName,
        /// Read its tags too.
        tags: bool,
    },
    /// A repository's lifecycle and repository policies.
    Policies {
        /// The repository.
        repository: RepositoryName,
    },
    /// Images that ECR's lifecycle policy expired: which of them are gone.
    Expired {
        /// Their repository.
        repository: RepositoryName,
        /// The expired digests.
        digests: Vec<Digest>,
    },
    /// The event says the repository changed but not how: its images are
    /// read in the next reconcile pass (no ECR call now).
    Backstop {
        /// The repository.
        repository: RepositoryName,
    },
}

impl Reread {
    /// The repository it reads.
    pub fn repository(&self) -> &RepositoryName {
        match self {
            Reread::Image { repository, .. }
            | Reread::Scan { repository, .. }
            | Reread::Repository { repository, .. }
            | Reread::Policies { repository }
            | Reread::Expired { repository, .. }
            | Reread::Backstop { repository } => repository,
        }
    }
}

/// An event the intake acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrEvent {
    /// EventBridge's `id`.
    pub id: String,
    /// One of [`EVENT_TYPES`].
    pub event_type: &'static str,
    /// The account it came from.
    pub account: String,
    /// The region it came from.
    pub region: String,
    /// When it happened (`time`).
    pub time: DateTime<Utc>,
    /// What to read again.
    pub rereads: Vec<Reread>,
}

/// What a message turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An event to act on.
    Event(EcrEvent),
    /// A known event that changes nothing in the inventory (a failed push, a
    /// CloudTrail record of a read or of a failed call).
    Ignored {
        /// One of [`EVENT_TYPES`].
        event_type: &'static str,
        /// When it happened, when the envelope says.
        time: Option<DateTime<Utc>>,
        /// Why nothing is read.
        reason: String,
    },
    /// Not an event the intake knows: counted, logged once per type, deleted.
    Unknown {
        /// The envelope's `detail-type` (or why there is none).
        detail_type: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads one SQS message body.
pub fn parse_message(body: &str) -> Parsed {
    let Ok(envelope) = serde_json::from_str::<Value>(body) else {
        return unknown("(not JSON)", "the message body is not a JSON EventBridge event");
    };
    let Some(detail_type) = envelope.get("detail-type").and_then(Value::as_str) else {
        return unknown(
            "(none)",
            "the message has no `detail-type`: not an EventBridge event",
        );
    };
    let Some(event_type) = EVENT_TYPES.into_iter().find(|t| *t == detail_type) else {
        return unknown(detail_type, "an event type the gateway does not follow");
    };
    let source = text(&envelope, "source");
    let expected = if event_type == "Inspector2 Scan" {
        "aws.inspector2"
    } else {
        "aws.ecr"
    };
    if source != Some(expected) {
        return unknown(detail_type, &format!("source {source:?}, expected {expected}"));
    }
    let time = text(&envelope, "time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let (Some(id), Some(account), Some(region), Some(time), Some(detail)) = (
        text(&envelope, "id"),
        text(&envelope, "account"),
        text(&envelope, "region"),
        time,
        envelope.get("detail").filter(|d| d.is_object()),
    ) else {
        return unknown(
            detail_type,
            "the envelope lacks id, account, region, an RFC 3339 time or a detail object",
        );
    };
    let rereads = match rereads_of(event_type, detail, account, region) {
        Ok(Some(rereads)) => rereads,
        Ok(None) => {
            return Parsed::Ignored {
                event_type,
                time: Some(time),
                reason: ignored_reason(event_type, detail),
            };
        }
        Err(reason) => return unknown(detail_type, &reason),
    };
    Parsed::Event(EcrEvent {
        id: id.to_owned(),
        event_type,
        account: account.to_owned(),
        region: region.to_owned(),
        time,
        rereads,
    })
}

fn unknown(detail_type: &str, reason: &str) -> Parsed {
    Parsed::Unknown {
        detail_type: detail_type.chars().take(128).collect(),
        reason: reason.to_owned(),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// `Ok(None)`: nothing to read (see [`ignored_reason`]); `Err`: a shape the intake cannot read.
fn rereads_of(
    event_type: &'static str,
    detail: &Value,
    account: &str,
    region: &str,
) -> Result<Option<Vec<Reread>>, String> {
    match event_type {
        "ECR Image Action" | "ECR Replication Action" | "ECR Referrer Action" => {
            if text(detail, "result").is_some_and(|r| r != "SUCCESS") {
                return Ok(None);
            }
            image_reread(detail, "repository-name").map(Some)
        }
        "ECR Pull Through Cache Action" => {
            if text(detail, "sync-status").is_some_and(|s| s != "SUCCESS") {
                return Ok(None);
            }
            image_reread(detail, "repository-name").map(Some)
        }
        "ECR Image Scan" => scan_reread(detail, repository(detail, "repository-name")?).map(Some),
        "Inspector2 Scan" => {
            let arn = text(detail, "repository-name").ok_or("detail lacks repository-name")?;
            let name = repository_of_arn(arn, account, region)?;
            scan_reread(detail, name).map(Some)
        }
        "ECR Scan Resource Change" => {
            let listed = detail
                .get("repositories")
                .and_then(Value::as_array)
                .ok_or("detail lacks repositories[]")?;
            let rereads = listed
                .iter()
                .map(|r| {
                    repository(r, "repository-name").map(|repository| Reread::Repository {
                        repository,
                        tags: false,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(rereads))
        }
        _ => cloudtrail_rereads(detail, account, region),
    }
}

fn ignored_reason(event_type: &str, detail: &Value) -> String {
    match event_type {
        "AWS API Call via CloudTrail" => match text(detail, "errorCode") {
            Some(code) => format!("the call failed ({code}): nothing changed"),
            None => format!(
                "{} changes nothing the inventory keeps",
                text(detail, "eventName").unwrap_or("the call")
            ),
        },
        "ECR Pull Through Cache Action" => format!(
            "sync-status {}: nothing was cached",
            text(detail, "sync-status").unwrap_or("?")
        ),
        _ => format!(
            "result {}: nothing changed",
            text(detail, "result").unwrap_or("?")
        ),
    }
}

fn repository(detail: &Value, key: &str) -> Result<RepositoryName, String> {
    let name = text(detail, key).ok_or_else(|| format!("detail lacks {key}"))?;
    RepositoryName::parse(name).map_err(|v| format!("{key}: {}", v.description))
}

fn image_reread(detail: &Value, key: &str) -> Result<Vec<Reread>, String> {
    let repository = repository(detail, key)?;
    Ok(vec![match text(detail, "image-digest") {
        Some(digest) => Reread::Image {
            repository,
            digest: Digest::parse(digest).map_err(|v| format!("image-digest: {}", v.description))?,
        },
        // Without a digest the image cannot be read alone: the next pass reads the repository.
        None => Reread::Backstop { repository },
    }])
}

fn scan_reread(detail: &Value, repository: RepositoryName) -> Result<Vec<Reread>, String> {
    let digest = text(detail, "image-digest").ok_or("detail lacks image-digest")?;
    let digest = Digest::parse(digest).map_err(|v| format!("image-digest: {}", v.description))?;
    Ok(vec![Reread::Scan { repository, digest }])
}

/// The name in `arn:aws:ecr:REGION:ACCOUNT:repository/NAME`, which must be of
/// the event's own account and region.
fn repository_of_arn(arn: &str, account: &str, region: &str) -> Result<RepositoryName, String> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("ecr"), Some(arn_region), Some(arn_account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(format!("{arn:?} is not an ECR repository ARN"));
    };
    if arn_region != region || arn_account != account {
        return Err(format!(
            "{arn:?} is not of the event's account {account} and region {region}"
        ));
    }
    let name = resource
        .strip_prefix("repository/")
        .ok_or_else(|| format!("{arn:?} is not an ECR repository ARN"))?;
    RepositoryName::parse(name).map_err(|v| format!("repository ARN: {}", v.description))
}

/// A CloudTrail record of an ECR call: the settings it changed are read again.
fn cloudtrail_rereads(detail: &Value, account: &str, region: &str) -> Result<Option<Vec<Reread>>, String> {
    if text(detail, "eventSource") != Some("ecr.amazonaws.com") {
        return Err(format!(
            "eventSource {:?} is not ecr.amazonaws.com",
            text(detail, "eventSource")
        ));
    }
    if detail.get("errorCode").is_some_and(|c| !c.is_null()) {
        return Ok(None);
    }
    let event_name = text(detail, "eventName").ok_or("detail lacks eventName")?;
    let parameters = detail.get("requestParameters").unwrap_or(&Value::Null);
    let named = || repository(parameters, "repositoryName");
    let reread = match event_name {
        "CreateRepository" => Reread::Repository {
            repository: named()?,
            tags: true,
        },
        "DeleteRepository" | "PutImageTagMutability" | "PutImageScanningConfiguration" => {
            Reread::Repository {
                repository: named()?,
                tags: false,
            }
        }
        "TagResource" | "UntagResource" => {
            let arn = text(parameters, "resourceArn").ok_or("requestParameters lack resourceArn")?;
            Reread::Repository {
                repository: repository_of_arn(arn, account, region)?,
                tags: true,
            }
        }
        "PutLifecyclePolicy" | "DeleteLifecyclePolicy" | "SetRepositoryPolicy" | "DeleteRepositoryPolicy" => {
            Reread::Policies { repository: named()? }
        }
        "PolicyExecutionEvent" => return expired(detail).map(Some),
        _ => return Ok(None),
    };
    Ok(Some(vec![reread]))
}

/// ECR's lifecycle expiry (`PolicyExecutionEvent`): the digests it expired.
fn expired(detail: &Value) -> Result<Vec<Reread>, String> {
    let details = detail
        .get("serviceEventDetails")
        .ok_or("PolicyExecutionEvent lacks serviceEventDetails")?;
    let repository = repository(details, "repositoryName")?;
    let actions = details
        .get("lifecycleEventImageActions")
        .and_then(Value::as_array)
        .ok_or("serviceEventDetails lack lifecycleEventImageActions[]")?;
    let digests = actions
        .iter()
        .map(|action| {
            let digest = action
                .pointer("/lifecycleEventImage/digest")
                .and_then(Value::as_str)
                .ok_or("a lifecycle action lacks lifecycleEventImage.digest")?;
            Digest::parse(digest).map_err(|v| format!("lifecycleEventImage.digest: {}", v.description))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![Reread::Expired { repository, digests }])
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
