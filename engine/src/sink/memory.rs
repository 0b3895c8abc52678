//! An in-memory sink with etcd's txn semantics (revisions, fenced compares, the op limit,
//! refusal of two operations on one key), for tests of the engine that need no server. Every
//! txn is kept in a history, so a test can replay what a watcher would have seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_sync_api::Position;
use tokio_util::sync::CancellationToken;

use super::{
    Connector, Leadership, ListedKey, Op, Phase, ScanStats, Sink, SinkError, SinkScan, SinkWriter,
    State,
};

#[derive(Debug, Clone)]
struct Kv {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
}

/// One applied txn: its revision and its writes (`None`: a delete).
pub type Revision = (i64, Vec<(String, Option<Vec<u8>>)>);

#[derive(Debug)]
struct Inner {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    max_txn_ops: usize,
    history: Vec<Revision>,
    /// Failures to inject into the next txns: `(apply it anyway, error)`.
    failures: Vec<(bool, SinkError)>,
    /// How long state-carrying txns take, as round trips to a real server would: one after
    /// the other, in turn.
    commit_latencies: Vec<Duration>,
    commits: usize,
    /// Most txns seen in flight at once, and in flight now.
    max_in_flight: usize,
    in_flight: usize,
}

/// The server: shared by every sink connected to it.
#[derive(Debug, Clone)]
pub struct MemoryEtcd {
    inner: Arc<Mutex<Inner>>,
}

impl Default for MemoryEtcd {
    fn default() -> Self {
        Self::new(128)
    }
}

impl MemoryEtcd {
    /// A server that accepts txns of at most `max_txn_ops` operations (etcd's `--max-txn-ops`).
    pub fn new(max_txn_ops: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                revision: 1,
                kvs: BTreeMap::new(),
                max_txn_ops,
                history: Vec::new(),
                failures: Vec::new(),
                commit_latencies: Vec::new(),
                commits: 0,
                max_in_flight: 0,
                in_flight: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding it has failed already.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys and values under `prefix`.
    pub fn data(&self, prefix: &str) -> BTreeMap<String, String> {
        self.lock()
            .kvs
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, kv)| (k.clone(), String::from_utf8_lossy(&kv.value).into_owned()))
            .collect()
    }

    /// Every txn applied so far, in order.
    pub fn history(&self) -> Vec<Revision> {
        self.lock().history.clone()
    }

    /// Writes a key outside any fence, as another client would.
    pub fn put(&self, key: &str, value: &str) {
        let mut inner = self.lock();
        inner.apply(vec![(key.to_owned(), Some(value.as_bytes().to_vec()))]);
    }

    /// Deletes a key outside any fence (a lease that expired, an operator).
    pub fn delete(&self, key: &str) {
        let mut inner = self.lock();
        inner.apply(vec![(key.to_owned(), None)]);
    }

    /// Makes the next txn fail with `error`; with `applied`, after applying it (an outcome
    /// the client cannot know, as when the connection drops after the request was sent).
    pub fn fail_next_txn(&self, error: SinkError, applied: bool) {
        self.lock().failures.insert(0, (applied, error));
    }

    /// Makes every commit with the state take `latency` before it applies.
    pub fn set_commit_latency(&self, latency: Duration) {
        self.set_commit_latencies(&[latency]);
    }

    /// Makes the commits with the state take these latencies in turn: a short one after a
    /// long one arrives before its predecessor landed.
    pub fn set_commit_latencies(&self, latencies: &[Duration]) {
        self.lock().commit_latencies = latencies.to_vec();
    }

    /// The most commits with the state that were in flight at once.
    pub fn max_commits_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// A connector for sinks with this state prefix and agent name.
    pub fn connector(&self, state_prefix: &str, agent: &str) -> MemoryConnector {
        MemoryConnector {
            etcd: self.clone(),
            state_prefix: state_prefix.trim_end_matches('/').to_owned(),
            agent: agent.to_owned(),
        }
    }
}

