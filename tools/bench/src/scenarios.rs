//! The dump and catch-up scenarios, per etcd version and source.
//!
//! Over 500 lines, knowingly: the scenarios share the bench's state (results, ceilings, the
//! settle step) and read best together, in the order the bench runs them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use etcd_client::DeleteOptions;

use crate::agent::Agent;
use crate::ceiling;
use crate::cpu::{context_switches, cpu_seconds_tree, Cpu};
use crate::db::{Db, Source, TestEnv};
use crate::load::CpuLoad;
use crate::measure::Measure;
use crate::proxy::DelayProxy;
use crate::server::{find_process, http_get, metric, txn_handling, Disk, EtcdServer, EtcdVersion};
use crate::stream;
use crate::ETCD_PORT;

/// The JSON value size of a `bench_accounts` row, as pgbench's accounts give.
pub const VALUE_BYTES: usize = 126;
/// Rows of the dumps whose time is plotted against their size.
const DUMP_SIZES: [u64; 3] = [1_000_000, 2_000_000, 4_000_000];
/// Rounds of the 1M first dump and of the catch-up, each against a ceiling measured right
/// before it; the checks take the median (one round's etcd ran ±10–20% off the next's).
const ROUNDS: usize = 3;
/// Catch-up: this many single-row inserts, then as many single-row updates.
const CATCHUP_ROWS: u64 = 100_000;
const SEQUENTIAL_CEILING_KEYS: u64 = 200_000;
/// The count that holds a scenario's ratio to the ceiling beside its own CPU load.
const CONTENDED_RATIO: &str = "ratio to the ceiling beside as much CPU load";

/// `BENCH_SCALE=0.1` runs every scenario at a tenth of its size (to try the bench out).
pub fn scaled(n: u64) -> u64 {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as u64).max(1)
}

fn per_txn_ms(seconds: f64, txns: f64) -> f64 {
    if txns > 0.0 {
        1000.0 * seconds / txns
    } else {
        0.0
    }
}

/// `BENCH_ONLY=catchup` runs the catch-up scenarios alone (a minute per etcd and source).
fn only_catchup() -> bool {
    std::env::var("BENCH_ONLY").is_ok_and(|v| v == "catchup")
}

/// `BENCH_ONLY=redump` runs the 1M first dump and the re-dump alone (a minute per etcd and
/// source).
fn only_redump() -> bool {
    std::env::var("BENCH_ONLY").is_ok_and(|v| v == "redump")
}

pub struct Bench {
    pub env: TestEnv,
    pub dir: PathBuf,
    pub agent_bin: PathBuf,
    pub results: Vec<Measure>,
}

impl Bench {
    pub async fn run_version(&mut self, version: &EtcdVersion) -> Result<()> {
        for source in [Source::Postgres, Source::Mariadb] {
            let db = Db::create(&self.env, source).await?;
            db.create_tables().await?;
            if only_catchup() {
                for _ in 0..ROUNDS {
                    Box::pin(self.catchup(version, source, &db)).await?;
                }
                db.drop().await?;
                continue;
            }
            let parallel = Box::pin(self.dumps(version, source, &db)).await?;
            if only_redump() {
                db.drop().await?;
                continue;
            }
            for _ in 0..ROUNDS {
                Box::pin(self.catchup(version, source, &db)).await?;
            }
            if version.label == "3.4" {
                self.streams(version, source, &db, parallel).await?;
            }
            db.drop().await?;
        }
        Ok(())
    }

    fn base(&self, version: &EtcdVersion, source: &str, scenario: &str) -> Measure {
        Measure {
            etcd: version.label.clone(),
            source: source.into(),
            scenario: scenario.into(),
            ..Default::default()
        }
    }

