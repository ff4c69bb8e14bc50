//! The gauges that need Postgres — audit events pending, sync lag and cache
//! age per registry, cleanup progress — read by one background task every
//! `admin.gauge_refresh_seconds`, never per scrape: `/metrics` and the OTLP
//! reader both show the last reading. Times are kept as timestamps, so a
//! lag is as exact at a scrape as the reading is recent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::metrics::{Metrics, escape};
use crate::domain::RegistryRef;
use crate::store::{Store, audit_trail, compliance, gauges};

/// Upper bound of one reading's queries.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The last reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseGauges {
    /// False until the first reading.
    pub read: bool,
    /// Audit events recorded but not yet chained, if that could be read.
    pub audit_events_pending: Option<i64>,
    /// By registry alias: the most recent and the least recent completed
    /// sync of its cached repositories.
    pub syncs: BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)>,
    /// Running cleanup runs.
    pub cleanups: Vec<Cleanup>,
    /// Policy violations in force by (rule, namespace); namespaces beyond the
    /// [`MAX_NAMESPACES`] with the most violations count as `other`.
    pub violations: BTreeMap<(String, String), i64>,
}

/// The most namespaces the violation gauge names (its label set stays bounded).
pub const MAX_NAMESPACES: usize = 50;

/// Folds (rule, namespace, count) rows into the gauge's bounded label set.
pub fn bounded_violations(rows: Vec<(String, String, i64)>) -> BTreeMap<(String, String), i64> {
    let mut per_namespace: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, namespace, count) in &rows {
        *per_namespace.entry(namespace).or_default() += count;
    }
    let mut ranked: Vec<(&str, i64)> = per_namespace.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: std::collections::HashSet<String> = ranked
        .iter()
        .take(MAX_NAMESPACES)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    let mut gauge = BTreeMap::new();
    for (rule, namespace, count) in rows {
        let label = if named.contains(&namespace) {
            namespace
        } else {
            "other".to_owned()
        };
        *gauge.entry((rule, label)).or_default() += count;
    }
    gauge
}

/// A running cleanup run's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The run.
    pub run_id: Uuid,
    /// Its registry's alias.
    pub registry: String,
    /// Images it set out to delete.
    pub planned: i64,
    /// Of those, the ones gone.
    pub deleted: i64,
}

impl DatabaseGauges {
    /// Seconds since the most recent completed sync of each registry.
    pub fn sync_lag(&self, now: DateTime<Utc>) -> impl Iterator<Item = (&str, f64)> {
        self.syncs
            .iter()
            .map(move |(alias, (newest, _))| (alias.as_str(), seconds_since(*newest, now)))
    }

    /// Seconds since the least recent completed sync of each registry's
    /// cached repositories: the age of its stalest cached data.
    pub fn cache_age(&self, now: DateTime<Utc>) -> impl Iterator<Item = (&str, f64)> {
        self.syncs
            .iter()
            .map(move |(alias, (_, oldest))| (alias.as_str(), seconds_since(*oldest, now)))
    }

    /// The text exposition of the gauges.
    pub fn encode(&self, out: &mut String, now: DateTime<Utc>) {
        if let Some(pending) = self.audit_events_pending {
            let _ = write!(
                out,
                "# HELP ecr_gateway_audit_events_pending Audit events recorded but not yet linked into the hash chain.\n\
                 # TYPE ecr_gateway_audit_events_pending gauge\n\
                 ecr_gateway_audit_events_pending {pending}\n"
            );
        }
        if !self.read {
            return;
        }
        out.push_str(
            "# HELP ecr_gateway_sync_lag_seconds Seconds since the most recent completed sync of a repository of the registry.\n\
             # TYPE ecr_gateway_sync_lag_seconds gauge\n",
        );
        for (alias, seconds) in self.sync_lag(now) {
            let _ = writeln!(
                out,
                "ecr_gateway_sync_lag_seconds{{registry=\"{}\"}} {seconds}",
                escape(alias)
            );
        }
        out.push_str(
            "# HELP ecr_gateway_cache_age_seconds Seconds since the least recently synced cached repository of the registry was synced.\n\
             # TYPE ecr_gateway_cache_age_seconds gauge\n",
        );
        for (alias, seconds) in self.cache_age(now) {
            let _ = writeln!(
                out,
                "ecr_gateway_cache_age_seconds{{registry=\"{}\"}} {seconds}",
                escape(alias)
            );
        }
        out.push_str(
            "# HELP ecr_gateway_cleanup_images_planned Images a running cleanup run set out to delete.\n\
             # TYPE ecr_gateway_cleanup_images_planned gauge\n",
        );
        for run in &self.cleanups {
            let _ = writeln!(
                out,
                "ecr_gateway_cleanup_images_planned{{run_id=\"{}\",registry=\"{}\"}} {}",
                run.run_id,
                escape(&run.registry),
                run.planned
            );
        }
        out.push_str(
            "# HELP ecr_gateway_cleanup_images_deleted Images a running cleanup run has deleted so far.\n\
             # TYPE ecr_gateway_cleanup_images_deleted gauge\n",
        );
        for run in &self.cleanups {
            let _ = writeln!(
                out,
                "ecr_gateway_cleanup_images_deleted{{run_id=\"{}\",registry=\"{}\"}} {}",
                run.run_id,
                escape(&run.registry),
                run.deleted
            );
        }
        out.push_str(
            "# HELP ecr_gateway_policy_violations Org policy violations in force, by rule and namespace (every registry).\n\
             # TYPE ecr_gateway_policy_violations gauge\n",
        );
        for ((rule, namespace), count) in &self.violations {
            let _ = writeln!(
                out,
                "ecr_gateway_policy_violations{{rule=\"{}\",namespace=\"{}\"}} {count}",
                escape(rule),
                escape(namespace)
            );
        }
    }
}

