//! The server's side of the prerequisites: its kind and version, the binary-log settings the
//! driver reads row events with, and the user's replication privileges. Each failure says what
//! to change.

use etcd_sync_api::{CheckItem, DriverError};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::my_error;

pub(crate) struct Server {
    pub version: String,
    pub is_mariadb: bool,
}

pub(crate) async fn server(conn: &mut Conn) -> Result<Server, DriverError> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| my_error("reading the server version", e))?;
    let version = version.unwrap_or_default();
    Ok(Server {
        is_mariadb: version.contains("MariaDB"),
        version,
    })
}

/// A global variable as text; empty when the server does not know it.
async fn variable(conn: &mut Conn, name: &str) -> Result<String, DriverError> {
    let value: Option<Option<String>> = conn
        .query_first(format!("SELECT CAST(@@GLOBAL.{name} AS CHAR)"))
        .await
        .or_else(|e| match e {
            // Unknown system variable: older servers.
            mysql_async::Error::Server(ref s) if s.code == 1193 => Ok(None),
            e => Err(e),
        })
        .map_err(|e| my_error(&format!("reading {name}"), e))?;
    Ok(value.flatten().unwrap_or_default())
}

/// Everything the server must provide for `user`: kind and version, binary-log settings,
/// GTIDs, privileges.
pub(crate) async fn prerequisites(
    conn: &mut Conn,
    user: &str,
) -> Result<Vec<CheckItem>, DriverError> {
    let server = server(conn).await?;
    let kind = if server.is_mariadb {
        "MariaDB"
    } else {
        "MySQL"
    };
    let mut items = vec![CheckItem::ok(
        "server",
        format!("{kind} {}", server.version),
    )];
    items.extend(binlog_settings(conn).await?);
    let gtid = if server.is_mariadb {
        format!(
            "gtid_binlog_pos = {}",
            variable(conn, "gtid_binlog_pos").await?
        )
    } else {
        format!("gtid_mode = {}", variable(conn, "gtid_mode").await?)
    };
    items.push(CheckItem::ok("GTID", gtid));
    items.extend(privileges(conn, user, server.is_mariadb).await?);
    Ok(items)
}

fn in_my_cnf(setting: &str) -> String {
    format!("set {setting} in the [mysqld] section of my.cnf and restart the server")
}

/// `name` set to `wanted` (case aside), or a failure `problem` words from the value found.
fn required(
    name: &str,
    value: &str,
    wanted: &str,
    problem: impl FnOnce(&str) -> String,
) -> CheckItem {
    if value.eq_ignore_ascii_case(wanted) {
        CheckItem::ok(name, wanted)
    } else {
        CheckItem::fail(name, problem(value))
    }
}

/// The binary log on, in row format, with whole rows (and, preferably, their column names).
async fn binlog_settings(conn: &mut Conn) -> Result<Vec<CheckItem>, DriverError> {
    let log_bin = match variable(conn, "log_bin").await? {
        one if one == "1" => "ON".to_owned(),
        other => other,
    };
    let format = variable(conn, "binlog_format").await?;
    let image = variable(conn, "binlog_row_image").await?;
    let metadata = variable(conn, "binlog_row_metadata").await?;
    Ok(vec![
        required("log_bin", &log_bin, "ON", |_| {
            format!(
                "the binary log is off: {}",
                in_my_cnf("log_bin = binlog (and server_id)")
            )
        }),
        required("binlog_format", &format, "ROW", |format| {
            format!(
                "binlog_format is {format} but etcd-sync reads row events: {} (SET GLOBAL binlog_format = ROW applies to new sessions only)",
                in_my_cnf("binlog_format = ROW")
            )
        }),
        required("binlog_row_image", &image, "FULL", |image| {
            format!(
                "binlog_row_image is {image} but updates must carry whole rows: {}",
                in_my_cnf("binlog_row_image = FULL")
            )
        }),
        if metadata.eq_ignore_ascii_case("FULL") {
            CheckItem::ok("binlog_row_metadata", "FULL")
        } else {
            CheckItem::warn(
                "binlog_row_metadata",
                format!(
                    "binlog_row_metadata is {}: column names come from information_schema, refreshed on DDL; {} is recommended",
                    if metadata.is_empty() { "not available" } else { &metadata },
                    in_my_cnf("binlog_row_metadata = FULL")
                ),
            )
        },
    ])
}

/// The global grants the binary-log connection needs, with the GRANT that gives each.
async fn privileges(
    conn: &mut Conn,
    user: &str,
    is_mariadb: bool,
) -> Result<Vec<CheckItem>, DriverError> {
    let grants: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| my_error("reading the grants", e))?;
    let global: String = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_uppercase())
        .collect::<Vec<_>>()
        .join(" ");
    let has = |names: &[&str]| {
        global.contains("ALL PRIVILEGES") || names.iter().any(|n| global.contains(n))
    };
    let monitor = if is_mariadb {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };
    let needed = [
        (
            "REPLICATION SLAVE",
            &["REPLICATION SLAVE", "REPLICATION REPLICA"][..],
            "REPLICATION SLAVE",
        ),
        (
            "REPLICATION CLIENT / BINLOG MONITOR",
            &["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"][..],
            monitor,
        ),
    ];
    Ok(needed
        .into_iter()
        .map(|(what, names, grant)| {
            if has(names) {
                CheckItem::ok(format!("privilege {what}"), "granted")
            } else {
                CheckItem::fail(
                    format!("privilege {what}"),
                    format!(
                        "user {user} lacks {grant}: run GRANT {grant} ON *.* TO '{user}'@'<host>'"
                    ),
                )
            }
        })
        .collect())
}
