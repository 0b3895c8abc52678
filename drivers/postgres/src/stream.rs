//! One streaming session on a replication slot: decodes pgoutput into the engine's changes,
//! and reports to the server what the engine has made durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use etcd_sync_api::{
    Change, DriverError, Position, Row, StreamEvent, TableId, TableSchema, Value,
    CHANGES_EVENT_BYTES,
};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::catalog::{self, PgTable, TypeCatalog};
use crate::conn::ReplicationConnection;
use crate::error::conn_error;
use crate::lsn::Lsn;
use crate::pgoutput::{self, LogicalMessage, ReplicationMessage, TupleValue};
use crate::types::PgType;
use crate::{lsn_of, partitions, position_of, system_time};

/// Changes per [`StreamEvent::Changes`]: large transactions travel in pieces of this size.
const CHANGES_PER_EVENT: usize = 256;
/// How often the server hears from us even when nothing changed (its default timeout is 60 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How long an acknowledged position waits before it is confirmed to the server: every
/// confirmation costs the walsender work, and during a catch-up the engine acknowledges
/// hundreds of group commits a second.
const CONFIRM_DELAY: Duration = Duration::from_millis(100);
/// How long a shutdown waits for the engine's last acknowledgement.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(10);

struct Relation {
    schema: Arc<TableSchema>,
    types: Vec<PgType>,
}

/// Where a session starts: the position's LSN, and the dump's partitions fingerprint it carries.
pub struct Start {
    pub lsn: Lsn,
    pub partitions: Option<String>,
}

pub struct Session {
    repl: ReplicationConnection,
    acks: watch::Receiver<Position>,
    decoder: Decoder,
}

/// Turns pgoutput messages into stream events; owns everything but the connection.
pub struct Decoder {
    client: Client,
    types: TypeCatalog,
    /// Primary-key column names of the selected tables.
    keys: HashMap<TableId, Vec<String>>,
    /// Relations announced by the server; `None` for tables not selected.
    relations: HashMap<u32, Option<Relation>>,
    out: mpsc::Sender<StreamEvent>,
    in_transaction: bool,
    transaction_has_changes: bool,
    batch: Vec<Change>,
    batch_bytes: usize,
    /// End of the last transaction handed to the engine.
    last_sent: Lsn,
    /// Newest position the engine made durable.
    acked: Lsn,
    /// What we may confirm to the server: `acked`, or further when nothing is outstanding.
    confirmable: Lsn,
    confirmed: Lsn,
    /// The dump's partitions fingerprint, carried in every position.
    partitions: Option<String>,
    tables: Vec<PgTable>,
}

impl Session {
    /// A session on a replication connection in CopyBoth mode, continuing `decoder`'s work.
    pub fn new(
        repl: ReplicationConnection,
        decoder: Decoder,
        acks: watch::Receiver<Position>,
    ) -> Self {
        Self {
            repl,
            acks,
            decoder,
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), DriverError> {
        let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
        let mut partitions_timer = tokio::time::interval(partitions::CHECK_INTERVAL);
        let watch_partitions = self.decoder.partitions.is_some();
        // Made once: the loop turns for every message of the stream.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let confirm = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(confirm);
        let mut confirm_pending = false;
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                _ = partitions_timer.tick(), if watch_partitions => self.decoder.check_partitions().await?,
                changed = self.acks.changed() => {
                    if changed.is_err() {
                        return Err(DriverError::Stopped);
                    }
                    self.take_ack()?;
                    if !confirm_pending {
                        confirm.as_mut().reset(tokio::time::Instant::now() + CONFIRM_DELAY);
                        confirm_pending = true;
                    }
                }
                () = &mut confirm, if confirm_pending => {
                    confirm_pending = false;
                    self.send_status(false).await?;
                }
                _ = status_timer.tick() => self.send_status(true).await?,
                data = self.repl.recv_copy_data() => {
                    let mut data = data.map_err(|e| conn_error("reading the replication stream", e))?;
                    // Everything the same read brought in, without a turn of the loop each.
                    loop {
                        let Some(message) = data else {
                            return Err(DriverError::transient("reading the replication stream", "the server ended the stream"));
                        };
                        if self.decoder.handle(message).await? {
                            self.send_status(true).await?;
                        }
                        match self.repl.buffered_copy_data() {
                            Ok(Some(next)) => data = next,
                            Ok(None) => break,
                            Err(e) => return Err(conn_error("reading the replication stream", e)),
                        }
                    }
                }
            }
        }
        self.shutdown().await
    }

    fn take_ack(&mut self) -> Result<(), DriverError> {
        self.decoder.take_ack(&mut self.acks)
    }

    /// Tells the server what it may discard; with `always`, even when nothing moved (so that
    /// it knows we are alive).
    async fn send_status(&mut self, always: bool) -> Result<(), DriverError> {
        let d = &mut self.decoder;
        if !always && d.confirmable == d.confirmed {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let message = pgoutput::standby_status_update(d.confirmable, now, false);
        self.repl
            .send_copy_data(&message)
            .await
            .map_err(|e| conn_error("sending a standby status update", e))?;
        if d.confirmable != d.confirmed {
            debug!(lsn = %d.confirmable, "confirmed to the server");
        }
        d.confirmed = d.confirmable;
        Ok(())
    }

    /// Stops taking data, lets the engine commit what it holds, and confirms its last position.
    async fn shutdown(mut self) -> Result<(), DriverError> {
        self.decoder.finish(&mut self.acks).await?;
        self.send_status(true).await?;
        self.repl.terminate().await;
        Ok(())
    }
}

