//! What the background tasks (chainer, digester, sinks, retention, recovery,
//! sync loop, cache listener, health probe, memory trimmer) share: waiting between rounds
//! while watching the stop signal.

use std::time::Duration;

use tokio::sync::watch;

/// Waits `pause` unless `stop` changes first. Returns whether the task should
/// go on: false when the stop signal has flipped (or changes while waiting).
/// A zero pause only checks.
pub async fn pause(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    if pause.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = stop.changed() => false,
    }
}

/// A worker over a queue in Postgres (cleanup runs, remediation runs): runs
/// `take` — one unit of work; true when it found some — again at once after
/// work, otherwise after `poll` or as soon as `wake` is notified, until
/// `stop` flips.
pub async fn work_queue<F, Fut>(
    poll: Duration,
    wake: std::sync::Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
    mut take: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if *stop.borrow() {
            return;
        }
        if take().await {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}
