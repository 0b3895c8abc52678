//! Tables joining a running stream: a table added to the selection, or whose options changed,
//! is snapshotted on its own while the stream of every table goes on.
//!
//! The stream resumes from the stored position, which is older than the joining tables'
//! snapshot, and carries every change of them from there (PostgreSQL: once they are in the
//! publication, which the driver ensures before the snapshot). So the stream alone brings every
//! key it touches to its right value, and the snapshot is needed only for the keys it has not
//! touched. The applier is the one writer of both: a snapshot row is put only if the stream has
//! not written its key since the join began (the `touched` keys, checked when its txn is sent),
//! and after the last row the keys neither wrote are deleted (the stale-key pass, same rule).
//! No position needs comparing and no row is written out of order. The snapshot's txns take
//! turns with the stream's: while no stream txn is in flight, a burst of them goes (several in
//! flight, as in a dump), and the stream's next txn waits for them to land (at most one round
//! trip); they are fenced by the state as it is then. The cost: the touched keys of joining
//! tables are held in memory until their snapshot ends.
//!
//! A crash in the middle leaves the tables listed as `snapshotting` in the state; the next
//! start snapshots them again, before the stream resumes (see `dump::snapshot_tables`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use etcd_sync_api::{DriverError, DumpEvent, TableId, TableSchema};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use tokio::task::JoinSet;

use super::Applier;
use crate::encode::table_prefix;
use crate::sink::{spawn_commit, ListedKey, Op, Phase, Sink, SinkError, SinkScan};
use crate::EngineError;

/// Keys listed by the stale-key pass, with their table.
type Listed = (TableId, Vec<ListedKey>);

/// Tables joining the stream, and what the applier needs to merge their snapshot.
pub struct Join {
    /// The joining tables' names as the state records them.
    pub tables: Vec<String>,
    ids: Vec<TableId>,
    /// Keys last written at or before this revision and untouched since are stale.
    start_revision: i64,
    /// The snapshot's rows, while the driver sends them.
    rows: Option<mpsc::Receiver<DumpEvent>>,
    snapshot: Option<JoinHandle<Result<(), DriverError>>>,
    /// The stale-key pass's pages, once every snapshot row has landed.
    listed: Option<mpsc::Receiver<Listed>>,
    lister: Option<JoinHandle<Result<(), SinkError>>>,
    listing_done: bool,
    /// Writes waiting for their turn, with their table.
    pending: VecDeque<(TableId, Op)>,
    /// Txns of these writes in flight.
    flights: JoinSet<Result<i64, SinkError>>,
    max_flights: usize,
    /// Keys of joining tables the stream wrote since the join began; a table the stream
    /// truncated takes no snapshot row at all.
    touched: HashMap<TableId, HashSet<String>>,
    truncated: HashSet<TableId>,
    rows_put: u64,
    rows_skipped: u64,
    stale_deleted: u64,
    started: Instant,
}

/// Input the join takes from its tasks.
pub(super) enum JoinInput {
    Rows(Option<DumpEvent>),
    Listed(Option<Listed>),
}

