//! Test support: the servers of `make testenv`, one database, slot and etcd prefix per test,
//! and the `sync` binary run as a user runs it.
//!
//! A test that finds no server fails with a message saying to run `make testenv`; it never
//! passes silently.
//!
//! Here: the environment and the [`World`] (one database, slot and prefix per test, with its
//! SQL helpers for both databases, kept together as every test uses them: that is why this file
//! is over 500 lines). Beside it: `etcd` (reads and waits), `agent`, `servers`, `cluster` (an
//! etcd cluster of a test's own), `bank` (the transfer workload and its history check), `proxy`,
//! `replicas` (the database on other servers), `cases`, `twins`, `util`.

#![allow(dead_code)]

mod agent;
mod bank;
mod cases;
mod cluster;
mod etcd;
mod proxy;
mod replicas;
mod servers;
mod twins;
mod util;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use agent::Agent;
#[allow(unused_imports)]
pub use bank::{Transfers, ACCOUNTS, BALANCE};
#[allow(unused_imports)]
pub use cases::{check_cases, secure_etcd_client, Case};
#[allow(unused_imports)]
pub use cluster::{connected_ports, EtcdCluster};
#[allow(unused_imports)]
pub use proxy::CuttingProxy;
#[allow(unused_imports)]
pub use servers::{kill_server, restart_server, start_server, OwnEtcd};
#[allow(unused_imports)]
pub use util::{free_port, http_get, metric, Rng};

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use etcd_client::{Client as Etcd, DeleteOptions};
use tokio_postgres::{Client, NoTls};

pub const ENV_FILE: &str = "/tmp/etcd-sync-testenv/env";
/// How long an agent may take to reach the sync phase, and etcd to converge after changes.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection settings written by `tools/testenv.sh`.
#[derive(Clone, Debug)]
pub struct TestEnv {
    vars: HashMap<String, String>,
}

