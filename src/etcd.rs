//! The etcd side: the agent's state, fenced transactions, and paged reads.
//!
//! Every write carries one compare: the state key's mod revision equals the one this agent last
//! saw or wrote. A second agent that writes the state makes the first one's next txn fail
//! instead of both writing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::Metrics;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};
use etcd_sync_api::Position;
use serde::{Deserialize, Serialize};

/// Decode limit for reads: values may be up to etcd's request limit, and pages hold many.
const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;
/// Keys per page when listing.
const PAGE_KEYS: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {context}: {source}")]
    Client {
        context: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "the state at {key} was changed by someone else (mod revision {found}, expected {expected}): \
         another agent is syncing the same state prefix; this one stops so that only one writes"
    )]
    Fenced {
        key: String,
        expected: i64,
        found: i64,
    },
    #[error("the state at {key} is not valid: {reason}; delete it to start over with a full dump")]
    BadState { key: String, reason: String },
}

impl EtcdError {
    fn client(context: impl Into<String>, source: etcd_client::Error) -> Self {
        Self::Client {
            context: context.into(),
            source,
        }
    }

    /// Whether a retry may cure it: unavailable, timeouts, leader changes, a full backend.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            EtcdError::Client { source, .. } => match source {
                etcd_client::Error::GRpcStatus(status) => {
                    matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Aborted
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                    ) || status.message().contains("database space exceeded")
                }
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                _ => false,
            },
            EtcdError::Fenced { .. } | EtcdError::BadState { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A dump is under way: etcd holds a partial snapshot.
    Dump,
    /// etcd holds a complete, consistent snapshot and follows the stream from `position`.
    Sync,
}

/// What the agent keeps under the state prefix (`<state_prefix>/state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    /// Where the stream resumes; set in phase `sync`.
    pub position: Option<Position>,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The process that wrote it (`host:pid`).
    pub agent: String,
    /// The tables the snapshot covers; a different selection at start-up means a new dump.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// A write the engine hands to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Bytes it adds to a request: key, value and a little protobuf framing.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
        }
    }

    fn into_txn_op(self) -> TxnOp {
        match self {
            Op::Put { key, value } => TxnOp::put(key, value, None),
            Op::Delete { key } => TxnOp::delete(key, None),
        }
    }
}

/// A listed key with the revision of its last write.
#[derive(Debug, Clone)]
pub struct ListedKey {
    pub key: String,
    pub mod_revision: i64,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    state_key: String,
    /// The state key's mod revision as this agent last saw or wrote it (0: absent).
    fence: i64,
    agent: String,
    tables: Vec<String>,
    metrics: Option<Arc<Metrics>>,
}

