//! A large backlog read through logical decoding's SQL interface (`database.postgres.
//! sql_catch_up`): it converges like the walsender's stream, leaves no copy of the slot behind,
//! streams on from where it ended, and survives `kill -9` and SIGTERM in the middle of it.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Rng, World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

/// 2,500 accounts, and a procedure committing `n` small transactions (inserts, updates, deletes,
/// primary-key moves; every 1,000th a 400-row update, larger than one etcd txn).
const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
    INSERT INTO accounts SELECT i, i, 'init' FROM generate_series(0, 2499) i;
    CREATE PROCEDURE churn(n int, seed int) LANGUAGE plpgsql AS $$
    DECLARE k int;
    BEGIN
        FOR i IN 1..n LOOP
            k := (i * 7919 + seed * 104729) % 3000;
            IF i % 1000 = 0 THEN
                UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN k AND k + 400;
            ELSIF i % 5 = 0 THEN
                DELETE FROM accounts WHERE id = k;
            ELSIF i % 5 = 1 THEN
                UPDATE accounts SET id = k + 3000
                 WHERE id = k AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = k + 3000);
            ELSE
                INSERT INTO accounts VALUES (k, i, md5(i::text))
                ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, note = excluded.note;
            END IF;
            COMMIT;
        END LOOP;
    END $$;";

/// More WAL than the 16 MiB from which a backlog is read through SQL; a non-transactional
/// message, which pgoutput (without `messages`) does not pass on.
const PAD: &str = "SELECT pg_logical_emit_message(false, 'pad', repeat('x', 17000000))";

const READING: &str = "reading the backlog through SQL";
const CAUGHT_UP: &str = "caught up through SQL";

async fn world(name: &str) -> World {
    let world = World::new(name).await;
    world.sql(SCHEMA).await;
    world
}

/// Copies of the slot the catch-up made that are still on the server.
async fn copies_left(world: &World) -> i64 {
    world
        .pg()
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name::text LIKE $1",
            &[&format!("{}_catchup_%", world.name)],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits for the server to drop every copy (a killed agent's session ends when the server
/// notices its connection closed).
async fn wait_no_copies(world: &World) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while copies_left(world).await > 0 {
        assert!(
            Instant::now() < deadline,
            "a copy of the slot outlived its session"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often `text` is in the log the agents of this world share.
fn log_count(world: &World, text: &str) -> usize {
    let log = std::fs::read_to_string(world.dir.join("agent.log")).unwrap_or_default();
    log.matches(text).count()
}

/// Waits for `text` to appear in the log more than `seen` times (the log is shared by every
/// agent of the world).
async fn wait_for_log(agent: &mut Agent, text: &str, seen: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while agent.log().matches(text).count() <= seen {
        assert!(
            agent.exited().is_none(),
            "the agent exited:\n{}",
            agent.log()
        );
        assert!(
            Instant::now() < deadline,
            "no new `{text}` in the log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_read_through_sql_then_streamed() {
    let world = world("sql_catchup").await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("CALL churn(300, 1)").await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());

    // Changes on both sides of the padding, all while the agent is stopped.
    world.sql("CALL churn(5000, 2)").await;
    world.sql(PAD).await;
    world.sql("CALL churn(2000, 3)").await;
    let mut agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    wait_for_log(&mut agent, CAUGHT_UP, 0, CONVERGE_TIMEOUT).await;
    assert_eq!(log_count(&world, READING), 1, "{}", agent.log());
    wait_no_copies(&world).await;

    // Streaming goes on from where the reads ended.
    world.sql("CALL churn(1000, 4)").await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;

    // The slot itself moved with etcd: a restart has no backlog to read again.
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let reads_before = log_count(&world, READING);
    let agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert_eq!(log_count(&world, READING), reads_before, "{}", agent.log());
    drop(agent);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_sigterm_during_sql_catch_up_converge() {
    let world = world("sql_catchup_faults").await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());

    let mut rng = Rng::new(20261124);
    let mut cut_mid_catch_up = 0;
    for round in 0..4 {
        world.sql(&format!("CALL churn(20000, {round})")).await;
        world.sql(PAD).await;
        let (reads, caught_up) = (log_count(&world, READING), log_count(&world, CAUGHT_UP));
        let mut agent = world.start_agent();
        wait_for_log(&mut agent, READING, reads, SYNC_TIMEOUT).await;
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        let mid = log_count(&world, CAUGHT_UP) == caught_up;
        if round % 2 == 0 {
            agent.kill9();
        } else {
            let status = agent.terminate(Duration::from_secs(20));
            assert!(status.success(), "SIGTERM exit status {status}");
        }
        cut_mid_catch_up += usize::from(mid);
    }
    assert!(
        cut_mid_catch_up > 0,
        "no cut fell inside a catch-up: the test did not test it"
    );

    let mut agent = world.start_agent();
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    wait_no_copies(&world).await;
    world.sql("CALL churn(500, 9)").await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.exited().is_none(), "{}", agent.log());
    drop(agent);
    world.cleanup().await;
}
