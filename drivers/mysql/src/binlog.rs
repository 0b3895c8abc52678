//! One session on the binary log: row events to the engine's changes, XID/COMMIT as the
//! transaction boundary, DDL as a cue to reload column types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use etcd_sync_api::{Change, DriverError, StreamEvent, CHANGES_EVENT_BYTES};
use futures_util::StreamExt;
use mysql_async::binlog::events::{
    Event, EventData, OptionalMetaExtractor, RowsEventData, TableMapEvent,
};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::my_error;
use crate::rows::Layout;
use crate::schema::MyTable;
use crate::{BinlogPosition, MysqlDriver};

/// Changes per [`StreamEvent::Changes`]: large transactions travel in pieces of this size.
const CHANGES_PER_EVENT: usize = 256;
/// MariaDB's GTID event, which `mysql_common` does not decode.
const MARIADB_GTID_EVENT: u8 = 162;
/// Table maps remembered at most: a new table id comes with every DDL and table flush.
const TABLE_MAPS: usize = 1024;

/// Refuses a position the server no longer has: by GTID on MariaDB when the position has one,
/// else by file and offset.
pub async fn validate_position(
    conn: &mut Conn,
    position: &BinlogPosition,
    is_mariadb: bool,
) -> Result<(), DriverError> {
    if let (Some(gtid), true) = (&position.gtid, is_mariadb) {
        return validate_gtid(conn, gtid).await;
    }
    let logs: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| my_error("listing binary logs", e))?;
    let found = logs.iter().find_map(|row| {
        let name: Option<String> = row.get(0);
        let size: Option<u64> = row.get(1);
        (name.as_deref() == Some(position.file.as_str())).then_some(size.unwrap_or(0))
    });
    match found {
        None => Err(DriverError::PositionLost(format!(
            "binary log {} (the stored position) is no longer on the server: it was purged \
             (raise binlog_expire_logs_seconds / expire_logs_days) or this is another server",
            position.file
        ))),
        Some(size) if position.pos > size => Err(DriverError::PositionLost(format!(
            "the stored position {}:{} lies beyond the end of that binary log ({size} bytes): another server?",
            position.file, position.pos
        ))),
        Some(_) => Ok(()),
    }
}

/// MariaDB: the GTID's sequence must not predate what the oldest binary log starts from.
async fn validate_gtid(conn: &mut Conn, gtid: &str) -> Result<(), DriverError> {
    let logs: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| my_error("listing binary logs", e))?;
    let Some(oldest) = logs.first().and_then(|row| row.get::<String, _>(0)) else {
        return Err(DriverError::PositionLost(
            "the server has no binary logs".into(),
        ));
    };
    let start: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, 4)", (oldest.clone(),))
        .await
        .map_err(|e| my_error("reading the oldest binary log's GTID position", e))?;
    let start = start.flatten().unwrap_or_default();
    for ours in gtid.split(',') {
        let Some((domain, seq)) = split_gtid(ours) else {
            continue;
        };
        let oldest_seq = start
            .split(',')
            .filter_map(split_gtid)
            .find(|(d, _)| *d == domain)
            .map(|(_, s)| s);
        if oldest_seq.is_some_and(|oldest_seq| seq < oldest_seq) {
            return Err(DriverError::PositionLost(format!(
                "GTID {ours} (the stored position) is older than the oldest binary log {oldest} \
                 (which starts after {start}): the logs in between were purged"
            )));
        }
    }
    Ok(())
}

/// `domain-server-seq` → (domain, seq).
fn split_gtid(gtid: &str) -> Option<(u32, u64)> {
    let mut parts = gtid.trim().split('-');
    let domain = parts.next()?.parse().ok()?;
    let _server = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    Some((domain, seq))
}

/// A table map as it was seen, and the selected table it maps (None: not selected).
struct TableMap {
    tme: TableMapEvent<'static>,
    selected: Option<(Arc<MyTable>, Arc<Layout>)>,
}

