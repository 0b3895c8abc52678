//! A PostgreSQL slot invalidated by `max_slot_wal_keep_size` (`wal_status = lost`): detected
//! before streaming, logged, and a full re-dump that converges.
//!
//! Alone in its test binary: it lowers `max_slot_wal_keep_size` on the faults server, which
//! would invalidate the slots of other tests running there at the same time.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

/// Puts `max_slot_wal_keep_size` back however the test ends.
struct RestoreWalKeep {
    port: String,
    password: String,
}

impl Drop for RestoreWalKeep {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", "ALTER SYSTEM RESET max_slot_wal_keep_size"])
            .args(["-c", "SELECT pg_reload_conf()"])
            .env("PGPASSWORD", &self.password)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_leads_to_a_new_dump_that_converges() {
    let world = World::new_on_faults_server("walslot").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'a' FROM generate_series(1, 100) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    // Changes the slot would have carried, then the server drops the WAL they are in.
    world
        .sql("DELETE FROM t WHERE id <= 10; UPDATE t SET v = 'b' WHERE id > 90; INSERT INTO t VALUES (1000, 'c');")
        .await;
    let restore = RestoreWalKeep {
        port: world.env.get("PG_FAULTS_PORT"),
        password: world.env.get("PG_ADMIN_PASSWORD"),
    };
    world
        .pg_admin("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await;
    world.pg_admin("SELECT pg_reload_conf()").await;
    let mut status = String::new();
    for _ in 0..30 {
        world
            .pg_admin("SELECT pg_logical_emit_message(false, 'filler', repeat('x', 4000000))")
            .await;
        world.pg_admin("SELECT pg_switch_wal()").await;
        world.pg_admin("CHECKPOINT").await;
        let row = world
            .pg()
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&world.name],
            )
            .await
            .unwrap();
        status = row.get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the slot was not invalidated");
    drop(restore);

    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.log().contains("wal_status = lost"), "{}", agent.log());
    assert!(world.etcd_value("t/1").await.is_none());
    assert_eq!(
        world.etcd_value("t/1000").await.as_deref(),
        Some(r#"{"id":1000,"v":"c"}"#)
    );
    drop(agent);
    world.cleanup().await;
}
