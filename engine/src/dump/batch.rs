//! The dump's writer: many txns in flight at once.

use etcd_sync_api::{DriverError, TableId};
use tokio::task::JoinSet;
use tracing::warn;

use crate::sink::{spawn_commit, Op, SinkError, SinkWriter};
use crate::{EngineError, Settings};

/// Packs puts into txns of at most `max_txn_ops` and `max_txn_bytes`, with several in flight:
/// dump keys are distinct, so their order does not matter.
pub(super) struct BatchWriter<W: SinkWriter> {
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
    pub(super) fn new(writer: W, settings: &Settings) -> Self {
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

    pub(super) async fn put(
        &mut self,
        table: &TableId,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), EngineError> {
        self.push(table, Op::Put { key, value }).await
    }

    /// Adds an operation on a key no other queued or in-flight operation touches.
    pub(super) async fn push(&mut self, table: &TableId, op: Op) -> Result<(), EngineError> {
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

    pub(super) async fn finish(&mut self) -> Result<(), EngineError> {
        if !self.ops.is_empty() {
            self.send().await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}
