//! The snapshot: mysqldump run in one consistent transaction with its binary-log
//! coordinates, its output parsed as it streams and sent to the engine table by table.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;

use etcd_sync_api::{DriverError, DumpEvent, Row, TableSchema};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dump_parser::{DumpLine, DumpParser};
use crate::error::my_error;
use crate::schema::MyTable;
use crate::{mysql_version_at_least, tls, BinlogPosition, MysqlDriver, MAX_PACKET};

/// Rows per batch handed to the engine during the dump.
const DUMP_BATCH_ROWS: usize = 512;

/// Where mysqldump said its snapshot was taken (`--master-data=2`, `--gtid`).
#[derive(Default)]
struct Coordinates {
    file_pos: Option<(String, u64)>,
    gtid: Option<String>,
}

impl MysqlDriver {
    /// Runs mysqldump over `tables` and sends their rows; with `coordinates`, returns the
    /// binary-log position its snapshot was taken at.
    pub(crate) async fn run_mysqldump(
        &self,
        conn: &mut Conn,
        tables: &[MyTable],
        coordinates: bool,
        out: &mpsc::Sender<DumpEvent>,
        cancel: &CancellationToken,
    ) -> Result<Option<BinlogPosition>, DriverError> {
        let args = self.mysqldump_args(conn, tables, coordinates).await?;
        let (mut child, stdout, stderr) = self.spawn_mysqldump(&args)?;
        let read = read_dump(stdout, &self.config.database, tables, out, cancel).await?;
        let status = child
            .wait()
            .await
            .map_err(|e| DriverError::transient("waiting for mysqldump", e))?;
        let stderr = stderr.await.unwrap_or_default();
        if !status.success() {
            let message = format!("mysqldump failed ({status}): {}", stderr.trim());
            return Err(
                if stderr.contains("Access denied") || stderr.contains("privilege") {
                    DriverError::Misconfigured(message)
                } else {
                    DriverError::transient("running mysqldump", message)
                },
            );
        }
        if !coordinates {
            return Ok(None);
        }
        let (file, pos) = read.file_pos.ok_or_else(|| {
            DriverError::Protocol(format!(
                "mysqldump printed no binary-log coordinates (is log_bin on?): {}",
                stderr.trim()
            ))
        })?;
        Ok(Some(BinlogPosition {
            file,
            pos,
            gtid: read.gtid,
        }))
    }

    /// mysqldump's arguments: one transaction, rows only, UTC, blobs as hex, every table of
    /// the selected tables' databases left out unless selected.
    async fn mysqldump_args(
        &self,
        conn: &mut Conn,
        tables: &[MyTable],
        coordinates: bool,
    ) -> Result<Vec<String>, DriverError> {
        let c = &self.config;
        let version = self.mysqldump_version().await?;
        let mut dbs: Vec<String> = tables.iter().map(|t| t.database.clone()).collect();
        dbs.sort();
        dbs.dedup();
        let params: Vec<mysql_async::Value> = dbs.iter().map(|d| d.as_str().into()).collect();
        let all: Vec<(String, String)> = conn
            .exec(
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({})",
                    vec!["?"; dbs.len()].join(", ")
                ),
                params,
            )
            .await
            .map_err(|e| my_error("listing tables", e))?;
        let mut args: Vec<String> = vec![
            format!("--host={}", c.host),
            format!("--port={}", c.port),
            format!("--user={}", c.user),
            "--protocol=TCP".into(),
            "--single-transaction".into(),
            "--quick".into(),
            "--hex-blob".into(),
            // mysqldump's default (24 MiB) fails on rows past it; a hex blob doubles a row.
            format!("--max-allowed-packet={MAX_PACKET}"),
            "--tz-utc".into(),
            "--complete-insert".into(),
            "--default-character-set=utf8mb4".into(),
            "--no-create-info".into(),
            "--skip-triggers".into(),
            "--skip-add-locks".into(),
            "--skip-disable-keys".into(),
            "--skip-comments".into(),
            "--no-tablespaces".into(),
        ];
        if coordinates {
            if version.contains("MariaDB") {
                args.push("--master-data=2".into());
                args.push("--gtid".into());
            } else if mysql_version_at_least(&version, (8, 0, 26)) {
                args.push("--source-data=2".into());
            } else {
                args.push("--master-data=2".into());
            }
        }
        for (db, table) in &all {
            if !tables.iter().any(|t| &t.database == db && &t.name == table) {
                args.push(format!("--ignore-table={db}.{table}"));
            }
        }
        args.extend(tls::mysqldump_args(&c.tls, version.contains("MariaDB")));
        args.push("--databases".into());
        args.extend(dbs);
        Ok(args)
    }

    /// Starts mysqldump (the password in its environment, never its command line); its
    /// stderr is collected by a task of its own.
    fn spawn_mysqldump(
        &self,
        args: &[String],
    ) -> Result<(Child, ChildStdout, JoinHandle<String>), DriverError> {
        let c = &self.config;
        let mut child = tokio::process::Command::new(&c.mysqldump)
            .args(args)
            .env("MYSQL_PWD", c.password.clone().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                DriverError::Misconfigured(format!("cannot run mysqldump ({:?}): {e}", c.mysqldump))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| DriverError::Protocol("mysqldump has no stdout".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| DriverError::Protocol("mysqldump has no stderr".into()))?;
        let stderr_task = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok((child, stdout, stderr_task))
    }
}

