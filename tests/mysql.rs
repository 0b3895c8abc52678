//! End-to-end tests against the MariaDB and etcd of `make testenv`, running the `sync` binary.
//! Each ends in the convergence check (`sync verify`).

mod common;

use common::{CONVERGE_TIMEOUT, SYNC_TIMEOUT};

use std::time::Duration;

use common::{Rng, World};

const TYPED_SCHEMA: &str = "
CREATE TABLE typed (
  a int, b varchar(20),
  ti tinyint, tu tinyint unsigned, si smallint, mi mediumint, mu mediumint unsigned, i int,
  bi bigint, bu bigint unsigned, dec1 decimal(10,3), f float, d double, dt date, tm time(3),
  dtm datetime(6), dt0 datetime, ts timestamp(3) NULL, yr year, ch char(5), vc varchar(50),
  tx text, lat varchar(20) CHARACTER SET latin1, bn binary(4), vb varbinary(10), bl blob,
  en enum('x','y z'), st set('a','b','c'), bt bit(10), js json, geo geometry,
  PRIMARY KEY (a, b)
)";

fn typed_insert(a: i32, b: &str) -> String {
    format!(
        "INSERT INTO typed VALUES ({a}, '{b}', -128, 255, -32768, -8388608, 16777215, -2147483648, \
         -9223372036854775808, 18446744073709551615, 12.5, 0.1, 0.1, '2024-05-01', '-838:59:59.5', \
         '2024-05-01 10:00:00.123456', '2024-05-01 10:00:00', '2024-05-01 10:00:00.5', 2024, 'ab', \
         'it''s \"q\"\\n\\t\\\\', 'héllo ✓', 'café', 'ab', 0x00FF, '', 'y z', 'a,c', b'101', \
         '{{\"b\": 1, \"a\": [1, 2.5]}}', ST_GeomFromText('POINT(1 2)'))"
    )
}

