//! The encryption rule: every repository gets the configured encryption.

use std::sync::LazyLock;

use regex::Regex;

use crate::config::{EncryptionConfig, EncryptionType};
use crate::domain::{Encryption, Violation};

/// A KMS key ARN in any partition: what ECR reports back for a repository.
static KMS_KEY_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$").expect("literal regex")
});

/// The configured encryption, or config problems naming their keys.
pub(super) fn compile(config: &EncryptionConfig) -> Result<Encryption, Vec<String>> {
    let key = config.kms_key.as_deref();
    let problem = match (config.encryption_type, key) {
        (EncryptionType::Aes256, None) => None,
        (EncryptionType::Aes256, Some(_)) => Some(
            "policy.settings.encryption.kms_key: set, but type is AES256; remove it or set type = \"KMS\""
                .to_owned(),
        ),
        (EncryptionType::Kms, None) => Some(
            "policy.settings.encryption.kms_key: required when type = \"KMS\"; give the key's ARN".to_owned(),
        ),
        (EncryptionType::Kms, Some(key)) if KMS_KEY_ARN.is_match(key) => None,
        (EncryptionType::Kms, Some(key)) => Some(format!(
            "policy.settings.encryption.kms_key: `{key}` is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>); \
             ECR reports keys by ARN, so aliases and bare ids cannot be compared"
        )),
    };
    match problem {
        None => Ok(config.to_encryption()),
        Some(problem) => Err(vec![problem]),
    }
}

/// `settings.encryption`: the configured encryption, unless the request asks for another.
///
/// A request for KMS without a key is taken as asking for the configured key.
pub(super) fn plan(configured: &Encryption, requested: Option<&Encryption>) -> Result<Encryption, Violation> {
    let agrees = match (requested, configured) {
        (None, _) | (Some(Encryption::Aes256), Encryption::Aes256) => true,
        (Some(Encryption::Kms { key: None }), Encryption::Kms { .. }) => true,
        (Some(Encryption::Kms { key: Some(asked) }), Encryption::Kms { key: Some(required) }) => {
            same_key(asked, required)
        }
        _ => false,
    };
    match agrees {
        true => Ok(configured.clone()),
        false => Err(Violation::new(
            "settings.encryption",
            "settings.encryption",
            format!(
                "{} was requested, but every repository uses {configured}; leave encryption unset",
                requested.map(ToString::to_string).unwrap_or_default()
            ),
        )),
    }
}

/// True when `asked` is the configured key's ARN or its bare key id.
fn same_key(asked: &str, required_arn: &str) -> bool {
    asked == required_arn
        || required_arn
            .rsplit_once("key/")
            .is_some_and(|(_, id)| id == asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn kms(key: Option<&str>) -> Encryption {
        Encryption::Kms {
            key: key.map(str::to_owned),
        }
    }

    #[test]
    fn unset_encryption_gets_the_configured_one() {
        assert_eq!(plan(&kms(Some(KEY)), None), Ok(kms(Some(KEY))));
    }

    #[test]
    fn kms_without_a_key_gets_the_configured_key() {
        assert_eq!(plan(&kms(Some(KEY)), Some(&kms(None))), Ok(kms(Some(KEY))));
    }

    #[test]
    fn the_configured_key_id_is_accepted_for_its_arn() {
        assert!(
            plan(
                &kms(Some(KEY)),
                Some(&kms(Some("1234abcd-12ab-34cd-56ef-1234567890ab")))
            )
            .is_ok()
        );
    }

    #[test]
    fn kms_requested_when_aes256_is_configured_is_rejected() {
        let violation = plan(&Encryption::Aes256, Some(&kms(Some(KEY)))).expect_err("rejected");

        assert_eq!(violation.rule, "settings.encryption");
        assert!(
            violation.description.contains("every repository uses AES256"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn another_kms_key_is_rejected() {
        assert!(
            plan(
                &kms(Some(KEY)),
                Some(&kms(Some("arn:aws:kms:eu-west-1:123456789012:key/other")))
            )
            .is_err()
        );
    }

    #[test]
    fn aes256_requested_when_kms_is_configured_is_rejected() {
        assert!(plan(&kms(Some(KEY)), Some(&Encryption::Aes256)).is_err());
    }

    #[test]
    fn kms_without_a_key_is_a_config_error() {
        let config = EncryptionConfig {
            encryption_type: EncryptionType::Kms,
            kms_key: None,
        };

        assert!(
            compile(&config).expect_err("invalid")[0]
                .starts_with("policy.settings.encryption.kms_key: required")
        );
    }

    #[test]
    fn kms_alias_is_a_config_error() {
        let config = EncryptionConfig {
            encryption_type: EncryptionType::Kms,
            kms_key: Some("alias/ecr".into()),
        };

        assert!(compile(&config).is_err());
    }

    #[test]
    fn aes256_with_a_key_is_a_config_error() {
        let config = EncryptionConfig {
            encryption_type: EncryptionType::Aes256,
            kms_key: Some(KEY.into()),
        };

        assert!(compile(&config).is_err());
    }
}
