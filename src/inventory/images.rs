//! The image reconcile of one repository: list every image (all pages,
//! archived included), upsert them a page per statement, remove what ECR no
//! longer has, then read the manifests not read before (index children,
//! artifacts, referrers). Replicas share the work through per-repository
//! leases in Postgres; a replica that dies loses its lease when it expires.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tracing::Instrument as _;

use super::SyncError;
use crate::domain::{Digest, ImageRecord, ImageSelector, Manifest, ManifestKind, RepositoryName};
use crate::ecr::{CallLog, Registry};
use crate::store::images::{self, ManifestFacts};
use crate::store::scans;
use crate::store::sync::{self, RunCounts};
use crate::store::{Store, StoreError, audit_events, repositories};

/// Rows written per statement (ECR's DescribeImages page size).
pub const PAGE: usize = 1000;

/// Why a sync ran (recorded with the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The background loop.
    Interval,
    /// `RefreshInventory`.
    OnDemand,
    /// After a mutation through the gateway.
    WriteThrough,
    /// The backstop pass of a registry whose events the gateway follows: a
    /// repository that is dirty or due (tags re-read too, since the listing
    /// leaves them to the events).
    Backstop,
}

impl Trigger {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Interval => "interval",
            Trigger::OnDemand => "on-demand",
            Trigger::WriteThrough => "write-through",
            Trigger::Backstop => "backstop",
        }
    }
}

/// Who syncs and for how long a lease holds.
#[derive(Debug, Clone)]
pub struct Syncer {
    /// Postgres.
    pub store: Store,
    /// This replica's name in leases.
    pub holder: String,
    /// How long a lease holds before another replica may take over.
    pub lease: Duration,
    /// At most this many scans read per repository and pass (0: none).
    pub scans_per_pass: usize,
}

/// How a repository sync ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// It ran; here is what it did.
    Ran(RunCounts),
    /// Another replica holds the lease.
    Busy,
}