impl Inner {
    fn apply(&mut self, writes: Vec<(String, Option<Vec<u8>>)>) -> i64 {
        self.revision += 1;
        let revision = self.revision;
        for (key, value) in &writes {
            match value {
                Some(value) => {
                    let create_revision =
                        self.kvs.get(key).map_or(revision, |kv| kv.create_revision);
                    self.kvs.insert(
                        key.clone(),
                        Kv {
                            value: value.clone(),
                            create_revision,
                            mod_revision: revision,
                        },
                    );
                }
                None => {
                    self.kvs.remove(key);
                }
            }
        }
        self.history.push((revision, writes));
        revision
    }

    fn next_latency(&mut self) -> Duration {
        let latency = match self.commit_latencies.len() {
            0 => Duration::ZERO,
            n => self.commit_latencies[self.commits % n],
        };
        self.commits += 1;
        latency
    }

    fn mod_revision(&self, key: &str) -> i64 {
        self.kvs.get(key).map_or(0, |kv| kv.mod_revision)
    }

    fn create_revision(&self, key: &str) -> i64 {
        self.kvs.get(key).map_or(0, |kv| kv.create_revision)
    }
}

/// Opens [`MemorySink`]s on one [`MemoryEtcd`].
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    etcd: MemoryEtcd,
    state_prefix: String,
    agent: String,
}

impl Connector for MemoryConnector {
    type Sink = MemorySink;

    async fn connect(&self) -> Result<MemorySink, SinkError> {
        Ok(MemorySink {
            etcd: self.etcd.clone(),
            state_key: format!("{}/state", self.state_prefix),
            lock_key: format!("{}/lock", self.state_prefix),
            agent: self.agent.clone(),
            fence: 0,
            selected: Default::default(),
            leadership: None,
        })
    }
}

/// One agent's view of a [`MemoryEtcd`], fenced as the etcd store is.
#[derive(Debug, Clone)]
pub struct MemorySink {
    etcd: MemoryEtcd,
    state_key: String,
    lock_key: String,
    agent: String,
    fence: i64,
    selected: super::Selected,
    leadership: Option<Leadership>,
}

impl MemorySink {
    /// A fenced txn: the state key's mod revision must be `fence`, the leadership key's create
    /// revision the one acquired; etcd's limits apply.
    fn txn(&self, ops: Vec<(String, Option<Vec<u8>>)>) -> Result<i64, SinkError> {
        self.txn_after(ops, None)
    }

    /// A txn that compares the state's value with `previous` instead of its mod revision.
    fn txn_after(
        &self,
        ops: Vec<(String, Option<Vec<u8>>)>,
        previous: Option<&[u8]>,
    ) -> Result<i64, SinkError> {
        let mut inner = self.etcd.lock();
        if ops.len() > inner.max_txn_ops {
            return Err(SinkError::TooManyOps);
        }
        let mut keys: Vec<&String> = ops.iter().map(|(k, _)| k).collect();
        keys.sort();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(SinkError::Refused {
                context: format!("txn of {} operations", ops.len()),
                reason: "etcdserver: duplicate key given in txn request".into(),
            });
        }
        let found = inner.mod_revision(&self.state_key);
        let leading = self
            .leadership
            .as_ref()
            .is_none_or(|l| inner.create_revision(&l.key) == l.revision);
        let state_as_expected = match previous {
            Some(previous) => inner
                .kvs
                .get(&self.state_key)
                .is_some_and(|kv| kv.value == previous),
            None => found == self.fence,
        };
        if !state_as_expected {
            return Err(SinkError::Fenced {
                key: self.state_key.clone(),
                expected: self.fence,
                found,
            });
        }
        if !leading {
            return Err(SinkError::LostLeadership {
                key: self.lock_key.clone(),
            });
        }
        if let Some((applied, error)) = inner.failures.pop() {
            if applied {
                inner.apply(ops);
            }
            return Err(error);
        }
        Ok(inner.apply(ops))
    }
}

fn writes(ops: Vec<Op>) -> Vec<(String, Option<Vec<u8>>)> {
    ops.into_iter()
        .map(|op| match op {
            Op::Put { key, value } => (key, Some(value)),
            Op::Delete { key } => (key, None),
        })
        .collect()
}

struct InFlightGuard(MemoryEtcd);