    /// etcd's ingest ceiling for `keys` keys with `in_flight` txns of 127 puts, on a fresh etcd,
    /// measured right before the scenario it is the baseline of (`for`): these machines drift
    /// by ±20% within minutes, so a baseline taken at the start of the run would not do.
    ///
    /// `beside`: cores of CPU load to run beside it (see `load`), for the ceiling a scenario's
    /// own processes left etcd.
    async fn ceiling(
        &mut self,
        version: &EtcdVersion,
        keys: u64,
        in_flight: usize,
        baseline_of: &str,
        beside: Option<f64>,
    ) -> Result<f64> {
        // A port of its own: the scenario's etcd may be up already.
        let etcd = EtcdServer::start(&self.dir, version, ETCD_PORT + 10).await?;
        // etcd at a distance: the ceiling's client goes through the same delay as the agent.
        let (client, _proxy) = match etcd_delay() {
            Some(delay) if in_flight == 1 => {
                let proxy = DelayProxy::start(ETCD_PORT + 31, &etcd.url, delay).await?;
                let client =
                    Box::pin(etcd_client::Client::connect([proxy.url.as_str()], None)).await?;
                (client, Some(proxy))
            }
            _ => (etcd.client.clone(), None),
        };
        let load = beside.map(CpuLoad::start);
        let disk = Disk::of(&etcd.url).await?;
        let cpu = Cpu::etcd(&etcd);
        let rate = ceiling::measure(
            &client,
            "/bench-ceiling/items/",
            keys,
            in_flight,
            VALUE_BYTES,
        )
        .await?;
        let cores = Cpu::etcd(&etcd).cores_since(&cpu, keys as f64 / rate);
        drop(load);
        let beside_label = beside.map_or(String::new(), |c| {
            format!(" beside a {c:.2}-core CPU load (as much as the agent and the database used)")
        });
        let (txns, handling) = txn_handling(&etcd.url).await?;
        let disk = Disk::of(&etcd.url).await?.counts_since(&disk);
        etcd.stop().await?;
        println!(
            "etcd {}: ceiling {} puts/txn x {in_flight} in flight{beside_label}, {keys} keys: {rate:.0} keys/s (baseline of {baseline_of})",
            version.label,
            ceiling::TXN_PUTS
        );
        let seconds = keys as f64 / rate;
        self.results.push(Measure {
            rows: Some(keys),
            seconds: Some(seconds),
            rate: Some(rate),
            ratio: Some(1.0),
            cores: Some(cores),
            counts: {
                let mut counts = vec![
                    ("etcd txns".into(), txns),
                    ("etcd ms per txn".into(), per_txn_ms(handling, txns)),
                ];
                // With one txn in flight the wall time per txn is what the client waited.
                if in_flight == 1 {
                    counts.push(("client ms per txn".into(), per_txn_ms(seconds, txns)));
                }
                counts.extend(disk);
                counts
            },
            ..self.base(
                version,
                "etcd",
                &format!(
                    "ceiling, {} puts/txn x {in_flight} in flight{beside_label} (baseline of {baseline_of})",
                    ceiling::TXN_PUTS
                ),
            )
        });
        if let Some(m) = self.results.last() {
            println!("  {:?}", m.counts);
        }
        Ok(rate)
    }

