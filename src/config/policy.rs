//! The `[policy]` section of the configuration, as written in TOML.
//!
//! These structs only hold what the operator wrote; `policy::OrgPolicy::compile`
//! checks them and builds what the rules need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Encryption, Severity, TagMutability};

/// [policy] section of the configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrgPolicyConfig {
    /// `[policy.naming]`: how repositories are named.
    pub naming: NamingConfig,
    /// `[policy.tags]`: resource tags every repository carries.
    pub tags: TagConfig,
    /// `[policy.settings]`: mutability, scanning, encryption, lifecycle.
    pub settings: SettingsConfig,
    /// `[policy.repository_policy]`: who a repository policy may grant access to.
    pub repository_policy: RepositoryPolicyConfig,
    /// `[policy.deploy]`: the deploy gate's environments and vulnerability exceptions.
    pub deploy: DeployConfig,
    /// `[policy.cleanup]`: tags that deletion through the gateway never touches.
    pub cleanup: CleanupConfig,
}

/// `[policy.naming]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NamingConfig {
    /// Team namespaces allowed as the first path segment. Empty = any first segment.
    pub namespaces: Vec<String>,
    /// Regex the rest of the name (after `namespace/`) must match; it must match the
    /// whole rest (the gateway anchors it as `^(?:pattern)$`).
    pub pattern: String,
    /// Max number of path segments including the namespace (at least 2). Default 4.
    pub max_depth: usize,
    /// Names no path segment may be. Default `["aws"]`: such names read as owned by
    /// AWS (and AWS services create `aws/...` repositories); add your own, e.g. `admin`.
    pub reserved: Vec<String>,
}

/// The default `policy.naming.pattern`: exactly what ECR's grammar allows after the
/// namespace (lowercase words joined by `.`, `_`, `__` or runs of `-`, in segments), so
/// that no name ECR accepts is refused by default; an org that wants fewer separators
/// sets its own pattern (docs/configuration.md shows one).
pub const DEFAULT_NAMING_PATTERN: &str =
    "^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$";

impl Default for NamingConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            pattern: DEFAULT_NAMING_PATTERN.to_owned(),
            max_depth: 4,
            reserved: vec!["aws".to_owned()],
        }
    }
}

/// `[policy.tags]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TagConfig {
    /// Resource tag keys every repository must carry, with a non-blank value
    /// (checked after defaults are added). Default: none.
    pub required: Vec<String>,
    /// Allowed values per key: `env = { values = ["dev", "prod"] }` or
    /// `cost-center = { pattern = "^cc-[0-9]{4}$" }` (anchored like the naming pattern).
    pub allowed: BTreeMap<String, AllowedValues>,
    /// Tags the gateway adds when a request lacks them; a request may give a key here
    /// another value (defaults are fallbacks, not pins: pin a value with `allowed`).
    /// Default: `managed-by = "ecr-gateway"`.
    pub defaults: BTreeMap<String, String>,
}

impl Default for TagConfig {
    fn default() -> Self {
        Self {
            required: Vec::new(),
            allowed: BTreeMap::new(),
            defaults: BTreeMap::from([("managed-by".to_owned(), "ecr-gateway".to_owned())]),
        }
    }
}

/// The values one tag key may take: a list or a regex.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "AllowedValuesToml", into = "AllowedValuesToml")]
pub enum AllowedValues {
    /// Exactly one of these values.
    Values {
        /// The allowed values.
        values: Vec<String>,
    },
    /// A value matching this regex.
    Pattern {
        /// The regex, as configured.
        pattern: String,
    },
}

/// How [`AllowedValues`] is written: exactly one of the two keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AllowedValuesToml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
}

impl TryFrom<AllowedValuesToml> for AllowedValues {
    type Error = &'static str;

    fn try_from(raw: AllowedValuesToml) -> Result<Self, Self::Error> {
        match (raw.values, raw.pattern) {
            (Some(values), None) => Ok(AllowedValues::Values { values }),
            (None, Some(pattern)) => Ok(AllowedValues::Pattern { pattern }),
            _ => Err("give exactly one of `values = [..]` or `pattern = \"..\"`"),
        }
    }
}

impl From<AllowedValues> for AllowedValuesToml {
    fn from(allowed: AllowedValues) -> Self {
        match allowed {
            AllowedValues::Values { values } => Self {
                values: Some(values),
                pattern: None,
            },
            AllowedValues::Pattern { pattern } => Self {
                values: None,
                pattern: Some(pattern),
            },
        }
    }
}

/// `[policy.settings]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SettingsConfig {
    /// Tag mutabilities a repository may have (at least one);
    /// default `["IMMUTABLE", "IMMUTABLE_WITH_EXCLUSION"]`.
    pub allowed_tag_mutability: Vec<TagMutability>,
    /// Used when the request leaves mutability unset; must be allowed. Default `IMMUTABLE`.
    pub default_tag_mutability: TagMutability,
    /// Exclusion filters a request may use (exact strings, e.g. `["latest", "dev-*"]`).
    /// Empty = any filter that passes ECR's grammar.
    pub allowed_exclusion_filters: Vec<String>,
    /// At most this many exclusion filters (ECR's own maximum is 5). Default 5.
    pub max_exclusion_filters: usize,
    /// Scan on push required; default true. An unset request field becomes true
    /// when required, else false.
    pub require_scan_on_push: bool,
    /// `[policy.settings.encryption]`: the encryption every repository gets.
    pub encryption: EncryptionConfig,
    /// `[policy.settings.lifecycle_templates]`: lifecycle policy used when a request gives none.
    pub lifecycle_templates: LifecycleTemplates,
}

