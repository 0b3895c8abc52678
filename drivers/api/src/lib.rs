//! The boundary between etcd-sync's engine and its database drivers.
//!
//! A driver turns a source database into a consistent snapshot ([`Driver::dump`]) followed by a
//! stream of committed transactions ([`Driver::stream`]). It knows nothing of etcd: the engine
//! encodes the [`Value`]s it receives and decides when a [`Position`] is durable.
//!
//! What a consumer of a driver may rely on (the engine is one; `drivers/postgres/examples`
//! holds another, which prints a table's snapshot and changes):
//! - **Continuity**: the position `dump` returns is exactly where its snapshot ends; streaming
//!   from it misses no transaction committed after the snapshot and repeats none before it.
//! - **Order**: `stream` sends transactions in source commit order, each as zero or more
//!   [`StreamEvent::Changes`] (its changes in source order, never interleaved with another
//!   transaction's) followed by one [`StreamEvent::Commit`] whose position resumes after it.
//! - **Acknowledgement**: the consumer sends, on the `acks` watch, the newest position it has
//!   made durable. Only then may the driver let the server discard the log before it. What was
//!   not acknowledged is sent again by the next `stream` from the last acknowledged position:
//!   after a crash, a consumer sees some transactions twice, so applying one must be
//!   idempotent (etcd puts and deletes of whole rows are).
//! - **Positions** are opaque JSON the driver alone parses; store them as they are.
//! - **Values**: a row from the dump and the same row from the stream hold equal [`Value`]s.
//! - **Errors** come classified ([`DriverError`]): retry from the last acknowledged position,
//!   dump again, or stop and tell the operator.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod error;
pub mod filter;
pub mod json;
mod tls;
pub use error::{error_chain, with_hint, BoxError, DriverError, DATABASE_UNREACHABLE};
pub use tls::{tls_failure, Lenient, TlsMode, TlsSettings};

/// One column value as the source delivered it, already in the shape it takes in JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The source did not send this column because it did not change (PostgreSQL's unchanged
    /// TOAST values); the engine takes it from the row already in etcd.
    Unchanged,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Encoded as a JSON number; NaN and the infinities become strings.
    Float(f64),
    /// A JSON number literal the source printed in canonical form (validated by the driver).
    Number(String),
    Text(String),
    /// Encoded as base64.
    Bytes(Vec<u8>),
    /// Compact JSON text, embedded as is.
    Json(String),
    Array(Vec<Value>),
    /// A date or time the source stores but that names no day (MySQL's zero dates such as
    /// `0000-00-00` or `2024-00-10`): `null` in the JSON value, this text in a key, so that a
    /// key column holding one still gives the row a key.
    ZeroDate(String),
}

/// A row: one value per column of its [`TableSchema`], in column order.
pub type Row = Vec<Value>;

/// Bytes a [`StreamEvent::Changes`] may hold before the driver sends it: with the engine's
/// bounded channel, this bounds the memory between the two whatever the row sizes.
pub const CHANGES_EVENT_BYTES: usize = 256 * 1024;

impl Value {
    /// Roughly the bytes this value takes, for batching by size.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Number(s) | Value::Text(s) | Value::Json(s) | Value::ZeroDate(s) => s.len() + 8,
            Value::Bytes(b) => b.len() + 8,
            Value::Array(items) => items.iter().map(Value::approx_size).sum::<usize>() + 8,
            _ => 8,
        }
    }
}

impl Change {
    /// Roughly the bytes this change holds.
    pub fn approx_size(&self) -> usize {
        let row = |r: &[Value]| r.iter().map(Value::approx_size).sum::<usize>();
        match self {
            Change::Insert { row: r, .. } => row(r),
            Change::Update { old, row: r, .. } => row(r) + old.as_deref().map_or(0, row),
            Change::Delete { old, .. } => row(old),
            Change::Truncate { .. } => 8,
        }
    }
}

/// A table's name as the engine uses it in keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// `None` for the connection's default schema (PostgreSQL `public`, MySQL's `database.name`).
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A column as the engine needs it: its JSON field name and, for messages, its source type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
}

/// The shape of a table at one point of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
    /// Indices into `columns` of the primary key, in key order; never empty.
    pub key: Vec<usize>,
}

impl TableSchema {
    pub fn key_column_names(&self) -> Vec<&str> {
        self.key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }
}

/// A point in the source's change stream, opaque to the engine and stored in etcd as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub serde_json::Value);

