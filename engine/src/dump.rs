//! The dump phase: a consistent snapshot into etcd, then the removal of keys it did not write.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sync_api::{Driver, DriverError, DumpEvent, Position, SourceTable, TableId, TableSchema};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{EngineError, Settings};
use crate::encode::table_prefix;
use crate::metrics::TableLabels;
use crate::shape::Shapes;
use crate::sink::{spawn_commit, Sink, SinkScan, SinkWriter};
use crate::sink::{Op, Phase, ScanStats, SinkError};

/// Row batches buffered between the driver and etcd.
const DUMP_CHANNEL_BATCHES: usize = 16;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn dump<D: Driver, S: Sink>(
    driver: &Arc<D>,
    store: &mut S,
    tables: &[D::Table],
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Position, EngineError> {
    // A full dump covers every table: none is left half-snapshotted.
    store.update_snapshotting(Vec::clear);
    // Every key this dump writes gets a later revision than this one; what is older afterwards
    // belongs to rows that no longer exist.
    let state = store.state(Phase::Dump, None);
    let start_revision = store.commit(vec![], Some(&state)).await?;
    let schemas: Vec<Arc<TableSchema>> = tables.iter().map(|t| Arc::clone(t.schema())).collect();
    let tables_with_keys = tables_with_keys(store, &schemas, settings).await?;
    info!(
        tables = tables.len(),
        revision = start_revision,
        "dump started"
    );
    let started = Instant::now();
    let (position, rows) = copy_rows(store, settings, cancel, {
        let driver = Arc::clone(driver);
        let tables = tables.to_vec();
        let cancel = cancel.clone();
        move |tx| async move { driver.dump(&tables, tx, cancel).await }
    })
    .await?;
    info!(
        rows,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "dump phase 1/3: rows written"
    );
    let deleted = stale_key_pass(store, &tables_with_keys, settings, start_revision).await?;
    let state_started = Instant::now();
    let state = store.state(Phase::Sync, Some(position.clone()));
    store.commit(vec![], Some(&state)).await?;
    settings.metrics.set_phase(Phase::Sync);
    info!(
        seconds = format!("{:.3}", state_started.elapsed().as_secs_f64()),
        "dump phase 3/3: state committed"
    );
    info!(
        rows,
        stale_keys_deleted = deleted,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        position = %position.0,
        "dump finished; etcd holds a consistent snapshot"
    );
    Ok(position)
}

/// Snapshots `tables` alone, for a stream that then resumes from the stored `position` (before
/// the snapshot) with them: tables added to the selection, tables whose options changed, and
/// such tables whose snapshot a crash interrupted. The state lists them as `snapshotting` until
/// their keys are complete, so that a restart takes them again.
pub async fn snapshot_tables<D: Driver, S: Sink>(
    driver: &Arc<D>,
    store: &mut S,
    tables: &[D::Table],
    position: &Position,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let names: Vec<String> = tables.iter().map(|t| t.schema().id.to_string()).collect();
    store.update_snapshotting(|snapshotting| *snapshotting = names.clone());
    let state = store.state(Phase::Sync, Some(position.clone()));
    let start_revision = store.commit(vec![], Some(&state)).await?;
    let schemas: Vec<Arc<TableSchema>> = tables.iter().map(|t| Arc::clone(t.schema())).collect();
    let tables_with_keys = tables_with_keys(store, &schemas, settings).await?;
    info!(
        tables = ?names,
        "snapshotting these tables alone; the stream of the others resumes after it, from the \
         stored position"
    );
    let started = Instant::now();
    let ((), rows) = copy_rows(store, settings, cancel, {
        let driver = Arc::clone(driver);
        let tables = tables.to_vec();
        move |tx| async move { driver.snapshot_joining(&tables, tx).await }
    })
    .await?;
    let deleted = stale_key_pass(store, &tables_with_keys, settings, start_revision).await?;
    store.update_snapshotting(Vec::clear);
    let state = store.state(Phase::Sync, Some(position.clone()));
    store.commit(vec![], Some(&state)).await?;
    info!(
        tables = ?names,
        rows,
        stale_keys_deleted = deleted,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "tables snapshotted; they join the stream"
    );
    Ok(())
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
    let (deleted, _) = delete_stale(store, &ids, settings, i64::MAX).await?;
    Ok(deleted)
}

/// Tables whose prefix holds keys now: only they can have stale keys after a snapshot (one
/// count each, a single walk of the prefix, spares the others the stale-key pass).
async fn tables_with_keys<S: Sink>(
    store: &S,
    tables: &[Arc<TableSchema>],
    settings: &Settings,
) -> Result<Vec<TableId>, EngineError> {
    let mut with_keys = Vec::new();
    for table in tables {
        let prefix = table_prefix(&settings.prefix, &table.id);
        let existing = store.count(&prefix).await?;
        if existing > 0 {
            info!(table = %table.id, keys = existing, "keys from an earlier snapshot exist: those not rewritten will be deleted afterwards");
            with_keys.push(table.id.clone());
        }
    }
    Ok(with_keys)
}

/// Writes the rows a driver's snapshot sends (started by `start` on its own task), shaped by
/// the tables' options, with several txns in flight; returns what the driver returned and the
/// rows it sent.
async fn copy_rows<S, F, Fut, T>(
    store: &S,
    settings: &Settings,
    cancel: &CancellationToken,
    start: F,
) -> Result<(T, u64), EngineError>
where
    S: Sink,
    F: FnOnce(mpsc::Sender<DumpEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<T, DriverError>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(DUMP_CHANNEL_BATCHES);
    let driver_task = tokio::spawn(start(tx));
    let mut writer = BatchWriter::new(store.writer(), settings);
    let mut shapes = Shapes::new(Arc::clone(&settings.options));
    let mut progress = Progress::default();
    let written = async {
        while let Some(event) = rx.recv().await {
            if cancel.is_cancelled() {
                return Err(EngineError::Stopped);
            }
            match event {
                DumpEvent::TableStarted {
                    table,
                    estimated_rows,
                } => {
                    let labels = TableLabels {
                        table: table.id.to_string(),
                    };
                    let estimate = estimated_rows.unwrap_or(0).try_into().unwrap_or(i64::MAX);
                    settings
                        .metrics
                        .rows_estimated
                        .get_or_create(&labels)
                        .set(estimate);
                    progress.started(&table.id, estimated_rows)
                }
                DumpEvent::Rows { table, rows } => {
                    let shape = shapes.get(&table)?;
                    for row in &rows {
                        // A row the filter leaves out is not written (and an older key of it
                        // goes in the stale-key pass).
                        if let Some(value) = shape.value(row, None)? {
                            let key = shape.key(&settings.prefix, row)?;
                            writer.put(&table.id, key, value).await?;
                        }
                    }
                    let labels = TableLabels {
                        table: table.id.to_string(),
                    };
                    settings
                        .metrics
                        .rows_dumped
                        .get_or_create(&labels)
                        .inc_by(rows.len() as u64);
                    progress.rows(&table.id, rows.len() as u64);
                }
                DumpEvent::TableDone { table, rows } => progress.done(&table.id, rows),
            }
        }
        writer.finish().await
    }
    .await;
    if let Err(e) = written {
        driver_task.abort();
        return Err(e);
    }
    let returned = match driver_task.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(EngineError::Driver(DriverError::Protocol(format!(
                "the dump task failed: {join}"
            ))))
        }
    };
    if cancel.is_cancelled() {
        return Err(EngineError::Stopped);
    }
    Ok((returned, progress.total()))
}

