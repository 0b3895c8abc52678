//! Database failover, as users go through it: the primary killed under load, its replica
//! promoted, the agent restarted against the new primary.
//! - MariaDB, replica caught up (GTID replication, log_slave_updates): the agent continues from
//!   its GTID on the new primary, without a dump.
//! - MariaDB, replica behind (it lacks the primary's last transactions, which etcd has): the
//!   agent finds its GTID missing from the new primary's binary log and dumps again; the rows
//!   only the dead primary had leave etcd.
//! - PostgreSQL 15, physical standby: logical slots do not fail over before PostgreSQL 17, so
//!   the agent finds no slot, says so, dumps again and converges, with no stale key left.
//!
//! The primaries are the fault tests' servers (`pg-faults`, `mariadb-faults`); their failover
//! targets are set up again at the start of each test. One test at a time.

mod common;

use std::time::Duration;

use tokio::sync::Mutex;

use common::{
    kill_server, start_server, Agent, TestEnv, Transfers, World, CONVERGE_TIMEOUT, SYNC_TIMEOUT,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const NOTE: &str = r#"{"id":1,"v":"only on the old primary"}"#;

fn dumps(agent: &Agent) -> usize {
    agent.log().matches("dump finished").count()
}

/// Waits until the replica at `port` has applied everything the primary wrote.
async fn mariadb_replica_caught_up(world: &World, primary: &str, replica: &str) {
    let gtid = world
        .admin_query_on(primary, "SELECT @@gtid_binlog_pos")
        .await;
    let waited = world
        .admin_query_on(
            replica,
            &format!("SELECT CAST(MASTER_GTID_WAIT('{gtid}', 60) AS CHAR)"),
        )
        .await;
    assert_eq!(waited, "0", "the replica did not reach {gtid}");
}

/// The bank and a `notes` table on the primary, the agent in the sync phase, and transfers
/// running there for 2 s already.
async fn on_the_old_primary(world: &World, seed: u64) -> (Agent, Transfers) {
    world.create_bank().await;
    world
        .sql("CREATE TABLE notes (id int PRIMARY KEY, v varchar(40))")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let transfers = world.start_transfers(seed, 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (agent, transfers)
}

/// The agent started against the promoted server at `port`, transfers there for 2 s, and etcd
/// converged with it.
async fn on_the_new_primary(world: &mut World, port: &str, before: u64) -> Agent {
    world.move_to_port(port).await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let transfers = world.start_transfers(6, 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = transfers.stop().await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    eprintln!("{before} transfers before the failover, {after} after");
    agent
}

async fn mariadb_failover(behind: bool) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::load();
    let (primary, replica) = (env.get("MYSQL_FAULTS_PORT"), env.get("MYSQL_REPLICA_PORT"));
    start_server("mariadb-faults");
    start_server("mariadb-faults-replica");
    let name = if behind {
        "failover_behind"
    } else {
        "failover"
    };
    let mut world = World::new_mysql_on_faults_server(name).await;
    let (agent, transfers) = on_the_old_primary(&world, 5).await;
    if behind {
        // The replica stops here; what follows reaches the primary and etcd only.
        world.admin_sql_on(&replica, "STOP SLAVE").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        world
            .sql("INSERT INTO notes VALUES (1, 'only on the old primary')")
            .await;
        world.wait_for_value("notes/1", Some(NOTE)).await;
    }
    let (before, _) = transfers.stop().await;
    if !behind {
        mariadb_replica_caught_up(&world, &primary, &replica).await;
    }

    kill_server("mariadb-faults");
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world
        .admin_sql_on(&replica, "STOP SLAVE;\nRESET SLAVE ALL")
        .await;
    let agent = on_the_new_primary(&mut world, &replica, before).await;
    let log = agent.log();
    if behind {
        assert!(log.contains("is not in the master's binlog"), "{log}");
        assert!(log.contains("dumping again"), "{log}");
        assert_eq!(dumps(&agent), 2, "{log}");
        assert_eq!(world.etcd_value("notes/1").await, None);
    } else {
        assert!(
            log.contains("resuming the stream from the stored position"),
            "{log}"
        );
        assert_eq!(dumps(&agent), 1, "the agent dumped again:\n{log}");
    }
    drop(agent);
    world.cleanup().await;
    start_server("mariadb-faults");
    start_server("mariadb-faults-replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_failover_to_a_caught_up_replica_continues_by_gtid() {
    Box::pin(mariadb_failover(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_failover_to_a_replica_behind_dumps_again() {
    Box::pin(mariadb_failover(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_to_a_promoted_standby_dumps_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::load();
    let (primary, standby) = (env.get("PG_FAULTS_PORT"), env.get("PG_STANDBY_PORT"));
    start_server("pg-faults");
    start_server("pg-faults-standby");
    let mut world = World::new_on_faults_server("failover").await;
    let (agent, transfers) = on_the_old_primary(&world, 7).await;

    // The standby stops receiving (as one behind would be); a row only the primary gets.
    // (Two statements: ALTER SYSTEM refuses to run in the implicit transaction of a list.)
    world
        .admin_sql_on(&standby, "ALTER SYSTEM SET primary_conninfo = ''")
        .await;
    world
        .admin_sql_on(&standby, "SELECT pg_reload_conf()")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    world
        .sql("INSERT INTO notes VALUES (1, 'only on the old primary')")
        .await;
    world.wait_for_value("notes/1", Some(NOTE)).await;

    // The primary dies under load; the standby is promoted.
    kill_server("pg-faults");
    let (before, _) = transfers.stop().await;
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world
        .admin_sql_on(&standby, "SELECT pg_promote(true, 60)")
        .await;
    let agent = on_the_new_primary(&mut world, &standby, before).await;
    let log = agent.log();
    assert!(
        log.contains(&format!("replication slot {} does not exist", world.name)),
        "{log}"
    );
    assert!(log.contains("dumping again"), "{log}");
    assert_eq!(dumps(&agent), 2, "{log}");
    assert_eq!(world.etcd_value("notes/1").await, None);
    drop(agent);
    world.cleanup().await;

    // As found: the old primary back (its slot of this test dropped), a new standby of it.
    start_server("pg-faults");
    world_slot_dropped(&env, &primary, "t_failover").await;
    start_server("pg-faults-standby");
}

async fn world_slot_dropped(env: &TestEnv, port: &str, slot: &str) {
    let conn = format!(
        "host={} port={port} user={} password={} dbname=postgres",
        env.get("PG_HOST"),
        env.get("PG_ADMIN_USER"),
        env.get("PG_ADMIN_PASSWORD"),
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}'"
        ))
        .await
        .unwrap();
}
