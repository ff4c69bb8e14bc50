//! What a read may return: the caller's readable scope as a condition of the
//! query itself, so that pages are full and a page token only ever points at
//! a row the caller may see (docs/security.md, "List and search RPCs").

use sqlx::{Postgres, QueryBuilder};

/// The repositories a list may return, per registry. A registry not listed shows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visibility {
    /// The registries the read covers.
    pub registries: Vec<VisibleRegistry>,
}

/// What may be read in one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleRegistry {
    /// The registry's alias (audit events name registries by it).
    pub alias: String,
    /// Its account.
    pub account_id: String,
    /// Its region.
    pub region: String,
    /// None: every repository; Some: the repositories of these namespaces only
    /// (a namespace is the first segment of a repository name).
    pub namespaces: Option<Vec<String>>,
}

/// In the flattened form, the namespace that stands for "the whole registry"
/// (no namespace is empty: a repository name's first segment never is).
const WHOLE: &str = "";

impl Visibility {
    /// True when every registry it covers is visible in full.
    pub fn unrestricted(&self) -> bool {
        self.registries.iter().all(|r| r.namespaces.is_none())
    }

    /// One row per (registry, visible namespace), `WHOLE` for a whole registry.
    fn flattened(&self) -> [Vec<String>; 4] {
        let mut rows: [Vec<String>; 4] = Default::default();
        for registry in &self.registries {
            let namespaces: Vec<&str> = match &registry.namespaces {
                None => vec![WHOLE],
                Some(set) => set.iter().map(String::as_str).filter(|n| !n.is_empty()).collect(),
            };
            for namespace in namespaces {
                rows[0].push(registry.alias.clone());
                rows[1].push(registry.account_id.clone());
                rows[2].push(registry.region.clone());
                rows[3].push(namespace.to_owned());
            }
        }
        rows
    }

    /// Pushes ` AND <visible>` for a row of registry (`account`, `region`)
    /// whose namespace is the SQL expression `namespace` (NULL for a row that
    /// only a caller who may read the whole registry sees).
    pub fn push_condition(
        &self,
        query: &mut QueryBuilder<Postgres>,
        account: &str,
        region: &str,
        namespace: &str,
    ) {
        let [_, accounts, regions, namespaces] = self.flattened();
        if self.unrestricted() {
            query.push(format!(" AND ({account}, {region}) IN (SELECT * FROM UNNEST("));
            query
                .push_bind(accounts)
                .push("::text[], ")
                .push_bind(regions)
                .push("::text[]))");
            return;
        }
        query.push(" AND EXISTS (SELECT 1 FROM UNNEST(");
        query
            .push_bind(accounts)
            .push("::text[], ")
            .push_bind(regions)
            .push("::text[], ")
            .push_bind(namespaces)
            .push("::text[]) AS v(account_id, region, namespace) WHERE ");
        query.push(format!(
            "v.account_id = {account} AND v.region = {region} AND (v.namespace = '' OR v.namespace = {namespace}))"
        ));
    }

    /// Pushes ` AND <visible>` for a row that names its registry by the SQL
    /// expression `alias` (NULL: about no registry, visible only to a caller
    /// who may read every registry) and its namespace by `namespace`.
    pub fn push_alias_condition(&self, query: &mut QueryBuilder<Postgres>, alias: &str, namespace: &str) {
        let [aliases, _, _, namespaces] = self.flattened();
        if self.unrestricted() {
            query.push(format!(" AND ({alias} IS NULL OR {alias} = ANY("));
            query.push_bind(aliases).push("::text[]))");
            return;
        }
        query.push(format!(
            " AND {alias} IS NOT NULL AND EXISTS (SELECT 1 FROM UNNEST("
        ));
        query
            .push_bind(aliases)
            .push("::text[], ")
            .push_bind(namespaces)
            .push("::text[]) AS v(alias, namespace) WHERE ");
        query.push(format!(
            "v.alias = {alias} AND (v.namespace = '' OR v.namespace = {namespace}))"
        ));
    }
}

/// The namespace of the repository named by the SQL expression `name` (its first segment).
pub fn namespace_of(name: &str) -> String {
    format!("split_part({name}, '/', 1)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(alias: &str, namespaces: Option<&[&str]>) -> VisibleRegistry {
        VisibleRegistry {
            alias: alias.into(),
            account_id: format!("{alias}-account"),
            region: "us-east-1".into(),
            namespaces: namespaces.map(|n| n.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn an_empty_namespace_never_stands_for_the_whole_registry() {
        let visibility = Visibility {
            registries: vec![registry("main", Some(&["", "payments"])), registry("dr", None)],
        };
        let [aliases, _, _, namespaces] = visibility.flattened();
        assert_eq!(aliases, ["main", "dr"]);
        assert_eq!(namespaces, ["payments", WHOLE]);
        assert!(!visibility.unrestricted());
    }

    #[test]
    fn a_registry_with_no_namespace_contributes_nothing() {
        let visibility = Visibility {
            registries: vec![registry("main", Some(&[]))],
        };
        assert!(visibility.flattened()[0].is_empty());
        let mut query = QueryBuilder::new("SELECT 1 WHERE true");
        visibility.push_condition(&mut query, "r.account_id", "r.region", &namespace_of("r.name"));
        assert!(
            query.sql().as_str().contains("EXISTS"),
            "{}",
            query.sql().as_str()
        );
    }
}
