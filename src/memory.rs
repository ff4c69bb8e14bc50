//! Giving freed memory back to the system. glibc's allocator keeps the
//! memory a burst freed (audit batches, read-cache churn, the responses of
//! thousands of calls) in its per-thread arenas, so the resident size stays
//! at the burst's peak: about 30 MiB more than in use after a saturating
//! minute of ResolveImage (docs/benchmarks.md, session 7). `malloc_trim`
//! returns the free pages of every arena; it takes about a millisecond.

use std::time::Duration;

use tokio::sync::watch;

/// How often freed memory is returned.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Returns freed memory every [`TRIM_INTERVAL`] until `stop` flips (glibc
/// only; elsewhere there is nothing to do).
pub async fn run_trimmer(mut stop: watch::Receiver<bool>) {
    while crate::tasks::pause(TRIM_INTERVAL, &mut stop).await {
        trim();
    }
}

/// Returns the free memory of every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each
    // arena while it trims it).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// The trim gives back freed memory (the resident size falls), and
    /// nothing in use is touched.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_and_live_memory_stays() {
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap()
        }
        // Many small blocks (below the mmap threshold, so they live in the
        // heap), then copies of some, allocated after them: freeing the
        // blocks leaves free pages below live ones, which only a trim returns.
        let blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 2048]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter().step_by(64).cloned().collect();
        drop(blocks);
        let before = rss_kib();
        super::trim();
        let after = rss_kib();
        assert!(
            after + 20_000 < before,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == (i * 64) as u8))
        );
    }
}
