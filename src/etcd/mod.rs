//! The etcd side: the agent's state, fenced transactions, and paged reads.
//!
//! Every write carries one compare: the state key's mod revision equals the one this agent last
//! saw or wrote. A second agent that writes the state makes the first one's next txn fail
//! instead of both writing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{EtcdTls, Secret};
use crate::metrics::Metrics;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use etcd_sync_api::Position;
use serde::{Deserialize, Serialize};

mod scan;
pub use scan::{Scan, ScanStats};

/// Decode limit for reads: values may be up to etcd's request limit, and pages hold many.
const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client's own error, described in one line (tonic's status text holds a debug dump).
    #[error("etcd: {context}: {}", describe(.cause))]
    Client {
        context: String,
        cause: etcd_client::Error,
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
    #[error(
        "another agent ({holder}) is syncing this state prefix (it holds {key}): stop it, or set \
         ha.enabled: true to run several agents with one of them active"
    )]
    Locked { key: String, holder: String },
    #[error(
        "etcd: {context}: the database is out of space (NOSPACE alarm): nothing is applied or \
         acknowledged until writes succeed again. Free it: compact old revisions (etcdctl compact \
         <revision>, or run etcd with --auto-compaction-retention), defragment (etcdctl defrag), \
         raise --quota-backend-bytes if the data needs it, then etcdctl alarm disarm"
    )]
    NoSpace { context: String },
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// etcd refused who we are or what we asked: no retry cures it.
    #[error("etcd: {context}: {reason}")]
    Refused { context: String, reason: String },
    #[error("lost the leadership: the lease on {key} expired (etcd unreachable for longer than ha.lease_ttl?)")]
    LostLeadership { key: String },
}

/// What to check when etcd cannot be reached.
pub const ETCD_UNREACHABLE: &str = "is etcd running and reachable from here? check etcd.endpoints \
     (and etcd.tls for https endpoints)";

/// A client error in one line: a gRPC status's message and the root cause under it
/// (`tcp connect error: Connection refused (os error 111)`), not tonic's debug form.
fn describe(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return etcd_sync_api::error_chain(error);
    };
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    let mut root = None;
    while let Some(cause) = source {
        root = Some(cause.to_string());
        source = cause.source();
    }
    if let Some(root) = root.filter(|r| !text.contains(r.as_str())) {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&root);
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    text
}

impl EtcdError {
    fn client(context: impl Into<String>, source: etcd_client::Error) -> Self {
        let context: String = context.into();
        let text = source.to_string();
        if text.contains("database space exceeded") {
            return Self::NoSpace { context };
        }
        let refused = |reason: String| Self::Refused {
            context: context.clone(),
            reason,
        };
        if text.contains("permission denied") {
            return refused(
                "permission denied: give the etcd user's role readwrite on etcd.prefix and \
                 etcd.state_prefix (see the README's etcd role)"
                    .into(),
            );
        }
        if text.contains("authentication failed") || text.contains("user name is empty") {
            return refused(format!("{text}: check etcd.user and etcd.password"));
        }
        // tonic folds the TLS error into a status message, out of reach of downcasts.
        let tls_reason = etcd_sync_api::tls_failure(&source).or_else(|| {
            text.split_once("invalid peer certificate: ")
                .map(|(_, rest)| rest.split(['"', ',']).next().unwrap_or(rest).to_owned())
        });
        if let Some(reason) = tls_reason {
            return refused(format!(
                "TLS: etcd's certificate was refused ({reason}); check etcd.tls.ca_file and \
                 etcd.tls.server_name"
            ));
        }
        if text.contains("received fatal alert") {
            return refused(format!(
                "TLS: etcd refused the connection ({text}); check etcd.tls.cert_file and \
                 etcd.tls.key_file (etcd's --client-cert-auth needs a client certificate)"
            ));
        }
        Self::Client {
            context,
            cause: source,
        }
    }

    /// For a failure that retrying may never cure (etcd is not where the config says), the
    /// config fields to check.
    pub fn config_hint(&self) -> Option<&'static str> {
        let EtcdError::Client { cause, .. } = self else {
            return None;
        };
        let unreachable = match cause {
            etcd_client::Error::GRpcStatus(status) => {
                status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::DeadlineExceeded
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            _ => false,
        };
        unreachable.then_some(ETCD_UNREACHABLE)
    }