impl MemoryEtcd {
    /// A commit with the state on its way: counted in flight, and its latency waited out.
    async fn commit_in_flight(&self) -> InFlightGuard {
        let latency = {
            let mut inner = self.lock();
            inner.in_flight += 1;
            inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
            inner.next_latency()
        };
        let guard = InFlightGuard(self.clone());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        guard
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl MemorySink {
    /// The commits `ahead` have not all landed: the state is still the one before them or
    /// one of theirs but the last.
    fn behind(&self, ahead: &[Arc<[u8]>]) -> bool {
        let Some((_, earlier)) = ahead.split_last() else {
            return false;
        };
        let inner = self.etcd.lock();
        inner.mod_revision(&self.state_key) == self.fence
            || inner
                .kvs
                .get(&self.state_key)
                .is_some_and(|kv| earlier.iter().any(|e| **e == *kv.value))
    }
}

impl Sink for MemorySink {
    type Writer = MemoryWriter;
    type Scan<'a> = MemoryScan;

    async fn load_state(&mut self) -> Result<Option<State>, SinkError> {
        let inner = self.etcd.lock();
        let Some(kv) = inner.kvs.get(&self.state_key) else {
            self.fence = 0;
            return Ok(None);
        };
        self.fence = kv.mod_revision;
        serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| SinkError::BadState {
                key: self.state_key.clone(),
                reason: e.to_string(),
            })
    }

    fn state(&self, phase: Phase, position: Option<Position>) -> State {
        State {
            phase,
            position,
            updated_at: "2026-01-01T00:00:00Z".into(),
            agent: self.agent.clone(),
            tables: self.selected.tables.clone(),
            options: self.selected.options.clone(),
            snapshotting: self.selected.snapshotting.clone(),
            format: super::FORMAT,
        }
    }

    fn set_tables(&mut self, selected: super::Selected) {
        self.selected = selected;
    }

    async fn commit(&mut self, ops: Vec<Op>, state: Option<&State>) -> Result<i64, SinkError> {
        let mut writes = writes(ops);
        if let Some(state) = state {
            writes.push((
                self.state_key.clone(),
                Some(state.encode(&self.state_key)?.to_vec()),
            ));
        }
        // Out of flight once it applies, below.
        drop(self.etcd.commit_in_flight().await);
        let revision = self.txn(writes)?;
        if state.is_some() {
            self.fence = revision;
        }
        Ok(revision)
    }

    fn encode_state(&self, state: &State) -> Result<Arc<[u8]>, SinkError> {
        state.encode(&self.state_key)
    }

    fn commit_chained(
        &self,
        ops: Vec<Op>,
        state: Arc<[u8]>,
        ahead: Vec<Arc<[u8]>>,
    ) -> impl std::future::Future<Output = Result<i64, SinkError>> + Send + 'static {
        let sink = self.clone();
        async move {
            let mut writes = writes(ops);
            writes.push((sink.state_key.clone(), Some(state.to_vec())));
            // Out of flight when it lands, or when the engine drops it (a session that ended).
            let _in_flight = sink.etcd.commit_in_flight().await;
            // As etcd would answer a txn sent before its predecessor landed: asked again.
            while sink.behind(&ahead) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sink.txn_after(writes, ahead.last().map(|a| &**a))
        }
    }

    fn chained_landed(&mut self, revision: i64) {
        self.fence = revision;
    }

    fn writer(&self) -> MemoryWriter {
        MemoryWriter { sink: self.clone() }
    }

    fn scan(&self, prefix: &str, with_values: bool) -> MemoryScan {
        MemoryScan {
            etcd: self.etcd.clone(),
            prefix: prefix.to_owned(),
            from: prefix.to_owned(),
            to: None,
            after: None,
            with_values,
            done: false,
            stats: ScanStats::default(),
        }
    }

    fn scan_range(&self, prefix: &str, from: &str, to: Option<&str>) -> MemoryScan {
        MemoryScan {
            from: from.to_owned(),
            to: to.map(str::to_owned),
            ..self.scan(prefix, false)
        }
    }

    async fn count(&self, prefix: &str) -> Result<i64, SinkError> {
        Ok(self.etcd.data(prefix).len() as i64)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(self.etcd.lock().kvs.get(key).map(|kv| kv.value.clone()))
    }

