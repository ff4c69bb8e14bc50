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
