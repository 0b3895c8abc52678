//! The dump's stale keys, for both databases against etcd 3.4 and 3.5: a first dump into empty
//! prefixes makes no stale-key pass at all; a dump over the keys of an earlier one (the position
//! lost) deletes exactly the keys of rows gone meanwhile, leftovers included, and etcd equals
//! the database afterwards. The table is large enough for the pass to list it in parts at once.

mod common;

use std::time::Duration;

use common::{World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

/// Enough rows for the stale-key pass to cut the table into parts (of about 4,096 keys).
const ROWS: i64 = 20_000;

async fn first_dump_then_redump_over_stale_keys(mut world: World, version: &str) {
    world.use_etcd_version(version).await;
    world
        .sql(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, v varchar(20));
             CREATE TABLE empty_one (id int PRIMARY KEY);
             INSERT INTO items SELECT {}, 'v' FROM {};",
            world.series_column(),
            world.series(1, ROWS)
        ))
        .await;

    // First dump: nothing under the prefixes, so no pass over them.
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let log = agent.log();
    assert!(
        log.contains("dump phase 2/3: no stale-key pass"),
        "a first dump listed the prefixes:\n{log}"
    );
    assert!(!log.contains("stale keys deleted"), "{log}");
    assert_eq!(world.etcd_key_count(&items_prefix(&world)).await, ROWS);
    assert!(agent.terminate(Duration::from_secs(30)).success());

    // While no agent runs: rows deleted, changed and added; a key no row ever had; the position
    // lost. The next start dumps again over the 20,000 keys.
    world
        .sql(&format!(
            "DELETE FROM items WHERE id % 10 = 0;
             UPDATE items SET v = 'changed' WHERE id % 7 = 0;
             INSERT INTO items SELECT {}, 'new' FROM {};",
            world.series_column(),
            world.series(ROWS + 1, ROWS + 100)
        ))
        .await;
    world
        .etcd_put(&format!("{}leftover", items_prefix(&world)), "{}")
        .await;
    world.lose_position().await;

    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let log = agent.log();
    let started = log
        .lines()
        .find(|l| l.contains("dump phase 2/3: stale-key pass started"))
        .unwrap_or_else(|| panic!("no stale-key pass over existing keys:\n{log}"));
    let parts: usize = started
        .split("parts=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(parts >= 4, "the table was not listed in parts: {started}");
    let line = log
        .lines()
        .find(|l| l.contains("dump phase 2/3: stale keys deleted"))
        .unwrap_or_else(|| panic!("no stale-key pass over existing keys:\n{log}"));
    assert!(
        line.contains(&format!("stale_keys_deleted={}", ROWS / 10 + 1)),
        "{line}"
    );
    // Every key there was listed once: the old ones, the 100 new, the leftover.
    assert!(
        line.contains(&format!("keys_listed={}", ROWS + 101)),
        "{line}"
    );
    // The empty table had no keys at the dump's start: it was not listed at all.
    let with_keys: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keys from an earlier snapshot exist"))
        .collect();
    assert_eq!(with_keys.len(), 1, "{with_keys:?}");
    assert!(with_keys[0].contains("table=items"), "{with_keys:?}");
    assert_eq!(
        world.etcd_key_count(&items_prefix(&world)).await,
        ROWS - ROWS / 10 + 100
    );
    assert_eq!(world.etcd_value("items/10").await, None);
    assert_eq!(world.etcd_value("items/leftover").await, None);
    assert!(world
        .etcd_value("items/7")
        .await
        .is_some_and(|v| v.contains("changed")));
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(30)).success());
    world.cleanup().await;
}

fn items_prefix(world: &World) -> String {
    format!("{}/items/", world.prefix())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redump_deletes_stale_keys_etcd_3_4() {
    Box::pin(first_dump_then_redump_over_stale_keys(
        World::new("dump_pg34").await,
        "3.4",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redump_deletes_stale_keys_etcd_3_5() {
    Box::pin(first_dump_then_redump_over_stale_keys(
        World::new("dump_pg35").await,
        "3.5",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_redump_deletes_stale_keys_etcd_3_4() {
    Box::pin(first_dump_then_redump_over_stale_keys(
        World::new_mysql("dump_my34").await,
        "3.4",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_redump_deletes_stale_keys_etcd_3_5() {
    Box::pin(first_dump_then_redump_over_stale_keys(
        World::new_mysql("dump_my35").await,
        "3.5",
    ))
    .await;
}
