//! `sync status`: the stored state, how far behind the source it is, and keys per table.

use std::collections::BTreeMap;
use std::time::SystemTime;

use etcd_sync_api::{Driver, Position};
use serde::Serialize;

use crate::encode::table_name_prefix;
use crate::engine::{EngineError, Settings};
use crate::etcd::{Connection, Phase, Store};

#[derive(Debug, Serialize)]
pub struct Status {
    pub state_key: String,
    /// `None` before the first run.
    pub phase: Option<Phase>,
    pub position: Option<Position>,
    pub updated_at: Option<String>,
    /// Seconds since the state was last written.
    pub updated_seconds_ago: Option<f64>,
    pub agent: Option<String>,
    /// Bytes of the source's log past the stored position, when the source tells it.
    pub behind_bytes: Option<u64>,
    /// Which agent holds the leadership (with `ha`) or the lock; `None` when none runs.
    pub leader: Option<String>,
    pub keys: BTreeMap<String, i64>,
    /// Each table's status: `snapshotting` (its own snapshot, for a table added or whose
    /// options changed, is under way or was interrupted) or `streaming`.
    pub tables: BTreeMap<String, &'static str>,
    /// Tables whose values are shaped by `tables.options`, with the options set.
    pub options: BTreeMap<String, Vec<&'static str>>,
}

pub async fn status<D: Driver>(
    driver: &D,
    etcd: &Connection,
    settings: &Settings,
) -> Result<Status, EngineError> {
    let mut store = Store::connect(etcd, &settings.state_prefix).await?;
    let state = store.load_state().await?;
    let mut status = Status {
        state_key: store.state_key().to_owned(),
        phase: None,
        position: None,
        updated_at: None,
        updated_seconds_ago: None,
        agent: None,
        behind_bytes: None,
        leader: None,
        keys: BTreeMap::new(),
        tables: BTreeMap::new(),
        options: BTreeMap::new(),
    };
    status.leader = store.holder().await?;
    let Some(state) = state else {
        return Ok(status);
    };
    if let Some(position) = &state.position {
        status.behind_bytes = driver.lag_bytes(position).await?;
    }
    for table in &state.tables {
        let count = store
            .count(&table_name_prefix(&settings.prefix, table))
            .await?;
        status.keys.insert(table.clone(), count);
        let streaming = state.phase == Phase::Sync && !state.snapshotting.contains(table);
        status.tables.insert(
            table.clone(),
            if streaming {
                "streaming"
            } else {
                "snapshotting"
            },
        );
        if let Some(options) = state.options.contains_key(table).then(|| {
            settings
                .options
                .tables
                .get(table)
                .map(|o| {
                    [
                        ("columns", o.columns.is_some()),
                        ("where", o.filter.is_some()),
                        ("value", o.value.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(name, set)| set.then_some(name))
                    .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }) {
            status.options.insert(table.clone(), options);
        }
    }
    status.updated_seconds_ago = humantime::parse_rfc3339(&state.updated_at)
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .map(|age| age.as_secs_f64());
    status.phase = Some(state.phase);
    status.position = state.position;
    status.updated_at = Some(state.updated_at);
    status.agent = Some(state.agent);
    Ok(status)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(phase) = self.phase else {
            return writeln!(
                f,
                "no state at {}: the agent has not run yet",
                self.state_key
            );
        };
        writeln!(
            f,
            "state:    {} ({})",
            self.state_key,
            match (phase, self.leader.is_some()) {
                (Phase::Dump, true) => "dump: a snapshot is being written, etcd is partial",
                (Phase::Dump, false) =>
                    "dump: a snapshot was interrupted, etcd is partial; the next start dumps again",
                (Phase::Sync, true) =>
                    "sync: etcd holds a consistent snapshot and follows the source",
                (Phase::Sync, false) =>
                    "sync: etcd holds a consistent snapshot, as of the position below; no agent \
                     runs, so it does not follow the source",
            }
        )?;
        if let Some(position) = &self.position {
            writeln!(f, "position: {}", position.0)?;
        }
        if let Some(bytes) = self.behind_bytes {
            writeln!(f, "behind:   {bytes} bytes of the source's log")?;
        }
        if let (Some(at), Some(ago)) = (&self.updated_at, self.updated_seconds_ago) {
            writeln!(
                f,
                "written:  {at} ({ago:.1}s ago) by {}",
                self.agent.as_deref().unwrap_or("?")
            )?;
        }
        writeln!(
            f,
            "agent:    {}",
            match &self.leader {
                Some(holder) =>
                    format!("{holder} runs (it holds the lock, or the leadership with ha)"),
                None => "none runs (nobody holds the lock or the leadership)".into(),
            }
        )?;
        for (table, keys) in &self.keys {
            let status = self.tables.get(table).copied().unwrap_or("streaming");
            let options = match self.options.get(table) {
                Some(set) if !set.is_empty() => format!(", options: {}", set.join(", ")),
                _ => String::new(),
            };
            writeln!(f, "table {table}: {keys} keys, {status}{options}")?;
        }
        Ok(())
    }
}
