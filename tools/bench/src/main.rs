//! `make bench`: etcd-sync measured against etcd's own ingest ceiling, in one run on the local
//! test environment (these machines are noisy: only ratios within one run compare).
//!
//! For each etcd version (3.4 from Debian, 3.5 from the test environment's virtualenv) it
//! runs, for PostgreSQL and MariaDB: dumps of 1M, 2M and 4M rows of a
//! pgbench-shaped table, each split into its phases; a re-dump over 1M existing keys after 10%
//! of the rows were deleted; the catch-up of 200,000 single-row transactions committed while the
//! agent was stopped; and (etcd 3.4) the stream scenarios. Each dump and each catch-up is a
//! ratio to etcd's ceiling measured right before it, on a fresh etcd, with as many keys (127
//! puts per txn; 16 in flight for dumps, 1 for the ordered txns of a catch-up). The 1M dumps
//! and the catch-ups are also put against a second ceiling, measured beside a busy loop using
//! as many cores as their agent and database did (`load`): on two shared cores any such CPU
//! costs etcd, and this separates that cost from the agent's use of etcd. Every row has the
//! cores each process used and how many of its threads waited for a core on average (`cpu`):
//! a scenario bound by the wait rather than its own work shows it. It prints a table, writes
//! `target/bench/results.json` and a plot of dump time against rows (`dump-scaling.svg`).
//!
//! `etcd-sync-bench ceiling URL [KEYS] [IN_FLIGHT]` measures one ceiling against a running etcd;
//! `etcd-sync-bench plot RESULTS.json OUT.svg` draws the plot again from a results file;
//! `etcd-sync-bench probe` prints what the machine's speed probe (`probe`) reads for 10 s.

mod agent;
mod ceiling;
mod cpu;
mod db;
mod load;
mod measure;
mod plot;
mod probe;
mod proxy;
mod scenarios;
mod server;
mod stream;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use db::TestEnv;
use measure::Measure;
use server::EtcdVersion;

/// The bench's own etcd port (the tests' etcd is on another).
pub const ETCD_PORT: u16 = 22479;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ceiling") {
        let url = args
            .get(1)
            .context("usage: etcd-sync-bench ceiling URL [KEYS] [IN_FLIGHT]")?;
        let keys = args.get(2).map_or(Ok(1_000_000), |k| k.parse())?;
        let in_flight = args.get(3).map_or(Ok(16), |k| k.parse())?;
        let etcd = etcd_client::Client::connect([url.as_str()], None).await?;
        let rate = ceiling::measure(
            &etcd,
            "/bench-ceiling/",
            keys,
            in_flight,
            scenarios::VALUE_BYTES,
        )
        .await?;
        println!(
            "{} puts/txn x {in_flight} in flight: {rate:.0} keys/s",
            ceiling::TXN_PUTS
        );
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("probe") {
        probe::start();
        for _ in 0..10 {
            let then = probe::totals();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let (arithmetic, chase) =
                probe::micros_per_piece(probe::totals(), then).unwrap_or((f64::NAN, f64::NAN));
            println!("CPU µs per piece: arithmetic {arithmetic:.0}, pointer chase {chase:.0}");
        }
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("plot") {
        let (Some(json), Some(svg)) = (args.get(1), args.get(2)) else {
            bail!("usage: etcd-sync-bench plot RESULTS.json OUT.svg");
        };
        let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        let measures: Vec<Measure> = results["results"]
            .as_array()
            .context("no results in the JSON")?
            .iter()
            .map(Measure::from_json)
            .collect();
        std::fs::write(svg, plot::dump_scaling(&measures))?;
        return Ok(());
    }
    let only: Option<&str> = args
        .iter()
        .position(|a| a == "--etcd")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let env = TestEnv::load()?;
    probe::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let agent_bin = root.join("target/release/sync");
    if !agent_bin.exists() {
        bail!("{} missing: `make bench` builds it", agent_bin.display());
    }
    let mut versions = vec![EtcdVersion {
        label: "3.4".into(),
        binary: PathBuf::from("etcd"),
    }];
    match env.get("ETCD35_BIN") {
        bin if !bin.is_empty() => versions.push(EtcdVersion {
            label: "3.5".into(),
            binary: PathBuf::from(bin),
        }),
        _ => bail!("no etcd 3.5 in the test environment: run `make testenv`"),
    }
    versions.retain(|v| only.is_none_or(|o| o == v.label));

    let mut bench = scenarios::Bench {
        env,
        dir,
        agent_bin,
        results: Vec::new(),
    };
    for version in &versions {
        Box::pin(bench.run_version(version)).await?;
    }
    report(&bench.dir, &bench.results)
}

fn report(dir: &Path, results: &[Measure]) -> Result<()> {
    println!(
        "\n| etcd | source | scenario | seconds | rate | ratio | phases (s) | peak RSS (MB) | cores: agent / etcd / db / other | waiting for a core: agent / etcd / db | stolen cores | probe CPU per piece, × run median: arithmetic / pointer chase |"
    );
    println!("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    let probes = results.iter().filter_map(|m| m.cores?.probe_us);
    let probe_median =
        median(probes.clone().map(|p| p.0).collect()).zip(median(probes.map(|p| p.1).collect()));
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
    for m in results {
        let phases = m
            .phases
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ratio = match (m.ratio, m.against) {
            (Some(r), Some(a)) => format!("{r:.2} of {a}"),
            (Some(r), None) => format!("{r:.2}"),
            _ => "-".into(),
        };
        let cores = m.cores.map_or("-".into(), |c| {
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                c.agent, c.etcd, c.db, c.other
            )
        });
        let waiting = m.cores.map_or("-".into(), |c| {
            format!(
                "{:.2} / {:.2} / {:.2}",
                c.waiting.agent, c.waiting.etcd, c.waiting.db
            )
        });
        let stolen = m.cores.map_or("-".into(), |c| format!("{:.2}", c.stolen));
        let probe = match (m.cores.and_then(|c| c.probe_us), probe_median) {
            (Some(us), Some(median)) => format!("{:.2} / {:.2}", us.0 / median.0, us.1 / median.1),
            _ => "-".into(),
        };
        let lag = m.lag_ms.map_or(String::new(), |(a, b, c)| {
            format!(" (lag ms p50/p99/max {a:.0}/{b:.0}/{c:.0})")
        });
        println!(
            "| {} | {} | {}{lag} | {} | {} | {ratio} | {phases} | {} | {cores} | {waiting} | {stolen} | {probe} |",
            m.etcd,
            m.source,
            m.scenario,
            fmt(m.seconds, 1),
            fmt(m.rate, 0),
            fmt(m.peak_rss_mb, 0),
        );
    }
    let checks = scenarios::checks(results);
    println!();
    for (check, value, target, met) in &checks {
        println!(
            "{} {check}: {value:.2} (target {target})",
            if *met { "MET " } else { "MISSED" }
        );
    }
    let path = dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "results": results.iter().map(Measure::json).collect::<Vec<_>>(),
            "checks": checks.iter().map(|(c, v, t, m)| json!({"check": c, "value": v, "target": t, "met": m})).collect::<Vec<_>>(),
        }))?,
    )?;
    let svg = dir.join("dump-scaling.svg");
    std::fs::write(&svg, plot::dump_scaling(results))?;
    println!("\nwritten to {} and {}", path.display(), svg.display());
    Ok(())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}