    fn config(&self, db: &Db, etcd: &EtcdServer, name: &str, tables: &[&str]) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, db.config(&self.env, &etcd.url, name, tables))?;
        Ok(path)
    }

    fn db_pid(&self, source: Source) -> Option<u32> {
        match source {
            Source::Postgres => {
                let pid =
                    std::fs::read_to_string("/tmp/etcd-sync-testenv/pg/postmaster.pid").ok()?;
                pid.lines().next()?.trim().parse().ok()
            }
            Source::Mariadb => find_process(&[
                "mariadbd",
                &format!("--port={}", self.env.get("MYSQL_PORT")),
            ]),
        }
    }

    /// First dumps of 1M, 2M and 4M rows, each into a fresh etcd, and a re-dump over the 1M
    /// keys after 10% of the rows were deleted.
    async fn dumps(&mut self, version: &EtcdVersion, source: Source, db: &Db) -> Result<f64> {
        let mut loaded = 0;
        let mut first_ceiling = 0.0;
        for rows in DUMP_SIZES.map(scaled) {
            db.load_accounts(loaded + 1, rows).await?;
            loaded = rows;
            let (ceiling, etcd, m) = Box::pin(self.first_dump(version, source, db, rows)).await?;
            if first_ceiling == 0.0 {
                first_ceiling = ceiling;
            }
            let first = self.results.len();
            self.results.push(m);
            if rows == scaled(DUMP_SIZES[0]) {
                // Re-dump: the rows' keys are there, 10% of the rows are not, the state is gone
                // (as after a lost slot or a purged binary log).
                db.sql("DELETE FROM bench_accounts WHERE aid % 10 = 0")
                    .await?;
                db.drop_slot("accounts").await?;
                etcd.client
                    .kv_client()
                    .delete(
                        "/bench-state/accounts/",
                        Some(DeleteOptions::new().with_prefix()),
                    )
                    .await?;
                let m = self
                    .dump_once(
                        version,
                        source,
                        db,
                        &etcd,
                        rows * 9 / 10,
                        "re-dump over 1M keys, 10% deleted",
                        ceiling,
                    )
                    .await?;
                let left = etcd
                    .client
                    .kv_client()
                    .get(
                        "/bench/accounts/",
                        Some(
                            etcd_client::GetOptions::new()
                                .with_prefix()
                                .with_count_only(),
                        ),
                    )
                    .await?
                    .count();
                if left as u64 != rows * 9 / 10 {
                    bail!(
                        "after the re-dump etcd holds {left} keys, not {}",
                        rows * 9 / 10
                    );
                }
                self.results.push(m);
                db.sql("DELETE FROM bench_accounts").await?;
                db.load_accounts(1, rows).await?;
            }
            etcd.stop().await?;
            if only_redump() {
                break;
            }
            if rows == scaled(DUMP_SIZES[0]) {
                // After the re-dump, which a second etcd of 1M keys just before slowed down.
                self.settle(db, source).await?;
                let mut m = self.results.remove(first);
                self.against_contended(version, &mut m, rows, 16).await?;
                self.results.insert(first, m);
                // More rounds of the first dump alone, each against its own ceiling.
                for _ in 1..ROUNDS {
                    let (_, etcd, m) = Box::pin(self.first_dump(version, source, db, rows)).await?;
                    self.results.push(m);
                    etcd.stop().await?;
                }
            }
        }
        Ok(first_ceiling)
    }

    /// A first dump of the `rows` loaded, into a fresh etcd, against a ceiling measured right
    /// before it: the ceiling, the etcd (still running) and the measure.
    async fn first_dump(
        &mut self,
        version: &EtcdVersion,
        source: Source,
        db: &Db,
        rows: u64,
    ) -> Result<(f64, EtcdServer, Measure)> {
        db.drop_slot("accounts").await?;
        self.settle(db, source).await?;
        let ceiling = Box::pin(self.ceiling(
            version,
            rows,
            16,
            &format!("{} dump of {rows}", source.name()),
            None,
        ))
        .await?;
        let etcd = EtcdServer::start(&self.dir, version, ETCD_PORT).await?;
        let m = self
            .dump_once(version, source, db, &etcd, rows, "first dump", ceiling)
            .await?;
        Ok((ceiling, etcd, m))
    }

    /// Waits until the database server has gone quiet (under 5% of a core over a second, for
    /// at most a minute): a bulk load leaves checkpoints, purge and flushing behind, and they
    /// would compete with the scenario for the same two cores.
    async fn settle(&self, db: &Db, source: Source) -> Result<()> {
        db.flush(&self.env).await?;
        let Some(pid) = self.db_pid(source) else {
            return Ok(());
        };
        for _ in 0..60 {
            let before = cpu_seconds_tree(pid);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if cpu_seconds_tree(pid) - before < 0.05 {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn dump_once(
        &self,
        version: &EtcdVersion,
        source: Source,
        db: &Db,
        etcd: &EtcdServer,
        rows: u64,
        scenario: &str,
        ceiling: f64,
    ) -> Result<Measure> {
        let config = self.config(db, etcd, "accounts", &["bench_accounts"])?;
        let name = source.name();
        let log = self.dir.join(format!(
            "agent-{}-{name}-{}-{rows}.log",
            version.label,
            scenario.split(' ').next().unwrap_or("")
        ));
        self.settle(db, source).await?;
        let db_pid = self.db_pid(source);
        let (txns_before, handling_before) = txn_handling(&etcd.url).await?;
        let disk = Disk::of(&etcd.url).await?;
        let before = Cpu::before_agent(etcd, db_pid);
        let mut agent = Agent::start(&self.agent_bin, &config, log)?;
        let seconds = agent
            .wait_for_sync(&etcd.client, "/bench-state/accounts")
            .await?;
        let after = Cpu::now(&agent, etcd, db_pid);
        let (txns_after, handling_after) = txn_handling(&etcd.url).await?;
        let disk = Disk::of(&etcd.url).await?.counts_since(&disk);
        let rss = agent.peak_rss_mb()?;
        agent.stop().await?;
        let at = |needle: &str| agent.phase_seconds(needle);
        let started = at("dump started").unwrap_or(0.0);
        let written = at("dump phase 1/3").unwrap_or(started);
        let stale = at("dump phase 2/3").unwrap_or(written);
        let state = at("dump phase 3/3").unwrap_or(stale);
        let phases = vec![
            ("start-up".to_owned(), started),
            ("rows written".to_owned(), written - started),
            ("stale-key pass".to_owned(), stale - written),
            ("state commit".to_owned(), state - stale),
            ("state seen".to_owned(), (seconds - state).max(0.0)),
        ];
        let log_text = std::fs::read_to_string(&agent.log).unwrap_or_default();
        let field = |name: &str| -> Option<f64> {
            log_text
                .lines()
                .filter(|l| l.contains("dump phase 2/3"))
                .flat_map(|l| l.split_whitespace())
                .find_map(|w| {
                    w.strip_prefix(&format!("{name}="))?
                        .trim_matches('"')
                        .parse()
                        .ok()
                })
        };
        let mut counts = Vec::new();
        for name in [
            "stale_keys_deleted",
            "keys_listed",
            "etcd_requests",
            "keys_counted_by_etcd",
        ] {
            if let Some(v) = field(name) {
                counts.push((name.to_owned(), v));
            }
        }
        let txns = txns_after - txns_before;
        counts.push(("etcd txns".into(), txns));
        counts.push((
            "etcd ms per txn".into(),
            per_txn_ms(handling_after - handling_before, txns),
        ));
        counts.extend(disk);
        let rate = rows as f64 / seconds;
        let m = Measure {
            rows: Some(rows),
            seconds: Some(seconds),
            rate: Some(rate),
            ratio: Some(rate / ceiling),
            against: Some("parallel"),
            phases,
            counts,
            peak_rss_mb: Some(rss),
            cores: Some(after.cores_since(&before, seconds)),
            ..self.base(version, name, scenario)
        };
        println!(
            "etcd {} {name}: {scenario} of {rows} rows: {seconds:.1} s, {rate:.0} rows/s, {:.2} of the ceiling; phases {:?}; {:?}; RSS {rss:.0} MB; cores {:?}",
            version.label,
            rate / ceiling,
            m.phases,
            m.counts,
            m.cores
        );
        Ok(m)
    }

    /// 200,000 single-row transactions committed while the agent was stopped, applied from
    /// the agent's start to the marker row's key in etcd.
    async fn catchup(&mut self, version: &EtcdVersion, source: Source, db: &Db) -> Result<()> {
        let etcd = EtcdServer::start(&self.dir, version, ETCD_PORT).await?;
        db.drop_slot("catchup").await?;
        // Empty, as in the first round (no slot exists now: nothing streams this).
        db.sql("TRUNCATE bench_catchup").await?;
        let config = self.config(db, &etcd, "catchup", &["bench_catchup"])?;
        let metrics = format!("127.0.0.1:{}", ETCD_PORT + 20);
        let mut text =
            std::fs::read_to_string(&config)? + &format!("metrics:\n  listen: {metrics}\n");
        let _proxy = match etcd_delay() {
            Some(delay) => {
                let proxy = DelayProxy::start(ETCD_PORT + 30, &etcd.url, delay).await?;
                text = text.replace(&etcd.url, &proxy.url);
                Some(proxy)
            }
            None => None,
        };
        std::fs::write(&config, text)?;
        let name = source.name();
        let mut agent = Agent::start(
            &self.agent_bin,
            &config,
            self.dir
                .join(format!("agent-{}-{name}-catchup-dump.log", version.label)),
        )?;
        agent
            .wait_for_sync(&etcd.client, "/bench-state/catchup")
            .await?;
        agent.stop().await?;
        let started = std::time::Instant::now();
        db.catchup_load(scaled(CATCHUP_ROWS)).await?;
        println!(
            "etcd {} {name}: {} single-row transactions committed in {:.1} s",
            version.label,
            2 * scaled(CATCHUP_ROWS) + 1,
            started.elapsed().as_secs_f64()
        );
        self.settle(db, source).await?;
        let sequential = Box::pin(self.ceiling(
            version,
            scaled(SEQUENTIAL_CEILING_KEYS),
            1,
            &format!("{name} catch-up"),
            None,
        ))
        .await?;
        let db_pid = self.db_pid(source);
        let before = Cpu::before_agent(&etcd, db_pid);
        let mut agent = Agent::start(
            &self.agent_bin,
            &config,
            self.dir
                .join(format!("agent-{}-{name}-catchup.log", version.label)),
        )?;
        let marker = "/bench/catchup/bench_catchup/0";
        let (txns_before, handling_before) = txn_handling(&etcd.url).await?;
        let seconds = agent.wait_for_key(&etcd.client, marker).await?;
        let after = Cpu::now(&agent, &etcd, db_pid);
        let switches = agent.pid().map_or(0.0, context_switches);
        let (txns_after, handling_after) = txn_handling(&etcd.url).await?;
        let agent_metrics = http_get(&metrics, "/metrics").await?;
        let agent_txns = metric(
            &agent_metrics,
            "etcd_sync_etcd_txn_duration_seconds_count",
            "",
        );
        let agent_txn_seconds = metric(
            &agent_metrics,
            "etcd_sync_etcd_txn_duration_seconds_sum",
            "",
        );
        let rss = agent.peak_rss_mb()?;
        let resumed = agent.phase_seconds("resuming the stream").unwrap_or(0.0);
        agent.stop().await?;
        etcd.stop().await?;
        let txns = 2 * scaled(CATCHUP_ROWS) + 1;
        let rate = txns as f64 / seconds;
        println!(
            "etcd {} {name}: catch-up of {txns} transactions: {seconds:.1} s, {rate:.0} txns/s, {:.2} of the sequential ceiling",
            version.label,
            rate / sequential
        );
        let mut m = Measure {
            rows: Some(txns),
            seconds: Some(seconds),
            rate: Some(rate),
            ratio: Some(rate / sequential),
            against: Some("sequential"),
            phases: vec![
                ("start-up".into(), resumed),
                ("applying".into(), seconds - resumed),
            ],
            counts: vec![
                ("etcd txns".into(), txns_after - txns_before),
                (
                    "etcd ms per txn".into(),
                    per_txn_ms(handling_after - handling_before, txns_after - txns_before),
                ),
                (
                    "agent ms per txn".into(),
                    per_txn_ms(agent_txn_seconds, agent_txns),
                ),
                ("agent context switches".into(), switches),
            ],
            peak_rss_mb: Some(rss),
            cores: Some(after.cores_since(&before, seconds)),
            ..self.base(
                version,
                name,
                &match etcd_delay() {
                    Some(delay) => format!(
                        "catch-up, 200k single-row txns, etcd {:.1} ms away",
                        delay.as_secs_f64() * 1000.0
                    ),
                    None => "catch-up, 200k single-row txns".into(),
                },
            )
        };
        self.against_contended(version, &mut m, scaled(SEQUENTIAL_CEILING_KEYS), 1)
            .await?;
        println!("  {:?}", m.counts);
        self.results.push(m);
        Ok(())
    }

    /// Adds to `m`'s counts its rate as a ratio to etcd's ceiling beside as much CPU load as
    /// its agent and database used (see `load`): what etcd could have taken with that CPU
    /// spent by anything else.
    async fn against_contended(
        &mut self,
        version: &EtcdVersion,
        m: &mut Measure,
        keys: u64,
        in_flight: usize,
    ) -> Result<()> {
        let Some(cores) = m.cores else {
            return Ok(());
        };
        let contended = Box::pin(self.ceiling(
            version,
            keys,
            in_flight,
            &format!("{} {}", m.source, m.scenario),
            Some(cores.agent + cores.db),
        ))
        .await?;
        m.counts
            .push((CONTENDED_RATIO.into(), m.rate.unwrap_or(0.0) / contended));
        Ok(())
    }

    async fn streams(
        &mut self,
        version: &EtcdVersion,
        source: Source,
        db: &Db,
        parallel: f64,
    ) -> Result<()> {
        let etcd = EtcdServer::start(&self.dir, version, ETCD_PORT).await?;
        let config = self.config(db, &etcd, "stream", &["bench_stream", "bench_huge"])?;
        let mut agent = Agent::start(
            &self.agent_bin,
            &config,
            self.dir.join(format!(
                "agent-{}-{}-stream.log",
                version.label,
                source.name()
            )),
        )?;
        agent
            .wait_for_sync(&etcd.client, "/bench-state/stream")
            .await?;
        let base = self.base(version, source.name(), "");
        let measures = stream::run(
            &self.env,
            &etcd,
            db,
            source,
            &agent,
            "/bench/stream",
            self.db_pid(source),
            parallel,
            &base,
        )
        .await?;
        self.results.extend(measures);
        agent.stop().await?;
        etcd.stop().await
    }
}

/// The median of `values` (the lower middle one of an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// How a check's value came about: the median and each round's value, when there were rounds.
fn rounds_note(values: &[f64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    format!(" (median of {} rounds: {})", values.len(), each.join(", "))
}

/// The targets, from the results: (check, value, target, met). A scenario run in rounds counts
/// by its median.
pub fn checks(results: &[Measure]) -> Vec<(String, f64, String, bool)> {
    let mut out = Vec::new();
    let all = |etcd: &str, source: &str, scenario: &str, rows: u64| -> Vec<&Measure> {
        results
            .iter()
            .filter(|m| {
                m.etcd == etcd
                    && m.source == source
                    && m.scenario == scenario
                    && m.rows == Some(rows)
            })
            .collect()
    };
    let mut keys: Vec<(String, String)> = results
        .iter()
        .filter(|m| m.source != "etcd")
        .map(|m| (m.etcd.clone(), m.source.clone()))
        .collect();
    keys.dedup();
    let ceiling = |etcd: &str, source: &str, rows: u64| {
        results.iter().find(|m| {
            m.etcd == etcd
                && m.source == "etcd"
                && m.scenario
                    .ends_with(&format!("(baseline of {source} dump of {rows})"))
        })
    };
    for (etcd, source) in keys {
        let label = format!("etcd {etcd} {source}");
        if let (Some(one), Some(four)) = (
            ceiling(&etcd, &source, scaled(DUMP_SIZES[0])),
            ceiling(&etcd, &source, scaled(DUMP_SIZES[2])),
        ) {
            let r = four.seconds.unwrap_or(0.0) / one.seconds.unwrap_or(1.0);
            out.push((
                format!(
                    "{label}: etcd alone, ceiling time for 4M keys / for 1M keys (first round)"
                ),
                r,
                "for reference".into(),
                true,
            ));
        }
        let ones = all(&etcd, &source, "first dump", scaled(DUMP_SIZES[0]));
        let one_ratios: Vec<f64> = ones.iter().filter_map(|m| m.ratio).collect();
        let one_seconds: Vec<f64> = ones.iter().filter_map(|m| m.seconds).collect();
        let one = median(one_seconds.clone());
        let four = all(&etcd, &source, "first dump", scaled(DUMP_SIZES[2]))
            .first()
            .and_then(|m| m.seconds);
        let redump = all(
            &etcd,
            &source,
            "re-dump over 1M keys, 10% deleted",
            scaled(DUMP_SIZES[0]) * 9 / 10,
        )
        .first()
        .and_then(|m| m.seconds);
        if let Some(r) = median(one_ratios.clone()) {
            out.push((
                format!(
                    "{label}: 1M dump, ratio to the ceiling{}",
                    rounds_note(&one_ratios)
                ),
                r,
                "≥ 0.85".into(),
                r >= 0.85,
            ));
            if let Some(r) = ones.first().and_then(|m| contended(m)) {
                out.push((
                    format!("{label}: 1M dump, ratio to the ceiling beside as much CPU load (first round)"),
                    r,
                    "for reference".into(),
                    true,
                ));
            }
        }
        let of_one = rounds_note(&one_seconds).replace("median of", "1M: median of");
        if let (Some(one), Some(four)) = (one, four) {
            let r = four / one;
            out.push((
                format!("{label}: 4M dump time / 1M dump time{of_one}"),
                r,
                "≤ 4.4".into(),
                r <= 4.4,
            ));
        }
        if let (Some(one), Some(redump)) = (one, redump) {
            let r = redump / one;
            out.push((
                format!("{label}: re-dump time / first dump time{of_one}"),
                r,
                "≤ 1.3".into(),
                r <= 1.3,
            ));
        }
        let dump_rss: Vec<f64> = results
            .iter()
            .filter(|m| m.etcd == etcd && m.source == source && m.scenario.contains("dump"))
            .filter_map(|m| m.peak_rss_mb)
            .collect();
        let rss = dump_rss.iter().copied().fold(0.0, f64::max);
        // (No dumps: `BENCH_ONLY=catchup`.)
        out.extend((!dump_rss.is_empty()).then(|| {
            (
                format!("{label}: peak RSS of the dumps (MB)"),
                rss,
                "≤ 100".into(),
                rss <= 100.0,
            )
        }));
        let catchups: Vec<&Measure> = results
            .iter()
            .filter(|m| m.etcd == etcd && m.source == source && m.scenario.starts_with("catch-up"))
            .collect();
        let ratios: Vec<f64> = catchups.iter().filter_map(|m| m.ratio).collect();
        if let Some(r) = median(ratios.clone()) {
            out.push((
                format!(
                    "{label}: catch-up, ratio to the sequential ceiling{}",
                    rounds_note(&ratios)
                ),
                r,
                "≥ 0.70".into(),
                r >= 0.70,
            ));
            let beside: Vec<f64> = catchups.iter().filter_map(|m| contended(m)).collect();
            if let Some(r) = median(beside.clone()) {
                out.push((
                    format!(
                        "{label}: catch-up, ratio to the sequential ceiling beside as much CPU load{}",
                        rounds_note(&beside)
                    ),
                    r,
                    "for reference".into(),
                    true,
                ));
            }
        }
    }
    out
}

fn contended(m: &Measure) -> Option<f64> {
    m.counts
        .iter()
        .find(|(name, _)| name == CONTENDED_RATIO)
        .map(|(_, r)| *r)
}

/// `BENCH_ETCD_DELAY_MS`: etcd as far away as this, each way, for the catch-ups and their
/// sequential ceilings (a proxy on loopback adds it).
fn etcd_delay() -> Option<std::time::Duration> {
    let ms: f64 = std::env::var("BENCH_ETCD_DELAY_MS").ok()?.parse().ok()?;
    (ms > 0.0).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
}
