//! Fenced writes: every txn compares the leadership key's create revision (and, with the
//! state, the state key's mod revision), so a deposed agent's writes never land.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{Op, SinkError, State, Store};

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
        let state_value = state.map(|s| self.encode_state(s)).transpose()?;
        let txn_ops = self.txn_ops(ops, state_value.as_deref());
        let revision = self
            .fenced_txn(txn_ops, state_value.as_deref(), &[])
            .await?;
        if state.is_some() {
            self.fence = revision;
        }
        Ok(revision)
    }

    /// The state as the txns store it.
    pub fn encode_state(&self, state: &State) -> Result<Arc<[u8]>, SinkError> {
        state.encode(&self.state_key)
    }

    /// `ops` as txn operations, with the state put last when given.
    fn txn_ops(&self, ops: Vec<Op>, state: Option<&[u8]>) -> Vec<TxnOp> {
        let mut txn_ops: Vec<TxnOp> = ops.into_iter().map(txn_op).collect();
        if let Some(state) = state {
            txn_ops.push(TxnOp::put(self.state_key.as_str(), state.to_vec(), None));
        }
        txn_ops
    }

    /// A txn of `ops` and the state that lands right after the last of `ahead` (see
    /// `Sink::commit_chained`): several may be in flight, in order.
    pub fn commit_chained(
        &self,
        ops: Vec<Op>,
        state: Arc<[u8]>,
        ahead: Vec<Arc<[u8]>>,
    ) -> impl std::future::Future<Output = Result<i64, SinkError>> + Send + 'static {
        let store = self.clone();
        async move {
            let txn_ops = store.txn_ops(ops, Some(&state));
            store.fenced_txn(txn_ops, Some(&state), &ahead).await
        }
    }

    /// A fenced txn that does not write the state, usable from many tasks at once.
    pub fn writer(&self) -> Writer {
        Writer {
            store: self.clone(),
        }
    }

    /// Sends the fenced txn, again where it failed in a way a retry may cure. `state_value`:
    /// the state the txn writes, if it does. An attempt that failed may still have been applied
    /// (the answer was lost, not the request): then the retry's compare fails on the state's
    /// new mod revision, and finding our own state there means it was that attempt that wrote
    /// it, not another agent.
    ///
    /// With chained txns `ahead` (their states, oldest first), the txn compares the state's
    /// value with the last one's instead of the state's mod revision: it is sent while they
    /// may still be in flight, and while the state is still the one before them (the fence)
    /// or one of theirs but the last, it is sent again.
    pub(super) async fn fenced_txn(
        &self,
        ops: Vec<TxnOp>,
        state_value: Option<&[u8]>,
        ahead: &[Arc<[u8]>],
    ) -> Result<i64, SinkError> {
        let count = ops.len();
        let previous = ahead.last().map(|p| &**p);
        let mut compares = vec![match previous {
            Some(previous) => Compare::value(self.state_key.as_str(), CompareOp::Equal, previous),
            None => Compare::mod_revision(self.state_key.as_str(), CompareOp::Equal, self.fence),
        }];
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
        let mut early = 0u32;
        let (retried, found) = loop {
            let started = Instant::now();
            let mut retried = false;
            let response = self
                .retrying(&format!("txn of {count} operations"), |attempt| {
                    retried = attempt > 0;
                    let mut kv = self.kv();
                    let txn = txn.clone();
                    // Boxed: gRPC's request future is kilobytes, and the task each txn runs in
                    // would copy it whole every time it moves (spawned, polled, finished).
                    Box::pin(async move { kv.txn(txn).await })
                })
                .await?;
            if let Some(metrics) = &self.metrics {
                metrics.etcd_txn(started.elapsed());
            }
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                return Ok(revision);
            }
            let found = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
                _ => None,
            });
            let found_revision = found.as_ref().map_or(0, |f| f.0);
            let earlier = ahead.split_last().map_or(&[][..], |(_, e)| e);
            let behind = !ahead.is_empty()
                && (found_revision == self.fence
                    || found
                        .as_ref()
                        .is_some_and(|(_, v)| earlier.iter().any(|e| **e == **v)));
            if !behind {
                break (retried, found);
            }
            // Arrived before its predecessor landed: ask again, at once the first times (the
            // predecessor is a round trip away at most), then backing off while it is retried.
            early += 1;
            if early > 2 {
                tokio::time::sleep(Duration::from_millis(1 << (early - 3).min(7))).await;
            }
        };
        if early > 0 {
            tracing::debug!(
                times = early,
                "a chained txn arrived before the one before it"
            );
        }
        let found_revision = found.as_ref().map_or(0, |f| f.0);
        if let (true, Some(ours), Some((at, value))) = (retried, state_value, &found) {
            if value.as_slice() == ours {
                tracing::info!(
                    revision = at,
                    "an earlier attempt of this txn was applied (its answer was lost)"
                );
                return Ok(*at);
            }
        }
        if let (true, Some(_), Some((at, value))) = (retried, state_value, &found) {
            // A txn chained after this one lands only on this one's state: a later state of
            // this agent's means an attempt of this one landed and its successor on top.
            let ours_later = *at > self.fence
                && serde_json::from_slice::<State>(value).is_ok_and(|s| s.agent == self.agent);
            if ours_later {
                tracing::info!(
                    revision = at,
                    "an earlier attempt of this txn was applied (its answer was lost), and the \
                     txn chained after it too"
                );
                return Ok(*at);
            }
        }
        if 0 < found_revision && found_revision < self.fence {
            // Revisions only grow: no agent can have written this. The member that answered
            // holds older or diverged data.
            return Err(SinkError::Client {
                context: format!("txn of {count} operations"),
                detail: format!(
                    "the state key's mod revision went back from {} to {found_revision}: the \
                     etcd member that answered holds data that diverged from the cluster's \
                     (etcd 3.5.0 to 3.5.2 can lose a write on a member killed under load, \
                     etcd-io/etcd#13766; compare the revisions in `etcdctl endpoint status`)",
                    self.fence
                ),
                transient: true,
                hint: None,
            });
        }
        let previous_found = matches!((previous, &found), (Some(p), Some((_, v))) if v == p);
        if found_revision == self.fence || previous_found {
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
            found: found_revision,
        })
    }

    /// Checks that a txn of `max_ops` operations is accepted (etcd's `--max-txn-ops`), with
    /// reads only.
    pub async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), SinkError> {
        // Reads of the state key: small, and inside what the agent's etcd role may read.
        let ops: Vec<TxnOp> = (0..max_ops)
            .map(|_| TxnOp::get(self.state_key.as_str(), None))
            .collect();
        let txn = Txn::new().and_then(ops);
        let probe = self
            .retrying("probing the txn size limit", |_| {
                let mut kv = self.kv();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await;
        match probe {
            Ok(_) => Ok(()),
            // So many reads that the request outgrows gRPC's size limit: far above any server's
            // --max-txn-ops as well.
            Err(e) if e.to_string().contains("larger than max") => Err(SinkError::TooManyOps),
            Err(e) => Err(e),
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
            .fenced_txn(ops.into_iter().map(txn_op).collect(), None, &[])
            .await
    }
}