impl Join {
    pub fn new(
        tables: &[Arc<TableSchema>],
        start_revision: i64,
        rows: mpsc::Receiver<DumpEvent>,
        snapshot: JoinHandle<Result<(), DriverError>>,
        max_flights: usize,
    ) -> Self {
        Self {
            tables: tables.iter().map(|t| t.id.to_string()).collect(),
            ids: tables.iter().map(|t| t.id.clone()).collect(),
            start_revision,
            rows: Some(rows),
            snapshot: Some(snapshot),
            listed: None,
            lister: None,
            listing_done: false,
            pending: VecDeque::new(),
            flights: JoinSet::new(),
            max_flights: max_flights.max(1),
            touched: HashMap::new(),
            truncated: HashSet::new(),
            rows_put: 0,
            rows_skipped: 0,
            stale_deleted: 0,
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
            && !self
                .touched
                .get(table)
                .is_some_and(|keys| keys.contains(key))
    }

    /// Whether the join takes more input now: its queue of writes is short.
    pub(super) fn wants_input(&self, max_ops: usize) -> bool {
        (self.rows.is_some() || self.listed.is_some())
            && self.pending.len() < max_ops * self.max_flights
    }

    /// Whether a txn of its writes can go.
    pub(super) fn has_writes(&self) -> bool {
        !self.pending.is_empty() && self.flights.len() < self.max_flights
    }

    /// Whether txns of its writes are in flight.
    pub(super) fn writing(&self) -> bool {
        !self.flights.is_empty()
    }

    /// Everything read and written: time to record the join as finished.
    fn finished(&self) -> bool {
        self.rows.is_none() && self.listing_done && self.pending.is_empty() && !self.writing()
    }
}

impl Drop for Join {
    fn drop(&mut self) {
        // An applier that stops mid-join stops the snapshot and the listing too.
        if let Some(task) = &self.snapshot {
            task.abort();
        }
        if let Some(task) = &self.lister {
            task.abort();
        }
    }
}

/// What the join waits for: one of its txns landing, or input from its tasks.
pub(super) enum JoinEvent {
    Landed(Result<(), EngineError>),
    Input(JoinInput),
}

/// The join's next event (never, without a join or while it waits for nothing: a `select!`
/// branch).
pub(super) async fn next_join_event(join: &mut Option<Join>, max_ops: usize) -> JoinEvent {
    let Some(join) = join else {
        return std::future::pending().await;
    };
    let wants_input = join.wants_input(max_ops);
    let writing = join.writing();
    let Join {
        flights,
        rows,
        listed,
        ..
    } = join;
    tokio::select! {
        joined = flights.join_next(), if writing => JoinEvent::Landed(landed(joined)),
        input = next_input(rows, listed), if wants_input => JoinEvent::Input(input),
        else => std::future::pending().await,
    }
}

fn landed(
    joined: Option<Result<Result<i64, SinkError>, tokio::task::JoinError>>,
) -> Result<(), EngineError> {
    match joined {
        Some(Ok(result)) => result.map(|_| ()).map_err(EngineError::from),
        Some(Err(e)) => Err(EngineError::Driver(DriverError::Protocol(format!(
            "a joining table's write task failed: {e}"
        )))),
        None => Ok(()),
    }
}

/// The outcome of a join's task that has ended (its channel closed).
async fn ended<E: Into<EngineError>>(
    task: JoinHandle<Result<(), E>>,
    what: &str,
) -> Result<(), EngineError> {
    match task.await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(EngineError::Driver(DriverError::Protocol(format!(
            "{what} failed: {e}"
        )))),
    }
}

async fn next_input(
    rows: &mut Option<mpsc::Receiver<DumpEvent>>,
    listed: &mut Option<mpsc::Receiver<Listed>>,
) -> JoinInput {
    if let Some(rows) = rows {
        return JoinInput::Rows(rows.recv().await);
    }
    if let Some(listed) = listed {
        return JoinInput::Listed(listed.recv().await);
    }
    std::future::pending().await
}

impl<'a, S: Sink> Applier<'a, S> {
    /// Queues the writes one input of the join asks for.
    pub(super) async fn join_input(&mut self, input: JoinInput) -> Result<(), EngineError> {
        match input {
            JoinInput::Rows(Some(DumpEvent::Rows { table, rows })) => {
                let labels = crate::metrics::TableLabels {
                    table: table.id.to_string(),
                };
                self.settings
                    .metrics
                    .rows_dumped
                    .get_or_create(&labels)
                    .inc_by(rows.len() as u64);
                let shape = self.shapes.get(&table)?;
                let Some(join) = &mut self.join else {
                    return Ok(());
                };
                for row in &rows {
                    let key = shape.key(&self.settings.prefix, row)?;
                    if !join.untouched(&table.id, &key) {
                        join.rows_skipped += 1;
                        continue;
                    }
                    // A row the filter leaves out is not put; an older key of it goes in the
                    // stale-key pass.
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
                    join.pending.push_back((table.id.clone(), op));
                }
            }
            JoinInput::Rows(Some(DumpEvent::TableStarted { table, .. })) => {
                info!(table = %table.id, "snapshotting a joining table while the stream goes on");
            }
            JoinInput::Rows(Some(DumpEvent::TableDone { table, rows })) => {
                info!(table = %table.id, rows, "joining table read");
            }
            JoinInput::Rows(None) => {
                let Some(join) = &mut self.join else {
                    return Ok(());
                };
                join.rows = None;
                if let Some(task) = join.snapshot.take() {
                    ended(task, "the joining tables' snapshot").await?;
                }
            }
            JoinInput::Listed(Some((table, keys))) => {
                let Some(join) = &mut self.join else {
                    return Ok(());
                };
                // Keys neither the snapshot nor the stream wrote since the join began belong
                // to rows gone (or filtered out) meanwhile.
                for listed in keys {
                    if listed.mod_revision <= join.start_revision {
                        join.pending
                            .push_back((table.clone(), Op::Delete { key: listed.key }));
                    }
                }
            }
            JoinInput::Listed(None) => {
                let Some(join) = &mut self.join else {
                    return Ok(());
                };
                join.listed = None;
                join.listing_done = true;
                if let Some(task) = join.lister.take() {
                    ended(task, "the joining tables' stale-key pass").await?;
                }
            }
        }
        Ok(())
    }

