//! `ecrgateway.v1.CleanupService`: deploy systems pin what runs, and nothing
//! pinned or protected by the org policy is deleted through the gateway.
//! Pins, DeleteImages, lifecycle policies and previews are here; cleanup
//! runs are in [`super::cleanup_runs`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde_json::{Value, json};

use super::call::Call;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, OrRecord as _, Precondition, invalid};
use super::image::image_selector;
use super::mutation::{self, Attempt, CacheChange, Done, check_request_id};
use super::page_token::{self, next_token};
use super::{AppState, repository_filter};
use crate::cleanup::plan::{self, Floors, Preview, Verdict};
use crate::domain::{Digest, ImageSelector, ImageTag, RegistryRef, RepositoryName, Violation};
use crate::ecr::{CallLog, DeleteOutcome, Registry};
use crate::pb;
use crate::pb::cleanup_service_server::CleanupService;
use crate::policy::lifecycle_model::{LifecyclePolicy, RuleAction};
use crate::policy::protection;
use crate::store::pins::{self, PinFilter, PinRow};
use crate::store::{Store, image_reads, repositories, sync};

mod delete;
mod lifecycle;
mod pinning;
mod runs;

use delete::*;
use lifecycle::*;
pub(in crate::api) use lifecycle::{action_message, no_lifecycle_policy, repository_not_found};
pub(in crate::api) use pinning::refuse_pinned;
use pinning::*;

/// Longest pin reason.
const MAX_REASON: usize = 2048;
/// Most tags and digests in one DeleteImages.
const MAX_DELETE: usize = 100;

/// The CleanupService implementation.
pub type CleanupApi = super::Api;

super::rpc::unary_rpcs! {
    CleanupService, CleanupApi, state {
        delete_images(DeleteImagesRequest) -> DeleteImagesResponse = "DeleteImages", Write, delete_images;
        pin_image(PinImageRequest) -> Pin = "PinImage", Write, pin_image;
        unpin_image(UnpinImageRequest) -> UnpinImageResponse = "UnpinImage", Write, unpin_image;
        list_pins(ListPinsRequest) -> ListPinsResponse = "ListPins", Read, list_pins;
        get_lifecycle_policy(GetLifecyclePolicyRequest) -> LifecyclePolicy = "GetLifecyclePolicy", Read, get_lifecycle_policy;
        set_lifecycle_policy(SetLifecyclePolicyRequest) -> SetLifecyclePolicyResponse = "SetLifecyclePolicy", Write, set_lifecycle_policy;
        delete_lifecycle_policy(DeleteLifecyclePolicyRequest) -> DeleteLifecyclePolicyResponse = "DeleteLifecyclePolicy", Write, delete_lifecycle_policy;
        preview_cleanup(PreviewCleanupRequest) -> PreviewCleanupResponse = "PreviewCleanup", Read, preview_cleanup;
        run_cleanup(RunCleanupRequest) -> CleanupRun = "RunCleanup", Write, runs::run_cleanup;
        get_cleanup_run(GetCleanupRunRequest) -> GetCleanupRunResponse = "GetCleanupRun", Read, runs::get_cleanup_run;
        list_cleanup_runs(ListCleanupRunsRequest) -> ListCleanupRunsResponse = "ListCleanupRuns", Read, runs::list_cleanup_runs;
        cancel_cleanup_run(CancelCleanupRunRequest) -> CleanupRun = "CancelCleanupRun", Write, runs::cancel_cleanup_run;
    }
}