impl Default for SettingsConfig {
    fn default() -> Self {
        Self {
            allowed_tag_mutability: vec![TagMutability::Immutable, TagMutability::ImmutableWithExclusion],
            default_tag_mutability: TagMutability::Immutable,
            allowed_exclusion_filters: Vec::new(),
            max_exclusion_filters: 5,
            require_scan_on_push: true,
            encryption: EncryptionConfig::default(),
            lifecycle_templates: LifecycleTemplates::default(),
        }
    }
}

/// `[policy.settings.encryption]`: `type = "AES256"`, or `type = "KMS"` with `kms_key`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// `AES256` (default) or `KMS`.
    #[serde(rename = "type")]
    pub encryption_type: EncryptionType,
    /// The KMS key's full ARN (`arn:aws:kms:<region>:<account>:key/<id>`), required for
    /// KMS: ECR reports the key by ARN, so an alias could never be compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

impl EncryptionConfig {
    /// The encryption this configuration gives a repository.
    pub fn to_encryption(&self) -> Encryption {
        match self.encryption_type {
            EncryptionType::Aes256 => Encryption::Aes256,
            EncryptionType::Kms => Encryption::Kms {
                key: self.kms_key.clone(),
            },
        }
    }
}

/// ECR's encryption types, spelled as ECR spells them.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum EncryptionType {
    /// Amazon S3-managed keys.
    #[default]
    #[serde(rename = "AES256")]
    Aes256,
    /// A customer-managed KMS key.
    #[serde(rename = "KMS")]
    Kms,
}

/// `[policy.settings.lifecycle_templates]`: lifecycle policy JSON per namespace, else org-wide.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleTemplates {
    /// Used for any namespace without its own template. Default: none (no lifecycle policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Per team namespace; beats `default`.
    pub namespaces: BTreeMap<String, String>,
}

impl LifecycleTemplates {
    /// The template for repositories in `namespace`, if any.
    pub fn for_namespace(&self, namespace: &str) -> Option<&str> {
        self.namespaces
            .get(namespace)
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

/// `[policy.repository_policy]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryPolicyConfig {
    /// Refuse `Allow` statements whose Principal is `"*"` or `{"AWS": "*"}` (also inside lists). Default true.
    pub forbid_wildcard_principal: bool,
    /// AWS account ids (12 digits) that may appear as principals besides the registry's own account.
    pub allowed_accounts: Vec<String>,
}

impl Default for RepositoryPolicyConfig {
    fn default() -> Self {
        Self {
            forbid_wildcard_principal: true,
            allowed_accounts: Vec::new(),
        }
    }
}

/// `[policy.deploy]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// The environments CheckDeployment knows, by name.
    pub environments: BTreeMap<String, EnvironmentRules>,
    /// How far ahead a vulnerability exception may expire, in days. Default 90.
    pub max_exception_days: u32,
}

impl Default for DeployConfig {
    fn default() -> Self {
        let rules = |deny: &[Severity], require_scan: bool, max_scan_age_days: u32| EnvironmentRules {
            deny_severities: deny.to_vec(),
            require_scan,
            max_scan_age_days,
            max_image_age_days: 0,
        };
        Self {
            environments: BTreeMap::from([
                (
                    "prod".to_owned(),
                    rules(&[Severity::Critical, Severity::High], true, 30),
                ),
                (
                    "staging".to_owned(),
                    rules(&[Severity::Critical, Severity::High], true, 0),
                ),
                ("dev".to_owned(), rules(&[Severity::Critical], false, 0)),
            ]),
            max_exception_days: 90,
        }
    }
}

/// `[policy.deploy.environments.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentRules {
    /// Findings of these severities block a deploy (unless an exception covers them).
    pub deny_severities: Vec<Severity>,
    /// An image with no completed scan is denied.
    pub require_scan: bool,
    /// A scan older than this many days is denied as stale; 0: no limit.
    pub max_scan_age_days: u32,
    /// An image pushed more than this many days ago is denied; 0: no limit.
    pub max_image_age_days: u32,
}

impl Default for EnvironmentRules {
    fn default() -> Self {
        Self {
            deny_severities: vec![Severity::Critical],
            require_scan: true,
            max_scan_age_days: 0,
            max_image_age_days: 0,
        }
    }
}

/// `[policy.cleanup]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Tag patterns (`*` wildcards) protected in every repository, e.g. `["release-*"]`.
    pub protected_tags: Vec<String>,
    /// Retention floors everywhere: a lifecycle policy may not expire any of
    /// the `count` newest images with a tag matching `tags`.
    pub keep_newest: Vec<RetentionFloor>,
    /// More protected patterns and floors per namespace: `[policy.cleanup.namespaces.payments]`.
    pub namespaces: BTreeMap<String, NamespaceCleanup>,
}

/// `keep_newest = [{ tags = "v*", count = 10 }]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionFloor {
    /// A tag pattern (`*` wildcards).
    pub tags: String,
    /// How many of the newest matching images must be kept (at least 1).
    pub count: u32,
}

/// `[policy.cleanup.namespaces.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceCleanup {
    /// Tag patterns protected in this namespace's repositories, e.g. `["v*"]`.
    pub protected_tags: Vec<String>,
    /// Retention floors in this namespace, e.g. `[{ tags = "v*", count = 10 }]`.
    pub keep_newest: Vec<RetentionFloor>,
}
