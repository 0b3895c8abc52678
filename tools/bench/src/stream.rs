//! The stream scenarios: single-row transactions as fast as the generators commit them, a
//! fixed 2,000 rows/s with the lag a watcher sees, one 500,000-row transaction, and the source's
//! own speed at handing out that transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Client as Etcd, WatchOptions};
use futures_util::StreamExt;

use crate::agent::Agent;
use crate::cpu::Cpu;
use crate::db::{huge_rows, Db, Source, TestEnv};
use crate::measure::Measure;
use crate::server::EtcdServer;

const STREAM_SECONDS: u64 = 30;
const FIXED_RATE: u64 = 2_000;

/// Runs the stream scenarios against an agent already in the sync phase on `bench_stream` and
/// `bench_huge` under `prefix`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    env: &TestEnv,
    etcd: &EtcdServer,
    db: &Db,
    source: Source,
    agent: &Agent,
    prefix: &str,
    db_pid: Option<u32>,
    ceiling: f64,
    base: &Measure,
) -> Result<Vec<Measure>> {
    let name = source.name();
    let mut out = Vec::new();
    let cores = |started: Instant, cpu: Cpu| {
        Cpu::now(agent, etcd, db_pid).cores_since(&cpu, started.elapsed().as_secs_f64())
    };
    for (scenario, (label, rate)) in [
        ("small txns, as fast as possible", None),
        ("fixed 2,000 rows/s", Some(FIXED_RATE)),
    ]
    .into_iter()
    .enumerate()
    {
        agent.reset_peak_rss();
        let (started, cpu) = (Instant::now(), Cpu::now(agent, etcd, db_pid));
        let (applied, lags) =
            stream_scenario(&etcd.client, db, prefix, rate, scenario as u64).await?;
        let cores = cores(started, cpu);
        let rss = agent.peak_rss_mb()?;
        println!("{name}: {label}: {applied:.0} rows/s, lag p50/p99/max {lags:?} ms, peak RSS {rss:.0} MB");
        out.push(Measure {
            scenario: format!("stream, {label}"),
            rate: Some(applied),
            ratio: rate.is_none().then(|| applied / ceiling),
            against: rate.is_none().then_some("parallel"),
            lag_ms: Some(lags),
            peak_rss_mb: Some(rss),
            cores: Some(cores),
            ..base.clone()
        });
    }

    let source_slot = db.prepare_source_measure().await?;
    agent.reset_peak_rss();
    let huge_prefix = format!("{prefix}/bench_huge/");
    let (watch_task, seen) = watch_count(&etcd.client, &huge_prefix, huge_rows()).await?;
    let committed = db.huge_transaction().await?;
    let (started, cpu) = (Instant::now(), Cpu::now(agent, etcd, db_pid));
    let last = tokio::time::timeout(Duration::from_secs(600), watch_task).await???;
    let cores = cores(started, cpu);
    let rate = huge_rows() as f64 / (last - committed).as_secs_f64();
    let rss = agent.peak_rss_mb()?;
    println!(
        "{name}: one transaction of {} rows: {rate:.0} rows/s, peak RSS {rss:.0} MB ({} seen)",
        huge_rows(),
        seen.lock().map(|s| *s).unwrap_or(0)
    );
    out.push(Measure {
        scenario: "stream, one 500k-row txn".into(),
        rows: Some(huge_rows()),
        rate: Some(rate),
        ratio: Some(rate / ceiling),
        against: Some("parallel"),
        peak_rss_mb: Some(rss),
        cores: Some(cores),
        ..base.clone()
    });

    let took = db.drain_source(env, source_slot).await?;
    let rate = huge_rows() as f64 / took;
    println!("{name}: source limit (reading the 500k-row txn without applying): {rate:.0} rows/s");
    out.push(Measure {
        scenario: format!(
            "source limit ({})",
            if source == Source::Postgres {
                "pg_recvlogical"
            } else {
                "mysqlbinlog"
            }
        ),
        rate: Some(rate),
        ratio: Some(rate / ceiling),
        against: Some("parallel"),
        ..base.clone()
    });
    Ok(out)
}

/// Watches `prefix` until `expected` puts arrived; returns when the last one did.
async fn watch_count(
    etcd: &Etcd,
    prefix: &str,
    expected: u64,
) -> Result<(tokio::task::JoinHandle<Result<Instant>>, Arc<Mutex<u64>>)> {
    let mut stream = etcd
        .watch_client()
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await?;
    let seen = Arc::new(Mutex::new(0u64));
    let counter = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut last = Instant::now();
        while let Some(response) = stream.next().await.transpose()? {
            let n = response.events().len() as u64;
            last = Instant::now();
            let mut seen = counter.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            *seen += n;
            if *seen >= expected {
                break;
            }
        }
        Ok(last)
    });
    Ok((task, seen))
}

/// Single-row transactions for 30 s (as fast as possible, or at `rate` rows/s); returns
/// applied rows/s and lag percentiles (commit acknowledged to the generator → key seen by
/// an etcd watch).
async fn stream_scenario(
    etcd: &Etcd,
    db: &Db,
    prefix: &str,
    rate: Option<u64>,
    scenario: u64,
) -> Result<(f64, (f64, f64, f64))> {
    let stream_prefix = format!("{prefix}/bench_stream/");
    let mut events = etcd
        .watch_client()
        .watch(
            stream_prefix.as_str(),
            Some(WatchOptions::new().with_prefix()),
        )
        .await?;
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen_writer = Arc::clone(&seen);
    let watch_prefix = stream_prefix.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(response)) = events.next().await {
            let now = Instant::now();
            let mut seen = match seen_writer.lock() {
                Ok(seen) => seen,
                Err(_) => return,
            };
            for event in response.events() {
                if let Some(id) = event
                    .kv()
                    .and_then(|kv| kv.key_str().ok())
                    .and_then(|k| k.strip_prefix(&watch_prefix))
                    .and_then(|id| id.parse().ok())
                {
                    seen.entry(id).or_insert(now);
                }
            }
        }
    });
    let started = Instant::now();
    let committed = db
        .generate(rate, Duration::from_secs(STREAM_SECONDS), scenario)
        .await?;
    let total = committed.len();
    // Wait for the agent to drain.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = seen.lock().map(|s| s.len()).unwrap_or(0);
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let last = seen.values().max().copied().unwrap_or_else(Instant::now);
    let applied = seen.len() as f64 / (last - started).as_secs_f64();
    let mut lags: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    if lags.len() < total {
        println!(
            "warning: {} of {total} rows were not seen in etcd",
            total - lags.len()
        );
    }
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok((
        applied,
        (pct(0.5), pct(0.99), lags.last().copied().unwrap_or(0.0)),
    ))
}
