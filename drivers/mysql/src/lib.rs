//! MySQL/MariaDB driver for etcd-sync: `mysqldump` for a consistent snapshot with its binary-log
//! coordinates, then the binary log from exactly there.

use etcd_sync_api::{
    error_chain, CheckItem, CheckStatus, DriverError, DumpEvent, Position, Selection, StreamEvent,
    TableFilter, TlsMode, TlsSettings,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

mod binlog;
mod dump;
pub mod dump_parser;
mod error;
mod rows;
mod schema;
mod server;
mod tls;
pub use tls::validate as check_tls_settings;
pub mod types;

use error::my_error;
pub use schema::MyTable;

/// What the MySQL driver needs from the config.
#[derive(Clone)]
pub struct MysqlConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// The replica id of the binary-log connection; unique among the server's replicas.
    pub server_id: u32,
    /// Path or name of the mysqldump binary.
    pub mysqldump: String,
    pub filter: TableFilter,
    pub tls: TlsSettings,
}

impl std::fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("server_id", &self.server_id)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where the binary log resumes: after the last transaction applied.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct BinlogPosition {
    file: String,
    pos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gtid: Option<String>,
}

impl BinlogPosition {
    fn to_position(&self) -> Position {
        Position(serde_json::to_value(self).unwrap_or_default())
    }

    fn from_position(position: &Position) -> Result<Self, DriverError> {
        serde_json::from_value(position.0.clone()).map_err(|e| {
            DriverError::Misconfigured(format!(
                "the stored position {} is not a MySQL binary-log position ({e}); delete the state to start over",
                position.0
            ))
        })
    }
}

/// The position a configured start (`start.file` + `start.position`, or MariaDB's
/// `start.gtid`) names, in this driver's format. The engine stores it as it is.
pub fn start_position(file: Option<&str>, pos: Option<u64>, gtid: Option<&str>) -> Position {
    BinlogPosition {
        file: file.unwrap_or_default().to_owned(),
        pos: pos.unwrap_or(4),
        gtid: gtid.map(str::to_owned),
    }
    .to_position()
}

pub struct MysqlDriver {
    config: MysqlConfig,
}

/// The largest packet the driver accepts: MySQL's own ceiling, 1 GiB.
const MAX_PACKET: usize = 1 << 30;

impl MysqlDriver {
    pub fn new(config: MysqlConfig) -> Self {
        Self { config }
    }

    async fn conn(&self) -> Result<Conn, DriverError> {
        let c = &self.config;
        let opts = OptsBuilder::default()
            .ip_or_hostname(c.host.clone())
            .tcp_port(c.port)
            .user(Some(c.user.clone()))
            .pass(c.password.clone())
            .db_name(Some(c.database.clone()))
            .prefer_socket(false)
            // As a replica does (slave_max_allowed_packet): a row event may be larger than the
            // server's max_allowed_packet was when we connected.
            .max_allowed_packet(Some(MAX_PACKET));
        let context = format!("connecting to MySQL at {}:{}", c.host, c.port);
        let Some(ssl) = tls::ssl_opts(&c.tls)? else {
            return Conn::new(opts).await.map_err(|e| my_error(&context, e));
        };
        match Conn::new(opts.clone().ssl_opts(ssl)).await {
            Ok(conn) => Ok(conn),
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if c.tls.mode == TlsMode::Prefer => {
                Conn::new(opts).await.map_err(|e| my_error(&context, e))
            }
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) => Err(DriverError::Misconfigured(format!(
                "{context}: database.tls.mode is {} but the server does not offer TLS: \
                     set ssl_cert and ssl_key in the server's my.cnf, or lower the mode",
                c.tls.mode
            ))),
            Err(e) => Err(my_error(&context, e)),
        }
    }

    /// Server prerequisites and the mysqldump this driver runs; each failure says what to
    /// change.
    async fn prerequisites(&self, conn: &mut Conn) -> Result<Vec<CheckItem>, DriverError> {
        let mut items = server::prerequisites(conn, &self.config.user).await?;
        items.push(match self.mysqldump_version().await {
            Ok(version) => CheckItem::ok("mysqldump", version),
            Err(e) => CheckItem::fail("mysqldump", error_chain(&e)),
        });
        Ok(items)
    }

    async fn require_prerequisites(&self, conn: &mut Conn) -> Result<(), DriverError> {
        let items = self.prerequisites(conn).await?;
        match items.into_iter().find(|i| i.status == CheckStatus::Fail) {
            Some(item) => Err(DriverError::Misconfigured(item.detail)),
            None => Ok(()),
        }
    }

    async fn mysqldump_version(&self) -> Result<String, DriverError> {
        let output = tokio::process::Command::new(&self.config.mysqldump)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                DriverError::Misconfigured(format!(
                    "cannot run mysqldump ({:?}): {e}; install it (Debian: mariadb-client) or set database.mysql.mysqldump to its path",
                    self.config.mysqldump
                ))
            })?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn selected(&self, conn: &mut Conn) -> Result<Selection<MyTable>, DriverError> {
        let server = server::server(conn).await?;
        schema::select_tables(
            conn,
            &self.config.database,
            &self.config.filter,
            server.is_mariadb,
        )
        .await
    }
}

/// Whether `mysqldump --version` names a MySQL release at least `min`.
fn mysql_version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let Some(ver) = version.split("Ver ").nth(1) else {
        return false;
    };
    let numbers: Vec<u32> = ver
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [a, b, c] => (*a, *b, *c) >= min,
        _ => false,
    }
}

