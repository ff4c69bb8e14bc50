//! Loading the policy set: the Cedar policy files of a directory or file, the entity data (with an empty namespace entity for every namespace the policies name), each problem naming its config key and file.

use super::*;

pub(super) fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let name = EntityTypeName::from_str(&format!("{NS}::{kind}")).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

pub(super) fn empty_namespace(ns: EntityUid) -> Result<Entity, String> {
    let empty = || RestrictedExpression::new_set(Vec::<RestrictedExpression>::new());
    Entity::new(
        ns,
        HashMap::from([
            ("owners".to_owned(), empty()),
            ("deployers".to_owned(), empty()),
            ("readers".to_owned(), empty()),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())
}

pub(super) fn read_file(key: &str, path: &Path) -> Result<String, String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{key}: {} is {} bytes; the limit is {MAX_FILE_BYTES}",
            path.display(),
            metadata.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// The `.cedar` files `path` names: the file itself, or a directory's files in name order.
pub(super) fn policy_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("authz.policies: cannot read {}: {e}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("authz.policies: cannot list {}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "cedar"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "authz.policies: {} holds no .cedar files; with no policy every call would be denied",
            path.display()
        ));
    }
    Ok(files)
}

/// Parses, names (by `@id`) and validates the policies, and reads the entity data.
pub(super) fn load_files(
    schema: &Schema,
    config: &AuthzConfig,
    registries: &[RegistryRef],
) -> Result<Loaded, Vec<String>> {
    let Some(policy_path) = &config.policies else {
        return Err(vec![
            "authz.policies: not set; name a .cedar file or a directory of them (deploy/policies holds the default)"
                .into(),
        ]);
    };
    let mut problems = Vec::new();
    let mut policies = PolicySet::new();
    let mut seen = HashMap::<String, PathBuf>::new();
    for file in policy_files(policy_path).map_err(|p| vec![p])? {
        let text = match read_file("authz.policies", &file) {
            Ok(text) => text,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let parsed = match PolicySet::from_str(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(
                    format!("authz.policies: {} does not parse: {e:?}", file.display()).replace('\n', " "),
                );
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            problems.push(format!(
                "authz.policies: {} holds a template; only static policies are supported",
                file.display()
            ));
        }
        for (index, policy) in parsed.policies().enumerate() {
            let Some(id) = policy.annotation("id").map(str::to_owned) else {
                problems.push(format!(
                    "authz.policies: policy {} of {} has no @id(\"…\") annotation; audit events name policies by it",
                    index + 1,
                    file.display()
                ));
                continue;
            };
            if let Some(previous) = seen.insert(id.clone(), file.clone()) {
                problems.push(format!(
                    "authz.policies: @id(\"{id}\") is used twice ({} and {}); ids must be unique",
                    previous.display(),
                    file.display()
                ));
                continue;
            }
            if let Err(e) = policies.add(policy.new_id(PolicyId::new(id.clone()))) {
                problems.push(format!("authz.policies: policy {id}: {e}"));
            }
        }
    }
    let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    for error in validation.validation_errors() {
        problems.push(format!("authz.policies: does not match the schema: {error}"));
    }
    let (base, memberships, namespaces) = match load_entities(schema, config, registries) {
        Ok(loaded) => loaded,
        Err(problem) => {
            problems.push(problem);
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Loaded {
        policies,
        base,
        memberships,
        namespaces,
        decisions: std::sync::Mutex::new(HashMap::new()),
    })
}

/// The entity data file, split into what every request shares and the
/// principals' memberships (a principal entity is built per call).
pub(super) fn load_entities(
    schema: &Schema,
    config: &AuthzConfig,
    registries: &[RegistryRef],
) -> Result<EntityData, String> {
    let text = match &config.entities {
        Some(path) => read_file("authz.entities", path)?,
        None => "[]".to_owned(),
    };
    let parsed = Entities::from_json_str(&text, Some(schema)).map_err(|e| {
        format!(
            "authz.entities: {} does not match the schema: {e}",
            config.entities.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    let mut shared = Vec::new();
    let mut memberships = HashMap::new();
    let mut namespaces = BTreeSet::new();
    for entity in parsed.iter() {
        let kind = entity.uid().type_name().basename().to_owned();
        match kind.as_str() {
            "User" | "Service" => {
                let parents: HashSet<EntityUid> = entity.clone().into_inner().2;
                memberships.insert(entity.uid(), parents);
            }
            "Registry" => {
                return Err(format!(
                    "authz.entities: registries come from [[registries]], not the entity data; remove {}",
                    entity.uid()
                ));
            }
            "Action" => {}
            "Repository" => {
                return Err(format!(
                    "authz.entities: repositories come from the inventory, not the entity data; remove {}",
                    entity.uid()
                ));
            }
            _ => {
                if kind == "Namespace" {
                    namespaces.insert(entity.uid().id().unescaped().to_owned());
                }
                shared.push(entity.clone());
            }
        }
    }
    for registry in registries {
        shared.push(
            Entity::new(
                uid("Registry", &registry.alias)?,
                HashMap::from([
                    (
                        "account".to_owned(),
                        RestrictedExpression::new_string(registry.account_id.clone()),
                    ),
                    (
                        "region".to_owned(),
                        RestrictedExpression::new_string(registry.region.clone()),
                    ),
                ]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?,
        );
    }
    let actions = schema.action_entities().map_err(|e| e.to_string())?;
    let base = Entities::from_entities(shared, Some(schema))
        .map_err(|e| format!("authz.entities: {e}"))?
        .upsert_entities(actions.iter().cloned(), None)
        .map_err(|e| format!("authz.entities: {e}"))?;
    Ok((base, memberships, namespaces))
}