pub struct Session<'a> {
    driver: &'a MysqlDriver,
    conn: Option<Conn>,
    tables: HashMap<(String, String), Arc<MyTable>>,
    position: BinlogPosition,
    is_mariadb: bool,
    out: mpsc::Sender<StreamEvent>,
    batch: Vec<Change>,
    batch_bytes: usize,
    has_changes: bool,
    /// Table maps seen, by table id: each was checked against information_schema once.
    table_maps: HashMap<u64, TableMap>,
    /// The server writes event checksums (`binlog_checksum` is not NONE).
    checksums: bool,
    seen_format: bool,
}

impl<'a> Session<'a> {
    pub fn new(
        driver: &'a MysqlDriver,
        conn: Conn,
        tables: Vec<MyTable>,
        position: BinlogPosition,
        is_mariadb: bool,
        out: mpsc::Sender<StreamEvent>,
    ) -> Self {
        let tables = tables
            .into_iter()
            .map(|t| ((t.database.clone(), t.name.clone()), Arc::new(t)))
            .collect();
        Self {
            driver,
            conn: Some(conn),
            tables,
            position,
            is_mariadb,
            out,
            batch: Vec::new(),
            batch_bytes: 0,
            has_changes: false,
            table_maps: HashMap::new(),
            checksums: true,
            seen_format: false,
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), DriverError> {
        let mut conn = self.conn.take().ok_or(DriverError::Stopped)?;
        let checksum: Option<String> = conn
            .query_first("SELECT @@GLOBAL.binlog_checksum")
            .await
            .map_err(|e| my_error("reading binlog_checksum", e))?;
        self.checksums = !checksum.is_some_and(|c| c.eq_ignore_ascii_case("NONE"));
        if self.is_mariadb {
            // Without it MariaDB replaces GTID events with BEGIN and dummy events.
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(|e| my_error("announcing replica capabilities", e))?;
        }
        let file = self.position.file.clone();
        let mut request = BinlogStreamRequest::new(self.driver.config.server_id);
        match self.position.gtid.clone().filter(|_| self.is_mariadb) {
            // By GTID the position survives a failover to a server with other file names.
            Some(gtid) => {
                conn.exec_drop("SET @slave_connect_state = ?", (gtid.clone(),))
                    .await
                    .map_err(|e| my_error("setting the GTID start position", e))?;
                conn.query_drop(
                    "SET @slave_gtid_strict_mode = 0, @slave_gtid_ignore_duplicates = 0",
                )
                .await
                .map_err(|e| my_error("setting GTID options", e))?;
                info!(%gtid, "starting from the GTID position");
                request = request.with_pos(4);
            }
            None => {
                request = request
                    .with_filename(file.as_bytes())
                    .with_pos(self.position.pos)
            }
        }
        let mut stream: BinlogStream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| my_error("requesting the binary log", e))?;
        info!(file = %self.position.file, pos = self.position.pos, "streaming the binary log");
        // Made once: the loop turns for every event.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut cancelled => break,
                event = stream.next() => event,
            };
            let event = match event {
                Some(event) => event.map_err(|e| my_error("reading the binary log", e))?,
                None => {
                    return Err(DriverError::transient(
                        "reading the binary log",
                        "the server ended the stream",
                    ))
                }
            };
            self.handle(&stream, event).await?;
        }
        let _ = stream.close().await;
        Ok(())
    }

    async fn handle(&mut self, stream: &BinlogStream, event: Event) -> Result<(), DriverError> {
        verify_checksum(&event)?;
        let header = event.header();
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            self.gtid(&event, header.server_id());
            return Ok(());
        }
        let data = event
            .read_data()
            .map_err(|e| DriverError::Protocol(format!("decoding a binary-log event: {e}")))?;
        let end = u64::from(header.log_pos());
        match data {
            Some(EventData::RotateEvent(rotate)) => {
                let mut raw = rotate.name_raw();
                // The artificial rotate before the first format description carries a checksum
                // the decoder does not know to strip yet.
                if header.log_pos() == 0 && !self.seen_format && self.checksums && raw.len() > 4 {
                    raw = &raw[..raw.len() - 4];
                }
                let name = String::from_utf8_lossy(raw).into_owned();
                if name != self.position.file {
                    debug!(file = %name, "binary log rotated");
                }
                self.position.file = name;
                self.position.pos = rotate.position();
            }
            Some(EventData::FormatDescriptionEvent(_)) => self.seen_format = true,
            Some(EventData::XidEvent(_)) => self.commit(end, header.timestamp()).await?,
            Some(EventData::QueryEvent(query)) => {
                let sql = query.query();
                let trimmed = sql.trim();
                if trimmed.eq_ignore_ascii_case("BEGIN") {
                    self.has_changes = false;
                } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                    self.commit(end, header.timestamp()).await?;
                } else {
                    // DDL (implicitly committed): later rows may have other columns.
                    debug!(sql = %trimmed.chars().take(200).collect::<String>(), "DDL");
                    self.reload_tables().await?;
                    self.commit(end, header.timestamp()).await?;
                }
            }
            Some(EventData::RowsEvent(rows)) => self.rows(stream, &rows).await?,
            // Format description, heartbeats, table maps (kept by the stream)...
            _ => {}
        }
        Ok(())
    }

    fn gtid(&mut self, event: &Event, server_id: u32) {
        // MariaDB GTID event: seq_no (8 bytes LE), domain_id (4 bytes LE), flags.
        let data = event.data();
        if data.len() >= 12 {
            let seq = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
            let domain = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
            self.position.gtid = Some(format!("{domain}-{server_id}-{seq}"));
        }
        self.has_changes = false;
    }

    async fn reload_tables(&mut self) -> Result<(), DriverError> {
        let mut conn = self.driver.conn().await?;
        let all = self.driver.selected(&mut conn).await?.tables;
        for table in all {
            let key = (table.database.clone(), table.name.clone());
            if self.tables.contains_key(&key) {
                self.tables.insert(key, Arc::new(table));
            }
        }
        // Every table map is checked again against the tables as they are now.
        self.table_maps.clear();
        Ok(())
    }

    async fn rows(
        &mut self,
        stream: &BinlogStream,
        rows: &RowsEventData<'_>,
    ) -> Result<(), DriverError> {
        let Some(tme) = stream.get_tme(rows.table_id()) else {
            return Err(DriverError::Protocol(format!(
                "a rows event for table id {} came without its table map",
                rows.table_id()
            )));
        };
        // A table id may stand for another table after a server restart: the map must match.
        let selected = match self.table_maps.get(&rows.table_id()) {
            Some(known) if known.tme == *tme => known.selected.clone(),
            _ => self.map_table(tme).await?,
        };
        let Some((table, layout)) = selected else {
            return Ok(());
        };
        for pair in layout.rows(&table, rows) {
            let change = match pair? {
                (None, Some(row)) => Change::Insert {
                    table: Arc::clone(&table.schema),
                    row,
                },
                (Some(old), Some(row)) => Change::Update {
                    table: Arc::clone(&table.schema),
                    old: Some(old),
                    row,
                },
                (Some(old), None) => Change::Delete {
                    table: Arc::clone(&table.schema),
                    old,
                },
                (None, None) => continue,
            };
            self.has_changes = true;
            self.batch_bytes += change.approx_size();
            self.batch.push(change);
            if self.batch.len() >= CHANGES_PER_EVENT || self.batch_bytes >= CHANGES_EVENT_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Checks a table map not seen before against information_schema and remembers it.
    async fn map_table(
        &mut self,
        tme: &TableMapEvent<'_>,
    ) -> Result<Option<(Arc<MyTable>, Arc<Layout>)>, DriverError> {
        let key = (
            tme.database_name().into_owned(),
            tme.table_name().into_owned(),
        );
        let selected = match self.tables.get(&key).cloned() {
            None => None,
            Some(table) => {
                let table = self.checked(tme, &key, table).await?;
                let layout = Layout::of(tme).map_err(|e| {
                    DriverError::Protocol(format!("table {}: its table map: {e}", table.schema.id))
                })?;
                Some((table, Arc::new(layout)))
            }
        };
        if self.table_maps.len() >= TABLE_MAPS {
            self.table_maps.clear();
        }
        self.table_maps.insert(
            tme.table_id(),
            TableMap {
                tme: tme.clone().into_owned(),
                selected: selected.clone(),
            },
        );
        Ok(selected)
    }

    /// The table as information_schema has it now, if the table map agrees with it.
    async fn checked(
        &mut self,
        tme: &TableMapEvent<'_>,
        key: &(String, String),
        mut table: Arc<MyTable>,
    ) -> Result<Arc<MyTable>, DriverError> {
        // With binlog_row_metadata=FULL the table map names the columns: a difference from
        // what information_schema said means a DDL we have not caught up with.
        let names = column_names(tme);
        if !names.is_empty() && !same_columns(&names, &table) {
            self.reload_tables().await?;
            table = self.tables.get(key).cloned().ok_or(DriverError::Stopped)?;
            if !same_columns(&names, &table) {
                return Err(DriverError::Protocol(format!(
                    "table {}: the binary log's columns {names:?} differ from information_schema's; \
                     the table changed again since this event (see the README's schema-change limits)",
                    table.schema.id
                )));
            }
        }
        if tme.columns_count() as usize != table.types.len() {
            // A DDL we did not see as such (or that raced our reload).
            self.reload_tables().await?;
            table = self.tables.get(key).cloned().ok_or(DriverError::Stopped)?;
            if tme.columns_count() as usize != table.types.len() {
                return Err(DriverError::Protocol(format!(
                    "table {}: the binary log has {} columns, information_schema {}",
                    table.schema.id,
                    tme.columns_count(),
                    table.types.len()
                )));
            }
        }
        Ok(table)
    }

    async fn flush(&mut self) -> Result<(), DriverError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        // Grown as it fills: most transactions are a change or two, and a batch sized for
        // CHANGES_PER_EVENT up front cost 14 KiB per transaction, freed on the engine's thread.
        let batch = std::mem::take(&mut self.batch);
        self.out
            .send(StreamEvent::Changes(batch))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// A transaction ended at `end` in the current file.
    async fn commit(&mut self, end: u64, timestamp: u32) -> Result<(), DriverError> {
        self.position.pos = end;
        self.flush().await?;
        if !std::mem::take(&mut self.has_changes) {
            // Nothing of ours: the position moves with the next transaction that has changes.
            return Ok(());
        }
        let event = StreamEvent::Commit {
            position: self.position.to_position(),
            committed_at: Some(UNIX_EPOCH + Duration::from_secs(u64::from(timestamp))),
        };
        self.out.send(event).await.map_err(|_| DriverError::Stopped)
    }
}

/// The column names a table map carries (empty unless `binlog_row_metadata=FULL`).
fn column_names(tme: &TableMapEvent<'_>) -> Vec<String> {
    OptionalMetaExtractor::new(tme.iter_optional_meta())
        .map(|meta| {
            meta.iter_column_name()
                .filter_map(|name| name.ok().map(|n| n.name().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn same_columns(names: &[String], table: &MyTable) -> bool {
    names
        .iter()
        .map(String::as_str)
        .eq(table.schema.columns.iter().map(|c| c.name.as_str()))
}

/// `mysql_async` does not check event checksums; a corrupt event must not reach etcd.
fn verify_checksum(event: &Event) -> Result<(), DriverError> {
    let Some(stored) = event.checksum() else {
        return Ok(());
    };
    let Ok(Some(alg)) = event.footer().get_checksum_alg() else {
        return Ok(());
    };
    let computed = event.calc_checksum(alg);
    if u32::from_le_bytes(stored) != computed {
        return Err(DriverError::transient(
            "reading the binary log",
            format!(
                "event checksum mismatch at position {} (stored {:08x}, computed {computed:08x})",
                event.header().log_pos(),
                u32::from_le_bytes(stored)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtids_split() {
        assert_eq!(split_gtid("0-1-11"), Some((0, 11)));
        assert_eq!(split_gtid(" 2-100-7"), Some((2, 7)));
        assert_eq!(split_gtid("3E11FA47-71CA:1-5"), None);
    }
}