impl etcd_sync_api::Driver for MysqlDriver {
    type Table = MyTable;

    async fn check(&self) -> Vec<CheckItem> {
        let c = &self.config;
        let mut conn = match self.conn().await {
            Ok(conn) => conn,
            Err(e) => return vec![CheckItem::cannot_connect(&c.host, c.port, &c.user, &e)],
        };
        let mut items = vec![CheckItem::connected(&c.host, c.port, &c.database, &c.user)];
        let tls_version: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
            .await
            .ok()
            .flatten();
        items.push(CheckItem::tls(
            c.tls.mode,
            tls_version.as_ref().map(|(_, v)| v.as_str()),
        ));
        match self.prerequisites(&mut conn).await {
            Ok(more) => items.extend(more),
            Err(e) => items.push(CheckItem::fail("prerequisites", error_chain(&e))),
        }
        items.extend(Selection::check_items(self.selected(&mut conn).await));
        items
    }

    async fn select_tables(&self) -> Result<Selection<MyTable>, DriverError> {
        let mut conn = self.conn().await?;
        // First in every session: the calls that follow in it need not check again.
        self.require_prerequisites(&mut conn).await?;
        self.selected(&mut conn).await
    }

    async fn dump(
        &self,
        tables: &[MyTable],
        out: mpsc::Sender<DumpEvent>,
        cancel: CancellationToken,
    ) -> Result<Position, DriverError> {
        let mut conn = self.conn().await?;
        info!(tables = tables.len(), "running mysqldump");
        let position = self
            .run_mysqldump(&mut conn, tables, true, &out, &cancel)
            .await?
            .ok_or_else(|| DriverError::Protocol("mysqldump gave no position".into()))?;
        info!(file = %position.file, pos = position.pos, gtid = position.gtid.as_deref().unwrap_or("-"), "snapshot taken at this binary-log position");
        Ok(position.to_position())
    }

    async fn stream(
        &self,
        from: Position,
        tables: &[MyTable],
        out: mpsc::Sender<StreamEvent>,
        _acks: watch::Receiver<Position>,
        cancel: CancellationToken,
    ) -> Result<(), DriverError> {
        // The server keeps binary logs by age, not by what replicas confirmed: nothing to ack.
        let start = BinlogPosition::from_position(&from)?;
        let mut conn = self.conn().await?;
        let is_mariadb = server::server(&mut conn).await?.is_mariadb;
        binlog::validate_position(&mut conn, &start, is_mariadb).await?;
        let tables = tables.to_vec();
        let session = binlog::Session::new(self, conn, tables, start, is_mariadb, out);
        session.run(cancel).await
    }

    async fn prepare_start(
        &self,
        position: &Position,
        _tables: &[MyTable],
    ) -> Result<(), DriverError> {
        let start = BinlogPosition::from_position(position)?;
        let mut conn = self.conn().await?;
        let server = server::server(&mut conn).await?;
        if start.gtid.is_some() && !server.is_mariadb {
            return Err(DriverError::Misconfigured(
                "start.gtid is supported on MariaDB; for MySQL give start.file and start.position"
                    .into(),
            ));
        }
        binlog::validate_position(&mut conn, &start, server.is_mariadb).await
    }

    async fn lag_bytes(&self, position: &Position) -> Result<Option<u64>, DriverError> {
        let position = BinlogPosition::from_position(position)?;
        let mut conn = self.conn().await?;
        let logs: Vec<(String, u64)> = conn
            .query("SHOW BINARY LOGS")
            .await
            .map_err(|e| my_error("listing binary logs", e))?
            .into_iter()
            .map(|row: mysql_async::Row| {
                (
                    row.get::<String, _>(0).unwrap_or_default(),
                    row.get::<u64, _>(1).unwrap_or(0),
                )
            })
            .collect();
        let Some(index) = logs.iter().position(|(name, _)| *name == position.file) else {
            return Ok(None);
        };
        let behind = logs[index].1.saturating_sub(position.pos)
            + logs[index + 1..].iter().map(|(_, size)| size).sum::<u64>();
        Ok(Some(behind))
    }

    fn position_number(&self, position: &Position) -> Option<u64> {
        BinlogPosition::from_position(position).ok().map(|p| p.pos)
    }

    async fn read_snapshot(
        &self,
        tables: &[MyTable],
        out: mpsc::Sender<DumpEvent>,
    ) -> Result<(), DriverError> {
        let mut conn = self.conn().await?;
        self.run_mysqldump(&mut conn, tables, false, &out, &CancellationToken::new())
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysqldump_versions() {
        assert!(mysql_version_at_least(
            "mysqldump  Ver 8.0.36 for Linux on x86_64",
            (8, 0, 26)
        ));
        assert!(!mysql_version_at_least(
            "mysqldump  Ver 8.0.25 for Linux",
            (8, 0, 26)
        ));
        assert!(!mysql_version_at_least(
            "mysqldump  Ver 10.19 Distrib 10.11.6-MariaDB",
            (80, 0, 0)
        ));
    }

    #[test]
    fn positions_round_trip() {
        let p = BinlogPosition {
            file: "binlog.000002".into(),
            pos: 4,
            gtid: Some("0-1-5".into()),
        };
        assert_eq!(BinlogPosition::from_position(&p.to_position()).unwrap(), p);
        assert!(
            BinlogPosition::from_position(&Position(serde_json::json!({"lsn": "0/1"}))).is_err()
        );
    }
}
