//! One writer at a time: without `ha` a second agent is refused; with `ha` a standby takes
//! over from a dead or partitioned leader, whose writes can no longer land.

mod common;

use common::{CONVERGE_TIMEOUT, SYNC_TIMEOUT};

use std::process::Command;
use std::time::{Duration, Instant};

use common::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_without_ha_is_refused() {
    let mut world = World::new("lock").await;
    world.extra_config = "ha:\n  lease_ttl: 2s\n".into();
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut first = world.start_agent();
    world.wait_for_sync_phase(&mut first, SYNC_TIMEOUT).await;

    let started = Instant::now();
    let output = world.run_command(&world.config(), &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("another agent") && stderr.contains("ha.enabled: true"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // The first one is undisturbed.
    world.sql("INSERT INTO t VALUES (1)").await;
    world.wait_for_value("t/1", Some(r#"{"id":1}"#)).await;
    assert!(first.exited().is_none(), "{}", first.log());
    drop(first);
    world.cleanup().await;
}

/// Which of two agents the election picked, from `status --json`.
fn leader(world: &World) -> String {
    let output = world.run_command(&world.config(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    status["leader"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ha_a_standby_takes_over_from_a_killed_leader() {
    let mut world = World::new("ha_kill").await;
    world.extra_config = "ha:\n  enabled: true\n  lease_ttl: 3s\n".into();
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    let mut a = world.start_agent();
    world.wait_for_sync_phase(&mut a, SYNC_TIMEOUT).await;
    let b = world.start_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        leader(&world).ends_with(&format!(":{}", a.pid())),
        "{}",
        leader(&world)
    );

    world
        .sql("INSERT INTO t SELECT i, 0 FROM generate_series(1, 50) i")
        .await;
    world
        .wait_for_value("t/50", Some(r#"{"id":50,"v":0}"#))
        .await;
    a.kill9();
    let killed = Instant::now();
    world
        .sql("UPDATE t SET v = 1; INSERT INTO t VALUES (51, 1);")
        .await;
    world
        .wait_for_value("t/51", Some(r#"{"id":51,"v":1}"#))
        .await;
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "takeover took {:?}",
        killed.elapsed()
    );
    assert!(leader(&world).ends_with(&format!(":{}", b.pid())));
    world.wait_converged(Some(&b), CONVERGE_TIMEOUT).await;
    assert!(b.log().contains("elected leader"), "{}", b.log());
    drop(b);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ha_a_partitioned_leader_is_fenced_and_steps_down() {
    let mut world = World::new("ha_partition").await;
    world.extra_config = "ha:\n  enabled: true\n  lease_ttl: 3s\n".into();
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    let mut a = world.start_agent();
    world.wait_for_sync_phase(&mut a, SYNC_TIMEOUT).await;
    let b = world.start_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Freeze the leader: it renews nothing (as if cut off from etcd) but holds whatever it
    // was doing; the standby takes over when the lease expires.
    Command::new("kill")
        .args(["-STOP", &a.pid().to_string()])
        .status()
        .unwrap();
    let frozen = Instant::now();
    world
        .sql("INSERT INTO t SELECT i, 0 FROM generate_series(1, 20) i")
        .await;
    world
        .wait_for_value("t/20", Some(r#"{"id":20,"v":0}"#))
        .await;
    // About the lease TTL, not PostgreSQL's wal_sender_timeout: the new leader takes the slot.
    assert!(
        frozen.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        frozen.elapsed()
    );
    assert!(leader(&world).ends_with(&format!(":{}", b.pid())));

    // The old leader wakes up: its writes are refused, it steps down and campaigns again.
    Command::new("kill")
        .args(["-CONT", &a.pid().to_string()])
        .status()
        .unwrap();
    world.sql("UPDATE t SET v = 2 WHERE id <= 10").await;
    world.wait_converged(Some(&b), CONVERGE_TIMEOUT).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.log().contains("campaigning") || a.log().matches("campaigning").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the old leader did not step down:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.exited().is_none(),
        "the old leader should wait as a standby:\n{}",
        a.log()
    );
    assert!(leader(&world).ends_with(&format!(":{}", b.pid())));
    drop(a);
    drop(b);
    world.cleanup().await;
}
