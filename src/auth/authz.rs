//! Authorization as policy code: every RPC asks [`Authorizer`] before it acts.
//!
//! The model ([`SCHEMA`], Cedar's schema language) has principals (`User`,
//! `Service`, in `Group`s), one action per RPC (named as the RPC, grouped as
//! `read`, `write`, `deploy` and `admin`) and resources (`Registry`,
//! `Namespace`, `Repository` with its tags). Policies and entity data load
//! from the files `[authz]` names, are validated against the schema at start,
//! and are replaced atomically by [`Authorizer::reload`] (SIGHUP); a broken
//! reload keeps the policy in force and says why. Anything no policy permits
//! is denied, and a request the schema does not allow (an RPC wired to the
//! wrong resource type) is denied too.
//!
//! List and search RPCs ask per namespace ([`Authorizer::scope`]): a caller
//! allowed on the registry sees everything, anyone else only the namespaces
//! the policies let them read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer as Engine, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde_json::{Value, json};

use crate::config::AuthzConfig;
use crate::domain::{Identity, RegistryRef};

#[path = "authz_load.rs"]
mod load;
use load::*;

/// The gateway's authorization schema.
pub const SCHEMA: &str = include_str!("schema.cedarschema");
/// The Cedar namespace of every entity type and action.
const NS: &str = "EcrGateway";
/// Longest policy or entity file read, in bytes.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What a call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A whole registry.
    Registry(RegistryRef),
    /// Every repository whose name starts with `namespace/` in a registry.
    Namespace {
        /// The registry.
        registry: RegistryRef,
        /// The namespace (the first segment of repository names).
        namespace: String,
    },
    /// One repository.
    Repository {
        /// The registry.
        registry: RegistryRef,
        /// The repository name.
        name: String,
        /// Its tags, as far as the call knows them.
        tags: BTreeMap<String, String>,
    },
}

impl Resource {
    /// A repository whose tags the call does not know.
    pub fn repository(registry: &RegistryRef, name: &str) -> Resource {
        Resource::Repository {
            registry: registry.clone(),
            name: name.to_owned(),
            tags: BTreeMap::new(),
        }
    }

    /// How errors and audit events name it, e.g. `repository main/payments/api`.
    pub fn describe(&self) -> String {
        match self {
            Resource::Registry(registry) => format!("registry {}", registry.alias),
            Resource::Namespace { registry, namespace } => {
                format!("namespace {}/{namespace}", registry.alias)
            }
            Resource::Repository { registry, name, .. } => format!("repository {}/{name}", registry.alias),
        }
    }
}

/// The namespace of a repository name: its first segment.
pub fn namespace_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or_default()
}

/// One authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True when a policy permits the call and none forbids it.
    pub allowed: bool,
    /// The ids of the policies that decided (permits when allowed, forbids when denied).
    pub policies: Vec<String>,
}

/// Which repositories a list call may show, by registry alias.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    by_registry: BTreeMap<String, Access>,
    policies: BTreeSet<String>,
}

/// A caller's read access to one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every repository.
    All,
    /// The repositories in these namespaces.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// True when `repository` of registry `alias` may be shown.
    pub fn allows(&self, alias: &str, repository: &str) -> bool {
        match self.by_registry.get(alias) {
            Some(Access::All) => true,
            Some(Access::Namespaces(set)) => set.contains(namespace_of(repository)),
            None => false,
        }
    }

    /// True when everything in registry `alias` may be shown.
    pub fn allows_all(&self, alias: &str) -> bool {
        matches!(self.by_registry.get(alias), Some(Access::All))
    }

    /// True when every registry is visible in full.
    pub fn unrestricted(&self) -> bool {
        self.by_registry.values().all(|a| *a == Access::All)
    }

    /// The access to registry `alias`.
    pub fn access(&self, alias: &str) -> Option<&Access> {
        self.by_registry.get(alias)
    }

    /// The audit form: `{"decision":"allow","scope":{"main":"all"|[namespaces]},"policies":[…]}`.
    pub fn audit_json(&self) -> Value {
        let scope: serde_json::Map<String, Value> = self
            .by_registry
            .iter()
            .map(|(alias, access)| {
                let value = match access {
                    Access::All => json!("all"),
                    Access::Namespaces(set) => json!(set),
                };
                (alias.clone(), value)
            })
            .collect();
        json!({"decision": "allow", "scope": scope, "policies": self.policies})
    }
}

/// The policies and entity data in force.
struct Loaded {
    policies: PolicySet,
    /// Groups, namespaces, registries and the actions: what every request shares.
    base: Entities,
    /// The groups the entity data puts each `User` / `Service` in.
    memberships: HashMap<EntityUid, HashSet<EntityUid>>,
    /// Namespaces the entity data describes.
    namespaces: BTreeSet<String>,
    /// Decisions already made under this policy set. A decision is a pure
    /// function of the request and the loaded files, so it stays true until
    /// a reload replaces this whole struct (and with it the cache).
    decisions: std::sync::Mutex<HashMap<String, Decision>>,
}

