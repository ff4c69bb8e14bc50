//! Domain types that can only exist when valid: parse, don't validate.
//!
//! Each `parse` returns a [`Violation`] naming the field, a stable rule id and
//! how to fix the input. `audit` and `repository` hold plain records built
//! from these types.

mod account_id;
mod audit;
mod changes;
mod compliance;
mod digest;
pub mod events;
mod image;
mod image_ref;
mod image_tag;
mod manifest;
mod repository;
mod repository_name;
mod repository_settings;
mod scan;
mod tag_pattern;
mod templates;
mod violation;

pub use account_id::AccountId;
pub use audit::*;
pub use changes::{ChangeFilter, ChangeKind, InventoryChange, ScanCounts};
pub use compliance::{PolicyFinding, SettingChange, policy_changes, same_document, setting_changes};
pub use digest::Digest;
pub use image::ImageRecord;
pub use image_ref::{EcrHost, ImageRef, ImageSelector, pinned_uri};
pub use image_tag::ImageTag;
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind, Platform, digest_of};
pub use repository::*;
pub use repository_name::RepositoryName;
pub use repository_settings::{Encryption, TagMutability};
pub use scan::{Frequency, ScanFinding, ScanReport, Severity};
pub use tag_pattern::{InvalidTagPattern, TagPattern};
pub use templates::{APPLIED_FOR, CreationTemplate, PullThroughRule};
pub use violation::Violation;
