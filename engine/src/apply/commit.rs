//! The group commit in flight: one at a time, holding the store until etcd answers, while the
//! applier builds the next group.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use etcd_sync_api::Position;
use tracing::info;

use super::Applier;
use crate::sink::{Phase, Sink, SinkError};
use crate::EngineError;

/// A commit under way: it hands the store back with its outcome.
pub(super) type Landing<'a, S> =
    Pin<Box<dyn Future<Output = (&'a mut S, Result<i64, SinkError>)> + Send + 'a>>;

/// The group commit etcd has not answered yet; it holds the store until it lands.
pub(super) struct InFlight<'a, S> {
    txn: Landing<'a, S>,
    position: Position,
    committed_at: Option<SystemTime>,
}

/// Waits for the txn in flight (forever when there is none: a `select!` branch).
pub(super) async fn wait_landed<'a, S>(
    in_flight: &mut Option<InFlight<'a, S>>,
) -> (&'a mut S, Result<i64, SinkError>) {
    match in_flight {
        Some(flight) => (&mut flight.txn).await,
        None => std::future::pending().await,
    }
}

impl<'a, S: Sink> Applier<'a, S> {
    /// Writes the complete transactions with their position and waits until they landed.
    pub(super) async fn write_committed(&mut self) -> Result<(), EngineError> {
        self.send_committed().await?;
        self.store().await?;
        Ok(())
    }

    /// Sends the complete transactions with their position as the txn in flight, once the one
    /// before it landed.
    pub(super) async fn send_committed(&mut self) -> Result<(), EngineError> {
        if self.committed_position.is_none() {
            return Ok(());
        }
        let store = self.take_store().await?;
        let Some(position) = self.committed_position.take() else {
            self.store = Some(store);
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
        let state = store.state(Phase::Sync, Some(position.clone()));
        self.in_flight = Some(InFlight {
            txn: Box::pin(async move {
                let result = store.commit(ops, Some(&state)).await;
                (store, result)
            }),
            position,
            committed_at: self.committed_at.take(),
        });
        self.join_turn = true;
        Ok(())
    }

    /// The store, once the txn in flight landed.
    pub(super) async fn store(&mut self) -> Result<&mut S, EngineError> {
        let store = self.take_store().await?;
        Ok(self.store.insert(store))
    }

    pub(super) async fn take_store(&mut self) -> Result<&'a mut S, EngineError> {
        // A joining table's txns land first: they are fenced by the state this store writes.
        self.drain_join().await?;
        if let Some(store) = self.store.take() {
            return Ok(store);
        }
        let (store, result) = wait_landed(&mut self.in_flight).await;
        self.landed(store, result)
    }

    /// Acknowledges the position of the txn that landed; hands its store back.
    pub(super) fn landed(
        &mut self,
        store: &'a mut S,
        result: Result<i64, SinkError>,
    ) -> Result<&'a mut S, EngineError> {
        let flight = self.in_flight.take();
        result?;
        let Some(InFlight {
            position,
            committed_at,
            ..
        }) = flight
        else {
            return Ok(store);
        };
        self.stats.txns += 1;
        if std::mem::take(&mut self.stats.idle) {
            info!(position = %position.0, "sync: changes arrive again; the first is applied");
        }
        *self.progressed = true;
        if let Some(at) = committed_at {
            self.settings
                .metrics
                .set_lag(SystemTime::now().duration_since(at).unwrap_or_default());
        }
        // The driver may be gone already (shutdown); the position is durable either way.
        let _ = self.ack.send(position);
        Ok(store)
    }
}
