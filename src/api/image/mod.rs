//! `ecrgateway.v1.ImageService`: reads from the inventory in Postgres; only
//! `CONSISTENCY_STRONG` and RefreshInventory call ECR.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::AppState;
use super::call::Call;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, OrRecord as _, invalid};
use super::page_token::{self, next_token};
use crate::auth::authz::Resource;
use crate::domain::{
    Digest, ImageRef, ImageSelector, ImageTag, RegistryRef, RepositoryName, Violation, pinned_uri,
};
use crate::ecr::{CallLog, Registry};
use crate::inventory::{SyncOutcome, Trigger};
use crate::pb;
use crate::pb::image_service_server::ImageService;
use crate::store::cache::RepoKey;
use crate::store::image_reads::{
    self, ImageFilter, ImageRow, ListOrder, ListPosition, Resolution, ResolvedTag, SearchQuery,
};
use crate::store::sync::{self, SyncRun};

mod reads;
mod refresh;
mod resolve;
mod watch;

pub(in crate::api) use reads::image_message;
use reads::*;
use refresh::*;
pub(in crate::api) use refresh::{read_through_unknown, repository_not_found, sync_error};
use resolve::*;
pub(in crate::api) use resolve::{
    Located, image_selector, locate_reference, resolved_tag_is_immutable, selector_suffix,
};

/// The ImageService implementation.
pub type ImageApi = super::Api;

super::rpc::unary_rpcs! {
    ImageService, ImageApi, state {
        list_images(ListImagesRequest) -> ListImagesResponse = "ListImages", Read, list_images;
        get_image(GetImageRequest) -> Image = "GetImage", Read, get_image;
        resolve_image(ResolveImageRequest) -> ResolveImageResponse = "ResolveImage", Read, resolve_image;
        search_images(SearchImagesRequest) -> SearchImagesResponse = "SearchImages", Read, search_images;
        refresh_inventory(RefreshInventoryRequest) -> RefreshInventoryResponse = "RefreshInventory", Read, refresh_inventory;
        get_sync_status(GetSyncStatusRequest) -> GetSyncStatusResponse = "GetSyncStatus", Read, get_sync_status;
        promote_image(PromoteImageRequest) -> PromoteImageResponse = "PromoteImage", Write, super::promote::promote_image;
    }
    type WatchImagesStream = watch::WatchStream;
    async fn watch_images(
        &self,
        request: tonic::Request<pb::WatchImagesRequest>,
    ) -> Result<tonic::Response<watch::WatchStream>, tonic::Status> {
        let state = &self.state;
        super::rpc::unary(&state.audit, request, "WatchImages", super::rpc::Kind::Read, async |call, request| {
            watch::watch_images(state, call, request).await
        })
        .await
    }
}

fn image_not_found(registry: &RegistryRef, repository: &RepositoryName, what: &str) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.image",
        resource_name: format!("{}/{}{}", registry.alias, repository, what),
        description: format!(
            "no image {what} in `{repository}` of registry `{}` as of the last sync; \
             if it was pushed just now, ask again with consistency CONSISTENCY_STRONG or call RefreshInventory",
            registry.alias
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutability_follows_ecr_exclusion_semantics() {
        let filters = json!(["latest", "dev-*"]);
        assert!(tag_is_immutable(Some("IMMUTABLE"), &filters, "latest"));
        assert!(tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "v1.2.3"
        ));
        assert!(!tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "latest"
        ));
        assert!(!tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "dev-42"
        ));
        assert!(tag_is_immutable(
            Some("MUTABLE_WITH_EXCLUSION"),
            &filters,
            "dev-42"
        ));
        assert!(!tag_is_immutable(Some("MUTABLE"), &filters, "v1"));
        assert!(!tag_is_immutable(None, &filters, "v1"));
    }

    fn resolved(
        mutability: &str,
        row_synced_at: DateTime<Utc>,
        settings_synced_at: Option<DateTime<Utc>>,
    ) -> ResolvedTag {
        ResolvedTag {
            digest: "sha256:0".into(),
            last_synced_at: Some(row_synced_at),
            row_synced_at,
            tag_mutability: Some(mutability.into()),
            exclusion_filters: json!([]),
            settings_synced_at,
        }
    }

    #[test]
    fn a_tag_is_immutable_only_on_settings_no_older_than_its_image_row() {
        let row = Utc::now();
        let second = chrono::Duration::seconds(1);
        assert!(resolved_tag_is_immutable(
            &resolved("IMMUTABLE", row, Some(row)),
            "v1"
        ));
        assert!(resolved_tag_is_immutable(
            &resolved("IMMUTABLE", row, Some(row + second)),
            "v1"
        ));
        assert!(
            !resolved_tag_is_immutable(&resolved("IMMUTABLE", row, Some(row - second)), "v1"),
            "settings read before the image facts may predate a switch to MUTABLE"
        );
        assert!(
            !resolved_tag_is_immutable(&resolved("IMMUTABLE", row, None), "v1"),
            "settings of unknown age fail closed"
        );
        assert!(!resolved_tag_is_immutable(
            &resolved("MUTABLE", row, Some(row + second)),
            "v1"
        ));
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(crate::domain::TagPattern::text_matches("dev-*", "dev-"));
        assert!(crate::domain::TagPattern::text_matches("*-rc*", "v1-rc2"));
        assert!(!crate::domain::TagPattern::text_matches("dev-*", "prod-1"));
        assert!(!crate::domain::TagPattern::text_matches("a*a", "a"));
    }
}