fn typed_json(a: i32, b: &str) -> String {
    format!(
        "{{\"a\":{a},\"b\":\"{b}\",\"ti\":-128,\"tu\":255,\"si\":-32768,\"mi\":-8388608,\"mu\":16777215,\
         \"i\":-2147483648,\"bi\":-9223372036854775808,\"bu\":18446744073709551615,\"dec1\":\"12.500\",\
         \"f\":0.1,\"d\":0.1,\"dt\":\"2024-05-01\",\"tm\":\"-838:59:59.500\",\
         \"dtm\":\"2024-05-01T10:00:00.123456\",\"dt0\":\"2024-05-01T10:00:00\",\
         \"ts\":\"2024-05-01T10:00:00.500Z\",\"yr\":2024,\"ch\":\"ab\",\"vc\":\"it's \\\"q\\\"\\n\\t\\\\\",\
         \"tx\":\"héllo ✓\",\"lat\":\"café\",\"bn\":\"YWIAAA==\",\"vb\":\"AP8=\",\"bl\":\"\",\"en\":\"y z\",\
         \"st\":[\"a\",\"c\"],\"bt\":5,\"js\":{{\"a\":[1,2.5],\"b\":1}},\"geo\":\"AQEAAAAAAAAAAADwPwAAAAAAAABA\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_then_binlog_every_kind_of_change() {
    let world = World::new_mysql("changes").await;
    world.sql(TYPED_SCHEMA).await;
    world.sql(&typed_insert(1, "x/y%z")).await;
    world
        .sql(
            "CREATE TABLE users (id bigint PRIMARY KEY, email varchar(100) NOT NULL, bio text);
             CREATE TABLE order_items (order_id bigint, line int, sku varchar(20), PRIMARY KEY (order_id, line));
             INSERT INTO users VALUES (1, 'a@example.com', NULL), (2, 'b@example.com', 'x'), (3, 'c@example.com', NULL);
             INSERT INTO order_items VALUES (1, 1, 's1'), (1, 2, 's2'), (2, 1, 's3');",
        )
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;

    // The dump: every type as the contract says; composite keys in key order.
    assert_eq!(
        world.etcd_value("typed/1/x%2Fy%25z").await.as_deref(),
        Some(typed_json(1, "x/y%z").as_str())
    );
    assert_eq!(
        world.etcd_value("order_items/1/2").await.as_deref(),
        Some(r#"{"order_id":1,"line":2,"sku":"s2"}"#)
    );

    // The binary log gives the same bytes for the same row.
    world.sql(&typed_insert(2, "x/y%z")).await;
    world
        .wait_for_value("typed/2/x%2Fy%25z", Some(&typed_json(2, "x/y%z")))
        .await;

    // Multi-row and multi-table transactions, updates, deletes, a key change.
    world
        .sql(
            "BEGIN;
             INSERT INTO users VALUES (10, 'new@example.com', 'short'), (11, 'n2@example.com', NULL);
             UPDATE users SET email = 'changed@example.com' WHERE id IN (1, 2);
             DELETE FROM users WHERE id = 3;
             DELETE FROM order_items WHERE order_id = 1;
             COMMIT;",
        )
        .await;
    world.wait_for_value("users/3", None).await;
    assert_eq!(
        world.etcd_value("users/1").await.as_deref(),
        Some(r#"{"id":1,"email":"changed@example.com","bio":null}"#)
    );
    world.sql("UPDATE users SET id = 100 WHERE id = 10").await;
    world.wait_for_value("users/10", None).await;
    assert_eq!(
        world.etcd_value("users/100").await.as_deref(),
        Some(r#"{"id":100,"email":"new@example.com","bio":"short"}"#)
    );

    // An added column: rows written after it carry it.
    world
        .sql("ALTER TABLE users ADD COLUMN plan varchar(10) DEFAULT 'free'")
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
    world.sql("UPDATE users SET plan = 'basic'").await;
    world.sql("UPDATE typed SET i = i + 0, vc = 'v'").await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;

    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    // The stored position names a real binary log (no checksum bytes glued to it) and a GTID.
    let state = world.state().await.unwrap();
    let file = state["position"]["file"].as_str().unwrap().to_owned();
    assert!(
        file.starts_with("binlog.") && file[7..].chars().all(|c| c.is_ascii_digit()),
        "{state}"
    );
    assert!(state["position"]["gtid"].as_str().is_some(), "{state}");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_binlog_leads_to_a_new_dump_that_converges() {
    let world = World::new_mysql("purged").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT seq, 0 FROM seq_1_to_100;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    // Changes the binary log would have carried, then the logs holding them are purged (logs
    // still read by other agents' dump threads are kept by the server).
    world
        .sql("DELETE FROM t WHERE id <= 10; UPDATE t SET v = 1 WHERE id > 90;")
        .await;
    world
        .mysql_admin("FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY;")
        .await;
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.log().contains("purged"), "{}", agent.log());
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_dump_then_restart_converges() {
    let world = World::new_mysql("kill_dump").await;
    world
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY, payload varchar(200));
             INSERT INTO items SELECT seq, REPEAT(MD5(seq), 4) FROM seq_1_to_100000;",
        )
        .await;
    let mut agent = world.start_agent();
    world.wait_for_keys(&mut agent, 2_000).await;
    agent.kill9();
    assert_eq!(world.state().await.expect("state")["phase"], "dump");
    world
        .sql("DELETE FROM items WHERE id <= 1000 OR id % 7 = 0; UPDATE items SET payload = 'changed' WHERE id % 11 = 0;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

async fn random_transactions(world: &World, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let mut sql = String::from("BEGIN;");
        if rng.below(10) == 0 {
            // Larger than one etcd txn: written in chunks.
            let from = rng.below(2000);
            sql.push_str(&format!(
                "UPDATE accounts SET balance = balance + 1, note = MD5(RAND()) WHERE id BETWEEN {from} AND {};",
                from + 400
            ));
        } else {
            for _ in 0..1 + rng.below(5) {
                let id = rng.below(2500);
                sql.push_str(&match rng.below(4) {
                    0 => format!("DELETE FROM accounts WHERE id = {id};"),
                    1 => format!("UPDATE IGNORE accounts SET id = {} WHERE id = {id};", id + 3000),
                    2 => format!(
                        "INSERT INTO moves VALUES ({}, {}, NOW(6)) ON DUPLICATE KEY UPDATE at = NOW(6);",
                        id % 50,
                        rng.below(100)
                    ),
                    _ => format!(
                        "INSERT INTO accounts VALUES ({id}, {}, 'x') ON DUPLICATE KEY UPDATE balance = VALUES(balance);",
                        rng.below(1000)
                    ),
                });
            }
        }
        sql.push_str("COMMIT;");
        world.sql(&sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_binlog_stream_then_restart_converges() {
    let world = World::new_mysql("kill_stream").await;
    world
        .sql(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int, note varchar(40));
             INSERT INTO accounts SELECT seq, seq, 'init' FROM seq_0_to_2499;
             CREATE TABLE moves (account int, seq int, at datetime(6), PRIMARY KEY (account, seq));",
        )
        .await;
    let mut rng = Rng::new(424242);
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    for round in 0..3 {
        random_transactions(&world, &mut rng, 40 + round * 10).await;
        agent.kill9();
        random_transactions(&world, &mut rng, 20).await;
        agent = world.start_agent();
    }
    random_transactions(&world, &mut rng, 30).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;

    let (_, status) = tokio::join!(random_transactions(&world, &mut rng, 40), async {
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
async fn statement_binlog_format_is_explained_and_nothing_is_written() {
    let world = World::new_mysql("statement").await;
    let port = world.env.get("MYSQL_STATEMENT_PORT");
    world.create_mysql_database_on(&port).await;
    let config = world.write_config(&world.config_text(Some(&port)));
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("binlog_format is STATEMENT") && stderr.contains("binlog_format = ROW"),
        "{stderr}"
    );
    assert_eq!(world.etcd_key_count(&world.state_prefix()).await, 0);
    let output = world.run_command(&config, &["check"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("[FAIL] binlog_format"));
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_replication_privilege_is_explained() {
    let mut world = World::new_mysql("noprivilege").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    world
        .mysql_admin(&format!(
            "CREATE USER IF NOT EXISTS 'norepl'@'127.0.0.1' IDENTIFIED BY 'norepl';
             GRANT SELECT ON {}.* TO 'norepl'@'127.0.0.1';",
            world.name
        ))
        .await;
    let text = world.config_as("norepl", "norepl");
    world.extra_config.clear();
    let config = world.write_config(&text);
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("lacks REPLICATION SLAVE")
            && stderr.contains("GRANT REPLICATION SLAVE ON *.*"),
        "{stderr}"
    );
    assert_eq!(world.etcd_key_count(&world.state_prefix()).await, 0);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_is_skipped_or_refused() {
    let mut world = World::new_mysql("nopk").await;
    world
        .sql("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (v int); INSERT INTO keyed VALUES (1); INSERT INTO loose VALUES (1);")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world
        .sql("INSERT INTO loose VALUES (2); INSERT INTO keyed VALUES (2);")
        .await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(
        agent.log().contains("has no primary key"),
        "{}",
        agent.log()
    );
    drop(agent);

    world.extra_config = "tables:\n  include: [keyed, loose]\n".into();
    let output = world.run_command(&world.config(), &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("table loose named in tables.include has no primary key"),
        "{stderr}"
    );
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_exactly_the_documented_grants() {
    let world = World::new_mysql("leastpriv").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v varchar(10)); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
        .await;
    world
        .mysql_admin(
            "DROP USER IF EXISTS 'least'@'127.0.0.1';
             CREATE USER 'least'@'127.0.0.1' IDENTIFIED BY 'least';
             GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'least'@'127.0.0.1';",
        )
        .await;
    let text = world.config_as("least", "least");
    let config = world.write_config(&text);
    let mut agent = world.start_agent_with(&config);
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world
        .sql("UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2;")
        .await;
    world.wait_for_value("t/2", None).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_binlog_connection_is_retried() {
    let world = World::new_mysql("connlost").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT seq, 0 FROM seq_1_to_100;")
        .await;
    // A user of its own, so that only this agent's binary-log connection is cut.
    world
        .mysql_admin(
            "DROP USER IF EXISTS 'connlost'@'127.0.0.1';
             CREATE USER 'connlost'@'127.0.0.1' IDENTIFIED BY 'connlost';
             GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'connlost'@'127.0.0.1';",
        )
        .await;
    let text = world.config_as("connlost", "connlost");
    let mut agent = world.start_agent_with(&world.write_config(&text));
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("UPDATE t SET v = 1 WHERE id <= 10").await;
    // Kill the binlog dump thread, as a network failure or a server restart would end it.
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let killed = world
            .mysql_admin_query(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'connlost' AND COMMAND LIKE 'Binlog Dump%'",
            )
            .await;
        if !killed.is_empty() {
            for id in killed {
                world.mysql_admin(&format!("KILL {id}")).await;
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no binary-log connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world
        .sql("UPDATE t SET v = 2 WHERE id <= 50; DELETE FROM t WHERE id > 90; INSERT INTO t VALUES (500, 5);")
        .await;
    world.assert_recovered(&mut agent).await;
    drop(agent);
    world.cleanup().await;
}
