//! The one place where PostgreSQL errors are classified for the engine.

use etcd_sync_api::DriverError;

use crate::conn::ConnError;

/// SQLSTATE classes a retry may cure: connection exceptions, insufficient resources, operator
/// intervention (shutdown, restart), system errors, transaction rollbacks; and "object in use"
/// (our slot still held by a connection the server has not yet noticed is dead).
fn sqlstate_is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "40")) || code == "55006"
}

fn classify(
    context: &str,
    code: Option<&str>,
    message: String,
    source: etcd_sync_api::BoxError,
) -> DriverError {
    match code {
        None => DriverError::transient(context, source),
        Some(code) if sqlstate_is_transient(code) => DriverError::transient(context, source),
        Some("28P01" | "28000") => DriverError::Misconfigured(format!(
            "{context}: {message}: check database.user and database.password, and pg_hba.conf"
        )),
        Some("3D000") => DriverError::Misconfigured(format!(
            "{context}: {message}: check database.name"
        )),
        Some("42501") => DriverError::Misconfigured(format!(
            "{context}: {message}: grant the privilege to the agent's user (see the README's GRANTs)"
        )),
        Some(code) => DriverError::Misconfigured(format!("{context}: {message} (SQLSTATE {code})")),
    }
}

/// Classifies an error of a replication connection.
pub fn conn_error(context: &str, err: ConnError) -> DriverError {
    match &err {
        ConnError::Auth(message) | ConnError::Tls(message) => {
            DriverError::Misconfigured(format!("{context}: {message}"))
        }
        ConnError::Protocol(message) => DriverError::Protocol(format!("{context}: {message}")),
        ConnError::Server { code, message, .. } => {
            let (code, message) = (code.clone(), message.clone());
            classify(context, Some(&code), message, Box::new(err))
        }
        ConnError::Connect { .. } | ConnError::Io(_) => DriverError::transient(context, err),
    }
}

/// Classifies an error of a tokio-postgres (query or COPY) connection.
pub fn pg_error(context: &str, err: tokio_postgres::Error) -> DriverError {
    match err.as_db_error() {
        Some(db) => {
            let code = db.code().code().to_owned();
            let message = db.message().to_owned();
            classify(context, Some(&code), message, Box::new(err))
        }
        None => match etcd_sync_api::tls_failure(&err) {
            Some(reason) => DriverError::Misconfigured(format!(
                "{context}: TLS: the server's certificate was refused ({reason}); check database.tls"
            )),
            None if etcd_sync_api::error_chain(&err).contains("does not support TLS") => {
                DriverError::Misconfigured(format!(
                    "{context}: the server does not accept TLS: set ssl = on (with ssl_cert_file \
                     and ssl_key_file) in postgresql.conf, or lower database.tls.mode"
                ))
            }
            None if err.to_string().contains("TLS") => DriverError::Misconfigured(format!(
                "{context}: {}; check database.tls",
                etcd_sync_api::error_chain(&err)
            )),
            None => DriverError::transient(context, err),
        },
    }
}
