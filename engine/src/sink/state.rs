//! The agent's state as stored under `<state_prefix>/state`.

use std::collections::BTreeMap;

use etcd_sync_api::Position;
use serde::{Deserialize, Serialize};

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
    /// Tables with options, and the options' fingerprints: a table whose options changed is
    /// written again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Tables whose own snapshot (a table added, or its options changed) has not finished: a
    /// restart takes it again, and only it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshotting: Vec<String>,
    /// The key/value format the snapshot was written in ([`FORMAT`]); an older one at start-up
    /// means a new dump, so that no key of the old form lingers beside its new form.
    #[serde(default)]
    pub format: u32,
}

/// The key/value format this agent writes. 0: before it was recorded. 1: byte and NaN key
/// segments without JSON quotes, MySQL zero dates in keys, dates and timestamps outside years
/// 0-9999 in ISO 8601 expanded form, MariaDB JSON numbers as written.
pub const FORMAT: u32 = 1;

/// What a state records of the selection: set on the sink, stamped on every state it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    pub tables: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub snapshotting: Vec<String>,
}

impl State {
    /// The state as sinks store it (JSON); `key`: where, for the error.
    pub fn encode(&self, key: &str) -> Result<std::sync::Arc<[u8]>, super::SinkError> {
        serde_json::to_vec(self)
            .map(std::sync::Arc::from)
            .map_err(|e| super::SinkError::BadState {
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// The selection this state records.
    pub fn selected(&self) -> Selected {
        Selected {
            tables: self.tables.clone(),
            options: self.options.clone(),
            snapshotting: self.snapshotting.clone(),
        }
    }
}
