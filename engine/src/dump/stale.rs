//! Phase 2 of a snapshot: the removal of keys it did not write.
//!
//! A key the snapshot did not rewrite keeps a revision at or before the snapshot's start; the
//! pass lists each table's keys and deletes those. Listing a prefix is a chain of requests,
//! each waiting for the one before (its range is sized from the answer), and its first request
//! counts the whole prefix: over 1M keys the chain held 2.8–2.9 s of a 3.0 s pass, while the
//! deletes waited 0.03 s. So the keys the snapshot wrote are sampled, the table is cut at the
//! sample into parts of about half a request's page each, and the parts are listed several at
//! once while one writer deletes what they found: the same pass then took 1.6–2.0 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use etcd_sync_api::TableId;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::info;

use super::batch::BatchWriter;
use super::{EngineError, Settings, PROGRESS_EVERY};
use crate::encode::table_prefix;
use crate::sink::{Op, ScanStats, Sink, SinkScan};

/// Parts listed at once (listing 1M keys alone, ranges of 11k keys: one at a time 1.2–2.0 s,
/// four 0.7–1.0 s).
const LISTS_IN_FLIGHT: usize = 4;
/// Keys a part holds, about: under the page of a keys-only request (10,000), so that most parts
/// take one request. Half a page rather than a whole one: 1M keys, 10% stale, passed in
/// 1.6–2.0 s rather than 1.9–2.0 s, at a peak RSS of 45–49 MB rather than 62–92 (four pages
/// decoded at once). (Tests cut small tables.)
const PART_KEYS: u64 = if cfg!(test) { 20 } else { 4_096 };
/// Keys a table's sample holds at most (and at least half as many once it is full).
const SAMPLE_KEYS: usize = 1024;
/// Pages of stale keys between the listing and the deleting.
const STALE_PAGES_QUEUED: usize = 2 * LISTS_IN_FLIGHT;

/// Every `stride`th key a table's snapshot wrote, at most [`SAMPLE_KEYS`] of them: where to
/// cut the table's keys into parts of about as many keys each.
#[derive(Debug, Default)]
pub(super) struct KeySample {
    keys: Vec<String>,
    stride: u64,
    seen: u64,
}

impl KeySample {
    pub(super) fn offer(&mut self, key: &str) {
        let stride = self.stride.max(1);
        if self.seen % stride == 0 {
            self.keys.push(key.to_owned());
            if self.keys.len() == SAMPLE_KEYS {
                // Keep the keys at even multiples of the stride: the sample stays regular.
                let mut i = 0;
                self.keys.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride = stride * 2;
            }
        }
        self.seen += 1;
    }

    /// The keys that cut the table into parts of about `part_keys` keys (each sampled key
    /// stands for `stride` keys): none when it is smaller.
    fn cuts(&self, part_keys: u64) -> Vec<String> {
        let step = (part_keys / self.stride.max(1)).max(1) as usize;
        let mut sorted = self.keys.clone();
        sorted.sort_unstable();
        let mut cuts: Vec<String> = sorted.into_iter().skip(step).step_by(step).collect();
        cuts.dedup();
        cuts
    }
}

/// Samples of the keys a snapshot wrote, by table.
pub(super) type Samples = HashMap<TableId, KeySample>;

/// One range of a table's keys to list.
struct Part {
    table: TableId,
    prefix: String,
    from: String,
    to: Option<String>,
}

/// Splits each table's prefix at its sample's cuts (a table without a sample is one part).
fn parts(tables: &[TableId], samples: &Samples, settings: &Settings) -> Vec<Part> {
    let mut parts = Vec::new();
    for table in tables {
        let prefix = table_prefix(&settings.prefix, table);
        let cuts = samples
            .get(table)
            .map(|sample| sample.cuts(PART_KEYS))
            .unwrap_or_default();
        let mut from = prefix.clone();
        for cut in cuts {
            // A cut is a key the snapshot wrote, so under the prefix and past its start.
            if cut > from && cut.starts_with(&prefix) {
                parts.push(Part {
                    table: table.clone(),
                    prefix: prefix.clone(),
                    from: std::mem::replace(&mut from, cut.clone()),
                    to: Some(cut),
                });
            }
        }
        parts.push(Part {
            table: table.clone(),
            prefix,
            from,
            to: None,
        });
    }
    parts
}

