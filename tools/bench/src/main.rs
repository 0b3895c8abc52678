//! `make bench`: etcd-sync measured against etcd's own ingest ceiling, in one run on the local
//! test environment (these machines are noisy: only ratios within one run compare).
//!
//! Scenarios, for PostgreSQL and MariaDB: the dump of 1,000,000 rows in three tables; a stream
//! of single-row transactions as fast as a load generator commits them for 30 s; a stream at a
//! fixed 2,000 rows/s for 30 s; one transaction of 500,000 rows; and the source's own speed at
//! handing out the same change stream without applying it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client as Etcd, DeleteOptions, Txn, TxnOp, WatchOptions};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use serde_json::json;
use tokio::process::{Child, Command};

const ENV_FILE: &str = "/tmp/etcd-sync-testenv/env";
/// The bench's own etcd: a fresh data dir, so test leftovers do not slow the ceiling down.
const ETCD_PORT: u16 = 52479;
const DUMP_ROWS: [(&str, u64); 3] = [
    ("bench_users", 400_000),
    ("bench_orders", 400_000),
    ("bench_events", 200_000),
];
const STREAM_SECONDS: u64 = 30;
const FIXED_RATE: u64 = 2_000;
const HUGE_ROWS: u64 = 500_000;
const GENERATORS: u64 = 8;
/// etcd's default --max-txn-ops: the agent's default txn size too.
const TXN_OPS: usize = 128;

struct TestEnv(HashMap<String, String>);

impl TestEnv {
    fn load() -> Result<Self> {
        let text = std::fs::read_to_string(ENV_FILE)
            .with_context(|| format!("{ENV_FILE}: run `make testenv`"))?;
        Ok(Self(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| {
                    (
                        k.trim_start_matches("ETCD_SYNC_TEST_").to_owned(),
                        v.to_owned(),
                    )
                })
                .collect(),
        ))
    }
    fn get(&self, key: &str) -> String {
        self.0.get(key).cloned().unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Postgres,
    Mariadb,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Postgres => "postgres",
            Source::Mariadb => "mariadb",
        }
    }
}

/// One row of the results table.
#[derive(Default)]
struct Measure {
    scenario: String,
    rows_per_sec: Option<f64>,
    ratio: Option<f64>,
    lag_ms: Option<(f64, f64, f64)>,
    peak_rss_mb: Option<f64>,
    /// CPU cores used on average during the scenario: the agent, etcd.
    cores: Option<(f64, f64)>,
}

/// CPU time of a process so far, for cores-used figures.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// Measures the cores the agent and etcd use between `start` and `finish`.
struct CpuWindow {
    agent: Option<u32>,
    etcd: Option<u32>,
    started: Instant,
    agent_cpu: f64,
    etcd_cpu: f64,
}

impl CpuWindow {
    fn start(agent: Option<u32>, etcd: Option<u32>) -> Self {
        Self {
            agent,
            etcd,
            started: Instant::now(),
            agent_cpu: cpu_seconds(agent),
            etcd_cpu: cpu_seconds(etcd),
        }
    }
    fn finish(&self) -> (f64, f64) {
        let wall = self.started.elapsed().as_secs_f64();
        (
            (cpu_seconds(self.agent) - self.agent_cpu) / wall,
            (cpu_seconds(self.etcd) - self.etcd_cpu) / wall,
        )
    }
}

struct Bench {
    env: TestEnv,
    etcd: Etcd,
    dir: PathBuf,
    agent_bin: PathBuf,
    ceiling: f64,
    etcd_pid: Option<u32>,
    etcd_server: Option<Child>,
    results: Vec<Measure>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut env = TestEnv::load()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let etcd_server = start_etcd(&dir).await?;
    let etcd_pid = etcd_server.id();
    env.0
        .insert("ETCD".into(), format!("http://127.0.0.1:{ETCD_PORT}"));
    let etcd = Etcd::connect([env.get("ETCD")], None).await?;
    let agent_bin = root.join("target/release/sync");
    if !agent_bin.exists() {
        bail!("{} missing: `make bench` builds it", agent_bin.display());
    }
    let mut bench = Bench {
        env,
        etcd,
        dir,
        agent_bin,
        ceiling: 0.0,
        etcd_pid,
        etcd_server: Some(etcd_server),
        results: Vec::new(),
    };
    bench.measure_ceiling().await?;
    for source in [Source::Postgres, Source::Mariadb] {
        bench.run_source(source).await?;
    }
    bench.report()
}

