//! End-to-end tests against the PostgreSQL and etcd of `make testenv`, running the `sync`
//! binary as a user would. Each ends in the convergence check: `sync verify` finds etcd equal
//! to the database, key for key and byte for byte.
//!
//! Over 500 lines as a suite of independent tests, one behaviour each; their support is in
//! `common/`.

mod common;

use common::{CONVERGE_TIMEOUT, SYNC_TIMEOUT};

use std::time::Duration;

use common::{Rng, World};

const TYPED_SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE typed (
  a int, b text,
  i2 smallint, i8 bigint, f4 real, f8 double precision, num numeric(10,3), flag boolean,
  vc varchar(10), ch char(3), mood mood, u uuid, ip inet, iv interval, d date,
  ts timestamp(6), tstz timestamptz, tm time, raw bytea, j json, jb jsonb,
  ai int[], at text[], tsa timestamptz[], dom posint,
  PRIMARY KEY (a, b)
);";

/// Inserts one row of every type with primary key (`a`, `b`).
fn typed_insert(a: i32, b: &str) -> String {
    format!(
        "INSERT INTO typed VALUES ({a}, '{b}', -32768, 9223372036854775807, 1.5, 'NaN', 12.5, true, \
         'hello', 'ab', 'happy', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', \
         '1 day 02:03:04', '2024-05-01', '2024-05-01 10:00:00.123456', '2024-05-01 12:00:00.5+02', \
         '10:11:12', '\\x00ff', '{{\"b\": 1,  \"a\": [1, 2]}}', '{{\"b\": 1, \"a\": [1, 2]}}', \
         '{{1,NULL,3}}', '{{\"a b\",c}}', '{{\"2024-01-01 00:00:00+00\"}}', 5)"
    )
}

/// The JSON the contract promises for [`typed_insert`]'s row.
fn typed_json(a: i32, b: &str) -> String {
    format!(
        "{{\"a\":{a},\"b\":\"{b}\",\"i2\":-32768,\"i8\":9223372036854775807,\"f4\":1.5,\"f8\":\"NaN\",\
         \"num\":\"12.500\",\"flag\":true,\"vc\":\"hello\",\"ch\":\"ab \",\"mood\":\"happy\",\
         \"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"ip\":\"192.168.0.1/24\",\
         \"iv\":\"1 day 02:03:04\",\"d\":\"2024-05-01\",\"ts\":\"2024-05-01T10:00:00.123456\",\
         \"tstz\":\"2024-05-01T10:00:00.5Z\",\"tm\":\"10:11:12\",\"raw\":\"AP8=\",\
         \"j\":{{\"b\":1,\"a\":[1,2]}},\"jb\":{{\"a\":[1,2],\"b\":1}},\"ai\":[1,null,3],\
         \"at\":[\"a b\",\"c\"],\"tsa\":[\"2024-01-01T00:00:00Z\"],\"dom\":5}}"
    )
}