impl Decoder {
    pub fn new(
        client: Client,
        types: TypeCatalog,
        tables: Vec<PgTable>,
        start: Start,
        out: mpsc::Sender<StreamEvent>,
    ) -> Self {
        let keys = tables
            .iter()
            .map(|t| {
                let names = t
                    .schema
                    .key_column_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                (t.schema.id.clone(), names)
            })
            .collect();
        Self {
            client,
            types,
            keys,
            relations: HashMap::new(),
            out,
            in_transaction: false,
            transaction_has_changes: false,
            batch: Vec::new(),
            batch_bytes: 0,
            last_sent: start.lsn,
            acked: start.lsn,
            confirmable: start.lsn,
            confirmed: Lsn(0),
            partitions: start.partitions,
            tables,
        }
    }

    /// The query connection the decoder uses between messages.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where streaming may resume: nothing before it is owed to the engine any more (handed
    /// over, or without changes for it).
    pub fn resume_lsn(&self) -> Lsn {
        self.last_sent.max(self.confirmable)
    }

    /// What may be confirmed to the server now, and whether it moved since it last was.
    pub fn take_confirmable(&mut self) -> Option<Lsn> {
        (self.confirmable != self.confirmed).then(|| {
            self.confirmed = self.confirmable;
            self.confirmable
        })
    }

    /// Takes the engine's newest acknowledgement.
    pub fn take_ack(&mut self, acks: &mut watch::Receiver<Position>) -> Result<(), DriverError> {
        let lsn = lsn_of(&acks.borrow_and_update())?;
        self.acked = self.acked.max(lsn);
        self.confirmable = self.confirmable.max(lsn);
        Ok(())
    }

    /// Ends the engine's input and waits (a bounded time) for its acknowledgement of
    /// everything handed over.
    pub async fn finish(
        &mut self,
        acks: &mut watch::Receiver<Position>,
    ) -> Result<(), DriverError> {
        // Replacing our sender drops it, so the engine sees the end of the stream.
        self.out = mpsc::channel(1).0;
        let wait = async {
            while acks.changed().await.is_ok() {
                self.take_ack(acks)?;
            }
            Ok::<_, DriverError>(())
        };
        if tokio::time::timeout(SHUTDOWN_ACK_WAIT, wait).await.is_err() {
            warn!("the engine did not finish within {SHUTDOWN_ACK_WAIT:?}; confirming what it acknowledged");
        }
        Ok(())
    }

    /// Handles one pgoutput message (an XLogData payload, or a row of the SQL interface).
    pub async fn handle_logical(&mut self, data: Bytes) -> Result<(), DriverError> {
        let message = pgoutput::decode_logical_message(data)
            .map_err(|e| DriverError::Protocol(e.to_string()))?;
        self.logical(message).await.map(drop)
    }

