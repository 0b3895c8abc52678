//! What operators use: metrics and health endpoints, `status`, and start positions.

mod common;

use common::{CONVERGE_TIMEOUT, SYNC_TIMEOUT};

use std::time::{Duration, Instant};

use common::{free_port, http_get, metric, World};

/// Scrapes until `check` accepts the metrics text.
fn scrape_until(port: u16, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some((200, text)) = http_get(port, "/metrics") {
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}:\n{text}");
        }
        assert!(Instant::now() < deadline, "{what}: /metrics not served");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_while_syncing() {
    let mut world = World::new("metrics").await;
    let port = free_port();
    world.extra_config = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'a' FROM generate_series(1, 100) i;")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;

    let text = scrape_until(port, "dump metrics", |t| {
        metric(t, "etcd_sync_rows_dumped_total{table=\"t\"}") == Some(100.0)
    });
    assert_eq!(
        metric(&text, "etcd_sync_phase{phase=\"sync\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    world
        .sql("INSERT INTO t VALUES (101, 'b'); UPDATE t SET v = 'c' WHERE id <= 5;")
        .await;
    let text = scrape_until(port, "stream metrics", |t| {
        metric(
            t,
            "etcd_sync_changes_applied_total{table=\"t\",op=\"update\"}",
        ) == Some(5.0)
            && metric(
                t,
                "etcd_sync_changes_applied_total{table=\"t\",op=\"insert\"}",
            ) == Some(1.0)
            // Set once the position is acknowledged, just after the changes are counted.
            && metric(t, "etcd_sync_position").unwrap_or(0.0) > 0.0
    });
    let lag = metric(&text, "etcd_sync_replication_lag_seconds").expect("lag gauge");
    assert!((0.0..10.0).contains(&lag), "lag {lag}");
    // One simple-query string is one implicit transaction.
    assert!(metric(&text, "etcd_sync_source_transactions_total").unwrap_or(0.0) >= 1.0);
    assert!(
        metric(&text, "etcd_sync_etcd_txn_duration_seconds_count").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "etcd_sync_position").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    let (status, body) = http_get(port, "/readyz").expect("/readyz");
    assert_eq!(status, 200, "{body}");

    // status --json, while the agent runs.
    let output = world.run_command(&world.config(), &["status", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["phase"], "sync", "{status}");
    assert_eq!(status["keys"]["t"], 101, "{status}");
    assert!(status["position"]["lsn"].is_string(), "{status}");
    assert!(status["behind_bytes"].is_u64(), "{status}");
    assert!(
        status["updated_seconds_ago"].as_f64().unwrap() < 60.0,
        "{status}"
    );
    let output = world.run_command(&world.config(), &["status"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("table t: 101 keys"));

    assert!(agent.terminate(Duration::from_secs(10)).success());
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_start_position_skips_the_dump() {
    let mut world = World::new("startlsn").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);")
        .await;
    let lsn: String = world
        .pg()
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    world.extra_config = format!("start:\n  lsn: {lsn}\n");
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("INSERT INTO t VALUES (11)").await;
    world.wait_for_value("t/11", Some(r#"{"id":11}"#)).await;
    assert_eq!(
        world.etcd_value("t/1").await,
        None,
        "rows before the start were dumped"
    );
    assert!(
        agent.log().contains("configured start position"),
        "{}",
        agent.log()
    );
    assert!(agent.terminate(Duration::from_secs(10)).success());

    // With a state, the configured start is ignored.
    world.extra_config = "start:\n  lsn: 0/1\n".into();
    let agent = world.start_agent();
    world.sql("INSERT INTO t VALUES (12)").await;
    world.wait_for_value("t/12", Some(r#"{"id":12}"#)).await;
    assert!(
        agent.log().contains("start position is ignored"),
        "{}",
        agent.log()
    );
    drop(agent);

    // A position the server has not reached is refused.
    let mut fresh = World::new("startlsn_future").await;
    fresh.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    fresh.extra_config = "start:\n  lsn: FFFF/0\n".into();
    let output = fresh.run_command(&fresh.config(), &["run"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("beyond the server's current WAL position"));
    fresh.cleanup().await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_start_position_skips_the_dump() {
    let mut world = World::new_mysql("startpos").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .await;
    let (file, position) = world.mysql_master_status().await;
    world.extra_config = format!("start:\n  file: {file}\n  position: {position}\n");
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("INSERT INTO t VALUES (3)").await;
    world.wait_for_value("t/3", Some(r#"{"id":3}"#)).await;
    assert_eq!(
        world.etcd_value("t/1").await,
        None,
        "rows before the start were dumped"
    );
    drop(agent);

    // A file the server does not have is refused.
    let mut fresh = World::new_mysql("startpos_gone").await;
    fresh.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    fresh.extra_config = "start:\n  file: binlog.999999\n  position: 4\n".into();
    let output = fresh.run_command(&fresh.config(), &["run"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("binlog.999999") && stderr.contains("no longer on the server"),
        "{stderr}"
    );
    fresh.cleanup().await;
    world.cleanup().await;
}

/// `--config-file` goes before or after the command; without it, one line says what to pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_flag_is_global() {
    let world = World::new("globalflag").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let config = world.config();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sync"))
        .args(["check", "--config-file"])
        .arg(&config)
        .env("TEST_DB_PASSWORD", world.env.get("PG_PASSWORD"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sync"))
        .arg("status")
        .env_remove("SYNC_CONFIG_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no config file: pass --config-file FILE"),
        "{stderr}"
    );
    world.cleanup().await;
}

/// Waits until `/readyz` answers 503 with a body containing `want`.
fn readyz_says(port: u16, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((503, body)) = http_get(port, "/readyz") {
            if body.contains(want) {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never said {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server that is not where the config says: the agent retries, but its first failure says
/// which config fields to check, in one line, and so do `/readyz` and `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_explained_with_the_fields_to_check() {
    let mut world = World::new("unreachable").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let port = free_port();
    world.extra_config = format!("metrics:\n  listen: 127.0.0.1:{port}\n");

    // The database's port is wrong.
    let dead = free_port().to_string();
    let config = world.write_config(&world.config_text(Some(&dead)));
    let agent = world.start_agent_with(&config);
    let body = readyz_says(port, "check database.host and database.port");
    assert!(body.contains(&format!("127.0.0.1:{dead}")), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(
        log.matches("check database.host and database.port").count(),
        1,
        "{log}"
    );
    assert!(log.matches("Connection refused").count() >= 3, "{log}");
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let output = world.run_command(&config, &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("check database.host and database.port"),
        "{stdout}"
    );

    // etcd's endpoint is dead: one line, no transport debug dump.
    std::fs::remove_file(world.dir.join("agent.log")).unwrap();
    let etcd_port = free_port();
    world.etcd_endpoint = format!("http://127.0.0.1:{etcd_port}");
    let config = world.config();
    let agent = world.start_agent_with(&config);
    readyz_says(port, "check etcd.endpoints");
    let log = agent.log();
    assert!(log.contains("check etcd.endpoints"), "{log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("tonic::transport"), "{log}");
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let output = world.run_command(&config, &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("check etcd.endpoints"), "{stdout}");
    world.cleanup().await;
}

/// The sync phase says what it does: the first change after a quiet spell at once, a line
/// every 5 s while changes flow (with the position reached), one when they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_phase_logs_progress_at_a_steady_cadence() {
    let world = World::new("cadence").await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("INSERT INTO t VALUES (0)").await;
    world.wait_for_value("t/0", Some(r#"{"id":0}"#)).await;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        agent
            .log()
            .contains("sync: changes arrive again; the first is applied"),
        "{}",
        agent.log()
    );
    // Changes for 12 s: at least two progress lines, each with a position.
    let start = Instant::now();
    let mut id = 1;
    while start.elapsed() < Duration::from_secs(12) {
        world.sql(&format!("INSERT INTO t VALUES ({id})")).await;
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Within two intervals of the last change, the line that says they stopped.
    let deadline = Instant::now() + Duration::from_secs(12);
    while !agent.log().contains("sync idle: caught up with the source") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = agent.log();
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sync progress"))
        .collect();
    assert!(progress.len() >= 2, "{log}");
    assert!(
        progress.iter().all(|l| l.contains("position={\"lsn\"")),
        "{log}"
    );
    drop(agent);
    world.cleanup().await;
}