impl TestEnv {
    pub fn load() -> Self {
        let mut vars = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(ENV_FILE) {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        for (k, v) in std::env::vars() {
            if k.starts_with("ETCD_SYNC_TEST_") {
                vars.insert(k, v);
            }
        }
        assert!(
            vars.contains_key("ETCD_SYNC_TEST_PG_PORT"),
            "no test environment: run `make testenv` (it writes {ENV_FILE})"
        );
        if let Some(etcd34) = vars.get("ETCD_SYNC_TEST_ETCD").cloned() {
            vars.insert("ETCD_SYNC_TEST_ETCD34".into(), etcd34);
        }
        // `ETCD_SYNC_TEST_ETCD_VERSION=3.5`: the whole suite against etcd 3.5 instead of 3.4
        // (`make test` runs it both ways). Every world checks the version it got.
        if let Some(version) = vars.get("ETCD_SYNC_TEST_ETCD_VERSION").cloned() {
            let key = match version.as_str() {
                "3.4" => "ETCD_SYNC_TEST_ETCD34",
                "3.5" => "ETCD_SYNC_TEST_ETCD35",
                other => panic!("ETCD_SYNC_TEST_ETCD_VERSION={other}: 3.4 or 3.5"),
            };
            let endpoint = vars
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{key} missing from {ENV_FILE}: run `make testenv`"));
            vars.insert("ETCD_SYNC_TEST_ETCD".into(), endpoint);
        }
        Self { vars }
    }

    /// The etcd version the suite runs against ("3.4" unless `ETCD_SYNC_TEST_ETCD_VERSION`).
    pub fn etcd_version(&self) -> String {
        self.vars
            .get("ETCD_SYNC_TEST_ETCD_VERSION")
            .cloned()
            .unwrap_or_else(|| "3.4".into())
    }

    /// The etcd binary of that version, for tests that run an etcd of their own.
    pub fn etcd_binary(&self) -> String {
        match self.etcd_version().as_str() {
            "3.5" => self.get("ETCD35_BIN"),
            _ => "etcd".into(),
        }
    }

    pub fn get(&self, name: &str) -> String {
        self.vars
            .get(&format!("ETCD_SYNC_TEST_{name}"))
            .cloned()
            .unwrap_or_else(|| {
                panic!("ETCD_SYNC_TEST_{name} missing from {ENV_FILE}: run `make testenv`")
            })
    }

    pub fn etcd_endpoint(&self) -> String {
        self.get("ETCD")
    }

    /// The same settings with the server at `port_key` standing in for the shared one (the
    /// fault tests restart their own servers).
    fn on_faults_servers(mut self) -> Self {
        for (shared, own) in [
            ("PG_PORT", "PG_FAULTS_PORT"),
            ("MYSQL_PORT", "MYSQL_FAULTS_PORT"),
        ] {
            let port = self.get(own);
            self.vars.insert(format!("ETCD_SYNC_TEST_{shared}"), port);
        }
        self
    }
}

/// The test's source database connection.
pub enum Source {
    Postgres(Client),
    Mysql(mysql_async::Pool),
}

/// One test's world: its database, slot, publication and etcd prefixes.
pub struct World {
    /// etcd endpoint when the test runs its own etcd instead of the test environment's.
    pub etcd_endpoint: String,
    pub env: TestEnv,
    pub name: String,
    pub source: Source,
    pub etcd: Etcd,
    pub dir: PathBuf,
    pub extra_config: String,
    /// Lines added to the config's `etcd:` section (TLS, user).
    pub etcd_extra_config: String,
}

fn mysql_pool(
    env: &TestEnv,
    port: &str,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> mysql_async::Pool {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(env.get("MYSQL_HOST"))
        .tcp_port(port.parse().unwrap())
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false);
    mysql_async::Pool::new(opts)
}

/// Runs statements on a MySQL pool, one at a time (multi-statement text is split on `;\n`).
async fn mysql_exec(pool: &mysql_async::Pool, sql: &str) {
    use mysql_async::prelude::Queryable;
    let mut conn = pool
        .get_conn()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB ({e}): run `make testenv`"));
    conn.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn pg_connect(env: &TestEnv, port: &str, user: &str, password: &str, db: &str) -> Client {
    let conn = format!(
        "host={} port={port} user={user} password={password} dbname={db}",
        env.get("PG_HOST")
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to PostgreSQL on port {port} ({e}): run `make testenv`")
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl World {
    /// A fresh MariaDB database `m_<name>` and empty etcd prefixes.
    pub async fn new_mysql(name: &str) -> World {
        Self::new_mysql_in(TestEnv::load(), name).await
    }

    /// [`World::new_mysql`] on the MariaDB that the fault tests may restart.
    pub async fn new_mysql_on_faults_server(name: &str) -> World {
        Self::new_mysql_in(TestEnv::load().on_faults_servers(), name).await
    }

    /// [`World::new`] on the PostgreSQL that the fault tests may restart.
    pub async fn new_on_faults_server(name: &str) -> World {
        Self::new_in(TestEnv::load().on_faults_servers(), name).await
    }

    async fn new_mysql_in(env: TestEnv, name: &str) -> World {
        let name = format!("m_{name}");
        let admin = mysql_pool(
            &env,
            &env.get("MYSQL_PORT"),
            &env.get("MYSQL_ADMIN_USER"),
            &env.get("MYSQL_ADMIN_PASSWORD"),
            None,
        );
        mysql_exec(&admin, &format!("DROP DATABASE IF EXISTS {name}")).await;
        mysql_exec(&admin, &format!("CREATE DATABASE {name}")).await;
        let _ = admin.disconnect().await;
        let pool = mysql_pool(
            &env,
            &env.get("MYSQL_PORT"),
            &env.get("MYSQL_ADMIN_USER"),
            &env.get("MYSQL_ADMIN_PASSWORD"),
            Some(&name),
        );
        Self::with_source(env, name, Source::Mysql(pool)).await
    }

    /// A fresh database `t_<name>` owned by the agent's user, and empty etcd prefixes.
    pub async fn new(name: &str) -> World {
        Self::new_in(TestEnv::load(), name).await
    }

    async fn new_in(env: TestEnv, name: &str) -> World {
        let name = format!("t_{name}");
        let admin = pg_connect(
            &env,
            &env.get("PG_PORT"),
            &env.get("PG_ADMIN_USER"),
            &env.get("PG_ADMIN_PASSWORD"),
            "postgres",
        )
        .await;
        drop_slot(&admin, &name).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER sync"))
            .await
            .unwrap();
        let db = pg_connect(
            &env,
            &env.get("PG_PORT"),
            &env.get("PG_USER"),
            &env.get("PG_PASSWORD"),
            &name,
        )
        .await;
        Self::with_source(env, name, Source::Postgres(db)).await
    }

    async fn with_source(env: TestEnv, name: String, source: Source) -> World {
        let etcd = Etcd::connect([env.etcd_endpoint()], None)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to etcd ({e}): run `make testenv`"));
        let running = etcd
            .maintenance_client()
            .status()
            .await
            .unwrap_or_else(|e| panic!("etcd does not answer ({e}): run `make testenv`"))
            .version()
            .to_owned();
        assert!(
            running.starts_with(&env.etcd_version()),
            "{} runs etcd {running}, the suite wants {}",
            env.etcd_endpoint(),
            env.etcd_version()
        );
        let world = World {
            etcd_endpoint: env.etcd_endpoint(),
            env,
            dir: std::env::temp_dir().join(format!("etcd-sync-test-{name}")),
            name,
            source,
            etcd,
            extra_config: String::new(),
            etcd_extra_config: String::new(),
        };
        let _ = std::fs::remove_dir_all(&world.dir);
        std::fs::create_dir_all(&world.dir).unwrap();
        world.empty_prefixes().await;
        world
    }

    pub fn prefix(&self) -> String {
        format!("/test/{}", self.name)
    }

    pub fn state_prefix(&self) -> String {
        format!("/test-state/{}", self.name)
    }

    /// The PostgreSQL connection.
    pub fn pg(&self) -> &Client {
        match &self.source {
            Source::Postgres(client) => client,
            Source::Mysql(_) => panic!("not a PostgreSQL test"),
        }
    }

    /// The config text; `port` overrides the database port.
    pub fn config_text(&self, port: Option<&str>) -> String {
        let (driver, env, driver_section) = match self.source {
            Source::Mysql(_) => ("mysql", "MYSQL", String::new()),
            Source::Postgres(_) => (
                "postgres",
                "PG",
                format!(
                    "  postgres:\n    slot: {db}\n    publication: {db}\n",
                    db = self.name
                ),
            ),
        };
        format!(
            "database:\n  driver: {driver}\n  host: {host}\n  port: {port}\n  user: {user}\n  password: ${{TEST_DB_PASSWORD}}\n  name: {db}\n{driver_section}{extra}etcd:\n{etcd_extra}  endpoints: [{etcd}]\n  prefix: {prefix}\n  state_prefix: {state}\n",
            host = self.env.get(&format!("{env}_HOST")),
            port = port
                .map(str::to_owned)
                .unwrap_or_else(|| self.env.get(&format!("{env}_PORT"))),
            user = self.env.get(&format!("{env}_USER")),
            db = self.name,
            extra = self.extra_config,
            etcd_extra = self.etcd_extra_config,
            etcd = self.etcd_endpoint,
            prefix = self.prefix(),
            state = self.state_prefix(),
        )
    }

    /// The config text with the database user `user` and its password (a literal or `${VAR}`).
    pub fn config_as(&self, user: &str, password: &str) -> String {
        self.config_text(None)
            .replace("  user: sync\n", &format!("  user: {user}\n"))
            .replace("${TEST_DB_PASSWORD}", password)
    }

    /// Points the world at the test environment's etcd with TLS, client certificates and auth;
    /// its own client is root there. The agent's config gets the CA and client certificate.
    pub async fn use_secure_etcd(&mut self) {
        let endpoint = self.env.get("ETCD_TLS");
        self.etcd =
            secure_etcd_client(&self.env, "root", &self.env.get("ETCD_TLS_ROOT_PASSWORD")).await;
        self.etcd_endpoint = endpoint;
        let tls = self.env.get("TLS_DIR");
        self.etcd_extra_config = format!(
            "  tls:\n    ca_file: {tls}/ca.pem\n    cert_file: {tls}/client.pem\n    key_file: {tls}/client.key\n"
        );
        self.empty_prefixes().await;
    }

    /// libpq-style connection settings of the agent's user for the test's PostgreSQL database.
    pub fn pg_conn_string(&self) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.env.get("PG_HOST"),
            self.env.get("PG_PORT"),
            self.env.get("PG_USER"),
            self.env.get("PG_PASSWORD"),
            self.name
        )
    }

    /// Deletes everything under the test's data and state prefixes.
    async fn empty_prefixes(&self) {
        let mut kv = self.etcd.kv_client();
        for prefix in [self.prefix(), self.state_prefix()] {
            kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                .await
                .unwrap();
        }
    }

    /// Points the world (its configs and its etcd client) at another etcd.
    pub async fn use_etcd(&mut self, endpoint: &str) {
        self.etcd_endpoint = endpoint.to_owned();
        self.etcd = Etcd::connect([endpoint], None).await.unwrap();
    }

    /// Points the world (its configs and its etcd client) at the members of an etcd cluster.
    pub async fn use_etcd_cluster(&mut self, endpoints: &[String]) {
        self.etcd_endpoint = endpoints.join(", ");
        self.etcd = Etcd::connect(endpoints, None).await.unwrap();
        self.empty_prefixes().await;
    }

    /// Points the world at the test environment's etcd of `version` ("3.4" or "3.5"), its
    /// prefixes emptied.
    pub async fn use_etcd_version(&mut self, version: &str) {
        let endpoint = match version {
            "3.4" => self.env.get("ETCD34"),
            "3.5" => self.env.get("ETCD35"),
            other => panic!("no etcd {other} in the test environment"),
        };
        self.use_etcd(&endpoint).await;
        self.empty_prefixes().await;
        let status = self.etcd.maintenance_client().status().await.unwrap();
        assert!(
            status.version().starts_with(version),
            "{endpoint} runs etcd {}, not {version}",
            status.version()
        );
    }

    /// A row source of the integers `from..=to` for `INSERT … SELECT` (its column:
    /// [`World::series_column`]).
    pub fn series(&self, from: i64, to: i64) -> String {
        match self.source {
            Source::Postgres(_) => format!("generate_series({from}, {to}) i"),
            Source::Mysql(_) => format!("seq_{from}_to_{to}"),
        }
    }

    pub fn series_column(&self) -> &'static str {
        match self.source {
            Source::Postgres(_) => "i",
            Source::Mysql(_) => "seq",
        }
    }

    pub async fn etcd_put(&self, key: &str, value: &str) {
        self.etcd.kv_client().put(key, value, None).await.unwrap();
    }

    /// Forgets where the agent was, as a lost slot or purged binary log would: the state key
    /// goes, and (PostgreSQL) the slot. The next start dumps again over the keys in etcd.
    pub async fn lose_position(&self) {
        let key = format!("{}/state", self.state_prefix());
        self.etcd.kv_client().delete(key, None).await.unwrap();
        if let Source::Postgres(_) = &self.source {
            drop_slot(&self.pg_admin_on_postgres().await, &self.name).await;
        }
    }

    /// The PostgreSQL administrator, connected to database `postgres`.
    async fn pg_admin_on_postgres(&self) -> Client {
        self.pg_admin_at(&self.env.get("PG_PORT")).await
    }

    /// Writes the config atomically: an agent may be reading the previous one.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("config.yaml");
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn config(&self) -> PathBuf {
        self.write_config(&self.config_text(None))
    }

    /// `sync <args>` with the test's environment, not yet started.
    pub fn command(&self, config: &PathBuf, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sync"));
        cmd.arg("--config-file")
            .arg(config)
            .args(args)
            .env(
                "TEST_DB_PASSWORD",
                match self.source {
                    Source::Postgres(_) => self.env.get("PG_PASSWORD"),
                    Source::Mysql(_) => self.env.get("MYSQL_PASSWORD"),
                },
            )
            .env(
                "RUST_LOG",
                "info,etcd_sync=debug,etcd_sync_postgres=debug,h2=warn,tower=warn,hyper=warn",
            );
        cmd
    }

    /// Runs `sync <args>` to completion.
    pub fn run_command(&self, config: &PathBuf, args: &[&str]) -> Output {
        self.command(config, args).output().unwrap()
    }

    /// Starts the agent in the background, its log in the test's directory.
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&self.config())
    }

    pub fn start_agent_with(&self, config: &PathBuf) -> Agent {
        self.start_agent_env(config, &[])
    }

    /// Starts the agent with extra environment variables (which win over the defaults).
    pub fn start_agent_env(&self, config: &PathBuf, envs: &[(&str, &str)]) -> Agent {
        let log_path = self.dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = self
            .command(config, &["run"])
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent::from_child(child, log_path)
    }

    /// Runs statements as the administrator (PostgreSQL) or root (MariaDB).
    pub async fn admin_sql(&self, sql: &str) {
        match &self.source {
            Source::Postgres(_) => self.pg_admin(sql).await,
            Source::Mysql(pool) => mysql_exec(pool, sql).await,
        }
    }

    pub async fn sql(&self, sql: &str) {
        match &self.source {
            Source::Postgres(db) => db
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Source::Mysql(pool) => mysql_exec(pool, sql).await,
        }
    }

    fn mysql_admin_pool(&self, port: &str) -> mysql_async::Pool {
        mysql_pool(
            &self.env,
            port,
            &self.env.get("MYSQL_ADMIN_USER"),
            &self.env.get("MYSQL_ADMIN_PASSWORD"),
            None,
        )
    }

    /// The MariaDB server's current binary-log file and position.
    pub async fn mysql_master_status(&self) -> (String, u64) {
        use mysql_async::prelude::Queryable;
        let Source::Mysql(pool) = &self.source else {
            panic!("not a MySQL test")
        };
        let mut conn = pool.get_conn().await.unwrap();
        let row: mysql_async::Row = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    }

    /// Runs `sql` on a new connection, retrying while the server (being restarted) refuses.
    pub async fn sql_retrying(&self, sql: &str) {
        use mysql_async::prelude::Queryable;
        for _ in 0..100 {
            let result: Result<(), String> = match &self.source {
                Source::Postgres(_) => {
                    match tokio_postgres::connect(&self.pg_conn_string(), NoTls).await {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            client.batch_execute(sql).await.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Source::Mysql(pool) => match pool.get_conn().await {
                    Ok(mut conn) => conn.query_drop(sql).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            if result.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{sql}: the server did not come back");
    }

    /// Runs a statement as the MariaDB administrator (grants, users).
    pub async fn mysql_admin(&self, sql: &str) {
        let admin = self.mysql_admin_pool(&self.env.get("MYSQL_PORT"));
        mysql_exec(&admin, sql).await;
        let _ = admin.disconnect().await;
    }

    /// The first column of a query's rows, run as root.
    pub async fn mysql_admin_query(&self, sql: &str) -> Vec<u64> {
        use mysql_async::prelude::Queryable;
        let admin = self.mysql_admin_pool(&self.env.get("MYSQL_PORT"));
        let mut conn = admin.get_conn().await.unwrap();
        let rows: Vec<u64> = conn.query(sql).await.unwrap();
        drop(conn);
        let _ = admin.disconnect().await;
        rows
    }

    /// Runs SQL as the PostgreSQL administrator in this test's database (roles, grants).
    pub async fn pg_admin(&self, sql: &str) {
        let admin = pg_connect(
            &self.env,
            &self.env.get("PG_PORT"),
            &self.env.get("PG_ADMIN_USER"),
            &self.env.get("PG_ADMIN_PASSWORD"),
            &self.name,
        )
        .await;
        admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// After an outage: etcd converges, and the agent retried instead of giving up.
    pub async fn assert_recovered(&self, agent: &mut Agent) {
        self.wait_converged(Some(agent), Duration::from_secs(90))
            .await;
        assert!(
            agent.exited().is_none(),
            "the agent gave up:\n{}",
            agent.log()
        );
        // A session retried, or (etcd back within 20 s) the request that failed.
        let log = agent.log();
        assert!(
            log.contains("retry_in") || log.contains("; retrying"),
            "{log}"
        );
    }

    /// Drops the database and slot; etcd prefixes are left for inspection.
    pub async fn cleanup(self) {
        if let Source::Mysql(pool) = &self.source {
            let _ = pool.clone().disconnect().await;
            self.mysql_admin(&format!("DROP DATABASE IF EXISTS {}", self.name))
                .await;
            return;
        }
        let admin = self.pg_admin_on_postgres().await;
        drop(self.source);
        drop_slot(&admin, &self.name).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

async fn drop_slot(admin: &Client, slot: &str) {
    for _ in 0..50 {
        let result = admin
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match result {
            Ok(_) => return,
            // Still held by a walsender that has not noticed its client died.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
