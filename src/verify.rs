//! `sync verify`: compares the database with etcd, key for key and byte for byte, in bounded
//! memory and while the agent runs.
//!
//! 1. Each table is read in one database snapshot and its etcd prefix at one revision; both
//!    sides are folded into per-bucket digests (a key's bucket is a hash of the key; a bucket's
//!    digest is the count and the wrapping sum of hashes of key and value), so memory is a
//!    fixed number of buckets whatever the table size.
//! 2. Only buckets whose digests differ are read again, key by key, a group of buckets at a time
//!    (at most [`DETAIL_KEYS`] keys held at once), which names each missing, extra or
//!    different key.
//! 3. A running agent is behind the database by its lag, so a difference may be a change etcd
//!    has not seen yet. Differences are re-checked after waiting ([`RECHECK_WAITS`]); a key is
//!    reported once it differed in every round with the database row unchanged since the round
//!    before. A row that changed between every round is reported as unsettled, not different.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use etcd_sync_api::{Driver, DumpEvent, SourceTable, TableSchema};
use tokio::sync::mpsc;

use crate::encode::table_prefix;
use crate::engine::shape::Shapes;
use crate::engine::{EngineError, Settings};
use crate::etcd::Store;

/// Examples kept per kind of difference.
const EXAMPLES: usize = 5;
/// Buckets per table in the digest pass.
const BUCKETS: usize = 4096;
/// Keys (of both sides) held in memory at once while naming differences.
const DETAIL_KEYS: u64 = 200_000;
/// Differences re-checked one by one; beyond this many, the difference is not lag.
const RECHECK_KEYS: usize = 10_000;
/// Waits before each re-check round: time for a running agent to catch up.
const RECHECK_WAITS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

#[derive(Debug, Default)]
pub struct TableReport {
    pub table: String,
    pub rows: u64,
    pub keys: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Rows that changed between every re-check: neither equal nor shown to differ.
    pub unsettled: u64,
    pub examples: Vec<String>,
}

/// What `verify` found, as its exit status tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Equal,
    Different,
    /// No difference found, but some rows changed during every re-check.
    Unsettled,
}

/// Prints one line per table (with examples of differences) and the verdict, to stdout.
pub fn report(reports: &[TableReport]) -> Verdict {
    use crate::logging::say;
    for r in reports {
        let unsettled = if r.unsettled > 0 {
            format!(", {} unsettled", r.unsettled)
        } else {
            String::new()
        };
        say(format_args!(
            "table {}: {} rows, {} keys, {} missing, {} extra, {} different{unsettled}",
            r.table, r.rows, r.keys, r.missing, r.extra, r.different,
        ));
        for example in &r.examples {
            say(format_args!("  {example}"));
        }
    }
    let unsettled: u64 = reports.iter().map(|r| r.unsettled).sum();
    if !reports.iter().all(TableReport::is_equal) {
        say("etcd differs from the database");
        Verdict::Different
    } else if unsettled > 0 {
        say(format_args!(
            "no difference found, but {unsettled} rows changed during every re-check and could \
             not be compared: run verify again when they are quieter"
        ));
        Verdict::Unsettled
    } else {
        say("etcd equals the database");
        Verdict::Equal
    }
}

impl TableReport {
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES * 3 {
            self.examples.push(text);
        }
    }
}

/// Per-bucket counts and hash sums of one side of one table.
struct Digest {
    counts: Vec<u64>,
    sums: Vec<u64>,
}

impl Digest {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            sums: vec![0; BUCKETS],
        }
    }

    fn add(&mut self, key: &str, value: &[u8]) {
        let bucket = bucket_of(key);
        self.counts[bucket] += 1;
        self.sums[bucket] = self.sums[bucket].wrapping_add(item_hash(key, value));
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

fn bucket_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % BUCKETS as u64) as usize
}

fn item_hash(key: &str, value: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    (key, value).hash(&mut hasher);
    hasher.finish()
}