/// One row-level change inside a source transaction.
#[derive(Debug, Clone)]
pub enum Change {
    Insert {
        table: Arc<TableSchema>,
        row: Row,
    },
    Update {
        table: Arc<TableSchema>,
        /// The old row when the source sent it: a full row image, or its key columns with
        /// every other column [`Value::Unchanged`] (not sent). The engine compares its key with
        /// the new one to catch primary-key changes, and takes from a full image the values
        /// the new row left out.
        old: Option<Row>,
        row: Row,
    },
    /// `old` holds at least the key columns.
    Delete {
        table: Arc<TableSchema>,
        old: Row,
    },
    Truncate {
        tables: Vec<Arc<TableSchema>>,
    },
}

/// What the stream hands the engine, in source commit order.
#[derive(Debug)]
pub enum StreamEvent {
    /// Changes of the transaction in progress; a large transaction arrives as many of these.
    Changes(Vec<Change>),
    /// The transaction in progress committed; `position` is where to resume after it.
    Commit {
        position: Position,
        committed_at: Option<SystemTime>,
    },
}

/// What the dump hands the engine.
#[derive(Debug)]
pub enum DumpEvent {
    TableStarted {
        table: Arc<TableSchema>,
        estimated_rows: Option<u64>,
    },
    Rows {
        table: Arc<TableSchema>,
        rows: Vec<Row>,
    },
    TableDone {
        table: Arc<TableSchema>,
        rows: u64,
    },
}

/// Outcome of one prerequisite check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
}

/// One line of `sync check`: what was checked, what was found, and the fix when it failed.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub status: CheckStatus,
    pub what: String,
    pub detail: String,
}

impl CheckItem {
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(CheckStatus::Ok, what, detail)
    }
    pub fn warn(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(CheckStatus::Warn, what, detail)
    }
    pub fn fail(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(CheckStatus::Fail, what, detail)
    }
    /// The `connection` line of a successful connection.
    pub fn connected(host: &str, port: u16, database: &str, user: &str) -> Self {
        Self::ok(
            "connection",
            format!("connected to {host}:{port} database {database} as {user}"),
        )
    }

    /// The `tls` line: the protocol version the connection negotiated, if any.
    pub fn tls(mode: TlsMode, version: Option<&str>) -> Self {
        match version.filter(|v| !v.is_empty()) {
            Some(version) => Self::ok("tls", format!("{version} (database.tls.mode {mode})")),
            None if mode == TlsMode::Disable => Self::ok("tls", "off (database.tls.mode disable)"),
            None => Self::warn(
                "tls",
                format!(
                    "off: the server offers no TLS (database.tls.mode {mode}); the connection is \
                     not encrypted"
                ),
            ),
        }
    }

    /// The `connection` line of a failed connection.
    pub fn cannot_connect(host: &str, port: u16, user: &str, err: &DriverError) -> Self {
        Self::fail(
            "connection",
            with_hint(
                format!(
                    "cannot connect to {host}:{port} as {user}: {}",
                    error_chain(err)
                ),
                err.config_hint(),
            ),
        )
    }

    fn new(status: CheckStatus, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// A table a driver selected, as the driver knows it: its schema and whatever of its own the
/// driver needs to read it (catalog ids, column types). The engine hands these back to the
/// driver's `dump`, `stream` and `prepare_start`, so that a driver never looks them up again.
pub trait SourceTable: Clone + Send + Sync + 'static {
    fn schema(&self) -> &Arc<TableSchema>;
}

/// A schema alone, for drivers that need nothing more (and for tests).
impl SourceTable for Arc<TableSchema> {
    fn schema(&self) -> &Arc<TableSchema> {
        self
    }
}

/// The tables chosen for sync and the ones passed over.
#[derive(Debug, Clone)]
pub struct Selection<T = Arc<TableSchema>> {
    pub tables: Vec<T>,
    /// Tables left out, with the reason (for `check` and the start-up warning).
    pub skipped: Vec<(TableId, String)>,
}