/// Deletes every key of tables no longer selected (`on_remove: delete`).
pub async fn delete_tables<S: Sink>(
    store: &S,
    tables: &[String],
    settings: &Settings,
) -> Result<u64, EngineError> {
    let ids: Vec<TableId> = tables
        .iter()
        .map(|name| TableId {
            schema: None,
            name: name.clone(),
        })
        .collect();
    // Every key is older than a revision that has not happened yet.
    let (deleted, _) = delete_stale(store, &ids, &Samples::new(), settings, i64::MAX).await?;
    Ok(deleted)
}

/// Tables whose prefix holds keys now: only they can have stale keys after a snapshot (one
/// count each, a single walk of the prefix, spares the others the stale-key pass).
pub(super) async fn tables_with_keys<S: Sink>(
    store: &S,
    tables: &[TableId],
    settings: &Settings,
) -> Result<Vec<TableId>, EngineError> {
    let mut with_keys = Vec::new();
    for table in tables {
        let prefix = table_prefix(&settings.prefix, table);
        let existing = store.count(&prefix).await?;
        if existing > 0 {
            info!(%table, keys = existing, "keys from an earlier snapshot exist: those not rewritten will be deleted afterwards");
            with_keys.push(table.clone());
        }
    }
    Ok(with_keys)
}

/// Phase 2 of a snapshot: deletes keys of `tables` not written since `start_revision`.
pub(super) async fn stale_key_pass<S: Sink>(
    store: &S,
    tables: &[TableId],
    samples: &Samples,
    settings: &Settings,
    start_revision: i64,
) -> Result<u64, EngineError> {
    let started = Instant::now();
    if tables.is_empty() {
        info!("dump phase 2/3: no stale-key pass (the tables' prefixes were empty)");
        return Ok(0);
    }
    let (deleted, cost) = delete_stale(store, tables, samples, settings, start_revision).await?;
    info!(
        stale_keys_deleted = deleted,
        keys_listed = cost.keys_read,
        etcd_requests = cost.requests,
        keys_counted_by_etcd = cost.keys_counted,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "dump phase 2/3: stale keys deleted"
    );
    Ok(deleted)
}

/// Deletes keys under the tables' prefixes last written at or before `start_revision`: the
/// tables' parts are listed [`LISTS_IN_FLIGHT`] at a time while one writer deletes what they found, with
/// several txns in flight. Returns how many, and what listing cost etcd.
async fn delete_stale<S: Sink>(
    store: &S,
    tables: &[TableId],
    samples: &Samples,
    settings: &Settings,
    start_revision: i64,
) -> Result<(u64, ScanStats), EngineError> {
    let parts = parts(tables, samples, settings);
    info!(
        tables = tables.len(),
        parts = parts.len(),
        "dump phase 2/3: stale-key pass started (keys the dump did not write are deleted)"
    );
    let listed = AtomicU64::new(0);
    let (found, mut stale) = mpsc::channel::<(TableId, Vec<String>)>(STALE_PAGES_QUEUED);
    let lists: Vec<_> = parts
        .into_iter()
        .map(|part| list_stale(store, part, start_revision, found.clone(), &listed))
        .collect();
    // The parts hold the only senders left: the deleting ends when the last part does.
    drop(found);
    let listing = futures_util::stream::iter(lists)
        .buffer_unordered(LISTS_IN_FLIGHT)
        .try_fold(ScanStats::default(), |mut cost, part_cost| async move {
            cost.add(part_cost);
            Ok(cost)
        });
    let deleting = async {
        let mut writer = BatchWriter::new(store.writer(), settings);
        let mut deleted = 0u64;
        let mut last_log = Instant::now();
        while let Some((table, keys)) = stale.recv().await {
            for key in keys {
                deleted += 1;
                writer.push(&table, Op::Delete { key }).await?;
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                info!(
                    keys_listed = listed.load(Ordering::Relaxed),
                    stale_keys_deleted = deleted,
                    "dump phase 2/3: stale-key pass in progress"
                );
            }
        }
        writer.finish().await?;
        Ok::<_, EngineError>(deleted)
    };
    let (cost, deleted) = tokio::try_join!(listing, deleting)?;
    Ok((deleted, cost))
}

