//! Failure modes a user relies on: SIGTERM during a dump, rows too large for etcd, and
//! secrets kept out of every log line.

mod common;

use common::{CONVERGE_TIMEOUT, SYNC_TIMEOUT};

use std::time::Duration;

use common::{restart_server, OwnEtcd, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_dump_exits_quickly_and_a_restart_converges() {
    let world = World::new("term_dump").await;
    world
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY, payload text);
             INSERT INTO items SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 200000) i;",
        )
        .await;
    let mut agent = world.start_agent();
    world.wait_for_keys(&mut agent, 2_000).await;
    let started = std::time::Instant::now();
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(world.state().await.expect("state")["phase"], "dump");
    world.sql("DELETE FROM items WHERE id % 3 = 0").await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_etcd_stops_the_agent_or_is_skipped() {
    let mut world = World::new("oversized").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'small'), (2, repeat('x', 10000));")
        .await;
    // The default: stop, naming the table and the key.
    let config_text = world
        .config_text(None)
        .replace("  prefix:", "  max_txn_bytes: 4096\n  prefix:");
    let config = world.write_config(&config_text);
    let output = world.run_command(&config, &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("table t: the row at")
            && stderr.contains("/t/2")
            && stderr.contains("oversized_rows"),
        "{stderr}"
    );

    // skip: the row is left out (logged), everything else flows.
    world.extra_config.clear();
    let config_text = config_text.replace(
        "  max_txn_bytes: 4096\n",
        "  max_txn_bytes: 4096\n  oversized_rows: skip\n",
    );
    let config = world.write_config(&config_text);
    let mut agent = world.start_agent_with(&config);
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert_eq!(world.etcd_value("t/2").await, None);
    assert_eq!(
        world.etcd_value("t/1").await.as_deref(),
        Some(r#"{"id":1,"v":"small"}"#)
    );
    world.sql("UPDATE t SET v = 'now small' WHERE id = 2").await;
    world
        .wait_for_value("t/2", Some(r#"{"id":2,"v":"now small"}"#))
        .await;
    // Growing too large deletes the key rather than leaving a stale value.
    world
        .sql("UPDATE t SET v = repeat('y', 10000) WHERE id = 1")
        .await;
    world.wait_for_value("t/1", None).await;
    assert!(agent.log().contains("row left out"), "{}", agent.log());
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_logs() {
    const PASSWORD: &str = "Zq7-unlikely-Pa55word";
    let world = World::new("secrets").await;
    world
        .pg_admin(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'secretive') THEN
                 CREATE ROLE secretive LOGIN REPLICATION PASSWORD '{PASSWORD}';
               END IF;
             END $$;
             CREATE TABLE t (id int PRIMARY KEY);
             ALTER TABLE t OWNER TO secretive;
             GRANT CREATE ON DATABASE {} TO secretive;",
            world.name
        ))
        .await;
    let text = world.config_as("secretive", "${SECRET_PW}");
    let config = world.write_config(&text);
    // At the most verbose level, through a dump, streaming and a clean stop.
    let mut agent =
        world.start_agent_env(&config, &[("SECRET_PW", PASSWORD), ("RUST_LOG", "trace")]);
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.pg_admin("INSERT INTO t VALUES (1)").await;
    world.wait_for_value("t/1", Some(r#"{"id":1}"#)).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let log = std::fs::read_to_string(world.dir.join("agent.log")).unwrap();
    assert!(log.len() > 10_000, "the trace log is suspiciously short");
    assert!(
        !log.contains(PASSWORD),
        "the password appears in the trace log"
    );

    // Errors neither: a wrong password, and check's report.
    let wrong = text.replace("${SECRET_PW}", "Zq7-wrong-Pa55word");
    let config = world.write_config(&wrong);
    for args in [&["run"][..], &["check"][..]] {
        let output = world.run_command(&config, args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success());
        assert!(!all.contains("Zq7-wrong-Pa55word"), "{all}");
    }
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_out_of_space_pauses_the_agent_until_space_is_freed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions};
    let etcd = OwnEtcd::start("nospace", &["--quota-backend-bytes", "16000000"]).await;
    let mut world = World::new("nospace").await;
    world.use_etcd(&etcd.endpoint).await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'a' FROM generate_series(1, 100) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;

    // Someone else fills etcd up until it raises the NOSPACE alarm.
    let mut kv = world.etcd.kv_client();
    let junk = "x".repeat(1_000_000);
    for i in 0.. {
        if kv
            .put(format!("/junk/{}", i % 4), junk.as_str(), None)
            .await
            .is_err()
        {
            break;
        }
        assert!(i < 200, "no NOSPACE alarm");
    }
    world.sql("UPDATE t SET v = 'b' WHERE id <= 10").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("out of space") {
        assert!(
            std::time::Instant::now() < deadline,
            "no out-of-space message:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = agent.log();
    assert!(
        log.contains("etcdctl defrag") && log.contains("alarm disarm"),
        "{log}"
    );
    assert!(agent.exited().is_none(), "the agent should wait, not exit");

    // The operator frees space; the agent resumes by itself.
    world
        .etcd
        .delete("/junk/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = world
        .etcd
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    world
        .etcd
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    world.etcd.defragment().await.unwrap();
    // Disarming names the member (etcdctl alarm disarm does the same for each).
    let member = world
        .etcd
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    let mut options = AlarmOptions::new();
    options.with_member(member);
    world
        .etcd
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_a_while_then_back_converges() {
    let mut etcd = OwnEtcd::start("restart", &[]).await;
    let mut world = World::new("etcd_restart").await;
    world.use_etcd(&etcd.endpoint).await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT i, 0 FROM generate_series(1, 200) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // Changes keep coming while etcd is down (killed, not stopped cleanly) for longer than
    // the lock's lease.
    let writes = async {
        for round in 1..=20 {
            world
                .sql(&format!(
                    "UPDATE t SET v = {round} WHERE id % 20 = {}",
                    round % 20
                ))
                .await;
            world
                .sql(&format!("INSERT INTO t VALUES ({}, 0)", 1000 + round))
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let outage = etcd.crash_for(Duration::from_secs(12));
    tokio::join!(writes, outage);
    world.use_etcd(&etcd.endpoint).await;
    world.assert_recovered(&mut agent).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_works_with_exactly_the_documented_grants() {
    let world = World::new("leastpg").await;
    world
        .pg_admin(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'leastpg') THEN
                 CREATE ROLE leastpg LOGIN REPLICATION PASSWORD 'leastpg';
               END IF;
             END $$;
             CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t VALUES (1, 'a'), (2, 'b');
             CREATE PUBLICATION {0} FOR TABLE t;
             GRANT SELECT ON t TO leastpg;
             GRANT SELECT ON t TO sync; -- for the test's own verify",
            world.name
        ))
        .await;
    let text = world.config_as("leastpg", "leastpg");
    let config = world.write_config(&text);
    let mut agent = world.start_agent_with(&config);
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world
        .pg_admin("UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2;")
        .await;
    world.wait_for_value("t/2", None).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

/// Changes before, during and after a database restart; the agent retries and converges.
async fn survives_a_database_restart(world: World, server: &str, update: &str, insert: &str) {
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql(&update.replace("{n}", "1")).await;
    restart_server(server);
    // The first statements after the restart may meet a server still starting up.
    for round in 2..=10 {
        let n = round.to_string();
        world.sql_retrying(&update.replace("{n}", &n)).await;
        world.sql_retrying(&insert.replace("{n}", &n)).await;
    }
    world.assert_recovered(&mut agent).await;
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_converges() {
    let world = World::new_on_faults_server("pg_restart").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT i, 0 FROM generate_series(1, 100) i;")
        .await;
    Box::pin(survives_a_database_restart(
        world,
        "pg-faults",
        "UPDATE t SET v = {n} WHERE id % 10 = {n} % 10",
        "INSERT INTO t VALUES (1000 + {n}, {n})",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted_mid_stream_converges() {
    let world = World::new_mysql_on_faults_server("my_restart").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT seq, 0 FROM seq_1_to_100;")
        .await;
    Box::pin(survives_a_database_restart(
        world,
        "mariadb-faults",
        "UPDATE t SET v = {n} WHERE id % 10 = {n} % 10",
        "INSERT INTO t VALUES (1000 + {n}, {n})",
    ))
    .await;
}