    /// Moves the join on once the snapshot's rows have all landed: the stale-key pass starts;
    /// once its deletes have landed, the state stops listing the tables as snapshotting.
    pub(super) async fn advance_join(&mut self) -> Result<(), EngineError> {
        let Some(join) = &mut self.join else {
            return Ok(());
        };
        let rows_landed = join.rows.is_none() && join.pending.is_empty() && !join.writing();
        if rows_landed && join.listed.is_none() && !join.listing_done {
            // Every key the snapshot put has a revision after `start_revision` now.
            let (tx, rx) = mpsc::channel(2);
            let reader = self.reader.clone();
            let prefix = self.settings.prefix.clone();
            let ids = join.ids.clone();
            join.listed = Some(rx);
            join.lister = Some(tokio::spawn(async move {
                for id in ids {
                    let mut scan = reader.scan(&table_prefix(&prefix, &id), false);
                    loop {
                        let page = scan.next().await?;
                        if page.is_empty() {
                            break;
                        }
                        let keys = page.into_iter().map(|(listed, _)| listed).collect();
                        if tx.send((id.clone(), keys)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Ok(())
            }));
            return Ok(());
        }
        if !join.finished() {
            return Ok(());
        }
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        // The last durable position: the txns in flight have landed once the store is back.
        self.store().await?;
        let position = self.ack.borrow().clone();
        let store = &mut *self.store;
        store.update_snapshotting(|snapshotting| snapshotting.retain(|t| !join.tables.contains(t)));
        let state = store.state(Phase::Sync, Some(position));
        store.commit(vec![], Some(&state)).await?;
        info!(
            tables = ?join.tables,
            rows_put = join.rows_put,
            rows_the_stream_had_written = join.rows_skipped,
            stale_keys_deleted = join.stale_deleted,
            seconds = format!("{:.1}", join.started.elapsed().as_secs_f64()),
            "joining tables snapshotted; they are streamed like the others"
        );
        Ok(())
    }

    /// Waits for the join's txns in flight: the stream's next txn (which moves the state, the
    /// fence of theirs) goes after them, and so does any write of a key they hold.
    pub(super) async fn drain_join(&mut self) -> Result<(), EngineError> {
        if let Some(join) = &mut self.join {
            while join.writing() {
                landed(join.flights.join_next().await)?;
            }
        }
        Ok(())
    }

    /// Sends txns of the join's queued writes, as many as may be in flight, leaving out keys the
    /// stream has written since they were queued. Only while no stream txn is in flight: they
    /// are fenced by the state as the store holds it now.
    pub(super) fn send_join(&mut self) {
        let max_ops = self.max_ops;
        let max_bytes = self.settings.max_txn_bytes;
        let store = &*self.store;
        let Some(join) = &mut self.join else {
            return;
        };
        while join.has_writes() {
            let mut ops = Vec::new();
            let mut bytes = 0;
            while let Some((table, op)) = join.pending.front() {
                if ops.len() == max_ops || bytes + op.size() > max_bytes {
                    break;
                }
                let keep = join.untouched(table, op.key());
                let Some((_, op)) = join.pending.pop_front() else {
                    break;
                };
                match (&op, keep) {
                    (_, false) => join.rows_skipped += u64::from(matches!(op, Op::Put { .. })),
                    (Op::Put { .. }, true) => join.rows_put += 1,
                    (Op::Delete { .. }, true) => join.stale_deleted += 1,
                }
                if keep {
                    bytes += op.size();
                    ops.push(op);
                }
            }
            if ops.is_empty() {
                continue;
            }
            spawn_commit(&mut join.flights, store.writer(), ops);
        }
    }
}
