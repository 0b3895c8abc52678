//! The sync phase: applies source transactions to etcd, each atomically with the position.
//!
//! Consecutive transactions are coalesced per key into one etcd txn (group commit) while they
//! fit `max_txn_ops` and `max_txn_bytes`; a transaction too big for one txn is written in
//! chunks and only its last chunk carries the position, so a crash replays it (idempotently).
//!
//! While a txn is in flight the next group is built from the stream, so that etcd's round trip
//! and the agent's decoding and encoding overlap instead of adding up; a full group goes out
//! beside it, chained so that watchers still see transactions in source order.
//!
//! Here the applier's loop and what it does with each change; [`batch`] holds the coalescing,
//! [`commit`] the txns in flight.

mod batch;
mod commit;
mod join;

pub use join::Join;
use join::{next_join_event, JoinEvent, JoinInput};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_sync_api::{
    Change, Driver, DriverError, Position, SourceTable, StreamEvent, TableSchema, Value,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{EngineError, Settings};
use crate::encode::{has_unchanged, table_prefix, EncodeError};
use crate::metrics::ChangeCounters;
use crate::shape::Shapes;
use crate::sink::Phase;
use crate::sink::{Sink, SinkScan};
use batch::Batch;
use commit::InFlight;
#[cfg(test)]
pub(crate) use commit::PIPELINE_DEPTH;
use etcd_sync_api::DumpEvent;

/// Stream events buffered between the driver and the applier: deep enough that, while one
/// etcd txn is in flight, a full group of single-row transactions (Changes + Commit each)
/// queues up; bounded in bytes by the drivers' `CHANGES_EVENT_BYTES` per event.
const STREAM_CHANNEL_EVENTS: usize = 256;
/// Events taken from the stream at once: the driver wakes once per this many instead of once
/// per event, and the applier still notices a landed txn within a few dozen microseconds.
const EVENTS_PER_RECEIVE: usize = 16;
/// How long a group waits to fill in a backlog before it is written anyway.
const BACKLOG_LINGER: Duration = Duration::from_millis(2);
/// Transactions this old when written mean the applier is behind the source.
const BACKLOG_LAG: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Row batches of joining tables buffered between their snapshot and the applier.
const JOIN_CHANNEL_BATCHES: usize = 4;

/// Where the stream starts, and the tables that join it there.
pub struct Start<T> {
    pub position: Position,
    pub joining: Option<JoinPlan<T>>,
}

/// Tables to snapshot while the stream runs, and the revision their snapshot started at.
pub struct JoinPlan<T> {
    pub tables: Vec<T>,
    pub start_revision: i64,
}
const LAG_BYTES_EVERY: Duration = Duration::from_secs(10);

pub async fn sync<D: Driver, S: Sink>(
    driver: &Arc<D>,
    store: &mut S,
    tables: &[D::Table],
    start: Start<D::Table>,
    settings: &Settings,
    cancel: &CancellationToken,
    progressed: &mut bool,
) -> Result<(), EngineError> {
    let Start { position, joining } = start;
    let mut first_join_event = None;
    let join = match joining {
        None => None,
        Some(plan) => {
            let (join_tx, mut join_rx) = mpsc::channel(JOIN_CHANNEL_BATCHES);
            let task = tokio::spawn({
                let driver = Arc::clone(driver);
                let tables = plan.tables.clone();
                async move { driver.snapshot_joining(&tables, join_tx).await }
            });
            // The stream starts once the snapshot has begun: by then the driver has made the
            // tables part of what the stream carries (PostgreSQL's publication).
            first_join_event = tokio::select! {
                _ = cancel.cancelled() => {
                    task.abort();
                    return Err(EngineError::Stopped);
                }
                first = join_rx.recv() => Some(first),
            };
            let schemas: Vec<Arc<TableSchema>> =
                plan.tables.iter().map(|t| Arc::clone(t.schema())).collect();
            Some(Join::new(
                &schemas,
                plan.start_revision,
                join_rx,
                task,
                settings.dump_txns_in_flight,
            ))
        }
    };
    let (tx, rx) = mpsc::channel(STREAM_CHANNEL_EVENTS);
    let (ack_tx, ack_rx) = watch::channel(position.clone());
    let stream_cancel = cancel.child_token();
    let mut driver_task = tokio::spawn({
        let driver = Arc::clone(driver);
        let tables = tables.to_vec();
        let stream_cancel = stream_cancel.clone();
        async move {
            driver
                .stream(position, &tables, tx, ack_rx, stream_cancel)
                .await
        }
    });
    settings.metrics.set_phase(Phase::Sync);
    let gauges = tokio::spawn(watch_position(
        Arc::clone(driver),
        ack_tx.subscribe(),
        settings.clone(),
        stream_cancel.clone(),
    ));
    let applied = Applier::new(store, settings, ack_tx, progressed, join)
        .run(rx, first_join_event)
        .await;
    gauges.abort();
    if applied.is_err() {
        stream_cancel.cancel();
    }
    // A driver stopped by the applier's end says so; its own failure comes first otherwise.
    let streamed = tokio::select! {
        joined = &mut driver_task => joined,
        _ = tokio::time::sleep(Duration::from_secs(15)) => {
            driver_task.abort();
            Ok(Err(DriverError::Stopped))
        }
    };
    let streamed = streamed.unwrap_or_else(|join| {
        Err(DriverError::Protocol(format!(
            "the stream task failed: {join}"
        )))
    });
    match (applied, streamed) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(())) | (Ok(()), Err(DriverError::Stopped)) => Ok(()),
        (Ok(()), Err(e)) => Err(e.into()),
    }
}

