//! What /proc tells about the server and Postgres during a run: CPU ticks
//! used and resident memory.

/// Microseconds per clock tick of /proc/*/stat (USER_HZ is 100 on Linux).
pub(crate) const TICK_US: f64 = 10_000.0;

/// User and system CPU ticks a process has used.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks used by every Postgres process on this machine (the server's
/// backends, WAL writer, checkpointer, autovacuum): what the calls cost the
/// database, when nothing else uses it during the run.
pub(crate) fn postgres_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let is_postgres =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres");
        if is_postgres {
            total += cpu_ticks(pid).unwrap_or(0);
        }
    }
    Some(total)
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}