/// Lists one part, sending the keys written at or before `start_revision` on to be deleted.
async fn list_stale<S: Sink>(
    store: &S,
    part: Part,
    start_revision: i64,
    found: mpsc::Sender<(TableId, Vec<String>)>,
    listed: &AtomicU64,
) -> Result<ScanStats, EngineError> {
    let mut scan = store.scan_range(&part.prefix, &part.from, part.to.as_deref());
    loop {
        let page = scan.next().await?;
        if page.is_empty() {
            return Ok(scan.stats());
        }
        listed.fetch_add(page.len() as u64, Ordering::Relaxed);
        let keys: Vec<String> = page
            .into_iter()
            .filter(|(key, _)| key.mod_revision <= start_revision)
            .map(|(key, _)| key.key)
            .collect();
        if !keys.is_empty() && found.send((part.table.clone(), keys)).await.is_err() {
            // The deleting failed; its error is the one reported.
            return Ok(scan.stats());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_stays_bounded_and_cuts_parts_of_about_a_page() {
        let keys: Vec<String> = (0..1_000_000u64).map(|i| format!("/p/t/{i}")).collect();
        let mut sample = KeySample::default();
        for key in &keys {
            sample.offer(key);
        }
        assert!(sample.keys.len() < SAMPLE_KEYS && sample.keys.len() >= SAMPLE_KEYS / 2);
        // Every stride-th key, from the first.
        assert_eq!(sample.keys[1], keys[sample.stride as usize]);
        let cuts = sample.cuts(8_192);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let mut sizes = Vec::new();
        let mut from = 0;
        for cut in &cuts {
            let to = sorted.partition_point(|k| k < cut);
            sizes.push(to - from);
            from = to;
        }
        sizes.push(sorted.len() - from);
        // A part is at least one sampled key's worth.
        let part = 8_192;
        let expected = 1_000_000 / part;
        assert!(
            sizes.len() > expected / 2 && sizes.len() < expected * 2,
            "{}",
            sizes.len()
        );
        let largest = sizes.iter().copied().max().unwrap_or(0);
        assert!(largest < 4 * part, "{largest}");
    }

    #[test]
    fn small_tables_and_tables_without_a_sample_are_one_part() {
        let settings = crate::scenarios::settings(128);
        let table = TableId {
            schema: None,
            name: "t".into(),
        };
        let prefix = table_prefix(&settings.prefix, &table);
        let mut small = KeySample::default();
        for i in 0..PART_KEYS / 2 {
            small.offer(&format!("{prefix}{i}"));
        }
        let samples = Samples::from([(table.clone(), small)]);
        assert_eq!(
            parts(std::slice::from_ref(&table), &samples, &settings).len(),
            1
        );
        assert_eq!(parts(&[table], &Samples::new(), &settings).len(), 1);
    }

    #[test]
    fn parts_cover_the_prefix_end_to_end() {
        let settings = crate::scenarios::settings(128);
        let table = TableId {
            schema: None,
            name: "t".into(),
        };
        let prefix = table_prefix(&settings.prefix, &table);
        let mut sample = KeySample::default();
        for i in 0..PART_KEYS * 10 {
            sample.offer(&format!("{prefix}{i}"));
        }
        let samples = Samples::from([(table.clone(), sample)]);
        let parts = parts(&[table], &samples, &settings);
        assert_eq!(parts.len(), 10);
        assert_eq!(parts[0].from, prefix);
        for pair in parts.windows(2) {
            assert_eq!(pair[0].to.as_deref(), Some(pair[1].from.as_str()));
            assert!(pair[0].from < pair[1].from);
        }
        assert_eq!(parts[9].to, None);
    }
}