    /// Whether a retry may cure it: unavailable, timeouts, leader changes, a full backend.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            EtcdError::Client { cause, .. } => match cause {
                etcd_client::Error::GRpcStatus(status) => {
                    matches!(
                        status.code(),
                        Code::Unavailable
                            // A lease gone between grant and use (etcd restarted, a slow retry).
                            | Code::NotFound
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
            // Retried until an operator frees space; each retry says how.
            EtcdError::LostLeadership { .. } | EtcdError::NoSpace { .. } => true,
            EtcdError::Fenced { .. }
            | EtcdError::BadState { .. }
            | EtcdError::Locked { .. }
            | EtcdError::Refused { .. }
            | EtcdError::TooManyOps => false,
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

impl std::fmt::Display for Phase {
    /// As the state stores it: `dump`, `sync`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Dump => "dump",
            Phase::Sync => "sync",
        })
    }
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

/// This agent's right to write: a key it holds under a lease. Every write txn compares the
/// key's create revision, so once the lease is gone no write of this agent can land, not even
/// one already in flight.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub revision: i64,
    pub lease: i64,
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
    leadership: Option<Leadership>,
}

/// Where etcd is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls: EtcdTls,
}

impl Connection {
    /// Plain `http://` endpoints without auth.
    pub fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            user: None,
            password: None,
            tls: EtcdTls::default(),
        }
    }

    fn options(&self) -> Result<ConnectOptions, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            // Tokens expire (etcd's --auth-token-ttl); the client gets a new one when needed.
            options = options
                .with_user(user.clone(), password.expose().to_owned())
                .with_auto_token_refresh(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(self.tls_options()?);
        }
        Ok(options)
    }

    fn tls_options(&self) -> Result<TlsOptions, EtcdError> {
        let read = |field: &str, path: &str| {
            std::fs::read(path).map_err(|e| EtcdError::Refused {
                context: format!("etcd.tls.{field}"),
                reason: format!("cannot read {path}: {e}"),
            })
        };
        let mut tls = TlsOptions::new();
        tls = match &self.tls.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("ca_file", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        if let Some(name) = &self.tls.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

impl Store {
    pub async fn connect(connection: &Connection, state_prefix: &str) -> Result<Self, EtcdError> {
        let endpoints = &connection.endpoints;
        let client = Client::connect(endpoints, Some(connection.options()?))
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
            leadership: None,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn leadership(&self) -> Option<&Leadership> {
        self.leadership.as_ref()
    }

    fn lock_key(&self) -> String {
        format!("{}lock", self.state_key.trim_end_matches("state"))
    }

    fn election_name(&self) -> String {
        format!("{}election", self.state_key.trim_end_matches("state"))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let response = self
            .client
            .lease_client()
            .grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| EtcdError::client("granting a lease", e))?;
        Ok(response.id())
    }

    /// Takes `<state_prefix>/lock` for this agent. A holder that crashed on this host is
    /// replaced at once; any other holder's lease is given `ttl` to expire before refusing.
    pub async fn lock(&mut self, ttl: Duration) -> Result<(), EtcdError> {
        let key = self.lock_key();
        let deadline = std::time::Instant::now() + ttl + Duration::from_secs(2);
        loop {
            // A lease per attempt: one granted before a wait would expire during it.
            let lease = self.grant_lease(ttl).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    self.agent.as_str(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self
                .kv()
                .txn(txn)
                .await
                .map_err(|e| EtcdError::client("taking the lock", e))?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                self.leadership = Some(Leadership {
                    key,
                    revision,
                    lease,
                });
                return Ok(());
            }
            let holder = response
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.mod_revision(),
                        )
                    }),
                    _ => None,
                })
                .unwrap_or_default();
            let _ = self.client.lease_client().revoke(lease).await;
            // Our own earlier session (its release failed while etcd was away), or an agent
            // that crashed on this host: nobody is renewing that lease.
            if holder.0 == self.agent || self.holder_is_dead_here(&holder.0) {
                // Crashed on this machine (kill -9): its lease has not expired yet, but no
                // process can be renewing it.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        holder.1,
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                self.kv()
                    .txn(txn)
                    .await
                    .map_err(|e| EtcdError::client("clearing a dead agent's lock", e))?;
                continue;
            }
            if std::time::Instant::now() > deadline {
                return Err(EtcdError::Locked {
                    key,
                    holder: holder.0,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether `holder` (`host:pid`) names a process of this host that no longer exists.
    fn holder_is_dead_here(&self, holder: &str) -> bool {
        let ours = self.agent.rsplit_once(':').map(|(host, _)| host);
        match holder.rsplit_once(':') {
            Some((host, pid)) if Some(host) == ours => pid
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
            _ => false,
        }
    }

    /// With `ha`: waits to be elected leader under `<state_prefix>/election`.
    pub async fn campaign(&mut self, ttl: Duration) -> Result<(), EtcdError> {
        let name = self.election_name();
        let lease = self.grant_lease(ttl).await?;
        // The lease must live while we wait to be elected.
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(|e| EtcdError::client("keeping the lease alive", e))?;
        let mut election = self.client.election_client();
        let campaign = election.campaign(name.as_str(), self.agent.as_str(), lease);
        tokio::pin!(campaign);
        let mut tick = tokio::time::interval(ttl / 3);
        let response = loop {
            tokio::select! {
                response = &mut campaign => break response.map_err(|e| EtcdError::client("campaigning", e))?,
                _ = tick.tick() => {
                    keeper.keep_alive().await.map_err(|e| EtcdError::client("keeping the lease alive", e))?;
                    let _ = responses.message().await;
                }
            }
        };
        let leader = response
            .leader()
            .ok_or_else(|| EtcdError::LostLeadership { key: name.clone() })?;
        self.leadership = Some(Leadership {
            key: String::from_utf8_lossy(leader.key()).into_owned(),
            revision: leader.rev(),
            lease,
        });
        Ok(())
    }

    /// Who holds the leadership or the lock, for `status`.
    pub async fn holder(&self) -> Result<Option<String>, EtcdError> {
        let mut election = self.client.election_client();
        if let Ok(response) = election.leader(self.election_name()).await {
            if let Some(kv) = response.kv() {
                return Ok(Some(String::from_utf8_lossy(kv.value()).into_owned()));
            }
        }
        let response = self
            .kv()
            .get(self.lock_key(), None)
            .await
            .map_err(|e| EtcdError::client("reading the lock", e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Gives the leadership up (the lease and the key under it go), so a standby takes over
    /// at once. Best effort: an unreachable etcd lets the lease expire instead.
    pub async fn release(&mut self) {
        if let Some(leadership) = self.leadership.take() {
            let _ = self.client.lease_client().revoke(leadership.lease).await;
        }
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
        if found == self.fence {
            // The state is ours: it was the leadership key that is gone.
            return Err(EtcdError::LostLeadership {
                key: self
                    .leadership
                    .as_ref()
                    .map(|l| l.key.clone())
                    .unwrap_or_default(),
            });
        }
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

    /// Checks that a txn of `max_ops` operations is accepted (etcd's `--max-txn-ops`), with
    /// reads only.
    pub async fn probe_max_txn_ops(&self, max_ops: usize) -> Result<(), EtcdError> {
        // Reads of the state key: small, and inside what the agent's etcd role may read.
        let ops: Vec<TxnOp> = (0..max_ops)
            .map(|_| TxnOp::get(self.state_key.as_str(), None))
            .collect();
        match self.kv().txn(Txn::new().and_then(ops)).await {
            Ok(_) => Ok(()),
            // So many reads that the request outgrows gRPC's size limit: far above any server's
            // --max-txn-ops as well.
            Err(e) if e.to_string().contains("larger than max") => Err(EtcdError::TooManyOps),
            Err(e) => Err(EtcdError::client("probing the txn size limit", e)),
        }
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
    matches!(err, EtcdError::TooManyOps)
        || err
            .to_string()
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
