//! The etcd-sync engine: decides between dump and sync from the stored state, runs them
//! between a [`Driver`] and a [`sink::Sink`], and retries transient failures from the last
//! committed position. It knows no database (drivers implement `etcd_sync_api::Driver`) and no
//! etcd (the `sync` binary's etcd module implements the sink); [`encode`] is the key/value
//! contract, [`metrics`] what it exports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sync_api::{Driver, DriverError, Position, SourceTable, TableId};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::encode::EncodeError;
use crate::metrics::{KindLabels, Metrics};
use crate::sink::{Connector, Sink};
use crate::sink::{Phase, SinkError};

mod apply;
mod dump;
pub mod encode;
pub mod metrics;
#[cfg(test)]
mod scenarios;
mod selection;
pub mod shape;
pub mod sink;

/// What the engine needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: String,
    pub state_prefix: String,
    pub max_txn_ops: usize,
    pub max_txn_bytes: usize,
    pub dump_txns_in_flight: usize,
    /// Leave rows larger than `max_txn_bytes` out (logged) instead of stopping.
    pub skip_oversized: bool,
    pub metrics: Arc<Metrics>,
    /// Whether the metrics are served: only then is the source asked for its lag in bytes.
    pub metrics_served: bool,
    /// Where to stream from when there is no state, instead of dumping.
    pub start: Option<Position>,
    /// Several agents, one active (elected); without it a second agent is refused.
    pub ha: bool,
    pub lease_ttl: Duration,
    /// Per-table options (columns, filter, raw values) and what to do with removed tables.
    pub options: Arc<shape::Options>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Shape(#[from] shape::ShapeError),
    #[error("{}", .0.join("; "))]
    Options(Vec<String>),
    #[error(
        "table {table}: the row at {key} needs {size} bytes, more than etcd.max_txn_bytes \
         ({limit}); raise it (and etcd's --max-request-bytes), shrink the row, or set \
         etcd.oversized_rows: skip to leave such rows out"
    )]
    RowTooLarge {
        table: TableId,
        key: String,
        size: usize,
        limit: usize,
    },
    #[error(
        "etcd.max_txn_ops is {0} but the server allows fewer operations per txn: lower it to \
         the server's --max-txn-ops (128 by default) or raise that flag"
    )]
    MaxTxnOpsTooHigh(usize),
    #[error(
        "no table to sync: every table was excluded or lacks a primary key (see `sync check`)"
    )]
    NothingSelected,
    #[error(
        "table {0} joins the stream and a change of it needs a row its snapshot has not \
         written yet (a value PostgreSQL sent as unchanged); starting again, to snapshot the \
         table before the stream resumes"
    )]
    JoinNeedsSnapshotFirst(TableId),
    #[error("stopped")]
    Stopped,
}

/// What to do about an error; decided here and nowhere else.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Retry,
    Redump,
    Stop,
}

impl EngineError {
    /// A short label for metrics.
    /// The config fields to check when the failure is that a server cannot be reached.
    pub fn config_hint(&self) -> Option<&'static str> {
        match self {
            EngineError::Driver(e) => e.config_hint(),
            EngineError::Sink(e) => e.config_hint(),
            _ => None,
        }
    }

    /// Every value [`EngineError::kind`] returns, for metrics present from the start.
    pub const KINDS: &'static [&'static str] = &[
        "source",
        "position_lost",
        "resnapshot",
        "misconfigured",
        "protocol",
        "stopped",
        "fenced",
        "locked",
        "lost_leadership",
        "etcd_nospace",
        "etcd",
        "encode",
        "row_too_large",
        "join_restart",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Driver(DriverError::Transient { .. }) => "source",
            EngineError::Driver(DriverError::PositionLost(_)) => "position_lost",
            EngineError::Driver(DriverError::Resnapshot(_)) => "resnapshot",
            EngineError::Driver(DriverError::Misconfigured(_)) => "misconfigured",
            EngineError::Driver(DriverError::Protocol(_)) => "protocol",
            EngineError::Driver(DriverError::Stopped) | EngineError::Stopped => "stopped",
            EngineError::Sink(SinkError::Fenced { .. }) => "fenced",
            EngineError::Sink(SinkError::Locked { .. }) => "locked",
            EngineError::Sink(SinkError::LostLeadership { .. }) => "lost_leadership",
            EngineError::Sink(SinkError::NoSpace { .. }) => "etcd_nospace",
            EngineError::Sink(_) => "etcd",
            EngineError::Encode(_) => "encode",
            EngineError::Shape(_) | EngineError::Options(_) => "misconfigured",
            EngineError::RowTooLarge { .. } => "row_too_large",
            EngineError::JoinNeedsSnapshotFirst(_) => "join_restart",
            EngineError::MaxTxnOpsTooHigh(_) | EngineError::NothingSelected => "misconfigured",
        }
    }

    /// What to do about this error; with `ha`, losing the leadership (or being fenced by a new
    /// leader) sends this agent back to campaigning.
    fn action_in(&self, ha: bool) -> Action {
        match self {
            EngineError::Sink(SinkError::Fenced { .. } | SinkError::LostLeadership { .. })
                if ha =>
            {
                Action::Retry
            }
            _ => self.action(),
        }
    }

    fn action(&self) -> Action {
        match self {
            EngineError::Driver(DriverError::Transient { .. })
            | EngineError::JoinNeedsSnapshotFirst(_) => Action::Retry,
            EngineError::Driver(DriverError::PositionLost(_) | DriverError::Resnapshot(_)) => {
                Action::Redump
            }
            EngineError::Sink(e) if e.is_transient() => Action::Retry,
            _ => Action::Stop,
        }
    }
}

