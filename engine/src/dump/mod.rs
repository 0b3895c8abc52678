//! The dump phase: a consistent snapshot into etcd, then the removal of keys it did not write.

mod batch;
mod progress;
mod stale;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sync_api::{Driver, DriverError, DumpEvent, Position, SourceTable, TableId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{EngineError, Settings};
use crate::metrics::TableLabels;
use crate::shape::Shapes;
use crate::sink::{Phase, Sink};
use batch::BatchWriter;
use progress::Progress;
use stale::{stale_key_pass, tables_with_keys, Samples};

pub use stale::delete_tables;

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
    let ids: Vec<TableId> = tables.iter().map(|t| t.schema().id.clone()).collect();
    let tables_with_keys = tables_with_keys(store, &ids, settings).await?;
    info!(
        tables = tables.len(),
        revision = start_revision,
        "dump started"
    );
    let started = Instant::now();
    let (position, rows, samples) = copy_rows(store, settings, cancel, {
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
    let deleted =
        stale_key_pass(store, &tables_with_keys, &samples, settings, start_revision).await?;
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
    let ids: Vec<TableId> = tables.iter().map(|t| t.schema().id.clone()).collect();
    let tables_with_keys = tables_with_keys(store, &ids, settings).await?;
    info!(
        tables = ?names,
        "snapshotting these tables alone; the stream of the others resumes after it, from the \
         stored position"
    );
    let started = Instant::now();
    let ((), rows, samples) = copy_rows(store, settings, cancel, {
        let driver = Arc::clone(driver);
        let tables = tables.to_vec();
        move |tx| async move { driver.snapshot_joining(&tables, tx).await }
    })
    .await?;
    let deleted =
        stale_key_pass(store, &tables_with_keys, &samples, settings, start_revision).await?;
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

/// Writes the rows a driver's snapshot sends (started by `start` on its own task), shaped by
/// the tables' options, with several txns in flight; returns what the driver returned, the
/// rows it sent, and a sample of the keys written (to split the stale-key pass by).
async fn copy_rows<S, F, Fut, T>(
    store: &S,
    settings: &Settings,
    cancel: &CancellationToken,
    start: F,
) -> Result<(T, u64, Samples), EngineError>
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
    let mut samples = Samples::new();
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
                    let sample = samples.entry(table.id.clone()).or_default();
                    for row in &rows {
                        // A row the filter leaves out is not written (and an older key of it
                        // goes in the stale-key pass).
                        if let Some(value) = shape.value(row, None)? {
                            let key = shape.key(&settings.prefix, row)?;
                            sample.offer(&key);
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
    Ok((returned, progress.total(), samples))
}
