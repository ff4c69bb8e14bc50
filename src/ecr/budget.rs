//! A per-registry, per-action request budget: token buckets that keep the
//! gateway's ECR calls well under ECR's limits (most are unpublished).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Calls per second allowed when an action has no configured rate.
pub(crate) const DEFAULT_RATE: f64 = 20.0;

/// Token buckets by ECR action.
#[derive(Debug)]
pub struct Budget {
    rates: BTreeMap<String, f64>,
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Budget {
    /// A budget with `rates` (calls per second by action name); others get [`DEFAULT_RATE`].
    pub fn new(rates: BTreeMap<String, f64>) -> Budget {
        Budget {
            rates,
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    fn rate(&self, action: &str) -> f64 {
        self.rates.get(action).copied().unwrap_or(DEFAULT_RATE).max(0.01)
    }

    /// Waits until one call of `action` fits the budget.
    pub async fn acquire(&self, action: &str) {
        loop {
            let wait = self.try_take(action, Instant::now()).await;
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Takes a token if there is one; otherwise says how long until there is.
    async fn try_take(&self, action: &str, now: Instant) -> Option<Duration> {
        let rate = self.rate(action);
        let burst = rate.max(1.0);
        let mut buckets = self.buckets.lock().await;
        let bucket = buckets.entry(action.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_bucket_allows_a_burst_then_asks_to_wait() {
        let budget = Budget::new([("DescribeImages".to_owned(), 2.0)].into_iter().collect());
        let now = Instant::now();
        assert_eq!(budget.try_take("DescribeImages", now).await, None);
        assert_eq!(budget.try_take("DescribeImages", now).await, None);
        let wait = budget.try_take("DescribeImages", now).await.expect("must wait");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn tokens_come_back_at_the_configured_rate() {
        let budget = Budget::new([("ListImages".to_owned(), 10.0)].into_iter().collect());
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(budget.try_take("ListImages", start).await, None);
        }
        assert!(budget.try_take("ListImages", start).await.is_some());
        assert_eq!(
            budget
                .try_take("ListImages", start + Duration::from_millis(100))
                .await,
            None
        );
    }

    #[tokio::test]
    async fn actions_have_separate_buckets() {
        let budget = Budget::new([("A".to_owned(), 1.0)].into_iter().collect());
        let now = Instant::now();
        assert_eq!(budget.try_take("A", now).await, None);
        assert!(budget.try_take("A", now).await.is_some());
        assert_eq!(budget.try_take("B", now).await, None);
    }
}
