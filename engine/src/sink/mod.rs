//! Where the engine writes: a key-value store with etcd's transaction semantics. The engine
//! knows nothing else of etcd; the etcd module of the `sync` binary holds the real sink, [`memory`] an
//! in-memory one with the same semantics, for tests of the engine without servers.
//!
//! # The contract a sink keeps
//! - **Atomic txns**: [`Sink::commit`] and [`SinkWriter::commit`] apply all their operations or
//!   none, under one new revision; a watcher sees them together.
//! - **Fencing**: every txn compares the state key's mod revision with the one this sink last
//!   read or wrote (a chained commit: the state's value with the one its predecessor writes),
//!   and the leadership key's create revision with the one it acquired. When
//!   another agent wrote the state the txn fails with [`SinkError::Fenced`]; when the
//!   leadership key is gone, with [`SinkError::LostLeadership`]. Nothing of a failed txn lands.
//! - **Limits**: a txn with more operations than the server allows fails with
//!   [`SinkError::TooManyOps`]; two operations on one key in a txn are refused.
//! - **Durability**: a txn that returned `Ok` is durable; one that returned an error may or may
//!   not have landed (a cut connection), so the engine replays from the last state it wrote,
//!   and every write it makes is idempotent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_sync_api::Position;
use tokio_util::sync::CancellationToken;

mod error;
pub mod memory;
mod state;
mod types;

pub use error::{is_too_many_ops, SinkError};
pub use state::{Phase, Selected, State, FORMAT};
pub use types::{Leadership, ListedKey, Op, Page, ScanStats};

/// Opens a sink: once per engine session (a retry opens a new one).
pub trait Connector: Send + Sync + 'static {
    type Sink: Sink;
    fn connect(&self) -> impl Future<Output = Result<Self::Sink, SinkError>> + Send;
}

/// The store the engine writes to; see the module docs for the contract.
pub trait Sink: Clone + Send + Sync + 'static {
    type Writer: SinkWriter;
    type Scan<'a>: SinkScan
    where
        Self: 'a;

    /// Reads the state (and remembers its revision for fencing); `None` before the first run.
    fn load_state(&mut self) -> impl Future<Output = Result<Option<State>, SinkError>> + Send;
    /// A state to write, stamped with this agent and the selected tables.
    fn state(&self, phase: Phase, position: Option<Position>) -> State;
    /// The selection the next states record.
    fn set_tables(&mut self, selected: Selected);
    /// Changes which tables the next states list as snapshotting.
    fn update_snapshotting(&mut self, update: impl FnOnce(&mut Vec<String>)) {
        let mut selected = self.state(Phase::Sync, None).selected();
        update(&mut selected.snapshotting);
        self.set_tables(selected);
    }
    /// Applies `ops` (distinct keys) in one fenced txn, with the state when given; returns
    /// the txn's revision.
    fn commit(
        &mut self,
        ops: Vec<Op>,
        state: Option<&State>,
    ) -> impl Future<Output = Result<i64, SinkError>> + Send;
    /// The state as the txns store it (JSON).
    fn encode_state(&self, state: &State) -> Result<Arc<[u8]>, SinkError>;
    /// Starts a fenced txn of `ops` and the state `state` (from [`Sink::encode_state`]) that
    /// lands right after the last of `ahead`: the states of this sink's chained commits sent
    /// before it that may still be in flight, oldest first (none: after the state this sink
    /// last read or wrote). It compares the state's value with that last one, so it never
    /// lands first, and asks again while the state is still one of `ahead` or the one before
    /// them. The engine keeps several in flight this way and reports each that landed, in
    /// order, with [`Sink::chained_landed`].
    fn commit_chained(
        &self,
        ops: Vec<Op>,
        state: Arc<[u8]>,
        ahead: Vec<Arc<[u8]>>,
    ) -> impl Future<Output = Result<i64, SinkError>> + Send + 'static;
    /// A chained commit landed at `revision`: the fence of the txns after it.
    fn chained_landed(&mut self, revision: i64);
    /// Fenced txns without the state, for many tasks at once (the dump).
    fn writer(&self) -> Self::Writer;
    /// Every key under `prefix` in key order, a page at a time, in time linear in their number.
    fn scan(&self, prefix: &str, with_values: bool) -> Self::Scan<'_>;
    /// The keys alone under `prefix` from `from` (inclusive, under the prefix) to `to`
    /// (exclusive; the prefix's end when `None`), read as [`Sink::scan`] reads: disjoint ranges
    /// scanned at once share a long prefix out between requests in flight together.
    fn scan_range(&self, prefix: &str, from: &str, to: Option<&str>) -> Self::Scan<'_>;
    fn count(&self, prefix: &str) -> impl Future<Output = Result<i64, SinkError>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, SinkError>> + Send;
    /// Checks that a txn of `max_ops` operations is accepted.
    fn probe_max_txn_ops(
        &self,
        max_ops: usize,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Takes the lock (one agent per state prefix), waiting up to `ttl` for a holder's lease.
    fn lock(&mut self, ttl: Duration) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Waits to win the election (`ha`).
    fn campaign(&mut self, ttl: Duration) -> impl Future<Output = Result<(), SinkError>> + Send;
    fn leadership(&self) -> Option<&Leadership>;
    /// Keeps the leadership's lease alive until it cannot; then fires `lost` and `leading`.
    fn keep_leadership(
        &self,
        ttl: Duration,
        lost: CancellationToken,
        leading: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;
    /// Gives the lock or the leadership up (best effort).
    fn release(&mut self) -> impl Future<Output = ()> + Send;
}

/// Fenced txns from many tasks at once.
pub trait SinkWriter: Clone + Send + Sync + 'static {
    fn commit(&self, ops: Vec<Op>) -> impl Future<Output = Result<i64, SinkError>> + Send;
    /// The runtime to run [`SinkWriter::commit`]'s tasks on (`None`: the engine's own). The
    /// one that drives the sink's connections saves each txn two thread hand-offs: its
    /// request and its answer no longer cross threads on the way.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }
}

/// Starts `writer`'s commit of `ops` as a task of `tasks`, on the writer's runtime if it has
/// one.
pub(crate) fn spawn_commit<W: SinkWriter>(
    tasks: &mut tokio::task::JoinSet<Result<i64, SinkError>>,
    writer: W,
    ops: Vec<Op>,
) {
    let runtime = writer.runtime();
    let commit = async move { writer.commit(ops).await };
    match runtime {
        Some(runtime) => tasks.spawn_on(commit, &runtime),
        None => tasks.spawn(commit),
    };
}

/// A read of a prefix, a page at a time (an empty page: the end).
pub trait SinkScan: Send {
    fn next(&mut self) -> impl Future<Output = Result<Page, SinkError>> + Send;
    fn stats(&self) -> ScanStats;
}
