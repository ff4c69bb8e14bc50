//! What a vulnerability scan reports (an image's scan as ECR reports it, its
//! findings and their severities) and the scanning frequencies of a
//! registry's scanning configuration.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A finding's severity, least to most severe; `Undefined` is not ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// INFORMATIONAL.
    Informational,
    /// LOW.
    Low,
    /// MEDIUM.
    Medium,
    /// HIGH.
    High,
    /// CRITICAL.
    Critical,
    /// UNDEFINED / UNTRIAGED.
    Undefined,
}

impl Severity {
    /// Every severity.
    pub const ALL: [Severity; 6] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
        Severity::Undefined,
    ];

    /// ECR's name (UNTRIAGED, from enhanced scanning, reads as UNDEFINED).
    pub fn from_ecr(name: &str) -> Severity {
        match name.to_ascii_uppercase().as_str() {
            "INFORMATIONAL" => Severity::Informational,
            "LOW" => Severity::Low,
            "MEDIUM" => Severity::Medium,
            "HIGH" => Severity::High,
            "CRITICAL" => Severity::Critical,
            _ => Severity::Undefined,
        }
    }

    /// ECR's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "INFORMATIONAL",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
            Severity::Undefined => "UNDEFINED",
        }
    }

    /// The stored number (the proto's enum value).
    pub fn code(self) -> i16 {
        match self {
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
            Severity::Undefined => 6,
        }
    }

    /// From the stored number.
    pub fn from_code(code: i16) -> Severity {
        match code {
            1 => Severity::Informational,
            2 => Severity::Low,
            3 => Severity::Medium,
            4 => Severity::High,
            5 => Severity::Critical,
            _ => Severity::Undefined,
        }
    }

    /// The stored codes at or above `self` (`Undefined` matches only itself).
    pub fn codes_at_or_above(self) -> Vec<i16> {
        match self {
            Severity::Undefined => vec![6],
            ranked => Severity::ALL
                .iter()
                .filter(|s| **s != Severity::Undefined && **s >= ranked)
                .map(|s| s.code())
                .collect(),
        }
    }
}

/// How often a scanning rule scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    /// On push.
    ScanOnPush,
    /// Continuously (enhanced).
    Continuous,
    /// Manual only.
    Manual,
}

/// One finding, basic or enhanced.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanFinding {
    /// The vulnerability id (CVE-…).
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Description.
    pub description: Option<String>,
    /// Where to read about it.
    pub uri: Option<String>,
    /// Affected package.
    pub package_name: Option<String>,
    /// Its version.
    pub package_version: Option<String>,
    /// The fixing version (enhanced).
    pub fixed_in_version: Option<String>,
    /// Score (CVSS).
    pub score: Option<f64>,
}

/// An image's scan as ECR reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanReport {
    /// The image's digest.
    pub digest: String,
    /// ECR's status, or NOT_SCANNED.
    pub status: String,
    /// ECR's description.
    pub description: Option<String>,
    /// When the scan completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the vulnerability source was updated.
    pub vulnerability_source_updated_at: Option<DateTime<Utc>>,
    /// Counts by severity, as ECR reports them.
    pub counts: Vec<(Severity, i32)>,
    /// Every finding.
    pub findings: Vec<ScanFinding>,
}