const USERS_SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, bio text);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric(12,2));
CREATE TABLE order_items (order_id bigint, line int, sku text, PRIMARY KEY (order_id, line));
INSERT INTO users SELECT i, 'u' || i || '@example.com', NULL FROM generate_series(1, 50) i;
INSERT INTO billing.invoices SELECT i, i * 1.25 FROM generate_series(1, 20) i;
INSERT INTO order_items SELECT i / 3, i % 3, 'sku-' || i FROM generate_series(0, 29) i;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_then_stream_every_kind_of_change() {
    let world = World::new("changes").await;
    world.sql(TYPED_SCHEMA).await;
    world.sql(USERS_SCHEMA).await;
    world.sql(&typed_insert(1, "x/y%z")).await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;

    // The dump: every type as the contract says, keys escaped, composite keys in key order.
    assert_eq!(
        world.etcd_value("typed/1/x%2Fy%25z").await.as_deref(),
        Some(typed_json(1, "x/y%z").as_str())
    );
    assert_eq!(
        world.etcd_value("order_items/3/1").await.as_deref(),
        Some(r#"{"order_id":3,"line":1,"sku":"sku-10"}"#)
    );
    assert_eq!(
        world.etcd_value("billing.invoices/4").await.as_deref(),
        Some(r#"{"id":4,"amount":"5.00"}"#)
    );

    // The stream gives the same bytes for the same row.
    world.sql(&typed_insert(2, "x/y%z")).await;
    world
        .wait_for_value("typed/2/x%2Fy%25z", Some(&typed_json(2, "x/y%z")))
        .await;

    // Inserts, updates, deletes, several tables in one transaction.
    world
        .sql(
            "BEGIN;
             INSERT INTO users VALUES (100, 'new@example.com', 'short');
             UPDATE users SET email = 'changed@example.com' WHERE id = 1;
             DELETE FROM users WHERE id = 2;
             UPDATE billing.invoices SET amount = 0 WHERE id = 3;
             DELETE FROM order_items WHERE order_id = 1;
             COMMIT;",
        )
        .await;
    world.wait_for_value("users/2", None).await;
    assert_eq!(
        world.etcd_value("users/1").await.as_deref(),
        Some(r#"{"id":1,"email":"changed@example.com","bio":null}"#)
    );

    // A primary-key change moves the row.
    world.sql("UPDATE users SET id = 101 WHERE id = 100").await;
    world.wait_for_value("users/100", None).await;
    assert_eq!(
        world.etcd_value("users/101").await.as_deref(),
        Some(r#"{"id":101,"email":"new@example.com","bio":"short"}"#)
    );

    // An update that leaves a TOASTed (out-of-line, incompressible) value unchanged: the server
    // does not send it, the agent keeps it from etcd; also across a key change.
    world
        .sql("UPDATE users SET bio = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i) WHERE id = 5")
        .await;
    world
        .sql("UPDATE users SET email = 'toast@example.com' WHERE id = 5")
        .await;
    world.sql("UPDATE users SET id = 500 WHERE id = 5").await;
    world.wait_for_value("users/5", None).await;
    let moved = world.etcd_value("users/500").await.expect("users/500");
    assert!(
        moved.contains("toast@example.com") && moved.len() > 128_000,
        "{}",
        &moved[..200]
    );

    // TRUNCATE, alone and followed by inserts in the same transaction.
    world.sql("TRUNCATE order_items").await;
    world
        .sql("BEGIN; TRUNCATE billing.invoices; INSERT INTO billing.invoices VALUES (1, 9.99); COMMIT;")
        .await;
    world.wait_for_value("billing.invoices/2", None).await;
    assert_eq!(
        world.etcd_value("billing.invoices/1").await.as_deref(),
        Some(r#"{"id":1,"amount":"9.99"}"#)
    );

    // An added column: rows written after it carry it.
    world
        .sql("ALTER TABLE users ADD COLUMN plan text DEFAULT 'free'")
        .await;
    world
        .sql("INSERT INTO users VALUES (200, 'late@example.com', NULL, 'pro')")
        .await;
    world
        .wait_for_value(
            "users/200",
            Some(r#"{"id":200,"email":"late@example.com","bio":null,"plan":"pro"}"#),
        )
        .await;
    // Rows untouched since keep their old form until they change (see the README); touching
    // them all makes etcd equal the database again.
    world.sql("UPDATE users SET plan = plan").await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;

    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_dump_then_restart_converges() {
    let world = World::new("kill_dump").await;
    world
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY, payload text);
             INSERT INTO items SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 200000) i;
             CREATE TABLE pairs (a int, b int, note text, PRIMARY KEY (a, b));
             INSERT INTO pairs SELECT i % 100, i, 'n' FROM generate_series(1, 20000) i;
             ANALYZE;",
        )
        .await;
    let mut agent = world.start_agent();
    // Kill it once part of the snapshot is in etcd.
    world.wait_for_keys(&mut agent, 2_000).await;
    agent.kill9();
    let state = world
        .state()
        .await
        .expect("state written at the dump's start");
    assert_eq!(
        state["phase"], "dump",
        "killed before the dump ended: {state}"
    );

    // Meanwhile rows disappear and change: keys the first dump wrote for them must go.
    world
        .sql(
            "DELETE FROM items WHERE id <= 1000 OR id % 7 = 0;
             UPDATE items SET payload = 'changed' WHERE id % 11 = 0;
             DELETE FROM pairs WHERE a = 0;",
        )
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.log().contains("did not finish; dumping again"));
    drop(agent);
    world.cleanup().await;
}

/// Random transactions over two tables, some big enough to be written in several etcd txns.
async fn random_transactions(world: &World, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let mut sql = String::from("BEGIN;");
        match rng.below(10) {
            0 => {
                // A transaction larger than one etcd txn (max_txn_ops 128): written in chunks.
                let from = rng.below(2000);
                sql.push_str(&format!(
                    "UPDATE accounts SET balance = balance + 1, note = md5(random()::text) WHERE id BETWEEN {from} AND {};",
                    from + 400
                ));
            }
            _ => {
                for _ in 0..1 + rng.below(5) {
                    let id = rng.below(2500);
                    sql.push_str(&match rng.below(5) {
                        0 => format!("DELETE FROM accounts WHERE id = {id};"),
                        1 => format!("UPDATE accounts SET id = {} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = {});", id + 3000, id + 3000),
                        2 => format!(
                            "INSERT INTO moves VALUES ({}, {}, now()) ON CONFLICT (account, seq) DO UPDATE SET at = now();",
                            id % 50,
                            rng.below(100)
                        ),
                        3 => format!("DELETE FROM moves WHERE account = {};", id % 50),
                        _ => format!(
                            "INSERT INTO accounts VALUES ({id}, {}, 'x') ON CONFLICT (id) DO UPDATE SET balance = excluded.balance;",
                            rng.below(1000)
                        ),
                    });
                }
            }
        }
        sql.push_str("COMMIT;");
        world.sql(&sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_stream_then_restart_converges() {
    let mut world = World::new("kill_stream").await;
    world.extra_config = "tables:\n  exclude: [ignored]\n".into();
    world
        .sql(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
             INSERT INTO accounts SELECT i, i, 'init' FROM generate_series(0, 2499) i;
             CREATE TABLE moves (account int, seq int, at timestamptz, PRIMARY KEY (account, seq));
             CREATE TABLE ignored (id int PRIMARY KEY);",
        )
        .await;
    let mut rng = Rng::new(20261121);
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    for round in 0..4 {
        // Let the writer run while the agent applies, then kill the agent mid-stream.
        random_transactions(&world, &mut rng, 40 + round * 10).await;
        agent.kill9();
        random_transactions(&world, &mut rng, 20).await;
        agent = world.start_agent();
    }
    random_transactions(&world, &mut rng, 30).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert_eq!(
        world
            .etcd_key_count(&format!("{}/ignored/", world.prefix()))
            .await,
        0
    );

    // SIGTERM during a stream of transactions: a clean exit with a consistent state.
    let writer = async {
        random_transactions(&world, &mut rng, 60).await;
    };
    let (_, status) = tokio::join!(writer, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent.terminate(Duration::from_secs(10))
    });
    assert!(status.success(), "SIGTERM exit status {status}");
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_is_skipped_or_refused() {
    let mut world = World::new("nopk").await;
    world
        .sql(
            "CREATE TABLE keyed (id int PRIMARY KEY);
             CREATE TABLE loose (id int, v text);
             INSERT INTO keyed VALUES (1); INSERT INTO loose VALUES (1, 'a');",
        )
        .await;
    // Not named: skipped with a warning, the rest syncs, and the source keeps working.
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(
        agent.log().contains("has no primary key"),
        "{}",
        agent.log()
    );
    world
        .sql("UPDATE loose SET v = 'b'; DELETE FROM loose;")
        .await;
    let published = world
        .pg()
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&world.name],
        )
        .await
        .unwrap();
    let names: Vec<String> = published.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["keyed".to_string()]);
    drop(agent);

    // Named in tables.include: a clear error and nothing written.
    world.extra_config = "tables:\n  include: [keyed, loose]\n".into();
    let config = world.config();
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("table loose named in tables.include has no primary key"),
        "{stderr}"
    );
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_field_is_named_and_nothing_is_written() {
    let world = World::new("badconfig").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let text = world.config_text(None).replace("  prefix:", "  prefx:");
    let config = world.write_config(&text);
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("etcd.prefx: unknown field `prefx`"),
        "{stderr}"
    );
    assert!(stderr.contains("line"), "{stderr}");
    assert_eq!(world.etcd_key_count(&world.state_prefix()).await, 0);
    assert_eq!(world.etcd_key_count(&world.prefix()).await, 0);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_explained_and_nothing_is_written() {
    let world = World::new("walreplica").await;
    let replica_port = world.env.get("PG_REPLICA_PORT");
    world.create_database_on(&replica_port).await;
    let config = world.write_config(&world.config_text(Some(&replica_port)));
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("wal_level is 'replica'") && stderr.contains("wal_level = logical"),
        "{stderr}"
    );
    assert_eq!(world.etcd_key_count(&world.state_prefix()).await, 0);

    let output = world.run_command(&config, &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("[FAIL] wal_level"), "{stdout}");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_healthy_setup() {
    let world = World::new("check").await;
    world
        .sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE nokey (v int);")
        .await;
    let output = world.run_command(&world.config(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in [
        "[ok  ] wal_level: logical",
        "[ok  ] tls: TLSv1.3 (database.tls.mode prefer)",
        "[ok  ] replication privilege",
        "[ok  ] table a: primary key (id)",
        "[warn] table nokey: skipped",
        "[ok  ] etcd:",
        "[ok  ] etcd.max_txn_ops",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_leads_to_a_new_dump_that_converges() {
    let world = World::new("lostslot").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'a' FROM generate_series(1, 100) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    // Changes the slot would have carried, then the slot disappears (as after a failover).
    world
        .sql("DELETE FROM t WHERE id <= 10; UPDATE t SET v = 'b' WHERE id > 90;")
        .await;
    world
        .sql(&format!(
            "SELECT pg_drop_replication_slot('{}')",
            world.name
        ))
        .await;
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.log().contains("does not exist"), "{}", agent.log());
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_state_is_taken_over_stops() {
    let world = World::new("fenced").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // Another writer of the same state (what a second agent does).
    let mut state = world.state().await.unwrap();
    state["agent"] = "someone-else:1".into();
    world
        .etcd
        .kv_client()
        .put(
            format!("{}/state", world.state_prefix()),
            state.to_string(),
            None,
        )
        .await
        .unwrap();
    world.sql("INSERT INTO t VALUES (1)").await;
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        agent
            .log()
            .contains("another agent is syncing the same state prefix"),
        "{}",
        agent.log()
    );
    assert_eq!(world.etcd_value("t/1").await, None, "a fenced write landed");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_does_not_hold_wal() {
    let mut world = World::new("idleslot").await;
    world.extra_config = "tables:\n  include: [watched]\n".into();
    world
        .sql("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE busy (id int PRIMARY KEY, v text);")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // Only a table the agent does not sync changes: the slot must still move on.
    world
        .sql("INSERT INTO busy SELECT i, md5(i::text) FROM generate_series(1, 5000) i")
        .await;
    let target: String = world
        .pg()
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = world
            .pg()
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &world.name],
            )
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot's confirmed_flush_lsn stayed behind {target}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_selection_joins_without_a_dump() {
    let mut world = World::new("selection").await;
    world.extra_config = "tables:\n  include: [a]\n".into();
    world
        .sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); INSERT INTO a VALUES (1); INSERT INTO b VALUES (1), (2);")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    assert_eq!(world.etcd_value("b/1").await, None);

    world.extra_config = "tables:\n  include: [a, b]\n".into();
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    let log = agent.log();
    assert!(log.contains("table selection changed"), "{log}");
    assert_eq!(log.matches("dump started").count(), 1, "{log}");
    world.sql("INSERT INTO b VALUES (3)").await;
    world.wait_for_value("b/3", Some(r#"{"id":3}"#)).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replication_connection_is_retried() {
    let world = World::new("connlost").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world
        .sql("INSERT INTO t SELECT i, 0 FROM generate_series(1, 100) i")
        .await;
    // Cut the agent's replication connection, as a network failure or server restart would.
    let admin_sql = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}' AND active_pid IS NOT NULL",
        world.name
    );
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    while world.pg().query(&admin_sql, &[]).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world
        .sql("UPDATE t SET v = 1 WHERE id <= 50; DELETE FROM t WHERE id > 90;")
        .await;
    world.assert_recovered(&mut agent).await;
    drop(agent);
    world.cleanup().await;
}

/// Runs `sync verify` in the background; returns its exit code and output.
fn verify_in_background(world: &World) -> tokio::task::JoinHandle<(Option<i32>, String)> {
    let config = world.config();
    let password = world.env.get("PG_PASSWORD");
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sync"))
            .arg("--config-file")
            .arg(&config)
            .arg("verify")
            .env("TEST_DB_PASSWORD", password)
            .output()
            .unwrap();
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    })
}

/// Changes random rows of 1..=1000 until `verify` ends.
async fn write_while(world: &World, verify: &tokio::task::JoinHandle<(Option<i32>, String)>) {
    let mut rng = Rng::new(7);
    while !verify.is_finished() {
        let id = 1 + rng.below(1000);
        world
            .sql(&format!("UPDATE t SET v = v + 1 WHERE id = {id}"))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_exact_while_changes_flow() {
    let world = World::new("verifylive").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT i, 0 FROM generate_series(1, 2000) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;

    // The agent's lag behind a busy table is not reported as a difference.
    let verify = verify_in_background(&world);
    write_while(&world, &verify).await;
    let (code, output) = verify.await.unwrap();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "verify reported lag as a difference:\n{output}"
    );

    // Real differences, on rows nobody changes, are found while the writes go on.
    let mut kv = world.etcd.kv_client();
    let key = |id: u32| format!("{}/t/{id}", world.prefix());
    kv.put(key(1500), r#"{"id":1500,"v":42}"#, None)
        .await
        .unwrap();
    kv.delete(key(1600), None).await.unwrap();
    kv.put(key(999_999), r#"{"id":999999,"v":0}"#, None)
        .await
        .unwrap();
    let verify = verify_in_background(&world);
    write_while(&world, &verify).await;
    let (code, output) = verify.await.unwrap();
    assert_eq!(code, Some(1), "{output}");
    for want in [
        "1 missing, 1 extra, 1 different",
        &format!("different {}", key(1500)),
        &format!("missing key {}", key(1600)),
        &format!("extra key {}", key(999_999)),
    ] {
        assert!(output.contains(want), "{want:?} not in:\n{output}");
    }

    // Repaired through the source (and the stray key removed), etcd converges again.
    world
        .sql("UPDATE t SET v = v + 1 WHERE id IN (1500, 1600)")
        .await;
    kv.delete(key(999_999), None).await.unwrap();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

/// A backlog goes out with two txns in flight, each chained to the state its predecessor
/// writes: replayed from etcd's history, the state's positions only grow, revision after
/// revision, so no txn landed before one sent ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_lands_in_source_order() {
    let world = World::new("backlog_order").await;
    world
        .sql("CREATE TABLE items (id int PRIMARY KEY, v int);")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let state_key = format!("{}/state", world.state_prefix());
    let mut kv = world.etcd.kv_client();
    let from = kv
        .get(state_key.as_str(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    world
        .sql(
            "DO $$ BEGIN FOR i IN 1..20000 LOOP
                 INSERT INTO items VALUES (i, i); COMMIT;
             END LOOP; END $$;",
        )
        .await;
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    let last = kv.get(state_key.as_str(), None).await.unwrap().kvs()[0].mod_revision();
    let mut stream = world
        .etcd
        .watch_client()
        .watch(
            state_key.as_str(),
            Some(etcd_client::WatchOptions::new().with_start_revision(from + 1)),
        )
        .await
        .unwrap();
    let mut positions = Vec::new();
    'replay: while let Some(response) = stream.message().await.unwrap() {
        for event in response.events() {
            let kv = event.kv().unwrap();
            let state: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
            if let Some(lsn) = state["position"]["lsn"].as_str() {
                let (high, low) = lsn.split_once('/').unwrap();
                let high = u64::from_str_radix(high, 16).unwrap();
                positions.push((high << 32) | u64::from_str_radix(low, 16).unwrap());
            }
            if kv.mod_revision() >= last {
                break 'replay;
            }
        }
    }
    // 20,000 transactions in txns of at most 127: a backlog, not one txn per transaction.
    assert!(
        (158..2000).contains(&positions.len()),
        "{} state writes",
        positions.len()
    );
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "the state's positions went back: {positions:?}"
    );
    world.cleanup().await;
}
