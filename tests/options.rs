//! What reaches etcd, per table (`tables.options`), for both databases: excluded columns never
//! appear, dumped or streamed; rows updated out of a `where` filter lose their key and rows
//! updated into it gain one; raw values are the column's bytes (text, binary, NULL: no key);
//! `preview` prints what is then written; a table added while the others stream is snapshotted
//! alone, without pausing their stream or dumping them again; a removed table's keys go.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Source, World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

fn is_postgres(world: &World) -> bool {
    matches!(world.source, Source::Postgres(_))
}

/// A binary literal in the source's SQL.
fn bytes_literal(world: &World, hex: &str) -> String {
    if is_postgres(world) {
        format!("'\\x{hex}'::bytea")
    } else {
        format!("X'{hex}'")
    }
}

const SHAPED: &str = "tables:
  include: [users, settings, blobs, accounts]
  options:
    accounts:
      where: \"balance > 0\"
    users:
      columns: {exclude: [password_hash, email]}
      where: \"active AND tenant_id = 7\"
    settings:
      value: {column: v}
    blobs:
      value: {column: data}
";

async fn columns_rows_and_raw_values(mut world: World) {
    let (boolean, binary) = if is_postgres(&world) {
        ("boolean", "bytea")
    } else {
        ("BOOLEAN", "BLOB")
    };
    world
        .sql(&format!(
            "CREATE TABLE users (id int PRIMARY KEY, email varchar(100), password_hash varchar(100),
                                 active {boolean}, tenant_id int, name varchar(50));
             CREATE TABLE settings (k varchar(50) PRIMARY KEY, v text);
             CREATE TABLE blobs (id int PRIMARY KEY, data {binary});
             INSERT INTO users VALUES (1, 'a@x', 'hash1', true, 7, 'ann'), (2, 'b@x', 'hash2', false, 7, 'bob'),
                                      (3, 'c@x', 'hash3', true, 8, 'cid'), (4, 'd@x', 'hash4', NULL, 7, 'dan');
             INSERT INTO settings VALUES ('greeting', 'hello \"world\" ünï'), ('empty', ''), ('unset', NULL);
             INSERT INTO blobs VALUES (1, {}), (2, NULL);
             CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
             INSERT INTO accounts VALUES (1, 5, 'a'), (2, 0, 'b'), (3, NULL, 'c');",
            bytes_literal(&world, "00ff0a")
        ))
        .await;
    if is_postgres(&world) {
        // Covered by the replica identity, the filter is PostgreSQL's too (publication row
        // filter): an UPDATE out of it arrives as a DELETE, one into it as an INSERT.
        world
            .sql("ALTER TABLE accounts REPLICA IDENTITY FULL")
            .await;
    }
    world.extra_config = SHAPED.into();
    let config = world.config();

    // What preview shows is what the dump then writes.
    let preview = world.run_command(&config, &["preview", "--limit", "10"]);
    assert!(preview.status.success(), "{preview:?}");
    let preview = String::from_utf8_lossy(&preview.stdout).into_owned();
    assert!(
        preview.contains("columns left out: email, password_hash"),
        "{preview}"
    );
    assert!(
        preview.contains("where: active AND tenant_id = 7"),
        "{preview}"
    );
    let previewed = sample_lines(&world, &preview);
    assert_eq!(previewed.len(), 1 + 2 + 1 + 1, "{preview}");
    let one = world.run_command(&config, &["preview", "--table", "users", "--limit", "1"]);
    let one = String::from_utf8_lossy(&one.stdout).into_owned();
    assert!(
        one.starts_with("table users\n") && !one.contains("table settings"),
        "{one}"
    );

    if is_postgres(&world) {
        // `check` says what PostgreSQL applies, and how to have it filter `users` too.
        let check = world.run_command(&config, &["check"]);
        let check = String::from_utf8_lossy(&check.stdout).into_owned();
        let users = check
            .lines()
            .find(|l| l.contains("table users options"))
            .unwrap_or_else(|| panic!("{check}"));
        assert!(
            users.contains("neither dumped nor published")
                && users.contains("REPLICA IDENTITY FULL"),
            "{users}"
        );
        let accounts = check
            .lines()
            .find(|l| l.contains("table accounts options"))
            .unwrap_or_else(|| panic!("{check}"));
        assert!(
            accounts.contains("PostgreSQL filters the rows (dump and publication)"),
            "{accounts}"
        );
    }

    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    for (key, value) in &previewed {
        assert_eq!(
            world.etcd_raw(key).await.map(|v| printable(&v)),
            Some(value.clone()),
            "preview said {key} = {value}"
        );
    }
    assert_only_users(&world, &[1]).await;
    assert_eq!(
        world.etcd_raw("settings/greeting").await.as_deref(),
        Some("hello \"world\" ünï".as_bytes())
    );
    assert_eq!(
        world.etcd_raw("settings/empty").await.as_deref(),
        Some(&b""[..])
    );
    assert_eq!(world.etcd_raw("settings/unset").await, None);
    assert_eq!(
        world.etcd_raw("blobs/1").await.as_deref(),
        Some(&[0u8, 0xff, 0x0a][..])
    );
    assert_eq!(world.etcd_raw("blobs/2").await, None);

    // The stream: out of the filter and back, into it, updates of excluded columns.
    world
        .sql("UPDATE users SET active = false WHERE id = 1")
        .await;
    world.wait_for_value("users/1", None).await;
    world
        .sql("UPDATE users SET active = true WHERE id = 2")
        .await;
    world
        .sql("UPDATE users SET active = true WHERE id = 1")
        .await;
    world
        .sql("INSERT INTO users VALUES (5, 'e@x', 'hash5', true, 7, 'eve'), (6, 'f@x', 'hash6', true, 9, 'fay')")
        .await;
    world
        .sql("UPDATE users SET password_hash = 'hash5b', email = 'e2@x' WHERE id = 5")
        .await;
    world
        .sql("UPDATE users SET tenant_id = 7 WHERE id = 3")
        .await;
    world.sql("DELETE FROM users WHERE id = 2").await;
    world
        .sql(&format!(
            "UPDATE settings SET v = 'bye' WHERE k = 'greeting';
             UPDATE settings SET v = NULL WHERE k = 'empty';
             UPDATE settings SET v = 'now set' WHERE k = 'unset';
             UPDATE blobs SET data = {} WHERE id = 1;
             INSERT INTO blobs VALUES (3, {});",
            bytes_literal(&world, "0001fe"),
            bytes_literal(&world, "")
        ))
        .await;
    world
        .sql(
            "UPDATE accounts SET balance = -1 WHERE id = 1;
             UPDATE accounts SET balance = 9 WHERE id = 2;
             UPDATE accounts SET note = 'still out' WHERE id = 3;",
        )
        .await;
    world.wait_for_value("blobs/3", Some("")).await;
    world.wait_for_value("accounts/1", None).await;
    world
        .sql("UPDATE accounts SET balance = 2 WHERE id = 1")
        .await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert_only_users(&world, &[1, 3, 5]).await;
    assert!(world
        .etcd_value("users/5")
        .await
        .is_some_and(|v| v.contains("eve")));
    assert_eq!(
        world.etcd_raw("settings/greeting").await.as_deref(),
        Some(&b"bye"[..])
    );
    assert_eq!(world.etcd_raw("settings/empty").await, None);
    assert_eq!(
        world.etcd_raw("settings/unset").await.as_deref(),
        Some(&b"now set"[..])
    );
    assert_eq!(
        world.etcd_raw("blobs/1").await.as_deref(),
        Some(&[0u8, 1, 0xfe][..])
    );
    assert!(world
        .etcd_value("accounts/1")
        .await
        .is_some_and(|v| v.contains("\"balance\":2")));
    assert!(world.etcd_value("accounts/2").await.is_some());
    assert_eq!(world.etcd_value("accounts/3").await, None);
    if is_postgres(&world) {
        let log = agent.log();
        assert!(
            log.contains(r#"publish_filter: Some("(\"balance\" > 0)")"#),
            "the filter was not left to PostgreSQL:\n{log}"
        );
        assert!(
            log.contains(r#"publish_columns: Some(["id", "active", "tenant_id", "name"])"#),
            "no column list for users:\n{log}"
        );
    }
    assert!(agent.terminate(Duration::from_secs(30)).success());

    // Options changed: `users` alone is written again (now with every column, no filter).
    world.extra_config = SHAPED
        .replace("      columns: {exclude: [password_hash, email]}\n", "")
        .replace(
            "      where: \"active AND tenant_id = 7\"\n",
            "      where: \"id <> 3\"\n",
        );
    let mut agent = world.start_agent_with(&world.config());
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    let log = agent.log();
    let second_run = &log[log.rfind("etcd-sync starting").unwrap_or(0)..];
    assert!(
        second_run.contains("options_changed=[\"users\"]"),
        "{second_run}"
    );
    assert!(!second_run.contains("dump started"), "{second_run}");
    assert_only_users(&world, &[1, 4, 5, 6]).await;
    assert!(world
        .etcd_value("users/5")
        .await
        .is_some_and(|v| v.contains("hash5b")));
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world.cleanup().await;
}

/// A value as `preview` prints it: text, or its bytes in hex when it is not UTF-8.
fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "<{} bytes, hex> {}",
            value.len(),
            value.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// The keys and values of a preview's sample lines, as key suffixes below the prefix.
fn sample_lines(world: &World, preview: &str) -> Vec<(String, String)> {
    let prefix = format!("  {}/", world.prefix());
    preview
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once(" ="))
        .map(|(k, v)| (k.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()))
        .collect()
}

