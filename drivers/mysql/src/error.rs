//! The one place where MySQL errors are classified for the engine.

use etcd_sync_api::DriverError;

/// Classifies a `mysql_async` error.
pub fn my_error(context: &str, err: mysql_async::Error) -> DriverError {
    match &err {
        mysql_async::Error::Server(server) => {
            let message = format!("{context}: {} (error {})", server.message, server.code);
            match server.code {
                // Access denied, unknown database.
                1045 | 1698 => DriverError::Misconfigured(format!(
                    "{message}: check database.user and database.password"
                )),
                1049 => DriverError::Misconfigured(format!("{message}: check database.name")),
                // Missing privileges.
                1044 | 1142 | 1143 | 1227 => DriverError::Misconfigured(format!(
                    "{message}: grant the agent's user the privileges the README lists"
                )),
                // The binary log position is gone (purged) or unreadable.
                1236 => DriverError::PositionLost(message),
                // Server shutdown, killed connection, too many connections, lock wait.
                1040 | 1053 | 1205 | 1213 | 1927 | 2006 | 2013 => {
                    DriverError::transient(context, err)
                }
                _ => DriverError::Misconfigured(message),
            }
        }
        mysql_async::Error::Url(_) => DriverError::Misconfigured(format!("{context}: {err}")),
        _ if etcd_sync_api::tls_failure(&err).is_some() => DriverError::Misconfigured(format!(
            "{context}: TLS: the server's certificate was refused ({}); check database.tls",
            etcd_sync_api::tls_failure(&err).unwrap_or_default()
        )),
        _ => DriverError::transient(context, err),
    }
}
