//! The inventory's changes as the change log records them and WatchImages
//! streams them (docs/events.md).

use chrono::{DateTime, Utc};

/// What happened to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// New in the inventory (pushed, replicated, pulled through a cache, or first seen).
    Pushed,
    /// Tags added (a new tag, or one moved here from another image).
    Tagged,
    /// Tags removed (deleted, or moved to another image).
    Untagged,
    /// Gone from ECR.
    Deleted,
    /// Moved to the archive storage class.
    Archived,
    /// Back from the archive.
    Restored,
    /// A scan completed (or its counts changed).
    Scanned,
    /// Pinned as in use.
    Pinned,
    /// A pin removed.
    Unpinned,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 9] = [
        ChangeKind::Pushed,
        ChangeKind::Tagged,
        ChangeKind::Untagged,
        ChangeKind::Deleted,
        ChangeKind::Archived,
        ChangeKind::Restored,
        ChangeKind::Scanned,
        ChangeKind::Pinned,
        ChangeKind::Unpinned,
    ];

    /// The stored name (migrations/0023_inventory_changes.sql).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Pushed => "pushed",
            ChangeKind::Tagged => "tagged",
            ChangeKind::Untagged => "untagged",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Archived => "archived",
            ChangeKind::Restored => "restored",
            ChangeKind::Scanned => "scanned",
            ChangeKind::Pinned => "pinned",
            ChangeKind::Unpinned => "unpinned",
        }
    }

    /// The kind of a stored name.
    pub fn from_stored(name: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A scan's counts as a change carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScanCounts {
    /// ECR's scan status.
    pub status: String,
    /// When the scan completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Findings by severity.
    pub critical: i64,
    /// High findings.
    pub high: i64,
    /// Medium findings.
    pub medium: i64,
    /// Low findings.
    pub low: i64,
    /// Informational findings.
    pub informational: i64,
    /// Findings of undefined severity.
    pub undefined: i64,
}

/// One committed change of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryChange {
    /// Its place in the log: the cursor.
    pub seq: i64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The registry's account.
    pub account_id: String,
    /// The registry's region.
    pub region: String,
    /// The repository.
    pub repository: String,
    /// The image's digest.
    pub digest: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The image's tags after the change.
    pub tags: Vec<String>,
    /// Tagged / untagged: the tags added or removed.
    pub changed_tags: Vec<String>,
    /// Scanned: the counts.
    pub scan: Option<ScanCounts>,
    /// Pinned / unpinned: the pin's holder.
    pub holder: Option<String>,
    /// Pushed: when.
    pub pushed_at: Option<DateTime<Utc>>,
}

/// Which changes a stream wants (every condition given must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// Only this registry (account, region).
    pub registry: Option<(String, String)>,
    /// Only repositories whose name starts with this.
    pub repository_prefix: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<ChangeKind>,
}

impl ChangeFilter {
    /// Whether `change` passes.
    pub fn admits(&self, change: &InventoryChange) -> bool {
        self.registry
            .as_ref()
            .is_none_or(|(account, region)| *account == change.account_id && *region == change.region)
            && self
                .repository_prefix
                .as_ref()
                .is_none_or(|prefix| change.repository.starts_with(prefix.as_str()))
            && (self.kinds.is_empty() || self.kinds.contains(&change.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(repository: &str, kind: ChangeKind) -> InventoryChange {
        InventoryChange {
            seq: 1,
            at: Utc::now(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            repository: repository.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            kind,
            tags: vec![],
            changed_tags: vec![],
            scan: None,
            holder: None,
            pushed_at: None,
        }
    }

    #[test]
    fn stored_names_round_trip() {
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_stored(kind.as_str()), Some(kind));
        }
        assert_eq!(ChangeKind::from_stored("exploded"), None);
    }

    #[test]
    fn a_filter_admits_what_matches_every_condition() {
        let any = ChangeFilter::default();
        assert!(any.admits(&change("payments/api", ChangeKind::Pushed)));
        let narrow = ChangeFilter {
            registry: Some(("123456789012".into(), "us-east-1".into())),
            repository_prefix: Some("payments/".into()),
            kinds: vec![ChangeKind::Pushed, ChangeKind::Tagged],
        };
        assert!(narrow.admits(&change("payments/api", ChangeKind::Tagged)));
        assert!(!narrow.admits(&change("payments/api", ChangeKind::Deleted)));
        assert!(!narrow.admits(&change("paymentsx/api", ChangeKind::Pushed)));
        let elsewhere = ChangeFilter {
            registry: Some(("123456789012".into(), "eu-west-1".into())),
            ..ChangeFilter::default()
        };
        assert!(!elsewhere.admits(&change("payments/api", ChangeKind::Pushed)));
    }
}