/// `users` holds exactly these ids, and no value names an excluded column or its contents.
async fn assert_only_users(world: &World, ids: &[i64]) {
    let users_prefix = format!("{}/users/", world.prefix());
    let mut found: Vec<i64> = Vec::new();
    for (key, value) in world.etcd_data().await {
        let Some(id) = key.strip_prefix(&users_prefix) else {
            continue;
        };
        found.push(id.parse().unwrap());
        let shaped = world.extra_config.contains("password_hash");
        if shaped {
            assert!(
                !value.contains("password_hash")
                    && !value.contains("hash")
                    && !value.contains("@x"),
                "{key} = {value}"
            );
        }
    }
    found.sort();
    assert_eq!(found, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_columns_rows_and_raw_values() {
    Box::pin(columns_rows_and_raw_values(World::new("options_pg").await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_columns_rows_and_raw_values() {
    Box::pin(columns_rows_and_raw_values(
        World::new_mysql("options_my").await,
    ))
    .await;
}

const JOINING_ROWS: i64 = 60_000;

/// `c` joins (100k rows) and `b` leaves while a write load runs on `a`: `a`'s changes keep
/// reaching etcd within seconds, nothing is dumped again, `b`'s keys go; then a kill -9 in the
/// middle of a join: the table is snapshotted again on its own, before the stream resumes.
async fn tables_join_and_leave(mut world: World) {
    world
        .sql(&format!(
            "CREATE TABLE a (id int PRIMARY KEY, v int);
             CREATE TABLE b (id int PRIMARY KEY, v int);
             INSERT INTO a SELECT {c}, 0 FROM {};
             INSERT INTO b SELECT {c}, 0 FROM {};",
            world.series(1, 500),
            world.series(1, 100),
            c = world.series_column()
        ))
        .await;
    world.extra_config = "tables:\n  include: [a, b]\n".into();
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // `c` is filled while the agent streams past it (not selected yet), so that the next start
    // takes its rows from a snapshot, not from the log.
    world
        .sql(&format!(
            "CREATE TABLE c (id int PRIMARY KEY, v varchar(20));
             INSERT INTO c SELECT {c}, 'initial' FROM {};
             UPDATE a SET v = -1 WHERE id = 1;",
            world.series(1, JOINING_ROWS),
            c = world.series_column()
        ))
        .await;
    world
        .wait_for_value("a/1", Some(r#"{"id":1,"v":-1}"#))
        .await;
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world.extra_config = "tables:\n  include: [a, c]\n".into();
    let watcher = Watcher::start(&world, &format!("{}/a/", world.prefix())).await;
    let streams_before = agent_log_count(&world, "sync: changes arrive again");
    let agent = world.start_agent_with(&world.config());

    // The load on `a` (and on `c`, joining) until some time after the join ended.
    // Delays are measured once the stream runs (the agent's start-up is not a pause), and
    // must include updates made while the join ran.
    let mut delays = Vec::new();
    let mut during_join = 0;
    let started = Instant::now();
    let mut joined_at = None;
    let mut n = 0i64;
    while joined_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(2)) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the join did not finish:\n{}",
            agent.log()
        );
        n += 1;
        let id = n % 500 + 1;
        world
            .sql(&format!("UPDATE a SET v = {n} WHERE id = {id}"))
            .await;
        let committed = Instant::now();
        world
            .sql(&format!(
                "UPDATE c SET v = 'changed {n}' WHERE id = {};
                 DELETE FROM c WHERE id = {};
                 INSERT INTO c VALUES ({}, 'new');",
                (n * 97) % JOINING_ROWS + 1,
                (n * 89) % JOINING_ROWS + 1,
                JOINING_ROWS + n
            ))
            .await;
        let log = agent.log();
        if joined_at.is_none() && log.contains("joining tables snapshotted") {
            joined_at = Some(Instant::now());
        }
        if agent_log_count(&world, "sync: changes arrive again") > streams_before {
            delays.push((format!("{}/a/{id}", world.prefix()), n, committed));
            during_join += usize::from(joined_at.is_none());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    let log = agent.log();
    let second_run = &log[log.rfind("etcd-sync starting").unwrap_or(0)..];
    assert!(!second_run.contains("dump started"), "{second_run}");
    assert!(second_run.contains("added=[\"c\"]"), "{second_run}");
    assert!(
        second_run.contains("keys of tables no longer selected deleted"),
        "{second_run}"
    );
    assert_eq!(
        world
            .etcd_key_count(&format!("{}/b/", world.prefix()))
            .await,
        0
    );
    // Every update of `a` reached etcd, none later than a few seconds after its commit.
    let seen = watcher.stop();
    let mut worst = Duration::ZERO;
    for (key, n, committed) in &delays {
        let arrived = seen
            .get(&(key.clone(), *n))
            .unwrap_or_else(|| panic!("{key} = {n} never reached etcd"));
        worst = worst.max(arrived.saturating_duration_since(*committed));
    }
    println!(
        "{} updates of a measured, {during_join} of them during the join; the slowest reached \
         etcd in {worst:?}",
        delays.len()
    );
    assert!(
        during_join >= 10,
        "only {during_join} updates measured during the join"
    );
    assert!(
        worst < Duration::from_secs(3),
        "a's stream paused for {worst:?}"
    );
    assert!(agent.terminate(Duration::from_secs(30)).success());

    // A crash in the middle of a join: the next start takes that table again, alone.
    world
        .sql(&format!(
            "CREATE TABLE d (id int PRIMARY KEY, v varchar(20));
             INSERT INTO d SELECT {c}, 'initial' FROM {};",
            world.series(1, JOINING_ROWS),
            c = world.series_column()
        ))
        .await;
    world.extra_config = "tables:\n  include: [a, c, d]\n".into();
    let joins_before = agent_log_count(&world, "snapshotting a joining table");
    let agent = world.start_agent_with(&world.config());
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while agent_log_count(&world, "snapshotting a joining table") == joins_before {
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.kill9();
    world
        .sql("UPDATE d SET v = 'after the crash' WHERE id = 7; DELETE FROM d WHERE id = 8")
        .await;
    let mut agent = world.start_agent_with(&world.config());
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    let state = world.state().await.unwrap();
    assert!(state.get("snapshotting").is_none(), "{state}");
    let log = agent.log();
    let third_run = &log[log.rfind("etcd-sync starting").unwrap_or(0)..];
    assert!(
        third_run.contains("unfinished_snapshots=[\"d\"]"),
        "{third_run}"
    );
    assert!(!third_run.contains("dump started"), "{third_run}");
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world.cleanup().await;
}

/// How many lines of the agents' log (every run) contain `text`.
fn agent_log_count(world: &World, text: &str) -> usize {
    std::fs::read_to_string(world.dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

/// Watches a prefix and records when each (key, value `n`) first arrived.
struct Watcher {
    seen: Arc<Mutex<HashMap<(String, i64), Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(world: &World, prefix: &str) -> Watcher {
        let seen: Arc<Mutex<HashMap<(String, i64), Instant>>> = Arc::default();
        let mut client = world.etcd.watch_client();
        let mut stream = client
            .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok(Some(response)) = stream.message().await {
                    let now = Instant::now();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value: serde_json::Value =
                            serde_json::from_slice(kv.value()).unwrap_or_default();
                        if let Some(n) = value["v"].as_i64() {
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            seen.lock().unwrap().entry((key, n)).or_insert(now);
                        }
                    }
                }
            }
        });
        Watcher { seen, task }
    }

    fn stop(self) -> HashMap<(String, i64), Instant> {
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tables_join_and_leave_while_streaming() {
    Box::pin(tables_join_and_leave(World::new("join_pg").await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tables_join_and_leave_while_streaming() {
    Box::pin(tables_join_and_leave(World::new_mysql("join_my").await)).await;
}
