//! etcd as the engine's sink: the agent's state, fenced transactions, and paged reads. One
//! file per concern: `conn` (endpoints, auth, TLS), `error` (client errors classified once),
//! `leadership` (lock, election, lease renewal), `txn` (fenced writes and the txn size probe),
//! `scan` (linear reads of a prefix), `sink` (the engine's traits); here, the [`Store`] they
//! all extend. It reads no config: the wiring hands it a [`Connection`].
//!
//! Every write carries one compare: the state key's mod revision equals the one this agent last
//! saw or wrote. A second agent that writes the state makes the first one's next txn fail
//! instead of both writing.

use std::sync::Arc;
use std::time::SystemTime;

use crate::metrics::Metrics;

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};
use etcd_sync_api::Position;
use tracing::warn;

mod client_cert;
mod conn;
mod error;
mod leadership;
mod retry;
mod scan;
mod sink;
mod txn;

use conn::MAX_DECODE_BYTES;
pub use conn::{Connection, TlsFiles};
use error::{alert_refusal, client_error};
pub use scan::Scan;
pub use sink::EtcdConnector;
pub use txn::Writer;

// The engine's types, which this module speaks in.
pub use crate::sink::{
    is_too_many_ops, Leadership, ListedKey, Op, Phase, ScanStats, Selected, SinkError, State,
    FORMAT,
};

#[derive(Clone)]
pub struct Store {
    client: Client,
    state_key: String,
    /// The state key's mod revision as this agent last saw or wrote it (0: absent).
    fence: i64,
    agent: String,
    selected: Selected,
    metrics: Option<Arc<Metrics>>,
    leadership: Option<Leadership>,
    /// Whether etcd has answered this session: only then are failed requests retried in
    /// place (`retry`); a first contact that fails is reported at once.
    answered: Arc<std::sync::atomic::AtomicBool>,
}

/// The runtime that drives etcd's connections (gRPC's connection and buffer tasks), on a
/// thread of its own: on the engine's runtime a response waited for a worker busy decoding
/// or building the next group, as tasks there yield only when they run out of work.
pub(super) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, SinkError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("etcd-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SinkError::Client {
            context: "starting the thread for etcd's connections".into(),
            detail: e.clone(),
            transient: true,
            hint: None,
        })
}

impl Store {
    pub async fn connect(connection: &Connection, state_prefix: &str) -> Result<Self, SinkError> {
        let options = connection.options()?;
        let endpoints = connection.endpoints.clone();
        if connection.tls.cert_file.is_none() {
            let https: Vec<String> = endpoints
                .iter()
                .filter(|e| e.starts_with("https://"))
                .cloned()
                .collect();
            let probes = async move {
                let probes = https
                    .iter()
                    .map(|e| client_cert::refusal_without_certificate(e));
                futures_util::future::join_all(probes).await
            };
            let refusals = io_runtime()?.spawn(probes).await.unwrap_or_default();
            if let Some(alert) = refusals.into_iter().flatten().next() {
                return Err(alert_refusal(
                    format!("connecting to {}", endpoints.join(",")),
                    &alert,
                ));
            }
        }
        let connect = {
            let endpoints = endpoints.clone();
            async move {
                let answering = answering_members(&endpoints, &options).await;
                Client::connect(answering, Some(options)).await
            }
        };
        let client = io_runtime()?
            .spawn(connect)
            .await
            .map_err(|e| SinkError::Client {
                context: "connecting to etcd".into(),
                detail: e.to_string(),
                transient: true,
                hint: None,
            })?
            .map_err(|e| client_error(format!("connecting to {}", endpoints.join(",")), e))?;
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
            selected: Selected::default(),
            metrics: None,
            leadership: None,
            answered: Arc::default(),
        })
    }

    pub fn leadership(&self) -> Option<&Leadership> {
        self.leadership.as_ref()
    }

    /// Records every write txn's latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The tables the states written from now on cover.
    pub fn set_tables(&mut self, selected: Selected) {
        self.selected = selected;
    }

    /// A state to write now, by this agent.
    pub fn state(&self, phase: Phase, position: Option<Position>) -> State {
        State {
            phase,
            position,
            updated_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            agent: self.agent.clone(),
            tables: self.selected.tables.clone(),
            options: self.selected.options.clone(),
            snapshotting: self.selected.snapshotting.clone(),
            format: FORMAT,
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
    pub async fn server_version(&self) -> Result<String, SinkError> {
        let status = self
            .client
            .maintenance_client()
            .status()
            .await
            .map_err(|e| client_error("reading the server status", e))?;
        Ok(status.version().to_owned())
    }

    /// Reads the state and takes its revision as the fence for the writes that follow.
    pub async fn load_state(&mut self) -> Result<Option<State>, SinkError> {
        let response = self
            .retrying("reading the state", |_| {
                let mut kv = self.kv();
                let key = self.state_key.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        let Some(kv) = response.kvs().first() else {
            self.fence = 0;
            return Ok(None);
        };
        self.fence = kv.mod_revision();
        let state = serde_json::from_slice(kv.value()).map_err(|e| SinkError::BadState {
            key: self.state_key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(state))
    }

    /// One value, for merging partial rows.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let response = self
            .retrying(&format!("reading {key}"), |_| {
                let mut kv = self.kv();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// How many keys there are under `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<i64, SinkError> {
        let response = self
            .retrying(&format!("counting {prefix}"), |_| {
                let mut kv = self.kv();
                let options = GetOptions::new().with_prefix().with_count_only();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await?;
        Ok(response.count())
    }
}

/// The endpoints whose member answers now (all of them if none does, so that the errors that
/// follow name them). The client balances requests over every endpoint it is given, a dead
/// one included, and never drops one; a member down at start-up is left out of this session
/// (the next session asks again), one that fails later is retried around (`retry`).
async fn answering_members(endpoints: &[String], options: &ConnectOptions) -> Vec<String> {
    if endpoints.len() < 2 {
        return endpoints.to_vec();
    }
    let probes = endpoints.iter().map(|endpoint| async move {
        let probe = async {
            let client = Client::connect([endpoint.as_str()], Some(options.clone())).await?;
            client.maintenance_client().status().await
        };
        match tokio::time::timeout(MEMBER_PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Some(endpoint.clone()),
            Ok(Err(e)) => {
                warn!(%endpoint, "etcd member left out of this session: {e}");
                None
            }
            Err(_) => {
                warn!(%endpoint, "etcd member left out of this session: no answer within {MEMBER_PROBE_TIMEOUT:?}");
                None
            }
        }
    });
    let answering: Vec<String> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    if answering.is_empty() {
        endpoints.to_vec()
    } else {
        answering
    }
}

/// How long a member may take to answer the start-up probe.
const MEMBER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
            options: Default::default(),
            snapshotting: Vec::new(),
            format: FORMAT,
        };
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.starts_with(r#"{"phase":"sync","position":{"lsn":"0/1"},"updated_at":""#));
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.phase, Phase::Sync);
    }
}