/// Most decisions remembered per policy set (then the cache starts over).
const CACHED_DECISIONS: usize = 10_000;

/// What a load read, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many policies are in force.
    pub policies: usize,
    /// How many entities the data file holds.
    pub entities: usize,
}

/// Decides calls against the policies in force.
pub struct Authorizer {
    schema: Schema,
    config: AuthzConfig,
    registries: Vec<RegistryRef>,
    /// Namespaces the org policy names (`policy.naming.namespaces`).
    configured_namespaces: BTreeSet<String>,
    engine: Engine,
    loaded: ArcSwap<Loaded>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("config", &self.config)
            .field("registries", &self.registries)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Loads and validates the configured policies and entity data.
    pub fn load(
        config: &AuthzConfig,
        registries: Vec<RegistryRef>,
        namespaces: impl IntoIterator<Item = String>,
    ) -> Result<Authorizer, Vec<String>> {
        let schema = schema()?;
        let loaded = load_files(&schema, config, &registries)?;
        Ok(Authorizer {
            schema,
            config: config.clone(),
            registries,
            configured_namespaces: namespaces.into_iter().collect(),
            engine: Engine::new(),
            loaded: ArcSwap::from_pointee(loaded),
        })
    }

    /// The authorizer a configuration describes: its `[authz]` files, its
    /// registries and the namespaces its naming policy names.
    pub fn for_config(config: &crate::config::Config) -> Result<Authorizer, Vec<String>> {
        let registries = config
            .registries
            .iter()
            .map(|r| RegistryRef {
                alias: r.alias.clone(),
                account_id: r.account_id.clone(),
                region: r.region.clone(),
            })
            .collect();
        Authorizer::load(
            &config.authz,
            registries,
            config.policy.naming.namespaces.iter().cloned(),
        )
    }

    /// Reads the files again; on any problem the policy in force stays and
    /// the problems are returned.
    pub fn reload(&self) -> Result<Summary, Vec<String>> {
        let loaded = load_files(&self.schema, &self.config, &self.registries)?;
        let summary = summary(&loaded);
        self.loaded.store(Arc::new(loaded));
        Ok(summary)
    }

    /// What is in force.
    pub fn summary(&self) -> Summary {
        summary(&self.loaded.load())
    }

    /// Decides whether `identity` may call `action` (the RPC's name) on `resource`.
    pub fn decide(&self, identity: &Identity, action: &str, resource: &Resource) -> Decision {
        let loaded = self.loaded.load();
        self.decide_with(&loaded, identity, action, resource)
    }

