//! etcd as the engine's [`Sink`].

use std::sync::Arc;
use std::time::Duration;

use etcd_sync_api::Position;
use tokio_util::sync::CancellationToken;

use super::{Connection, Leadership, Op, Phase, Scan, ScanStats, Selected, SinkError, State};
use super::{Store, Writer};
use crate::metrics::Metrics;
use crate::sink::{Connector, Sink, SinkScan, SinkWriter};

/// Connects to etcd, once per engine session.
pub struct EtcdConnector {
    pub connection: Connection,
    pub state_prefix: String,
    pub metrics: Arc<Metrics>,
}

impl Connector for EtcdConnector {
    type Sink = Store;

    async fn connect(&self) -> Result<Store, SinkError> {
        Ok(Store::connect(&self.connection, &self.state_prefix)
            .await?
            .with_metrics(Arc::clone(&self.metrics)))
    }
}

impl Sink for Store {
    type Writer = Writer;
    type Scan<'a> = Scan<'a>;

    async fn load_state(&mut self) -> Result<Option<State>, SinkError> {
        Store::load_state(self).await
    }

    fn state(&self, phase: Phase, position: Option<Position>) -> State {
        Store::state(self, phase, position)
    }

    fn set_tables(&mut self, selected: Selected) {
        Store::set_tables(self, selected)
    }

    async fn commit(&mut self, ops: Vec<Op>, state: Option<&State>) -> Result<i64, SinkError> {
        Store::commit(self, ops, state).await
    }

    fn encode_state(&self, state: &State) -> Result<Arc<[u8]>, SinkError> {
        Store::encode_state(self, state)
    }

    fn commit_chained(
        &self,
        ops: Vec<Op>,
        state: Arc<[u8]>,
        ahead: Vec<Arc<[u8]>>,
    ) -> impl std::future::Future<Output = Result<i64, SinkError>> + Send + 'static {
        Store::commit_chained(self, ops, state, ahead)
    }

    fn chained_landed(&mut self, revision: i64) {
        self.fence = revision;
    }

    fn writer(&self) -> Writer {
        Store::writer(self)
    }

    fn scan(&self, prefix: &str, with_values: bool) -> Scan<'_> {
        Store::scan(self, prefix, with_values)
    }

    fn scan_range(&self, prefix: &str, from: &str, to: Option<&str>) -> Scan<'_> {
        Store::scan_range(self, prefix, from, to)
    }

    async fn count(&self, prefix: &str) -> Result<i64, SinkError> {
        Store::count(self, prefix).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        Store::get(self, key).await
    }

    async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), SinkError> {
        Store::probe_max_txn_ops(self, max_ops).await
    }

    async fn lock(&mut self, ttl: Duration) -> Result<(), SinkError> {
        Store::lock(self, ttl).await
    }

    async fn campaign(&mut self, ttl: Duration) -> Result<(), SinkError> {
        Store::campaign(self, ttl).await
    }

    fn leadership(&self) -> Option<&Leadership> {
        Store::leadership(self)
    }

    fn keep_leadership(
        &self,
        ttl: Duration,
        lost: CancellationToken,
        leading: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        Store::keep_leadership(self, ttl, lost, leading)
    }

    async fn release(&mut self) {
        Store::release(self).await
    }
}

impl SinkWriter for Writer {
    async fn commit(&self, ops: Vec<Op>) -> Result<i64, SinkError> {
        Writer::commit(self, ops).await
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        super::io_runtime().ok().map(|r| r.handle().clone())
    }
}

impl SinkScan for Scan<'_> {
    async fn next(&mut self) -> Result<crate::sink::Page, SinkError> {
        Scan::next(self).await
    }

    fn stats(&self) -> ScanStats {
        Scan::stats(self)
    }
}