/// How often a failure that keeps coming back is explained again with the fields to check.
const EXPLAIN_EVERY: Duration = Duration::from_secs(300);

/// Capped exponential backoff between retries.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        now
    }
}

/// Runs until `cancel` fires (returns `Ok`) or an error no retry can cure, writing to the
/// sinks `connector` opens (one per session); the driver's tasks have ended when it returns.
pub async fn run<D: Driver, C: Connector>(
    driver: D,
    connector: C,
    settings: Settings,
    cancel: CancellationToken,
) -> Result<(), EngineError> {
    let driver = Arc::new(driver);
    let result = sessions(&driver, &connector, &settings, &cancel).await;
    driver.close().await;
    result
}

/// Sessions one after another, with a backoff between failed ones.
async fn sessions<D: Driver, C: Connector>(
    driver: &Arc<D>,
    connector: &C,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let mut backoff = Backoff::new();
    let mut last_explained = None;
    loop {
        let mut progressed = false;
        let result = session(driver, connector, settings, cancel, &mut progressed).await;
        if cancel.is_cancelled() {
            return match result {
                Err(e)
                    if !matches!(
                        e,
                        EngineError::Stopped | EngineError::Driver(DriverError::Stopped)
                    ) && e.action() == Action::Stop =>
                {
                    Err(e)
                }
                _ => Ok(()),
            };
        }
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let kind = KindLabels { kind: err.kind() };
        if err.action_in(settings.ha) != Action::Retry {
            settings.metrics.errors.get_or_create(&kind).inc();
            return Err(err);
        }
        settings.metrics.retries.get_or_create(&kind).inc();
        if progressed {
            backoff.reset();
        }
        let wait = backoff.step();
        let line = etcd_sync_api::error_chain(&err);
        let hint = err.config_hint();
        // The fields to check go with the first failure and every few minutes after; /readyz
        // says it all the while.
        let explain = hint.is_some()
            && last_explained.is_none_or(|at: Instant| at.elapsed() >= EXPLAIN_EVERY);
        match hint {
            Some(hint) if explain => {
                warn!(retry_in = ?wait, "{line}; {hint} (retrying until it works)");
                last_explained = Some(Instant::now());
            }
            _ => warn!(retry_in = ?wait, "{line}"),
        }
        settings
            .metrics
            .set_failing(Some(etcd_sync_api::with_hint(line, hint)));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One connection's worth of work, as the one agent allowed to write: take the lock (or win
/// the election), then lead until done, cancelled, or the lease is lost.
async fn session<D: Driver, C: Connector>(
    driver: &Arc<D>,
    connector: &C,
    settings: &Settings,
    cancel: &CancellationToken,
    progressed: &mut bool,
) -> Result<(), EngineError> {
    let mut store = connector.connect().await?;
    // Everything that can refuse the config or the server comes before the lock: a refused
    // start leaves nothing in etcd.
    if let Err(e) = store.probe_max_txn_ops(settings.max_txn_ops).await {
        if crate::sink::is_too_many_ops(&e) {
            return Err(EngineError::MaxTxnOpsTooHigh(settings.max_txn_ops));
        }
        return Err(e.into());
    }
    let selection = driver.select_tables().await?;
    for (table, reason) in &selection.skipped {
        warn!(%table, "table skipped: {reason}");
    }
    if selection.tables.is_empty() {
        return Err(EngineError::NothingSelected);
    }
    let tables: Vec<D::Table> = selection.tables;
    settings
        .metrics
        .declare_tables(tables.iter().map(|t| t.schema().id.to_string()));
    if settings.ha {
        info!("standby: campaigning for the leadership");
        tokio::select! {
            _ = cancel.cancelled() => return Err(EngineError::Stopped),
            elected = store.campaign(settings.lease_ttl) => elected?,
        }
        info!("elected leader");
    } else {
        store.lock(settings.lease_ttl).await?;
    }
    let Some(leadership) = store.leadership().cloned() else {
        return Err(EngineError::Stopped);
    };
    let lost = CancellationToken::new();
    let leading = cancel.child_token();
    let keeper =
        tokio::spawn(store.keep_leadership(settings.lease_ttl, lost.clone(), leading.clone()));
    settings.metrics.leader.set(1);
    let result = lead(driver, &mut store, &tables, settings, &leading, progressed).await;
    settings.metrics.leader.set(0);
    keeper.abort();
    store.release().await;
    if lost.is_cancelled() && !cancel.is_cancelled() {
        return Err(SinkError::LostLeadership {
            key: leadership.key,
        }
        .into());
    }
    result
}

/// Reads the state, dumps if needed, then follows the stream.
async fn lead<D: Driver, S: Sink>(
    driver: &Arc<D>,
    store: &mut S,
    tables: &[D::Table],
    settings: &Settings,
    cancel: &CancellationToken,
    progressed: &mut bool,
) -> Result<(), EngineError> {
    let state = store.load_state().await?;
    let selected = selection::selection_record(tables, settings)?;
    store.set_tables(selected.clone());

    let had_state = state.is_some();
    let mut joining = None;
    let mut position = match state {
        Some(state) if state.phase == Phase::Sync && state.format < crate::sink::FORMAT => {
            warn!(
                stored = state.format,
                current = crate::sink::FORMAT,
                "the key/value format changed since the last dump (see the README's contract); \
                 dumping again, which also deletes keys of the old form"
            );
            selection::delete_removed(store, &state.selected(), &selected, settings).await?;
            dump::dump(driver, store, tables, settings, cancel).await?
        }
        Some(state) if state.phase == Phase::Sync => match state.position.clone() {
            Some(position) => {
                let changes = selection::SelectionChanges::between(&state.selected(), &selected);
                if !changes.is_empty() {
                    joining = selection::apply_selection_changes(
                        driver, store, tables, &changes, &position, settings, cancel,
                    )
                    .await?;
                }
                info!(position = %position.0, "resuming the stream from the stored position");
                position
            }
            None => dump::dump(driver, store, tables, settings, cancel).await?,
        },
        Some(state) => {
            info!("the previous dump did not finish; dumping again");
            selection::delete_removed(store, &state.selected(), &selected, settings).await?;
            dump::dump(driver, store, tables, settings, cancel).await?
        }
        None => match &settings.start {
            Some(start) => {
                info!(position = %start.0, "no state yet; streaming from the configured start position, without a dump");
                driver.prepare_start(start, tables).await?;
                let state = store.state(Phase::Sync, Some(start.clone()));
                store.commit(vec![], Some(&state)).await?;
                start.clone()
            }
            None => {
                info!("no state yet; starting with a dump");
                dump::dump(driver, store, tables, settings, cancel).await?
            }
        },
    };
    if had_state && settings.start.is_some() {
        info!("a state exists: the configured start position is ignored (the stored position keeps the sync incremental)");
    }
    *progressed = true;
    loop {
        let start = apply::Start {
            position,
            joining: joining.take(),
        };
        let result = apply::sync(driver, store, tables, start, settings, cancel, progressed).await;
        match result {
            Err(e) if e.action() == Action::Redump => {
                error!(
                    "{}; etcd can no longer be brought up to date from the stream: dumping again \
                     (keys of rows that disappeared meanwhile are deleted afterwards)",
                    etcd_sync_api::error_chain(&e)
                );
                position = dump::dump(driver, store, tables, settings, cancel).await?;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert_eq!(steps[0], Duration::from_millis(200));
        assert_eq!(steps[1], Duration::from_millis(400));
        assert_eq!(*steps.last().unwrap(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(200));
    }

    #[test]
    fn errors_are_classified_once() {
        let transient = EngineError::Driver(DriverError::transient("x", "y"));
        assert_eq!(transient.action(), Action::Retry);
        let lost = EngineError::Driver(DriverError::PositionLost("slot gone".into()));
        assert_eq!(lost.action(), Action::Redump);
        let bad = EngineError::Driver(DriverError::Misconfigured("wal_level".into()));
        assert_eq!(bad.action(), Action::Stop);
        assert_eq!(EngineError::NothingSelected.action(), Action::Stop);
    }
}