    fn decide_with(
        &self,
        loaded: &Loaded,
        identity: &Identity,
        action: &str,
        resource: &Resource,
    ) -> Decision {
        let key = cache_key(identity, action, resource);
        if let Some(hit) = loaded
            .decisions
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).cloned())
        {
            return hit;
        }
        match self.evaluate(loaded, identity, action, resource) {
            Ok(decision) => {
                if let Ok(mut cache) = loaded.decisions.lock() {
                    if cache.len() >= CACHED_DECISIONS {
                        cache.clear();
                    }
                    cache.insert(key, decision.clone());
                }
                decision
            }
            Err(problem) => {
                tracing::error!(action, resource = %resource.describe(), %problem, "authorization request refused by the schema; denying");
                Decision {
                    allowed: false,
                    policies: Vec::new(),
                }
            }
        }
    }

    fn evaluate(
        &self,
        loaded: &Loaded,
        identity: &Identity,
        action: &str,
        resource: &Resource,
    ) -> Result<Decision, String> {
        let principal_type = if identity.principal_type == "Service" {
            "Service"
        } else {
            "User"
        };
        let principal = uid(principal_type, &identity.principal)?;
        let mut parents: HashSet<EntityUid> = loaded.memberships.get(&principal).cloned().unwrap_or_default();
        for group in &identity.groups {
            parents.insert(uid("Group", group)?);
        }
        let mut extra = vec![Entity::new_no_attrs(principal.clone(), parents)];
        let resource_uid = self.resource_entities(loaded, resource, &mut extra)?;
        let entities = loaded
            .base
            .clone()
            .add_entities(extra, None)
            .map_err(|e| e.to_string())?;
        let context = Context::from_pairs([(
            "authentication".to_owned(),
            RestrictedExpression::new_string(identity.auth_method.clone()),
        )])
        .map_err(|e| e.to_string())?;
        let request = Request::new(
            principal,
            uid("Action", action)?,
            resource_uid,
            context,
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let response = self.engine.is_authorized(&request, &loaded.policies, &entities);
        for error in response.diagnostics().errors() {
            tracing::warn!(action, resource = %resource.describe(), %error, "a policy could not be evaluated (it counts as not applying)");
        }
        let mut policies: Vec<String> = response.diagnostics().reason().map(PolicyId::to_string).collect();
        policies.sort();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
        })
    }

    /// Adds the entities `resource` needs (beyond the base) and returns its uid.
    fn resource_entities(
        &self,
        loaded: &Loaded,
        resource: &Resource,
        extra: &mut Vec<Entity>,
    ) -> Result<EntityUid, String> {
        let namespace_entity = |namespace: &str, extra: &mut Vec<Entity>| -> Result<EntityUid, String> {
            let ns = uid("Namespace", namespace)?;
            if loaded.base.get(&ns).is_none() {
                extra.push(empty_namespace(ns.clone())?);
            }
            Ok(ns)
        };
        match resource {
            Resource::Registry(registry) => uid("Registry", &registry.alias),
            Resource::Namespace { namespace, .. } => namespace_entity(namespace, extra),
            Resource::Repository { registry, name, tags } => {
                let ns = namespace_entity(namespace_of(name), extra)?;
                let repository = uid("Repository", &format!("{}/{name}", registry.alias))?;
                let attrs = [
                    ("name".to_owned(), RestrictedExpression::new_string(name.clone())),
                    (
                        "namespace".to_owned(),
                        RestrictedExpression::new_entity_uid(ns.clone()),
                    ),
                    (
                        "registry".to_owned(),
                        RestrictedExpression::new_entity_uid(uid("Registry", &registry.alias)?),
                    ),
                ];
                let tags = tags
                    .iter()
                    .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
                extra.push(
                    Entity::new_with_tags(repository.clone(), attrs, [ns], tags)
                        .map_err(|e| e.to_string())?,
                );
                Ok(repository)
            }
        }
    }

    /// What `identity` may read with `action` (a list RPC) in `registries`.
    pub fn scope<'a>(
        &self,
        identity: &Identity,
        action: &str,
        registries: impl IntoIterator<Item = &'a RegistryRef>,
    ) -> Scope {
        let loaded = self.loaded.load();
        let candidates: BTreeSet<&String> = self
            .configured_namespaces
            .iter()
            .chain(&loaded.namespaces)
            .collect();
        let mut scope = Scope::default();
        for registry in registries {
            let whole = self.decide_with(&loaded, identity, action, &Resource::Registry(registry.clone()));
            let access = if whole.allowed {
                scope.policies.extend(whole.policies);
                Access::All
            } else {
                let mut visible = BTreeSet::new();
                for namespace in &candidates {
                    let resource = Resource::Namespace {
                        registry: registry.clone(),
                        namespace: (*namespace).clone(),
                    };
                    let decision = self.decide_with(&loaded, identity, action, &resource);
                    if decision.allowed {
                        scope.policies.extend(decision.policies);
                        visible.insert((*namespace).clone());
                    }
                }
                Access::Namespaces(visible)
            };
            scope.by_registry.insert(registry.alias.clone(), access);
        }
        scope
    }
}

/// Everything a decision depends on besides the loaded files, unambiguously
/// (lengths before free text, so no two requests share a key).
fn cache_key(identity: &Identity, action: &str, resource: &Resource) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(128);
    let mut put = |text: &str| {
        let _ = write!(key, "{}:{text};", text.len());
    };
    put(&identity.principal_type);
    put(&identity.principal);
    put(&identity.auth_method);
    let mut groups: Vec<&String> = identity.groups.iter().collect();
    groups.sort();
    put(&groups.len().to_string());
    groups.into_iter().for_each(|g| put(g));
    put(action);
    match resource {
        Resource::Registry(registry) => {
            put("registry");
            put(&registry.alias);
        }
        Resource::Namespace { registry, namespace } => {
            put("namespace");
            put(&registry.alias);
            put(namespace);
        }
        Resource::Repository { registry, name, tags } => {
            put("repository");
            put(&registry.alias);
            put(name);
            put(&tags.len().to_string());
            for (k, v) in tags {
                put(k);
                put(v);
            }
        }
    }
    key
}

/// The audit form of a single decision.
pub fn decision_json(action: &str, resource: &Resource, decision: &Decision) -> Value {
    json!({
        "decision": if decision.allowed { "allow" } else { "deny" },
        "action": action,
        "resource": resource.describe(),
        "policies": decision.policies,
    })
}

fn summary(loaded: &Loaded) -> Summary {
    Summary {
        policies: loaded.policies.policies().count(),
        entities: loaded.memberships.len() + loaded.base.iter().count(),
    }
}

/// The compiled schema (a bug in it fails every start, and a unit test).
pub fn schema() -> Result<Schema, Vec<String>> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| vec![format!("the built-in authorization schema does not compile: {e}")])
}

/// The RPC names the schema declares as actions (everything but the four groups).
pub fn schema_actions() -> Result<BTreeSet<String>, Vec<String>> {
    let schema = schema()?;
    Ok(schema
        .actions()
        .map(|a| a.id().unescaped().to_owned())
        .filter(|name| !["read", "write", "deploy", "admin"].contains(&name.as_str()))
        .collect())
}

type EntityData = (Entities, HashMap<EntityUid, HashSet<EntityUid>>, BTreeSet<String>);

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