/// Keeps the position gauges current: the committed position as a number at once, the
/// source's lag in bytes every [`LAG_BYTES_EVERY`] (a query on the source, so only when the
/// metrics are served).
async fn watch_position<D: Driver>(
    driver: Arc<D>,
    mut acks: watch::Receiver<Position>,
    settings: Settings,
    cancel: CancellationToken,
) {
    let mut lag_timer = tokio::time::interval(LAG_BYTES_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = acks.changed() => {
                if changed.is_err() {
                    return;
                }
                let position = acks.borrow_and_update().clone();
                if let Some(n) = driver.position_number(&position) {
                    settings.metrics.position.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            _ = lag_timer.tick(), if settings.metrics_served => {
                let position = acks.borrow().clone();
                if let Ok(Some(bytes)) = driver.lag_bytes(&position).await {
                    settings.metrics.lag_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    // The stream runs and the database answers: whatever failed works again.
                    settings.metrics.set_failing(None);
                }
            }
        }
    }
}

struct Applier<'a, S: Sink> {
    /// Reads and writes go through [`Applier::store`], which waits for the txns in flight, so
    /// that nothing reads or writes etcd ahead of them.
    store: &'a mut S,
    in_flight: InFlight,
    settings: &'a Settings,
    ack: watch::Sender<Position>,
    progressed: &'a mut bool,
    /// Complete transactions not yet written, and the position after the last of them.
    committed: Batch,
    committed_position: Option<Position>,
    /// Source commit time of the last of them, for the lag.
    committed_at: Option<SystemTime>,
    /// The transaction in progress.
    current: Batch,
    /// Operations per txn, one kept for the state.
    max_ops: usize,
    /// The last group commit filled half its txn or more, or its transactions were
    /// `BACKLOG_LAG` old: the source is ahead of etcd.
    backlog: bool,
    /// Each table's options applied to its rows.
    shapes: Shapes,
    counters: ChangeCounters,
    /// Tables joining the stream, while their snapshot runs.
    join: Option<Join>,
    /// The joining tables' next txn goes before the stream's next group.
    join_turn: bool,
    /// Reads beside the txn in flight (the joining tables' stale-key pass).
    reader: S,
    /// A group waits for more transactions (in a backlog) until the linger timer fires.
    lingering: bool,
    stats: Stats,
}

/// What happened since the last progress line.
#[derive(Default)]
struct Stats {
    transactions: u64,
    changes: u64,
    txns: u64,
    /// No change in the previous interval: the next transaction written is logged.
    idle: bool,
}

impl<'a, S: Sink> Applier<'a, S> {
    fn new(
        store: &'a mut S,
        settings: &'a Settings,
        ack: watch::Sender<Position>,
        progressed: &'a mut bool,
        join: Option<Join>,
    ) -> Self {
        Self {
            reader: store.clone(),
            join,
            join_turn: false,
            store,
            in_flight: InFlight::default(),
            settings,
            ack,
            progressed,
            committed: Batch::default(),
            committed_position: None,
            committed_at: None,
            current: Batch::default(),
            max_ops: settings.max_txn_ops - 1,
            backlog: false,
            shapes: Shapes::new(Arc::clone(&settings.options)),
            counters: ChangeCounters::default(),
            lingering: false,
            stats: Stats {
                idle: true,
                ..Stats::default()
            },
        }
    }

