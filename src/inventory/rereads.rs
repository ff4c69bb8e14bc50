//! What an event makes the inventory read again, and the write of what ECR
//! then says (docs/events.md). Each re-read is the truth at its time, so an
//! event replayed or delivered out of order changes nothing: the image, scan
//! or settings are read again and written as ECR has them now.
//!
//! ECR calls per re-read: an image 1 (DescribeImages), plus BatchGetImage for
//! a manifest not read before, or DescribeRepositories for a repository the
//! cache does not have yet; a scan 1 (DescribeImageScanFindings, a page per
//! 1,000 findings); settings 1, with tags 2; policies 2; lifecycle expiries 1
//! per 100 digests; a backstop mark none.

use chrono::Utc;
use tracing::Instrument as _;

use super::images::ReadSettings;
use super::{SyncError, Syncer};
use crate::domain::events::Reread;
use crate::domain::{Digest, ImageSelector, RepositoryName};
use crate::ecr::{CallLog, Registry};
use crate::store::{StoreError, images, repositories, scans, sync};

impl Syncer {
    /// Reads again what `reread` names and writes it.
    pub async fn reread(&self, registry: &Registry, reread: &Reread, log: &CallLog) -> Result<(), SyncError> {
        match reread {
            Reread::Image { repository, digest } => {
                self.reread_image(registry, repository, digest, log).await
            }
            Reread::Scan { repository, digest } => self.reread_scan(registry, repository, digest, log).await,
            Reread::Repository { repository, tags } => {
                self.reread_settings(registry, repository, *tags, log).await
            }
            Reread::Policies { repository } => self.reread_policies(registry, repository, log).await,
            Reread::Expired { repository, digests } => {
                self.reread_expired(registry, repository, digests, log).await
            }
            Reread::Backstop { repository } => self.mark_dirty(registry, repository).await,
        }
    }

    /// Leaves the repository's images to the next reconcile pass.
    pub async fn mark_dirty(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
    ) -> Result<(), SyncError> {
        sync::mark_dirty(self.store.pool(), &registry.reference, repository).await?;
        Ok(())
    }

    async fn reread_image(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        digest: &Digest,
        log: &CallLog,
    ) -> Result<(), SyncError> {
        let reference = &registry.reference;
        let found = registry
            .describe_image(log, repository, &ImageSelector::Digest(digest.clone()))
            .await?;
        // A repository new to the cache (made outside the gateway) is read
        // with the image; its tags follow from its CreateRepository event or the next listing.
        let settings = match (
            &found,
            repositories::exists(self.store.pool(), reference, repository.as_str()).await?,
        ) {
            (Some(_), false) => match registry.describe_repository_state(log, repository, false).await? {
                Some(state) => Some(ReadSettings {
                    state,
                    with_tags: false,
                }),
                None => return self.forget(registry, repository).await,
            },
            _ => None,
        };
        async {
            let mut tx = self.store.begin().await?;
            let read_at = Utc::now();
            if let Some(settings) = &settings {
                settings.write(&mut tx, reference, read_at, log).await?;
            }
            match &found {
                Some(image) => images::upsert_one(&mut tx, reference, repository, image, read_at).await?,
                None => {
                    images::delete_one(&mut tx, reference, repository, digest.as_str()).await?;
                }
            }
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("apply_image_event"))
        .await?;
        self.store.invalidate(reference, repository.as_str());
        if found.is_some() && settings.is_none() {
            let unread = self.unread_digest(registry, repository, digest.as_str()).await?;
            self.read_manifests(registry, repository, log, &unread).await?;
        }
        Ok(())
    }

    async fn reread_scan(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        digest: &Digest,
        log: &CallLog,
    ) -> Result<(), SyncError> {
        let report = match registry.describe_scan_findings(log, repository, digest).await {
            Ok(report) => report,
            // The image (or its repository) is gone: its own event removes it.
            Err(error) if error.is_not_found() => return Ok(()),
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
        .instrument(crate::store::transaction_span("apply_scan_event"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(())
    }

    async fn reread_settings(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        with_tags: bool,
        log: &CallLog,
    ) -> Result<(), SyncError> {
        let Some(state) = registry
            .describe_repository_state(log, repository, with_tags)
            .await?
        else {
            return self.forget(registry, repository).await;
        };
        let settings = ReadSettings { state, with_tags };
        async {
            let mut tx = self.store.begin().await?;
            settings
                .write(&mut tx, &registry.reference, Utc::now(), log)
                .await?;
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("apply_settings_event"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(())
    }

    async fn reread_policies(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        log: &CallLog,
    ) -> Result<(), SyncError> {
        let Some(policies) = self.read_policies_now(registry, repository, log).await? else {
            // Not in the cache yet, or gone: the listing (or its own event) brings it.
            return Ok(());
        };
        async {
            let mut tx = self.store.begin().await?;
            policies
                .write(&mut tx, &registry.reference, repository, log)
                .await?;
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("apply_policy_event"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(())
    }

    async fn reread_expired(
        &self,
        registry: &Registry,
        repository: &RepositoryName,
        digests: &[Digest],
        log: &CallLog,
    ) -> Result<(), SyncError> {
        let gone = match registry.gone_digests(log, repository, digests).await {
            Ok(gone) => gone,
            Err(error) if error.is_not_found() => return self.forget(registry, repository).await,
            Err(error) => return Err(error.into()),
        };
        if gone.is_empty() {
            return Ok(());
        }
        async {
            let mut tx = self.store.begin().await?;
            for digest in &gone {
                images::delete_one(&mut tx, &registry.reference, repository, digest.as_str()).await?;
            }
            tx.commit().await.map_err(StoreError::from)
        }
        .instrument(crate::store::transaction_span("apply_expiry_event"))
        .await?;
        self.store.invalidate(&registry.reference, repository.as_str());
        Ok(())
    }

    async fn forget(&self, registry: &Registry, repository: &RepositoryName) -> Result<(), SyncError> {
        self.forget_repository(registry, repository).await.map(|_| ())
    }
}