/// Parses mysqldump's output as it streams and sends the rows of `tables`; returns the
/// coordinates it printed.
async fn read_dump(
    stdout: ChildStdout,
    default_database: &str,
    tables: &[MyTable],
    out: &mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<Coordinates, DriverError> {
    let by_name: HashMap<(&str, &str), &MyTable> = tables
        .iter()
        .map(|t| ((t.database.as_str(), t.name.as_str()), t))
        .collect();
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut parser = DumpParser::default();
    let mut line = Vec::new();
    let mut database = default_database.to_owned();
    let mut coordinates = Coordinates::default();
    let mut progress = TableProgress::default();
    let mut batch: Vec<Row> = Vec::with_capacity(DUMP_BATCH_ROWS);
    loop {
        line.clear();
        let read = tokio::select! {
            _ = cancel.cancelled() => return Err(DriverError::Stopped),
            read = reader.read_until(b'\n', &mut line) => read,
        };
        let read = read.map_err(|e| DriverError::transient("reading mysqldump's output", e))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let parsed = parser
            .line(&line)
            .map_err(|e| DriverError::Protocol(e.to_string()))?;
        match parsed {
            DumpLine::Coordinates { file, position } => {
                coordinates.file_pos = Some((file, position))
            }
            DumpLine::Gtid(g) => coordinates.gtid = Some(g),
            DumpLine::Use(db) => database = db,
            DumpLine::Rows {
                table,
                columns,
                rows,
            } => {
                let Some(t) = by_name.get(&(database.as_str(), table.as_str())) else {
                    continue;
                };
                if progress.switch_to(t, out, &mut batch).await? {
                    // A new table: its column order is checked once.
                    check_columns(t, &columns)?;
                }
                for row in rows {
                    batch.push(decode_row(t, row)?);
                    if batch.len() == DUMP_BATCH_ROWS {
                        progress.flush(out, &mut batch).await?;
                    }
                }
            }
            DumpLine::Other => {}
        }
    }
    progress.finish(tables, out, &mut batch).await?;
    Ok(coordinates)
}

/// One dumped row's literals as values.
fn decode_row(t: &MyTable, row: Vec<crate::types::Literal>) -> Result<Row, DriverError> {
    if row.len() != t.types.len() {
        return Err(DriverError::Protocol(format!(
            "table {}: mysqldump printed {} values for {} columns",
            t.schema.id,
            row.len(),
            t.types.len()
        )));
    }
    row.into_iter()
        .zip(&t.types)
        .map(|(literal, ty)| ty.literal_value(literal))
        .collect::<Result<Row, _>>()
        .map_err(|e| DriverError::Protocol(format!("table {}: {e}", t.schema.id)))
}

/// The INSERT's column list (`--complete-insert`) must match the table's columns.
fn check_columns(table: &MyTable, columns: &[String]) -> Result<(), DriverError> {
    let ours: Vec<&str> = table
        .schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    if columns.is_empty() || columns.iter().map(String::as_str).eq(ours.iter().copied()) {
        return Ok(());
    }
    Err(DriverError::transient(
        "reading the dump",
        format!(
            "table {} changed while it was dumped (columns {columns:?}, expected {ours:?})",
            table.schema.id
        ),
    ))
}

/// Which table the dump is in, for TableStarted/TableDone events.
#[derive(Default)]
struct TableProgress {
    current: Option<Arc<TableSchema>>,
    rows: u64,
    seen: Vec<Arc<TableSchema>>,
}

impl TableProgress {
    /// Moves to `table`; returns whether it is a new one.
    async fn switch_to(
        &mut self,
        table: &MyTable,
        out: &mpsc::Sender<DumpEvent>,
        batch: &mut Vec<Row>,
    ) -> Result<bool, DriverError> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.id == table.schema.id)
        {
            return Ok(false);
        }
        self.end(out, batch).await?;
        self.current = Some(Arc::clone(&table.schema));
        self.seen.push(Arc::clone(&table.schema));
        send(
            out,
            DumpEvent::TableStarted {
                table: Arc::clone(&table.schema),
                estimated_rows: table.estimated_rows,
            },
        )
        .await?;
        Ok(true)
    }

    async fn flush(
        &mut self,
        out: &mpsc::Sender<DumpEvent>,
        batch: &mut Vec<Row>,
    ) -> Result<(), DriverError> {
        let Some(table) = &self.current else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.rows += batch.len() as u64;
        let rows = std::mem::replace(batch, Vec::with_capacity(DUMP_BATCH_ROWS));
        send(
            out,
            DumpEvent::Rows {
                table: Arc::clone(table),
                rows,
            },
        )
        .await
    }

    async fn end(
        &mut self,
        out: &mpsc::Sender<DumpEvent>,
        batch: &mut Vec<Row>,
    ) -> Result<(), DriverError> {
        self.flush(out, batch).await?;
        if let Some(table) = self.current.take() {
            send(
                out,
                DumpEvent::TableDone {
                    table,
                    rows: self.rows,
                },
            )
            .await?;
        }
        self.rows = 0;
        Ok(())
    }

    /// Ends the last table and reports the tables mysqldump printed no row for.
    async fn finish(
        &mut self,
        tables: &[MyTable],
        out: &mpsc::Sender<DumpEvent>,
        batch: &mut Vec<Row>,
    ) -> Result<(), DriverError> {
        self.end(out, batch).await?;
        for t in tables {
            if !self.seen.iter().any(|s| s.id == t.schema.id) {
                send(
                    out,
                    DumpEvent::TableStarted {
                        table: Arc::clone(&t.schema),
                        estimated_rows: Some(0),
                    },
                )
                .await?;
                send(
                    out,
                    DumpEvent::TableDone {
                        table: Arc::clone(&t.schema),
                        rows: 0,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}

async fn send<T>(out: &mpsc::Sender<T>, event: T) -> Result<(), DriverError> {
    out.send(event).await.map_err(|_| DriverError::Stopped)
}
