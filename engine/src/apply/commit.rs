//! Group commits in flight: up to [`PIPELINE_DEPTH`] at once in a backlog, each chained to the
//! one before it (it compares the state's value with its predecessor's), so they land in
//! order while the next is already on its way: one txn in flight leaves etcd idle for a round
//! trip and the agent's turn between every two groups.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use etcd_sync_api::Position;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tracing::info;

use super::Applier;
use crate::sink::{Phase, Sink, SinkError};
use crate::EngineError;

/// Group commits in flight at once. Only a full group goes beside another (a partial one waits
/// for the txns in flight, filling meanwhile), so a pipeline does not mean more, smaller txns.
/// Two: four gained 8% more with etcd 5 ms away and lost 15-25% with etcd on the same cores.
pub(crate) const PIPELINE_DEPTH: usize = 2;

/// What a group commit acknowledges once it landed.
pub(super) struct Landing {
    position: Position,
    committed_at: Option<SystemTime>,
}

type Flight = Pin<Box<dyn Future<Output = (Landing, Result<i64, SinkError>)> + Send>>;

/// The group commits etcd has not answered yet, oldest first.
#[derive(Default)]
pub(super) struct InFlight {
    txns: FuturesOrdered<Flight>,
    /// The states they write, oldest first: the next one lands after the last.
    states: VecDeque<Arc<[u8]>>,
}

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.txns.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The oldest commit's outcome, once it landed (forever when there is none: a `select!`
    /// branch).
    pub(super) async fn next(&mut self) -> (Landing, Result<i64, SinkError>) {
        match self.txns.next().await {
            Some(landed) => {
                self.states.pop_front();
                landed
            }
            None => std::future::pending().await,
        }
    }
}

impl<'a, S: Sink> Applier<'a, S> {
    /// Writes the complete transactions with their position and waits until they landed.
    pub(super) async fn write_committed(&mut self) -> Result<(), EngineError> {
        self.send_committed().await?;
        self.store().await?;
        Ok(())
    }

    /// Sends the complete transactions with their position, once a slot is free.
    pub(super) async fn send_committed(&mut self) -> Result<(), EngineError> {
        if self.committed_position.is_none() {
            return Ok(());
        }
        // A joining table's txns land first: they are fenced by the state's mod revision.
        self.drain_join().await?;
        while self.in_flight.len() >= PIPELINE_DEPTH {
            let (landing, result) = self.in_flight.next().await;
            self.landed(landing, result)?;
        }
        let Some(position) = self.committed_position.take() else {
            return Ok(());
        };
        self.lingering = false;
        let ops = self.committed.take_ops();
        // Behind the source: a group of half a txn or more, or transactions committed long
        // before they are written (a catch-up, even one whose stream is slower than etcd).
        let behind = self.committed_at.is_some_and(|at| {
            SystemTime::now()
                .duration_since(at)
                .is_ok_and(|lag| lag >= super::BACKLOG_LAG)
        });
        self.backlog = behind || ops.len() >= self.max_ops / 2;
        let state = self.store.state(Phase::Sync, Some(position.clone()));
        let value = self.store.encode_state(&state)?;
        let ahead = self.in_flight.states.iter().cloned().collect();
        self.in_flight.states.push_back(Arc::clone(&value));
        let txn = self.store.commit_chained(ops, value, ahead);
        let landing = Landing {
            position,
            committed_at: self.committed_at.take(),
        };
        self.in_flight
            .txns
            .push_back(Box::pin(async move { (landing, txn.await) }));
        self.join_turn = true;
        Ok(())
    }

    /// The store, once every txn in flight (the join's too) landed: nothing reads or writes
    /// etcd ahead of them.
    pub(super) async fn store(&mut self) -> Result<&mut S, EngineError> {
        self.drain_join().await?;
        while !self.in_flight.is_empty() {
            let (landing, result) = self.in_flight.next().await;
            self.landed(landing, result)?;
        }
        Ok(&mut *self.store)
    }

    /// Acknowledges the position of the group commit that landed.
    pub(super) fn landed(
        &mut self,
        landing: Landing,
        result: Result<i64, SinkError>,
    ) -> Result<(), EngineError> {
        let revision = result?;
        self.store.chained_landed(revision);
        self.stats.txns += 1;
        if std::mem::take(&mut self.stats.idle) {
            info!(position = %landing.position.0, "sync: changes arrive again; the first is applied");
        }
        *self.progressed = true;
        if let Some(at) = landing.committed_at {
            self.settings
                .metrics
                .set_lag(SystemTime::now().duration_since(at).unwrap_or_default());
        }
        // The driver may be gone already (shutdown); the position is durable either way.
        let _ = self.ack.send(landing.position);
        Ok(())
    }
}