/// Phase 2 of a snapshot: deletes keys of `tables` not written since `start_revision`.
async fn stale_key_pass<S: Sink>(
    store: &S,
    tables: &[TableId],
    settings: &Settings,
    start_revision: i64,
) -> Result<u64, EngineError> {
    let started = Instant::now();
    if tables.is_empty() {
        info!("dump phase 2/3: no stale-key pass (the tables' prefixes were empty)");
        return Ok(0);
    }
    let (deleted, cost) = delete_stale(store, tables, settings, start_revision).await?;
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

/// Deletes keys under the tables' prefixes last written at or before `start_revision`, with
/// several delete txns in flight while the scan reads on; returns how many, and what the scan
/// cost etcd.
async fn delete_stale<S: Sink>(
    store: &S,
    tables: &[TableId],
    settings: &Settings,
    start_revision: i64,
) -> Result<(u64, ScanStats), EngineError> {
    let mut writer = BatchWriter::new(store.writer(), settings);
    let mut deleted = 0u64;
    let mut cost = ScanStats::default();
    let mut last_log = Instant::now();
    info!(
        tables = tables.len(),
        "dump phase 2/3: stale-key pass started (keys the dump did not write are deleted)"
    );
    for table in tables {
        let prefix = table_prefix(&settings.prefix, table);
        let mut scan = store.scan(&prefix, false);
        loop {
            let page = scan.next().await?;
            if page.is_empty() {
                break;
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                info!(
                    %table,
                    keys_listed = cost.keys_read + scan.stats().keys_read,
                    stale_keys_deleted = deleted,
                    "dump phase 2/3: stale-key pass in progress"
                );
            }
            for (listed, _) in page {
                if listed.mod_revision <= start_revision {
                    deleted += 1;
                    writer.push(table, Op::Delete { key: listed.key }).await?;
                }
            }
        }
        cost.add(scan.stats());
    }
    writer.finish().await?;
    Ok((deleted, cost))
}

/// Packs puts into txns of at most `max_txn_ops` and `max_txn_bytes`, with several in flight:
/// dump keys are distinct, so their order does not matter.
struct BatchWriter<W: SinkWriter> {
    writer: W,
    ops: Vec<Op>,
    bytes: usize,
    max_ops: usize,
    max_bytes: usize,
    max_in_flight: usize,
    skip_oversized: bool,
    in_flight: JoinSet<Result<i64, SinkError>>,
}

impl<W: SinkWriter> BatchWriter<W> {
    fn new(writer: W, settings: &Settings) -> Self {
        Self {
            writer,
            ops: Vec::with_capacity(settings.max_txn_ops),
            bytes: 0,
            max_ops: settings.max_txn_ops,
            max_bytes: settings.max_txn_bytes,
            max_in_flight: settings.dump_txns_in_flight,
            skip_oversized: settings.skip_oversized,
            in_flight: JoinSet::new(),
        }
    }

    async fn put(
        &mut self,
        table: &TableId,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), EngineError> {
        self.push(table, Op::Put { key, value }).await
    }

    /// Adds an operation on a key no other queued or in-flight operation touches.
    async fn push(&mut self, table: &TableId, op: Op) -> Result<(), EngineError> {
        let size = op.size();
        if size > self.max_bytes {
            if self.skip_oversized {
                // The stale-key pass deletes an older version of the key.
                warn!(%table, key = op.key(), size, limit = self.max_bytes, "row left out: larger than etcd.max_txn_bytes");
                return Ok(());
            }
            return Err(EngineError::RowTooLarge {
                table: table.clone(),
                key: op.key().to_owned(),
                size,
                limit: self.max_bytes,
            });
        }
        if self.ops.len() == self.max_ops || self.bytes + size > self.max_bytes {
            self.send().await?;
        }
        self.bytes += size;
        self.ops.push(op);
        Ok(())
    }

    async fn send(&mut self) -> Result<(), EngineError> {
        while self.in_flight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(self.max_ops));
        self.bytes = 0;
        spawn_commit(&mut self.in_flight, self.writer.clone(), ops);
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), EngineError> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => result.map(|_| ()).map_err(EngineError::from),
            Some(Err(join)) => Err(EngineError::Driver(DriverError::Protocol(format!(
                "an etcd write task failed: {join}"
            )))),
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), EngineError> {
        if !self.ops.is_empty() {
            self.send().await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// Per-table dump progress: log lines, and bars when stderr is a terminal.
struct Progress {
    tables: HashMap<TableId, TableProgress>,
    last_log: Option<Instant>,
    bars: Option<MultiProgress>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            tables: HashMap::new(),
            last_log: None,
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }
}

struct TableProgress {
    rows: u64,
    estimate: Option<u64>,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn started(&mut self, table: &TableId, estimate: Option<u64>) {
        match estimate {
            Some(rows) => info!(%table, estimated_rows = rows, "dumping table"),
            // PostgreSQL before the first ANALYZE, for one.
            None => info!(%table, "dumping table (no row estimate: never analysed)"),
        }
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(estimate.unwrap_or(0).max(1)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {bar:30} {human_pos}/~{human_len} rows, {elapsed} elapsed, eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(table.to_string());
            bar
        });
        self.tables.insert(
            table.clone(),
            TableProgress {
                rows: 0,
                estimate,
                started: Instant::now(),
                bar,
            },
        );
    }

    fn rows(&mut self, table: &TableId, rows: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            t.rows += rows;
            if let Some(bar) = &t.bar {
                if t.rows > bar.length().unwrap_or(0) {
                    bar.set_length(t.rows);
                }
                bar.set_position(t.rows);
            }
        }
        let now = Instant::now();
        if self.bars.is_none() && self.last_log.is_none_or(|at| now - at >= PROGRESS_EVERY) {
            self.last_log = Some(now);
            if let Some(t) = self.tables.get(table) {
                let secs = t.started.elapsed().as_secs_f64().max(0.001);
                let estimated = t
                    .estimate
                    .map_or_else(|| "unknown".to_string(), |e| e.to_string());
                info!(
                    %table,
                    rows = t.rows,
                    estimated_rows = %estimated,
                    rows_per_sec = (t.rows as f64 / secs) as u64,
                    "dump progress"
                );
            }
        }
    }

    fn done(&mut self, table: &TableId, rows: u64) {
        if let Some(bar) = self.tables.get(table).and_then(|t| t.bar.as_ref()) {
            bar.set_length(rows.max(1));
            bar.finish();
        }
        let secs = self
            .tables
            .get(table)
            .map_or(0.0, |t| t.started.elapsed().as_secs_f64());
        info!(%table, rows, seconds = format!("{secs:.1}"), "table dumped");
    }

    fn total(&self) -> u64 {
        self.tables.values().map(|t| t.rows).sum()
    }
}
