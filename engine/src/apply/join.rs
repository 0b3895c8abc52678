//! Tables joining a running stream: a table added to the selection, or whose options changed,
//! is snapshotted on its own while the stream of every table goes on.
//!
//! The stream resumes from the stored position, which is older than the joining tables'
//! snapshot, and carries every change of them from there (PostgreSQL: once they are in the
//! publication, which the driver ensures before the snapshot). So the stream alone brings every
//! key it touches to its right value, and the snapshot is needed only for the keys it has not
//! touched. The applier is the one writer of both: it puts a snapshot row only if the stream
//! has not written its key since the join began (the `touched` keys), and after the last row
//! deletes the keys neither wrote (the stale-key pass, with the same rule). No position needs
//! comparing, no row is written twice out of order, and the other tables' transactions keep
//! flowing between the snapshot's txns. The cost: the touched keys of joining tables are held
//! in memory until their snapshot ends.
//!
//! A crash in the middle leaves the tables listed as `snapshotting` in the state; the next
//! start snapshots them again, before the stream resumes (see `dump::snapshot_tables`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use etcd_sync_api::{DriverError, DumpEvent, TableId, TableSchema};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use super::Applier;
use crate::sink::{Op, Phase, Sink, SinkScan};
use crate::EngineError;

/// Tables joining the stream, and what the applier needs to merge their snapshot.
pub struct Join {
    /// The joining tables' names as the state records them.
    pub tables: Vec<String>,
    /// Keys last written at or before this revision and untouched since are stale.
    pub start_revision: i64,
    /// The snapshot's rows, from the driver's task.
    pub rows: mpsc::Receiver<DumpEvent>,
    pub task: JoinHandle<Result<(), DriverError>>,
    /// Keys of joining tables the stream wrote since the join began; a table the stream
    /// truncated takes no snapshot row at all.
    touched: HashMap<TableId, HashSet<String>>,
    truncated: HashSet<TableId>,
    ids: HashSet<TableId>,
    rows_written: u64,
    rows_skipped: u64,
    started: Instant,
}

impl Join {
    pub fn new(
        tables: &[Arc<TableSchema>],
        start_revision: i64,
        rows: mpsc::Receiver<DumpEvent>,
        task: JoinHandle<Result<(), DriverError>>,
    ) -> Self {
        Self {
            tables: tables.iter().map(|t| t.id.to_string()).collect(),
            start_revision,
            rows,
            task,
            touched: HashMap::new(),
            truncated: HashSet::new(),
            ids: tables.iter().map(|t| t.id.clone()).collect(),
            rows_written: 0,
            rows_skipped: 0,
            started: Instant::now(),
        }
    }

    /// Whether `table` is joining (its keys are tracked).
    pub fn has(&self, table: &TableId) -> bool {
        self.ids.contains(table)
    }