    async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), SinkError> {
        if max_ops > self.etcd.lock().max_txn_ops {
            return Err(SinkError::TooManyOps);
        }
        Ok(())
    }

    async fn lock(&mut self, _ttl: Duration) -> Result<(), SinkError> {
        let mut inner = self.etcd.lock();
        if let Some(kv) = inner.kvs.get(&self.lock_key) {
            if kv.value != self.agent.as_bytes() {
                return Err(SinkError::Locked {
                    key: self.lock_key.clone(),
                    holder: String::from_utf8_lossy(&kv.value).into_owned(),
                });
            }
        }
        inner.apply(vec![(
            self.lock_key.clone(),
            Some(self.agent.clone().into_bytes()),
        )]);
        self.leadership = Some(Leadership {
            key: self.lock_key.clone(),
            revision: inner.create_revision(&self.lock_key),
            lease: 1,
        });
        Ok(())
    }

    async fn campaign(&mut self, ttl: Duration) -> Result<(), SinkError> {
        loop {
            match Sink::lock(self, ttl).await {
                Err(SinkError::Locked { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => return other,
            }
        }
    }

    fn leadership(&self) -> Option<&Leadership> {
        self.leadership.as_ref()
    }

    fn keep_leadership(
        &self,
        _ttl: Duration,
        lost: CancellationToken,
        leading: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let etcd = self.etcd.clone();
        let leadership = self.leadership.clone();
        async move {
            // The lease lives until a test deletes the key (as an expiry would).
            loop {
                let held = leadership
                    .as_ref()
                    .is_some_and(|l| etcd.lock().create_revision(&l.key) == l.revision);
                if !held {
                    lost.cancel();
                    leading.cancel();
                    return;
                }
                tokio::select! {
                    _ = leading.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }

    async fn release(&mut self) {
        if let Some(leadership) = self.leadership.take() {
            let mut inner = self.etcd.lock();
            if inner.create_revision(&leadership.key) == leadership.revision {
                inner.apply(vec![(leadership.key, None)]);
            }
        }
    }
}

/// Fenced txns without the state.
#[derive(Debug, Clone)]
pub struct MemoryWriter {
    sink: MemorySink,
}

impl SinkWriter for MemoryWriter {
    async fn commit(&self, ops: Vec<Op>) -> Result<i64, SinkError> {
        self.sink.txn(writes(ops))
    }
}

/// Pages of [`PAGE`] keys, read as the scan goes (writes in between show, as in etcd).
pub struct MemoryScan {
    etcd: MemoryEtcd,
    prefix: String,
    /// The range read: `[from, to)`, `to` the prefix's end when `None`.
    from: String,
    to: Option<String>,
    after: Option<String>,
    with_values: bool,
    done: bool,
    stats: ScanStats,
}

/// Keys per page: small, so that tests cross pages.
const PAGE: usize = 7;

impl SinkScan for MemoryScan {
    async fn next(&mut self) -> Result<crate::sink::Page, SinkError> {
        if self.done {
            return Ok(Vec::new());
        }
        let inner = self.etcd.lock();
        let page: crate::sink::Page = inner
            .kvs
            .range(self.after.clone().unwrap_or_else(|| self.from.clone())..)
            .filter(|(k, _)| Some(*k) != self.after.as_ref())
            .take_while(|(k, _)| k.starts_with(&self.prefix))
            .take_while(|(k, _)| self.to.as_ref().is_none_or(|to| *k < to))
            .take(PAGE)
            .map(|(k, kv)| {
                (
                    ListedKey {
                        key: k.clone(),
                        mod_revision: kv.mod_revision,
                    },
                    self.with_values.then(|| kv.value.clone()),
                )
            })
            .collect();
        self.stats.requests += 1;
        self.stats.keys_read += page.len() as u64;
        self.stats.keys_counted += page.len() as u64;
        match page.last() {
            Some((last, _)) => self.after = Some(last.key.clone()),
            None => self.done = true,
        }
        Ok(page)
    }

    fn stats(&self) -> ScanStats {
        self.stats
    }
}