/// Starts etcd on a fresh data dir under `dir`; killed when the returned child drops.
async fn start_etcd(dir: &Path) -> Result<Child> {
    let data = dir.join("etcd-data");
    let _ = std::fs::remove_dir_all(&data);
    let url = format!("http://127.0.0.1:{ETCD_PORT}");
    let peer = format!("http://127.0.0.1:{}", ETCD_PORT + 1);
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args([
            "--initial-cluster",
            &format!("bench={peer}"),
            "--quota-backend-bytes",
            "8589934592",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting etcd (make testenv installs it)")?;
    for _ in 0..100 {
        if let Ok(mut client) = Etcd::connect([url.as_str()], None).await {
            if client.status().await.is_ok() {
                return Ok(child);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the bench's etcd did not start; see target/bench/etcd.log")
}

/// A ~200-byte JSON-ish value, like the agent writes for the bench rows.
fn value_of(n: u64) -> String {
    format!("{{\"id\":{n},\"payload\":\"{:0>180}\"}}", n)
}

impl Bench {
    /// Raw etcd ingest with the agent's client, key shape, value size and txn size, at several
    /// concurrencies; the best is the ceiling.
    async fn measure_ceiling(&mut self) -> Result<()> {
        let keys: u64 = 200_000;
        let mut best = 0.0f64;
        for in_flight in [1usize, 4, 8, 16] {
            let prefix = format!("/bench-ceiling/{in_flight}/");
            let started = Instant::now();
            let etcd = self.etcd.clone();
            let key_prefix = prefix.clone();
            let mut batches =
                futures_util::stream::iter((0..keys).step_by(TXN_OPS).map(move |start| {
                    let mut kv = etcd.kv_client();
                    let prefix = key_prefix.clone();
                    async move {
                        let ops: Vec<TxnOp> = (start..(start + TXN_OPS as u64).min(keys))
                            .map(|n| TxnOp::put(format!("{prefix}items/{n}"), value_of(n), None))
                            .collect();
                        kv.txn(Txn::new().and_then(ops)).await
                    }
                }))
                .buffer_unordered(in_flight);
            while let Some(result) = batches.next().await {
                result?;
            }
            let rate = keys as f64 / started.elapsed().as_secs_f64();
            println!("ceiling: {TXN_OPS} ops/txn x {in_flight} in flight: {rate:.0} keys/s");
            best = best.max(rate);
        }
        // Deleting between levels would burden the next level with tombstones; the agent gets
        // an etcd of its own.
        self.fresh_etcd().await?;
        self.ceiling = best;
        self.results.push(Measure {
            scenario: "etcd ceiling (keys/s)".into(),
            rows_per_sec: Some(best),
            ratio: Some(1.0),
            ..Default::default()
        });
        Ok(())
    }

    fn ratio(&self, rate: f64) -> Option<f64> {
        (self.ceiling > 0.0).then(|| rate / self.ceiling)
    }

    async fn run_source(&mut self, source: Source) -> Result<()> {
        let name = source.name();
        let db = Db::create(&self.env, source).await?;
        println!(
            "{name}: loading {} rows",
            DUMP_ROWS.iter().map(|(_, n)| n).sum::<u64>()
        );
        db.load_dump_tables().await?;
        let prefix = format!("/bench/{name}");
        let state = format!("/bench-state/{name}");
        for p in [&prefix, &state] {
            self.etcd
                .delete(p.as_str(), Some(DeleteOptions::new().with_prefix()))
                .await?;
        }
        let config = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&config, db.config(&self.env, &prefix, &state))?;

        // Dump.
        let started = Instant::now();
        let mut agent = self.start_agent(&config, name)?;
        let cpu = CpuWindow::start(agent.id(), self.etcd_pid);
        self.wait_for_sync(&state, &mut agent).await?;
        let cores = cpu.finish();
        let took = started.elapsed().as_secs_f64();
        let rows: u64 = DUMP_ROWS.iter().map(|(_, n)| n).sum();
        let rate = rows as f64 / took;
        let rss = peak_rss_mb(&agent)?;
        println!(
            "{name}: dump of {rows} rows in {took:.1}s: {rate:.0} rows/s, peak RSS {rss:.0} MB"
        );
        self.results.push(Measure {
            scenario: format!("{name}: dump 1M rows"),
            rows_per_sec: Some(rate),
            ratio: self.ratio(rate),
            peak_rss_mb: Some(rss),
            cores: Some(cores),
            ..Default::default()
        });

        // Streams.
        for (scenario, (label, rate)) in [
            ("small txns, as fast as possible", None),
            ("fixed 2,000 rows/s", Some(FIXED_RATE)),
        ]
        .into_iter()
        .enumerate()
        {
            reset_peak_rss(&agent);
            let cpu = CpuWindow::start(agent.id(), self.etcd_pid);
            let (applied, lags) = self
                .stream_scenario(&db, &prefix, rate, scenario as u64)
                .await?;
            let cores = cpu.finish();
            let rss = peak_rss_mb(&agent)?;
            println!("{name}: {label}: {applied:.0} rows/s, lag p50/p99/max {:?} ms, peak RSS {rss:.0} MB", lags);
            self.results.push(Measure {
                scenario: format!("{name}: stream, {label}"),
                rows_per_sec: Some(applied),
                ratio: if rate.is_none() {
                    self.ratio(applied)
                } else {
                    None
                },
                lag_ms: Some(lags),
                peak_rss_mb: Some(rss),
                cores: Some(cores),
            });
        }

        // One huge transaction, marked for the source-side measure.
        let source_slot = db.prepare_source_measure().await?;
        reset_peak_rss(&agent);
        let huge_prefix = format!("{prefix}/bench_huge/");
        let (watch_task, seen) = self.watch_count(&huge_prefix, HUGE_ROWS).await?;
        let committed = db.huge_transaction().await?;
        let cpu = CpuWindow::start(agent.id(), self.etcd_pid);
        let last = tokio::time::timeout(Duration::from_secs(600), watch_task).await???;
        let cores = cpu.finish();
        let rate = HUGE_ROWS as f64 / (last - committed).as_secs_f64();
        let rss = peak_rss_mb(&agent)?;
        println!("{name}: one transaction of {HUGE_ROWS} rows: {rate:.0} rows/s, peak RSS {rss:.0} MB ({} seen)", seen.lock().map(|s| *s).unwrap_or(0));
        self.results.push(Measure {
            scenario: format!("{name}: stream, one 500k-row txn"),
            rows_per_sec: Some(rate),
            ratio: self.ratio(rate),
            peak_rss_mb: Some(rss),
            cores: Some(cores),
            ..Default::default()
        });

        // The source's own speed at handing out that stream.
        let took = db.drain_source(&self.env, source_slot).await?;
        let rate = HUGE_ROWS as f64 / took;
        println!(
            "{name}: source limit (reading the 500k-row txn without applying): {rate:.0} rows/s"
        );
        self.results.push(Measure {
            scenario: format!(
                "{name}: source limit ({})",
                if source == Source::Postgres {
                    "pg_recvlogical"
                } else {
                    "mysqlbinlog"
                }
            ),
            rows_per_sec: Some(rate),
            ratio: self.ratio(rate),
            ..Default::default()
        });

        stop(agent).await;
        db.drop().await?;
        self.fresh_etcd().await
    }

    /// A fresh etcd (new data dir) for what comes next: deleting millions of keys from the old
    /// one would take longer than a request may, and its history would slow the next source.
    async fn fresh_etcd(&mut self) -> Result<()> {
        if let Some(mut old) = self.etcd_server.take() {
            old.kill().await?;
        }
        let server = start_etcd(&self.dir).await?;
        self.etcd_pid = server.id();
        self.etcd = Etcd::connect([self.env.get("ETCD")], None).await?;
        self.etcd_server = Some(server);
        Ok(())
    }

    fn start_agent(&self, config: &Path, name: &str) -> Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("agent-{name}.log")))?;
        Ok(Command::new(&self.agent_bin)
            .arg("--config-file")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    async fn wait_for_sync(&self, state_prefix: &str, agent: &mut Child) -> Result<()> {
        let key = format!("{state_prefix}/state");
        loop {
            if let Some(status) = agent.try_wait()? {
                bail!("the agent exited ({status}); see target/bench/agent-*.log");
            }
            let response = self.etcd.kv_client().get(key.as_str(), None).await?;
            if let Some(kv) = response.kvs().first() {
                let state: serde_json::Value = serde_json::from_slice(kv.value())?;
                if state["phase"] == "sync" {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Watches `prefix` until `expected` puts arrived; returns when the last one did.
    async fn watch_count(
        &self,
        prefix: &str,
        expected: u64,
    ) -> Result<(tokio::task::JoinHandle<Result<Instant>>, Arc<Mutex<u64>>)> {
        let mut stream = self
            .etcd
            .watch_client()
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?;
        let seen = Arc::new(Mutex::new(0u64));
        let counter = seen.clone();
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
        &self,
        db: &Db,
        prefix: &str,
        rate: Option<u64>,
        scenario: u64,
    ) -> Result<(f64, (f64, f64, f64))> {
        let stream_prefix = format!("{prefix}/bench_stream/");
        let mut events = self
            .etcd
            .watch_client()
            .watch(
                stream_prefix.as_str(),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let seen_writer = seen.clone();
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

    fn report(&self) -> Result<()> {
        println!(
            "\n| scenario | rows/s | ratio to ceiling | lag p50 / p99 / max (ms) | peak RSS (MB) | cores: agent / etcd |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let mut json_rows = Vec::new();
        for m in &self.results {
            let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
            let lag = m
                .lag_ms
                .map_or("-".into(), |(a, b, c)| format!("{a:.1} / {b:.1} / {c:.1}"));
            let cores = m
                .cores
                .map_or("-".into(), |(a, e)| format!("{a:.2} / {e:.2}"));
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                m.scenario,
                fmt(m.rows_per_sec, 0),
                fmt(m.ratio, 2),
                lag,
                fmt(m.peak_rss_mb, 0),
                cores
            );
            json_rows.push(json!({
                "scenario": m.scenario,
                "rows_per_sec": m.rows_per_sec,
                "ratio_to_ceiling": m.ratio,
                "lag_ms": m.lag_ms.map(|(a, b, c)| json!({"p50": a, "p99": b, "max": c})),
                "peak_rss_mb": m.peak_rss_mb,
                "cores": m.cores.map(|(a, e)| json!({"agent": a, "etcd": e})),
            }));
        }
        let path = self.dir.join("results.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json!({ "results": json_rows }))?,
        )?;
        println!("\nwritten to {}", path.display());
        Ok(())
    }
}

fn peak_rss_mb(agent: &Child) -> Result<f64> {
    let pid = agent.id().context("agent exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024.0)
}

/// Starts a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss(agent: &Child) {
    if let Some(pid) = agent.id() {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

async fn stop(mut agent: Child) {
    if let Some(pid) = agent.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), agent.wait()).await;
}

/// The bench database, on either server.
enum Db {
    Postgres {
        client: tokio_postgres::Client,
        conn: String,
        name: String,
    },
    Mariadb {
        pool: mysql_async::Pool,
        opts: mysql_async::Opts,
        name: String,
    },
}

async fn pg_connect(conn: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

impl Db {
    async fn create(env: &TestEnv, source: Source) -> Result<Db> {
        match source {
            Source::Postgres => {
                let admin = pg_connect(&format!(
                    "host={} port={} user={} password={} dbname=postgres",
                    env.get("PG_HOST"),
                    env.get("PG_PORT"),
                    env.get("PG_ADMIN_USER"),
                    env.get("PG_ADMIN_PASSWORD")
                ))
                .await?;
                for slot in ["bench_pg", "bench_pg_source"] {
                    admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await?;
                }
                admin
                    .batch_execute("DROP DATABASE IF EXISTS bench_pg WITH (FORCE)")
                    .await?;
                admin
                    .batch_execute("CREATE DATABASE bench_pg OWNER sync")
                    .await?;
                let conn = format!(
                    "host={} port={} user={} password={} dbname=bench_pg",
                    env.get("PG_HOST"),
                    env.get("PG_PORT"),
                    env.get("PG_USER"),
                    env.get("PG_PASSWORD")
                );
                Ok(Db::Postgres {
                    client: pg_connect(&conn).await?,
                    conn,
                    name: "bench_pg".into(),
                })
            }
            Source::Mariadb => {
                let admin = mysql_async::Pool::new(mysql_opts(env, None, true));
                let mut conn = admin.get_conn().await?;
                conn.query_drop("DROP DATABASE IF EXISTS bench_my; CREATE DATABASE bench_my")
                    .await?;
                drop(conn);
                admin.disconnect().await?;
                let opts = mysql_opts(env, Some("bench_my"), true);
                Ok(Db::Mariadb {
                    pool: mysql_async::Pool::new(opts.clone()),
                    opts,
                    name: "bench_my".into(),
                })
            }
        }
    }

    fn config(&self, env: &TestEnv, prefix: &str, state: &str) -> String {
        let (driver, port, user, password, name) = match self {
            Db::Postgres { name, .. } => (
                "postgres",
                env.get("PG_PORT"),
                env.get("PG_USER"),
                env.get("PG_PASSWORD"),
                name,
            ),
            Db::Mariadb { name, .. } => (
                "mysql",
                env.get("MYSQL_PORT"),
                env.get("MYSQL_USER"),
                env.get("MYSQL_PASSWORD"),
                name,
            ),
        };
        format!(
            "database:\n  driver: {driver}\n  port: {port}\n  user: {user}\n  password: {password}\n  name: {name}\n  postgres:\n    slot: bench_pg\n    publication: bench_pg\n\
             tables:\n  exclude: []\netcd:\n  endpoints: [{}]\n  prefix: {prefix}\n  state_prefix: {state}\n",
            env.get("ETCD")
        )
    }

    async fn sql(&self, sql: &str) -> Result<()> {
        match self {
            Db::Postgres { client, .. } => client.batch_execute(sql).await?,
            Db::Mariadb { pool, .. } => pool.get_conn().await?.query_drop(sql).await?,
        }
        Ok(())
    }

    /// Three tables of mixed types, ~200-byte values, 1M rows in all; plus the stream tables.
    async fn load_dump_tables(&self) -> Result<()> {
        let [(_, users), (_, orders), (_, events)] = DUMP_ROWS;
        match self {
            Db::Postgres { .. } => self.sql(&format!(
                "CREATE TABLE bench_users (id bigint PRIMARY KEY, email text, name text, score double precision, active boolean, created_at timestamptz);
                 INSERT INTO bench_users SELECT i, 'user' || i || '@example.com', md5(i::text) || md5((i+1)::text), i * 0.5, i % 2 = 0, now() FROM generate_series(1, {users}) i;
                 CREATE TABLE bench_orders (id bigint PRIMARY KEY, user_id bigint, amount numeric(12,2), status text, items jsonb, created_at timestamp);
                 INSERT INTO bench_orders SELECT i, i % 1000, i * 1.25, 'shipped', jsonb_build_object('sku', md5(i::text), 'qty', i % 7), now() FROM generate_series(1, {orders}) i;
                 CREATE TABLE bench_events (device int, seq int, payload text, PRIMARY KEY (device, seq));
                 INSERT INTO bench_events SELECT i % 100, i, repeat(md5(i::text), 3) FROM generate_series(1, {events}) i;
                 CREATE TABLE bench_stream (id bigint PRIMARY KEY, payload text, at timestamptz);
                 CREATE TABLE bench_huge (id bigint PRIMARY KEY, payload text);
                 ANALYZE;"
            )).await,
            Db::Mariadb { .. } => self.sql(&format!(
                "CREATE TABLE bench_users (id bigint PRIMARY KEY, email varchar(100), name varchar(100), score double, active boolean, created_at timestamp(6));
                 INSERT INTO bench_users SELECT seq, CONCAT('user', seq, '@example.com'), CONCAT(MD5(seq), MD5(seq+1)), seq * 0.5, seq % 2 = 0, NOW(6) FROM seq_1_to_{users};
                 CREATE TABLE bench_orders (id bigint PRIMARY KEY, user_id bigint, amount decimal(12,2), status varchar(20), items json, created_at datetime(6));
                 INSERT INTO bench_orders SELECT seq, seq % 1000, seq * 1.25, 'shipped', JSON_OBJECT('sku', MD5(seq), 'qty', seq % 7), NOW(6) FROM seq_1_to_{orders};
                 CREATE TABLE bench_events (device int, seq int, payload varchar(200), PRIMARY KEY (device, seq));
                 INSERT INTO bench_events SELECT seq % 100, seq, REPEAT(MD5(seq), 3) FROM seq_1_to_{events};
                 CREATE TABLE bench_stream (id bigint PRIMARY KEY, payload varchar(200), at timestamp(6));
                 CREATE TABLE bench_huge (id bigint PRIMARY KEY, payload varchar(100));
                 ANALYZE TABLE bench_users, bench_orders, bench_events;"
            )).await,
        }
    }

    /// Marks where the source measure starts: a second slot (PostgreSQL) or the binary-log
    /// coordinates (MariaDB).
    async fn prepare_source_measure(&self) -> Result<String> {
        match self {
            Db::Postgres { client, .. } => {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot('bench_pg_source', 'pgoutput')",
                        &[],
                    )
                    .await?;
                Ok("bench_pg_source".into())
            }
            Db::Mariadb { pool, .. } => {
                let mut conn = pool.get_conn().await?;
                conn.query_drop("FLUSH BINARY LOGS").await?;
                let row: mysql_async::Row = conn
                    .query_first("SHOW MASTER STATUS")
                    .await?
                    .context("no binlog")?;
                let (file, pos): (String, u64) =
                    (row.get(0).context("file")?, row.get(1).context("pos")?);
                Ok(format!("{file}:{pos}"))
            }
        }
    }

    /// Commits single-row transactions from several connections; returns (id, commit time).
    async fn generate(
        &self,
        rate: Option<u64>,
        duration: Duration,
        scenario: u64,
    ) -> Result<Vec<(u64, Instant)>> {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        for g in 0..GENERATORS {
            let period = rate.map(|r| Duration::from_secs_f64(GENERATORS as f64 / r as f64));
            let payload = format!("{:0>150}", g);
            // Ids unique per scenario and generator.
            let base = (scenario * GENERATORS + g + 1) * 1_000_000_000;
            let insert: Box<
                dyn FnMut(u64) -> futures_util::future::BoxFuture<'static, Result<()>> + Send,
            > = match self {
                Db::Postgres { conn, .. } => {
                    let client = pg_connect(conn).await?;
                    // The test server runs with synchronous_commit = off, which holds WAL (and so
                    // the walsender) back for up to wal_writer_delay: not what a lag measures.
                    client.batch_execute("SET synchronous_commit = on").await?;
                    let client = Arc::new(client);
                    Box::new(move |id| {
                        let client = client.clone();
                        let payload = payload.clone();
                        Box::pin(async move {
                            client
                                .execute(
                                    "INSERT INTO bench_stream VALUES ($1, $2, now())",
                                    &[&(id as i64), &payload],
                                )
                                .await?;
                            Ok(())
                        })
                    })
                }
                Db::Mariadb { opts, .. } => {
                    let conn = Arc::new(tokio::sync::Mutex::new(
                        mysql_async::Conn::new(opts.clone()).await?,
                    ));
                    Box::new(move |id| {
                        let conn = conn.clone();
                        let payload = payload.clone();
                        Box::pin(async move {
                            conn.lock()
                                .await
                                .exec_drop(
                                    "INSERT INTO bench_stream VALUES (?, ?, NOW(6))",
                                    (id, payload),
                                )
                                .await?;
                            Ok(())
                        })
                    })
                }
            };
            tasks.push(tokio::spawn(async move {
                let mut insert = insert;
                let mut committed = Vec::new();
                let start = Instant::now();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if let Some(period) = period {
                        tokio::time::sleep_until((start + period * n as u32).into()).await;
                    }
                    let id = base + n;
                    insert(id).await?;
                    committed.push((id, Instant::now()));
                    n += 1;
                }
                Ok::<_, anyhow::Error>(committed)
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await??);
        }
        Ok(all)
    }

    /// One transaction of HUGE_ROWS rows; returns when it committed.
    async fn huge_transaction(&self) -> Result<Instant> {
        match self {
            Db::Postgres { .. } => self.sql(&format!("INSERT INTO bench_huge SELECT i, md5(i::text) || md5((i+1)::text) FROM generate_series(1, {HUGE_ROWS}) i")).await?,
            Db::Mariadb { .. } => self.sql(&format!("INSERT INTO bench_huge SELECT seq, CONCAT(MD5(seq), MD5(seq+1)) FROM seq_1_to_{HUGE_ROWS}")).await?,
        }
        Ok(Instant::now())
    }

    /// Reads the change stream from the mark to now without applying it; returns seconds.
    async fn drain_source(&self, env: &TestEnv, mark: String) -> Result<f64> {
        match self {
            Db::Postgres { client, name, .. } => {
                let end: String = client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await?
                    .get(0);
                let started = Instant::now();
                let status = Command::new("/usr/lib/postgresql/15/bin/pg_recvlogical")
                    .args([
                        "-h",
                        &env.get("PG_HOST"),
                        "-p",
                        &env.get("PG_PORT"),
                        "-U",
                        &env.get("PG_USER"),
                        "-d",
                        name,
                    ])
                    .args([
                        "--slot",
                        &mark,
                        "--start",
                        "-o",
                        "proto_version=1",
                        "-o",
                        "publication_names=bench_pg",
                        "-E",
                        &end,
                        "-f",
                        "/dev/null",
                    ])
                    .env("PGPASSWORD", env.get("PG_PASSWORD"))
                    .status()
                    .await?;
                let took = started.elapsed().as_secs_f64();
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&mark])
                    .await?;
                if !status.success() {
                    bail!("pg_recvlogical failed: {status}");
                }
                Ok(took)
            }
            Db::Mariadb { pool, .. } => {
                let (file, pos) = mark.split_once(':').context("mark")?;
                let mut conn = pool.get_conn().await?;
                let row: mysql_async::Row = conn
                    .query_first("SHOW MASTER STATUS")
                    .await?
                    .context("no binlog")?;
                let (end_file, end): (String, u64) =
                    (row.get(0).context("file")?, row.get(1).context("pos")?);
                if end_file != file {
                    bail!("the binary log rotated during the measure");
                }
                let started = Instant::now();
                let status = Command::new("mysqlbinlog")
                    .args([
                        "--read-from-remote-server",
                        "--host",
                        &env.get("MYSQL_HOST"),
                        "--port",
                        &env.get("MYSQL_PORT"),
                    ])
                    .args([
                        "--user",
                        &env.get("MYSQL_ADMIN_USER"),
                        &format!("--start-position={pos}"),
                        &format!("--stop-position={end}"),
                        file,
                    ])
                    .env("MYSQL_PWD", env.get("MYSQL_ADMIN_PASSWORD"))
                    .stdout(Stdio::null())
                    .status()
                    .await?;
                if !status.success() {
                    bail!("mysqlbinlog failed: {status}");
                }
                Ok(started.elapsed().as_secs_f64())
            }
        }
    }

    async fn drop(self) -> Result<()> {
        if let Db::Mariadb { pool, .. } = self {
            pool.disconnect().await?;
        }
        Ok(())
    }
}

fn mysql_opts(env: &TestEnv, db: Option<&str>, admin: bool) -> mysql_async::Opts {
    let (user, password) = if admin {
        (env.get("MYSQL_ADMIN_USER"), env.get("MYSQL_ADMIN_PASSWORD"))
    } else {
        (env.get("MYSQL_USER"), env.get("MYSQL_PASSWORD"))
    };
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(env.get("MYSQL_HOST"))
        .tcp_port(env.get("MYSQL_PORT").parse().unwrap_or(3306))
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
        .into()
}