    /// The stream wrote `key` of `table`.
    pub fn touch(&mut self, table: &TableId, key: &str) {
        if self.ids.contains(table) {
            self.touched
                .entry(table.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }

    pub fn truncate(&mut self, table: &TableId) {
        if self.ids.contains(table) {
            self.truncated.insert(table.clone());
        }
    }

    fn untouched(&self, table: &TableId, key: &str) -> bool {
        !self.truncated.contains(table)
            && !self.touched.get(table).is_some_and(|keys| keys.contains(key))
    }
}

impl Drop for Join {
    fn drop(&mut self) {
        // An applier that stops mid-join stops the snapshot too.
        self.task.abort();
    }
}

impl<'a, S: Sink> Applier<'a, S> {
    /// Writes one event of the joining tables' snapshot; `None` (the snapshot ended) finishes
    /// the join.
    pub(super) async fn join_event(&mut self, event: Option<DumpEvent>) -> Result<(), EngineError> {
        match event {
            Some(DumpEvent::Rows { table, rows }) => {
                let shape = self.shapes.get(&table)?;
                let mut ops = Vec::new();
                let mut bytes = 0;
                for row in &rows {
                    let key = shape.key(&self.settings.prefix, row)?;
                    let Some(join) = &mut self.join else {
                        return Ok(());
                    };
                    if !join.untouched(&table.id, &key) {
                        join.rows_skipped += 1;
                        continue;
                    }
                    join.rows_written += 1;
                    let Some(value) = shape.value(row, None)? else {
                        continue;
                    };
                    let op = Op::Put { key, value };
                    if op.size() > self.settings.max_txn_bytes {
                        return Err(EngineError::RowTooLarge {
                            table: table.id.clone(),
                            key: op.key().to_owned(),
                            size: op.size(),
                            limit: self.settings.max_txn_bytes,
                        });
                    }
                    if ops.len() == self.max_ops || bytes + op.size() > self.settings.max_txn_bytes
                    {
                        self.store().await?.commit(std::mem::take(&mut ops), None).await?;
                        bytes = 0;
                    }
                    bytes += op.size();
                    ops.push(op);
                }
                if !ops.is_empty() {
                    self.store().await?.commit(ops, None).await?;
                }
                Ok(())
            }
            Some(DumpEvent::TableStarted { table, .. }) => {
                info!(table = %table.id, "snapshotting a joining table while the stream goes on");
                Ok(())
            }
            Some(DumpEvent::TableDone { table, rows }) => {
                info!(table = %table.id, rows, "joining table read");
                Ok(())
            }
            None => self.finish_join().await,
        }
    }

    /// After the snapshot's last row: the driver's outcome, the stale-key pass, and the state
    /// without the tables in `snapshotting`.
    async fn finish_join(&mut self) -> Result<(), EngineError> {
        let Some(mut join) = self.join.take() else {
            return Ok(());
        };
        match (&mut join.task).await {
            Ok(result) => result?,
            Err(e) => {
                return Err(EngineError::Driver(DriverError::Protocol(format!(
                    "the joining tables' snapshot task failed: {e}"
                ))))
            }
        }
        // Keys neither the snapshot nor the stream wrote since the join began belong to rows
        // gone (or filtered out) meanwhile. The stream may touch a listed key before its delete
        // is written: `join` keeps recording touches, and such a key is left alone.
        self.join = Some(join);
        let mut deleted = 0u64;
        let names = self.join.as_ref().map(|j| j.tables.clone()).unwrap_or_default();
        let reader = self.reader.clone();
        for name in &names {
            let prefix = crate::encode::table_name_prefix(&self.settings.prefix, name);
            let mut scan = reader.scan(&prefix, false);
            loop {
                let page = scan.next().await?;
                if page.is_empty() {
                    break;
                }
                let Some(join) = &self.join else { break };
                let id = join
                    .ids
                    .iter()
                    .find(|id| id.to_string() == *name)
                    .cloned();
                let ops: Vec<Op> = page
                    .into_iter()
                    .filter(|(listed, _)| listed.mod_revision <= join.start_revision)
                    .filter(|(listed, _)| {
                        id.as_ref()
                            .is_none_or(|id| join.touched.get(id).is_none_or(|t| !t.contains(&listed.key)))
                    })
                    .map(|(listed, _)| Op::Delete { key: listed.key })
                    .collect();
                deleted += ops.len() as u64;
                for chunk in ops.chunks(self.max_ops) {
                    self.store().await?.commit(chunk.to_vec(), None).await?;
                }
            }
        }
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        // The last durable position: the txn in flight has landed once the store is back.
        let store = self.take_store().await?;
        let position = self.ack.borrow().clone();
        let store = self.store.insert(store);
        let mut selected = store.state(Phase::Sync, None).selected();
        selected.snapshotting.retain(|t| !join.tables.contains(t));
        store.set_tables(selected);
        let state = store.state(Phase::Sync, Some(position));
        store.commit(vec![], Some(&state)).await?;
        info!(
            tables = ?join.tables,
            rows_written = join.rows_written,
            rows_the_stream_had_written = join.rows_skipped,
            stale_keys_deleted = deleted,
            seconds = format!("{:.1}", join.started.elapsed().as_secs_f64()),
            "joining tables snapshotted; they are streamed like the others"
        );
        Ok(())
    }
}
