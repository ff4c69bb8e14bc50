//! The `load` run: C concurrent workers call one RPC of a running gateway,
//! closed loop or paced to a target rate, and the run reports the rate,
//! latency percentiles, gRPC status codes, the server's RSS and the CPU time
//! the server and Postgres spent per call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::Mutex;

use crate::procfs::{TICK_US, cpu_ticks, postgres_ticks, rss_kib};
use crate::rpc::{Rpc, call, deep_tokens};

#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// host:port of the gateway.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// What to call.
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// Concurrent workers (each with its own HTTP/2 connection every 16 workers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Target calls per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seeded repositories (to build requests).
    #[arg(long, default_value_t = 1000)]
    repositories: usize,
    /// Seeded images per repository.
    #[arg(long, default_value_t = 1000)]
    images_per_repository: usize,
    /// Calls spread over this many distinct images (0: all seeded images).
    /// A deploy system resolves the releases it ships, a small hot set.
    #[arg(long, default_value_t = 0)]
    working_set: usize,
    /// Before the timed run, call each image of the working set once (a
    /// deploy system's hot set is warm in steady state).
    #[arg(long)]
    warm: bool,
    /// Server process id, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// What the workers measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    codes: BTreeMap<String, u64>,
}

pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let LoadArgs {
        target,
        rpc,
        concurrency,
        seconds,
        rate,
        repositories,
        images_per_repository: per_repository,
        working_set,
        warm,
        server_pid,
    } = args;
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(16) {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{target}"))?
                .connect()
                .await?,
        );
    }
    let deep_tokens = if rpc == Rpc::ListDeep {
        deep_tokens(&channels[0], repositories.min(200)).await?
    } else {
        Vec::new()
    };
    let deep_tokens = Arc::new(deep_tokens);
    if warm && working_set > 0 {
        let channel = channels[0].clone();
        let failed = futures::stream::iter(0..working_set)
            .map(|n| {
                let (channel, deep_tokens) = (channel.clone(), deep_tokens.clone());
                async move { call(&channel, rpc, n, repositories, per_repository, &deep_tokens).await }
            })
            .buffer_unordered(concurrency)
            .filter(|code| std::future::ready(code != "OK"))
            .count()
            .await;
        anyhow::ensure!(failed == 0, "{failed} warm-up calls failed");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let rss_before = server_pid.and_then(rss_kib);
    let cpu_before = server_pid.and_then(cpu_ticks).zip(postgres_ticks());
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let channel = channels[w / 16].clone();
        let (tally, counter, deep_tokens) = (tally.clone(), counter.clone(), deep_tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Tally::default();
            // Each caller makes one call per period, and the callers' periods
            // are staggered across it, so that calls arrive evenly: started
            // in phase, all callers fired at once, and a paced run measured
            // how long the server takes to drain a burst of `concurrency`
            // calls, not its latency at the rate.
            let mut pace = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(concurrency as f64 / rate as f64);
                let phase = period.mul_f64(w as f64 / concurrency as f64);
                let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            while Instant::now() < deadline {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let mut n = counter.fetch_add(1, Ordering::Relaxed) as usize;
                if working_set > 0 {
                    n %= working_set;
                }
                let started = Instant::now();
                let code = call(&channel, rpc, n, repositories, per_repository, &deep_tokens).await;
                local
                    .latencies_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *local.codes.entry(code).or_default() += 1;
            }
            let mut tally = tally.lock().await;
            tally.latencies_us.extend(local.latencies_us);
            for (code, count) in local.codes {
                *tally.codes.entry(code).or_default() += count;
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let rss_after = server_pid.and_then(rss_kib);
    let cpu_after = server_pid.and_then(cpu_ticks).zip(postgres_ticks());
    let mut tally = tally.lock().await;
    tally.latencies_us.sort_unstable();
    let calls = tally.latencies_us.len();
    let pct = |p: f64| {
        tally
            .latencies_us
            .get(((calls as f64 * p) as usize).min(calls.saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{rpc:?}: {calls} calls in {seconds} s = {:.0}/s (concurrency {concurrency}{}{}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, codes {:?}{}{}",
        calls as f64 / seconds as f64,
        if rate > 0 {
            format!(", paced at {rate}/s")
        } else {
            String::new()
        },
        if working_set > 0 {
            format!(", working set {working_set} images")
        } else {
            String::new()
        },
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        tally.codes,
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!(
                ", server RSS {:.1} MiB before, {:.1} MiB after",
                b as f64 / 1024.0,
                a as f64 / 1024.0
            ),
            _ => String::new(),
        },
        match (cpu_before, cpu_after) {
            (Some((server_0, postgres_0)), Some((server_1, postgres_1))) if calls > 0 => format!(
                ", CPU per call: server {:.0} µs, Postgres {:.0} µs",
                (server_1 - server_0) as f64 * TICK_US / calls as f64,
                (postgres_1 - postgres_0) as f64 * TICK_US / calls as f64,
            ),
            _ => String::new(),
        }
    );
    Ok(())
}
