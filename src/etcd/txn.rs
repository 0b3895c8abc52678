//! Fenced writes: every txn compares the leadership key's create revision (and, with the
//! state, the state key's mod revision), so a deposed agent's writes never land.

use std::time::Instant;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{client_error, Op, SinkError, State, Store};

/// An engine write as an etcd txn operation.
pub(super) fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value } => TxnOp::put(key, value, None),
        Op::Delete { key } => TxnOp::delete(key, None),
    }
}

impl Store {
    /// Applies `ops` in one fenced txn, with the state put when given; returns the txn's
    /// revision. Keys in `ops` must be distinct (etcd refuses two operations on one key).
    pub async fn commit(&mut self, ops: Vec<Op>, state: Option<&State>) -> Result<i64, SinkError> {
        let mut txn_ops: Vec<TxnOp> = ops.into_iter().map(txn_op).collect();
        if let Some(state) = state {
            let value = serde_json::to_string(state).map_err(|e| SinkError::BadState {
                key: self.state_key.clone(),
                reason: e.to_string(),
            })?;
            txn_ops.push(TxnOp::put(self.state_key.as_str(), value, None));
        }
        let revision = self.fenced_txn(txn_ops).await?;
        if state.is_some() {
            self.fence = revision;
        }
        Ok(revision)
    }

    /// A fenced txn that does not write the state, usable from many tasks at once.
    pub fn writer(&self) -> Writer {
        Writer {
            store: self.clone(),
        }
    }

    pub(super) async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<i64, SinkError> {
        let count = ops.len();
        let mut compares = vec![Compare::mod_revision(
            self.state_key.as_str(),
            CompareOp::Equal,
            self.fence,
        )];
        if let Some(leadership) = &self.leadership {
            compares.push(Compare::create_revision(
                leadership.key.as_str(),
                CompareOp::Equal,
                leadership.revision,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(self.state_key.as_str(), None)]);
        let started = Instant::now();
        let response = self
            .kv()
            .txn(txn)
            .await
            .map_err(|e| client_error(format!("txn of {count} operations"), e))?;
        if let Some(metrics) = &self.metrics {
            metrics.etcd_txn(started.elapsed());
        }
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            return Ok(revision);
        }
        let found = response
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(get) => {
                    Some(get.kvs().first().map_or(0, |kv| kv.mod_revision()))
                }
                _ => None,
            })
            .unwrap_or(0);
        if found == self.fence {
            // The state is ours: it was the leadership key that is gone.
            return Err(SinkError::LostLeadership {
                key: self
                    .leadership
                    .as_ref()
                    .map(|l| l.key.clone())
                    .unwrap_or_default(),
            });
        }
        Err(SinkError::Fenced {
            key: self.state_key.clone(),
            expected: self.fence,
            found,
        })
    }

    /// Checks that a txn of `max_ops` operations is accepted (etcd's `--max-txn-ops`), with
    /// reads only.
    pub async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), SinkError> {
        // Reads of the state key: small, and inside what the agent's etcd role may read.
        let ops: Vec<TxnOp> = (0..max_ops)
            .map(|_| TxnOp::get(self.state_key.as_str(), None))
            .collect();
        match self.kv().txn(Txn::new().and_then(ops)).await {
            Ok(_) => Ok(()),
            // So many reads that the request outgrows gRPC's size limit: far above any server's
            // --max-txn-ops as well.
            Err(e) if e.to_string().contains("larger than max") => Err(SinkError::TooManyOps),
            Err(e) => Err(client_error("probing the txn size limit", e)),
        }
    }
}

/// Writes fenced txns without touching the state; cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct Writer {
    store: Store,
}

impl Writer {
    pub async fn commit(&self, ops: Vec<Op>) -> Result<i64, SinkError> {
        self.store
            .fenced_txn(ops.into_iter().map(txn_op).collect())
            .await
    }
}