    /// Fails with [`DriverError::Resnapshot`] once the partitions differ from the dump's.
    async fn check_partitions(&self) -> Result<(), DriverError> {
        let Some(expected) = &self.partitions else {
            return Ok(());
        };
        let tables: Vec<&PgTable> = self.tables.iter().collect();
        let now = partitions::fingerprint(&self.client, &tables).await?;
        match partitions::changed(expected, now.as_deref()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Handles one CopyData payload; returns whether to send a status update now (the
    /// confirmable position moved, or the server asked for a reply).
    async fn handle(&mut self, data: Bytes) -> Result<bool, DriverError> {
        let message = pgoutput::decode_replication_message(data)
            .map_err(|e| DriverError::Protocol(e.to_string()))?;
        match message {
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
            } => Ok(self.advance_idle(wal_end) || reply_requested),
            ReplicationMessage::XLogData { data, .. } => {
                let message = pgoutput::decode_logical_message(data)
                    .map_err(|e| DriverError::Protocol(e.to_string()))?;
                self.logical(message).await
            }
        }
    }

    /// Between transactions with everything handed over acknowledged, the slot may move to
    /// `lsn`: nothing before it is still owed to etcd. Keeps an idle slot from holding WAL.
    fn advance_idle(&mut self, lsn: Lsn) -> bool {
        if !self.in_transaction && self.last_sent <= self.acked && lsn > self.confirmable {
            self.confirmable = lsn;
            return true;
        }
        false
    }

    async fn logical(&mut self, message: LogicalMessage) -> Result<bool, DriverError> {
        match message {
            LogicalMessage::Begin { .. } => {
                self.in_transaction = true;
                self.transaction_has_changes = false;
            }
            LogicalMessage::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.in_transaction = false;
                if !self.transaction_has_changes {
                    return Ok(self.advance_idle(end_lsn));
                }
                self.flush_batch().await?;
                self.send(StreamEvent::Commit {
                    position: position_of(end_lsn, self.partitions.as_deref()),
                    committed_at: Some(system_time(commit_time_micros)),
                })
                .await?;
                self.last_sent = end_lsn;
            }
            LogicalMessage::Relation(relation) => self.relation(relation).await?,
            LogicalMessage::Insert { relation, new } => {
                if let Some(rel) = self.selected(relation)? {
                    let change = Change::Insert {
                        table: Arc::clone(&rel.schema),
                        row: to_row(rel, new)?,
                    };
                    self.push(change).await?;
                }
            }
            LogicalMessage::Update {
                relation,
                old,
                old_is_key,
                new,
            } => {
                if let Some(rel) = self.selected(relation)? {
                    let mut old = old.map(|old| to_row(rel, old)).transpose()?;
                    if let (Some(old), true) = (&mut old, old_is_key) {
                        // A key tuple's other columns were not sent: say so, rather than NULL.
                        for (i, value) in old.iter_mut().enumerate() {
                            if !rel.schema.key.contains(&i) {
                                *value = Value::Unchanged;
                            }
                        }
                    }
                    let change = Change::Update {
                        table: Arc::clone(&rel.schema),
                        old,
                        row: to_row(rel, new)?,
                    };
                    self.push(change).await?;
                }
            }
            LogicalMessage::Delete { relation, old } => {
                if let Some(rel) = self.selected(relation)? {
                    let change = Change::Delete {
                        table: Arc::clone(&rel.schema),
                        old: to_row(rel, old)?,
                    };
                    self.push(change).await?;
                }
            }
            LogicalMessage::Truncate { relations } => {
                let mut tables = Vec::new();
                for oid in relations {
                    if let Some(rel) = self.selected(oid)? {
                        tables.push(Arc::clone(&rel.schema));
                    }
                }
                if !tables.is_empty() {
                    self.push(Change::Truncate { tables }).await?;
                }
            }
            LogicalMessage::Type { .. } | LogicalMessage::Origin | LogicalMessage::Message => {}
        }
        Ok(false)
    }

    fn selected(&self, oid: u32) -> Result<Option<&Relation>, DriverError> {
        match self.relations.get(&oid) {
            Some(rel) => Ok(rel.as_ref()),
            None => Err(DriverError::Protocol(format!(
                "a change for relation {oid} came before its Relation message"
            ))),
        }
    }

    async fn relation(&mut self, relation: pgoutput::Relation) -> Result<(), DriverError> {
        let id = catalog::table_id(&relation.namespace, &relation.name);
        let Some(key) = self.keys.get(&id) else {
            self.relations.insert(relation.oid, None);
            return Ok(());
        };
        if relation
            .columns
            .iter()
            .any(|c| !self.types.knows(c.type_oid))
        {
            // A type created after start-up (an enum, a domain...).
            self.types = TypeCatalog::load(&self.client).await?;
        }
        let columns: Vec<(String, u32)> = relation
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_oid))
            .collect();
        let table = catalog::build_table(id, &columns, key, &self.types, None)?;
        debug!(table = %table.schema.id, columns = columns.len(), "relation");
        self.relations.insert(
            relation.oid,
            Some(Relation {
                schema: table.schema,
                types: table.types,
            }),
        );
        Ok(())
    }

    async fn push(&mut self, change: Change) -> Result<(), DriverError> {
        self.transaction_has_changes = true;
        self.batch_bytes += change.approx_size();
        self.batch.push(change);
        if self.batch.len() >= CHANGES_PER_EVENT || self.batch_bytes >= CHANGES_EVENT_BYTES {
            self.flush_batch().await?;
        }
        Ok(())
    }

    async fn flush_batch(&mut self) -> Result<(), DriverError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        // Grown as it fills: most transactions are a change or two, and a batch sized for
        // CHANGES_PER_EVENT up front cost 14 KiB per transaction, freed on the engine's thread.
        let batch = std::mem::take(&mut self.batch);
        self.send(StreamEvent::Changes(batch)).await
    }

    async fn send(&self, event: StreamEvent) -> Result<(), DriverError> {
        self.out.send(event).await.map_err(|_| DriverError::Stopped)
    }
}

fn to_row(rel: &Relation, tuple: Vec<TupleValue>) -> Result<Row, DriverError> {
    if tuple.len() != rel.types.len() {
        return Err(DriverError::Protocol(format!(
            "table {}: a tuple has {} columns, the relation {}",
            rel.schema.id,
            tuple.len(),
            rel.types.len()
        )));
    }
    tuple
        .into_iter()
        .zip(&rel.types)
        .map(|(value, ty)| match value {
            TupleValue::Null => Ok(Value::Null),
            TupleValue::Unchanged => Ok(Value::Unchanged),
            TupleValue::Text(bytes) => {
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    DriverError::Protocol(format!("table {}: a value is not UTF-8", rel.schema.id))
                })?;
                ty.to_value(text)
                    .map_err(|e| DriverError::Protocol(format!("table {}: {e}", rel.schema.id)))
            }
        })
        .collect()
}