    /// Applies events until the stream ends; complete transactions are written before
    /// returning, an incomplete one is dropped (the stream replays it on the next start).
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<StreamEvent>,
        first_join_event: Option<Option<DumpEvent>>,
    ) -> Result<(), EngineError> {
        if let Some(event) = first_join_event {
            self.join_input(JoinInput::Rows(event)).await?;
        }
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        let mut events = Vec::with_capacity(EVENTS_PER_RECEIVE);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                (landing, result) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.landed(landing, result)?;
                }
                received = rx.recv_many(&mut events, EVENTS_PER_RECEIVE) => {
                    if received == 0 {
                        break;
                    }
                    for event in events.drain(..) {
                        self.handle(event).await?;
                    }
                }
                () = &mut linger, if self.lingering => self.send_committed().await?,
                event = next_join_event(&mut self.join, self.max_ops) => match event {
                    JoinEvent::Landed(result) => result?,
                    JoinEvent::Input(input) => self.join_input(input).await?,
                },
                _ = progress.tick() => self.log_progress(),
            }
            // A joining table's txns take their turn: after a group of the stream, or when
            // the stream has none ready (the stream's next txn waits for them to land).
            let stream_ready = self.committed_position.is_some() && !self.lingering;
            if self.in_flight.is_empty()
                && self.join.as_ref().is_some_and(Join::has_writes)
                && (self.join_turn || !stream_ready)
            {
                self.send_join();
                self.join_turn = false;
            }
            // Group commit. Under a light load, write as soon as the stream has nothing more
            // ready and nothing is in flight; what arrives meanwhile joins the next txn. In a
            // backlog (the last group filled half a txn or more, or its transactions were
            // BACKLOG_LAG old), a stream that runs dry for a moment does not mean the source
            // is idle: wait up to BACKLOG_LINGER for the group to fill, as a txn of a few
            // transactions costs etcd nearly what a full one does (and more, smaller groups
            // leave the source less CPU to catch up with). A full group does not wait: it goes
            // beside the txn in flight, chained to it (`commit`).
            if self.in_flight.is_empty() && self.committed_position.is_some() && !self.lingering {
                if !self.backlog {
                    if rx.is_empty() {
                        self.send_committed().await?;
                    }
                } else {
                    linger
                        .as_mut()
                        .reset(tokio::time::Instant::now() + BACKLOG_LINGER);
                    self.lingering = true;
                }
            }
            if self.join.is_some() {
                self.advance_join().await?;
            }
        }
        self.write_committed().await
    }

    async fn handle(&mut self, event: StreamEvent) -> Result<(), EngineError> {
        match event {
            StreamEvent::Changes(changes) => {
                for change in changes {
                    self.stats.changes += 1;
                    self.count(&change);
                    self.apply(change).await?;
                }
            }
            StreamEvent::Commit {
                position,
                committed_at,
            } => {
                self.stats.transactions += 1;
                self.settings.metrics.source_transactions.inc();
                self.end_transaction(position).await?;
                self.committed_at = committed_at;
            }
        }
        Ok(())
    }

    fn count(&mut self, change: &Change) {
        let metrics = &self.settings.metrics;
        match change {
            Change::Insert { table, .. } => self.counters.inc(metrics, table, "insert"),
            Change::Update { table, .. } => self.counters.inc(metrics, table, "update"),
            Change::Delete { table, .. } => self.counters.inc(metrics, table, "delete"),
            Change::Truncate { tables } => {
                for table in tables {
                    self.counters.inc(metrics, table, "truncate");
                }
            }
        }
    }

    async fn apply(&mut self, change: Change) -> Result<(), EngineError> {
        let prefix = &self.settings.prefix;
        match change {
            Change::Insert { table, row } => {
                let shape = self.shapes.get(&table)?;
                let key = shape.key(prefix, &row)?;
                // A row the filter leaves out has no key: deleting it is a no-op, unless an
                // earlier row of that key is still there.
                let value = shape.value(&row, None)?;
                self.set(&table, key, value).await
            }
            Change::Update {
                table,
                old,
                mut row,
            } => {
                let shape = self.shapes.get(&table)?;
                if let Some(old) = &old {
                    // A full old row (REPLICA IDENTITY FULL) has what the new one left out.
                    for (new, old) in row.iter_mut().zip(old) {
                        if matches!(new, Value::Unchanged) && !matches!(old, Value::Unchanged) {
                            *new = old.clone();
                        }
                    }
                }
                let key = shape.key(prefix, &row)?;
                let old_key = match &old {
                    Some(old) => Some(shape.key(prefix, old)?),
                    None => None,
                };
                let value = if has_unchanged(&row) {
                    // The row before this update lives at the old key when the key changed.
                    let base = self
                        .current_value(old_key.as_deref().unwrap_or(&key))
                        .await?;
                    match shape.value(&row, base.as_deref()) {
                        Err(EncodeError::UnchangedWithoutBase { .. })
                            if self.join.as_ref().is_some_and(|j| j.has(&table.id)) =>
                        {
                            // Its snapshot row is not written yet: take the table's snapshot
                            // before the stream instead (a new session does).
                            return Err(EngineError::JoinNeedsSnapshotFirst(table.id.clone()));
                        }
                        other => other?,
                    }
                } else {
                    shape.value(&row, None)?
                };
                if let Some(old_key) = old_key.filter(|k| *k != key) {
                    self.set(&table, old_key, None).await?;
                }
                // A row the update took out of the filter has its key deleted; one it brought
                // in is put.
                self.set(&table, key, value).await
            }
            Change::Delete { table, old } => {
                let key = self.shapes.get(&table)?.key(prefix, &old)?;
                self.set(&table, key, None).await
            }
            Change::Truncate { tables } => {
                for table in tables {
                    self.truncate(&table).await?;
                }
                Ok(())
            }
        }
    }

    /// A truncate becomes deletes of every key of the table: etcd refuses a delete-range and a
    /// put of a key inside it in one txn, and a truncate is often followed by inserts.
    async fn truncate(&mut self, table: &Arc<TableSchema>) -> Result<(), EngineError> {
        if let Some(join) = &mut self.join {
            join.truncate(&table.id);
        }
        let prefix = table_prefix(&self.settings.prefix, &table.id);
        let pending: Vec<String> = self
            .current
            .ops
            .keys()
            .chain(self.committed.ops.keys())
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in pending {
            self.set(table, key, None).await?;
        }
        // Chunks written while paging hold only deletes of this table's keys (its pending puts
        // became deletes above), so paging on by key stays correct.
        let store = self.store().await?.clone();
        let mut scan = store.scan(&prefix, false);
        loop {
            let page = scan.next().await?;
            if page.is_empty() {
                break;
            }
            for (listed, _) in page {
                self.set(table, listed.key, None).await?;
            }
        }
        Ok(())
    }

    /// The value a key has once everything seen so far is applied.
    async fn current_value(&mut self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        if let Some(pending) = self
            .current
            .lookup(key)
            .or_else(|| self.committed.lookup(key))
        {
            return Ok(pending.map(<[u8]>::to_vec));
        }
        Ok(self.store().await?.get(key).await?)
    }

    /// Adds one write to the transaction in progress, writing out what must go first when it
    /// would not fit.
    async fn set(
        &mut self,
        table: &TableSchema,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), EngineError> {
        let mut value = value;
        let mut size = key.len() + value.as_ref().map_or(0, Vec::len) + 16;
        if size > self.settings.max_txn_bytes && self.settings.skip_oversized {
            // Left out of etcd: delete any older version so etcd does not hold a stale one.
            warn!(table = %table.id, %key, size, limit = self.settings.max_txn_bytes, "row left out: larger than etcd.max_txn_bytes");
            value = None;
            size = key.len() + 16;
        }
        if size > self.settings.max_txn_bytes {
            return Err(EngineError::RowTooLarge {
                table: table.id.clone(),
                key,
                size,
                limit: self.settings.max_txn_bytes,
            });
        }
        if let Some(join) = &mut self.join {
            join.touch(&table.id, &key);
        }
        let is_new = self.current.lookup(&key).is_none();
        let full = (is_new && self.current.len() >= self.max_ops)
            || self.current.bytes + size > self.settings.max_txn_bytes;
        if full {
            // Too big for one txn: what came before goes first, then this part of it, without
            // the position, so that a crash replays the whole transaction.
            self.write_committed().await?;
            let ops = self.current.take_ops();
            self.store().await?.commit(ops, None).await?;
            self.stats.txns += 1;
        }
        self.current.set(key, value);
        Ok(())
    }

    async fn end_transaction(&mut self, position: Position) -> Result<(), EngineError> {
        let current = std::mem::take(&mut self.current);
        let (ops, bytes) = self.committed.merged_size(&current);
        if ops > self.max_ops || bytes > self.settings.max_txn_bytes {
            self.send_committed().await?;
            self.backlog = true;
        }
        self.committed.merge(current);
        self.committed_position = Some(position);
        Ok(())
    }

    /// One line per [`PROGRESS_EVERY`] while changes flow, with the position they reached; one
    /// when they stop. The first transaction after a quiet spell is logged as it is written.
    fn log_progress(&mut self) {
        let stats = std::mem::take(&mut self.stats);
        if stats.transactions == 0 && stats.changes == 0 {
            if !stats.idle {
                info!(position = %self.ack.borrow().0, "sync idle: caught up with the source");
            }
            self.stats.idle = true;
            return;
        }
        info!(
            position = %self.ack.borrow().0,
            transactions = stats.transactions,
            changes = stats.changes,
            etcd_txns = stats.txns,
            lag_seconds = format_args!("{:.3}", self.settings.metrics.lag_seconds()),
            "sync progress (in the last {}s)",
            PROGRESS_EVERY.as_secs()
        );
    }
}