impl<T> Default for Selection<T> {
    fn default() -> Self {
        Self {
            tables: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

impl<T: SourceTable> Selection<T> {
    /// The selected tables' schemas.
    pub fn schemas(&self) -> Vec<Arc<TableSchema>> {
        self.tables.iter().map(|t| Arc::clone(t.schema())).collect()
    }

    /// `check`'s lines for a selection, or for the error that prevented it.
    pub fn check_items(selection: Result<Selection<T>, DriverError>) -> Vec<CheckItem> {
        let selection = match selection {
            Ok(selection) => selection,
            Err(e) => return vec![CheckItem::fail("tables", error_chain(&e))],
        };
        let mut items: Vec<CheckItem> = selection
            .tables
            .iter()
            .map(|table| {
                let table = table.schema();
                CheckItem::ok(
                    format!("table {}", table.id),
                    format!("primary key ({})", table.key_column_names().join(", ")),
                )
            })
            .collect();
        for (table, reason) in &selection.skipped {
            items.push(CheckItem::warn(
                format!("table {table}"),
                format!("skipped: {reason}"),
            ));
        }
        if selection.tables.is_empty() {
            items.push(CheckItem::fail(
                "tables",
                "no table selected: create one with a primary key or fix tables.include",
            ));
        }
        items
    }
}

/// What of a table's options a driver may leave to the server: the columns the engine needs
/// (the others need never leave the database) and the row filter. The engine applies the
/// options to every row whatever the server did, so a driver may use all of this or none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushdown {
    /// Columns whose values are kept; `None`: all but `exclude`.
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
    /// Columns the engine reads besides those (the filter's).
    pub needed: Vec<String>,
    pub filter: Option<filter::Expr<String>>,
}

impl Pushdown {
    /// Whether the engine needs `column` (key columns always).
    pub fn reads(&self, column: &str, is_key: bool) -> bool {
        let named = |list: &[String]| list.iter().any(|c| c == column);
        is_key
            || named(&self.needed)
            || match &self.include {
                Some(include) => named(include),
                None => !named(&self.exclude),
            }
    }
}

/// Which tables the user asked for: names as written in the config.
#[derive(Debug, Clone, Default)]
pub struct TableFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A source database.
///
/// Futures are `Send` so the engine can run each long-running loop on its own task. The
/// engine calls `dump`, `stream` and `prepare_start` only while it holds the leadership (the
/// lock, or the `ha` election): a driver may take replication resources (a slot) over from
/// whoever else holds them.
pub trait Driver: Send + Sync + 'static {
    /// A selected table as this driver knows it.
    type Table: SourceTable;

    /// Checks connectivity and every server prerequisite; never fails for a failed check.
    fn check(&self) -> impl Future<Output = Vec<CheckItem>> + Send;

    /// Resolves the table filter against the database. A table named in `include` that is
    /// missing or has no primary key is an error; others without a key are skipped.
    fn select_tables(
        &self,
    ) -> impl Future<Output = Result<Selection<Self::Table>, DriverError>> + Send;

    /// Takes a consistent snapshot of `tables`, sends every row, and returns the position the
    /// stream continues from: nothing committed after the snapshot is missed or seen twice.
    fn dump(
        &self,
        tables: &[Self::Table],
        out: mpsc::Sender<DumpEvent>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Position, DriverError>> + Send;

    /// Streams committed transactions after `from` until `cancel` fires or an error occurs.
    /// `acks` carries the newest position the engine has made durable; the driver may then let
    /// the server discard what came before it.
    fn stream(
        &self,
        from: Position,
        tables: &[Self::Table],
        out: mpsc::Sender<StreamEvent>,
        acks: watch::Receiver<Position>,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Checks a configured start position against the server and prepares streaming from it
    /// without a dump (for example the replication slot).
    fn prepare_start(
        &self,
        position: &Position,
        tables: &[Self::Table],
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// How many bytes of its log the source has written past `position`; `None` when it
    /// cannot tell.
    fn lag_bytes(
        &self,
        position: &Position,
    ) -> impl Future<Output = Result<Option<u64>, DriverError>> + Send;

    /// The position as one number for a metrics gauge, when it has one.
    fn position_number(&self, position: &Position) -> Option<u64>;

    /// Reads every row of `tables` in one consistent snapshot without touching replication
    /// state (for `verify`).
    fn read_snapshot(
        &self,
        tables: &[Self::Table],
        out: mpsc::Sender<DumpEvent>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Reads `tables` in one consistent snapshot for tables that join a stream resuming from
    /// an earlier position (a table added to the selection, or whose options changed): after
    /// it, streaming from any position before the snapshot carries every later change of these
    /// tables. Replication state is otherwise untouched.
    fn snapshot_joining(
        &self,
        tables: &[Self::Table],
        out: mpsc::Sender<DumpEvent>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        self.read_snapshot(tables, out)
    }

    /// Waits for the tasks the driver spawned (connection tasks) to end; called once nothing
    /// uses the driver any more, so that a clean stop leaves nothing running.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `"; did you mean X?"` for the candidate closest to a name that matched nothing (at most a
/// third of its letters apart, case ignored), or an empty string.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let name = name.to_lowercase();
    let limit = name.chars().count().div_ceil(3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&name, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("; did you mean {c}?"))
        .unwrap_or_default()
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod did_you_mean_tests {
    use super::did_you_mean;

    #[test]
    fn suggests_the_closest_name() {
        let names = ["users", "orders", "billing.invoices"];
        assert_eq!(did_you_mean("usres", names), "; did you mean users?");
        assert_eq!(
            did_you_mean("billing.invoice", names),
            "; did you mean billing.invoices?"
        );
        assert_eq!(did_you_mean("Orders", names), "; did you mean orders?");
        assert_eq!(did_you_mean("payments", names), "");
    }
}