impl Store {
    pub async fn connect(endpoints: &[String], state_prefix: &str) -> Result<Self, EtcdError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| EtcdError::client(format!("connecting to {}", endpoints.join(",")), e))?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|| "localhost".into());
        Ok(Self {
            client,
            state_key: format!("{state_prefix}/state"),
            fence: 0,
            agent: format!("{host}:{}", std::process::id()),
            tables: Vec::new(),
            metrics: None,
        })
    }

    /// Records every write txn's latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The tables the states written from now on cover.
    pub fn set_tables(&mut self, tables: Vec<String>) {
        self.tables = tables;
    }

    /// A state to write now, by this agent.
    pub fn state(&self, phase: Phase, position: Option<Position>) -> State {
        State {
            phase,
            position,
            updated_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            agent: self.agent.clone(),
            tables: self.tables.clone(),
        }
    }

    pub fn state_key(&self) -> &str {
        &self.state_key
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The server's version, for `check`.
    pub async fn server_version(&self) -> Result<String, EtcdError> {
        let status = self
            .client
            .maintenance_client()
            .status()
            .await
            .map_err(|e| EtcdError::client("reading the server status", e))?;
        Ok(status.version().to_owned())
    }

    /// Reads the state and takes its revision as the fence for the writes that follow.
    pub async fn load_state(&mut self) -> Result<Option<State>, EtcdError> {
        let response = self
            .kv()
            .get(self.state_key.as_str(), None)
            .await
            .map_err(|e| EtcdError::client("reading the state", e))?;
        let Some(kv) = response.kvs().first() else {
            self.fence = 0;
            return Ok(None);
        };
        self.fence = kv.mod_revision();
        let state = serde_json::from_slice(kv.value()).map_err(|e| EtcdError::BadState {
            key: self.state_key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(state))
    }

    /// Applies `ops` in one fenced txn, with the state put when given; returns the txn's
    /// revision. Keys in `ops` must be distinct (etcd refuses two operations on one key).
    pub async fn commit(&mut self, ops: Vec<Op>, state: Option<&State>) -> Result<i64, EtcdError> {
        let mut txn_ops: Vec<TxnOp> = ops.into_iter().map(Op::into_txn_op).collect();
        if let Some(state) = state {
            let value = serde_json::to_string(state).map_err(|e| EtcdError::BadState {
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

    async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<i64, EtcdError> {
        let count = ops.len();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.state_key.as_str(),
                CompareOp::Equal,
                self.fence,
            )])
            .and_then(ops)
            .or_else([TxnOp::get(self.state_key.as_str(), None)]);
        let started = Instant::now();
        let response = self
            .kv()
            .txn(txn)
            .await
            .map_err(|e| EtcdError::client(format!("txn of {count} operations"), e))?;
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
        Err(EtcdError::Fenced {
            key: self.state_key.clone(),
            expected: self.fence,
            found,
        })
    }

    /// One value, for merging partial rows.
    pub async fn get(&self, key: &str) -> Result<Option<String>, EtcdError> {
        let response = self
            .kv()
            .get(key, None)
            .await
            .map_err(|e| EtcdError::client(format!("reading {key}"), e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// How many keys there are under `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<i64, EtcdError> {
        let response = self
            .kv()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|e| EtcdError::client(format!("counting {prefix}"), e))?;
        Ok(response.count())
    }

    /// Pages through the keys under `prefix`; with values when `with_values`.
    pub fn pager(&self, prefix: &str, with_values: bool) -> Pager<'_> {
        Pager {
            store: self,
            prefix: prefix.to_owned(),
            after: None,
            with_values,
            done: false,
        }
    }

    /// A page of keys under `prefix` after `after` (exclusive), in key order.
    async fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        with_values: bool,
        limit: i64,
    ) -> Result<Vec<(ListedKey, Option<String>)>, EtcdError> {
        let end = prefix_end(prefix);
        let start = match after {
            Some(key) => format!("{key}\0"),
            None => prefix.to_owned(),
        };
        let mut options = GetOptions::new().with_range(end).with_limit(limit);
        if !with_values {
            options = options.with_keys_only();
        }
        let response = self
            .kv()
            .get(start, Some(options))
            .await
            .map_err(|e| EtcdError::client(format!("listing {prefix}"), e))?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    ListedKey {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        mod_revision: kv.mod_revision(),
                    },
                    with_values.then(|| String::from_utf8_lossy(kv.value()).into_owned()),
                )
            })
            .collect())
    }

    /// Checks that a txn of `max_ops` operations is accepted (etcd's `--max-txn-ops`), with
    /// reads only.
    pub async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), EtcdError> {
        // A one-byte key keeps the probe far below the request size limit.
        let ops: Vec<TxnOp> = (0..max_ops).map(|_| TxnOp::get("/", None)).collect();
        self.kv()
            .txn(Txn::new().and_then(ops))
            .await
            .map(|_| ())
            .map_err(|e| EtcdError::client("probing the txn size limit", e))
    }
}

/// Walks the keys under a prefix page by page, in key order.
pub struct Pager<'a> {
    store: &'a Store,
    prefix: String,
    after: Option<String>,
    with_values: bool,
    done: bool,
}

impl Pager<'_> {
    /// The next page, empty at the end.
    pub async fn next(&mut self) -> Result<Vec<(ListedKey, Option<String>)>, EtcdError> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = self
            .store
            .page(
                &self.prefix,
                self.after.as_deref(),
                self.with_values,
                PAGE_KEYS,
            )
            .await?;
        match page.last() {
            Some((last, _)) => self.after = Some(last.key.clone()),
            None => self.done = true,
        }
        Ok(page)
    }
}

/// Writes fenced txns without touching the state; cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct Writer {
    store: Store,
}

impl Writer {
    pub async fn commit(&self, ops: Vec<Op>) -> Result<i64, EtcdError> {
        self.store
            .fenced_txn(ops.into_iter().map(Op::into_txn_op).collect())
            .await
    }
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether an etcd error says a txn has more operations than the server allows.
pub fn is_too_many_ops(err: &EtcdError) -> bool {
    err.to_string()
        .contains("too many operations in txn request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn state_round_trips() {
        let state = State {
            phase: Phase::Sync,
            position: Some(Position(serde_json::json!({"lsn": "0/1"}))),
            updated_at: "2026-01-01T00:00:00Z".into(),
            agent: "h:1".into(),
            tables: vec!["t".into()],
        };
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.starts_with(r#"{"phase":"sync","position":{"lsn":"0/1"},"updated_at":""#));
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.phase, Phase::Sync);
    }
}