/// The buckets that differ, in groups of at most [`DETAIL_KEYS`] keys (a larger bucket alone).
fn differing_groups(db: &Digest, etcd: &Digest) -> Vec<HashSet<usize>> {
    let mut groups = Vec::new();
    let mut group = HashSet::new();
    let mut size = 0;
    for bucket in 0..BUCKETS {
        if db.counts[bucket] == etcd.counts[bucket] && db.sums[bucket] == etcd.sums[bucket] {
            continue;
        }
        let keys = db.counts[bucket] + etcd.counts[bucket];
        if size + keys > DETAIL_KEYS && !group.is_empty() {
            groups.push(std::mem::take(&mut group));
            size = 0;
        }
        group.insert(bucket);
        size += keys;
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// One key's two sides.
#[derive(Debug, Clone, PartialEq)]
struct Difference {
    database: Option<Vec<u8>>,
    etcd: Option<Vec<u8>>,
}

pub async fn verify<D: Driver>(
    driver: D,
    etcd: &crate::etcd::Connection,
    settings: &Settings,
) -> Result<Vec<TableReport>, EngineError> {
    let store = Store::connect(etcd, &settings.state_prefix).await?;
    let tables = driver.select_tables().await?.tables;
    let mut db_digests: HashMap<String, Digest> = HashMap::new();
    scan_database(&driver, &tables, settings, |table, key, value| {
        db_digests
            .entry(table.to_owned())
            .or_insert_with(Digest::new)
            .add(&key, &value)
    })
    .await?;
    let mut reports = Vec::new();
    for table in &tables {
        let name = table.schema().id.to_string();
        let db = db_digests.remove(&name).unwrap_or_else(Digest::new);
        let mut etcd = Digest::new();
        scan_etcd(&store, settings, table.schema(), |key, value| {
            etcd.add(&key, &value)
        })
        .await?;
        let mut report = TableReport {
            table: name,
            rows: db.total(),
            keys: etcd.total(),
            ..Default::default()
        };
        let mut differences: HashMap<String, Difference> = HashMap::new();
        for group in differing_groups(&db, &etcd) {
            let found = differences_in(&driver, &store, settings, table, |key| {
                group.contains(&bucket_of(key))
            })
            .await?;
            if differences.len() + found.len() > RECHECK_KEYS {
                // Far more than lag explains: report without re-checking.
                count(&mut report, found);
            } else {
                differences.extend(found);
            }
        }
        let (confirmed, unsettled) = recheck(&driver, &store, settings, table, differences).await?;
        report.unsettled = unsettled.len() as u64;
        for key in unsettled.keys().take(EXAMPLES) {
            report.example(format!(
                "unsettled {key}: the row changed during every re-check"
            ));
        }
        count(&mut report, confirmed);
        reports.push(report);
    }
    reports.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(reports)
}

/// Re-reads `differences` after each wait; returns the confirmed and the unsettled ones.
async fn recheck<D: Driver>(
    driver: &D,
    store: &Store,
    settings: &Settings,
    table: &D::Table,
    mut differences: HashMap<String, Difference>,
) -> Result<(HashMap<String, Difference>, HashMap<String, Difference>), EngineError> {
    let mut unsettled = HashMap::new();
    for wait in RECHECK_WAITS {
        if differences.is_empty() {
            break;
        }
        tokio::time::sleep(wait).await;
        let keys: HashSet<String> = differences.keys().cloned().collect();
        let now = differences_in(driver, store, settings, table, |key| keys.contains(key)).await?;
        unsettled.clear();
        let mut still = HashMap::new();
        for (key, before) in differences {
            let Some(after) = now.get(&key) else { continue };
            if after.database == before.database {
                still.insert(key, after.clone());
            } else {
                unsettled.insert(key, after.clone());
            }
        }
        differences = still;
        // A row still moving gets another round; one that settled and differs stays.
        differences.extend(unsettled.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for key in unsettled.keys() {
        differences.remove(key);
    }
    Ok((differences, unsettled))
}

/// Reads the keys `wanted` selects from both sides; returns those that differ.
async fn differences_in<D: Driver>(
    driver: &D,
    store: &Store,
    settings: &Settings,
    table: &D::Table,
    wanted: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Difference>, EngineError> {
    let mut database: HashMap<String, Vec<u8>> = HashMap::new();
    scan_database(
        driver,
        std::slice::from_ref(table),
        settings,
        |_, key, value| {
            if wanted(&key) {
                database.insert(key, value);
            }
        },
    )
    .await?;
    let mut differences = HashMap::new();
    scan_etcd(store, settings, table.schema(), |key, value| {
        if !wanted(&key) {
            return;
        }
        match database.remove(&key) {
            Some(db) if db == value => {}
            db => {
                differences.insert(
                    key,
                    Difference {
                        database: db,
                        etcd: Some(value),
                    },
                );
            }
        }
    })
    .await?;
    for (key, value) in database {
        differences.insert(
            key,
            Difference {
                database: Some(value),
                etcd: None,
            },
        );
    }
    Ok(differences)
}

/// Adds differences to the report's counts and examples, in key order.
fn count(report: &mut TableReport, differences: HashMap<String, Difference>) {
    let mut sorted: Vec<(String, Difference)> = differences.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut missing, mut extra, mut different) = (0, 0, 0);
    for (key, difference) in sorted {
        match (difference.database, difference.etcd) {
            (Some(_), None) => {
                report.missing += 1;
                missing += 1;
                if missing <= EXAMPLES {
                    report.example(format!("missing key {key}"));
                }
            }
            (None, Some(_)) => {
                report.extra += 1;
                extra += 1;
                if extra <= EXAMPLES {
                    report.example(format!("extra key {key}"));
                }
            }
            (Some(db), Some(etcd)) => {
                report.different += 1;
                different += 1;
                if different <= EXAMPLES {
                    report.example(format!(
                        "different {key}: etcd has {}, the database {}",
                        String::from_utf8_lossy(&etcd),
                        String::from_utf8_lossy(&db)
                    ));
                }
            }
            (None, None) => {}
        }
    }
}

/// Streams every row of `tables` in one snapshot as (table, key, value).
async fn scan_database<D: Driver>(
    driver: &D,
    tables: &[D::Table],
    settings: &Settings,
    mut visit: impl FnMut(&str, String, Vec<u8>),
) -> Result<(), EngineError> {
    let mut shapes = Shapes::new(std::sync::Arc::clone(&settings.options));
    let (tx, mut rx) = mpsc::channel(16);
    let read = driver.read_snapshot(tables, tx);
    let consume = async {
        while let Some(event) = rx.recv().await {
            if let DumpEvent::Rows { table, rows } = event {
                let name = table.id.to_string();
                let shape = shapes.get(&table)?;
                for row in &rows {
                    // Rows the table's filter leaves out have no key.
                    if let Some(value) = shape.value(row, None)? {
                        visit(&name, shape.key(&settings.prefix, row)?, value);
                    }
                }
            }
        }
        Ok::<_, EngineError>(())
    };
    let (read, consumed) = tokio::join!(read, consume);
    consumed?;
    read?;
    Ok(())
}

/// Pages through a table's etcd prefix as (key, value), at one revision.
async fn scan_etcd(
    store: &Store,
    settings: &Settings,
    table: &TableSchema,
    mut visit: impl FnMut(String, Vec<u8>),
) -> Result<(), EngineError> {
    let mut scan = store.snapshot_scan(&table_prefix(&settings.prefix, &table.id));
    loop {
        let page = scan.next().await?;
        if page.is_empty() {
            return Ok(());
        }
        for (listed, value) in page {
            visit(listed.key, value.unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sides_have_equal_digests_whatever_the_order() {
        let mut a = Digest::new();
        let mut b = Digest::new();
        for i in 0..1000 {
            a.add(&format!("/p/t/{i}"), format!("{{\"id\":{i}}}").as_bytes());
        }
        for i in (0..1000).rev() {
            b.add(&format!("/p/t/{i}"), format!("{{\"id\":{i}}}").as_bytes());
        }
        assert!(differing_groups(&a, &b).is_empty());
        b.add("/p/t/extra", b"{}");
        let groups = differing_groups(&a, &b);
        assert_eq!(groups.len(), 1);
        assert!(groups[0].contains(&bucket_of("/p/t/extra")));
    }

    #[test]
    fn differing_buckets_come_in_bounded_groups() {
        let mut a = Digest::new();
        let b = Digest::new();
        // Every bucket differs, with 100 keys each: 409,600 keys in groups of at most 200,000.
        for bucket in 0..BUCKETS {
            a.counts[bucket] = 100;
        }
        let groups = differing_groups(&a, &b);
        assert_eq!(groups.iter().map(HashSet::len).sum::<usize>(), BUCKETS);
        for group in &groups {
            assert!(group.len() as u64 * 100 <= DETAIL_KEYS);
        }
        assert_eq!(groups.len(), 3);
    }
}
