//! A bank, after Jepsen's: accounts whose balances always sum to the same total, with money
//! moved between two of them by single source transactions; and a replay of etcd's history of
//! the accounts' keys that checks the total at every revision, as a watcher would see it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions};

use super::{Rng, Source, World};

pub const ACCOUNTS: i64 = 20;
pub const BALANCE: i64 = 1_000;

/// Transfers running in a task of their own until [`Transfers::stop`].
pub struct Transfers {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Transfers {
    /// Stops the transfers; returns how many committed and how many failed.
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

impl World {
    /// Table `accounts`: [`ACCOUNTS`] accounts of [`BALANCE`] each.
    pub async fn create_bank(&self) {
        self.sql(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts SELECT {}, {BALANCE} FROM {};",
            self.series_column(),
            self.series(1, ACCOUNTS)
        ))
        .await;
    }

    /// Starts moving money, one source transaction per transfer (one UPDATE of two rows), about
    /// `per_second` transfers a second, on a connection of their own (made again after the
    /// database restarted).
    pub async fn start_transfers(&self, seed: u64, per_second: u64) -> Transfers {
        let mut source = Some(self.new_source_connection().await);
        let reconnect = self.source_reconnector();
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Duration::from_micros(1_000_000 / per_second.max(1));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut rng = Rng::new(seed);
                let (mut committed, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let from = 1 + rng.below(ACCOUNTS as u64) as i64;
                    let to = 1 + (from + rng.below(ACCOUNTS as u64 - 1) as i64) % ACCOUNTS;
                    let amount = 1 + rng.below(50) as i64;
                    let sql = format!(
                        "UPDATE accounts SET balance = balance + CASE WHEN id = {from} \
                         THEN -{amount} ELSE {amount} END WHERE id IN ({from}, {to})"
                    );
                    if source.is_none() {
                        source = reconnect.connect().await;
                    }
                    let result = match &source {
                        Some(source) => source.execute(&sql).await,
                        None => Err("no connection".into()),
                    };
                    match result {
                        Ok(()) => committed += 1,
                        Err(_) => {
                            failed += 1;
                            if reconnect.is_postgres() {
                                source = None;
                            }
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
                (committed, failed)
            }
        });
        Transfers { stop, task }
    }

    /// Replays etcd's history of the accounts' keys from revision `from` (when all accounts
    /// are there) to the last change, and checks at every revision that all accounts exist
    /// and their balances sum to the total. Returns how many revisions it checked.
    pub async fn check_bank_history(&self, from: i64) -> usize {
        let prefix = format!("{}/accounts/", self.prefix());
        let mut kv = self.etcd.kv_client();
        let at_start = kv
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_revision(from)),
            )
            .await
            .unwrap();
        let mut balances: BTreeMap<String, i64> = at_start
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_owned(), balance(kv.value())))
            .collect();
        check_total(&balances, from);
        let now = kv
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let last = now.kvs().iter().map(|kv| kv.mod_revision()).max().unwrap();
        if last <= from {
            return 1;
        }
        let mut watch = self.etcd.watch_client();
        let mut stream = watch
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from + 1),
                ),
            )
            .await
            .unwrap();
        let mut revision = from;
        let mut checked = 1;
        'replay: while let Some(response) = stream.message().await.unwrap() {
            assert!(
                !response.canceled(),
                "the watch was cancelled: {response:?}"
            );
            for event in response.events() {
                let kv = event.kv().unwrap();
                // A revision is complete when the next one starts: check what it left.
                if kv.mod_revision() != revision {
                    check_total(&balances, revision);
                    checked += 1;
                    revision = kv.mod_revision();
                }
                let key = kv.key_str().unwrap().to_owned();
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        balances.insert(key, balance(kv.value()));
                    }
                    etcd_client::EventType::Delete => {
                        balances.remove(&key);
                    }
                }
            }
            if revision >= last {
                break 'replay;
            }
        }
        check_total(&balances, revision);
        checked
    }
}

fn balance(value: &[u8]) -> i64 {
    let row: serde_json::Value = serde_json::from_slice(value).unwrap();
    match &row["balance"] {
        serde_json::Value::Number(n) => n.as_i64().unwrap(),
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => panic!("balance {other}"),
    }
}

fn check_total(balances: &BTreeMap<String, i64>, revision: i64) {
    let total: i64 = balances.values().sum();
    assert!(
        balances.len() as i64 == ACCOUNTS && total == ACCOUNTS * BALANCE,
        "at revision {revision} a watcher sees {} accounts holding {total}, not {ACCOUNTS} \
         holding {}: a transaction half-applied\n{balances:?}",
        balances.len(),
        ACCOUNTS * BALANCE
    );
}

/// Connects again to the test's database.
pub enum Reconnector {
    Postgres(String),
    Mysql(mysql_async::Pool),
}

impl Reconnector {
    fn is_postgres(&self) -> bool {
        matches!(self, Reconnector::Postgres(_))
    }

    async fn connect(&self) -> Option<Source> {
        match self {
            Reconnector::Postgres(conn) => {
                let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                Some(Source::Postgres(client))
            }
            Reconnector::Mysql(pool) => Some(Source::Mysql(pool.clone())),
        }
    }
}

impl World {
    fn source_reconnector(&self) -> Reconnector {
        match &self.source {
            Source::Postgres(_) => Reconnector::Postgres(self.pg_conn_string()),
            Source::Mysql(pool) => Reconnector::Mysql(pool.clone()),
        }
    }
}

impl Source {
    /// One statement, autocommitted.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        use mysql_async::prelude::Queryable;
        match self {
            Source::Postgres(client) => client.batch_execute(sql).await.map_err(|e| e.to_string()),
            Source::Mysql(pool) => match pool.get_conn().await {
                Ok(mut conn) => conn.query_drop(sql).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}
