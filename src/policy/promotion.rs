//! PromoteImage's rules, decided from ECR's state without I/O: what putting
//! an image's manifest under a tag does, and how each refusal is explained.

/// What tagging the image under the target tag does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The tag already names the image: nothing to change (idempotent).
    Unchanged,
    /// PutImage: the tag is new, or moves from `previous` (a mutable tag).
    Tag {
        /// The image the tag named before.
        previous: Option<String>,
    },
}

/// Why a promotion cannot happen; each names the ECR state and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The target tag is immutable and names another image.
    TagImmutable {
        /// `<repository>:<tag>`.
        target: String,
        /// The image the tag names.
        holder: String,
    },
    /// The target repository lacks layers of the image (ECR keeps layers per repository).
    LayersMissing {
        /// The target repository.
        repository: String,
        /// ECR's message.
        detail: String,
    },
    /// The image is an index whose child manifests are not in the target repository.
    ReferencesMissing {
        /// The target repository.
        repository: String,
        /// ECR's message.
        detail: String,
    },
}

/// The step for image `source` under `target` (`<repository>:<tag>`), a tag
/// that now names `current` (None: an unused tag); `immutable` says whether
/// the tag may not move.
pub fn plan(target: &str, source: &str, current: Option<&str>, immutable: bool) -> Result<Step, Refusal> {
    match current {
        Some(current) if current == source => Ok(Step::Unchanged),
        Some(holder) if immutable => Err(Refusal::TagImmutable {
            target: target.to_owned(),
            holder: holder.to_owned(),
        }),
        previous => Ok(Step::Tag {
            previous: previous.map(str::to_owned),
        }),
    }
}

impl Refusal {
    /// The `PreconditionFailure` type, e.g. `TAG_IMMUTABLE`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::TagImmutable { .. } => "TAG_IMMUTABLE",
            Refusal::LayersMissing { .. } => "LAYERS_NOT_IN_TARGET",
            Refusal::ReferencesMissing { .. } => "INDEX_CHILDREN_NOT_IN_TARGET",
        }
    }

    /// What is wrong and what to do about it.
    pub fn describe(&self) -> String {
        match self {
            Refusal::TagImmutable { target, holder } => format!(
                "`{target}` is an immutable tag and already names {holder}; ECR never moves an immutable tag. \
                 Promote under a new tag (e.g. a version or the build number), or ask the repository's owners \
                 to add an exclusion filter for tags like this one"
            ),
            Refusal::LayersMissing { repository, detail } => format!(
                "`{repository}` does not hold this image's layers, and PutImage copies only the manifest (ECR keeps \
                 layers per repository; ECR said: {detail}). Push the image to `{repository}` once (docker push, \
                 or crane copy), then promote tags within it"
            ),
            Refusal::ReferencesMissing { repository, detail } => format!(
                "the image is an index whose platform images are not in `{repository}` (ECR said: {detail}); push \
                 the index to `{repository}` once (docker buildx imagetools create, or crane copy), then promote \
                 tags within it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_already_on_the_image_is_unchanged_whatever_its_mutability() {
        assert_eq!(
            plan("api:v1", "sha256:a", Some("sha256:a"), true),
            Ok(Step::Unchanged)
        );
        assert_eq!(
            plan("api:v1", "sha256:a", Some("sha256:a"), false),
            Ok(Step::Unchanged)
        );
    }

    #[test]
    fn a_new_tag_is_put_and_a_mutable_one_moves() {
        assert_eq!(
            plan("api:v1", "sha256:a", None, true),
            Ok(Step::Tag { previous: None })
        );
        assert_eq!(
            plan("api:v1", "sha256:a", Some("sha256:b"), false),
            Ok(Step::Tag {
                previous: Some("sha256:b".into())
            })
        );
    }

    #[test]
    fn an_immutable_tag_on_another_image_is_refused_naming_it() {
        let refusal = plan("api:v1", "sha256:a", Some("sha256:b"), true).unwrap_err();
        assert_eq!(refusal.kind(), "TAG_IMMUTABLE");
        assert!(refusal.describe().contains("sha256:b"), "{}", refusal.describe());
        assert!(refusal.describe().contains("`api:v1`"), "{}", refusal.describe());
    }

    #[test]
    fn missing_layers_say_what_to_do() {
        let refusal = Refusal::LayersMissing {
            repository: "payments/api-prod".into(),
            detail: "Layers not found".into(),
        };
        assert_eq!(refusal.kind(), "LAYERS_NOT_IN_TARGET");
        let text = refusal.describe();
        assert!(
            text.contains("payments/api-prod") && text.contains("docker push"),
            "{text}"
        );
    }
}
