//! The bench databases: one per source server, created fresh, with the tables and loads the
//! scenarios use.
//!
//! Over 500 lines, knowingly: every load is written for PostgreSQL and MariaDB side by side,
//! which is how the two stay alike.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql_async::prelude::Queryable;
use tokio::process::Command;

const ENV_FILE: &str = "/tmp/etcd-sync-testenv/env";
/// Load generator connections for the stream scenarios.
pub const GENERATORS: u64 = 8;
pub const HUGE_ROWS: u64 = 500_000;

/// Rows of the one huge transaction, at the bench's scale.
pub fn huge_rows() -> u64 {
    crate::scenarios::scaled(HUGE_ROWS)
}

pub struct TestEnv(HashMap<String, String>);

impl TestEnv {
    pub fn load() -> Result<Self> {
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
    pub fn get(&self, key: &str) -> String {
        self.0.get(key).cloned().unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Source {
    Postgres,
    Mariadb,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Postgres => "postgres",
            Source::Mariadb => "mariadb",
        }
    }
}

/// The bench database, on either server.
pub enum Db {
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
    pub async fn create(env: &TestEnv, source: Source) -> Result<Db> {
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
                admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench%'", &[]).await?;
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

    /// The agent's config for `tables`, with a slot (PostgreSQL) and state of its own per `name`.
    pub fn config(&self, env: &TestEnv, etcd: &str, name: &str, tables: &[&str]) -> String {
        let (driver, port, user, password, db) = match self {
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
        // BENCH_DB_TLS=disable: the same without TLS to the database, to see what TLS costs.
        let tls = std::env::var("BENCH_DB_TLS")
            .map(|mode| format!("  tls:\n    mode: {mode}\n"))
            .unwrap_or_default();
        format!(
            "database:\n  driver: {driver}\n  port: {port}\n  user: {user}\n  password: {password}\n  name: {db}\n{tls}  postgres:\n    slot: bench_{name}\n    publication: bench_{name}\n\
             tables:\n  include: [{}]\netcd:\n  endpoints: [{etcd}]\n  prefix: /bench/{name}\n  state_prefix: /bench-state/{name}\n",
            tables.join(", ")
        )
    }

    /// Writes out what a bulk load left in memory: a checkpoint (PostgreSQL), dirty pages
    /// flushed (MariaDB).
    pub async fn flush(&self, env: &TestEnv) -> Result<()> {
        match self {
            Db::Postgres { name, .. } => {
                let admin = pg_connect(&format!(
                    "host={} port={} user={} password={} dbname={name}",
                    env.get("PG_HOST"),
                    env.get("PG_PORT"),
                    env.get("PG_ADMIN_USER"),
                    env.get("PG_ADMIN_PASSWORD")
                ))
                .await?;
                admin.batch_execute("CHECKPOINT").await?;
            }
            Db::Mariadb { pool, .. } => {
                let mut conn = pool.get_conn().await?;
                conn.query_drop("FLUSH TABLES").await?;
            }
        }
        Ok(())
    }

    /// Drops the replication slot of config `name` (PostgreSQL), as a lost slot would be.
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        if let Db::Postgres { client, .. } = self {
            let slot = format!("bench_{name}");
            // The walsender of a stopped agent may linger for a moment.
            for _ in 0..50 {
                let dropped = client
                    .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&slot])
                    .await?;
                let left = client
                    .query_one(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?
                    .get::<_, i64>(0);
                if dropped > 0 || left == 0 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("slot {slot} stays active");
        }
        Ok(())
    }

    pub async fn sql(&self, sql: &str) -> Result<()> {
        match self {
            Db::Postgres { client, .. } => client.batch_execute(sql).await?,
            Db::Mariadb { pool, .. } => pool.get_conn().await?.query_drop(sql).await?,
        }
        Ok(())
    }

    /// The scenarios' tables: `bench_accounts` as pgbench's (126-byte JSON values), the stream
    /// tables, and the catch-up table.
    pub async fn create_tables(&self) -> Result<()> {
        self.sql(
            "CREATE TABLE bench_accounts (aid bigint PRIMARY KEY, bid int, abalance int, filler char(84));
             CREATE TABLE bench_stream (id bigint PRIMARY KEY, payload varchar(200), at timestamp(6));
             CREATE TABLE bench_huge (id bigint PRIMARY KEY, payload varchar(100));
             CREATE TABLE bench_catchup (id bigint PRIMARY KEY, v int, payload char(84));",
        )
        .await
    }

    /// Adds accounts `from..=to`.
    pub async fn load_accounts(&self, from: u64, to: u64) -> Result<()> {
        // In slices, so that MariaDB's undo log and PostgreSQL's WAL stay small.
        let mut at = from;
        while at <= to {
            let end = (at + 499_999).min(to);
            match self {
                Db::Postgres { .. } => self.sql(&format!(
                    "INSERT INTO bench_accounts SELECT i, (i - 1) / 100000 + 1, 0, '' FROM generate_series({at}, {end}) i"
                )).await?,
                Db::Mariadb { .. } => self.sql(&format!(
                    "INSERT INTO bench_accounts SELECT seq, (seq - 1) DIV 100000 + 1, 0, '' FROM seq_{at}_to_{end}"
                )).await?,
            }
            at = end + 1;
        }
        match self {
            Db::Postgres { .. } => self.sql("VACUUM ANALYZE bench_accounts").await,
            Db::Mariadb { .. } => self.sql("ANALYZE TABLE bench_accounts").await,
        }
    }

    /// Commits `rows` single-row inserts, then as many single-row updates, from
    /// [`GENERATORS`] connections, then one marker row (id 0): once etcd has the marker, it has
    /// every transaction before it.
    pub async fn catchup_load(&self, rows: u64) -> Result<()> {
        let per = rows / GENERATORS;
        for statement in ["insert", "update"] {
            let mut tasks = Vec::new();
            for g in 0..GENERATORS {
                let ids = (1 + g * per)..=((g + 1) * per);
                tasks.push(self.single_row_txns(statement, ids).await?);
            }
            for task in tasks {
                task.await??;
            }
        }
        self.sql("INSERT INTO bench_catchup VALUES (0, 0, 'marker')")
            .await
    }

    async fn single_row_txns(
        &self,
        statement: &'static str,
        ids: std::ops::RangeInclusive<u64>,
    ) -> Result<tokio::task::JoinHandle<Result<()>>> {
        Ok(match self {
            Db::Postgres { conn, .. } => {
                let client = pg_connect(conn).await?;
                tokio::spawn(async move {
                    let sql = if statement == "insert" {
                        "INSERT INTO bench_catchup VALUES ($1, 1, 'x')"
                    } else {
                        "UPDATE bench_catchup SET v = 2 WHERE id = $1"
                    };
                    let prepared = client.prepare(sql).await?;
                    for id in ids {
                        client.execute(&prepared, &[&(id as i64)]).await?;
                    }
                    Ok(())
                })
            }
            Db::Mariadb { opts, .. } => {
                let mut conn = mysql_async::Conn::new(opts.clone()).await?;
                tokio::spawn(async move {
                    let sql = if statement == "insert" {
                        "INSERT INTO bench_catchup VALUES (?, 1, 'x')"
                    } else {
                        "UPDATE bench_catchup SET v = 2 WHERE id = ?"
                    };
                    let prepared = conn.prep(sql).await?;
                    for id in ids {
                        conn.exec_drop(&prepared, (id,)).await?;
                    }
                    Ok(())
                })
            }
        })
    }

    /// Marks where the source measure starts: a second slot (PostgreSQL) or the binary-log
    /// coordinates (MariaDB).
    pub async fn prepare_source_measure(&self) -> Result<String> {
        match self {
            Db::Postgres { client, .. } => {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot('bench_source', 'pgoutput')",
                        &[],
                    )
                    .await?;
                Ok("bench_source".into())
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
    pub async fn generate(
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
                        let client = Arc::clone(&client);
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
                        let conn = Arc::clone(&conn);
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
    pub async fn huge_transaction(&self) -> Result<Instant> {
        match self {
            Db::Postgres { .. } => self.sql(&format!("INSERT INTO bench_huge SELECT i, md5(i::text) || md5((i+1)::text) FROM generate_series(1, {}) i", huge_rows())).await?,
            Db::Mariadb { .. } => self.sql(&format!("INSERT INTO bench_huge SELECT seq, CONCAT(MD5(seq), MD5(seq+1)) FROM seq_1_to_{}", huge_rows())).await?,
        }
        Ok(Instant::now())
    }

    /// Reads the change stream from the mark to now without applying it; returns seconds.
    pub async fn drain_source(&self, env: &TestEnv, mark: String) -> Result<f64> {
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
                        "publication_names=bench_stream",
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

    pub async fn drop(self) -> Result<()> {
        if let Db::Mariadb { pool, .. } = self {
            pool.disconnect().await?;
        }
        Ok(())
    }
}

pub fn mysql_opts(env: &TestEnv, db: Option<&str>, admin: bool) -> mysql_async::Opts {
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