fn seconds_since(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    ((now - then).num_milliseconds().max(0) as f64) / 1000.0
}

/// One reading. A query that fails or times out leaves its gauges out.
pub async fn read(store: &Store, registries: &[RegistryRef]) -> DatabaseGauges {
    let pool = store.pool();
    let alias = |account_id: &str, region: &str| {
        registries
            .iter()
            .find(|r| r.account_id == account_id && r.region == region)
            .map(|r| r.alias.clone())
    };
    let (pending, syncs, cleanups, violations) = tokio::join!(
        tokio::time::timeout(READ_TIMEOUT, audit_trail::chain_queue_length(pool)),
        tokio::time::timeout(READ_TIMEOUT, gauges::sync_times(pool)),
        tokio::time::timeout(READ_TIMEOUT, gauges::running_cleanups(pool)),
        tokio::time::timeout(READ_TIMEOUT, compliance::counts_by_rule_and_namespace(pool)),
    );
    let violations = violations.ok().and_then(Result::ok).unwrap_or_default();
    let syncs = syncs.ok().and_then(Result::ok).unwrap_or_default();
    let cleanups = cleanups.ok().and_then(Result::ok).unwrap_or_default();
    DatabaseGauges {
        read: true,
        audit_events_pending: pending.ok().and_then(Result::ok),
        violations: bounded_violations(violations),
        syncs: syncs
            .into_iter()
            .filter_map(|s| Some((alias(&s.account_id, &s.region)?, (s.newest, s.oldest))))
            .collect(),
        cleanups: cleanups
            .into_iter()
            .filter_map(|c| {
                Some(Cleanup {
                    run_id: c.run_id,
                    registry: alias(&c.account_id, &c.region)?,
                    planned: c.planned,
                    deleted: c.deleted,
                })
            })
            .collect(),
    }
}

/// Reads the gauges now and every `interval` until `stop` flips.
pub async fn run_refresh(
    store: Store,
    metrics: Arc<Metrics>,
    registries: Vec<RegistryRef>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        metrics.set_database_gauges(read(&store, &registries).await);
        if !crate::tasks::pause(interval, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_beyond_the_largest_namespaces_count_as_other() {
        let mut rows: Vec<(String, String, i64)> = (0..MAX_NAMESPACES + 5)
            .map(|i| ("tags.required".to_owned(), format!("team{i:03}"), 100 + i as i64))
            .collect();
        rows.push(("naming.namespace".to_owned(), "team000".to_owned(), 1));

        let gauge = bounded_violations(rows);

        // The 5 namespaces with the fewest violations (team000..team004) fold into `other`.
        assert_eq!(gauge.len(), MAX_NAMESPACES + 2, "{gauge:?}");
        let other = gauge[&("tags.required".to_owned(), "other".to_owned())];
        assert_eq!(other, 100 + 101 + 102 + 103 + 104);
        assert_eq!(gauge[&("naming.namespace".to_owned(), "other".to_owned())], 1);
        assert!(gauge.contains_key(&(
            "tags.required".to_owned(),
            format!("team{:03}", MAX_NAMESPACES + 4)
        )));
    }

    #[test]
    fn lag_and_age_are_seconds_since_the_newest_and_oldest_sync() {
        let now = Utc::now();
        let gauges = DatabaseGauges {
            read: true,
            audit_events_pending: Some(2),
            syncs: [(
                "main".to_owned(),
                (
                    now - chrono::Duration::seconds(30),
                    now - chrono::Duration::seconds(300),
                ),
            )]
            .into(),
            cleanups: vec![Cleanup {
                run_id: Uuid::nil(),
                registry: "main".into(),
                planned: 10,
                deleted: 4,
            }],
            violations: [(("tags.required".to_owned(), "payments".to_owned()), 3)].into(),
        };

        let mut text = String::new();
        gauges.encode(&mut text, now);

        for line in [
            "ecr_gateway_audit_events_pending 2\n",
            "ecr_gateway_sync_lag_seconds{registry=\"main\"} 30\n",
            "ecr_gateway_cache_age_seconds{registry=\"main\"} 300\n",
            "ecr_gateway_cleanup_images_planned{run_id=\"00000000-0000-0000-0000-000000000000\",registry=\"main\"} 10\n",
            "ecr_gateway_cleanup_images_deleted{run_id=\"00000000-0000-0000-0000-000000000000\",registry=\"main\"} 4\n",
            "ecr_gateway_policy_violations{rule=\"tags.required\",namespace=\"payments\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn nothing_but_help_before_the_first_reading() {
        let mut text = String::new();
        DatabaseGauges::default().encode(&mut text, Utc::now());
        assert_eq!(text, "");
    }
}