impl Syncer {
    /// Reconciles one repository's images, unless another replica is at it.
    /// Its span is the root of a background sync's trace (ECR and database spans under it).
    #[tracing::instrument(name = "inventory.sync_repository", skip_all, fields(
        registry = %registry.reference.alias, repository = %repository))]
    pub async fn sync_repository(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        trigger: Trigger,
    ) -> Result<SyncOutcome, SyncError> {
        let started = Utc::now();
        let until = started + self.lease;
        let pool = self.store.pool();
        if !sync::try_lease(pool, &registry.reference, repository, &self.holder, until).await? {
            return Ok(SyncOutcome::Busy);
        }
        let run_id = sync::start_run(
            pool,
            &registry.reference,
            Some(repository),
            trigger.as_str(),
            &self.holder,
        )
        .await?;
        let log = CallLog::default();
        let result = self.reconcile(registry, repository, trigger, &log).await;
        let error = result.as_ref().err().map(|e| e.to_string());
        let mut counts = result.as_ref().map(|c| *c).unwrap_or_default();
        counts.ecr_calls = log.ids().len() as i32;
        let mut tx = self.store.begin().await?;
        let synced_at = error.is_none().then(Utc::now);
        sync::release(
            &mut tx,
            &registry.reference,
            repository,
            &self.holder,
            started,
            synced_at,
            error.as_deref(),
        )
        .await?;
        sync::finish_run(&mut *tx, run_id, counts, error.as_deref()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        result.map(SyncOutcome::Ran)
    }

    async fn reconcile(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        trigger: Trigger,
        log: &CallLog,
    ) -> Result<RunCounts, SyncError> {
        let listing = registry.describe_images(log, repository).await;
        let (records, pages) = match listing {
            Ok(listing) => listing,
            Err(error) if error.is_not_found() => return self.forget_repository(registry, repository).await,
            Err(error) => return Err(error.into()),
        };
        // The settings are read after the images, so that they are never older
        // than the image facts they are written with (see `read_settings`).
        let tags_always = trigger != Trigger::Interval;
        let Some(settings) = self.read_settings(registry, repository, tags_always, log).await? else {
            return self.forget_repository(registry, repository).await;
        };
        let policies = match trigger {
            Trigger::Interval | Trigger::Backstop => self.read_policies(registry, repository, log).await?,
            _ => None,
        };
        let started = Utc::now();
        let mut counts = RunCounts {
            pages,
            seen: records.len() as i32,
            ..RunCounts::default()
        };
        let unread = async {
            let mut tx = self.store.begin().await?;
            for page in records.chunks(PAGE) {
                let page_counts =
                    images::upsert_page(&mut tx, &registry.reference, repository, page, started).await?;
                counts.added += page_counts.added as i32;
                counts.changed += page_counts.changed as i32;
            }
            let removed =
                images::finish_reconcile(&mut tx, &registry.reference, repository, &records).await?;
            counts.removed = removed.len() as i32;
            if !removed.is_empty() {
                // Images gone from ECR leave the inventory with an audit event, in the same transaction.
                let record = removal_record(&registry.reference, repository, &removed, log);
                audit_events::insert(&mut tx, &record).await?;
            }
            settings.write(&mut tx, &registry.reference, started, log).await?;
            if let Some(policies) = &policies {
                policies
                    .write(&mut tx, &registry.reference, repository, log)
                    .await?;
            }
            let unread = images::digests_without_manifest(&mut tx, &registry.reference, repository).await?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok::<_, StoreError>(unread)
        }
        .instrument(crate::store::transaction_span("reconcile_images"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        self.read_manifests(registry, repository, log, &unread).await?;
        self.refresh_scans(registry, repository, log).await?;
        Ok(counts)
    }

    /// Reads the repository itself (`DescribeRepositories`): its tag mutability
    /// and exclusion filters, which ResolveImage and the deploy gate answer
    /// from, and its tags when `tags_always` or when the cache does not have
    /// the repository yet (an interval pass follows the registry listing, which
    /// has just read them; a read-through needs only the settings). `None`:
    /// ECR no longer has it.
    async fn read_settings(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        tags_always: bool,
        log: &CallLog,
    ) -> Result<Option<ReadSettings>, SyncError> {
        let with_tags = tags_always
            || !repositories::exists(self.store.pool(), &registry.reference, repository.as_str()).await?;
        let state = registry
            .describe_repository_state(log, repository, with_tags)
            .await?;
        Ok(state.map(|state| ReadSettings { state, with_tags }))
    }

    /// Reads the repository's policies when the cache never read them or read
    /// them more than [`POLICIES_MAX_AGE`] ago (a registry listing does not
    /// read them; compliance judges them). `None`: not due.
    async fn read_policies(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        log: &CallLog,
    ) -> Result<Option<ReadPolicies>, SyncError> {
        let cached = repositories::policies(self.store.pool(), &registry.reference, repository).await?;
        let due = cached
            .as_ref()
            .is_none_or(|c| c.read_at.is_none_or(|at| Utc::now() - at > POLICIES_MAX_AGE));
        if !due {
            return Ok(None);
        }
        self.read_policies_now(registry, repository, log).await
    }

    /// Reads the repository's policies now. `None`: ECR no longer has it.
    pub(super) async fn read_policies_now(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        log: &CallLog,
    ) -> Result<Option<ReadPolicies>, SyncError> {
        let cached = repositories::policies(self.store.pool(), &registry.reference, repository).await?;
        let (lifecycle, policy) = match registry.read_policies(log, repository).await {
            Ok(read) => read,
            // Deleted meanwhile: the next listing forgets it.
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        Ok(Some(ReadPolicies {
            before: cached.filter(|c| c.read_at.is_some()),
            lifecycle,
            policy,
            read_at: Utc::now(),
        }))
    }

    /// Reads the scans the cache lacks or holds unfinished (newest pushes
    /// first, at most `scans_per_pass`), so the deploy gate answers from the cache.
    async fn refresh_scans(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        log: &CallLog,
    ) -> Result<(), SyncError> {
        if self.scans_per_pass == 0 {
            return Ok(());
        }
        let digests = scans::digests_to_refresh(
            self.store.pool(),
            &registry.reference,
            repository.as_str(),
            self.scans_per_pass as i64,
        )
        .await?;
        for digest in digests.iter().filter_map(|d| Digest::parse(d).ok()) {
            let report = match registry.describe_scan_findings(log, repository, &digest).await {
                Ok(report) => report,
                // Gone since the listing: the next pass removes it.
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error.into()),
            };
            async {
                let mut tx = self.store.begin().await?;
                scans::store_report(
                    &mut tx,
                    &registry.reference,
                    repository.as_str(),
                    &report,
                    Utc::now(),
                )
                .await?;
                tx.commit().await.map_err(StoreError::from)
            }
            .instrument(crate::store::transaction_span("store_scan_report"))
            .await?;
        }
        if !digests.is_empty() {
            self.store.invalidate(&registry.reference, repository.as_str());
        }
        Ok(())
    }

    /// The repository is gone from ECR: its images and its cache row go too.
    #[tracing::instrument(name = "db.transaction", skip_all, fields(
        otel.name = "postgresql forget_repository", otel.kind = "client",
        db.system = "postgresql", db.operation.name = "forget_repository"))]
    pub(super) async fn forget_repository(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
    ) -> Result<RunCounts, SyncError> {
        let mut tx = self.store.begin().await?;
        let removed = images::delete_repository(&mut tx, &registry.reference, repository).await?;
        repositories::delete(&mut tx, &registry.reference, repository).await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(RunCounts {
            removed: removed as i32,
            ..RunCounts::default()
        })
    }

    /// Reads the manifests of `digests` and stores what they say.
    pub(super) async fn read_manifests(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        log: &CallLog,
        digests: &[String],
    ) -> Result<(), SyncError> {
        let digests: Vec<Digest> = digests.iter().filter_map(|d| Digest::parse(d).ok()).collect();
        if digests.is_empty() {
            return Ok(());
        }
        let manifests = registry.batch_get_manifests(log, repository, &digests).await?;
        let facts: Vec<ManifestFacts> = manifests
            .iter()
            .map(|raw| facts_of(raw.digest.as_str(), &raw.manifest, raw.media_type.as_deref()))
            .collect();
        async {
            let mut tx = self.store.begin().await?;
            images::store_manifest_facts(&mut tx, &registry.reference, repository, &facts).await?;
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("store_manifest_facts"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(())
    }
}

/// What a manifest says, as stored. A manifest that does not parse is
/// recorded as kind `unknown` so that it is not fetched again and again.
pub fn facts_of(digest: &str, manifest: &str, media_type: Option<&str>) -> ManifestFacts {
    match Manifest::parse(manifest, media_type) {
        Ok(parsed) => ManifestFacts {
            digest: digest.to_owned(),
            kind: match parsed.kind {
                ManifestKind::Image => "image",
                ManifestKind::Index => "index",
                ManifestKind::Artifact => "artifact",
            }
            .to_owned(),
            artifact_type: parsed.artifact_type.clone(),
            subject_digest: parsed.subject.as_ref().map(|s| s.digest.to_string()),
            children: serde_json::Value::Array(
                parsed
                    .manifests
                    .iter()
                    .map(|child| {
                        json!({
                            "digest": child.digest.as_str(),
                            "mediaType": child.media_type,
                            "size": child.size,
                            "platform": child.platform.as_ref().map(|p| json!({
                                "os": p.os, "architecture": p.architecture, "variant": p.variant,
                            })),
                        })
                    })
                    .collect(),
            ),
        },
        Err(error) => {
            tracing::warn!(digest, "manifest could not be read: {error}");
            ManifestFacts {
                digest: digest.to_owned(),
                kind: "unknown".to_owned(),
                artifact_type: None,
                subject_digest: None,
                children: serde_json::Value::Array(Vec::new()),
            }
        }
    }
}

impl Syncer {
    /// Re-reads one image (by tag or digest) and updates the cache: its row and
    /// tags, or its removal when ECR no longer has it. Returns the fresh record.
    pub async fn refresh_image(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        selector: &ImageSelector,
        log: &CallLog,
    ) -> Result<Option<ImageRecord>, SyncError> {
        let found = registry.describe_image(log, repository, selector).await?;
        // A read-through answers `tag_immutable`: re-read the settings with the image.
        let settings = self.read_settings(registry, repository, false, log).await?;
        async {
            let mut tx = self.store.begin().await?;
            let read_at = Utc::now();
            match (&found, selector) {
                (Some(image), _) => {
                    images::upsert_one(&mut tx, &registry.reference, repository, image, read_at).await?;
                }
                (None, ImageSelector::Digest(digest)) => {
                    images::delete_one(&mut tx, &registry.reference, repository, digest.as_str()).await?;
                }
                (None, ImageSelector::Tag(tag)) => {
                    images::untag(&mut tx, &registry.reference, repository, tag.as_str()).await?;
                }
            }
            if let Some(settings) = &settings {
                settings.write(&mut tx, &registry.reference, read_at, log).await?;
            }
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("refresh_image"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        if let Some(image) = &found {
            let unread = self
                .unread_digest(registry, repository, image.digest.as_str())
                .await?;
            self.read_manifests(registry, repository, log, &unread).await?;
        }
        Ok(found)
    }

    pub(super) async fn unread_digest(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        digest: &str,
    ) -> Result<Vec<String>, SyncError> {
        let row = crate::store::image_reads::get(
            self.store.pool(),
            &registry.reference,
            repository.as_str(),
            digest,
        )
        .await?;
        Ok(row
            .filter(|r| r.kind.is_none())
            .map(|r| vec![r.digest])
            .unwrap_or_default())
    }
}

/// What `DescribeRepositories` (and, `with_tags`, `ListTagsForResource`) said
/// of a repository during a sync, to be written with the image facts.
pub(super) struct ReadSettings {
    pub(super) state: crate::domain::RepositoryState,
    pub(super) with_tags: bool,
}

impl ReadSettings {
    /// Writes the settings as read by `read_at`, in the transaction of the
    /// image facts. Settings (and, read with them, tags) that differ from a
    /// cached row written before the read changed outside the gateway (drift)
    /// and leave an audit event, as the registry listing's do.
    pub(super) async fn write(
        &self,
        tx: &mut crate::store::Tx,
        registry: &crate::domain::RegistryRef,
        read_at: chrono::DateTime<Utc>,
        log: &CallLog,
    ) -> Result<(), StoreError> {
        let cached = repositories::cached_state(tx, registry, &self.state.name).await?;
        if let Some((mut before, _)) = cached.filter(|(_, at)| *at < read_at) {
            if !self.with_tags {
                before.tags = self.state.tags.clone();
            }
            let changes = crate::domain::setting_changes(&before, &self.state);
            if !changes.is_empty() {
                audit_events::insert(tx, &drift_record(registry, &self.state.name, &changes, log)).await?;
            }
        }
        let tags = self.with_tags.then_some(&self.state.tags);
        repositories::refresh_described(tx, registry, &self.state, tags, read_at).await
    }
}

/// How long the cached lifecycle and repository policies of a repository
/// count as current before an interval sync reads them again.
const POLICIES_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What the repository's policy reads said during a sync.
pub(super) struct ReadPolicies {
    /// The cached policies, when they had been read before.
    before: Option<repositories::CachedPolicies>,
    lifecycle: Option<String>,
    policy: Option<String>,
    read_at: chrono::DateTime<Utc>,
}

impl ReadPolicies {
    /// Writes them; policies that changed since the last read changed outside
    /// the gateway (drift) and leave an audit event.
    pub(super) async fn write(
        &self,
        tx: &mut crate::store::Tx,
        registry: &crate::domain::RegistryRef,
        repository: &RepositoryName,
        log: &CallLog,
    ) -> Result<(), StoreError> {
        if let Some(before) = &self.before {
            let changes = crate::domain::policy_changes(
                (
                    before.lifecycle_policy.as_deref(),
                    before.repository_policy.as_deref(),
                ),
                (self.lifecycle.as_deref(), self.policy.as_deref()),
            );
            if !changes.is_empty() {
                audit_events::insert(tx, &drift_record(registry, repository, &changes, log)).await?;
            }
        }
        repositories::write_policies(
            tx,
            registry,
            repository,
            self.lifecycle.as_deref(),
            self.policy.as_deref(),
            self.read_at,
        )
        .await
    }
}

/// The audit event of a sync that found images gone from ECR: the gateway
/// acting on its own (`AwsServiceEvent`), naming each digest it dropped.
fn removal_record(
    registry: &crate::domain::RegistryRef,
    repository: &RepositoryName,
    removed: &[String],
    log: &CallLog,
) -> crate::domain::AuditRecord {
    let elements = json!({
        "reason": "no longer listed by ECR DescribeImages",
        "imageIds": removed.iter().map(|d| json!({"imageDigest": d})).collect::<Vec<_>>(),
    });
    service_record(registry, repository, "SyncRemoveImages", elements, log)
}

/// The audit event of a sync that found a repository changed outside the
/// gateway (drift): each setting with what the cache had and what ECR has.
pub(super) fn drift_record(
    registry: &crate::domain::RegistryRef,
    repository: &RepositoryName,
    changes: &[crate::domain::SettingChange],
    log: &CallLog,
) -> crate::domain::AuditRecord {
    let elements = json!({
        "reason": "changed in ECR outside the gateway",
        "changes": changes
            .iter()
            .map(|c| json!({"field": c.field, "before": c.before, "after": c.after}))
            .collect::<Vec<_>>(),
    });
    service_record(registry, repository, "SyncDetectDrift", elements, log)
}

/// A finished event of the sync (`AwsServiceEvent`) about one repository.
fn service_record(
    registry: &crate::domain::RegistryRef,
    repository: &RepositoryName,
    event_name: &str,
    response_elements: serde_json::Value,
    log: &CallLog,
) -> crate::domain::AuditRecord {
    use crate::domain::{AuditOutcome, AuditRecord, AuditResource, AuditStatus, Identity};
    AuditRecord {
        event_id: uuid::Uuid::now_v7(),
        event_time: Utc::now(),
        event_name: event_name.into(),
        read_only: false,
        identity: Identity {
            principal: "ecr-gateway/sync".into(),
            principal_type: "Service".into(),
            groups: Vec::new(),
            auth_method: "internal".into(),
        },
        source_ip: None,
        user_agent: Some("ecr-gateway inventory sync".into()),
        registry: Some(registry.clone()),
        gateway_request_id: uuid::Uuid::new_v4(),
        client_request_id: None,
        request_parameters: json!({"registryId": registry.account_id, "repositoryName": repository.as_str()}),
        resources: vec![AuditResource {
            resource_type: "AWS::ECR::Repository".into(),
            arn: registry.repository_arn(repository),
        }],
        authorization: None,
        outcome: AuditOutcome {
            status: AuditStatus::Succeeded,
            response_elements: Some(crate::audit::cap_element(response_elements)),
            error_code: None,
            error_message: None,
            ecr_request_ids: log.ids(),
        },
    }
}
