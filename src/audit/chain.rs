//! The audit trail's CloudTrail-shaped JSON form and its hash chain.
//!
//! Each finalised event gets a link: `hash = SHA-256(previous hash ‖
//! canonical JSON of the event)`, where the canonical JSON has object keys
//! sorted and no insignificant whitespace. An export is one JSON object per
//! line: the event with a `chain` member (`sequence`, `previousHash`,
//! `hash`, hex). [`verify`] walks such a sequence and names the first event
//! that was modified, removed, inserted or reordered.
//!
//! The parts, each in a file of its own: `cloudtrail.rs`, the JSON form and
//! the export lines; `canonical.rs`, the canonical serialisation, the link
//! hash and [`LINKER`]; `verification.rs`, the walk of a chain and the
//! checks against the signed digests.

mod canonical;
mod cloudtrail;
mod verification;

pub use canonical::{LINKER, canonical, canonical_record, canonical_row, link, link_bytes};
pub use cloudtrail::{EVENT_VERSION, cloudtrail_json, export_json, write_export};
pub use verification::{DigestCheck, Link, Problem, Verification, check_digests, settle_contest, verify};

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
